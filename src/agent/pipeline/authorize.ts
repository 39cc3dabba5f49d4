/**
 * Stage 3: policy. Rate limit, confirmation for mutations, then the PIN. The simplest complete
 * version, kept behind this one function so the policy module can replace its body.
 */
import type { Config } from '../../config/schema.js'
import { AgentError } from '../../lib/errors.js'
import { describeIntent, type Intent, type Prompter } from '../../policy/intent.js'
import type { PinCache } from '../../policy/pin-cache.js'
import type { MutationRateLimiter } from '../../policy/rate-limit.js'
import type { Binding } from './bind.js'
import { ensureLoggedIn, type LoginTarget } from './pin.js'

export interface AuthorizeInput {
  readonly config: Config
  readonly intent: Intent
  readonly binding: Binding
  readonly prompter: Prompter
  readonly pinCache: PinCache
  readonly rateLimiter: MutationRateLimiter
  readonly device: LoginTarget
}

export function pinEnvVariables(config: Config): string[] {
  return Object.values(config.tokens).flatMap((t) => (t.pinEnv === undefined ? [] : [t.pinEnv]))
}

/** Resolves when the request may be signed; the caller then counts it with `recordMutation`. */
export async function authorize(input: AuthorizeInput): Promise<void> {
  const { intent, binding, prompter, config } = input
  const mutation = intent.operation !== 'read'
  const text = describeIntent(intent)
  if (mutation) {
    input.rateLimiter.check(binding.registry.name, binding.registry.mutationsPerHour, `registry ${binding.registry.name}`)
    if (binding.registry.confirm === 'prompt') {
      if (config.agent.headless || !prompter.interactive) {
        throw new AgentError('POLICY_DENIED', `Registry ${binding.registry.name} requires a confirmation for ${intent.operation}, and there is no terminal to ask on`, {
          remedy: 'Run cargo from a terminal, or set confirm = "touch" (device touch policy) or "none" for this registry',
        })
      }
      prompter.notify({ kind: 'waiting-for-confirmation', text: `Confirm on the terminal: ${text}`, intent, via: 'terminal' })
      if (!(await prompter.confirm(intent, `Sign: ${text}?`))) {
        throw new AgentError('DENIED', `You declined: ${text}`, { remedy: 'Nothing was signed; run the cargo command again to retry' })
      }
    }
  }
  await ensureLoggedIn(input.device, {
    token: binding.token,
    prompter,
    pinCache: input.pinCache,
    headless: config.agent.headless,
    reason: text,
    secretVariables: pinEnvVariables(config),
  })
}

export function recordMutation(input: Pick<AuthorizeInput, 'intent' | 'binding' | 'rateLimiter'>): void {
  if (input.intent.operation !== 'read') input.rateLimiter.record(input.binding.registry.name)
}
