/**
 * The agent process's socket and lifecycle: modes, stale and live sockets, signals, autostart.
 * Real agent processes on SoftHSM.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { after, describe, test } from 'node:test'

import { AgentConnection } from '../../src/protocol/client.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, runShim, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38600/index/'
const LATER = 'sparse+http://127.0.0.1:38601/index/'
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }

function runToExit(
  agent: AgentFixture,
  args: string[] = [],
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        agent.agentPath,
        'run',
        '--foreground',
        '--config',
        agent.configPath,
        '--socket',
        agent.socket,
        ...args,
      ],
      {
        env: agent.agentEnv,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
}

async function ping(socket: string): Promise<Record<string, unknown>> {
  const c = await AgentConnection.connect(socket)
  try {
    return await c.request('ping')
  } finally {
    c.close()
  }
}

describe('agent socket and lifecycle', () => {
  const fixtures: AgentFixture[] = []
  after(async () => {
    for (const f of fixtures) await f.stop()
  })

  test('socket directory 0700 and socket 0600, owned by the user', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } } })
    fixtures.push(agent)
    const dir = statSync(dirname(agent.socket))
    const sock = statSync(agent.socket)
    assert.equal(dir.mode & 0o777, 0o700)
    assert.equal(sock.mode & 0o777, 0o600)
    assert.ok(sock.isSocket())
    assert.equal(sock.uid, process.getuid?.())
    assert.equal(dir.uid, process.getuid?.())
  })

  test('a second agent on the same socket refuses to start; the first keeps serving', async () => {
    const agent = fixtures[0] as AgentFixture
    const second = await runToExit(agent)
    assert.notEqual(second.code, 0)
    assert.match(second.output, /already listening on/)
    assert.ok(second.output.includes(agent.socket))
    assert.equal((await ping(agent.socket))['pong'], true)
  })

  test('a stale socket left by a killed agent is detected and replaced', async () => {
    const agent = fixtures[0] as AgentFixture
    await agent.stopAgent('SIGKILL')
    assert.ok(existsSync(agent.socket), 'SIGKILL leaves the socket file behind')
    await assert.rejects(ping(agent.socket), /not reachable/)
    const child = await agent.spawnAgent()
    await waitForSocket(agent.socket, child, agent.log)
    assert.equal((await ping(agent.socket))['pid'], child.pid)
  })

  test('SIGTERM lets an in-flight request finish, refuses new connections, and removes the socket', async () => {
    // The request is held in flight at its PIN question (the only question a client is asked).
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known } },
      tokens: { softhsm: { pinSource: 'tty' } },
    })
    fixtures.push(agent)
    const c = await AgentConnection.connect(agent.socket)
    let asked!: () => void
    const wasAsked = new Promise<void>((r) => (asked = r))
    let release!: () => void
    const answerNow = new Promise<void>((r) => (release = r))
    const line = JSON.stringify(cargoGet(INDEX, 'read'))
    const inFlight = c.request(
      'sign',
      { cargo: line, requester: {}, interactive: true },
      {
        onQuery: async (q) => {
          assert.equal(q.query, 'pin')
          asked()
          await answerNow
          return { result: { pin: agent.softhsm.pin } }
        },
      },
    )
    await wasAsked
    const exited = new Promise<number | null>((r) => agent.process?.once('exit', (code) => r(code)))
    agent.process?.kill('SIGTERM')
    // The listening socket is gone at once; the open connection still gets its answer.
    for (let i = 0; i < 100 && existsSync(agent.socket); i++) await new Promise((r) => setTimeout(r, 20))
    assert.equal(existsSync(agent.socket), false)
    await assert.rejects(ping(agent.socket), /not reachable/)
    release()
    const result = await inFlight
    c.close()
    await verifyToken(String(result['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'read',
    })
    assert.equal(await exited, 0)
    assert.match(agent.log(), /SIGTERM: shutting down/)
  })

  test('SIGHUP reloads the configuration (a newly bound registry signs)', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } } })
    fixtures.push(agent)
    assert.deepEqual(JSON.parse(String((await agent.runShim(cargoGet(LATER, 'read'))).lines[1])), {
      Err: { kind: 'url-not-supported' },
    })
    const text = readFileSync(agent.configPath, 'utf8')
    writeFileSync(
      agent.configPath,
      `${text}\n[registries.later]\nindex = "${LATER}"\nread-key = { token = "softhsm", label = "known" }\n`,
    )
    agent.process?.kill('SIGHUP')
    for (let i = 0; i < 100 && !agent.log().includes('configuration reloaded'); i++)
      await new Promise((r) => setTimeout(r, 20))
    const ok = JSON.parse(String((await agent.runShim(cargoGet(LATER, 'read'))).lines[1])) as {
      Ok: { token: string }
    }
    await verifyToken(ok.Ok.token, { publicKey: KNOWN_KEY.k3Public, url: LATER, operation: 'read' })
    // A broken config on reload keeps the previous one (and says so) rather than dropping every binding.
    writeFileSync(agent.configPath, 'this is = = not toml')
    agent.process?.kill('SIGHUP')
    for (let i = 0; i < 100 && !agent.log().includes('reload failed'); i++)
      await new Promise((r) => setTimeout(r, 20))
    assert.match(agent.log(), /reload failed, keeping the previous configuration/)
    assert.ok('Ok' in (JSON.parse(String((await agent.runShim(cargoGet(LATER, 'read'))).lines[1])) as object))
  })

  test(
    'a socket directory owned by another user is refused',
    { skip: process.getuid?.() !== 0 ? 'needs root to chown' : false },
    async () => {
      const agent = await startAgent({
        registries: { local: { index: INDEX, readKey: known } },
        start: false,
      })
      fixtures.push(agent)
      const dir = dirname(agent.socket)
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      chownSync(dir, 65534, 65534)
      const r = await runToExit(agent)
      assert.notEqual(r.code, 0)
      assert.match(r.output, /belongs to uid 65534, not to you/)
      chownSync(dir, 0, 0)
    },
  )

  test('a loose socket directory of our own is tightened to 0700', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } }, start: false })
    fixtures.push(agent)
    const dir = dirname(agent.socket)
    mkdirSync(dir, { recursive: true })
    chmodSync(dir, 0o755)
    const child = await agent.spawnAgent()
    await waitForSocket(agent.socket, child, agent.log)
    assert.equal(statSync(dir).mode & 0o777, 0o700)
  })

  test('`run` detaches and returns once the agent answers; a second `run` refuses; status/lock/release talk to it', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } }, start: false })
    fixtures.push(agent)
    const cli = (args: string[]): Promise<{ code: number | null; out: string }> =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, [agent.agentPath, ...args], {
          env: agent.agentEnv,
          stdio: ['ignore', 'pipe', 'pipe'],
        })
        let out = ''
        child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d))
        child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d))
        child.on('exit', (code) => resolve({ code, out }))
      })
    const started = await cli(['run', '--config', agent.configPath, '--socket', agent.socket])
    assert.equal(started.code, 0, started.out)
    const pid = Number(/started \(pid (\d+)\)/.exec(started.out)?.[1])
    try {
      assert.equal((await ping(agent.socket))['pid'], pid)
      const again = await cli(['run', '--config', agent.configPath, '--socket', agent.socket])
      assert.equal(again.code, 1)
      assert.match(again.out, /already listening/)
      const status = await cli(['status', '--socket', agent.socket])
      assert.equal(status.code, 0, status.out)
      assert.match(status.out, new RegExp(`agent pid ${pid}`))
      assert.match(status.out, /local: sparse\+http:\/\/127\.0\.0\.1:38600\/index\//)
      assert.match((await cli(['lock', '--socket', agent.socket])).out, /forgot \d+ PIN\(s\)/)
      assert.match(
        (await cli(['release', '--socket', agent.socket])).out,
        /closed the sessions of \d+ token\(s\)/,
      )
    } finally {
      process.kill(pid, 'SIGTERM')
      for (let i = 0; i < 200 && existsSync(agent.socket); i++) await new Promise((r) => setTimeout(r, 25))
    }
    assert.equal(existsSync(agent.socket), false)
    const down = await cli(['status', '--socket', agent.socket])
    assert.equal(down.code, 1)
    assert.ok(down.out.includes(agent.socket), down.out)
  })

  test('started without UV_THREADPOOL_SIZE, the process started is the agent (it sizes its pool itself)', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } }, start: false })
    fixtures.push(agent)
    delete agent.agentEnv['UV_THREADPOOL_SIZE']
    const child = await agent.spawnAgent()
    await waitForSocket(agent.socket, child, agent.log)
    assert.equal((await ping(agent.socket))['pid'], child.pid, 'no second process: the one started listens')
    // SIGTERM to the process we started stops the agent and removes its socket.
    assert.equal(await agent.stopAgent('SIGTERM'), 0)
    assert.equal(existsSync(agent.socket), false)
  })

  test('the shim starts an agent in the background when none runs, and it signs', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } }, start: false })
    fixtures.push(agent)
    assert.equal(existsSync(agent.socket), false)
    const env = { ...agent.agentEnv }
    delete env['CARGO_PKCS11_AGENT_NO_AUTOSTART']
    const r = await runShim(agent.shimPath, cargoGet(INDEX, 'read'), { env, timeoutMs: 30_000 })
    let pid: number | undefined
    try {
      assert.match(r.stderr, /starting cargo-pkcs11-agent on/)
      const ok = JSON.parse(String(r.lines[1])) as { Ok: { token: string } }
      await verifyToken(ok.Ok.token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
      pid = (await ping(agent.socket))['pid'] as number
      // Its log goes to the state dir, not to cargo's terminal.
      const logFile = `${env['XDG_STATE_HOME']}/cargo-pkcs11-agent/agent.log`
      assert.ok(existsSync(logFile))
      // The agent's own lines there carry their time (UTC), like any log file.
      assert.match(
        readFileSync(logFile, 'utf8'),
        /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z cargo-pkcs11-agent: listening on /m,
      )
    } finally {
      if (pid === undefined)
        pid = (await ping(agent.socket).catch(() => ({ pid: undefined })))['pid'] as number | undefined
      if (pid !== undefined) {
        process.kill(pid, 'SIGTERM')
        for (let i = 0; i < 200 && existsSync(agent.socket); i++)
          await new Promise((res) => setTimeout(res, 25))
      }
    }
    assert.equal(existsSync(agent.socket), false, 'the autostarted agent removed its socket on SIGTERM')
  })
})
