/**
 * Stage "parse": the shim's `sign` params → cargo's request (re-parsed here with the same parser the
 * shim uses, so the agent trusts nothing the client pre-digested) → an Intent for policy.
 */
import { parseCargoRequest, type CargoRequest } from '../../cargo/protocol.js'
import { AgentError } from '../../lib/errors.js'
import type { Intent, Requester } from '../../cargo/intent.js'
import { withClaim } from '../requester.js'

export interface SignRequest {
  readonly intent: Intent
  /** The client has a terminal on which it can ask for a PIN. */
  readonly interactive: boolean
}

function invalid(message: string): AgentError {
  return new AgentError('REQUEST_INVALID', message, {
    remedy: 'Send `cargo` as the request line cargo wrote (docs/agent-protocol.md)',
  })
}

/** The request line cargo sent, re-parsed here so the agent trusts nothing the client pre-digested. */
export function parseCargoLine(params: Record<string, unknown>): CargoRequest {
  const line = params['cargo']
  if (typeof line !== 'string')
    throw invalid('The request has no `cargo` string (the request line cargo sent)')
  return parseCargoRequest(line)
}

/**
 * Stage "parse": a `get` request → the Intent policy decides on. `requester` is the kernel's
 * (src/agent/requester.ts); what the client says about itself is attached as `claimed` only.
 */
export function parseSignRequest(params: Record<string, unknown>, requester: Requester): SignRequest {
  const cargo = parseCargoLine(params)
  if (cargo.kind !== 'get') throw invalid(`A ${cargo.kind} request is not a signing request`)
  const intent: Intent = {
    indexUrl: cargo.registry.indexUrl,
    operation: cargo.operation,
    crate: cargo.crate,
    requester: withClaim(requester, params['requester']),
  }
  // No `registryName`: cargo's `registry.name` is the client's word; bind() names the registry.
  return { intent, interactive: params['interactive'] === true }
}
