/**
 * UV_THREADPOOL_SIZE for the agent. A device sign waiting for a touch holds a libuv pool thread,
 * so the agent needs LIMITS.uvThreadpoolSize of them (docs/pkcs11-platforms.md §3). libuv sizes its
 * pool once, when it starts, and under ESM the loader starts it before the entry module runs: the
 * agent's entry is CommonJS and sets the variable first (src/bin/cargo-pkcs11-agent.cts). These
 * tests run the real agent entry and count its threads in /proc (Linux) after it has signed.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { promisify } from 'node:util'

import { verifyToken } from '../../src/verify/verify.js'
import { LIMITS } from '../../src/lib/limits.js'
import { cargoGet, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const run = promisify(execFile)
const INDEX = 'sparse+http://127.0.0.1:38601/index/'

/** An agent started from the real entry with `threads` (undefined: no variable), after one sign. */
async function agentThreads(fixtures: AgentFixture[], threads: string | undefined): Promise<number> {
  const agent = await startAgent({
    registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id } } },
    start: false,
  })
  fixtures.push(agent)
  delete agent.agentEnv['UV_THREADPOOL_SIZE']
  if (threads !== undefined) agent.agentEnv['UV_THREADPOOL_SIZE'] = threads
  const child = await agent.spawnAgent()
  await waitForSocket(agent.socket, child, agent.log)
  // The sign runs on the pool (pkcs11js C_SignAsync), so the pool has started by now.
  const r = await agent.runShim(cargoGet(INDEX, 'read'))
  const ok = JSON.parse(String(r.lines[1])) as { Ok: { token: string } }
  await verifyToken(ok.Ok.token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
  const count = readdirSync(`/proc/${child.pid}/task`).length
  assert.equal(await agent.stopAgent('SIGTERM'), 0, 'the process started is the agent, and it stops cleanly')
  return count
}

describe('libuv threadpool sizing', () => {
  const fixtures: AgentFixture[] = []
  after(async () => {
    for (const f of fixtures) await f.stop()
  })

  it('started without the variable, the agent runs a pool of LIMITS.uvThreadpoolSize; a larger value is kept', async () => {
    const own = await agentThreads(fixtures, undefined)
    assert.ok(own >= LIMITS.uvThreadpoolSize, `${own} threads`)
    const larger = LIMITS.uvThreadpoolSize + 16
    const inherited = await agentThreads(fixtures, String(larger))
    assert.ok(inherited >= larger, `${inherited} threads with UV_THREADPOOL_SIZE=${larger}`)
    assert.ok(inherited >= own + 16, `inherited ${inherited} threads, own ${own}`)
  })

  it('control: an ESM entry that sets the variable itself is too late and keeps 4 pool threads', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'threadpool-'))
    try {
      const late = join(dir, 'late.mjs')
      await writeFile(
        late,
        `process.env.UV_THREADPOOL_SIZE = '${LIMITS.uvThreadpoolSize}'
const { readdirSync } = await import('node:fs')
const { pbkdf2 } = await import('node:crypto')
await new Promise((r) => pbkdf2('a', 'b', 1, 8, 'sha256', r))
console.log(readdirSync('/proc/self/task').length)
`,
      )
      const env = { ...process.env }
      delete env['UV_THREADPOOL_SIZE']
      const lateThreads = Number((await run(process.execPath, [late], { env })).stdout.trim())
      assert.ok(lateThreads < LIMITS.uvThreadpoolSize, `late: ${lateThreads} threads`)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
