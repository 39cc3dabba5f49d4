/** Damaged audit lines: the next append starts on a fresh line, and `log` reports one by number. */
import assert from 'node:assert/strict'
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { auditEntry } from '../../src/audit/entry.js'
import { AuditLog, parseAuditLines } from '../../src/audit/log.js'
import { runLog } from '../../src/cli/log.js'
import { publishIntent, readIntent } from '../fixtures/pinentry/harness.js'

const dir = mkdtempSync(join(tmpdir(), 'audit-damaged-'))
after(() => rmSync(dir, { recursive: true, force: true }))

test('a fragment left by a crash: the next line starts fresh, and `log` names the damaged line by number', async () => {
  const path = join(dir, 'audit.jsonl')
  const audit = new AuditLog(path)
  await audit.record(auditEntry(readIntent(), { result: 'signed', token: 'one' }))
  await audit.record(auditEntry(readIntent(), { result: 'signed', token: 'two' }))
  appendFileSync(path, '{"v":1,"time":"2026-11-25T1') // what a crash mid-write leaves
  await audit.record(auditEntry(publishIntent(), { result: 'signed', token: 'three', approval: 'touch' }))
  const text = readFileSync(path, 'utf8')
  assert.equal(text.split('\n').length, 5) // 4 lines and the final newline
  assert.equal(parseAuditLines(text).length, 3)

  let out = ''
  await runLog(['--file', path, '-n', '0'], { write: (t) => void (out += t), env: {} })
  const lines = out.trimEnd().split('\n')
  assert.equal(lines.length, 4)
  assert.match(lines[2] ?? '', /^line 3: damaged, not an audit line: \{"v":1,"time":"2026-11-25T1/)
  assert.match(lines[3] ?? '', /signed  publish foo 1\.2\.3 .*approved: touch/)

  // --json keeps stdout parseable and reports the damage on the side.
  let json = ''
  let warned = ''
  await runLog(['--file', path, '-n', '2', '--json'], {
    write: (t) => void (json += t),
    warn: (t) => void (warned += t),
    env: {},
  })
  assert.equal(json.trimEnd().split('\n').length, 1)
  assert.equal(JSON.parse(json).result, 'signed')
  assert.match(warned, /^line 3: damaged/)
})
