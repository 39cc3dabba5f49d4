/**
 * The signing pipeline, in the order a reader of docs/policy.md expects it:
 *
 *   parse → bind → approve → login → sign → audit → respond
 *
 * Each stage is a sibling file (parse.ts, bind.ts, sign.ts, respond.ts); the policy decisions
 * (approve, login, touch notice) are `Policy`'s (src/policy/policy.ts), the audit line is the audit
 * log's (src/audit/). This file only runs them in order. A token leaves the agent only after its
 * audit line is durable; every other outcome leaves a `denied` or `failed` line.
 */
import type { Approval, Intent } from '../../cargo/intent.js'
import type { AuditDevice, AuditSink } from '../../audit/entry.js'
import { auditEntry } from '../../audit/entry.js'
import { k3Pid } from '../../keys/paserk.js'
import { AgentError, toAgentError } from '../../lib/errors.js'
import type { RegistryPolicy, TokenPolicy } from '../../policy/config.js'
import type { Prompter } from '../../policy/intent.js'
import type { PolicyDevice } from '../../policy/login.js'
import type { Policy } from '../../policy/policy.js'
import type { Signer } from '../../signer/signer.js'
import type { Device } from '../../pkcs11/device.js'
import { bind } from './bind.js'
import { parseSignRequest } from './parse.js'
import { respond, type SignAnswer } from './respond.js'
import { signIntent } from './sign.js'
import type { AgentState, MethodContext } from '../state.js'
import { registryPolicy, tokenPolicy } from '../policy-config.js'

/** `sign`: one RFC 3231 token for the request line cargo sent. */
export async function signPipeline(
  agent: AgentState,
  params: Record<string, unknown>,
  context: MethodContext,
): Promise<SignAnswer> {
  const request = parseSignRequest(params, context.requester)
  const { intent } = request
  const binding = bind(agent.config, intent)
  const prompter = context.prompter(request.interactive)
  // Looking the key up before policy means a registry with no key yet answers KEY_NOT_FOUND (cargo:
  // not-found, so `cargo login` proceeds) without asking for a PIN. Tokens that hide even public
  // objects until login are looked up again after it. A refusal here (no key, no module, busy
  // device) gets its `failed` line like every later one.
  let device: Device | undefined
  let signer: Signer | undefined
  try {
    device = agent.devices.get(binding.token)
    try {
      signer = await agent.devices.signer(binding.token, binding.keyRef)
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== 'KEY_NOT_FOUND' || !(await device.needsLogin()))
        throw error
    }
  } catch (error) {
    const failure = toAgentError(error)
    const known = device === undefined ? {} : { device: { token: binding.token.name, ...device.origin() } }
    await recordFailure(agent.audit, intent, failure, known, agent.log)
    agent.log(`${intent.operation} for ${binding.registry.name}: ${failure.code}`)
    throw failure
  }
  const origin: AuditDevice = { token: binding.token.name, ...device.origin() }
  try {
    const signed = await approveLoginSignAudit(
      agent.policy,
      agent.audit,
      {
        intent,
        prompter,
        registry: registryPolicy(binding.registry),
        token: tokenPolicy(binding.token),
        device,
        origin,
        ...(signer === undefined ? {} : { kip: k3Pid(signer.publicKey) }),
        sign: async () => {
          const key = signer ?? (await agent.devices.signer(binding.token, binding.keyRef))
          return { ...(await signIntent(intent, binding, key)), key: key.description }
        },
      },
      agent.log,
    )
    agent.log(`${describeShort(intent)} for ${binding.registry.name}: signed with ${signed.kip}`)
    return respond(intent.operation, signed, binding.registry)
  } catch (error) {
    agent.log(`${intent.operation} for ${binding.registry.name}: ${toAgentError(error).code}`)
    throw error
  }
}

function describeShort(intent: Intent): string {
  return [intent.operation, intent.crate.name, intent.crate.vers].filter((v) => v !== undefined).join(' ')
}

/** What the approve → login → sign → audit stages need for one request. */
export interface StagesRequest<S extends { token: string; kip?: string }> {
  readonly intent: Intent
  readonly prompter: Prompter
  readonly registry: RegistryPolicy
  readonly token: TokenPolicy
  readonly device: PolicyDevice
  /** k3.pid of the key that will sign, when known before login (recorded in a failure's audit line). */
  readonly kip?: string
  /** The module (and p11-kit server) that signs, for the audit line. */
  readonly origin?: AuditDevice
  /** Builds and signs the token (calls Signer.sign); may wait for a touch. */
  readonly sign: () => Promise<S>
}

const DENIAL_CODES: ReadonlySet<string> = new Set([
  'DENIED',
  'POLICY_DENIED',
  'FORWARDED_REFUSED',
  'RATE_LIMITED',
])

/** The `denied`/`failed` line of a request that released no token; the refusal stands either way. */
async function recordFailure(
  audit: AuditSink,
  intent: Intent,
  failure: AgentError,
  known: { approval?: Approval | undefined; kip?: string | undefined; device?: AuditDevice | undefined },
  log: (line: string) => void,
): Promise<void> {
  await audit
    .record(
      auditEntry(intent, {
        result: DENIAL_CODES.has(failure.code) ? 'denied' : 'failed',
        code: failure.code,
        reason: failure.message,
        ...(known.approval === undefined ? {} : { approval: known.approval }),
        ...(known.kip === undefined ? {} : { kip: known.kip }),
        ...(known.device === undefined ? {} : { device: known.device }),
      }),
    )
    .catch((auditError: unknown) => log(`audit-failed ${toAgentError(auditError).code}`))
}

/**
 * approve → login → sign → audit. Refusals are recorded as `denied`, every other failure as
 * `failed`, and the error is rethrown. A mutation that ends without a released token (wrong PIN, no
 * touch, audit failure) gives its rate-limit slot back: the limit counts mutations a registry could
 * have received. If the `signed` line cannot be written the token is dropped (AUDIT_FAILED).
 */
export async function approveLoginSignAudit<S extends { token: string; kip?: string }>(
  policy: Policy,
  audit: AuditSink,
  request: StagesRequest<S>,
  log: (line: string) => void = () => undefined,
): Promise<S> {
  const { intent, prompter } = request
  let approval: Approval | undefined
  let release = (): void => undefined
  let signed: S
  try {
    const approved = await policy.approve(intent, prompter, request.registry, request.token)
    approval = approved.approval
    release = approved.release
    await policy.ensureLoggedIn(request.device, request.token, prompter, intent)
    signed = await policy.withTouchNotice(request.sign(), {
      intent,
      prompter,
      tokenDescription: request.token.description,
    })
  } catch (error) {
    release()
    const failure = toAgentError(error)
    await recordFailure(audit, intent, failure, { approval, kip: request.kip, device: request.origin }, log)
    throw failure
  }
  const kip = signed.kip ?? request.kip
  try {
    await audit.record(
      auditEntry(intent, {
        result: 'signed',
        approval,
        token: signed.token,
        ...(kip === undefined ? {} : { kip }),
        ...(request.origin === undefined ? {} : { device: request.origin }),
      }),
    )
  } catch (error) {
    release()
    const failure = toAgentError(error, 'AUDIT_FAILED')
    throw failure.code === 'AUDIT_FAILED'
      ? failure
      : new AgentError(
          'AUDIT_FAILED',
          `The audit line could not be written (${failure.message}), so the signed token was discarded`,
          {
            remedy:
              'Check free space and permissions of the audit log directory (see `cargo-pkcs11-agent doctor`)',
            cause: failure,
          },
        )
  }
  return signed
}
