/**
 * Stage "parse": the shim's `sign` params → cargo's request (re-parsed here with the same parser the
 * shim uses, so the agent trusts nothing the client pre-digested) → an Intent for policy.
 */
import { parseCargoRequest, type CargoRequest } from '../../cargo/protocol.js'
import { AgentError } from '../../lib/errors.js'
import type { Intent, Requester } from '../../cargo/intent.js'

export interface SignRequest {
  readonly intent: Intent
  /** The client has a terminal on which it can ask for a PIN or a yes/no. */
  readonly interactive: boolean
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function invalid(message: string): AgentError {
  return new AgentError('REQUEST_INVALID', message, {
    remedy: 'Send `cargo` as the request line cargo wrote (docs/agent-protocol.md)',
  })
}

/** Best effort, never trusted for anything but display and the audit log. */
export function parseRequester(value: unknown): Requester {
  const requester: Requester = {}
  if (!isRecord(value)) return requester
  const pid = value['pid']
  const ppid = value['ppid']
  if (typeof pid === 'number' && Number.isSafeInteger(pid) && pid > 0) requester.pid = pid
  if (typeof ppid === 'number' && Number.isSafeInteger(ppid) && ppid > 0) requester.ppid = ppid
  if (typeof value['command'] === 'string') requester.command = value['command']
  if (typeof value['tty'] === 'string') requester.tty = value['tty']
  return requester
}

/** The request line cargo sent, re-parsed here so the agent trusts nothing the client pre-digested. */
export function parseCargoLine(params: Record<string, unknown>): CargoRequest {
  const line = params['cargo']
  if (typeof line !== 'string')
    throw invalid('The request has no `cargo` string (the request line cargo sent)')
  return parseCargoRequest(line)
}

/** Stage "parse": a `get` request → the Intent policy decides on. */
export function parseSignRequest(params: Record<string, unknown>): SignRequest {
  const cargo = parseCargoLine(params)
  if (cargo.kind !== 'get') throw invalid(`A ${cargo.kind} request is not a signing request`)
  const intent: Intent = {
    indexUrl: cargo.registry.indexUrl,
    operation: cargo.operation,
    crate: cargo.crate,
    requester: parseRequester(params['requester']),
  }
  if (cargo.registry.name !== undefined) intent.registryName = cargo.registry.name
  return { intent, interactive: params['interactive'] === true }
}
