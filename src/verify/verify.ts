/**
 * Verifies an RFC 3231 asymmetric token the way a registry must (RFC 3231 "Registry checks",
 * and cargo 1.95's reference verifier `check_authorized` in crates/cargo-test-support/src/registry.rs).
 * One reason code per failure (VERIFY_CODES in src/lib/errors.ts); remedies speak to the registry
 * operator and to the user whose token was refused.
 *
 * No I/O: a registry passes the token and what it expects, and looks up the key itself (by the
 * footer's `kip`, which `inspectToken` reads without trusting it).
 */
import { AgentError } from '../lib/errors.js'
import { isRecord } from '../lib/json.js'
import { LIMITS } from '../lib/limits.js'
import { k3Pid, parseK3Public } from '../keys/paserk.js'
import { COMPRESSED_POINT_BYTES, publicKeyObject } from '../keys/point.js'
import { parseIat } from '../token/iat.js'
import { OPERATION_FIELDS, isOperation, type CrateRef, type Operation } from '../cargo/operation.js'
import { fail } from './errors.js'
import { parseV3PublicToken, verifyV3Public } from './paseto.js'

export interface VerifyOptions {
  /**
   * The registered key: `k3.public.…` or the 49-byte compressed point; undefined when no key is
   * registered under the token's `kip` (a refusal, KEY_ID_MISMATCH: docs/verifying-tokens.md §3 step 3).
   */
  publicKey: string | Uint8Array | undefined
  /** This registry's index URL, compared byte for byte with the footer `url` (keep `sparse+`). */
  url: string
  /** What the HTTP request does: index/download -> read, PUT crates/new -> publish, ... */
  operation: Operation
  /** What the request is about (from the URL or the publish body): the fields `operation` carries. */
  crate?: CrateRef | undefined
  /** The subject the registry issued for this key; when absent, tokens must carry no `sub`. */
  subject?: string | undefined
  /** Oldest accepted `iat`, seconds (default LIMITS.defaultTokenMaxAgeSeconds, at most 15 min). */
  maxAgeSeconds?: number | undefined
  /** How far in the future `iat` may be (signer clock ahead), seconds. */
  clockSkewSeconds?: number | undefined
  now?: Date | undefined
  /** false skips the iat window (for recorded tokens); the iat must still be a valid timestamp. */
  checkTime?: boolean | undefined
  /** Reject high-S signatures. Off by default: cargo 1.95's own `cargo:paseto` emits them. */
  strictLowS?: boolean | undefined
}

export interface VerifiedToken {
  claims: Record<string, unknown>
  footer: { url: string; kip: string }
  iat: Date
  highS: boolean
}

/** Footer and claims of a token whose signature has NOT been checked. Route by `kip`, trust nothing. */
export interface UntrustedTokenContents {
  readonly verified: false
  readonly footer: { url: string; kip: string } & Record<string, unknown>
  readonly claims: Record<string, unknown>
}

/**
 * Untrusted token text in a message: JSON-quoted (no raw newlines or control characters reach a
 * registry's log) and cut short (a token may be 8 KiB).
 */
function quote(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value)
  return text.length > 120 ? `${text.slice(0, 117)}..."` : text
}

const CLIENT = 'Report the client that produced this token'
const USAGE_REMEDY = 'Fix the verifier call; the options are described in docs/verifying-tokens.md'
const usage = (message: string): AgentError => new AgentError('USAGE', message, { remedy: USAGE_REMEDY })

/** `value` (or `fallback`) seconds as milliseconds: USAGE unless in [0 or (0, up to 15 min]. */
function checkMs(name: string, value: number | undefined, fallback: number, allowZero: boolean): number {
  const seconds = value ?? fallback
  const max = LIMITS.maxTokenMaxAgeSeconds
  if (!(typeof seconds === 'number' && seconds >= 0 && seconds <= max && (allowZero || seconds > 0))) {
    throw usage(
      `${name} must be a number of seconds in ${allowZero ? '0' : '(0'}..${max}], got ${String(value)}`,
    )
  }
  return seconds * 1000
}

