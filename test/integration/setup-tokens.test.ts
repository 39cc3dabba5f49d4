/**
 * `setup --module` on a real SoftHSM store with two tokens (docs/setup.md §1, §6): the module and the
 * token are checked before any PIN is asked, with errors that name the flags and list the tokens
 * found; the module's SOFTHSM2_CONF is saved in module-env (never the PIN variable), so an agent
 * started without it signs; a re-run without --kind reuses the token's table; flags the chosen path
 * would ignore are refused; --confirm, and the warning on a CI setup whose config refuses every publish.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parseConfig } from '../../src/config/load.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, distPath, runAgentCli, runShim, shimBinPath, waitForSocket } from '../helpers/agent.js'
import { addToken, createSoftHsmStore, generateKey, type SoftHsmStore } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38670/index/'
const CI_INDEX = 'sparse+http://127.0.0.1:38671/index/'
const PIN = '246810'
const TOKENS = [
  { label: 'ci', pin: PIN, soPin: '13579135' },
  { label: 'other', pin: PIN, soPin: '13579135' },
]

/** A fresh set of XDG and cargo directories under `dir`, the SoftHSM store exported or not. */
function userEnv(dir: string, store: SoftHsmStore | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    XDG_CONFIG_HOME: join(dir, 'config'),
    XDG_DATA_HOME: join(dir, 'data'),
    XDG_STATE_HOME: join(dir, 'state'),
    XDG_RUNTIME_DIR: join(dir, 'run'),
    CARGO_HOME: join(dir, 'cargo-home'),
    CARGO_PKCS11_AGENT_SOCK: join(dir, 'run', 'agent.sock'),
    SETUP_TEST_PIN: PIN,
  }
  delete env['SOFTHSM2_CONF']
  delete env['CARGO_PKCS11_AGENT_CONFIG']
  delete env['CI']
  if (store !== undefined) env['SOFTHSM2_CONF'] = store.confPath
  return env
}

