/**
 * The agent's socket over SSH (docs/ssh-forwarding.md), all real: a loopback sshd this test starts
 * (its own config, host key and authorized_keys, public-key auth only, 127.0.0.1, a free port), the
 * real ssh client forwarding the agent socket with `ssh -R`, and on the "remote" side a throwaway
 * user running real cargo and the real shim against the verifying registry. The agent runs as this
 * process's user, as on the laptop; the remote user cannot reach its socket except through the forward.
 *
 * Shown: a remote read is signed and marked forwarded (via ssh, with the ssh client's pid); a remote
 * publish is refused by default (FORWARDED_REFUSED); a SIGHUP that loosens `forwarded` is not
 * applied; after a restart with `forwarded = "confirm"` the publish is approved in the agent's own
 * pinentry, whose text names the forwarded connection, and the registry verifies the token; a client
 * cannot talk its way into or out of being forwarded; a forward that sshd terminates on the agent's
 * host (`ssh -L`) is seen as via sshd; `confirm = "touch"` on the SoftHSM key, which attests no touch,
 * gives a forwarded publish no silent path: it is asked in the agent's pinentry.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { verifyToken } from '../../src/verify/verify.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoGet, readAudit, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { CARGO_BIN_DIR, CRATES_DIR } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

const ROOT = process.getuid?.() === 0
/** A second binding no HTTP registry serves: raw clients sign for it directly, default `forwarded`. */
const STRICT_INDEX = 'sparse+http://127.0.0.1:1/index/'
const CKSUM = 'd'.repeat(64)
const quote = (value: string): string => `'${value.replace(/'/g, `'\\''`)}'`

/** A raw socket client (`node raw-client.cjs SOCKET PARAMS`): one sign request, answers no query,
 * prints the response frame as JSON. */
const RAW_CLIENT = `
const s = require('node:net').createConnection(process.argv[2])
let buf = ''
s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: 'sign', params: JSON.parse(process.argv[3]) }) + '\\n'))
s.setEncoding('utf8').on('data', (d) => {
  buf += d
  for (let i; (i = buf.indexOf('\\n')) >= 0; buf = buf.slice(i + 1)) {
    const f = JSON.parse(buf.slice(0, i))
    if (f.type === 'response') { process.stdout.write(JSON.stringify(f)); process.exit(0) }
  }
})
s.on('error', (e) => { process.stderr.write(String(e)); process.exit(2) })
`

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  /** The ssh client's pid: the process the agent sees as its peer for `ssh -R`. */
  readonly sshPid: number
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

function run(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8' })
  assert.equal(r.status, 0, `${command} ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