/** The options checked once, with defaults applied: what checkClaims compares against. */
type CheckedOptions = ReturnType<typeof checkOptions>

function checkOptions(options: VerifyOptions) {
  if (options === null || typeof options !== 'object') throw usage('verify options are missing')
  let publicKey: Uint8Array | undefined
  if (options.publicKey === undefined) publicKey = undefined
  else if (typeof options.publicKey === 'string') publicKey = parseK3Public(options.publicKey)
  else if (options.publicKey instanceof Uint8Array && options.publicKey.length === COMPRESSED_POINT_BYTES)
    publicKey = new Uint8Array(options.publicKey)
  else throw usage('publicKey must be a k3.public PASERK or the 49-byte compressed point')
  // A registered key off the curve is a configuration error: KEY_INVALID now, not SIGNATURE_INVALID later.
  if (publicKey !== undefined) publicKeyObject(publicKey)
  if (typeof options.url !== 'string' || options.url === '')
    throw usage('url (the registry index URL) is required')
  if (!isOperation(options.operation)) throw usage(`unknown operation ${JSON.stringify(options.operation)}`)
  const fields = OPERATION_FIELDS[options.operation]
  const expected: { -readonly [K in keyof CrateRef]: CrateRef[K] } = {}
  for (const field of ['name', 'vers', 'cksum'] as const) {
    const value = options.crate?.[field]
    if (fields.includes(field)) {
      if (typeof value !== 'string' || value === '') {
        throw usage(`verifying a ${options.operation} token needs the expected ${field} from the request`)
      }
      expected[field] = value
    } else if (value !== undefined) {
      throw usage(`${field} does not apply to ${options.operation} tokens`)
    }
  }
  if (options.subject !== undefined && (typeof options.subject !== 'string' || options.subject === '')) {
    throw usage('subject must be a non-empty string when given')
  }
  const now = options.now ?? new Date()
  if (!(now instanceof Date) || Number.isNaN(now.valueOf())) throw usage('now must be a valid Date')
  return {
    publicKey,
    kip: publicKey === undefined ? undefined : k3Pid(publicKey),
    url: options.url,
    operation: options.operation,
    expected,
    subject: options.subject,
    maxAgeMs: checkMs('maxAgeSeconds', options.maxAgeSeconds, LIMITS.defaultTokenMaxAgeSeconds, false),
    skewMs: checkMs('clockSkewSeconds', options.clockSkewSeconds, LIMITS.defaultClockSkewSeconds, true),
    now,
    checkTime: options.checkTime !== false,
    strictLowS: options.strictLowS === true,
  }
}

const FOOTER_REMEDY =
  'RFC 3231 tokens as cargo makes them carry the footer {"url": <index URL>, "kip": <k3.pid>}; use a provider that writes `kip` (cargo:paseto or cargo-credential-pkcs11)'

function decodeJsonObject(bytes: Uint8Array): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
    return isRecord(value) ? value : undefined
  } catch {
    return undefined
  }
}

function parseFooter(
  footer: Uint8Array,
  hasFooter: boolean,
): { url: string; kip: string } & Record<string, unknown> {
  if (!hasFooter) fail('FOOTER_INVALID', 'the token has no footer, so no `url` and `kip`', FOOTER_REMEDY)
  const object = decodeJsonObject(footer)
  if (object === undefined) fail('FOOTER_INVALID', 'the token footer is not a JSON object', FOOTER_REMEDY)
  const { url, kip } = object
  if (typeof kip !== 'string') {
    const hint =
      typeof object['kid'] === 'string'
        ? ' (it has `kid`, the name in the RFC text; cargo and registries use `kip`)'
        : ''
    fail('FOOTER_INVALID', `the token footer has no string \`kip\`${hint}`, FOOTER_REMEDY)
  }
  if (typeof url !== 'string') fail('FOOTER_INVALID', 'the token footer has no string `url`', FOOTER_REMEDY)
  return { ...object, url, kip }
}

