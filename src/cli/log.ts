/**
 * `cargo-pkcs11-agent log [--follow] [--json] [-n N] [--file PATH] [--config FILE]`: the audit log,
 * one line per signing decision, newest last. Pretty by default; `--json` passes the stored lines
 * through untouched (for jq). Text that came from other processes is made terminal-safe. A damaged
 * line (a fragment a crash left, garbage) is reported with its line number and the rest is shown.
 */
import { open, stat } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'

import type { AuditEntry } from '../audit/entry.js'
import { parseAuditLine } from '../audit/log.js'
import { rotatedFiles } from '../audit/rotation.js'
import { loadConfig } from '../config/load.js'
import { defaultAuditLogPath, resolveConfigPath } from '../config/paths.js'
import { AgentError } from '../lib/errors.js'
import { describeRegistry, displaySafe } from '../policy/intent.js'
import { parseCommandArgs, USAGE, usageError } from './args.js'

export interface LogIo {
  readonly write: (text: string) => void
  /** Where damaged lines are reported with --json (stdout stays parseable); default `write`. */
  readonly warn?: (text: string) => void
  readonly env: NodeJS.ProcessEnv
  /** Stops `--follow` (tests); the CLI runs until interrupted. */
  readonly signal?: AbortSignal
  /** Poll interval for `--follow`. */
  readonly pollMs?: number
}

const DEFAULT_LINES = 20
const TAIL_CHUNK = 64 * 1024

/** The audit log path: --file, else the config's `audit-log`, else the XDG default. */
function auditPath(file: string | undefined, configFlag: string | undefined, env: NodeJS.ProcessEnv): string {
  if (file !== undefined) return file
  const resolved = resolveConfigPath(configFlag, env)
  try {
    return loadConfig(resolved.path, env).agent.auditLog
  } catch (error) {
    // No config is fine for reading the log (default location); a broken explicit one is not.
    if (resolved.source === 'flag' || (error instanceof AgentError && error.code === 'CONFIG_INVALID'))
      throw error
    return defaultAuditLogPath(env)
  }
}

function time(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z')
}

/** One human line per entry. */
export function formatEntry(entry: AuditEntry): string {
  const safe = (v: string | undefined): string => (v === undefined ? '' : displaySafe(v))
  const what = [
    entry.operation,
    safe(entry.crate),
    safe(entry.vers),
    entry.cksum === undefined ? '' : `(cksum ${safe(entry.cksum)})`,
  ]
    .filter((s) => s !== '')
    .join(' ')
  const registry = describeRegistry({ registryName: entry.registry.name, indexUrl: entry.registry.url })
  const r = entry.requester
  const by = [
    r.pid === undefined ? '' : `pid ${r.pid}`,
    r.command === undefined ? '' : `\`${safe(r.command)}\``,
  ]
    .filter((s) => s !== '')
    .join(' ')
  const result =
    entry.result === 'signed' || entry.result === 'generated'
      ? entry.result
      : entry.result === 'denied'
        ? 'DENIED'
        : 'FAILED'
  const parts = [
    `${time(entry.time)}  ${result.padEnd(6)}  ${what} ${entry.operation === 'publish' ? 'to' : entry.operation === 'read' ? 'from' : 'on'} ${registry}`,
  ]
  if (by !== '') parts.push(`by ${by}`)
  if (entry.forwarded !== undefined)
    parts.push(`forwarded via ${safe(entry.forwarded.via)} pid ${entry.forwarded.pid}`)
  if (entry.approval !== undefined && entry.approval !== 'not-required')
    parts.push(`approved: ${entry.approval}`)
  if (entry.code !== undefined) parts.push(`${entry.code}: ${safe(entry.reason)}`)
  if (entry.kip !== undefined) parts.push(`key ${safe(entry.kip)}`)
  if (entry.device?.server !== undefined) parts.push(`via p11-kit server ${safe(entry.device.server)}`)
  if (entry.token !== undefined) parts.push(`token ${safe(entry.token)}`)
  return parts.join('; ')
}

/** One stored line and where it starts in the file (to number a damaged one). */
interface StoredLine {
  readonly text: string
  readonly offset: number
}

/** 1-based number of the line starting at byte `offset`: newlines before it, counted in chunks. */
async function lineNumberAt(path: string, offset: number): Promise<number> {
  const handle = await open(path, 'r')
  try {
    const chunk = Buffer.alloc(TAIL_CHUNK)
    let position = 0
    let newlines = 0
    while (position < offset) {
      const { bytesRead } = await handle.read(chunk, 0, Math.min(chunk.length, offset - position), position)
      if (bytesRead === 0) break
      for (let i = 0; i < bytesRead; i++) if (chunk[i] === 0x0a) newlines += 1
      position += bytesRead
    }
    return newlines + 1
  } finally {
    await handle.close()
  }
}

async function show(path: string, line: StoredLine, json: boolean, io: LogIo): Promise<void> {
  const entry = parseAuditLine(line.text)
  if (entry !== undefined) {
    io.write(json ? `${line.text}\n` : `${formatEntry(entry)}\n`)
    return
  }
  const number = await lineNumberAt(path, line.offset)
  const report = `line ${number}: damaged, not an audit line: ${displaySafe(line.text, 80)}\n`
  if (json) (io.warn ?? io.write)(report)
  else io.write(report)
}

