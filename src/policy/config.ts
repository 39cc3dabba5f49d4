/**
 * The policy's own view of configuration: plain, frozen data. The config module (src/config/)
 * parses TOML and maps it onto these shapes; policy never reads files or the environment by itself.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'

/**
 * Where a token's PIN comes from.
 * - `pinentry`: the Assuan program the user configured (like gpg-agent); `program` defaults to the
 *   policy-wide `pinentryProgram`.
 * - `tty`: the requesting terminal, through the shim (`Prompter.askPin`).
 * - `env` / `file`: CI secrets. The file must not be readable by group or others.
 * - `none`: protected authentication path (PIN pad, biometric): `C_Login` with a NULL PIN
 *   (PKCS#11 v2.40 section 5.6, CKF_PROTECTED_AUTHENTICATION_PATH).
 */
export type PinSource =
  | { readonly kind: 'pinentry'; readonly program?: string }
  | { readonly kind: 'tty' }
  | { readonly kind: 'env'; readonly variable: string }
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'none' }

export type PinSourceKind = PinSource['kind']

/** Sources a human answers: only these are cached (env and file are re-read when needed). */
export function isInteractiveSource(source: PinSource): boolean {
  return source.kind === 'pinentry' || source.kind === 'tty'
}

/**
 * How mutations (publish, yank, unyank, owners) are approved.
 * - `touch`: the mutation key's device requires a touch; the device waits, we announce it.
 * - `prompt`: an explicit yes/no (pinentry CONFIRM or the shim's terminal) showing the intent.
 * - `none`: no human in the loop. Never the default.
 */
export type ConfirmPolicy = 'touch' | 'prompt' | 'none'

/** Which channel asks yes/no questions: the shim's terminal, pinentry, or terminal-then-pinentry. */
export type ConfirmChannel = 'auto' | 'terminal' | 'pinentry'

export interface TokenPolicy {
  /** Stable identity of the token (config name plus serial): the PIN cache key. */
  readonly id: string
  /** "SoftHSM token 'ci' (serial 1a2b…)": shown in prompts. */
  readonly description: string
  readonly pin: PinSource
  /**
   * At the token's final PIN try (CKF_USER_PIN_FINAL_TRY), ask the human for an explicit "yes, use
   * it" first (true) or refuse outright (false). Sources no human answers (env, file) and a headless
   * agent always refuse: a stale CI secret would otherwise lock the token.
   */
  readonly confirmFinalTry: boolean
}

export interface RegistryPolicy {
  /** Confirmation for mutations. Reads are always silent. */
  readonly confirm: ConfirmPolicy
  /** Sliding one-hour window; 0 forbids mutations for this registry. */
  readonly mutationsPerHour: number
}

export interface PolicyConfig {
  /** Never prompt (CI): a PIN that only a human could give is an immediate PIN_REQUIRED. */
  readonly headless: boolean
  readonly pinCacheIdleSeconds: number
  readonly pinCacheMaxSeconds: number
  /** The pinentry program (name on PATH or absolute path) for `pinentry` PIN sources and CONFIRM. */
  readonly pinentryProgram: string
  readonly pinentryTimeoutMs: number
  readonly confirmVia: ConfirmChannel
  readonly touchNoticeDelayMs: number
  readonly touchTimeoutMs: number
  readonly desktopNotifications: boolean
}

export const DEFAULT_POLICY_CONFIG: PolicyConfig = Object.freeze({
  headless: false,
  pinCacheIdleSeconds: LIMITS.pinCacheIdleSeconds,
  pinCacheMaxSeconds: LIMITS.pinCacheMaxSeconds,
  pinentryProgram: 'pinentry',
  pinentryTimeoutMs: LIMITS.pinentryTimeoutMs,
  confirmVia: 'auto',
  touchNoticeDelayMs: LIMITS.touchNoticeDelayMs,
  touchTimeoutMs: LIMITS.touchTimeoutMs,
  desktopNotifications: true,
})

export const DEFAULT_REGISTRY_POLICY: RegistryPolicy = Object.freeze({
  confirm: 'prompt',
  mutationsPerHour: LIMITS.defaultMutationsPerHour,
})

function invalid(message: string, remedy: string): AgentError {
  return new AgentError('CONFIG_INVALID', message, { remedy })
}

function nonNegativeInteger(value: number, name: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalid(
      `${name} must be a non-negative integer, got ${String(value)}`,
      `Fix ${name} in the config file`,
    )
  }
}

/** Fills defaults and checks ranges; the result is frozen. */
export function policyConfig(partial: Partial<PolicyConfig> = {}): PolicyConfig {
  const merged: PolicyConfig = { ...DEFAULT_POLICY_CONFIG, ...partial }
  nonNegativeInteger(merged.pinCacheIdleSeconds, 'pin-cache-idle')
  nonNegativeInteger(merged.pinCacheMaxSeconds, 'pin-cache-max')
  nonNegativeInteger(merged.touchNoticeDelayMs, 'touch-notice-delay')
  nonNegativeInteger(merged.touchTimeoutMs, 'touch-timeout')
  nonNegativeInteger(merged.pinentryTimeoutMs, 'pinentry-timeout')
  if (merged.pinCacheIdleSeconds > merged.pinCacheMaxSeconds) {
    throw invalid(
      `pin-cache-idle (${merged.pinCacheIdleSeconds} s) is longer than pin-cache-max (${merged.pinCacheMaxSeconds} s)`,
      'Set pin-cache-idle to at most pin-cache-max',
    )
  }
  if (merged.touchTimeoutMs >= LIMITS.requestTimeoutMs) {
    throw invalid(
      `touch-timeout (${merged.touchTimeoutMs} ms) must be shorter than the request timeout (${LIMITS.requestTimeoutMs} ms)`,
      'Lower touch-timeout',
    )
  }
  if (merged.pinentryProgram === '' || /[\0\n]/.test(merged.pinentryProgram)) {
    throw invalid(
      'pinentry program is empty or contains a newline',
      'Set pinentry to a program name or an absolute path',
    )
  }
  return Object.freeze(merged)
}

export function registryPolicy(partial: Partial<RegistryPolicy> = {}): RegistryPolicy {
  const merged: RegistryPolicy = { ...DEFAULT_REGISTRY_POLICY, ...partial }
  if (!['touch', 'prompt', 'none'].includes(merged.confirm)) {
    throw invalid(
      `confirm must be "touch", "prompt" or "none", got ${JSON.stringify(merged.confirm)}`,
      'Fix confirm in the registry section',
    )
  }
  nonNegativeInteger(merged.mutationsPerHour, 'mutations-per-hour')
  return Object.freeze(merged)
}