describe(
  'the agent socket forwarded over SSH to another user',
  { skip: ROOT ? false : 'needs root: a throwaway user and an sshd of its own' },
  () => {
    let dir: string
    let side: string
    let registry: Registry
    let agent: AgentFixture
    let pinentry: ScriptedPinentry
    let sshd: ChildProcess | undefined
    let sshdLog = ''
    let port: number
    let user: string
    let uid: number
    let home: string
    let remoteSock: string
    let clientKey: string
    let knownHosts: string
    let userAdded = false
    let k3Public: string

    const chownToUser = (path: string): void => {
      run('chown', ['-R', `${user}:${user}`, path])
    }

    /** ssh to 127.0.0.1 with `forward` options, running `command` there; resolves when ssh exits. */
    function ssh(login: string, forward: string[], command: string[], timeoutMs = 60_000): Promise<Run> {
      return new Promise((resolve, reject) => {
        const child = spawn(
          '/usr/bin/ssh',
          [
            '-F',
            '/dev/null',
            '-i',
            clientKey,
            '-p',
            String(port),
            '-o',
            'BatchMode=yes',
            '-o',
            'IdentitiesOnly=yes',
            '-o',
            `UserKnownHostsFile=${knownHosts}`,
            '-o',
            'StrictHostKeyChecking=yes',
            '-o',
            'ExitOnForwardFailure=yes',
            ...forward,
            `${login}@127.0.0.1`,
            ...command,
          ],
          { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH'] } },
        )
        let stdout = ''
        let stderr = ''
        child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
        child.on('error', reject)
        child.on('close', (code) => {
          clearTimeout(timer)
          resolve({ code, stdout, stderr, sshPid: child.pid ?? -1 })
        })
      })
    }

    /** `ssh -R <remote socket>:<agent socket>` running real cargo as the remote user in `crate`. */
    function remoteCargo(crate: string, args: string[]): Promise<Run> {
      return ssh(
        user,
        ['-R', `${remoteSock}:${agent.socket}`],
        ['sh', join(home, 'cargo.sh'), join(home, 'crates', crate), ...args],
      )
    }

    const show = (r: Run): string =>
      `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}\n--- agent\n${agent.log()}\n--- sshd\n${sshdLog}`

    const auditFor = (crate: string): Record<string, unknown>[] =>
      readAudit(agent.auditLog).filter((a) => a['crate'] === crate)

    const forwardedVia = (via: string, pid: number): Record<string, unknown> => ({
      via,
      pid,
      exe: via === 'ssh' ? '/usr/bin/ssh' : '/usr/sbin/sshd',
      verified: true,
    })

    async function configure(forwarded: string | undefined): Promise<void> {
      const config = parse(readFileSync(agent.configPath, 'utf8')) as {
        registries: Record<string, Record<string, unknown>>
      }
      const local = config.registries['local'] as Record<string, unknown>
      if (forwarded === undefined) delete local['forwarded']
      else local['forwarded'] = forwarded
      writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
    }

    async function waitForLog(pattern: RegExp): Promise<void> {
      for (let i = 0; i < 250 && !pattern.test(agent.log()); i++) await new Promise((r) => setTimeout(r, 20))
      assert.match(agent.log(), pattern)
    }

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'ssh-forward-'))
      registry = await startRegistry({
        stateDir: join(dir, 'registry'),
        strictLowS: true,
        maxAgeSeconds: 120,
      })
      pinentry = new ScriptedPinentry()
      agent = await startAgent({
        start: false,
        tokens: { softhsm: { pinSource: 'pinentry' } },
        registries: {
          local: { index: registry.indexUrl, confirm: 'prompt', tokenMaxAgeSeconds: 120 },
          strict: { index: STRICT_INDEX, confirm: 'prompt' },
        },
        env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
      })
      const config = parse(readFileSync(agent.configPath, 'utf8')) as {
        tokens: Record<string, Record<string, unknown>>
      }
      ;(config.tokens['softhsm'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
      writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
      // The PIN comes from the agent's own pinentry only; no desktop, no terminal of the agent's.
      delete agent.agentEnv[agent.pinEnv]
      delete agent.agentEnv['DISPLAY']
      delete agent.agentEnv['WAYLAND_DISPLAY']
      const child = await agent.spawnAgent()
      await waitForSocket(agent.socket, child, () => agent.log())
      k3Public = await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label })
      registry.addKey(k3Public)

      // The remote side: a throwaway user with a home of its own under a directory it can traverse.
      side = mkdtempSync(join(tmpdir(), 'ssh-forward-remote-'))
      chmodSync(side, 0o755)
      user = `cpafwd${process.pid % 100_000}`
      home = join(side, 'home')
      mkdirSync(home, { mode: 0o700 })
      run('useradd', [
        '--no-create-home',
        '--home-dir',
        home,
        '--shell',
        '/bin/sh',
        '--password',
        '*',
        '--user-group',
        user,
      ])
      userAdded = true
      uid = Number(run('id', ['-u', user]).trim())
      // cargo itself (not rustup's proxy, whose toolchains live in this user's home), readable by the
      // remote user; `--no-verify` publishes and lockfiles need no rustc.
      // The shim is one file that loads only Node builtins: copied too, as the checkout may sit in a
      // home the remote user cannot enter.
      const realCargo = run(join(CARGO_BIN_DIR, 'rustup'), ['which', 'cargo']).trim()
      mkdirSync(join(side, 'bin'))
      const shim = join(side, 'bin', 'cargo-credential-pkcs11')
      for (const [from, to] of [
        [realCargo, join(side, 'bin', 'cargo')],
        [agent.shimPath, shim],
      ] as const) {
        copyFileSync(from, to)
        chmodSync(to, 0o755)
      }
      // Where the forwarded socket appears, like /run/user/<uid>/ on a real host.
      const runDir = join(home, 'run')
      mkdirSync(runDir, { mode: 0o700 })
      remoteSock = join(runDir, 'cargo-pkcs11-agent.sock')
      const cargoHome = join(home, '.cargo')
      mkdirSync(cargoHome)
      writeFileSync(
        join(cargoHome, 'config.toml'),
        [
          '[registries.local]',
          `index = ${JSON.stringify(registry.indexUrl)}`,
          `credential-provider = ${JSON.stringify([shim, `--socket=${remoteSock}`, '--no-autostart'])}`,
          '',
          '[term]',
          'color = "never"',
          '',
        ].join('\n'),
      )
      writeFileSync(
        join(home, 'cargo.sh'),
        [
          'set -e',
          `export PATH=${quote(join(side, 'bin'))}:/usr/bin:/bin`,
          `export CARGO_HOME=${quote(cargoHome)} CARGO_TARGET_DIR=${quote(join(home, 'target'))}`,
          'export CARGO_TERM_COLOR=never CARGO_TERM_PROGRESS_WHEN=never',
          `i=0; while [ ! -S ${quote(remoteSock)} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done`,
          'cd "$1"; shift',
          'exec cargo "$@"',
          '',
        ].join('\n'),
      )
      writeFileSync(join(home, 'raw-client.cjs'), RAW_CLIENT)
      writeFileSync(join(dir, 'raw-client.cjs'), RAW_CLIENT)
      for (const crate of ['hwtok-alpha', 'hwtok-beta'])
        cpSync(join(CRATES_DIR, crate), join(home, 'crates', crate), { recursive: true })
      chownToUser(home)

      // The sshd: keys, config and privilege-separation directory of its own; no system sshd involved.
      const keys = join(side, 'sshd')
      mkdirSync(keys, { mode: 0o755 })
      run('ssh-keygen', [
        '-q',
        '-t',
        'ed25519',
        '-N',
        '',
        '-C',
        'ssh-forward-test-host',
        '-f',
        join(keys, 'host_key'),
      ])
      clientKey = join(dir, 'client_key')
      run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ssh-forward-test-client', '-f', clientKey])
      // sshd reads authorized_keys with the logging-in user's rights: world-readable, root-owned.
      copyFileSync(`${clientKey}.pub`, join(keys, 'authorized_keys'))
      chmodSync(join(keys, 'authorized_keys'), 0o644)
      port = await freePort()
      knownHosts = join(dir, 'known_hosts')
      writeFileSync(knownHosts, `[127.0.0.1]:${port} ${readFileSync(join(keys, 'host_key.pub'), 'utf8')}`)
      writeFileSync(
        join(keys, 'sshd_config'),
        [
          'ListenAddress 127.0.0.1',
          `HostKey ${join(keys, 'host_key')}`,
          'PidFile none',
          `AuthorizedKeysFile ${join(keys, 'authorized_keys')}`,
          'AuthenticationMethods publickey',
          'PubkeyAuthentication yes',
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'UsePAM no',
          'StrictModes no',
          `AllowUsers ${user} root`,
          'PermitRootLogin prohibit-password',
          'AllowStreamLocalForwarding yes',
          'StreamLocalBindUnlink yes',
          'AllowAgentForwarding no',
          'X11Forwarding no',
          'PermitTTY no',
          'PrintMotd no',
          'LogLevel VERBOSE',
          '',
        ].join('\n'),
      )
      // sshd refuses to start without its privilege-separation directory (created by the system
      // service's unit otherwise); an empty root-owned 0755 directory.
      mkdirSync('/run/sshd', { recursive: true, mode: 0o755 })
      sshd = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', join(keys, 'sshd_config'), '-p', String(port)], {
        stdio: ['ignore', 'ignore', 'pipe'],
      })
      sshd.stderr?.setEncoding('utf8').on('data', (d: string) => (sshdLog += d))
      for (let i = 0; i < 200 && !/Server listening on 127\.0\.0\.1 port/.test(sshdLog); i++) {
        if (sshd.exitCode !== null) break
        await new Promise((r) => setTimeout(r, 25))
      }
      assert.match(sshdLog, /Server listening on 127\.0\.0\.1 port/, sshdLog)
    })

    after(async () => {
      if (sshd !== undefined && sshd.exitCode === null) {
        const exited = new Promise((r) => sshd?.once('exit', r))
        sshd.kill('SIGTERM')
        await exited
      }
      if (userAdded) {
        spawnSync('pkill', ['-KILL', '-u', user])
        spawnSync('userdel', [user])
        spawnSync('groupdel', [user])
      }
      await agent?.stop()
      await registry?.stop()
      pinentry?.cleanup()
      if (side !== undefined) rmSync(side, { recursive: true, force: true })
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
    })

    test('by default a remote read is signed and a remote publish refused, both marked forwarded via ssh', async () => {
      assert.equal(existsSync(remoteSock), false)
      // The remote user cannot reach the agent socket on its own.
      const direct = spawnSync('setpriv', [
        `--reuid=${uid}`,
        `--regid=${uid}`,
        '--clear-groups',
        'test',
        '-r',
        agent.socket,
      ])
      assert.notEqual(direct.status, 0, 'the agent socket is out of the remote user’s reach')

      pinentry.script([`pin:${agent.softhsm.pin}`])
      const r = await remoteCargo('hwtok-alpha', ['publish', '--registry', 'local', '--no-verify'])
      assert.notEqual(r.code, 0, show(r))
      assert.match(r.stderr, /FORWARDED_REFUSED/, show(r))
      assert.match(r.stderr, /forwarded = "confirm"/, 'the remedy names the setting')
      assert.equal(registry.index('hwtok-alpha').length, 0, 'nothing published')
      // The read that fetched the index went through with a token the registry verified.
      assert.ok(
        registry.authenticated().some((rec) => rec.operation === 'read' && rec.auth === 'accepted'),
        JSON.stringify(registry.records()),
      )
      const lines = readAudit(agent.auditLog)
      const read = lines.find((a) => a['operation'] === 'read')
      assert.equal(read?.['result'], 'signed', JSON.stringify(lines))
      assert.deepEqual(read?.['forwarded'], forwardedVia('ssh', r.sshPid))
      const publish = auditFor('hwtok-alpha')
      assert.deepEqual(
        publish.map((a) => [a['operation'], a['result'], a['code']]),
        [['publish', 'denied', 'FORWARDED_REFUSED']],
      )
      assert.deepEqual(publish[0]?.['forwarded'], forwardedVia('ssh', r.sshPid))
      const requester = publish[0]?.['requester'] as Record<string, unknown>
      assert.equal(
        (requester['client'] as { pid: number }).pid,
        r.sshPid,
        'the kernel peer is the ssh client',
      )
      for (const local of ['pid', 'command', 'exe', 'tty'])
        assert.equal(requester[local], undefined, `no local ${local}: the program that asked is remote`)
      // The PIN came from the agent's pinentry, whose text names the forwarded connection.
      const desc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
      assert.match(desc, new RegExp(`requested from a forwarded connection via ssh pid ${r.sshPid} `))
      assert.equal(
        pinentry.commands('OPTION').some((c) => (c.arg ?? '').startsWith('ttyname=')),
        false,
        'pinentry is not pointed at the ssh client’s terminal',
      )
      await waitForLog(/publish for local: FORWARDED_REFUSED/)
    })

    test('a SIGHUP that loosens forwarded is refused; after a restart with forwarded = "confirm" the agent’s pinentry approves the publish', async () => {
      await configure('confirm')
      agent.process?.kill('SIGHUP')
      await waitForLog(
        /reload refused, keeping the previous configuration: .*registry local: forwarded "read" → "confirm"/,
      )
      pinentry.script([`pin:${agent.softhsm.pin}`])
      const still = await remoteCargo('hwtok-alpha', ['publish', '--registry', 'local', '--no-verify'])
      assert.match(still.stderr, /FORWARDED_REFUSED/, show(still))

      await agent.stopAgent()
      const child = await agent.spawnAgent()
      await waitForSocket(agent.socket, child, () => agent.log())
      const pinsBefore = pinentry.commands('GETPIN').length
      // The read before the publish needs the PIN again (a restart forgets it), then the approval.
      pinentry.script([`pin:${agent.softhsm.pin}`, 'no'])
      const refused = await remoteCargo('hwtok-alpha', ['publish', '--registry', 'local', '--no-verify'])
      assert.notEqual(refused.code, 0, show(refused))
      assert.match(refused.stderr, /DENIED/, show(refused))
      assert.equal(registry.index('hwtok-alpha').length, 0)
      pinentry.script(['yes'])
      const r = await remoteCargo('hwtok-alpha', ['publish', '--registry', 'local', '--no-verify'])
      assert.equal(r.code, 0, show(r))
      const published = registry.index('hwtok-alpha')
      assert.equal(published.length, 1, 'the registry verified the token and published')
      assert.ok(pinentry.commands('GETPIN').length > pinsBefore)
      const confirm = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
      assert.match(
        confirm,
        new RegExp(
          `^Allow publish hwtok-alpha 0\\.1\\.0 \\(cksum [0-9a-f]{8}…\\) to local \\(.*\\), requested from a forwarded connection via ssh pid ${r.sshPid} \``,
        ),
      )
      const lines = auditFor('hwtok-alpha')
      assert.deepEqual(
        lines.map((a) => [a['result'], a['code'] ?? null, a['approval'] ?? null]),
        [
          ['denied', 'FORWARDED_REFUSED', null],
          ['denied', 'FORWARDED_REFUSED', null],
          ['denied', 'DENIED', null],
          ['signed', null, 'pinentry'],
        ],
      )
      assert.deepEqual(lines.at(-1)?.['forwarded'], forwardedVia('ssh', r.sshPid))
      // The publish token itself: the registry's record of the publish, checked again here.
      const record = registry
        .authenticated()
        .filter((rec) => rec.operation === 'publish' && rec.auth === 'accepted')
      assert.equal(record.length, 1)
    })

    test('a remote read resolves a dependency from the registry through the forwarded socket', async () => {
      const r = await remoteCargo('hwtok-beta', ['generate-lockfile'])
      assert.equal(r.code, 0, show(r))
      const lock = readFileSync(join(home, 'crates', 'hwtok-beta', 'Cargo.lock'), 'utf8')
      assert.match(lock, /name = "hwtok-alpha"/)
      const last = readAudit(agent.auditLog).at(-1)
      assert.equal(last?.['operation'], 'read')
      assert.equal(last?.['result'], 'signed')
      assert.deepEqual(last?.['forwarded'], forwardedVia('ssh', r.sshPid))
    })

    test('what a client says about being forwarded is only a claim, through the forward or not', async () => {
      const params = (vers: string, forwarded: unknown): string =>
        JSON.stringify({
          cargo: JSON.stringify(
            cargoGet(STRICT_INDEX, 'publish', { name: 'forge', vers, cksum: CKSUM, registryName: 'strict' }),
          ),
          requester: { pid: 1, command: 'cargo publish', forwarded },
          interactive: true,
        })
      // Through the forward, claiming to be local: still forwarded, so `strict` (default "read") refuses.
      const far = await ssh(
        user,
        ['-R', `${remoteSock}:${agent.socket}`],
        [
          'sh',
          '-c',
          quote(
            `i=0; while [ ! -S ${quote(remoteSock)} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; exec node ${quote(join(home, 'raw-client.cjs'))} ${quote(remoteSock)} ${quote(params('1.0.0', false))}`,
          ),
        ],
      )
      assert.equal(far.code, 0, show(far))
      const farAnswer = JSON.parse(far.stdout) as { error?: { code?: string }; result?: unknown }
      assert.equal(farAnswer.error?.code, 'FORWARDED_REFUSED', far.stdout)
      let line = readAudit(agent.auditLog).at(-1) as Record<string, unknown>
      assert.deepEqual(line['forwarded'], forwardedVia('ssh', far.sshPid))
      assert.equal((line['claimed'] as Record<string, unknown>)['forwarded'], false)

      // Locally, claiming to be forwarded: not forwarded, so the publish goes to the agent's pinentry.
      pinentry.script(['yes'])
      const client = join(dir, 'raw-client.cjs')
      writeFileSync(client, RAW_CLIENT)
      const near = spawnSync(
        process.execPath,
        [client, agent.socket, params('1.0.1', { via: 'ssh', pid: 1 })],
        {
          encoding: 'utf8',
          env: { PATH: process.env['PATH'] },
        },
      )
      assert.equal(near.status, 0, near.stderr)
      const nearAnswer = JSON.parse(near.stdout) as { result?: { token?: string } }
      await verifyToken(String(nearAnswer.result?.token), {
        publicKey: k3Public,
        url: STRICT_INDEX,
        operation: 'publish',
        crate: { name: 'forge', vers: '1.0.1', cksum: CKSUM },
      })
      line = readAudit(agent.auditLog).at(-1) as Record<string, unknown>
      assert.equal(line['result'], 'signed')
      assert.equal(line['forwarded'], undefined)
      assert.equal((line['claimed'] as Record<string, unknown>)['forwarded'], true)
      assert.equal((line['requester'] as Record<string, unknown>)['pid'], process.pid)
      assert.doesNotMatch(pinentry.commands('SETDESC').at(-1)?.arg ?? '', /forwarded/)
    })

    test('a forward that sshd terminates on the agent’s host (ssh -L) is seen as via sshd', async () => {
      const local = join(dir, 'forwarded-here.sock')
      const tunnel = spawn(
        '/usr/bin/ssh',
        [
          '-F',
          '/dev/null',
          '-i',
          clientKey,
          '-p',
          String(port),
          '-o',
          'BatchMode=yes',
          '-o',
          'IdentitiesOnly=yes',
          '-o',
          `UserKnownHostsFile=${knownHosts}`,
          '-o',
          'StrictHostKeyChecking=yes',
          '-o',
          'ExitOnForwardFailure=yes',
          '-N',
          '-L',
          `${local}:${agent.socket}`,
          'root@127.0.0.1',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env['PATH'] } },
      )
      let tunnelLog = ''
      tunnel.stderr?.setEncoding('utf8').on('data', (d: string) => (tunnelLog += d))
      try {
        for (let i = 0; i < 200 && !existsSync(local); i++) await new Promise((r) => setTimeout(r, 25))
        assert.ok(existsSync(local), tunnelLog)
        const client = join(dir, 'raw-client.cjs')
        const read = JSON.stringify({
          cargo: JSON.stringify(cargoGet(STRICT_INDEX, 'read')),
          interactive: false,
        })
        const r = spawnSync(process.execPath, [client, local, read], {
          encoding: 'utf8',
          env: { PATH: process.env['PATH'] },
        })
        assert.equal(r.status, 0, `${r.stderr}\n${tunnelLog}\n${agent.log()}`)
        const answer = JSON.parse(r.stdout) as { result?: { token?: string }; error?: unknown }
        assert.ok(answer.result?.token !== undefined, r.stdout)
        const line = readAudit(agent.auditLog).at(-1) as Record<string, unknown>
        const forwarded = line['forwarded'] as { via: string; pid: number }
        assert.equal(forwarded.via, 'sshd', JSON.stringify(line))
        // The peer is the per-connection sshd of the root login: a child of our sshd, running /usr/sbin/sshd.
        assert.equal(readlinkSync(`/proc/${forwarded.pid}/exe`), '/usr/sbin/sshd')
        assert.deepEqual(forwarded, forwardedVia('sshd', forwarded.pid))
        assert.notEqual(forwarded.pid, sshd?.pid, 'not the listener: the session process forwards')
      } finally {
        tunnel.kill('SIGTERM')
      }
    })

    test('forwarded = "confirm" with confirm = "touch" on the SoftHSM key (no touch to attest): the remote publish is asked in the agent’s pinentry', async () => {
      const config = parse(readFileSync(agent.configPath, 'utf8')) as {
        registries: Record<string, Record<string, unknown>>
      }
      const strict = config.registries['strict'] as Record<string, unknown>
      strict['confirm'] = 'touch'
      strict['forwarded'] = 'confirm'
      writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
      await agent.stopAgent()
      const child = await agent.spawnAgent()
      await waitForSocket(agent.socket, child, () => agent.log())
      await waitForLog(/warning: registry strict: confirm = "touch" but .* shows no touch policy/)
      const remotePublish = (vers: string): Promise<Run> =>
        ssh(
          user,
          ['-R', `${remoteSock}:${agent.socket}`],
          [
            'sh',
            '-c',
            quote(
              `i=0; while [ ! -S ${quote(remoteSock)} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; exec node ${quote(join(home, 'raw-client.cjs'))} ${quote(remoteSock)} ${quote(
                JSON.stringify({
                  cargo: JSON.stringify(
                    cargoGet(STRICT_INDEX, 'publish', {
                      name: 'forge',
                      vers,
                      cksum: CKSUM,
                      registryName: 'strict',
                    }),
                  ),
                  interactive: false,
                }),
              )}`,
            ),
          ],
        )
      const strictAudit = (): Record<string, unknown>[] =>
        readAudit(agent.auditLog).filter((a) => a['crate'] === 'forge' && String(a['vers']).startsWith('3.'))

      pinentry.script(['no'])
      const refused = await remotePublish('3.0.0')
      assert.equal(refused.code, 0, show(refused))
      const no = JSON.parse(refused.stdout) as { error?: { code?: string }; result?: unknown }
      assert.equal(no.error?.code, 'DENIED', refused.stdout)
      assert.equal(no.result, undefined, 'nothing signed')

      pinentry.script(['yes', `pin:${agent.softhsm.pin}`])
      const r = await remotePublish('3.0.1')
      assert.equal(r.code, 0, show(r))
      const yes = JSON.parse(r.stdout) as { result?: { token?: string } }
      await verifyToken(String(yes.result?.token), {
        publicKey: k3Public,
        url: STRICT_INDEX,
        operation: 'publish',
        crate: { name: 'forge', vers: '3.0.1', cksum: CKSUM },
      })
      const confirm = pinentry
        .commands('SETDESC')
        .filter((c) => (c.arg ?? '').startsWith('Allow publish forge 3.0.'))
      assert.equal(confirm.length, 2, 'both were asked in the agent’s pinentry')
      for (const c of confirm)
        assert.match(c.arg ?? '', /requested from a forwarded connection via ssh pid \d+ /)
      const lines = strictAudit()
      assert.deepEqual(
        lines.map((a) => [a['vers'], a['result'], a['code'] ?? null, a['approval'] ?? null]),
        [
          ['3.0.0', 'denied', 'DENIED', null],
          ['3.0.1', 'signed', null, 'pinentry'],
        ],
      )
      assert.deepEqual(lines.at(-1)?.['forwarded'], forwardedVia('ssh', r.sshPid))
    })
  },
)
