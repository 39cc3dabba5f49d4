/**
 * `setup --module ykcs11` on a blank virtual YubiKey (real ykcs11 2.2 and yubico-piv-tool 2.2 →
 * pcscd → vpcd → test/fixtures/vpiv): the factory management key is replaced by a random one stored
 * PIN-protected, P-384 keys are generated in 9c (touch always) and 9a (touch never, PIN once), the
 * config binds them with confirm = "touch", a second run reuses them, --regenerate-key without a
 * confirmation changes nothing, and neither the management key nor the PIN reaches argv, a child's
 * environment, the output or a file.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parseConfig } from '../../src/config/load.js'
import { compressPoint } from '../../src/keys/point.js'
import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { pem, verifyAttestation } from '../../src/verify/attestation.js'
import { startRegistry } from '../fixtures/registry/server.js'
import { verifyToken } from '../../src/verify/verify.js'
import {
  cargoGet,
  distPath,
  readAudit,
  runAgentCli,
  runShim,
  shimBinPath,
  waitForSocket,
} from '../helpers/agent.js'
import { LIMITS } from '../../src/lib/limits.js'
import { createAttestationCa, startVirtualYubiKey, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'

const SERIAL = 31337001
const PIN = '123456'
const INDEX = 'sparse+http://127.0.0.1:38652/index/'

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...(await filesUnder(path)))
    else if (entry.isFile()) out.push(path)
  }
  return out
}

describe('setup on a blank YubiKey through ykcs11', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  let yk: VirtualYubiKey
  let toolLog: string
  let printed: string[] = []
  const run = async (args: string[]) => {
    const r = await runAgentCli(['setup', ...args], { env, timeoutMs: 120_000 })
    printed.push(r.stdout, r.stderr)
    return r
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ykcs11-setup-'))
    yk = await startVirtualYubiKey({ serial: SERIAL, blank: true })
    await yk.waitForToken()
    // A yubico-piv-tool on PATH that records its argv and environment, then runs the real one.
    const bin = join(dir, 'bin')
    toolLog = join(dir, 'tool-calls.log')
    await mkdir(bin)
    await writeFile(
      join(bin, 'yubico-piv-tool'),
      `#!/bin/sh\n{ printf 'ARGV'; printf ' %s' "$@"; printf '\\n'; env; } >> '${toolLog}'\nexec /usr/bin/yubico-piv-tool "$@"\n`,
    )
    await chmod(join(bin, 'yubico-piv-tool'), 0o755)
    env = {
      ...process.env,
      ...yk.env,
      PATH: `${bin}:${process.env['PATH'] ?? ''}`,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_HOME: join(dir, 'cargo-home'),
      YK_SETUP_TEST_PIN: PIN,
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    // CI=true makes `headless` default to true; these tests check the defaults of a developer's machine.
    delete env['CI']
  })
  after(async () => {
    await yk?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  const configPath = (): string => join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')
  let keys: { read: string; mutation: string }

  test('first run: management key replaced and PIN-protected, 9c touch always and 9a touch never generated, config bound', async () => {
    const r = await run([
      '--module',
      'ykcs11',
      '--pin-source',
      'env',
      '--pin-env',
      'YK_SETUP_TEST_PIN',
      '--registry',
      'local',
      '--index',
      INDEX,
    ])
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stderr, /factory management key/)
    assert.match(r.stderr, /replaced the management key/)
    // Debian's ykcs11 2.2.0 reports 2.20 in CK_INFO: the policies go through yubico-piv-tool.
    for (const slot of ['9a', '9c'])
      assert.match(
        r.stderr,
        new RegExp(
          `slot ${slot}: generating a P-384 key through yubico-piv-tool \\(ykcs11 2\\.2\\.0 takes no PIN/touch policy attributes; 2\\.3\\.0 and later do\\)`,
        ),
      )
    const mk = await yk.control.managementKey()
    assert.equal(mk.isDefault, false)
    assert.equal(await yk.control.object('5fc109'), `881a8918${mk.hex}`)
    assert.equal(await yk.control.object('5fff00'), '8003810102')

    const slots = new Map((await yk.control.slots()).map((s) => [s.slot, s]))
    assert.equal(slots.get('9c')?.touchPolicy, 'always')
    assert.equal(slots.get('9c')?.origin, 'generated')
    assert.equal(slots.get('9a')?.touchPolicy, 'never')
    assert.equal(slots.get('9a')?.pinPolicy, 'once')
    const k3Of = (slot: string): string =>
      k3Public(compressPoint(Buffer.from(String(slots.get(slot)?.publicPoint), 'hex')))
    keys = { read: k3Of('9a'), mutation: k3Of('9c') }
    assert.notEqual(keys.read, keys.mutation)
    assert.match(
      r.stdout,
      new RegExp(`mutation key in slot 9c .*generated.*touch policy always\\n${keys.mutation}\\n`),
    )
    assert.match(
      r.stdout,
      new RegExp(`read key in slot 9a .*generated.*PIN policy once, touch policy never\\n${keys.read}\\n`),
    )
    assert.ok(r.stdout.includes(k3Pid(keys.mutation)))

    const config = parseConfig(await readFile(configPath(), 'utf8'), configPath(), env)
    const local = config.registries['local']
    assert.equal(local?.confirm, 'touch')
    assert.equal(local?.readKey.id, '01')
    assert.equal(local?.mutationKey.id, '02')
    const token = config.tokens[local?.readKey.token ?? '']
    assert.equal(token?.serial, String(SERIAL))
    assert.equal(token?.kind, 'yubikey')
  })

  test('the attestation of the generated mutation key verifies under the card CA with touch always', async () => {
    const { execFile } = await import('node:child_process')
    const tool = (args: string[]): Promise<string> =>
      new Promise((res, rej) =>
        execFile('yubico-piv-tool', args, { env: { ...process.env, ...yk.env } }, (e, out) =>
          e ? rej(e) : res(out),
        ),
      )
    const attestation = await tool(['-a', 'attest', '-s', '9c'])
    const intermediate = await tool(['-a', 'read-certificate', '-s', 'f9'])
    const { parseK3Public } = await import('../../src/keys/paserk.js')
    const attested = verifyAttestation({
      attestation,
      intermediate,
      roots: [yk.attestationCa.pem],
      expectedKey: parseK3Public(keys.mutation),
      require: { touchPolicies: ['always'] },
    })
    assert.equal(attested.serial, SERIAL)
    assert.equal(attested.touchPolicy, 'always')
    assert.equal(attested.firmware, '5.4.3')
    assert.throws(
      () =>
        verifyAttestation({
          attestation,
          intermediate,
          roots: [yk.attestationCa.pem],
          expectedKey: parseK3Public(keys.read),
        }),
      { code: 'ATTESTATION_KEY_MISMATCH' },
    )
    const readAttestation = await tool(['-a', 'attest', '-s', '9a'])
    assert.throws(
      () =>
        verifyAttestation({
          attestation: readAttestation,
          intermediate,
          roots: [yk.attestationCa.pem],
          expectedKey: parseK3Public(keys.read),
          require: { touchPolicies: ['always', 'cached'] },
        }),
      { code: 'ATTESTATION_POLICY_WEAK' },
    )
  })

  test('pubkey --attest exports each chain through PKCS#11; the registry fixture and verify --attestation accept touch always and refuse the rest with their own codes', async () => {
    const attest = async (id: string, json = false): Promise<string> => {
      const r = await runAgentCli(
        [
          'pubkey',
          '--config',
          configPath(),
          '--token',
          'yubikey',
          '--id',
          id,
          '--attest',
          ...(json ? ['--json'] : []),
        ],
        { env, timeoutMs: 60_000 },
      )
      printed.push(r.stdout, r.stderr)
      assert.equal(r.code, 0, r.stdout + r.stderr)
      return r.stdout
    }
    const mutationChain = await attest('02')
    const readChain = await attest('01')
    assert.equal((mutationChain.match(/BEGIN CERTIFICATE/g) ?? []).length, 2)
    const asJson = JSON.parse(await attest('02', true)) as Record<string, unknown>
    assert.equal(asJson['k3Public'], keys.mutation)
    assert.equal(asJson['touchPolicy'], 'always')
    assert.equal(asJson['serial'], SERIAL)
    // The policies the card holds (its metadata) and the attestation agree.
    const slots = new Map((await yk.control.slots()).map((s) => [s.slot, s]))
    assert.equal(asJson['pinPolicy'], slots.get('9c')?.pinPolicy)

    const registry = await startRegistry({
      stateDir: join(dir, 'registry'),
      attestationRoots: [yk.attestationCa.pem],
    })
    try {
      const accepted = registry.registerAttestedKey(keys.mutation, mutationChain, 'mutation')
      assert.equal(accepted.touchPolicy, 'always')
      assert.throws(() => registry.registerAttestedKey(keys.read, readChain, 'mutation'), {
        code: 'ATTESTATION_POLICY_WEAK',
      })
      registry.registerAttestedKey(keys.read, readChain, 'read')
      // Tampered: one byte of the attestation certificate's signature flipped.
      const [leaf, f9] =
        mutationChain.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []
      const der = new X509Certificate(String(leaf)).raw
      der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0x01
      assert.throws(() => registry.registerAttestedKey(keys.mutation, pem(der) + String(f9), 'mutation'), {
        code: 'ATTESTATION_INVALID',
      })
      // Another card (same vendor root): its chain verifies but attests another key.
      const ca = yk.attestationCa.key
      const other = await startVirtualYubiKey({ serial: SERIAL + 1, attestationCa: ca })
      try {
        const tool = (args: string[]): string =>
          execFileSync('yubico-piv-tool', args, { env: { ...process.env, ...other.env } }).toString()
        const otherChain = tool(['-a', 'attest', '-s', '9c']) + tool(['-a', 'read-certificate', '-s', 'f9'])
        assert.throws(() => registry.registerAttestedKey(keys.mutation, otherChain, 'mutation'), {
          code: 'ATTESTATION_KEY_MISMATCH',
        })
      } finally {
        await other.stop()
      }
      // Under a root the registry does not trust.
      const stranger = createAttestationCa('not the vendor')
      const strangerRegistry = await startRegistry({
        stateDir: join(dir, 'registry-2'),
        attestationRoots: [pem(stranger.certificate)],
      })
      try {
        assert.throws(() => strangerRegistry.registerAttestedKey(keys.mutation, mutationChain, 'mutation'), {
          code: 'ATTESTATION_INVALID',
        })
      } finally {
        await strangerRegistry.stop()
      }
    } finally {
      await registry.stop()
    }

    const chainFile = join(dir, 'chain.pem')
    const readFile2 = join(dir, 'read-chain.pem')
    const rootsFile = join(dir, 'roots.pem')
    await writeFile(chainFile, mutationChain)
    await writeFile(readFile2, readChain)
    await writeFile(rootsFile, yk.attestationCa.pem)
    const cli = (file: string, key: string) =>
      runAgentCli(
        [
          'verify',
          '--attestation',
          file,
          '--roots',
          rootsFile,
          '--public-key',
          key,
          '--require-touch',
          'always',
          '--json',
        ],
        { env },
      )
    const ok = await cli(chainFile, keys.mutation)
    assert.equal(ok.code, 0, ok.stdout + ok.stderr)
    assert.equal((JSON.parse(ok.stdout) as { touchPolicy: string }).touchPolicy, 'always')
    const weak = await cli(readFile2, keys.read)
    assert.equal(weak.code, 1)
    assert.equal((JSON.parse(weak.stdout) as { code: string }).code, 'ATTESTATION_POLICY_WEAK')
    const mismatch = await cli(chainFile, keys.read)
    assert.equal((JSON.parse(mismatch.stdout) as { code: string }).code, 'ATTESTATION_KEY_MISMATCH')
  })

  test('second run reuses both keys without authenticating; --regenerate-key without confirmation changes nothing', async () => {
    const before = await yk.control.counters()
    const again = await run(['--pin-env', 'YK_SETUP_TEST_PIN', '--module', 'ykcs11', '--pin-source', 'env'])
    assert.equal(again.code, 0, again.stdout + again.stderr)
    assert.equal((again.stdout.match(/: reused/g) ?? []).length, 2, again.stdout)
    assert.ok(again.stdout.includes(keys.read) && again.stdout.includes(keys.mutation))
    const refused = await run([
      '--module',
      'ykcs11',
      '--pin-source',
      'env',
      '--pin-env',
      'YK_SETUP_TEST_PIN',
      '--regenerate-key',
    ])
    assert.equal(refused.code, 1, refused.stdout + refused.stderr)
    assert.match(refused.stderr, /slot 9a of YubiKey 31337001 holds k3\.pid\./)
    assert.ok(refused.stderr.includes(k3Pid(keys.read)))
    const after = await yk.control.counters()
    assert.equal(after.generate, before.generate)
    assert.equal(after.managementAuth, before.managementAuth)
    const slots = new Map((await yk.control.slots()).map((s) => [s.slot, s]))
    assert.equal(
      k3Public(compressPoint(Buffer.from(String(slots.get('9c')?.publicPoint), 'hex'))),
      keys.mutation,
    )
  })

  const startAgentProcess = async (
    config: string,
  ): Promise<{ child: ChildProcess; output: () => string }> => {
    const child = spawn(
      process.execPath,
      [distPath('src', 'bin', 'cargo-pkcs11-agent.cjs'), 'run', '--foreground', '--config', config],
      {
        env: { ...env, CARGO_PKCS11_AGENT_SOCK: socket() },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
    printed.push('')
    const at = printed.length - 1
    child.on('close', () => (printed[at] = output))
    return { child, output: () => output }
  }
  const socket = (): string => join(dir, 'run', 'agent.sock')
  const stopAgent = async (child: ChildProcess): Promise<void> => {
    if (child.exitCode !== null) return
    const exited = new Promise((r) => child.once('close', r))
    child.kill('SIGTERM')
    await exited
  }

  test('an agent from that config: the read signs on 9a without a touch, the publish on 9c after one; both verify', async () => {
    await yk.control.setTouchDelay(400)
    const { child, output } = await startAgentProcess(configPath())
    try {
      await waitForSocket(socket(), child, output)
      const shimEnv = { ...env, CARGO_PKCS11_AGENT_SOCK: socket(), CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' }
      const touches = (await yk.control.counters()).touches
      const read = await runShim(shimBinPath(), cargoGet(INDEX, 'read'), { env: shimEnv })
      const readOk = JSON.parse(String(read.lines[1])) as { Ok?: { token: string } }
      assert.ok(readOk.Ok !== undefined, read.stdout + read.stderr + output())
      await verifyToken(readOk.Ok.token, { publicKey: keys.read, url: INDEX, operation: 'read' })
      assert.equal((await yk.control.counters()).touches, touches, 'the read key needs no touch')

      const cksum = 'ab'.repeat(32)
      const crate = { name: 'yk-setup-crate', vers: '1.0.0', cksum }
      const blinked = yk.control.touchRequested()
      const publish = await runShim(shimBinPath(), cargoGet(INDEX, 'publish', crate), { env: shimEnv })
      await blinked
      const publishOk = JSON.parse(String(publish.lines[1])) as { Ok?: { token: string } }
      assert.ok(publishOk.Ok !== undefined, publish.stdout + publish.stderr + output())
      await verifyToken(publishOk.Ok.token, {
        publicKey: keys.mutation,
        url: INDEX,
        operation: 'publish',
        crate,
      })
      assert.equal((await yk.control.counters()).touches, touches + 1, 'the publish waited for one touch')
      const status = await runAgentCli(['status', '--json'], { env: shimEnv })
      assert.equal(status.code, 0, status.stderr)
      const local = (
        JSON.parse(status.stdout) as {
          registries: {
            name: string
            keyPolicies: Record<string, { pinPolicy: string; touchPolicy: string }>
            confirmReason: string
            confirmWarning?: string
          }[]
        }
      ).registries.find((x) => x.name === 'local')
      assert.deepEqual(local?.keyPolicies, {
        read: { pinPolicy: 'once', touchPolicy: 'never' },
        mutation: { pinPolicy: 'always', touchPolicy: 'always' },
      })
      // The explicit confirm = "touch" is attested by the card: nothing to warn about.
      assert.equal(local?.confirmReason, 'touch — set in the config, key 9c attests touch always')
      assert.equal(local?.confirmWarning, undefined)
      assert.doesNotMatch(output(), /warning: /)
    } finally {
      await stopAgent(child)
    }
  })

  test('confirm = "touch" bound to the touch-never key: the agent refuses to start, with the fix', async () => {
    const text = await readFile(configPath(), 'utf8')
    const wrong = join(dir, 'config', 'touch-never.toml')
    await writeFile(wrong, text.replace(/(mutation-key = \{ token = "yubikey", id = )"02"/, '$1"01"'), {
      mode: 0o600,
    })
    assert.notEqual(await readFile(wrong, 'utf8'), text)
    const { child, output } = await startAgentProcess(wrong)
    const code = await new Promise<number | null>((r) => child.once('close', r))
    assert.notEqual(code, 0)
    assert.match(output(), /KEY_POLICY_MISMATCH|touch policy "never"/)
    assert.match(output(), /--touch-policy always|confirm = "prompt"/)

    const doctor = async (config: string) => {
      const r = await runAgentCli(['doctor', '--json', '--config', config], { env, timeoutMs: 120_000 })
      printed.push(r.stdout, r.stderr)
      return JSON.parse(r.stdout) as { level: string; check: string; detail: string; remedy?: string }[]
    }
    const bad = (await doctor(wrong)).filter((f) => f.check === 'registry local')
    const mismatch = bad.find((f) => f.detail.startsWith('KEY_POLICY_MISMATCH'))
    assert.equal(mismatch?.level, 'fail', JSON.stringify(bad, null, 2))
    assert.match(mismatch?.remedy ?? '', /--touch-policy always/)
    const good = (await doctor(configPath())).filter((f) => f.check === 'registry local')
    assert.ok(
      good.some((f) => f.level === 'ok' && /mutation key .*touch policy always/.test(f.detail)) &&
        good.some((f) => f.level === 'ok' && /read key .*PIN policy once, touch policy never/.test(f.detail)),
      JSON.stringify(good, null, 2),
    )
  })

  test('confirm unset: touch is the default on the touch-always 9c key (the publish waits for a touch); on the touch-never 9a key the prompt stays; status says why; a reload cannot weaken it', async () => {
    const text = await readFile(configPath(), 'utf8')
    assert.match(text, /^confirm = "touch"\n/m, 'setup writes confirm explicitly')
    const unset = join(dir, 'config', 'confirm-unset.toml')
    await writeFile(unset, text.replace(/^confirm = "touch"\n/m, ''), { mode: 0o600 })
    assert.equal(
      parseConfig(await readFile(unset, 'utf8'), unset, env).registries['local']?.confirm,
      undefined,
    )
    const on9a = join(dir, 'config', 'confirm-unset-9a.toml')
    await writeFile(
      on9a,
      (await readFile(unset, 'utf8')).replace(/(mutation-key = \{ token = "yubikey", id = )"02"/, '$1"01"'),
      { mode: 0o600 },
    )
    assert.notEqual(await readFile(on9a, 'utf8'), await readFile(unset, 'utf8'))
    const shimEnv = { ...env, CARGO_PKCS11_AGENT_SOCK: socket(), CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' }
    const statusOf = async (): Promise<{ confirm: string; confirmReason: string } | undefined> => {
      const status = await runAgentCli(['status', '--json'], { env: shimEnv })
      assert.equal(status.code, 0, status.stderr)
      printed.push(status.stdout)
      return (
        JSON.parse(status.stdout) as {
          registries: { name: string; confirm: string; confirmReason: string }[]
        }
      ).registries.find((x) => x.name === 'local')
    }
    // Longer than touch-notice-after-ms, so the agent announces the touch it waits for.
    await yk.control.setTouchDelay(LIMITS.touchNoticeAfterMs + 600)

    const touchy = await startAgentProcess(unset)
    try {
      await waitForSocket(socket(), touchy.child, touchy.output)
      const local = await statusOf()
      assert.equal(local?.confirm, 'touch')
      assert.equal(local?.confirmReason, 'touch — default, key 9c attests touch always')
      const plain = await runAgentCli(['status'], { env: shimEnv })
      assert.match(plain.stdout, /confirm touch — default, key 9c attests touch always/)
      const touches = (await yk.control.counters()).touches
      const crate = { name: 'yk-default-touch', vers: '1.0.0', cksum: 'ef'.repeat(32) }
      const blinked = yk.control.touchRequested()
      const publish = await runShim(shimBinPath(), cargoGet(INDEX, 'publish', crate), { env: shimEnv })
      await blinked
      const ok = JSON.parse(String(publish.lines[1])) as { Ok?: { token: string } }
      assert.ok(ok.Ok !== undefined, publish.stdout + publish.stderr + touchy.output())
      await verifyToken(ok.Ok.token, { publicKey: keys.mutation, url: INDEX, operation: 'publish', crate })
      assert.equal((await yk.control.counters()).touches, touches + 1, 'the publish waited for one touch')
      assert.match(publish.stderr, /Touch .*publish yk-default-touch 1\.0\.0/)
      const audited = readAudit(join(dir, 'state', 'cargo-pkcs11-agent', 'audit.jsonl')).filter(
        (e) => e['operation'] === 'publish' && e['crate'] === 'yk-default-touch',
      )
      assert.deepEqual(
        audited.map((e) => [e['result'], e['approval']]),
        [['signed', 'touch']],
      )

      // SIGHUP onto the touch-never key with confirm still unset would turn the touch into a prompt.
      await writeFile(unset, await readFile(on9a, 'utf8'), { mode: 0o600 })
      touchy.child.kill('SIGHUP')
      const deadline = Date.now() + 30_000
      while (!/reload refused/.test(touchy.output()) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100))
      assert.match(touchy.output(), /reload refused.*registry local: confirm "touch" → "prompt"/)
      assert.equal((await statusOf())?.confirmReason, 'touch — default, key 9c attests touch always')
    } finally {
      await stopAgent(touchy.child)
    }

    const prompting = await startAgentProcess(on9a)
    try {
      await waitForSocket(socket(), prompting.child, prompting.output)
      const local = await statusOf()
      assert.equal(local?.confirm, 'prompt')
      assert.equal(local?.confirmReason, 'prompt — default, key 9a attests touch never')
      // The old default applies: a yes/no nobody here can answer (no terminal, no display for
      // pinentry), so the publish is refused without a signature and without a touch.
      const before = await yk.control.counters()
      const crate = { name: 'yk-default-prompt', vers: '1.0.0', cksum: '01'.repeat(32) }
      const publish = await runShim(shimBinPath(), cargoGet(INDEX, 'publish', crate), {
        env: { ...shimEnv, DISPLAY: '', WAYLAND_DISPLAY: '' },
        timeoutMs: 60_000,
      })
      const answer = JSON.parse(String(publish.lines[1])) as { Ok?: unknown; Err?: { message?: string } }
      assert.equal(answer.Ok, undefined, publish.stdout + publish.stderr + prompting.output())
      assert.match(prompting.output(), /publish for local: POLICY_DENIED/)
      const after = await yk.control.counters()
      assert.deepEqual([after.sign, after.touches], [before.sign, before.touches])
    } finally {
      await stopAgent(prompting.child)
    }
    const doctor = await runAgentCli(['doctor', '--json', '--config', on9a], { env, timeoutMs: 120_000 })
    printed.push(doctor.stdout, doctor.stderr)
    const findings = JSON.parse(doctor.stdout) as { level: string; check: string; detail: string }[]
    assert.ok(
      findings.some(
        (f) =>
          f.check === 'registry local' && f.detail === 'confirm prompt — default, key 9a attests touch never',
      ),
      JSON.stringify(findings, null, 2),
    )
    const touchDoctor = await runAgentCli(['doctor', '--json', '--config', configPath()], {
      env,
      timeoutMs: 120_000,
    })
    printed.push(touchDoctor.stdout, touchDoctor.stderr)
    assert.ok(
      (JSON.parse(touchDoctor.stdout) as { check: string; detail: string }[]).some(
        (f) =>
          f.check === 'registry local' &&
          f.detail === 'confirm touch — set in the config, key 9c attests touch always',
      ),
      touchDoctor.stdout,
    )
  })

  test('the management key and the PIN are in no argv, child environment, output or file', async () => {
    const mk = (await yk.control.managementKey()).hex
    const calls = await readFile(toolLog, 'utf8')
    assert.match(calls, /ARGV .*-a generate/)
    for (const secret of [mk, mk.toUpperCase(), PIN]) {
      assert.ok(!calls.includes(secret), 'argv / child environment')
      for (const text of printed) assert.ok(!text.includes(secret), 'output')
    }
    assert.ok(!calls.includes('YK_SETUP_TEST_PIN'), 'the PIN variable is not passed to children')
    for (const file of await filesUnder(dir)) {
      if (file === toolLog) continue
      const content = await readFile(file)
      assert.ok(
        !content.includes(mk) && !content.includes(Buffer.from(mk, 'hex')),
        `${file} holds the management key`,
      )
    }
  })
})

describe('setup --touch-policy cached: one touch covers the publishes inside the window', () => {
  let dir: string
  let yk: VirtualYubiKey
  let env: NodeJS.ProcessEnv

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ykcs11-setup-cached-'))
    yk = await startVirtualYubiKey({ serial: SERIAL + 2, blank: true })
    await yk.waitForToken()
    env = {
      ...process.env,
      ...yk.env,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_HOME: join(dir, 'cargo-home'),
      CARGO_PKCS11_AGENT_SOCK: join(dir, 'run', 'agent.sock'),
      YK_SETUP_TEST_PIN: PIN,
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
  })
  after(async () => {
    await yk?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  test('two publishes within the window cost one touch; after it, another', async () => {
    const r = await runAgentCli(
      [
        'setup',
        '--module',
        'ykcs11',
        '--serial',
        String(SERIAL + 2),
        '--pin-source',
        'env',
        '--pin-env',
        'YK_SETUP_TEST_PIN',
        '--touch-policy',
        'cached',
        '--registry',
        'local',
        '--index',
        INDEX,
      ],
      { env, timeoutMs: 120_000 },
    )
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /mutation key in slot 9c .*touch policy cached/)
    const mutation = /mutation key in slot 9c[^\n]*\n(k3\.public\.[A-Za-z0-9_-]+)/.exec(r.stdout)?.[1] ?? ''
    assert.equal((await yk.control.slots()).find((s) => s.slot === '9c')?.touchPolicy, 'cached')

    await yk.control.setTouchDelay(300)
    const child = spawn(
      process.execPath,
      [distPath('src', 'bin', 'cargo-pkcs11-agent.cjs'), 'run', '--foreground'],
      {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
    try {
      await waitForSocket(String(env['CARGO_PKCS11_AGENT_SOCK']), child, () => output)
      const shimEnv = { ...env, CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' }
      const publish = async (vers: string): Promise<void> => {
        const crate = { name: 'yk-cached', vers, cksum: 'cd'.repeat(32) }
        const s = await runShim(shimBinPath(), cargoGet(INDEX, 'publish', crate), { env: shimEnv })
        const ok = JSON.parse(String(s.lines[1])) as { Ok?: { token: string } }
        assert.ok(ok.Ok !== undefined, s.stdout + s.stderr + output)
        await verifyToken(ok.Ok.token, { publicKey: mutation, url: INDEX, operation: 'publish', crate })
      }
      const start = (await yk.control.counters()).touches
      await publish('1.0.0')
      await publish('1.0.1')
      assert.equal(
        (await yk.control.counters()).touches - start,
        1,
        'two publishes inside the window: one touch',
      )
      await yk.control.expireTouchCache() // as 15 s later
      await publish('1.0.2')
      assert.equal((await yk.control.counters()).touches - start, 2, 'after the window: another touch')
    } finally {
      if (child.exitCode === null) {
        const exited = new Promise((res) => child.once('close', res))
        child.kill('SIGTERM')
        await exited
      }
    }
  })
})

describe('setup --certificate: a self-signed certificate per slot, signed by the card, so OpenSC sees the keys', () => {
  let dir: string
  let yk: VirtualYubiKey
  let env: NodeJS.ProcessEnv

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ykcs11-setup-cert-'))
    yk = await startVirtualYubiKey({ serial: SERIAL + 3, blank: true })
    await yk.waitForToken()
    env = {
      ...process.env,
      ...yk.env,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      YK_SETUP_TEST_PIN: PIN,
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
  })
  after(async () => {
    await yk?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  test('both slots get a certificate that verifies with the slot key; OpenSC finds both keys through them', async () => {
    const r = await runAgentCli(
      [
        'setup',
        '--module',
        'ykcs11',
        '--pin-source',
        'env',
        '--pin-env',
        'YK_SETUP_TEST_PIN',
        '--certificate',
      ],
      { env, timeoutMs: 120_000 },
    )
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stderr, /slot 9c: the card signs a self-signed certificate .*touch/)
    const slots = await yk.control.slots()
    for (const [slot, object] of [
      ['9a', '5fc105'],
      ['9c', '5fc10a'],
    ] as const) {
      const stored = await yk.control.object(object)
      assert.ok(stored !== null, `certificate object ${object}`)
      // 70 { DER certificate } 71 01 00 (PIV SP 800-73-4 part 1, table 10)
      const contents = Buffer.from(String(stored), 'hex')
      const inner = contents.subarray(contents[1] === 0x82 ? 4 : contents[1] === 0x81 ? 3 : 2)
      const cert = new X509Certificate(inner.subarray(0, ((inner[2] ?? 0) << 8) + (inner[3] ?? 0) + 4))
      assert.ok(cert.verify(cert.publicKey), `${slot}: self-signed by the slot key`)
      const point = slots.find((s) => s.slot === slot)?.publicPoint
      const spki = cert.publicKey.export({ type: 'spki', format: 'der' })
      assert.equal(spki.subarray(spki.length - 97).toString('hex'), point)
    }
    const listed = execFileSync(
      'pkcs11-tool',
      ['--module', '/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so', '-O'],
      {
        env: { ...process.env, ...yk.env },
      },
    ).toString()
    // Without a login OpenSC shows the public half of each key it found through its certificate.
    assert.match(
      listed,
      /Certificate Object[^\n]*\n\s*label:\s*Certificate for PIV Authentication[\s\S]*?ID:\s*01/,
    )
    assert.match(
      listed,
      /Certificate Object[^\n]*\n\s*label:\s*Certificate for Digital Signature[\s\S]*?ID:\s*02/,
    )
    assert.equal((listed.match(/Public Key Object; EC {2}EC_POINT 384 bits/g) ?? []).length, 2, listed)
  })
})
