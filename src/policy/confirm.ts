/**
 * Approval of a mutation: the rate limit, then the registry's `confirm` rule, asking yes/no on the
 * requester's terminal (the agent's own prompt there) or in a pinentry the agent launches
 * (docs/policy.md, "Mutations: confirmation, touch, rate limit"). Never through the client that
 * made the request (docs/design.md §4, rule 2). The login's final-try question goes through the
 * same yes/no. A request through a forwarded socket follows the registry's `forwarded` first
 * (docs/ssh-forwarding.md).
 */
import { AgentError } from '../lib/errors.js'
import type { Approval, Intent } from '../cargo/intent.js'
import type { PolicyConfig, RegistryPolicy, TokenPolicy } from './config.js'
import { describeIntent, describeRegistry, tell, type Prompter } from './intent.js'
import { pinentryConfirm, type PinentryOptions } from './pinentry.js'
import type { MutationRateLimiter } from './rate-limit.js'

export interface ConfirmerDeps {
  readonly config: Pick<PolicyConfig, 'headless' | 'confirmVia'>
  readonly limiter: MutationRateLimiter
  /** pinentry for this request; `program` when the signing token names its own. */
  readonly pinentry: (intent: Intent, program: string | undefined) => PinentryOptions
}

export class Confirmer {
  readonly #deps: ConfirmerDeps

  constructor(deps: ConfirmerDeps) {
    this.#deps = deps
  }

  /**
   * Reads pass silently (reads are never confirmed). Mutations: `prompt` asks yes/no showing the
   * intent (DENIED when refused), `touch` relies on the key's touch policy (the notice comes with the
   * signature; a forwarded request is asked like `prompt` unless the key attests it), `none` asks
   * nothing. Throws RATE_LIMITED first, so nobody is asked to approve a
   * request that would be refused anyway. `token` (the signing token) picks its `pinentry-program`
   * for a pinentry CONFIRM. `release` gives the rate-limit slot back when the request ends without a
   * released token.
   */
  async approve(
    intent: Intent,
    prompter: Prompter,
    registry: RegistryPolicy,
    token?: TokenPolicy,
  ): Promise<{ approval: Approval; release: () => void }> {
    const forwarded = intent.requester.forwarded !== undefined
    if (forwarded) refuseForwarded(intent, registry)
    if (intent.operation === 'read') return { approval: 'not-required', release: () => undefined }
    const release = this.#deps.limiter.take(
      intent.indexUrl,
      registry.mutationsPerHour,
      describeRegistry(intent),
    )
    try {
      // A touch nothing attests (SoftHSM, a TPM, a PIV key without attestation) is only the
      // operator's word for this host; whoever holds the far end of a forwarded socket gets the
      // agent's own question instead (docs/ssh-forwarding.md).
      if (registry.confirm === 'touch' && (!forwarded || registry.touchAttested))
        return { approval: registry.touchAttested ? 'touch' : 'touch-unattested', release }
      // A forwarded mutation is always asked, even with confirm = "none" (like Bitwarden's "always
      // ask when forwarded"): whoever holds the far end of the socket is not the user.
      if (registry.confirm === 'none' && !forwarded) return { approval: 'none', release }
      const { approved, via } = await this.ask(
        intent,
        prompter,
        `Allow ${describeIntent(intent)}?`,
        'Approve',
        token,
        registry,
      )
      if (!approved) {
        throw new AgentError('DENIED', `Refused: ${describeIntent(intent)}`, {
          remedy: 'Nothing was signed. Run the command again and approve it if you meant to',
        })
      }
      return { approval: via, release }
    } catch (error) {
      release()
      throw error
    }
  }

  /**
   * One yes/no: on the requester's terminal when the kernel names one (`confirmVia`), else in
   * pinentry. With neither it fails closed: POLICY_DENIED naming what else confirms a mutation of
   * `registry` (`confirmInstead`); without one (keygen --force, final try) only a channel helps.
   */
  async ask(
    intent: Intent,
    prompter: Prompter,
    text: string,
    okLabel: string,
    token: TokenPolicy | undefined,
    registry?: RegistryPolicy,
  ): Promise<{ approved: boolean; via: 'terminal' | 'pinentry' }> {
    const { headless, confirmVia } = this.#deps.config
    // The terminal of a forwarder (the local ssh client's) carries the remote session's keystrokes,
    // and remote output can make a terminal answer: never asked there (docs/ssh-forwarding.md).
    const terminal = intent.requester.forwarded === undefined ? prompter.terminal : undefined
    if (headless) {
      throw new AgentError(
        'POLICY_DENIED',
        `Confirmation is required to ${describeIntent(intent)}, but the agent runs headless`,
        {
          remedy: `Run the agent with headless = false in [agent] (CI=true turns it on by default) where someone can answer${confirmInstead(intent, registry)}`,
        },
      )
    }
    if (confirmVia === 'terminal' || (confirmVia === 'auto' && terminal !== undefined)) {
      if (terminal === undefined) {
        throw new AgentError(
          'POLICY_DENIED',
          `Confirmation is required to ${describeIntent(intent)}, but the requesting program has no terminal`,
          { remedy: `Run the command from a terminal${confirmInstead(intent, registry)}` },
        )
      }
      try {
        return { approved: await prompter.confirm(intent, text), via: 'terminal' }
      } catch (error) {
        throw noChannel(intent, error, registry, 'the agent could not ask on the terminal')
      }
    }
    tell(prompter, {
      kind: 'waiting-for-confirmation',
      via: 'pinentry',
      intent,
      text: `Waiting for confirmation in pinentry: ${text}`,
    })
    // The pinentry the signing token's PIN comes from is the one the user set up for this device.
    const program = token?.pin.kind === 'pinentry' ? token.pin.program : undefined
    let approved: boolean
    try {
      approved = await pinentryConfirm(this.#deps.pinentry(intent, program), {
        title: 'cargo-pkcs11-agent',
        description: text,
        ok: okLabel,
        cancel: 'Refuse',
      })
    } catch (error) {
      // No PIN is involved here: a pinentry that cannot ask (no display, not installed) means there is
      // no channel for the yes/no, and the fix is a confirmation mode, not a PIN source.
      throw noChannel(
        intent,
        error,
        registry,
        `${intent.requester.forwarded !== undefined ? 'the request came through a forwarded socket (never asked on a terminal) and ' : terminal === undefined ? 'the requesting program has no terminal and ' : ''}pinentry could not ask`,
      )
    }
    return { approved, via: 'pinentry' }
  }
}

