/**
 * A request that cannot ask for a PIN (no terminal) waits for another request's open PIN question
 * only LIMITS.pinQueryWaitMs, then fails PIN_REQUIRED: one client that never answers its question
 * must not hold such requests for the whole request timeout (src/policy/login.ts `#askOwn`). From an
 * attacker's review: the victim waited 120 s. Real agent on SoftHSM, the real shim (no terminal) as
 * the victim, a raw socket client that never answers as the attacker.
 */
import assert from 'node:assert/strict'
import { createConnection, type Socket } from 'node:net'
import { after, before, test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'

const INDEX = 'sparse+http://127.0.0.1:38798/index/'
let agent: AgentFixture

before(async () => {
  agent = await startAgent({ tokens: { softhsm: { pinSource: 'tty' } }, registries: { r: { index: INDEX } } })
})
after(async () => {
  await agent?.stop()
})

/** Asks for a read token as interactive and never answers its PIN query. */
function holder(): { socket: Socket; asked: Promise<void> } {
  const socket = createConnection(agent.socket)
  let onQuery!: () => void
  const asked = new Promise<void>((r) => (onQuery = r))
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
    if (d.includes('"type":"query"')) onQuery()
  })
  return { socket, asked }
}

test('without another question open, a request with no terminal is PIN_REQUIRED at once', async () => {
  const start = Date.now()
  const shim = await agent.runShim(cargoGet(INDEX, 'read'))
  assert.match(shim.stdout, /PIN_REQUIRED/)
  assert.ok(Date.now() - start < 5_000)
})

test('an unanswered PIN question holds a request with no terminal for pinQueryWaitMs, not the request timeout', async () => {
  const attacker = holder()
  try {
    await attacker.asked
    const start = Date.now()
    const shim = await agent.runShim(cargoGet(INDEX, 'read'), { timeoutMs: 60_000 })
    const waited = Date.now() - start
    assert.match(shim.stdout, /PIN_REQUIRED/, shim.stdout)
    assert.ok(
      waited >= LIMITS.pinQueryWaitMs - 1_000,
      `answered after ${waited} ms: it waited for the question`,
    )
    assert.ok(waited < LIMITS.pinQueryWaitMs + 10_000, `answered after ${waited} ms`)
  } finally {
    attacker.socket.destroy()
  }
})
