/**
 * `cargo-pkcs11-agent log [--follow] [--json] [-n N] [--file PATH] [--config FILE]`: the audit log,
 * one line per signing decision, newest last. Pretty by default; `--json` passes the stored lines
 * through untouched (for jq). Text that came from other processes is made terminal-safe.
 */
import { open, stat } from 'node:fs/promises'

import type { AuditEntry } from '../audit/entry.js'
import { loadConfig } from '../config/load.js'
import { defaultAuditLogPath, resolveConfigPath } from '../config/paths.js'
import { AgentError } from '../lib/errors.js'
import { displaySafe } from '../policy/intent.js'
import { parseCommandArgs, USAGE, usageError } from './args.js'

export interface LogIo {
  readonly write: (text: string) => void
  readonly env: NodeJS.ProcessEnv
  /** Stops `--follow` (tests); the CLI runs until interrupted. */
  readonly signal?: AbortSignal
  /** Poll interval for `--follow`. */
  readonly pollMs?: number
}

const DEFAULT_LINES = 20
const TAIL_CHUNK = 64 * 1024

function usage(message: string): AgentError {
  return usageError(message, USAGE.log)
}

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
  const registry =
    entry.registry.name === undefined
      ? safe(entry.registry.url)
      : `${safe(entry.registry.name)} (${safe(entry.registry.url)})`
  const r = entry.requester
  const by = [
    r.pid === undefined ? '' : `pid ${r.pid}`,
    r.command === undefined ? '' : `\`${safe(r.command)}\``,
  ]
    .filter((s) => s !== '')
    .join(' ')
  const result = entry.result === 'signed' ? 'signed' : entry.result === 'denied' ? 'DENIED' : 'FAILED'
  const parts = [
    `${time(entry.time)}  ${result.padEnd(6)}  ${what} ${entry.operation === 'publish' ? 'to' : entry.operation === 'read' ? 'from' : 'on'} ${registry}`,
  ]
  if (by !== '') parts.push(`by ${by}`)
  if (entry.approval !== undefined && entry.approval !== 'not-required')
    parts.push(`approved: ${entry.approval}`)
  if (entry.code !== undefined) parts.push(`${entry.code}: ${safe(entry.reason)}`)
  if (entry.kip !== undefined) parts.push(`key ${safe(entry.kip)}`)
  if (entry.token !== undefined) parts.push(`token ${safe(entry.token)}`)
  return parts.join('; ')
}

function render(line: string, json: boolean): string {
  if (json) return `${line}\n`
  try {
    const value = JSON.parse(line) as AuditEntry
    if (value !== null && typeof value === 'object' && value.v === 1) return `${formatEntry(value)}\n`
  } catch {
    // fall through
  }
  return `(not an audit line: ${displaySafe(line, 80)})\n`
}

/** The last `n` complete lines of the file (read backwards in chunks) and the offset after them. */
async function tail(path: string, n: number): Promise<{ lines: string[]; end: number }> {
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
    const text = buffer.toString('utf8')
    // Only complete lines: a line being appended right now is picked up by --follow.
    const complete = text.endsWith('\n') ? text : text.slice(0, text.lastIndexOf('\n') + 1)
    const end = size - (Buffer.byteLength(text) - Buffer.byteLength(complete))
    const lines = complete.split('\n').filter((l) => l !== '')
    return { lines: n === 0 ? lines : lines.slice(-n), end }
  } finally {
    await handle.close()
  }
}

async function follow(path: string, from: number, json: boolean, io: LogIo): Promise<void> {
  let offset = from
  let pending = ''
  const pollMs = io.pollMs ?? 500
  while (io.signal?.aborted !== true) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, pollMs)
      io.signal?.addEventListener(
        'abort',
        () => {
          clearTimeout(timer)
          resolve()
        },
        { once: true },
      )
    })
    let size: number
    try {
      size = (await stat(path)).size
    } catch {
      continue // rotated away; wait for the agent to create it again
    }
    if (size < offset) {
      offset = 0 // truncated or replaced: start over
      pending = ''
    }
    if (size === offset) continue
    const handle = await open(path, 'r')
    try {
      const chunk = Buffer.alloc(size - offset)
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, offset)
      offset += bytesRead
      pending += chunk.subarray(0, bytesRead).toString('utf8')
    } finally {
      await handle.close()
    }
    const cut = pending.lastIndexOf('\n')
    if (cut < 0) continue
    for (const line of pending.slice(0, cut).split('\n')) if (line !== '') io.write(render(line, json))
    pending = pending.slice(cut + 1)
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
    throw usage(`-n needs a whole number of lines (0 = all), got ${JSON.stringify(v.lines)}`)
  const path = auditPath(v.file, v.config, io.env)
  const json = v.json === true
  let end = 0
  try {
    const result = await tail(path, n)
    for (const line of result.lines) io.write(render(line, json))
    end = result.end
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new AgentError(
        'AUDIT_FAILED',
        `The audit log ${path} cannot be read: ${(error as Error).message}`,
        { remedy: 'Check its permissions (it is readable by its owner only)' },
      )
    }
    if (v.follow !== true) {
      throw new AgentError('AUDIT_FAILED', `There is no audit log at ${path} yet`, {
        remedy:
          'The agent writes it at its first signing decision; check `audit-log` in the config or pass --file',
      })
    }
  }
  if (v.follow === true) await follow(path, end, json, io)
  return 0
}

/** The `log` command of cargo-pkcs11-agent. */
export async function log(argv: readonly string[]): Promise<number> {
  return runLog(argv, { write: (text) => void process.stdout.write(text), env: process.env })
}
