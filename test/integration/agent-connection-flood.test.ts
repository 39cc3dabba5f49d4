/**
 * A connection flood from one process does not lock cargo out (docs/agent-protocol.md, "Limits").
 * The flooder holds all `maxConnections` connections and pings on each every 150 ms, so none is ever
 * idle for `connectionEvictIdleMs`; in the second test it also reopens every connection the agent
 * closes and keeps as many more waiting for a slot. Before per-peer fairness
 * (LIMITS.connectionsPerPeer) every shim run meanwhile got AGENT_BUSY after `connectionAdmitWaitMs`;
 * now each signs at once, and its token verifies.
 */
import assert from 'node:assert/strict'
import { createConnection, type Socket } from 'node:net'
import { after, before, test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38793/index/'
let agent: AgentFixture
const sockets = new Set<Socket>()
let pinger: NodeJS.Timeout | undefined
/** Cleared when a flood stops, so closed connections are not reopened. */
let flooding = false
let reopened = 0

before(async () => {
  agent = await startAgent({
    registries: { r: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id } } },
  })
})
after(async () => {
  await stopFlood()
  await agent?.stop()
})

/** One flooding connection; with `reopen`, when the agent closes it another takes its place. Without
 * `read` it never reads an answer. */
function flood(reopen: boolean, read = true): Promise<void> {
  return new Promise((resolve) => {
    const s = createConnection(agent.socket)
    s.on('error', () => undefined)
    if (read) s.on('data', () => undefined)
    s.once('connect', () => {
      sockets.add(s)
      resolve()
    })
    s.once('close', () => {
      sockets.delete(s)
      if (!flooding || !reopen) return
      reopened += 1
      setTimeout(() => flooding && void flood(true), 50)
    })
  })
}

/** Fills the agent with `maxConnections` connections that each ping every 150 ms; each first sends
 * `junk` frames of an unknown protocol version, each answered with a PROTOCOL_ERROR of ~60 KB (the
 * answer quotes the version). */
async function fill(reopen: boolean, { junk = 0, read = true } = {}): Promise<void> {
  flooding = true
  reopened = 0
  for (let i = 0; i < LIMITS.maxConnections; i++) await flood(reopen, read)
  let id = 0
  const ping = (): void => {
    for (const s of sockets)
      s.write(JSON.stringify({ v: 1, type: 'request', id: ++id, method: 'ping' }) + '\n')
  }
  const big = JSON.stringify({ v: 'x'.repeat(60_000), type: 'request', id: 0, method: 'ping' }) + '\n'
  for (const s of sockets) s.write(big.repeat(junk))
  ping()
  pinger = setInterval(ping, 150)
}

async function stopFlood(): Promise<void> {
  flooding = false
  clearInterval(pinger)
  for (const s of sockets) s.destroy()
  await new Promise((r) => setTimeout(r, 200))
}

/** Three shim runs under the flood: each signs at once and its token verifies. */
async function shimsSign(): Promise<void> {
  await new Promise((r) => setTimeout(r, 500))
  const results = []
  for (let i = 0; i < 3; i++) {
    const started = Date.now()
    const shim = await agent.runShim(cargoGet(INDEX, 'read'), { timeoutMs: 20_000 })
    results.push({ ms: Date.now() - started, status: shim.status, lines: shim.lines, stderr: shim.stderr })
  }
  process.stdout.write(
    `# shim runs under the flood: ${results.map((r) => `${r.ms} ms`).join(', ')}; flooding connections reopened: ${reopened}\n`,
  )
  for (const r of results) {
    assert.equal(r.status, 0, r.stderr)
    const response = JSON.parse(r.lines.at(-1) ?? '{}') as { Ok?: { token?: string }; Err?: unknown }
    assert.equal(response.Err, undefined, JSON.stringify(response.Err))
    const token = response.Ok?.token
    assert.ok(typeof token === 'string', r.lines.join('\n'))
    await verifyToken(token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    // Served from the flooder's share at once, not after waiting out connectionAdmitWaitMs.
    assert.ok(r.ms < LIMITS.connectionAdmitWaitMs, `a shim run took ${r.ms} ms`)
  }
  assert.match(agent.log(), /refused: connection \d+: pid \d+ holds \d+ of \d+ connections/)
}

test(
  '64 pinging connections of one process: every shim run meanwhile signs',
  { timeout: 60_000 },
  async () => {
    const ok = await agent.runShim(cargoGet(INDEX, 'read'))
    assert.equal(ok.status, 0, ok.stderr)
    await fill(false)
    try {
      await shimsSign()
      // The flood went on: the first shim run took one of its connections; the next ones reused
      // the slot it left.
      assert.equal(sockets.size, LIMITS.maxConnections - 1)
    } finally {
      await stopFlood()
    }
  },
)

test(
  'the same flood, reopening what is closed and keeping 64 more waiting: every shim run signs',
  { timeout: 60_000 },
  async () => {
    await fill(true)
    try {
      // As many again wait for a slot (each is refused after connectionAdmitWaitMs and reopened).
      await Promise.all(Array.from({ length: LIMITS.maxConnections }, () => flood(true)))
      await shimsSign()
      assert.ok(sockets.size >= LIMITS.maxConnections * 2 - 3, `${sockets.size} flooding connections left`)
    } finally {
      await stopFlood()
    }
  },
)

test(
  'the same flood never reading its answers: every shim run still signs',
  { timeout: 60_000 },
  async () => {
    // 480 KB of unread answers per connection overflow its socket buffers: the agent holds unsent
    // output for every connection from then on, so none is ever idle.
    await fill(false, { junk: 8, read: false })
    try {
      await shimsSign()
      assert.equal(sockets.size, LIMITS.maxConnections - 1)
      // Each refusal quoted a 60 KB version string; the agent log got a cut line.
      const longest = Math.max(
        ...agent
          .log()
          .split('\n')
          .map((line) => line.length),
      )
      assert.ok(longest < LIMITS.refusalLogTextMaxChars + 200, `a ${longest}-character log line`)
    } finally {
      await stopFlood()
    }
  },
)