/**
 * The registry's `forwarded` against a request through a forwarded socket: `refuse` refuses
 * everything, `read` every mutation; `confirm` lets the request on to be confirmed.
 */
function refuseForwarded(intent: Intent, registry: RegistryPolicy): void {
  const mode = registry.forwarded
  if (mode === 'confirm' || (mode === 'read' && intent.operation === 'read')) return
  const allowed = mode === 'read' ? 'only read' : 'do nothing'
  throw new AgentError(
    'FORWARDED_REFUSED',
    `Refused: ${describeIntent(intent)}; this registry lets forwarded connections ${allowed} (forwarded = "${mode}")`,
    {
      remedy:
        mode === 'read'
          ? 'Run the command on the agent’s host, or set forwarded = "confirm" for this registry in the agent config (each forwarded mutation is then confirmed on the agent’s side) and restart the agent (docs/ssh-forwarding.md)'
          : 'Run the command on the agent’s host, or set forwarded = "read" (or "confirm") for this registry in the agent config and restart the agent (docs/ssh-forwarding.md)',
      data: { forwarded: mode, via: intent.requester.forwarded?.via ?? 'unidentified' },
    },
  )
}

/**
 * What confirms a mutation of `registry` when nobody can be asked, as a remedy's last clause (empty
 * without a registry: keygen --force and the final try have only the yes/no). `confirm = "touch"`
 * only where the key attests a touch policy: on any other key (SoftHSM, a TPM, an HSM) the agent
 * cannot check that anything asks, and a reload counts it as `none` (docs/policy.md, "Touch the
 * agent cannot check"). A forwarded mutation is asked even with `confirm = "none"`.
 */
function confirmInstead(intent: Intent, registry: RegistryPolicy | undefined): string {
  if (registry === undefined) return ''
  const touchKey =
    'a mutation key with a touch policy (a YubiKey key made with `setup --touch-policy always`) and confirm = "touch"'
  if (intent.requester.forwarded !== undefined)
    return registry.touchAttested
      ? '; or set confirm = "touch" for this registry (its mutation key attests a touch policy)'
      : `; or use ${touchKey} (a forwarded mutation is asked even with confirm = "none")`
  return registry.touchAttested
    ? '; unattended, set confirm = "touch" (its mutation key attests a touch policy) or confirm = "none" for this registry in the agent config'
    : `; unattended, set confirm = "none" for this registry in the agent config (its mutation key attests no touch policy, so confirm = "touch" would not be checked), or use ${touchKey}`
}

/** No channel the requester cannot answer itself could ask: fail closed, naming the other modes. */
function noChannel(
  intent: Intent,
  error: unknown,
  registry: RegistryPolicy | undefined,
  why: string,
): unknown {
  if (!(error instanceof AgentError) || error.code !== 'PIN_ENTRY_FAILED') return error
  return new AgentError(
    'POLICY_DENIED',
    `Confirmation is required to ${describeIntent(intent)}, but ${why} (${error.message})`,
    {
      cause: error,
      remedy: `Run cargo from a terminal; or run the agent in your desktop session so pinentry can ask (\`cargo-pkcs11-agent install-service\`)${confirmInstead(intent, registry)}`,
    },
  )
}
