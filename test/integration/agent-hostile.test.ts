/**
 * Limits under a hostile client (docs/agent-protocol.md, "Limits"), each against the real agent
 * process over its real socket: a flooder that never reads, 64 idle connections, 64 clients
 * reconnecting per request, 300 pipelined signs on one connection, a connection's queue overflowing.
 * The agent's RSS must stay bounded (a generous bound: this is about "bounded", not about megabytes)
 * and another client must be served meanwhile. RSS before/peak/after is printed for the record.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { createConnection, type Socket } from 'node:net'
import { after, before, describe, test } from 'node:test'

import { auditEntry, tokenFingerprint } from '../../src/audit/entry.js'
import { LIMITS } from '../../src/lib/limits.js'
import { AgentConnection } from '../../src/protocol/client.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38700/index/'
const READ_LINE = JSON.stringify(cargoGet(INDEX, 'read'))
/** Growth of the agent's RSS over its idle size that counts as "unbounded" (the flooder grew it by
 * ~234 MB per MiB sent before output backpressure). */
const RSS_GROWTH_BOUND = 96 * 1024 * 1024

function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1]
  assert.ok(kb !== undefined, 'VmRSS in /proc/PID/status')
  return Number(kb) * 1024
}

/** Samples the agent's RSS every 25 ms while `work` runs. */
async function measure<T>(
  agent: AgentFixture,
  name: string,
  work: () => Promise<T>,
): Promise<{ result: T; before: number; peak: number; after: number }> {
  const pid = agent.process?.pid
  assert.ok(pid !== undefined)
  const beforeRss = rssBytes(pid)
  let peak = beforeRss
  const timer = setInterval(() => (peak = Math.max(peak, rssBytes(pid))), 25)
  let result: T
  try {
    result = await work()
  } finally {
    clearInterval(timer)
  }
  await new Promise((r) => setTimeout(r, 200))
  const afterRss = rssBytes(pid)
  peak = Math.max(peak, afterRss)
  const mib = (n: number): string => (n / 1024 / 1024).toFixed(1)
  process.stdout.write(
    `# RSS ${name}: before ${mib(beforeRss)} MiB, peak ${mib(peak)} MiB, after ${mib(afterRss)} MiB\n`,
  )
  return { result, before: beforeRss, peak, after: afterRss }
}

function connectRaw(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path })
    socket.once('connect', () => resolve(socket))
    socket.once('error', reject)
  })
}

/** Collects response frames by id from a raw socket until `count` arrived. */
function collectResponses(socket: Socket, count: number): Promise<Map<number, Record<string, unknown>>> {
  return new Promise((resolve, reject) => {
    const responses = new Map<number, Record<string, unknown>>()
    let text = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => {
      text += chunk
      let newline
      while ((newline = text.indexOf('\n')) !== -1) {
        const frame = JSON.parse(text.slice(0, newline)) as Record<string, unknown>
        text = text.slice(newline + 1)
        if (frame['type'] === 'response' && typeof frame['id'] === 'number') responses.set(frame['id'], frame)
        if (responses.size === count) resolve(responses)
      }
    })
    socket.once('close', () => reject(new Error(`closed after ${responses.size} of ${count} responses`)))
  })
}

function signFrame(id: number): string {
  return JSON.stringify({ v: 1, type: 'request', id, method: 'sign', params: { cargo: READ_LINE } }) + '\n'
}

async function signOnce(socket: string): Promise<string> {
  const c = await AgentConnection.connect(socket)
  try {
    const result = await c.request('sign', { cargo: READ_LINE, interactive: false })
    return result.token
  } finally {
    c.close()
  }
}

