/**
 * A forwarded peer gets no `status` (docs/ssh-forwarding.md, "What forwarded requests may do"): it
 * would show the remote host every registry the agent binds (those with forwarded = "refuse" too),
 * the tokens' serials and modules, which PIN is cached right now and the agent's paths. Refused like
 * lock and release: FORWARDED_REFUSED naming the command to run on the agent's host, a log line, no
 * audit line. The forwarder is a copy of node named `ssh`, as in agent-forwarded.test.ts; the
 * agent is the real process on SoftHSM.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'

import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { waitFor } from '../helpers/wait.js'

const OPEN_INDEX = 'sparse+http://127.0.0.1:38796/index/'
const SECRET_INDEX = 'sparse+http://internal-only.test/index/'
let agent: AgentFixture
let work: string

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'forwarded-status-'))
  copyFileSync(process.execPath, join(work, 'ssh'))
  agent = await startAgent({
    registries: { open: { index: OPEN_INDEX }, hidden: { index: SECRET_INDEX } },
  })
})
after(async () => {
  await agent?.stop()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

/** One request from a process whose executable is named `ssh`; its response frame and pid. */
function call(binary: string, method: string): Promise<{ pid: number; frame: Record<string, unknown> }> {
  const out = join(work, `out-${Math.random()}.json`)
  const child = spawn(
    binary,
    [
      '-e',
      `
    const s = require('node:net').createConnection(process.env.SOCK); let b = ''
    s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: ${JSON.stringify(method)}, params: {} }) + '\\n'))
    s.setEncoding('utf8').on('data', (d) => { b += d; const i = b.indexOf('\\n'); if (i >= 0) { require('node:fs').writeFileSync(process.env.OUT, b.slice(0, i)); process.exit(0) } })`,
    ],
    { env: { SOCK: agent.socket, OUT: out }, stdio: 'ignore' },
  )
  return new Promise((resolve) =>
    child.on('exit', () =>
      resolve({
        pid: child.pid ?? -1,
        frame: JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>,
      }),
    ),
  )
}

test('a forwarded status is FORWARDED_REFUSED, logged, not audited, and shows nothing of the agent', async () => {
  // A local read first, so a PIN is cached: the refusal must not say so.
  assert.match((await agent.runShim(cargoGet(OPEN_INDEX, 'read'))).stdout, /"Ok"/)
  const auditBefore = readAudit(agent.auditLog).length
  const { pid, frame } = await call(join(work, 'ssh'), 'status')
  const error = frame['error'] as { code?: string; remedy?: string } | undefined
  assert.equal(frame['result'], undefined, JSON.stringify(frame))
  assert.equal(error?.code, 'FORWARDED_REFUSED', JSON.stringify(frame))
  assert.match(error?.remedy ?? '', /Run `cargo-pkcs11-agent status` on the agent's host/)
  const text = JSON.stringify(frame)
  for (const secret of [SECRET_INDEX, agent.configPath, 'pinCached', 'softhsm'])
    assert.equal(text.includes(secret), false, `${secret} in ${text}`)
  const refused = new RegExp(`status refused: a forwarded connection via ssh pid ${pid}\\b`)
  await waitFor(
    'the refusal in the agent log',
    () => agent.log(),
    (log) => refused.test(log),
  )
  assert.equal(readAudit(agent.auditLog).length, auditBefore, 'like lock and release: no audit line')
  // The agent's own host still gets it.
  const local = await call(process.execPath, 'status')
  assert.ok(JSON.stringify(local.frame['result']).includes(SECRET_INDEX), JSON.stringify(local.frame))
})
