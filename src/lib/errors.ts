/**
 * One error type for the whole project, with a closed union of stable codes.
 *
 * Every user-facing failure pairs *what happened* (`message`) with *what to do* (`remedy`).
 * Codes travel over the agent socket as `{code, message, remedy}`; a client that meets a code it
 * does not know keeps the message and treats it as `INTERNAL` (see `isErrorCode`), the same way
 * cargo's `cargo-credential` crate keeps an `Unknown` error kind for forward compatibility.
 */

/** Failures of the token verifier: one code per reason a registry rejects a token. */
export const VERIFY_CODES = [
  'TOKEN_MALFORMED', // not three or four dot-separated parts, empty payload, payload too short
  'TOKEN_WRONG_PURPOSE', // header is not `v3.public.` (v4 tokens, v3.local, ...)
  'TOKEN_ENCODING', // base64url with padding, invalid characters or non-zero trailing bits
  'SIGNATURE_INVALID', // the signature does not verify for the expected public key
  'SIGNATURE_HIGH_S', // strict mode only: s > n/2
  'FOOTER_INVALID', // footer missing, not JSON, or missing `url` / `kip`
  'KEY_ID_MISMATCH', // footer `kip` is not the expected key's k3.pid
  'URL_MISMATCH', // footer `url` is not this registry's index URL
  'CLAIMS_INVALID', // message is not a JSON object or a claim has the wrong type
  'IAT_MISSING',
  'IAT_INVALID',
  'IAT_STALE', // older than the accepted window
  'IAT_FUTURE', // further in the future than the allowed clock skew
  'SUBJECT_MISMATCH',
  'VERSION_UNSUPPORTED', // `v` present and not 1
  'MUTATION_MISMATCH', // mutation claim differs from the operation the request performs
  'NAME_MISMATCH',
  'VERS_MISMATCH',
  'CKSUM_MISMATCH',
  'UNEXPECTED_CLAIM', // a mutation claim on a read token, or `vers` on an owners token, ...
  'TOKEN_REPLAYED', // registry policy: a mutation token presented a second time (RFC 3231 lets registries refuse reuse)
  'TOKEN_MISSING', // registry side: the request needs a token and has no Authorization header
] as const

/** Failures of the agent, the shim and the device layer. */
export const AGENT_CODES = [
  'USAGE', // bad command-line arguments
  'CONFIG_INVALID', // config file cannot be parsed or fails validation
  'CONFIG_MISSING',
  'REQUEST_INVALID', // malformed request from cargo or from a socket client
  'REGISTRY_NOT_CONFIGURED', // the agent refuses to sign for registries it was not bound to
  'OPERATION_UNSUPPORTED',
  'KEY_NOT_FOUND',
  'KEY_EXISTS', // keygen would overwrite an existing key without --force
  'KEY_INVALID', // not a P-384 EC key, public point malformed
  'KEY_POLICY_MISMATCH', // the config asks the key for what its card policy cannot give (confirm = "touch", touch never)
  'MANAGEMENT_KEY_INCORRECT', // the PIV management key did not authenticate
  'MANAGEMENT_KEY_UNSUPPORTED', // the card's management-key algorithm (AES-192 from firmware 5.7) is one the installed tools cannot use
  'ATTESTATION_INVALID', // the attestation chain does not verify up to a configured root
  'ATTESTATION_KEY_MISMATCH', // the attested public key is not the key being registered
  'ATTESTATION_POLICY_WEAK', // the attested PIN/touch policy is weaker than required
  'SIGNATURE_MALFORMED', // the device returned something that is neither r||s nor DER
  'SELF_CHECK_FAILED', // the device's signature did not verify with its own public key
  'MODULE_LOAD_FAILED', // the PKCS#11 library cannot be loaded or initialised
  'TOKEN_ABSENT', // the configured token is not inserted / not found
  'DEVICE_ERROR', // device or slot failure not covered by another code
  'DEVICE_REMOVED', // removed during an operation
  'SESSION_LOST', // session handle became invalid (reconnect happens automatically)
  'MECHANISM_UNSUPPORTED',
  'PIN_REQUIRED', // a PIN is needed and no source can provide one (headless)
  'PIN_INCORRECT',
  'PIN_LOCKED',
  'PIN_INVALID', // wrong length / characters rejected by the token
  'PIN_ENTRY_FAILED', // pinentry / tty prompt failed or was cancelled
  'TOUCH_TIMEOUT',
  'DENIED', // the user declined the confirmation
  'POLICY_DENIED', // policy forbids this request (e.g. final PIN try without confirmation)
  'FORWARDED_REFUSED', // the request came through a forwarded socket and the registry's `forwarded` forbids it
  'RATE_LIMITED',
  'AUDIT_FAILED', // the audit line could not be written; the token is not released
  'AGENT_UNREACHABLE',
  'AGENT_BUSY',
  'AGENT_ALREADY_RUNNING',
  'PEER_REFUSED', // a process of another user connected to the agent socket (kernel peer credentials)
  'PROTOCOL_ERROR', // a peer spoke something that is not our protocol
  'TIMEOUT',
  'UPSTREAM_ERROR', // the gateway's upstream registry is unreachable, too slow, or refused the gateway
  'INTERNAL',
] as const

