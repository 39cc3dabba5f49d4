/**
 * The agent's log (stderr: the terminal of `run --foreground`, the autostart log file, the journal)
 * gets one line per message, whatever a client put in it: the log writer (src/lib/agent-log.ts)
 * escapes control characters, C1, line separators and bidirectional controls, and a keygen label is
 * shown through displaySafe (src/agent/methods/keygen.ts). Without that a newline forges whole log
 * lines and ESC sequences reach whoever reads the log on a terminal; a refused `keygen --force`
 * needs no approval at all to be logged. Real agent process on SoftHSM; the clients run in their own
 * session, so no question reaches a terminal.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'

import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'
import { waitFor } from '../helpers/wait.js'

const INDEX = 'sparse+http://127.0.0.1:38792/index/'
const FORGED = 'cargo-pkcs11-agent: reload refused, keeping the previous configuration: forged'
const ESC = '\u001b]0;owned\u0007\u001b[2J'
/** What may not reach the log raw: C0 but tab, DEL, C1, U+2028/9, bidirectional controls. */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/
let agent: AgentFixture
let work: string

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'agent-log-safe-'))
  agent = await startAgent({ registries: { ci: { index: INDEX, confirm: 'none' } } })
})
after(async () => {
  await agent?.stop()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

/** One raw request from a client in its own session (no controlling terminal); its response frame. */
function rawRequest(request: object): Promise<Record<string, unknown>> {
  const out = join(work, `out-${Math.random()}.json`)
  const child = spawn(
    process.execPath,
    [
      '-e',
      `
    const s = require('node:net').createConnection(process.env.SOCK); let b = ''
    s.on('connect', () => s.write(process.env.FRAME + '\\n'))
    s.setEncoding('utf8').on('data', (d) => {
      b += d
      for (let i; (i = b.indexOf('\\n')) >= 0; b = b.slice(i + 1))
        if (JSON.parse(b.slice(0, i)).type === 'response') { require('node:fs').writeFileSync(process.env.OUT, b.slice(0, i)); process.exit(0) }
    })`,
    ],
    {
      env: { SOCK: agent.socket, OUT: out, FRAME: JSON.stringify(request) },
      detached: true,
      stdio: 'ignore',
    },
  )
  return new Promise((resolve) =>
    child.on('exit', () => resolve(JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>)),
  )
}

/** The log's lines, as a reader of the file or the terminal sees them. */
const logLines = (): string[] => agent.log().split('\n')

test('a refused keygen --force with a newline and ESC in its label leaves one terminal-safe log line', async () => {
  const label = `gen${ESC}\n${FORGED}`
  const frame = await rawRequest({
    v: 1,
    type: 'request',
    id: 1,
    method: 'keygen',
    params: { token: 'softhsm', label, force: true },
  })
  const code = (frame['error'] as { code?: string } | undefined)?.code
  assert.ok(code === 'POLICY_DENIED' || code === 'DENIED', JSON.stringify(frame))
  const line = await waitFor(
    'the keygen line in the agent log',
    () => logLines().find((l) => l.includes('keygen softhsm/gen')),
    (l) => l !== undefined,
  )
  assert.ok(line?.endsWith(`: ${code}`), `the whole message on one line: ${JSON.stringify(line)}`)
  assert.equal(agent.log().includes(ESC), false, 'no escape sequence reaches the log')
  assert.equal(
    logLines().some((l) => l.startsWith(FORGED)),
    false,
    `a forged log line: ${JSON.stringify(agent.log().slice(-400))}`,
  )
})

test('the log writer escapes C1, line separators and bidirectional controls (a raw method name)', async () => {
  // An unknown method's name is logged in JSON quotes, which escape C0 but not C1 (U+009B is CSI),
  // U+2028 or U+202E: the writer must.
  const method = 'x\u009b2J\u202e\u2028forged'
  const frame = await rawRequest({ v: 1, type: 'request', id: 1, method, params: {} })
  assert.equal(
    (frame['error'] as { code?: string } | undefined)?.code,
    'PROTOCOL_ERROR',
    JSON.stringify(frame),
  )
  const line = await waitFor(
    'the refusal in the agent log',
    () => logLines().find((l) => l.includes('Unknown method')),
    (l) => l !== undefined,
  )
  assert.ok(line?.includes('"x\\x9b2J\\u202e\\u2028forged"'), JSON.stringify(line))
  assert.doesNotMatch(agent.log(), UNSAFE)
})

test('holds: a mutation with control characters in name/vers is not signed (token claims refuse them)', async () => {
  const shim = await agent.runShim(cargoGet(INDEX, 'yank', { name: `foo${ESC}`, vers: `1.0.0\n${FORGED}` }))
  assert.match(shim.stdout, /REQUEST_INVALID/)
  assert.equal(agent.log().includes(`foo${ESC}`), false)
})