/**
 * Decodes footer and claims WITHOUT verifying anything, so a registry can find the key by `kip`
 * before calling verifyToken. Nothing returned here is authenticated.
 *
 * @example
 * ```ts
 * const { footer } = inspectToken(authorization)
 * const publicKey = keysByKip.get(footer.kip) // stored by k3Pid; undefined -> KEY_ID_MISMATCH
 * ```
 */
export function inspectToken(token: string): UntrustedTokenContents {
  const parsed = parseV3PublicToken(token)
  const footer = parseFooter(parsed.footer, parsed.hasFooter)
  const claims = decodeJsonObject(parsed.message)
  if (claims === undefined) {
    fail('CLAIMS_INVALID', 'the token message is not a JSON object', CLIENT)
  }
  return { verified: false, footer, claims }
}

const CLAIM_NAMES = ['iat', 'sub', 'mutation', 'name', 'vers', 'cksum'] as const
const REPLAY =
  'A token signed for one crate version cannot be replayed for another; retry so the credential provider signs this request'
const MISMATCH = {
  name: { code: 'NAME_MISMATCH', what: 'crate' },
  vers: { code: 'VERS_MISMATCH', what: 'version' },
  cksum: { code: 'CKSUM_MISMATCH', what: 'cksum' },
} as const

function checkClaims(claims: Record<string, unknown>, o: CheckedOptions): Date {
  for (const name of CLAIM_NAMES) {
    if (claims[name] !== undefined && typeof claims[name] !== 'string') {
      fail('CLAIMS_INVALID', `the token claim \`${name}\` is not a string`, CLIENT)
    }
  }
  if (claims['v'] !== undefined && claims['v'] !== 1) {
    fail(
      'VERSION_UNSUPPORTED',
      `the token declares message format v=${quote(claims['v'])}; this registry understands v=1`,
      'The client uses a newer RFC 3231 message format; the registry operator should upgrade the verifier',
    )
  }

  const iatText = claims['iat'] as string | undefined
  if (iatText === undefined) {
    fail(
      'IAT_MISSING',
      'the token has no `iat` claim',
      'RFC 3231 requires `iat`; report the client that produced this token',
    )
  }
  const iat = parseIat(iatText)
  if (iat === undefined) {
    fail('IAT_INVALID', `the token \`iat\` ${quote(iatText)} is not an RFC 3339 timestamp`, CLIENT)
  }
  if (o.checkTime) {
    const ageMs = o.now.valueOf() - iat.valueOf()
    if (ageMs > o.maxAgeMs) {
      fail(
        'IAT_STALE',
        `the token was issued ${Math.round(ageMs / 1000)} s ago; this registry accepts tokens up to ${o.maxAgeMs / 1000} s old`,
        "Retry so the credential provider signs a fresh token; if it keeps happening, compare the signer's clock with the registry's (`date -u`) or raise the registry's accepted age (at most 15 min)",
      )
    }
    if (-ageMs > o.skewMs) {
      fail(
        'IAT_FUTURE',
        `the token was issued ${Math.round(-ageMs / 1000)} s in the future; up to ${o.skewMs / 1000} s of clock difference is accepted`,
        "The signer's clock is ahead of the registry's; synchronise it (NTP) and retry",
      )
    }
  }

  const sub = claims['sub'] as string | undefined
  if (o.subject === undefined && sub !== undefined) {
    fail(
      'SUBJECT_MISMATCH',
      'the token carries a `sub` but this key has no subject registered',
      'Remove the subject from the client configuration, or register it with the key',
    )
  }
  if (o.subject !== undefined && sub !== o.subject) {
    fail(
      'SUBJECT_MISMATCH',
      sub === undefined
        ? 'the token has no `sub`, but this key requires one'
        : 'the token `sub` is not the subject registered for this key',
      'Configure the client with the subject the registry issued for this key',
    )
  }

  const mutation = claims['mutation'] as string | undefined
  if (o.operation === 'read') {
    for (const name of ['mutation', 'name', 'vers', 'cksum'] as const) {
      if (claims[name] !== undefined) {
        fail(
          'UNEXPECTED_CLAIM',
          `a read request carries a token with \`${name}\`: it was issued for ${mutation === undefined ? 'a mutation' : quote(mutation)}`,
          'Mutation tokens are single-purpose; the client must send a read token for downloads and index requests',
        )
      }
    }
    return iat
  }
  if (mutation !== o.operation) {
    fail(
      'MUTATION_MISMATCH',
      mutation === undefined
        ? `a ${o.operation} request carries a read token (no \`mutation\`)`
        : `a ${o.operation} request carries a token issued for ${quote(mutation)}`,
      'Each mutation needs a token signed for exactly that operation; retry so the credential provider signs one',
    )
  }
  for (const field of ['name', 'vers', 'cksum'] as const) {
    const claim = claims[field]
    if (!OPERATION_FIELDS[o.operation].includes(field)) {
      if (claim !== undefined)
        fail('UNEXPECTED_CLAIM', `a ${o.operation} token must not carry \`${field}\``, CLIENT)
    } else if (claim !== o.expected[field]) {
      const { code, what } = MISMATCH[field]
      fail(
        code,
        field === 'cksum'
          ? 'the token `cksum` is not the SHA-256 of the uploaded .crate'
          : `the token is for ${what} ${quote(claim ?? null)}, the request is for ${JSON.stringify(o.expected[field])}`,
        field === 'cksum' ? 'The upload differs from what was signed; rebuild and publish again' : REPLAY,
      )
    }
  }
  return iat
}

