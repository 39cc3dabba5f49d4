/**
 * `cargo-pkcs11-agent setup` from nothing: a private SoftHSM store, a key made on the token, the
 * agent config and the cargo config; then a real agent started from that config signs through the
 * shim a token that verifies with the key setup printed.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse } from 'smol-toml'

import { parseConfig } from '../../src/config/load.js'
import { k3Pid, parseK3Public } from '../../src/keys/paserk.js'
import { verifyToken } from '../../src/verify/verify.js'
import {
  cargoGet,
  distPath,
  packageShimPath,
  runAgentCli,
  runShim,
  shimBinPath,
  waitForSocket,
} from '../helpers/agent.js'

const AGENT = distPath('src', 'bin', 'cargo-pkcs11-agent.cjs')

const INDEX = 'sparse+http://127.0.0.1:38650/index/'

describe('setup', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  let agent: ChildProcess | undefined

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agent-setup-'))
    env = {
      ...process.env,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_HOME: join(dir, 'cargo-home'),
      CARGO_PKCS11_AGENT_SOCK: join(dir, 'run', 'cargo-pkcs11-agent', 'agent.sock'),
    }
    // setup must not depend on a SoftHSM store of the environment it runs in.
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    delete env['CI']
  })
  after(async () => {
    if (agent !== undefined && agent.exitCode === null) {
      const exited = new Promise((r) => agent?.once('exit', r))
      agent.kill('SIGTERM')
      await exited
    }
    await rm(dir, { recursive: true, force: true })
  })

  let k3: string

  test('first run: SoftHSM token, key generated, configs written, key printed', async () => {
    const r = await runAgentCli(['setup', '--registry', 'local', '--index', INDEX, '--write-cargo-config'], {
      env: env,
    })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /on token softhsm: generated/)
    assert.match(r.stderr, /created a SoftHSM token/)
    k3 = /k3\.public\.[A-Za-z0-9_-]{66}/.exec(r.stdout)?.[0] ?? ''
    assert.notEqual(k3, '')
    assert.match(r.stdout, /k3\.pid\.[A-Za-z0-9_-]{44}/)
    const configPath = join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')
    const config = parseConfig(await readFile(configPath, 'utf8'), configPath, env)
    assert.equal(config.registries['local']?.index, INDEX)
    assert.equal(config.tokens['softhsm']?.pinSource, 'file')
    assert.equal((await stat(configPath)).mode & 0o777, 0o600)
    assert.equal((await stat(String(config.tokens['softhsm']?.pinFile))).mode & 0o777, 0o600)
    const cargo = parse(await readFile(join(dir, 'cargo-home', 'config.toml'), 'utf8')) as {
      registries: Record<string, { index: string; 'credential-provider': string[] }>
    }
    assert.equal(cargo.registries['local']?.index, INDEX)
    assert.deepEqual(cargo.registries['local']?.['credential-provider'], [packageShimPath()])
    assert.ok(
      !r.stdout.includes(await readFile(String(config.tokens['softhsm']?.pinFile), 'utf8')),
      'the PIN is never printed',
    )
  })

  test('an agent started from that config (no SOFTHSM2_CONF exported) signs with the printed key', async () => {
    const child = spawn(process.execPath, [AGENT, 'run', '--foreground'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    agent = child
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
    await waitForSocket(String(env['CARGO_PKCS11_AGENT_SOCK']), child, () => output)
    const r = await runShim(shimBinPath(), cargoGet(INDEX, 'read'), {
      env: { ...env, CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' },
    })
    const ok = JSON.parse(String(r.lines[1])) as { Ok?: { token: string } }
    assert.ok(ok.Ok !== undefined, `${r.stdout} ${r.stderr} ${output}`)
    await verifyToken(ok.Ok.token, { publicKey: k3, url: INDEX, operation: 'read' })
    const exited = new Promise((res) => child.once('exit', res))
    child.kill('SIGTERM')
    await exited
  })

  test('second run reuses the key and changes nothing', async () => {
    const r = await runAgentCli(['setup', '--registry', 'local', '--index', INDEX, '--write-cargo-config'], {
      env: env,
    })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /: reused/)
    assert.ok(r.stdout.includes(k3))
    assert.match(r.stdout, /\(unchanged\)/)
  })

  test('changing a binding needs --force, which never destroys the key; replacing it needs --regenerate-key and a confirmation naming its k3.pid', async () => {
    const moved = await runAgentCli(
      ['setup', '--registry', 'local', '--index', 'sparse+http://127.0.0.1:38651/index/'],
      { env },
    )
    assert.equal(moved.code, 1)
    assert.match(moved.stderr, /already has a different \[registries\.local\]\. Pass --force/)
    const forced = await runAgentCli(['setup', '--registry', 'local', '--index', INDEX, '--force'], {
      env: env,
    })
    assert.equal(forced.code, 0, forced.stderr)
    assert.match(forced.stdout, /: reused/)
    assert.ok(forced.stdout.includes(k3), '--force kept the key')
    const pid = k3Pid(parseK3Public(k3))
    const unconfirmed = await runAgentCli(['setup', '--regenerate-key'], { env })
    assert.equal(unconfirmed.code, 1)
    assert.ok(unconfirmed.stderr.includes(pid), unconfirmed.stderr)
    assert.match(unconfirmed.stderr, /--confirm-destroy/)
    const wrong = await runAgentCli(['setup', '--regenerate-key', '--confirm-destroy', 'k3.pid.other'], {
      env,
    })
    assert.equal(wrong.code, 1)
    const same = await runAgentCli(['setup'], { env })
    assert.ok(same.stdout.includes(k3), 'refused regenerations changed nothing')
    const confirmed = await runAgentCli(['setup', '--regenerate-key', '--confirm-destroy', pid], { env })
    assert.equal(confirmed.code, 0, confirmed.stderr)
    assert.match(confirmed.stdout, /regenerated/)
    assert.ok(!confirmed.stdout.includes(k3), 'a new key')
  })

  test('bad arguments are usage errors', async () => {
    const r = await runAgentCli(['setup', '--registry', 'x'], { env })
    assert.equal(r.code, 2)
    assert.match(r.stderr, /--registry and --index go together/)
    const bad = await runAgentCli(
      ['setup', '--registry', 'x', '--index', 'sparse+https://registry.example/index'],
      { env },
    )
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /ends with "\/"/)
  })

  test('without --write-cargo-config the cargo table is printed, and the cargo config is left alone', async () => {
    const cargoConfig = join(dir, 'cargo-home', 'config.toml')
    const before = await readFile(cargoConfig, 'utf8')
    const r = await runAgentCli(
      ['setup', '--registry', 'other', '--index', 'sparse+http://127.0.0.1:38652/index/'],
      {
        env,
      },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /cargo config: add to .*config\.toml \(or pass --write-cargo-config\):/)
    assert.match(r.stdout, /\[registries\.other\]/)
    assert.ok(r.stdout.includes(packageShimPath()), r.stdout)
    assert.equal(await readFile(cargoConfig, 'utf8'), before)
  })

  test('--module describes a token by flags; then several tokens need --token', async () => {
    const configPath = join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')
    const soft = parseConfig(await readFile(configPath, 'utf8'), configPath, env).tokens['softhsm']
    assert.ok(soft !== undefined)
    const flags = [
      'setup',
      '--module',
      'softhsm',
      '--token-label',
      'cargo-pkcs11-agent',
      '--pin-file',
      String(soft.pinFile),
    ]
    const r = await runAgentCli([...flags, '--token', 'by-flags'], {
      env: { ...env, SOFTHSM2_CONF: soft.moduleEnv['SOFTHSM2_CONF'] },
    })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /on token by-flags: reused/)
    const byFlags = parseConfig(await readFile(configPath, 'utf8'), configPath, env).tokens['by-flags']
    assert.equal(byFlags?.label, 'cargo-pkcs11-agent')
    assert.equal(byFlags.pinSource, 'file')
    assert.equal(byFlags.pinFile, soft.pinFile)

    const several = await runAgentCli(['setup'], { env })
    assert.equal(several.code, 2)
    assert.match(
      several.stderr,
      /several tokens are configured \(softhsm, by-flags\): choose one with --token/,
    )
    const unknown = await runAgentCli(['setup', '--token', 'nope'], { env })
    assert.equal(unknown.code, 1)
    assert.match(unknown.stderr, /No token named 'nope'.*Configured tokens: softhsm, by-flags/s)
    const kind = await runAgentCli([...flags, '--kind', 'usb-stick'], { env })
    assert.equal(kind.code, 2)
    assert.match(kind.stderr, /--kind must be one of yubikey, tpm, hsm, softhsm/)
    const unselected = await runAgentCli(['setup', '--module', 'softhsm'], { env })
    assert.equal(unselected.code, 2)
    assert.match(unselected.stderr, /--module needs --token-label or --serial/)
  })
})
