import assert from 'node:assert/strict'
import {
  chmodSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { auditEntry, tokenFingerprint } from '../../src/audit/entry.js'
import { AuditLog, parseAuditLines } from '../../src/audit/log.js'
import { LIMITS } from '../../src/lib/limits.js'
import { publishIntent, PUBLISH_CRATE, readIntent } from '../fixtures/pinentry/harness.js'

const root = mkdtempSync(join(tmpdir(), 'audit-'))
after(() => rmSync(root, { recursive: true, force: true }))

test('the first record creates the directory 0700 and the file 0600, one JSON line per decision', async () => {
  const path = join(root, 'a', 'state', 'audit.jsonl')
  const log = new AuditLog(path)
  const token = 'v3.public.eyJpYXQiOiIyMDI2In0.sig'
  await log.record(
    auditEntry(
      publishIntent(),
      { result: 'signed', token, kip: 'k3.pid.abc', approval: 'terminal' },
      new Date('2026-11-25T12:00:00Z'),
    ),
  )
  await log.record(auditEntry(readIntent(), { result: 'failed', code: 'PIN_REQUIRED', reason: 'no PIN' }))
  assert.equal(statSync(join(root, 'a', 'state')).mode & 0o777, 0o700)
  assert.equal(statSync(path).mode & 0o777, 0o600)
  const text = readFileSync(path, 'utf8')
  assert.equal(text.split('\n').length, 3)
  const [first, second] = parseAuditLines(text)
  assert.deepEqual(first, {
    v: 1,
    time: '2026-11-25T12:00:00.000Z',
    registry: { name: 'my-registry', url: 'sparse+http://127.0.0.1:8080/index/' },
    operation: 'publish',
    requester: { pid: 4242, command: 'cargo publish' },
    result: 'signed',
    crate: 'foo',
    vers: '1.2.3',
    cksum: '6dee75a8f0d2b1c4',
    kip: 'k3.pid.abc',
    approval: 'terminal',
    token: tokenFingerprint(token),
  })
  assert.equal(text.includes(token), false)
  assert.equal(second?.result, 'failed')
  assert.equal(second?.code, 'PIN_REQUIRED')
})

test('concurrent records land whole and in call order', async () => {
  const path = join(root, 'b', 'audit.jsonl')
  const log = new AuditLog(path)
  await Promise.all(
    Array.from({ length: 40 }, (_, i) =>
      log.record(
        auditEntry(publishIntent({ crate: { ...PUBLISH_CRATE, vers: `1.0.${i}` } }), {
          result: 'signed',
          token: `t${i}`,
        }),
      ),
    ),
  )
  const entries = parseAuditLines(readFileSync(path, 'utf8'))
  assert.deepEqual(
    entries.map((e) => e.vers),
    Array.from({ length: 40 }, (_, i) => `1.0.${i}`),
  )
})

test('a loosened log file and directory are tightened again', async () => {
  const dir = join(root, 'c')
  const path = join(dir, 'audit.jsonl')
  const log = new AuditLog(path)
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 't' }))
  chmodSync(path, 0o644)
  chmodSync(dir, 0o755)
  const again = new AuditLog(path)
  await again.record(auditEntry(readIntent(), { result: 'signed', token: 't' }))
  assert.equal(statSync(path).mode & 0o777, 0o600)
  assert.equal(statSync(dir).mode & 0o777, 0o700)
})

test('a symlinked log is refused (O_NOFOLLOW) with AUDIT_FAILED', async () => {
  const dir = join(root, 'd')
  const log = new AuditLog(join(dir, 'audit.jsonl'))
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 't' }))
  const elsewhere = join(root, 'elsewhere.txt')
  writeFileSync(elsewhere, '')
  rmSync(join(dir, 'audit.jsonl'))
  symlinkSync(elsewhere, join(dir, 'audit.jsonl'))
  await assert.rejects(log.record(auditEntry(readIntent(), { result: 'signed', token: 't' })), {
    code: 'AUDIT_FAILED',
  })
  assert.equal(readFileSync(elsewhere, 'utf8'), '')
})

test('fields from other processes are cut; a hostile command line cannot add lines', async () => {
  const path = join(root, 'e', 'audit.jsonl')
  const log = new AuditLog(path)
  const command = 'cargo\n{"v":1,"result":"signed"}\n' + 'x'.repeat(10_000)
  await log.record(
    auditEntry(publishIntent({ requester: { pid: 1, command } }), {
      result: 'denied',
      code: 'DENIED',
      reason: 'Refused',
    }),
  )
  const text = readFileSync(path, 'utf8')
  assert.equal(text.split('\n').length, 2)
  const [entry] = parseAuditLines(text)
  assert.equal(entry?.requester.command?.length, LIMITS.auditFieldMaxChars)
  assert.equal(entry?.result, 'denied')
})

test('a state directory removed while the agent runs is created again', async () => {
  const dir = join(root, 'f', 'state')
  const path = join(dir, 'audit.jsonl')
  const log = new AuditLog(path)
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 'a' }))
  rmSync(join(root, 'f'), { recursive: true })
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 'b' }))
  assert.equal(parseAuditLines(readFileSync(path, 'utf8')).length, 1)
  assert.equal(statSync(dir).mode & 0o777, 0o700)
})

test('a log moved away (rotation) while the agent holds it open: the next line goes to a new file at the path', async () => {
  const dir = join(root, 'g')
  const path = join(dir, 'audit.jsonl')
  const log = new AuditLog(path)
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 'before' }))
  renameSync(path, `${path}.1`)
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 'after' }))
  await log.close()
  assert.deepEqual(
    parseAuditLines(readFileSync(`${path}.1`, 'utf8')).map((e) => e.token),
    [tokenFingerprint('before')],
  )
  assert.deepEqual(
    parseAuditLines(readFileSync(path, 'utf8')).map((e) => e.token),
    [tokenFingerprint('after')],
  )
  assert.equal(statSync(path).mode & 0o777, 0o600)
})

test('close during a group commit: every recorded line lands, and a later record opens the file again', async () => {
  const path = join(root, 'h', 'audit.jsonl')
  const log = new AuditLog(path)
  const first = Array.from({ length: 50 }, (_, i) =>
    log.record(auditEntry(readIntent(), { result: 'signed', token: `t${i}` })),
  )
  await log.close()
  await Promise.all(first)
  await log.record(auditEntry(readIntent(), { result: 'signed', token: 'later' }))
  await log.close()
  const lines = parseAuditLines(readFileSync(path, 'utf8'))
  assert.equal(lines.length, 51)
  assert.equal(lines.at(-1)?.token, tokenFingerprint('later'))
})