/** `strictLowS`: the agent normalises every signature (low S), so a strict registry accepts it too. */
async function verifyRead(token: string, strictLowS = false): Promise<void> {
  await verifyToken(token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read', strictLowS })
}

describe('the agent under hostile clients', () => {
  let agent: AgentFixture
  before(async () => {
    agent = await startAgent({
      registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id } } },
    })
  })
  after(async () => {
    await agent.stop()
  })

  test('a client writing tiny bad frames and never reading: bounded RSS, others served, then dropped', async () => {
    const flooder = await connectRaw(agent.socket)
    let closedByAgent = false
    flooder.on('close', () => (closedByAgent = true))
    flooder.on('error', () => undefined)
    flooder.pause() // never reads a byte of the answers
    const chunk = Buffer.from('x\n'.repeat(32 * 1024)) // 32 Ki bad frames per 64 KiB
    let sent = 0
    const served: string[] = []
    const { peak, before: idle } = await measure(agent, 'never-reading flooder', async () => {
      const deadline = Date.now() + 4_000
      while (Date.now() < deadline && sent < 64 * 1024 * 1024 && !closedByAgent) {
        if (!flooder.writableNeedDrain) {
          flooder.write(chunk)
          sent += chunk.length
          continue
        }
        // The agent stopped reading (room never comes while we do not read): another client meanwhile.
        await new Promise((r) => setTimeout(r, 100))
        served.push(await signOnce(agent.socket))
      }
    })
    process.stdout.write(`# flooder offered ${(sent / 1024 / 1024).toFixed(1)} MiB\n`)
    // ~250 bytes of PROTOCOL_ERROR per 2-byte frame: the agent stops reading after ~1 Ki frames.
    assert.ok(served.length > 0, "the flooder's writes backed up: the agent stopped reading it")
    assert.ok(sent < 8 * 1024 * 1024, `the agent read ${sent} bytes from a client that never reads`)
    assert.ok(peak - idle < RSS_GROWTH_BOUND, `RSS grew by ${peak - idle} bytes`)
    assert.ok(served.length > 0, 'another client was served while the flooder was connected')
    for (const token of served.slice(0, 3)) await verifyRead(token)
    // Its answers stay unread: dropped after the idle timeout, with a log line.
    const deadline = Date.now() + LIMITS.connectionIdleTimeoutMs + 5_000
    while (!closedByAgent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
    assert.equal(closedByAgent, true)
    assert.match(agent.log(), /refused: connection \d+: answers unread for/)
    assert.match(agent.log(), /refused: .*not JSON/)
    flooder.destroy()
  })

  test('64 idle connections: a new client is served at once, and the idle ones are closed after the timeout', async () => {
    const idle: { socket: Socket; closed: boolean }[] = []
    const { result: token } = await measure(agent, '64 idle connections', async () => {
      for (let i = 0; i < LIMITS.maxConnections; i++) {
        const socket = await connectRaw(agent.socket)
        const entry = { socket, closed: false }
        socket.on('close', () => (entry.closed = true))
        socket.on('error', () => undefined)
        const answered = collectResponses(socket, 1)
        socket.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: 'ping' }) + '\n')
        await answered
        idle.push(entry)
      }
      return signOnce(agent.socket)
    })
    await verifyRead(token)
    assert.match(agent.log(), /idle, closed to admit a new connection/)
    const deadline = Date.now() + LIMITS.connectionIdleTimeoutMs + 5_000
    while (idle.some((e) => !e.closed) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
    assert.equal(idle.filter((e) => !e.closed).length, 0, 'every idle connection was closed by the agent')
    assert.match(agent.log(), /refused: connection \d+: idle for/)
  })

  // Device-side refusals (a request that found LIMITS.sessionWaitersMax waiting, or waited
  // LIMITS.sessionWaitMs, src/pkcs11/session-pool.ts) are counted and printed; none may happen here,
  // and the connection limits must refuse none either.
  test('64 clients reconnecting per request × 50: none refused, every token verifies', async () => {
    let refused = 0
    let deviceBusy = 0
    const reasons = new Set<string>()
    const tokens: string[] = []
    const clients = Array.from({ length: LIMITS.maxConnections }, async () => {
      for (let i = 0; i < 50; i++) {
        try {
          tokens.push(await signOnce(agent.socket))
        } catch (error) {
          if ((error as { code?: string }).code !== 'AGENT_BUSY') throw error
          if (/waiting for the device/.test((error as Error).message)) deviceBusy += 1
          else {
            refused += 1
            reasons.add((error as Error).message)
          }
        }
      }
    })
    const { peak, before: idle } = await measure(agent, '64 clients reconnecting × 50', () =>
      Promise.all(clients),
    )
    process.stdout.write(
      `# refused by the device's wait queue: ${deviceBusy} of ${LIMITS.maxConnections * 50}\n`,
    )
    assert.equal(refused, 0, [...reasons].join('; '))
    // Past the 16 sessions requests wait in the device's bounded queue (src/pkcs11/session-pool.ts)
    // instead of being refused: every one of them is signed, and every token verifies.
    assert.equal(deviceBusy, 0)
    assert.equal(tokens.length, LIMITS.maxConnections * 50)
    for (const token of tokens) await verifyRead(token, true)
    // Each released token has its `signed` line in the audit log (written before the token left).
    const audited = new Set(
      readAudit(agent.auditLog)
        .filter((e) => e['result'] === 'signed')
        .map((e) => e['token']),
    )
    const missing = tokens.filter((t) => !audited.has(tokenFingerprint(t)))
    assert.equal(missing.length, 0, `${missing.length} released tokens have no signed audit line`)
    assert.ok(peak - idle < RSS_GROWTH_BOUND, `RSS grew by ${peak - idle} bytes`)
  })

  test('300 pipelined signs on one connection: all signed, and another client is served meanwhile', async () => {
    const socket = await connectRaw(agent.socket)
    const all = collectResponses(socket, 300)
    let doneAt = 0
    void all.then(() => (doneAt = Date.now()))
    const {
      result: other,
      peak,
      before: idle,
    } = await measure(agent, '300 pipelined signs', async () => {
      socket.write(Array.from({ length: 300 }, (_, i) => signFrame(i + 1)).join(''))
      await new Promise((r) => setTimeout(r, 50))
      const token = await signOnce(agent.socket)
      const servedAt = Date.now()
      await all
      return { token, servedAt }
    })
    const responses = await all
    socket.destroy()
    const errors = [...responses.values()].filter((r) => r['error'] !== undefined)
    assert.deepEqual(errors, [])
    await verifyRead(other.token)
    assert.ok(other.servedAt < doneAt, 'the other client was answered before the pipeline finished')
    for (const id of [1, 150, 300]) {
      const result = responses.get(id)?.['result'] as { token: string }
      await verifyRead(result.token)
    }
    assert.ok(peak - idle < RSS_GROWTH_BOUND, `RSS grew by ${peak - idle} bytes`)
  })

  test("past a connection's queue: answered AGENT_BUSY at once, logged, and each refused sign audited", async () => {
    const auditBefore = readAudit(agent.auditLog).length
    const count = 1_000
    const socket = await connectRaw(agent.socket)
    const all = collectResponses(socket, count)
    socket.write(Array.from({ length: count }, (_, i) => signFrame(i + 1)).join(''))
    const responses = await all
    socket.destroy()
    const busy = [...responses.values()].filter(
      (r) => (r['error'] as { code?: string } | undefined)?.code === 'AGENT_BUSY',
    )
    const signed = [...responses.values()].filter((r) => r['result'] !== undefined)
    assert.ok(busy.length > 0, 'the queue bound was reached')
    assert.equal(
      busy.length + signed.length,
      count,
      'every request got exactly one answer: a token or AGENT_BUSY',
    )
    assert.match(agent.log(), /refused: connection \d+: sign#\d+: AGENT_BUSY/)
    // The refusals' audit lines are written without being awaited by the answer: give them a moment.
    let lines = readAudit(agent.auditLog).slice(auditBefore)
    for (let i = 0; i < 100 && lines.length < count; i++) {
      await new Promise((r) => setTimeout(r, 50))
      lines = readAudit(agent.auditLog).slice(auditBefore)
    }
    assert.equal(
      lines.filter((l) => l['result'] === 'failed' && l['code'] === 'AGENT_BUSY').length,
      busy.length,
    )
    assert.equal(lines.filter((l) => l['result'] === 'signed').length, signed.length)
    const sample = lines.find((l) => l['code'] === 'AGENT_BUSY')
    // Same shape as every other line (src/audit/entry.ts), for the same registry and operation.
    assert.deepEqual(
      Object.keys(sample ?? {}).sort(),
      Object.keys(
        auditEntry(
          { indexUrl: INDEX, operation: 'read', crate: {}, requester: {} },
          { result: 'failed', code: 'AGENT_BUSY', reason: 'x' },
          new Date(),
        ),
      ).sort(),
    )
    assert.equal((sample?.['registry'] as { url?: string }).url, INDEX)
  })
})
