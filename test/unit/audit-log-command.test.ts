/** `cargo-pkcs11-agent log`: tail, --json, -n, --follow, and the real binary as a process. */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { after, test } from 'node:test'

import { auditEntry } from '../../src/audit/entry.js'
import { AuditLog } from '../../src/audit/log.js'
import { rotatedFiles } from '../../src/audit/rotation.js'
import { formatEntry, runLog } from '../../src/cli/log.js'
import { publishIntent, PUBLISH_CRATE, readIntent } from '../fixtures/pinentry/harness.js'
import { waitFor } from '../helpers/wait.js'

const run = promisify(execFile)
const dir = mkdtempSync(join(tmpdir(), 'audit-cli-'))
const path = join(dir, 'state', 'audit.jsonl')
const audit = new AuditLog(path)
after(async () => {
  await audit.close()
  rmSync(dir, { recursive: true, force: true })
})

async function capture(argv: string[], signal?: AbortSignal): Promise<string> {
  let out = ''
  await runLog(argv, {
    write: (t) => void (out += t),
    env: { HOME: dir },
    pollMs: 20,
    ...(signal === undefined ? {} : { signal }),
  })
  return out
}

test('pretty lines show result, intent, requester, approval and key; -n picks the newest', async () => {
  for (let i = 0; i < 25; i++)
    await audit.record(
      auditEntry(
        readIntent(),
        { result: 'signed', token: `t${i}`, kip: 'k3.pid.abc' },
        new Date(Date.UTC(2026, 10, 25, 12, 0, i)),
      ),
    )
  await audit.record(
    auditEntry(
      publishIntent(),
      { result: 'denied', code: 'DENIED', reason: 'Refused: publish foo 1.2.3', approval: 'terminal' },
      new Date('2026-11-25T12:01:00Z'),
    ),
  )
  const out = await capture(['--file', path])
  const lines = out.trimEnd().split('\n')
  assert.equal(lines.length, 20)
  assert.equal(
    lines.at(-1),
    '2026-11-25 12:01:00Z  DENIED  publish foo 1.2.3 (cksum 6dee75a8f0d2b1c4) to my-registry (sparse+http://127.0.0.1:8080/index/); by pid 4242 `cargo publish`; approved: terminal; DENIED: Refused: publish foo 1.2.3',
  )
  assert.match(
    lines[0] ?? '',
    /^2026-11-25 12:00:06Z  signed  read from my-registry .*; key k3\.pid\.abc; token sha256:[0-9a-f]{16}$/,
  )
  assert.equal((await capture(['--file', path, '-n', '0'])).trimEnd().split('\n').length, 26)
  const json = (await capture(['--file', path, '-n', '2', '--json'])).trimEnd().split('\n')
  assert.equal(json.length, 2)
  assert.equal(JSON.parse(json[1] ?? '').result, 'denied')
})

test('hostile text is shown terminal-safe', () => {
  const text = formatEntry(
    auditEntry(
      publishIntent({
        crate: { ...PUBLISH_CRATE, name: 'x\u001b]0;pwned\u0007' },
        requester: { pid: 1, command: 'evil\rcargo publish' },
      }),
      { result: 'signed', token: 't' },
    ),
  )
  assert.equal(/[\u0000-\u001f]/.test(text), false)
})

test('a forwarded request says so, with the forwarder and its pid, in the line and the pretty output', () => {
  const entry = auditEntry(
    publishIntent({
      requester: {
        uid: 1000,
        client: { pid: 4711, command: 'ssh -R x:y build-host' },
        forwarded: { via: 'ssh', pid: 4711, exe: '/usr/bin/ssh', verified: true },
        claimed: { forwarded: false },
      },
    }),
    { result: 'denied', code: 'FORWARDED_REFUSED', reason: 'Refused' },
  )
  assert.deepEqual(entry.forwarded, { via: 'ssh', pid: 4711, exe: '/usr/bin/ssh', verified: true })
  assert.deepEqual(entry.claimed, { forwarded: false })
  assert.match(
    formatEntry(entry),
    /DENIED  publish foo .*; forwarded via ssh pid 4711; FORWARDED_REFUSED: Refused/,
  )
  assert.equal(auditEntry(publishIntent(), { result: 'signed' }).forwarded, undefined)
})