describe('setup --module on SoftHSM', () => {
  let dir: string
  let store: SoftHsmStore
  let env: NodeJS.ProcessEnv
  /** label → serial, as `cargo-pkcs11-agent list --module softhsm` shows them. */
  const serials = new Map<string, string>()
  const configPath = (): string => join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'setup-tokens-'))
    store = await createSoftHsmStore()
    for (const token of TOKENS) {
      await addToken(store, token)
      await generateKey(store, token, { label: 'cargo', id: '01' })
    }
    env = userEnv(dir, store)
    const listed = await runAgentCli(['list', '--module', 'softhsm', '--json'], { env })
    assert.equal(listed.code, 0, listed.stderr)
    for (const { token } of JSON.parse(listed.stdout) as { token: string }[]) {
      const [, label, serial] = /^token '([^']+)' \(serial ([0-9a-f]+)\)/.exec(token) ?? []
      if (label !== undefined && serial !== undefined) serials.set(label, serial)
    }
    assert.deepEqual([...serials.keys()].sort(), ['ci', 'other'])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
    await store?.cleanup()
  })

  test('a module that does not exist is the error, naming --module, before any PIN is asked', async () => {
    const missing = join(dir, 'nope.so')
    const r = await runAgentCli(['setup', '--module', missing, '--token-label', 'ci'], {
      env,
      detached: true,
    })
    assert.equal(r.code, 1, r.stderr)
    assert.ok(r.stderr.includes(`--module ${missing}: PKCS#11 module ${missing} does not exist`), r.stderr)
    assert.match(r.stderr, /Give --module the path of an installed PKCS#11 library, or one of softhsm, /)
    assert.doesNotMatch(r.stderr, /PIN|terminal/)
    assert.equal(existsSync(configPath()), false, 'nothing written')
  })

  test('a label the module does not show: the tokens it shows with their serials, `list --module`, SOFTHSM2_CONF; no PIN asked', async () => {
    const r = await runAgentCli(['setup', '--module', 'softhsm', '--token-label', 'nope'], {
      env,
      detached: true,
    })
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /No token with label 'nope': softhsm shows /)
    for (const [label, serial] of serials)
      assert.ok(r.stderr.includes(`'${label}' (serial ${serial})`), r.stderr)
    assert.ok(r.stderr.includes(`(with SOFTHSM2_CONF=${store.confPath})`), r.stderr)
    assert.match(
      r.stderr,
      /Check --token-label \/ --serial against `cargo-pkcs11-agent list --module softhsm`/,
    )
    assert.match(r.stderr, /softhsm finds its tokens through SOFTHSM2_CONF: .*module-env/)
    assert.doesNotMatch(r.stderr, /PIN|terminal/)
    assert.equal(existsSync(configPath()), false, 'nothing written')
  })

  test('--module softhsm without a label lists the tokens it found', async () => {
    const r = await runAgentCli(['setup', '--module', 'softhsm'], { env, detached: true })
    assert.equal(r.code, 2, r.stderr)
    assert.match(
      r.stderr,
      /--module needs --token-label or --serial \(slot ids are not stable\); softhsm shows /,
    )
    for (const [label, serial] of serials)
      assert.ok(r.stderr.includes(`'${label}' (serial ${serial})`), r.stderr)
  })

  test('flags the chosen path would ignore are refused, and nothing is written or created', async () => {
    const fresh = userEnv(join(dir, 'fresh'), undefined)
    const cases: [args: string[], message: RegExp][] = [
      [
        ['--pin-source', 'env', '--pin-env', 'CARGO_PIN'],
        /--pin-source, --pin-env are only for a token described by --module; without it setup uses the configured token/,
      ],
      [['--token-label', 'ci'], /--token-label is only for a token described by --module/],
      [
        ['--module', 'softhsm', '--token-label', 'ci', '--pin-source', 'file', '--pin-env', 'CARGO_PIN'],
        /--pin-env goes with --pin-source env, not file/,
      ],
      [
        ['--module', 'softhsm', '--token-label', 'ci', '--pin-env', 'CARGO_PIN', '--pin-file', '/dev/null'],
        /--pin-file goes with --pin-source file, not env/,
      ],
      [
        ['--module', 'softhsm', '--token-label', 'ci', '--touch-policy', 'always'],
        /--touch-policy is only for a YubiKey/,
      ],
      [
        ['--module', 'ykcs11', '--label', 'cargo'],
        /--label is only for a key on a PKCS#11 token; a YubiKey's keys are named by --read-slot/,
      ],
      [['--confirm', 'none'], /--confirm is only for a registry: give --registry and --index too/],
    ]
    for (const [args, message] of cases) {
      const r = await runAgentCli(['setup', ...args], { env: fresh, detached: true })
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, message)
    }
    assert.equal(existsSync(join(dir, 'fresh', 'config')), false, 'no agent config')
    assert.equal(existsSync(join(dir, 'fresh', 'data')), false, 'no SoftHSM store')
  })

  let k3: string

  test('setup saves SOFTHSM2_CONF (not the PIN variable) in module-env, and writes the key references inline', async () => {
    const r = await runAgentCli(
      [
        'setup',
        '--module',
        'softhsm',
        '--token-label',
        'ci',
        '--pin-source',
        'env',
        '--pin-env',
        'SETUP_TEST_PIN',
        '--registry',
        'local',
        '--index',
        INDEX,
      ],
      { env, detached: true },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /on token device: generated|on token device: reused/)
    assert.ok(r.stdout.includes(`module-env of [tokens.device]: SOFTHSM2_CONF=${store.confPath}`), r.stdout)
    k3 = /k3\.public\.[A-Za-z0-9_-]{66}/.exec(r.stdout)?.[0] ?? ''
    const text = await readFile(configPath(), 'utf8')
    const config = parseConfig(text, configPath(), {})
    assert.deepEqual(config.tokens['device']?.moduleEnv, { SOFTHSM2_CONF: store.confPath })
    assert.equal(config.tokens['device']?.pinEnv, 'SETUP_TEST_PIN')
    assert.ok(!text.includes(PIN), 'the PIN is not in the config')
    assert.ok(text.includes(`module-env = { SOFTHSM2_CONF = "${store.confPath}" }`), text)
    assert.match(
      text,
      /\[registries\.local\]\nindex = "[^"]+"\nread-key = \{ token = "device", label = "cargo" \}\n/,
    )
    assert.doesNotMatch(text, /\[registries\.local\.read-key\]/)
    // A key added at the end of the file is in [registries.local], as the docs show it.
    const appended = join(dir, 'appended.toml')
    await writeFile(appended, text)
    await appendFile(appended, 'confirm = "none"\n')
    assert.equal(
      parseConfig(await readFile(appended, 'utf8'), appended, {}).registries['local']?.confirm,
      'none',
    )
  })

  test('an agent started without SOFTHSM2_CONF finds the token through module-env and signs with the printed key', async () => {
    const agentEnv = { ...env }
    delete agentEnv['SOFTHSM2_CONF']
    const child = spawn(
      process.execPath,
      [distPath('src', 'bin', 'cargo-pkcs11-agent.cjs'), 'run', '--foreground'],
      {
        env: agentEnv,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
    try {
      await waitForSocket(String(env['CARGO_PKCS11_AGENT_SOCK']), child, () => output)
      const r = await runShim(shimBinPath(), cargoGet(INDEX, 'read'), {
        env: { ...agentEnv, CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' },
      })
      const ok = JSON.parse(String(r.lines[1])) as { Ok?: { token: string } }
      assert.ok(ok.Ok !== undefined, `${r.stdout} ${r.stderr} ${output}`)
      await verifyToken(ok.Ok.token, { publicKey: k3, url: INDEX, operation: 'read' })
    } finally {
      const exited = new Promise((res) => child.once('exit', res))
      child.kill('SIGTERM')
      await exited
    }
  })

  test('a token module-env points at the wrong store: doctor and the agent say module-env', async () => {
    const empty = await createSoftHsmStore()
    try {
      const wrong = join(dir, 'wrong-store.toml')
      const text = await readFile(configPath(), 'utf8')
      await writeFile(wrong, text.replace(store.confPath, empty.confPath), { mode: 0o600 })
      const agentEnv: NodeJS.ProcessEnv = { ...env, CARGO_PKCS11_AGENT_SOCK: join(dir, 'run', 'wrong.sock') }
      delete agentEnv['SOFTHSM2_CONF']
      const doctor = await runAgentCli(['doctor', '--json', '--config', wrong], { env: agentEnv })
      const findings = JSON.parse(doctor.stdout) as { check: string; detail: string; remedy?: string }[]
      const absent = findings.find((f) => f.check === 'token device' && /is not present/.test(f.detail))
      assert.ok(absent !== undefined, doctor.stdout)
      assert.match(absent.remedy ?? '', /set the SOFTHSM2_CONF it was made with in the token's module-env/)
      const child = spawn(
        process.execPath,
        [distPath('src', 'bin', 'cargo-pkcs11-agent.cjs'), 'run', '--foreground', '--config', wrong],
        { env: agentEnv, stdio: ['ignore', 'pipe', 'pipe'] },
      )
      let output = ''
      child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
      child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
      try {
        await waitForSocket(String(agentEnv['CARGO_PKCS11_AGENT_SOCK']), child, () => output)
        const r = await runShim(shimBinPath(), cargoGet(INDEX, 'read'), {
          env: { ...agentEnv, CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' },
        })
        assert.match(
          r.stdout,
          /is not present.*SOFTHSM2_CONF it was made with in the token's module-env/,
          r.stdout,
        )
      } finally {
        const exited = new Promise((res) => child.once('exit', res))
        child.kill('SIGTERM')
        await exited
      }
    } finally {
      await empty.cleanup()
    }
  })

  test('a re-run for the same token without --kind, the module by path, reuses its table instead of adding one', async () => {
    const flags = ['--token-label', 'other', '--pin-source', 'env', '--pin-env', 'SETUP_TEST_PIN']
    const first = await runAgentCli(['setup', '--module', 'softhsm', ...flags, '--kind', 'hsm'], {
      env,
      detached: true,
    })
    assert.equal(first.code, 0, first.stderr)
    assert.match(first.stdout, /on token hsm: reused/)
    const before = await readFile(configPath(), 'utf8')
    const again = await runAgentCli(['setup', '--module', store.module, ...flags], { env, detached: true })
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, /on token hsm: reused/)
    assert.equal(await readFile(configPath(), 'utf8'), before, 'the config is unchanged')
    const config = parseConfig(before, configPath(), {})
    assert.deepEqual(Object.keys(config.tokens), ['device', 'hsm'])
    assert.equal(config.tokens['hsm']?.kind, 'hsm')
  })

  test('a configured token without module-env, SOFTHSM2_CONF set here: setup warns and leaves the token as it is', async () => {
    const bare = join(dir, 'bare.toml')
    const text =
      '[tokens.bare]\nmodule = "softhsm"\nlabel = "other"\npin-source = "env"\npin-env = "SETUP_TEST_PIN"\n'
    await writeFile(bare, text, { mode: 0o600 })
    const r = await runAgentCli(['setup', '--config', bare], { env, detached: true })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /on token bare: reused/)
    assert.match(
      r.stderr,
      /warning: SOFTHSM2_CONF is set here but not in module-env of \[tokens\.bare\]: an agent started without it \(autostart, install-service\) may not find the token/,
    )
    assert.equal(await readFile(bare, 'utf8'), text)
  })

  test('CI=true: a registry whose config refuses every publish is warned about; --confirm none writes confirm and doctor passes it', async () => {
    const ci = { ...env, CI: 'true' }
    const flags = ['--module', 'softhsm', '--token-label', 'ci', '--registry', 'ci', '--index', CI_INDEX]
    const warned = await runAgentCli(['setup', ...flags], { env: ci, detached: true })
    assert.equal(warned.code, 0, warned.stderr)
    assert.match(
      warned.stderr,
      /warning: confirm = "prompt" on a headless agent: nobody can confirm, so every publish, yank and owner change to ci is refused; run setup again with --confirm none/,
    )
    const fixed = await runAgentCli(['setup', ...flags, '--confirm', 'none'], { env: ci, detached: true })
    assert.equal(fixed.code, 0, fixed.stderr)
    assert.doesNotMatch(fixed.stderr, /warning/)
    assert.equal(
      parseConfig(await readFile(configPath(), 'utf8'), configPath(), {}).registries['ci']?.confirm,
      'none',
    )
    const doctor = await runAgentCli(['doctor', '--json'], { env: ci })
    const findings = JSON.parse(doctor.stdout) as { level: string; check: string; detail: string }[]
    const registry = findings.filter((f) => f.check === 'registry ci')
    assert.ok(
      registry.some((f) => f.level === 'ok' && /^confirm none/.test(f.detail)),
      doctor.stdout,
    )
    assert.ok(!registry.some((f) => f.level === 'fail'), doctor.stdout)
    const touch = await runAgentCli(['setup', ...flags, '--confirm', 'touch', '--force'], {
      env: ci,
      detached: true,
    })
    assert.equal(touch.code, 0, touch.stderr)
    assert.match(
      touch.stderr,
      /warning: registry ci: confirm = "touch" but the mutation key .* shows no touch policy/,
    )
  })
})
