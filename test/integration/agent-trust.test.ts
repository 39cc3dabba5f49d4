/**
 * The trust boundary against the real agent process over its real socket (docs/design.md §4,
 * SECURITY.md): who asks comes from the kernel, a requester never answers its own confirmation,
 * another uid is refused, `keygen --force` needs an approval, a reload that weakens protection is
 * not applied (prompt → a touch the SoftHSM key cannot attest included), `confirm = "touch"` on such
 * a key gives forwarded requests and key swaps no silent path, and a core dump of the agent cannot
 * hold the PIN.
 *
 * The attacker is a raw socket client that claims to be interactive, forges its requester and
 * answers every question it gets with "yes" (and a `confirm` question, were the agent to send one).
 * Processes that must have no controlling terminal are started in a new session (`detached`); the
 * one that must have one runs under util-linux `script`, which gives it a pseudo-terminal.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { LIMITS } from '../../src/lib/limits.js'
import { verifyToken } from '../../src/verify/verify.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { cargoGet, readAudit, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38710/index/'
const GEN_INDEX = 'sparse+http://127.0.0.1:38711/index/'
const CKSUM = 'c'.repeat(64)
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }
const FORGED = { pid: 4242, ppid: 1, command: 'cargo publish --forged-requester', tty: '/dev/pts/999' }
const GEN_LABEL = 'trust-gen'

/**
 * The attacker: one request (METHOD, PARAMS as JSON) on the socket; every query is answered "yes"
 * (pin: the PIN it was given, confirm: confirmed). Writes what it saw and who it really is to OUT.
 */
const RAW_CLIENT = `
const net = require('node:net')
const fs = require('node:fs')
const env = process.env
let tty = null
try { tty = fs.readlinkSync('/proc/self/fd/0') } catch {}
const s = net.createConnection(env.RAW_SOCKET)
const frames = []
let buf = ''
const finish = () => {
  fs.writeFileSync(env.RAW_OUT, JSON.stringify({ pid: process.pid, ppid: process.ppid, tty, frames }))
  process.exit(0)
}
s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: env.RAW_METHOD, params: JSON.parse(env.RAW_PARAMS) }) + '\\n'))
s.setEncoding('utf8').on('data', (d) => {
  buf += d
  let i
  while ((i = buf.indexOf('\\n')) >= 0) {
    const f = JSON.parse(buf.slice(0, i))
    buf = buf.slice(i + 1)
    frames.push(f)
    if (f.type === 'query')
      s.write(JSON.stringify({ v: 1, type: 'answer', qid: f.qid, result: f.query === 'pin' ? { pin: env.RAW_PIN } : { confirmed: true } }) + '\\n')
    if (f.type === 'response') finish()
  }
})
s.on('close', finish)
s.on('error', (e) => { process.stderr.write(String(e)); process.exit(2) })
`

interface RawOutcome {
  pid: number
  ppid: number
  tty: string | null
  frames: {
    type: string
    query?: string
    result?: Record<string, unknown>
    error?: Record<string, unknown>
  }[]
}

let agent: AgentFixture
let pinentry: ScriptedPinentry
let work: string
let clientPath: string

function rawEnv(method: string, params: object, out: string, target = agent): NodeJS.ProcessEnv {
  return {
    PATH: process.env['PATH'],
    RAW_SOCKET: target.socket,
    RAW_METHOD: method,
    RAW_PARAMS: JSON.stringify(params),
    RAW_PIN: target.softhsm.pin,
    RAW_OUT: out,
  }
}

function response(outcome: RawOutcome): RawOutcome['frames'][number] {
  const last = outcome.frames.find((f) => f.type === 'response')
  assert.ok(last !== undefined, `no response: ${JSON.stringify(outcome)}`)
  return last
}

/**
 * The attacker in a new session: no controlling terminal at all. `program` runs the client: Node
 * itself, or a copy of it named ssh, which the agent takes for a forwarder (src/agent/requester.ts).
 */
