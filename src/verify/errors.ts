/**
 * The verifier's error: an AgentError whose `code` is narrowed to VerifyCode, so a registry can
 * `switch (error.code)` over exactly the reasons a token is refused (docs/verifying-tokens.md).
 * Mistakes in the call itself (bad options: `USAGE`; a malformed registered key: `KEY_INVALID`)
 * stay plain AgentErrors: they are the registry's to fix, not the token's.
 */
import { AgentError, type VerifyCode } from '../lib/errors.js'

/**
 * @example
 * ```ts
 * try {
 *   await verifyToken(authorization, options)
 * } catch (error) {
 *   if (!(error instanceof VerifyError)) throw error // USAGE / KEY_INVALID: fix the call
 *   switch (error.code) {
 *     case 'IAT_STALE':
 *       return reply(401, error.describe()) // cargo signs a fresh token on retry
 *     // ... every other VerifyCode; the compiler checks the switch is exhaustive
 *   }
 * }
 * ```
 */
export class VerifyError extends AgentError {
  declare readonly code: VerifyCode

  constructor(code: VerifyCode, message: string, details: { remedy: string; cause?: unknown }) {
    super(code, message, details)
    this.name = 'VerifyError'
  }
}

export function fail(code: VerifyCode, message: string, remedy: string, cause?: unknown): never {
  throw new VerifyError(code, message, { remedy, cause })
}
