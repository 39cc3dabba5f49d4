/**
 * One audit line per signing decision. The shape is public (users grep and parse the log), so it is
 * versioned (`v`) and only grows. It holds no PIN and no token: a token is represented by a short
 * SHA-256 fingerprint, enough to match a registry's log line without being usable.
 */
import { createHash } from 'node:crypto'
import { LIMITS } from '../lib/limits.js'
import type { Approval, Intent } from '../cargo/intent.js'

export type AuditResult = 'signed' | 'denied' | 'failed'

/** How the mutation was approved (src/cargo/intent.ts). */
export type AuditApproval = Approval

export interface AuditEntry {
  readonly v: 1
  /** RFC 3339 UTC. */
  readonly time: string
  readonly registry: { readonly name?: string; readonly url: string }
  readonly operation: string
  readonly crate?: string
  readonly vers?: string
  /** First 16 hex digits of the .crate SHA-256 (publish only). */
  readonly cksum?: string
  /** PASERK k3.pid of the key that signed (or would have signed). */
  readonly kip?: string
  readonly requester: {
    readonly pid?: number
    readonly ppid?: number
    readonly command?: string
    readonly tty?: string
  }
  readonly result: AuditResult
  /** AgentError code for denied / failed. */
  readonly code?: string
  /** The error message for denied / failed (messages never carry secrets). */
  readonly reason?: string
  readonly approval?: AuditApproval
  /** "sha256:<16 hex>" of the issued token. */
  readonly token?: string
}

export const AUDIT_CKSUM_CHARS = 16

/** Short fingerprint of an issued token: identifies it in a registry's log, cannot be replayed. */
export function tokenFingerprint(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex').slice(0, 16)}`
}

function cut(text: string): string {
  const max = LIMITS.auditFieldMaxChars
  return text.length > max ? `${text.slice(0, max - 1)}…` : text
}

export interface AuditOutcome {
  readonly result: AuditResult
  readonly code?: string
  readonly reason?: string
  readonly approval?: AuditApproval
  /** The issued token; only its fingerprint is stored. */
  readonly token?: string
  readonly kip?: string
}

/** Builds the line for `intent` and its outcome, cutting every field that came from another process. */
export function auditEntry(intent: Intent, outcome: AuditOutcome, now: Date = new Date()): AuditEntry {
  const registry: { name?: string; url: string } = { url: cut(intent.indexUrl) }
  if (intent.registryName !== undefined) registry.name = cut(intent.registryName)
  const requester: { pid?: number; ppid?: number; command?: string; tty?: string } = {}
  const r = intent.requester
  if (r.pid !== undefined) requester.pid = r.pid
  if (r.ppid !== undefined) requester.ppid = r.ppid
  if (r.command !== undefined) requester.command = cut(r.command)
  if (r.tty !== undefined) requester.tty = cut(r.tty)
  const entry: { -readonly [K in keyof AuditEntry]: AuditEntry[K] } = {
    v: 1,
    time: now.toISOString(),
    registry,
    operation: intent.operation,
    requester,
    result: outcome.result,
  }
  const { name, vers, cksum } = intent.crate
  if (name !== undefined) entry.crate = cut(name)
  if (vers !== undefined) entry.vers = cut(vers)
  if (cksum !== undefined) entry.cksum = cut(cksum.slice(0, AUDIT_CKSUM_CHARS))
  if (outcome.kip !== undefined) entry.kip = outcome.kip
  if (outcome.code !== undefined) entry.code = outcome.code
  if (outcome.reason !== undefined) entry.reason = cut(outcome.reason)
  if (outcome.approval !== undefined) entry.approval = outcome.approval
  if (outcome.token !== undefined) entry.token = tokenFingerprint(outcome.token)
  return entry
}

/** Where audit lines go. `record` resolves only once the line is durable (written and fsync'd). */
export interface AuditSink {
  record(entry: AuditEntry): Promise<void>
}