export type VerifyCode = (typeof VERIFY_CODES)[number]
export type AgentCode = (typeof AGENT_CODES)[number]
export type ErrorCode = VerifyCode | AgentCode

const ALL_CODES: ReadonlySet<string> = new Set<string>([...VERIFY_CODES, ...AGENT_CODES])

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && ALL_CODES.has(value)
}

/**
 * PIN tries left after a rejected login: a count where the device tells one (YubiKey PIV), else the
 * token flags of PKCS#11 v2.40 section 3.2 (CK_TOKEN_INFO: CKF_USER_PIN_COUNT_LOW -> 'low',
 * CKF_USER_PIN_FINAL_TRY -> 'final', CKF_USER_PIN_LOCKED -> 'locked').
 */
export type TriesLeft = number | 'low' | 'final' | 'locked'

export function isTriesLeft(value: unknown): value is TriesLeft {
  return (
    (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) ||
    value === 'low' ||
    value === 'final' ||
    value === 'locked'
  )
}

export interface ErrorDetails {
  /** What the user should do next. Shown after the message. */
  readonly remedy?: string
  readonly cause?: unknown
  /** Structured context safe to log and to send over the socket (never secrets). */
  readonly data?: Readonly<Record<string, string | number | boolean>>
  /** PIN_INCORRECT / PIN_LOCKED: what the device reported; also sent as `data.triesLeft`. */
  readonly triesLeft?: TriesLeft | undefined
}

export class AgentError extends Error {
  readonly code: ErrorCode
  readonly remedy: string | undefined
  readonly data: Readonly<Record<string, string | number | boolean>>
  readonly triesLeft: TriesLeft | undefined

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = 'AgentError'
    this.code = code
    this.remedy = details.remedy
    const fromData = details.data?.['triesLeft']
    this.triesLeft = details.triesLeft ?? (isTriesLeft(fromData) ? fromData : undefined)
    this.data = Object.freeze({
      ...(details.data ?? {}),
      ...(this.triesLeft === undefined ? {} : { triesLeft: this.triesLeft }),
    })
  }

  /** "message. remedy" — what a human reads. */
  describe(): string {
    if (this.remedy === undefined) return this.message
    return `${this.message}${/[.?!]$/.test(this.message) ? '' : '.'} ${this.remedy}`
  }

  toWire(): WireError {
    const wire: WireError = { code: this.code, message: this.message }
    if (this.remedy !== undefined) wire.remedy = this.remedy
    if (Object.keys(this.data).length > 0) wire.data = { ...this.data }
    return wire
  }

  static fromWire(wire: WireError): AgentError {
    const code = isErrorCode(wire.code) ? wire.code : 'INTERNAL'
    const details: { remedy?: string; data?: Record<string, string | number | boolean> } = {}
    if (typeof wire.remedy === 'string') details.remedy = wire.remedy
    if (wire.data !== undefined) details.data = wire.data
    const message = code === wire.code ? wire.message : `${wire.message} (agent error code ${wire.code})`
    return new AgentError(code, message, details)
  }
}

/** The shape errors take on the agent socket. `code` may be one this build does not know. */
export interface WireError {
  code: string
  message: string
  remedy?: string
  data?: Record<string, string | number | boolean>
}

/** Wraps anything thrown into an AgentError, keeping the original as `cause`. */
export function toAgentError(error: unknown, fallback: ErrorCode = 'INTERNAL'): AgentError {
  if (error instanceof AgentError) return error
  const message = error instanceof Error ? error.message : String(error)
  return new AgentError(fallback, message, {
    cause: error,
    remedy: 'This is unexpected; run `cargo-pkcs11-agent doctor` and report it with the audit log line',
  })
}