test('--follow prints lines appended after it started, including one written in two pieces', async () => {
  const controller = new AbortController()
  let out = ''
  const following = runLog(['--file', path, '-n', '1', '--follow'], {
    write: (t) => void (out += t),
    env: {},
    pollMs: 20,
    signal: controller.signal,
  })
  let settled = false
  void following.then(
    () => (settled = true),
    () => (settled = true),
  )
  // The follower reads on its own schedule: wait until it has printed what each step expects
  // (every write is whole lines, so counting newlines counts lines), never for a fixed time.
  const printed = (what: string, lines: number): Promise<string> =>
    waitFor(
      `--follow to print ${what} (${lines} lines in all)`,
      async () => {
        if (settled) {
          await following
          throw new Error(`--follow returned before it was stopped; it printed:\n${out}`)
        }
        return out
      },
      (seen) => seen.split('\n').length > lines,
    )
  // Its start offset is fixed once it has shown the tail: a line written before that would be
  // shown as the tail (-n 1) instead of as a followed line.
  await printed('the newest line already in the log', 1)
  await audit.record(
    auditEntry(publishIntent({ crate: { ...PUBLISH_CRATE, vers: '9.9.9' } }), {
      result: 'signed',
      token: 'x',
    }),
  )
  await printed('the line the audit log appended', 2)
  const whole = JSON.stringify(
    auditEntry(publishIntent({ crate: { ...PUBLISH_CRATE, vers: '9.9.10' } }), {
      result: 'signed',
      token: 'y',
    }),
  )
  const split = JSON.stringify(
    auditEntry(publishIntent({ crate: { ...PUBLISH_CRATE, vers: '9.9.11' } }), {
      result: 'failed',
      code: 'TOUCH_TIMEOUT',
      reason: 'No touch',
    }),
  )
  // The first piece goes out in the same write as a whole line, so once that line is printed the
  // follower has read the piece too and holds it; only then does the rest of the line follow.
  appendFileSync(path, `${whole}\n${split.slice(0, 40)}`)
  await printed('the whole line written with the first piece', 3)
  appendFileSync(path, split.slice(40) + '\n')
  await printed('the line completed by the second piece', 4)
  controller.abort()
  await following
  const lines = out.trimEnd().split('\n')
  assert.equal(lines.length, 4, out)
  assert.match(lines[0] ?? '', /^2026-11-25 12:01:00Z  DENIED  publish foo 1\.2\.3 /)
  assert.match(lines[1] ?? '', /signed  publish foo 9\.9\.9 .*; token sha256:[0-9a-f]{16}$/)
  assert.match(lines[2] ?? '', /signed  publish foo 9\.9\.10 .*; token sha256:[0-9a-f]{16}$/)
  assert.match(lines[3] ?? '', /FAILED  publish foo 9\.9\.11 .*TOUCH_TIMEOUT: No touch/)
})

test('the real binary: `cargo-pkcs11-agent log` reads the XDG default path; no log yet says so and exits 0', async () => {
  const bin = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))
  const env = {
    ...process.env,
    XDG_STATE_HOME: join(dir, 'xdg-state'),
    XDG_CONFIG_HOME: join(dir, 'xdg-config'),
    CARGO_PKCS11_AGENT_CONFIG: '',
  }
  const missing = await run(process.execPath, [bin, 'log'], { env })
  assert.match(
    missing.stdout,
    /^No audit entries yet: there is no audit log at .*xdg-state\/cargo-pkcs11-agent\/audit\.jsonl /,
  )
  // --json keeps stdout JSON lines (here: none); the note goes to stderr.
  const json = await run(process.execPath, [bin, 'log', '--json'], { env })
  assert.equal(json.stdout, '')
  assert.match(json.stderr, /No audit entries yet/)
  const xdgLog = new AuditLog(join(dir, 'xdg-state', 'cargo-pkcs11-agent', 'audit.jsonl'))
  await xdgLog.record(auditEntry(publishIntent(), { result: 'signed', token: 'abc', approval: 'touch' }))
  await xdgLog.close()
  const { stdout } = await run(process.execPath, [bin, 'log', '-n', '5'], { env })
  assert.match(stdout, /signed  publish foo 1\.2\.3 .*approved: touch/)
})

test('the audit log rotates by renaming: every line stays whole, and `log` reads across generations', async () => {
  const rotDir = mkdtempSync(join(tmpdir(), 'audit-rot-'))
  try {
    const file = join(rotDir, 'audit.jsonl')
    const small = new AuditLog(file, { rotateBytes: 1024 })
    for (let i = 0; i < 40; i++)
      await small.record(
        auditEntry(
          readIntent(),
          { result: 'signed', token: `rot${i}` },
          new Date(Date.UTC(2026, 10, 25, 13, 0, i)),
        ),
      )
    await small.close()
    const generations = await rotatedFiles(file)
    assert.ok(generations.length >= 2, `expected rotated generations, got ${generations.length}`)
    // Nothing lost, nothing torn: every line of every generation parses, 40 lines in all, in order.
    const all = [...generations, file].flatMap((f) =>
      readFileSync(f, 'utf8')
        .split('\n')
        .filter((l) => l !== ''),
    )
    assert.equal(all.length, 40)
    const times = all.map((l) => (JSON.parse(l) as { time: string }).time)
    assert.deepEqual(times, [...times].sort())
    const shown = (await capture(['--file', file, '-n', '0'])).trimEnd().split('\n')
    assert.equal(shown.length, 40)
    assert.match(shown[0] ?? '', /^2026-11-25 13:00:00Z/)
    assert.match(shown.at(-1) ?? '', /^2026-11-25 13:00:39Z/)
    const last25 = (await capture(['--file', file, '-n', '25'])).trimEnd().split('\n')
    assert.equal(last25.length, 25)
    assert.match(last25[0] ?? '', /^2026-11-25 13:00:15Z/)
  } finally {
    rmSync(rotDir, { recursive: true, force: true })
  }
})
