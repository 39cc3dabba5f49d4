/**
 * One audit line per signing decision. The shape is public (users grep and parse the log), so it is
 * versioned (`v`) and only grows. It holds no PIN and no token: a token is represented by a short
 * SHA-256 fingerprint, enough to match a registry's log line without being usable.
 */
import { createHash } from 'node:crypto'
import { LIMITS } from '../lib/limits.js'
import type { Approval, Intent } from '../cargo/intent.js'

/** `generated`: a key was generated (or replaced) on a device over the agent socket. */
export type AuditResult = 'signed' | 'denied' | 'failed' | 'generated'

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
  /** Who asked, as the kernel reports it (src/agent/requester.ts). */
  readonly requester: {
    readonly pid?: number
    readonly ppid?: number
    readonly command?: string
    readonly tty?: string
    readonly exe?: string
    readonly uid?: number
    readonly client?: { readonly pid: number; readonly command?: string; readonly exe?: string }
  }
  /** The request came through a forwarded socket (docs/ssh-forwarding.md): the kernel's peer. */
  readonly forwarded?: {
    readonly via: string
    readonly pid: number
    readonly exe?: string
    readonly verified?: boolean
  }
  /** What the client said about itself: a claim, not evidence. */
  readonly claimed?: {
    readonly pid?: number
    readonly ppid?: number
    readonly command?: string
    readonly tty?: string
    readonly forwarded?: boolean
  }
  readonly result: AuditResult
  /** AgentError code for denied / failed. */
  readonly code?: string
  /** The error message for denied / failed (messages never carry secrets). */
  readonly reason?: string
  readonly approval?: AuditApproval
  /** "sha256:<16 hex>" of the issued token. */
  readonly token?: string
  /** keygen: the key generated, "<token>/<label>", and whether an existing key was replaced. */
  readonly key?: string
  readonly replaced?: boolean
  /** The PKCS#11 module that signed (or would have), and for p11-kit-client its server (docs/remote-tokens.md). */
  readonly device?: AuditDevice
}

export interface AuditDevice {
  /** The `[tokens.NAME]` the key is on. */
  readonly token: string
  /** The module file the agent loaded. */
  readonly module: string
  /** p11-kit-client: the P11_KIT_SERVER_ADDRESS it talks to. */
  readonly server?: string
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
  /** For acts that are not a cargo operation (`keygen`). */
  readonly operation?: string
  readonly key?: string
  readonly replaced?: boolean
  readonly device?: AuditDevice
}

/** Builds the line for `intent` and its outcome, cutting every field that came from another process. */
export function auditEntry(intent: Intent, outcome: AuditOutcome, now: Date = new Date()): AuditEntry {
  const registry: { name?: string; url: string } = { url: cut(intent.indexUrl) }
  if (intent.registryName !== undefined) registry.name = cut(intent.registryName)
  const r = intent.requester
  const requester: { -readonly [K in keyof AuditEntry['requester']]: AuditEntry['requester'][K] } = {}
  if (r.pid !== undefined) requester.pid = r.pid
  if (r.ppid !== undefined) requester.ppid = r.ppid
  if (r.command !== undefined) requester.command = cut(r.command)
  if (r.tty !== undefined) requester.tty = cut(r.tty)
  if (r.exe !== undefined) requester.exe = cut(r.exe)
  if (r.uid !== undefined) requester.uid = r.uid
  if (r.client !== undefined)
    requester.client = {
      pid: r.client.pid,
      ...(r.client.command === undefined ? {} : { command: cut(r.client.command) }),
      ...(r.client.exe === undefined ? {} : { exe: cut(r.client.exe) }),
    }
  const entry: { -readonly [K in keyof AuditEntry]: AuditEntry[K] } = {
    v: 1,
    time: now.toISOString(),
    registry,
    operation: outcome.operation ?? intent.operation,
    requester,
    result: outcome.result,
  }
  const f = r.forwarded
  if (f !== undefined)
    entry.forwarded = {
      via: f.via,
      pid: f.pid,
      ...(f.exe === undefined ? {} : { exe: cut(f.exe) }),
      ...(f.verified === undefined ? {} : { verified: f.verified }),
    }
  const c = r.claimed
  if (c !== undefined) {
    const claimed: {
      -readonly [K in keyof NonNullable<AuditEntry['claimed']>]: NonNullable<AuditEntry['claimed']>[K]
    } = {}
    if (c.pid !== undefined) claimed.pid = c.pid
    if (c.ppid !== undefined) claimed.ppid = c.ppid
    if (c.command !== undefined) claimed.command = cut(c.command)
    if (c.tty !== undefined) claimed.tty = cut(c.tty)
    if (c.forwarded !== undefined) claimed.forwarded = c.forwarded
    entry.claimed = claimed
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
  if (outcome.key !== undefined) entry.key = cut(outcome.key)
  if (outcome.replaced !== undefined) entry.replaced = outcome.replaced
  if (outcome.device !== undefined) {
    const { token, module, server } = outcome.device
    entry.device =
      server === undefined
        ? { token: cut(token), module: cut(module) }
        : { token: cut(token), module: cut(module), server: cut(server) }
  }
  return entry
}

/** Where audit lines go. `record` resolves only once the line is durable (written and fsync'd). */
export interface AuditSink {
  record(entry: AuditEntry): Promise<void>
}
