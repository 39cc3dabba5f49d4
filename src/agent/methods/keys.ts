/**
 * What the key methods (pubkey, login, keygen) share: logging in through policy for an
 * administrative request, the k3.public / k3.pid answer for a device key, and the audit line of a
 * key generation.
 */
import { auditEntry, type AuditOutcome } from '../../audit/entry.js'
import type { Intent } from '../../cargo/intent.js'
import type { KeyRef, TokenConfig } from '../../config/schema.js'
import { k3Pid, k3Public } from '../../keys/paserk.js'
import { toAgentError } from '../../lib/errors.js'
import type { DeviceKey } from '../../pkcs11/key-catalogue.js'
import type { Prompter } from '../../policy/intent.js'
import type { KeyInfo } from '../../protocol/methods.js'
import { withClaim } from '../requester.js'
import { tokenPolicy } from '../policy-config.js'
import type { AgentState, MethodContext } from '../state.js'
import type { UntrustedParams } from './method.js'

/** A non-signing request (login, pubkey, keygen): the intent policy shows and the requester's prompter. */
export interface AdminRequest {
  readonly intent: Intent
  readonly prompter: Prompter
}

/** Non-signing requests log in through the same policy as signing, described as this intent. */
export function adminRequest(
  context: MethodContext,
  params: UntrustedParams,
  indexUrl: string,
  registryName?: string,
): AdminRequest {
  const intent: Intent = {
    indexUrl,
    operation: 'read',
    crate: {},
    requester: withClaim(context.requester, params['requester']),
  }
  if (registryName !== undefined) intent.registryName = registryName
  return { intent, prompter: context.prompter(params['interactive'] === true) }
}

export async function loginToken(
  agent: AgentState,
  token: TokenConfig,
  request: AdminRequest,
): Promise<void> {
  await agent.policy.ensureLoggedIn(
    agent.devices.get(token),
    tokenPolicy(token),
    request.prompter,
    request.intent,
  )
}

/** What a registry operator registers for a device key (RFC 3231 key registration: k3.public, k3.pid). */
export function keyInfoOf(token: TokenConfig, key: Pick<DeviceKey, 'label' | 'id' | 'publicKey'>): KeyInfo {
  return {
    token: token.name,
    label: key.label,
    id: key.id,
    k3Public: k3Public(key.publicKey),
    k3Pid: k3Pid(key.publicKey),
  }
}

/** Key generation parameters: the label, and CKA_ID only when one was given (else the device picks it). */
export function keySpec(label: string, id: string | undefined): { label: string; id?: string } {
  return id === undefined ? { label } : { label, id }
}

export async function keyInfo(agent: AgentState, ref: KeyRef, request: AdminRequest): Promise<KeyInfo> {
  const { token, device } = agent.devices.byName(ref.token)
  // Private objects (and on some tokens the public ones) are hidden until login.
  await loginToken(agent, token, request)
  return keyInfoOf(token, await device.findKey(ref))
}

/**
 * The audit line of a key generation (`keygen`, or `cargo login -- --generate`), with the device it
 * ran on. A generated key exists on the device already: a failed write is logged, not undone.
 */
export async function recordKeygen(
  agent: AgentState,
  intent: Intent,
  token: TokenConfig,
  outcome: Omit<AuditOutcome, 'operation' | 'device'>,
): Promise<void> {
  const device = { token: token.name, ...agent.devices.get(token).origin() }
  await agent.audit
    .record(auditEntry(intent, { ...outcome, operation: 'keygen', device }))
    .catch((error: unknown) => agent.log(`audit-failed ${toAgentError(error).code}`))
}
