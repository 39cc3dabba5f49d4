/**
 * The policy's own view of configuration: plain, frozen data. The agent maps its validated config
 * onto these shapes (src/agent/policy-config.ts), so every value here is already in range
 * (src/config/schema.ts checks each one against src/lib/limits.ts, once); policy never reads files or
 * the environment by itself. Names follow the config keys (docs/configuration.md).
 */
import { LIMITS } from '../lib/limits.js'

/**
 * Where a token's PIN comes from (docs/configuration.md, `pin-source`).
 * - `pinentry`: the Assuan program the user configured (like gpg-agent); `program` defaults to the
 *   policy-wide `pinentryProgram`.
 * - `tty`: the requesting terminal (the agent: through the shim, `Prompter.askPin`).
 * - `env` / `file`: CI secrets. The file must not be readable by group or others.
 * - `none`: protected authentication path (PIN pad, biometric): `C_Login` with a NULL PIN
 *   (PKCS#11 v2.40 section 5.6, CKF_PROTECTED_AUTHENTICATION_PATH). Nothing to read.
 */
export type PinSource =
  | { readonly kind: 'pinentry'; readonly program?: string }
  | { readonly kind: 'tty' }
  | { readonly kind: 'env'; readonly variable: string }
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'none' }

/**
 * How mutations (publish, yank, unyank, owners) are approved.
 * - `touch`: the mutation key's device requires a touch; the device waits, we announce it.
 * - `prompt`: an explicit yes/no (pinentry CONFIRM or the shim's terminal) showing the intent.
 * - `none`: no human in the loop. Never the default.
 */
export type ConfirmPolicy = 'touch' | 'prompt' | 'none'

/**
 * What a request through a forwarded socket may do (docs/ssh-forwarding.md).
 * - `read`: read tokens only; mutations are refused (the default).
 * - `confirm`: mutations too, each confirmed on the agent's side (the key's attested touch, or the
 *   agent's pinentry), whatever `confirm` says, never by an answer from the forwarded requester.
 * - `refuse`: nothing, reads included.
 */
export type ForwardedPolicy = 'read' | 'confirm' | 'refuse'

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
  /**
   * The mutation key's card attests a touch policy (always/cached). A forwarded mutation is left to
   * `touch` only then; an unattested touch is the operator's word, asked in pinentry instead.
   */
  readonly touchAttested: boolean
  /** Sliding one-hour window; 0 forbids mutations for this registry. */
  readonly mutationsPerHour: number
  /** Requests through a forwarded socket (Requester.forwarded). */
  readonly forwarded: ForwardedPolicy
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
  readonly touchNoticeAfterMs: number
  readonly touchTimeoutMs: number
  /** Desktop notifications (notify-send, osascript) besides the notices on the terminal. */
  readonly notify: boolean
}

export const DEFAULT_POLICY_CONFIG: PolicyConfig = Object.freeze({
  headless: false,
  pinCacheIdleSeconds: LIMITS.pinCacheIdleSeconds,
  pinCacheMaxSeconds: LIMITS.pinCacheMaxSeconds,
  pinentryProgram: LIMITS.defaultPinentryProgram,
  pinentryTimeoutMs: LIMITS.pinentryTimeoutMs,
  confirmVia: 'auto',
  touchNoticeAfterMs: LIMITS.touchNoticeAfterMs,
  touchTimeoutMs: LIMITS.touchTimeoutMs,
  notify: true,
})