/**
 * Order follows cargo's check_authorized: framing, footer and key id, signature, then url and
 * claims — so every claim that is compared has been authenticated first. A refused token throws a
 * VerifyError (one code per reason); a bad call throws an AgentError `USAGE` or `KEY_INVALID`.
 *
 * @example
 * ```ts
 * const { iat } = await verifyToken(authorization, {
 *   publicKey: 'k3.public.…',
 *   url: 'sparse+https://registry.example/index/',
 *   operation: 'publish',
 *   crate: { name: 'foo', vers: '1.2.3', cksum: sha256HexOfTheUpload },
 * })
 * ```
 */
export async function verifyToken(token: string, options: VerifyOptions): Promise<VerifiedToken> {
  const o = checkOptions(options)
  const parsed = parseV3PublicToken(token)
  const footer = parseFooter(parsed.footer, parsed.hasFooter)
  if (o.publicKey === undefined || footer.kip !== o.kip) {
    fail(
      'KEY_ID_MISMATCH',
      o.publicKey === undefined
        ? `no key with id ${quote(footer.kip)} is registered with this registry`
        : `the token was signed by key ${quote(footer.kip)}, not by the registered key ${o.kip}`,
      'The user should register the k3.public key that `cargo-pkcs11-agent pubkey` prints, or point the client at the key already registered',
    )
  }
  const verified = await verifyV3Public(token, o.publicKey, { strictLowS: o.strictLowS })
  if (footer.url !== o.url) {
    fail(
      'URL_MISMATCH',
      `the token was issued for ${quote(footer.url)}, not for this registry (${JSON.stringify(o.url)})`,
      'Tokens are bound to one registry index URL; check the registry URL in the client configuration (cargo keeps the `sparse+` prefix)',
    )
  }
  const iat = checkClaims(verified.claims, o)
  return { claims: verified.claims, footer: { url: footer.url, kip: footer.kip }, iat, highS: verified.highS }
}
