/**
 * Approval of a mutation: the rate limit, then the registry's `confirm` rule, asking yes/no on the
 * requester's terminal (the agent's own prompt there) or in a pinentry the agent launches
 * (docs/policy.md, "Mutations: confirmation, touch, rate limit"). Never through the client that
 * made the request (docs/design.md §4, rule 2). The login's final-try question goes through the
 * same yes/no.
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
   * signature), `none` asks nothing. Throws RATE_LIMITED first, so nobody is asked to approve a
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
    if (intent.operation === 'read') return { approval: 'not-required', release: () => undefined }
    const release = this.#deps.limiter.take(
      intent.indexUrl,
      registry.mutationsPerHour,
      describeRegistry(intent),
    )
    try {
      if (registry.confirm === 'none') return { approval: 'none', release }
      if (registry.confirm === 'touch') return { approval: 'touch', release }
      const { approved, via } = await this.ask(
        intent,
        prompter,
        `Allow ${describeIntent(intent)}?`,
        'Approve',
        token,
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
   * pinentry. With neither it fails closed (POLICY_DENIED naming `touch` and `none`).
   */
  async ask(
    intent: Intent,
    prompter: Prompter,
    text: string,
    okLabel: string,
    token: TokenPolicy | undefined,
  ): Promise<{ approved: boolean; via: 'terminal' | 'pinentry' }> {
    const { headless, confirmVia } = this.#deps.config
    if (headless) {
      throw new AgentError(
        'POLICY_DENIED',
        `Confirmation is required to ${describeIntent(intent)}, but the agent runs headless`,
        {
          remedy:
            'For unattended use set confirm = "touch" (key with a touch policy) or confirm = "none" for this registry in the agent config',
        },
      )
    }
    if (confirmVia === 'terminal' || (confirmVia === 'auto' && prompter.terminal !== undefined)) {
      if (prompter.terminal === undefined) {
        throw new AgentError(
          'POLICY_DENIED',
          `Confirmation is required to ${describeIntent(intent)}, but the requesting program has no terminal`,
          {
            remedy:
              'Run the command from a terminal, or set confirm = "touch" for this registry (a key with a touch policy), or confirm = "none" for unattended use',
          },
        )
      }
      try {
        return { approved: await prompter.confirm(intent, text), via: 'terminal' }
      } catch (error) {
        throw noChannel(intent, error, 'the agent could not ask on the terminal')
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
        `${prompter.terminal === undefined ? 'the requesting program has no terminal and ' : ''}pinentry could not ask`,
      )
    }
    return { approved, via: 'pinentry' }
  }
}

/** No channel the requester cannot answer itself could ask: fail closed, naming the other modes. */
function noChannel(intent: Intent, error: unknown, why: string): unknown {
  if (!(error instanceof AgentError) || error.code !== 'PIN_ENTRY_FAILED') return error
  return new AgentError(
    'POLICY_DENIED',
    `Confirmation is required to ${describeIntent(intent)}, but ${why} (${error.message})`,
    {
      cause: error,
      remedy:
        'Run cargo from a terminal; or set confirm = "touch" for this registry (a key with a touch policy); or run the agent in your desktop session so pinentry can ask (`cargo-pkcs11-agent install-service`); for CI set confirm = "none"',
    },
  )
}
