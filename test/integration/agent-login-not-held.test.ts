/**
 * A hostile local client must not hold every other client of a token hostage: with
 * pin-source = "tty" and no PIN cached, one client sends a request with interactive: true and never
 * answers its PIN query. Another client's request for the token is asked its own PIN at once and
 * served; the first PIN back logs in, and the holder's question becomes moot (it is told so, and
 * its request goes on with the token logged in). Before, the login flow was one per token
 * (src/policy/login.ts) and the victim got TIMEOUT after LIMITS.requestTimeoutMs. Real agent
 * process on SoftHSM; both clients are raw socket clients.
 */
import assert from 'node:assert/strict'
import { createConnection, type Socket } from 'node:net'
import { after, before, test } from 'node:test'

import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38791/index/'
let agent: AgentFixture

before(async () => {
  agent = await startAgent({
    tokens: { softhsm: { pinSource: 'tty' } },
    registries: { r: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id } } },
  })
})
after(async () => {
  await agent?.stop()
})

interface Client {
  socket: Socket
  firstQuery: Promise<number>
  events: Record<string, unknown>[]
  response: Promise<{ at: number; frame: Record<string, unknown> }>
}

function client(answerPin: string | undefined): Client {
  const socket = createConnection(agent.socket)
  let buf = ''
  let onQuery!: (t: number) => void
  let onResponse!: (r: { at: number; frame: Record<string, unknown> }) => void
  const events: Record<string, unknown>[] = []
  const firstQuery = new Promise<number>((r) => (onQuery = r))
  const response = new Promise<{ at: number; frame: Record<string, unknown> }>((r) => (onResponse = r))
  socket.on('connect', () =>
    socket.write(
      JSON.stringify({
        v: 1,
        type: 'request',
        id: 1,
        method: 'sign',
        params: { cargo: JSON.stringify(cargoGet(INDEX, 'read')), interactive: true },
      }) + '\n',
    ),
  )
  socket.setEncoding('utf8').on('data', (d: string) => {
    buf += d
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const f = JSON.parse(buf.slice(0, i)) as Record<string, unknown>
      buf = buf.slice(i + 1)
      if (f['type'] === 'query') {
        onQuery(Date.now())
        if (answerPin !== undefined)
          socket.write(
            JSON.stringify({ v: 1, type: 'answer', qid: f['qid'], result: { pin: answerPin } }) + '\n',
          )
      }
      if (f['type'] === 'event') events.push(f)
      if (f['type'] === 'response') onResponse({ at: Date.now(), frame: f })
    }
  })
  return { socket, firstQuery, events, response }
}

async function verified(frame: Record<string, unknown>): Promise<void> {
  const token = (frame['result'] as { token?: unknown } | undefined)?.token
  assert.equal(typeof token, 'string', JSON.stringify(frame).slice(0, 300))
  await verifyToken(token as string, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
}

test(
  'a client that never answers its PIN query does not stall another client of the token',
  { timeout: 200_000 },
  async () => {
    const attacker = client(undefined)
    await attacker.firstQuery
    const start = Date.now()
    const victim = client(agent.softhsm.pin)
    const victimDone = await victim.response
    const waited = victimDone.at - start
    await verified(victimDone.frame)
    assert.ok(waited < 20_000, `the victim was served after ${waited} ms`)
    // The holder's question became moot: its request is answered (the token is logged in now),
    // it is told why, and it did not wait for its own timeout.
    const attackerDone = await attacker.response
    assert.ok(attackerDone.at - victimDone.at < 20_000, 'the moot request ends soon after')
    await verified(attackerDone.frame)
    assert.ok(
      attacker.events.some((e) =>
        /yours is not needed/.test(String((e['data'] as { text?: unknown })?.text)),
      ),
      JSON.stringify(attacker.events).slice(0, 600),
    )
    attacker.socket.destroy()
    victim.socket.destroy()
  },
)
