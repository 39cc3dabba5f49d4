/**
 * A short run of the protocol fuzzer (scripts/fuzz/protocols.ts) against a real agent and real shim
 * processes: a few thousand malformed inputs, 0 crashes, 0 hangs, a typed answer for each. The full
 * run (≥ 100,000 inputs per protocol) is `node dist/scripts/fuzz/protocols.js`.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'

import { runFuzz } from '../../scripts/fuzz/protocols.js'

test('fuzzing both protocols: 0 crashes, 0 hangs, a typed answer for each input', async () => {
  // A new seed every run widens coverage over time; a failure prints it for replay (--seed).
  const seed = Math.floor(Math.random() * 2 ** 31)
  const report = await runFuzz({ socketInputs: 4_000, parserInputs: 4_000, shimSpawns: 40, seed })
  const summary = JSON.stringify(report)
  assert.equal(report.socketInputs, 4_000, summary)
  assert.equal(report.parserInputs, 4_000, summary)
  assert.equal(report.shimSpawns, 40, summary)
  assert.equal(report.crashes, 0, summary)
  assert.equal(report.hangs, 0, summary)
  assert.equal(report.untyped, 0, summary)
  // The inputs reached every layer: framing, the method table and the cargo parser all answered.
  for (const code of ['PROTOCOL_ERROR', 'REQUEST_INVALID', 'ok', 'parsed'])
    assert.ok((report.codes[code] ?? 0) > 0, `no ${code} answers: ${summary}`)
})