async function rawWithoutTerminal(
  method: string,
  params: object,
  target = agent,
  program = process.execPath,
): Promise<RawOutcome> {
  const out = join(work, `out-${Date.now()}-${Math.random()}.json`)
  const child = spawn(program, [clientPath], {
    env: rawEnv(method, params, out, target),
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, stderr)
  return JSON.parse(readFileSync(out, 'utf8')) as RawOutcome
}

/** The attacker on a pseudo-terminal; `answers` are typed on it once their prompt has appeared. */
async function rawOnTerminal(
  method: string,
  params: object,
  answers: { after: RegExp; type: string }[],
): Promise<{ outcome: RawOutcome; screen: string }> {
  const out = join(work, `out-${Date.now()}-${Math.random()}.json`)
  const child = spawn(
    'script',
    ['-q', '-f', '-e', '-c', `exec "${process.execPath}" "${clientPath}"`, '/dev/null'],
    {
      env: rawEnv(method, params, out),
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  )
  let screen = ''
  const pending = [...answers]
  const onOutput = (d: Buffer): void => {
    screen += d.toString('utf8')
    const next = pending[0]
    if (next !== undefined && next.after.test(screen)) {
      pending.shift()
      child.stdin.write(next.type)
    }
  }
  child.stdout.on('data', onOutput)
  child.stderr.on('data', onOutput)
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
  await new Promise<void>((resolve) => child.on('exit', () => resolve()))
  clearTimeout(timer)
  child.stdin.destroy()
  assert.ok(existsSync(out), `the client on the terminal did not finish; screen:\n${screen}\n${agent.log()}`)
  return { outcome: JSON.parse(readFileSync(out, 'utf8')) as RawOutcome, screen }
}

function lastAudit(): Record<string, unknown> {
  const lines = readAudit(agent.auditLog)
  const last = lines.at(-1)
  assert.ok(last !== undefined, 'no audit line')
  return last
}

function cmdlineOf(pid: number): string {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
    .split('\0')
    .filter((a) => a !== '')
    .join(' ')
    .slice(0, LIMITS.auditFieldMaxChars)
}

function publishParams(vers: string): object {
  const line = cargoGet(INDEX, 'publish', { name: 'foo', vers, cksum: CKSUM, registryName: 'local' })
  return { cargo: JSON.stringify(line), requester: FORGED, interactive: true }
}

async function waitForLog(pattern: RegExp): Promise<void> {
  for (let i = 0; i < 250 && !pattern.test(agent.log()); i++) await new Promise((r) => setTimeout(r, 20))
  assert.match(agent.log(), pattern)
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'agent-trust-'))
  clientPath = join(work, 'raw-client.cjs')
  writeFileSync(clientPath, RAW_CLIENT)
  pinentry = new ScriptedPinentry()
  agent = await startAgent({
    start: false,
    tokens: { softhsm: { pinSource: 'pinentry' } },
    registries: {
      local: { index: INDEX, readKey: known, confirm: 'prompt' },
      gen: { index: GEN_INDEX, readKey: { label: GEN_LABEL }, confirm: 'prompt' },
    },
    env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
  })
  const config = parse(readFileSync(agent.configPath, 'utf8')) as {
    tokens: Record<string, Record<string, unknown>>
  }
  ;(config.tokens['softhsm'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
  writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
  delete agent.agentEnv[agent.pinEnv]
  // No desktop: pinentry is the only channel besides the requester's terminal.
  delete agent.agentEnv['DISPLAY']
  delete agent.agentEnv['WAYLAND_DISPLAY']
  const child = await agent.spawnAgent()
  await waitForSocket(agent.socket, child, () => agent.log())
})

after(async () => {
  await agent?.stop()
  pinentry?.cleanup()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

describe('a requester never approves its own publish', () => {
  test('on its own terminal: the agent asks there itself, showing the kernel’s requester, not the forged one', async () => {
    pinentry.script([`pin:${agent.softhsm.pin}`])
    const { outcome, screen } = await rawOnTerminal('sign', publishParams('1.0.0'), [
      { after: /\[y\/N\] $/m, type: 'y' },
    ])
    const answer = response(outcome)
    assert.ok(answer.result !== undefined, `${JSON.stringify(answer)}\n${screen}\n${agent.log()}`)
    await verifyToken(String(answer.result['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'publish',
      crate: { name: 'foo', vers: '1.0.0', cksum: CKSUM },
    })
    // Only the PIN was asked over the socket; the yes/no was the agent's, on the terminal.
    assert.deepEqual(
      outcome.frames.filter((f) => f.type === 'query').map((f) => f.query),
      [],
      'the PIN came from pinentry, and no yes/no ever reaches the client',
    )
    assert.ok(outcome.tty?.startsWith('/dev/pts/'), `the client runs on a pty: ${outcome.tty}`)
    const prompt = screen.split('\n').find((l) => l.includes('[y/N]')) ?? ''
    assert.match(prompt, /cargo-pkcs11-agent: Allow publish foo 1\.0\.0 \(cksum cccccccc…\) to local/)
    assert.ok(prompt.includes(`requested by pid ${outcome.ppid} `), prompt)
    assert.ok(prompt.includes(`on ${outcome.tty}`), prompt)
    assert.ok(prompt.includes(`through pid ${outcome.pid} `), prompt)
    for (const forged of ['4242', 'forged-requester', '/dev/pts/999'])
      assert.equal(screen.includes(forged), false, `the forged ${forged} is shown: ${prompt}`)
    // The pinentry the agent launched for the PIN was pointed at the kernel's terminal.
    assert.ok(
      pinentry.commands('OPTION').some((c) => c.arg === `ttyname=${outcome.tty}`),
      JSON.stringify(pinentry.commands('OPTION')),
    )
    const line = lastAudit()
    assert.equal(line['result'], 'signed')
    assert.equal(line['approval'], 'terminal')
    const requester = line['requester'] as Record<string, unknown>
    assert.equal(requester['pid'], outcome.ppid)
    assert.equal(requester['tty'], outcome.tty)
    assert.deepEqual(requester['client'], {
      pid: outcome.pid,
      command: `${process.execPath} ${clientPath}`,
      exe: realpathSync(process.execPath),
    })
    assert.equal(requester['uid'], process.getuid?.())
    assert.deepEqual(line['claimed'], FORGED)
  })

  test('"n" on the terminal refuses, whatever the client answers; no descriptor is left open', async () => {
    const descriptors = (): number => readdirSync(`/proc/${agent.process?.pid}/fd`).length
    const before = descriptors()
    for (let i = 0; i < 3; i++) {
      const { outcome, screen } = await rawOnTerminal('sign', publishParams('1.0.1'), [
        { after: /\[y\/N\] $/m, type: 'n' },
      ])
      assert.equal(response(outcome).error?.['code'], 'DENIED', screen)
      assert.equal(lastAudit()['result'], 'denied')
    }
    await new Promise((r) => setTimeout(r, 200))
    assert.ok(descriptors() <= before, `the agent held ${before} descriptors, now ${descriptors()}`)
  })

  test('without a terminal: no question reaches the client, and with no channel it fails closed', async () => {
    pinentry.script(['exit']) // pinentry cannot ask: no display, no terminal
    const before = readAudit(agent.auditLog).length
    const outcome = await rawWithoutTerminal('sign', publishParams('1.0.2'))
    const answer = response(outcome)
    assert.equal(answer.result, undefined, 'no token for a publish nobody approved')
    assert.equal(answer.error?.['code'], 'POLICY_DENIED', JSON.stringify(answer))
    assert.match(String(answer.error?.['remedy']), /confirm = "touch"/)
    assert.match(String(answer.error?.['remedy']), /confirm = "none"/)
    // A SoftHSM key attests no touch: confirm = "touch" would not be checked, so it is not the advice.
    assert.doesNotMatch(String(answer.error?.['remedy']), /set confirm = "touch"/)
    assert.match(
      String(answer.error?.['remedy']),
      /attests no touch policy, so confirm = "touch" would not be checked/,
    )
    assert.deepEqual(
      outcome.frames.filter((f) => f.type === 'query'),
      [],
      'the agent sent the client no question',
    )
    const lines = readAudit(agent.auditLog)
    assert.equal(lines.length, before + 1)
    const line = lines.at(-1) as Record<string, unknown>
    assert.equal(line['result'], 'denied')
    assert.equal(line['code'], 'POLICY_DENIED')
    const requester = line['requester'] as Record<string, unknown>
    assert.equal(requester['pid'], process.pid, 'the kernel says the test process started the client')
    assert.equal(requester['command'], cmdlineOf(process.pid))
    assert.equal(requester['exe'], readlinkSync(`/proc/${process.pid}/exe`))
    assert.equal(requester['tty'], undefined, 'a process in its own session has no terminal')
    assert.deepEqual(requester['client'], {
      pid: outcome.pid,
      command: `${process.execPath} ${clientPath}`,
      exe: realpathSync(process.execPath),
    })
    assert.deepEqual(line['claimed'], FORGED)
    assert.doesNotMatch(agent.log(), /forged-requester/)
  })

  test('with pinentry as the channel: the agent’s pinentry shows the kernel’s requester; yes signs', async () => {
    pinentry.script(['yes'])
    const outcome = await rawWithoutTerminal('sign', publishParams('1.0.3'))
    const answer = response(outcome)
    assert.ok(answer.result !== undefined, JSON.stringify(answer))
    await verifyToken(String(answer.result['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'publish',
      crate: { name: 'foo', vers: '1.0.3', cksum: CKSUM },
    })
    const desc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
    assert.ok(desc.includes(`requested by pid ${process.pid} `), desc)
    assert.ok(desc.includes(`through pid ${outcome.pid} `), desc)
    assert.doesNotMatch(desc, /4242|forged-requester|pts\/999/)
    assert.equal(lastAudit()['approval'], 'pinentry')
  })
})

describe('keygen over the socket', () => {
  async function genKey(): Promise<string> {
    const outcome = await rawWithoutTerminal('pubkey', { registry: 'gen' })
    const result = response(outcome).result as { registries: { readKey: { k3Public: string } }[] }
    return result.registries[0]?.readKey.k3Public ?? ''
  }

  test('a new key is generated, audited and logged; `force` without approval is refused, the key unchanged', async () => {
    const made = await rawWithoutTerminal('keygen', { token: 'softhsm', label: GEN_LABEL })
    const created = response(made).result as { k3Public: string; k3Pid: string }
    assert.match(created.k3Public, /^k3\.public\./)
    const generated = lastAudit()
    assert.equal(generated['operation'], 'keygen')
    assert.equal(generated['result'], 'generated')
    assert.equal(generated['key'], `softhsm/${GEN_LABEL}`)
    assert.equal(generated['replaced'], false)
    assert.equal(generated['kip'], created.k3Pid)
    // The device it was made on, in the shape of a sign line's (src/audit/entry.ts AuditDevice).
    assert.deepEqual(generated['device'], { token: 'softhsm', module: agent.softhsm.module })
    await waitForLog(
      new RegExp(`keygen softhsm/${GEN_LABEL} by pid ${process.pid} .*: generated ${created.k3Pid}`),
    )

    const before = await genKey()
    assert.equal(before, created.k3Public)
    pinentry.script(['exit'])
    const forced = await rawWithoutTerminal('keygen', {
      token: 'softhsm',
      label: GEN_LABEL,
      force: true,
      interactive: true,
    })
    assert.equal(response(forced).error?.['code'], 'POLICY_DENIED', JSON.stringify(forced))
    assert.deepEqual(
      forced.frames.filter((f) => f.type === 'query'),
      [],
    )
    assert.equal(await genKey(), before, 'k3.public before = after')
    const refused = lastAudit()
    assert.equal(refused['operation'], 'keygen')
    assert.equal(refused['result'], 'denied')
    assert.equal(refused['replaced'], true)
    assert.deepEqual(refused['device'], { token: 'softhsm', module: agent.softhsm.module })
    await waitForLog(
      /keygen softhsm\/trust-gen \(force: replaces an existing key\) by pid \d+ .*: POLICY_DENIED/,
    )

    pinentry.script(['no'])
    const declined = await rawWithoutTerminal('keygen', { token: 'softhsm', label: GEN_LABEL, force: true })
    assert.equal(response(declined).error?.['code'], 'DENIED')
    assert.equal(await genKey(), before)
  })

  test('`force` approved in the agent’s pinentry replaces the key, and says so in the audit log', async () => {
    const before = await genKey()
    pinentry.script(['yes'])
    const forced = await rawWithoutTerminal('keygen', { token: 'softhsm', label: GEN_LABEL, force: true })
    const replaced = response(forced).result as { k3Public: string }
    assert.ok(replaced !== undefined, JSON.stringify(forced))
    assert.notEqual(replaced.k3Public, before)
    assert.equal(await genKey(), replaced.k3Public)
    assert.match(pinentry.commands('SETDESC').at(-1)?.arg ?? '', /Replace the key "trust-gen"/)
    const line = lastAudit()
    assert.equal(line['result'], 'generated')
    assert.equal(line['replaced'], true)
  })
})

describe('other users', () => {
  test(
    'a process of uid 65534, against a loosened socket, is refused with PEER_REFUSED; the log names the uid',
    { skip: process.getuid?.() !== 0 ? 'needs root for setpriv' : false },
    async () => {
      // Loosen every directory on the way and the socket itself: only the kernel check is left.
      for (let p = dirname(agent.socket); p.startsWith(agent.dir); p = dirname(p)) chmodSync(p, 0o755)
      chmodSync(agent.socket, 0o666)
      const client = `
const s = require('node:net').createConnection(process.argv[1])
let got = ''
s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: 'ping' }) + '\\n'))
s.setEncoding('utf8').on('data', (d) => (got += d))
s.on('close', () => { process.stdout.write(got); process.exit(0) })
s.on('error', (e) => { process.stderr.write(String(e)); process.exit(2) })`
      try {
        const result = spawnSync(
          'setpriv',
          ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', client, agent.socket],
          { encoding: 'utf8', env: { PATH: process.env['PATH'] }, timeout: 15_000 },
        )
        assert.equal(result.status, 0, result.stderr)
        const frame = JSON.parse(result.stdout.trim()) as { error?: { code?: string }; result?: unknown }
        assert.equal(frame.result, undefined, 'no answer for another uid')
        assert.equal(frame.error?.code, 'PEER_REFUSED', result.stdout)
        await waitForLog(/refused: a connection from uid 65534 \(pid \d+\)/)
      } finally {
        chmodSync(agent.socket, 0o600)
        for (let p = dirname(agent.socket); p.startsWith(agent.dir); p = dirname(p)) chmodSync(p, 0o700)
      }
    },
  )
})

describe('reloads that weaken protection', () => {
  test('confirm lowered or headless turned on: SIGHUP keeps the old rules, publishes still need approval', async () => {
    const original = readFileSync(agent.configPath, 'utf8')
    const config = parse(original) as {
      agent: Record<string, unknown>
      registries: Record<string, Record<string, unknown>>
    }
    ;(config.registries['local'] as Record<string, unknown>)['confirm'] = 'none'
    config.agent['headless'] = true
    writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
    try {
      agent.process?.kill('SIGHUP')
      await waitForLog(
        /reload refused, keeping the previous configuration: .*headless turned on.*confirm "prompt" → "none"/,
      )
      // The reload forgot the PIN either way; the approval comes first and cannot be given.
      pinentry.script(['exit'])
      const outcome = await rawWithoutTerminal('sign', publishParams('1.0.4'))
      assert.equal(response(outcome).error?.['code'], 'POLICY_DENIED', 'still confirm = "prompt"')
      const status = await rawWithoutTerminal('status', {})
      const result = response(status).result as { headless: boolean; registries: { confirm: string }[] }
      assert.equal(result.headless, false)
      assert.deepEqual(
        result.registries.map((r) => r.confirm),
        ['prompt', 'prompt'],
      )
    } finally {
      writeFileSync(agent.configPath, original, { mode: 0o600 })
    }
  })
})

/** Sends SIGHUP and waits until the reload is done, applied or refused (it ends with one of these lines). */
async function reloaded(target: AgentFixture): Promise<void> {
  const done = (): number =>
    target
      .log()
      .split('\n')
      .filter((l) => l.includes('configuration reloaded from') || l.includes('reload refused')).length
  const before = done()
  target.process?.kill('SIGHUP')
  for (let i = 0; i < 250 && done() === before; i++) await new Promise((r) => setTimeout(r, 20))
  assert.equal(done(), before + 1, target.log())
}

describe('confirm = "touch" on a key that attests no touch policy (SoftHSM)', () => {
  // Nothing on SoftHSM asks for a touch, and the agent cannot tell: the config's word only.
  const publish = (vers: string): object => publishParams(vers)

  test('SIGHUP prompt → touch is refused as a weakening; the next publish is still asked and refused', async () => {
    const original = readFileSync(agent.configPath, 'utf8')
    const config = parse(original) as { registries: Record<string, Record<string, unknown>> }
    ;(config.registries['local'] as Record<string, unknown>)['confirm'] = 'touch'
    writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
    try {
      await reloaded(agent)
      const asked = pinentry.commands('SETDESC').length
      pinentry.script(['no'])
      const outcome = await rawWithoutTerminal('sign', publish('1.0.6'))
      const answer = response(outcome)
      assert.equal(answer.error?.['code'], 'DENIED', JSON.stringify(answer))
      assert.equal(answer.result, undefined, 'nothing signed')
      const desc = pinentry.commands('SETDESC').slice(asked)
      assert.ok(
        desc.some((c) => (c.arg ?? '').startsWith('Allow publish foo 1.0.6 ')),
        JSON.stringify(desc),
      )
      const line = lastAudit()
      assert.deepEqual([line['vers'], line['result'], line['code']], ['1.0.6', 'denied', 'DENIED'])
      const status = await rawWithoutTerminal('status', {})
      const result = response(status).result as { registries: { name: string; confirm: string }[] }
      assert.equal(result.registries.find((r) => r.name === 'local')?.confirm, 'prompt')
      assert.match(
        agent.log(),
        /reload refused, keeping the previous configuration: .*registry local: confirm "prompt" → "touch" \(not attested by the key\)/,
      )
    } finally {
      writeFileSync(agent.configPath, original, { mode: 0o600 })
    }
  })

  describe('an agent started with it', () => {
    let touchAgent: AgentFixture
    let fakeSsh: string

    before(async () => {
      // A copy of Node named ssh: the agent sees its peer as a forwarder, like the reviewer's attack.
      fakeSsh = join(work, 'ssh')
      copyFileSync(process.execPath, fakeSsh)
      chmodSync(fakeSsh, 0o755)
      touchAgent = await startAgent({
        start: false,
        tokens: { softhsm: { pinSource: 'pinentry' } },
        registries: { local: { index: INDEX, readKey: known, confirm: 'touch' } },
        env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
      })
      const config = parse(readFileSync(touchAgent.configPath, 'utf8')) as {
        tokens: Record<string, Record<string, unknown>>
        registries: Record<string, Record<string, unknown>>
      }
      ;(config.tokens['softhsm'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
      ;(config.registries['local'] as Record<string, unknown>)['forwarded'] = 'confirm'
      writeFileSync(touchAgent.configPath, stringify(config) + '\n', { mode: 0o600 })
      delete touchAgent.agentEnv[touchAgent.pinEnv]
      delete touchAgent.agentEnv['DISPLAY']
      delete touchAgent.agentEnv['WAYLAND_DISPLAY']
      const child = await touchAgent.spawnAgent()
      await waitForSocket(touchAgent.socket, child, () => touchAgent.log())
    })

    after(async () => {
      await touchAgent?.stop()
    })

    const touchAudit = (): Record<string, unknown> => {
      const last = readAudit(touchAgent.auditLog).at(-1)
      assert.ok(last !== undefined, 'no audit line')
      return last
    }

    test('it starts, and says in its log and status that it cannot check the touch', async () => {
      const warning =
        /warning: registry local: confirm = "touch" but the mutation key \(token "softhsm" label "known" id 02\) shows no touch policy: the agent cannot check that the device asks for a touch/
      assert.match(touchAgent.log(), warning)
      const status = await rawWithoutTerminal('status', {}, touchAgent)
      const result = response(status).result as {
        registries: { name: string; confirm: string; confirmWarning?: string }[]
      }
      const local = result.registries.find((r) => r.name === 'local')
      assert.equal(local?.confirm, 'touch')
      assert.match(`warning: ${local?.confirmWarning ?? ''}`, warning)
    })

    test('a forwarded publish is asked in the agent’s pinentry: no → DENIED, yes → signed, audited pinentry', async () => {
      const asked = pinentry.commands('SETDESC').length
      pinentry.script(['no'])
      const refused = await rawWithoutTerminal('sign', publish('2.0.0'), touchAgent, fakeSsh)
      assert.equal(response(refused).error?.['code'], 'DENIED', JSON.stringify(refused))
      assert.equal(response(refused).result, undefined)
      let line = touchAudit()
      assert.deepEqual([line['result'], line['code']], ['denied', 'DENIED'])
      assert.equal((line['forwarded'] as { via?: string } | undefined)?.via, 'ssh', JSON.stringify(line))

      pinentry.script(['yes', `pin:${touchAgent.softhsm.pin}`])
      const signed = await rawWithoutTerminal('sign', publish('2.0.1'), touchAgent, fakeSsh)
      const answer = response(signed)
      assert.ok(answer.result !== undefined, JSON.stringify(answer))
      await verifyToken(String(answer.result['token']), {
        publicKey: KNOWN_KEY.k3Public,
        url: INDEX,
        operation: 'publish',
        crate: { name: 'foo', vers: '2.0.1', cksum: CKSUM },
      })
      line = touchAudit()
      assert.deepEqual([line['result'], line['approval']], ['signed', 'pinentry'])
      assert.equal((line['forwarded'] as { via?: string } | undefined)?.via, 'ssh')
      const desc = pinentry.commands('SETDESC').slice(asked)
      for (const vers of ['2.0.0', '2.0.1'])
        assert.ok(
          desc.some((c) =>
            new RegExp(
              `^Allow publish foo ${vers.replace(/\./g, '\\.')} .*forwarded connection via ssh`,
            ).test(c.arg ?? ''),
          ),
          JSON.stringify(desc),
        )
    })

    test('a local publish is signed on the operator’s word, as configured (audited touch-unattested)', async () => {
      const asked = pinentry.commands('SETDESC').length
      pinentry.script([`pin:${touchAgent.softhsm.pin}`])
      const outcome = await rawWithoutTerminal('sign', publish('2.1.0'), touchAgent)
      const answer = response(outcome)
      assert.ok(answer.result !== undefined, JSON.stringify(answer))
      assert.equal(touchAudit()['approval'], 'touch-unattested')
      assert.equal(
        pinentry
          .commands('SETDESC')
          .slice(asked)
          .some((c) => (c.arg ?? '').startsWith('Allow ')),
        false,
        'no yes/no was asked',
      )
    })

    test('SIGHUP changing the mutation key under it is refused; the old key still signs', async () => {
      const original = readFileSync(touchAgent.configPath, 'utf8')
      const config = parse(original) as { registries: Record<string, Record<string, unknown>> }
      ;(config.registries['local'] as Record<string, unknown>)['mutation-key'] = {
        token: 'softhsm',
        label: touchAgent.softhsm.generatedKey.label,
      }
      writeFileSync(touchAgent.configPath, stringify(config) + '\n', { mode: 0o600 })
      try {
        await reloaded(touchAgent)
        const status = await rawWithoutTerminal('status', {}, touchAgent)
        const result = response(status).result as {
          registries: { name: string; mutationKey: { label?: string } }[]
        }
        assert.equal(result.registries.find((r) => r.name === 'local')?.mutationKey.label, KNOWN_KEY.label)
        // The reload forgot the PIN; the publish is signed by the key the agent started with.
        pinentry.script([`pin:${touchAgent.softhsm.pin}`])
        const outcome = await rawWithoutTerminal('sign', publish('2.2.0'), touchAgent)
        const answer = response(outcome)
        assert.ok(answer.result !== undefined, JSON.stringify(answer))
        await verifyToken(String(answer.result['token']), {
          publicKey: KNOWN_KEY.k3Public,
          url: INDEX,
          operation: 'publish',
          crate: { name: 'foo', vers: '2.2.0', cksum: CKSUM },
        })
        assert.match(
          touchAgent.log(),
          /reload refused, keeping the previous configuration: .*registry local: mutation key changed to softhsm\/gen/,
        )
      } finally {
        writeFileSync(touchAgent.configPath, original, { mode: 0o600 })
      }
    })
  })
})

describe('core dumps', () => {
  const corePattern = '/proc/sys/kernel/core_pattern'

  test(
    'the agent is non-dumpable: SIGSEGV with cores enabled leaves no core, while a dumpable process leaves one holding its PIN bytes',
    { skip: process.getuid?.() !== 0 ? 'needs root to set core_pattern' : false },
    async () => {
      // The PIN is in the agent's memory: cached from pinentry (not its environment).
      pinentry.script([`pin:${agent.softhsm.pin}`])
      const read = await rawWithoutTerminal('sign', {
        cargo: JSON.stringify(cargoGet(INDEX, 'read')),
        interactive: false,
      })
      assert.ok(response(read).result !== undefined, JSON.stringify(read))
      const status = response(await rawWithoutTerminal('status', {})).result as {
        pid: number
        dumpable?: boolean
        tokens: { pinCached: boolean }[]
      }
      assert.equal(status.dumpable, false, 'PR_GET_DUMPABLE is 0')
      assert.equal(status.tokens[0]?.pinCached, true)

      const cores = mkdtempSync(join(tmpdir(), 'agent-cores-'))
      const saved = readFileSync(corePattern, 'utf8')
      try {
        writeFileSync(corePattern, join(cores, 'core.%p'))
        // Control: a dumpable node process with the PIN in its heap, same limits, same signal.
        const control = spawn(
          'bash',
          [
            '-c',
            `ulimit -c unlimited; exec "${process.execPath}" -e "globalThis.pin = Buffer.from(process.env.P_IN); setInterval(() => {}, 1000); process.stdout.write('up')"`,
          ],
          {
            env: { PATH: process.env['PATH'], P_IN: agent.softhsm.pin },
            stdio: ['ignore', 'pipe', 'ignore'],
          },
        )
        await new Promise<void>((resolve) => control.stdout.once('data', () => resolve()))
        const controlExit = new Promise<NodeJS.Signals | null>((r) => control.on('exit', (_, s) => r(s)))
        control.kill('SIGSEGV')
        assert.equal(await controlExit, 'SIGSEGV')
        const controlCore = join(cores, `core.${control.pid}`)
        for (let i = 0; i < 100 && !existsSync(controlCore); i++) await new Promise((r) => setTimeout(r, 50))
        assert.ok(existsSync(controlCore), `the control left no core: ${readdirSync(cores).join(', ')}`)
        assert.ok(
          readFileSync(controlCore).includes(Buffer.from(agent.softhsm.pin)),
          'the control core holds the PIN',
        )

        const pid = status.pid
        assert.equal(pid, agent.process?.pid)
        const limits = spawnSync('prlimit', ['--pid', String(pid), '--core=unlimited'], { encoding: 'utf8' })
        assert.equal(limits.status, 0, limits.stderr)
        assert.match(readFileSync(`/proc/${pid}/limits`, 'utf8'), /Max core file size\s+unlimited/)
        const exited = new Promise<NodeJS.Signals | null>((r) => agent.process?.once('exit', (_, s) => r(s)))
        agent.process?.kill('SIGSEGV')
        assert.equal(await exited, 'SIGSEGV')
        await new Promise((r) => setTimeout(r, 500))
        assert.deepEqual(readdirSync(cores), [`core.${control.pid}`], 'no core file for the agent')
      } finally {
        writeFileSync(corePattern, saved)
        rmSync(cores, { recursive: true, force: true })
      }
    },
  )
})