/** Splits complete text starting at byte `start` into lines with their offsets. */
function splitLines(text: string, start: number): StoredLine[] {
  const lines: StoredLine[] = []
  let offset = start
  for (const part of text.split('\n')) {
    if (part !== '') lines.push({ text: part, offset })
    offset += Buffer.byteLength(part) + 1
  }
  return lines
}

/** The last `n` complete lines of the file (read backwards in chunks) and the offset after them. */
async function tail(path: string, n: number): Promise<{ lines: StoredLine[]; end: number }> {
  const handle = await open(path, 'r')
  try {
    const { size } = await handle.stat()
    let position = size
    let buffer = Buffer.alloc(0)
    const wanted = n === 0 ? Infinity : n
    while (position > 0) {
      const length = Math.min(TAIL_CHUNK, position)
      position -= length
      const chunk = Buffer.alloc(length)
      await handle.read(chunk, 0, length, position)
      buffer = Buffer.concat([chunk, buffer])
      let newlines = 0
      for (const byte of buffer) if (byte === 0x0a) newlines += 1
      if (newlines > wanted) break
    }
    // Only complete lines: a line being appended right now is picked up by --follow. A read that
    // started mid-line drops that partial first line (it is not among the last n).
    let first = 0
    if (position > 0) first = buffer.indexOf(0x0a) + 1
    const last = buffer.lastIndexOf(0x0a) + 1
    const complete = last > first ? buffer.subarray(first, last) : Buffer.alloc(0)
    const lines = splitLines(complete.toString('utf8'), position + first)
    return { lines: n === 0 ? lines : lines.slice(-n), end: position + last }
  } finally {
    await handle.close()
  }
}

async function follow(path: string, from: number, json: boolean, io: LogIo): Promise<void> {
  let offset = from
  let pending = Buffer.alloc(0)
  const pollMs = io.pollMs ?? 500
  while (io.signal?.aborted !== true) {
    // An abort ends the wait early (AbortError) and then the loop.
    await sleep(pollMs, undefined, { signal: io.signal }).catch(() => undefined)
    let size: number
    try {
      size = (await stat(path)).size
    } catch {
      continue // rotated away; wait for the agent to create it again
    }
    if (size < offset) {
      offset = 0 // truncated or replaced: start over
      pending = Buffer.alloc(0)
    }
    if (size === offset) continue
    const handle = await open(path, 'r')
    try {
      const chunk = Buffer.alloc(size - offset)
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, offset)
      offset += bytesRead
      pending = Buffer.concat([pending, chunk.subarray(0, bytesRead)])
    } finally {
      await handle.close()
    }
    const cut = pending.lastIndexOf(0x0a)
    if (cut < 0) continue
    const start = offset - pending.length
    for (const line of splitLines(pending.subarray(0, cut).toString('utf8'), start))
      await show(path, line, json, io)
    pending = pending.subarray(cut + 1)
  }
}

export async function runLog(argv: readonly string[], io: LogIo): Promise<number> {
  const parsed = parseCommandArgs(
    argv,
    {
      follow: { type: 'boolean', short: 'f' },
      json: { type: 'boolean' },
      lines: { type: 'string', short: 'n' },
      file: { type: 'string' },
      config: { type: 'string' },
    },
    USAGE.log,
  )
  const v = parsed.values
  const n = v.lines === undefined ? DEFAULT_LINES : Number(v.lines)
  if (!Number.isSafeInteger(n) || n < 0)
    throw usageError(`-n needs a whole number of lines (0 = all), got ${JSON.stringify(v.lines)}`, USAGE.log)
  const path = auditPath(v.file, v.config, io.env)
  const json = v.json === true
  // Not data: with --json it goes where damaged-line reports go, so stdout stays JSON lines.
  const note = (text: string): void => (json ? (io.warn ?? io.write) : io.write)(`${text}\n`)
  let end = 0
  try {
    const result = await tail(path, n)
    end = result.end
    // The last n lines may begin in rotated generations (src/audit/rotation.ts): newest first.
    const shown = result.lines.map((line) => ({ file: path, line }))
    const older = await rotatedFiles(path)
    for (let i = older.length - 1; i >= 0 && (n === 0 || shown.length < n); i--) {
      const file = older[i] as string
      const { lines } = await tail(file, n === 0 ? 0 : n - shown.length)
      shown.unshift(...lines.map((line) => ({ file, line })))
    }
    for (const { file, line } of shown) await show(file, line, json, io)
    if (shown.length === 0) note(`No audit entries yet in ${path}`)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new AgentError(
        'AUDIT_FAILED',
        `The audit log ${path} cannot be read: ${(error as Error).message}`,
        { remedy: 'Check its permissions (it is readable by its owner only)' },
      )
    }
    note(
      `No audit entries yet: there is no audit log at ${path} (the agent writes it at its first signing decision; \`audit-log\` in the config or --file names another)`,
    )
  }
  if (v.follow === true) await follow(path, end, json, io)
  return 0
}

/** The `log` command of cargo-pkcs11-agent. */
export async function log(argv: readonly string[]): Promise<number> {
  return runLog(argv, {
    write: (text) => void process.stdout.write(text),
    warn: (text) => void process.stderr.write(text),
    env: process.env,
  })
}
