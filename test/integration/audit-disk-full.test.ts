/**
 * Disk full under the audit log (src/audit/log.ts): the real agent's audit log on a 64 KiB tmpfs.
 * While full, signs are refused (AUDIT_FAILED, no token); after space returns every line in the file
 * parses and every token the agent released has its line. Mounting needs root.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { tokenFingerprint } from '../../src/audit/entry.js'
import { runLog } from '../../src/cli/log.js'
import { AgentConnection } from '../../src/protocol/client.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38710/index/'
const READ_LINE = JSON.stringify(cargoGet(INDEX, 'read'))
const isRoot = process.getuid?.() === 0

const mnt = mkdtempSync(join(tmpdir(), 'audit-full-'))
let mounted = false
let agent: AgentFixture | undefined
after(async () => {
  await agent?.stop()
  if (mounted) spawnSync('umount', [mnt])
  rmSync(mnt, { recursive: true, force: true })
})

async function sign(socket: string): Promise<{ token?: string; code?: string }> {
  const c = await AgentConnection.connect(socket)
  try {
    return { token: (await c.request('sign', { cargo: READ_LINE, interactive: false })).token }
  } catch (error) {
    return { code: (error as { code?: string }).code ?? 'unknown' }
  } finally {
    c.close()
  }
}

test(
  'a full disk under the audit log: refusals while full, every line readable after',
  { skip: !isRoot && 'mounting a tmpfs needs root' },
  async () => {
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', mnt], {
      encoding: 'utf8',
    })
    assert.equal(mount.status, 0, mount.stderr)
    mounted = true
    const auditLog = join(mnt, 'audit.jsonl')
    agent = await startAgent({
      registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id } } },
      agent: { 'audit-log': auditLog },
    })
    const released: string[] = []
    const outcomes: string[] = []
    const record = (r: { token?: string; code?: string }): void => {
      if (r.token !== undefined) released.push(r.token)
      outcomes.push(r.code ?? 'signed')
    }
    for (let i = 0; i < 3; i++) record(await sign(agent.socket))
    assert.deepEqual(outcomes, ['signed', 'signed', 'signed'])

    // Fill every page the tmpfs has left.
    const filler = join(mnt, 'filler')
    const kib = Buffer.alloc(1024, 0x2e)
    for (;;) {
      try {
        appendFileSync(filler, kib)
      } catch {
        break
      }
    }
    // The audit file's last page may still hold a line or a few: sign until the refusals come.
    const whileFull: string[] = []
    for (let i = 0; i < 45; i++) {
      const r = await sign(agent.socket)
      record(r)
      whileFull.push(r.code ?? 'signed')
    }
    // A page holds ~12 lines; after it, every sign is refused.
    assert.deepEqual(whileFull.slice(-20), Array(20).fill('AUDIT_FAILED'), whileFull.join(' '))
    assert.ok(
      whileFull.every((c) => c === 'signed' || c === 'AUDIT_FAILED'),
      whileFull.join(' '),
    )
    assert.match(agent.log(), /AUDIT_FAILED|audit-failed/)

    rmSync(filler)
    for (let i = 0; i < 3; i++) {
      const r = await sign(agent.socket)
      record(r)
      assert.equal(r.code, undefined, 'signs again once space is back')
    }

    const text = readFileSync(auditLog, 'utf8')
    assert.ok(text.endsWith('\n'), 'no fragment at the end')
    const lines = text.split('\n').slice(0, -1)
    const entries = lines.map((line, i) => {
      try {
        return JSON.parse(line) as { token?: string; result?: string }
      } catch {
        assert.fail(`line ${i + 1} does not parse: ${JSON.stringify(line.slice(0, 120))}`)
      }
    })
    const fingerprints = new Set(entries.map((e) => e.token))
    for (const token of released) {
      assert.ok(fingerprints.has(tokenFingerprint(token)), 'every released token has its audit line')
      await verifyToken(token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    }
    assert.equal(entries.filter((e) => e.result === 'signed').length, released.length)
    let shown = ''
    await runLog(['--file', auditLog, '-n', '0'], { write: (t) => void (shown += t), env: {} })
    assert.doesNotMatch(shown, /damaged/)
    assert.equal(shown.trimEnd().split('\n').length, entries.length)
  },
)
