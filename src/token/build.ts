/**
 * Builds RFC 3231 asymmetric tokens byte for byte as cargo 1.95's `cargo:paseto` does
 * (cargo `src/cargo/util/credential/paseto.rs`, pasetors 0.7.7 `version3::PublicToken::sign`):
 * PASETO v3.public, compact JSON message `{iat, sub?, mutation?, name?, vers?, cksum?}` in that
 * order, footer `{"url": <index-url verbatim>, "kip": <k3.pid>}`, implicit assertion empty.
 *
 * Framing (message || signature, base64url, footer part) is the `paseto` package's `PublicSign`;
 * we only supply the signing step, which hands the PAE to our Signer (a device or node:crypto).
 */
import { PublicProtocol, PublicSign, type Key } from 'paseto'

import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { k3Pid } from '../keys/paserk.js'
import type { Signer } from '../signer/signer.js'
import { formatIat } from './iat.js'
import { OPERATION_FIELDS, isOperation, type CrateRef, type Operation } from '../cargo/operation.js'
import { v3PublicPae } from './pae.js'

export interface TokenRequest {
  /** The registry's index URL exactly as cargo sends it (`sparse+https://…/index/` keeps `sparse+`). */
  indexUrl: string
  operation: Operation
  /** The crate claims; exactly the fields OPERATION_FIELDS[operation] names (absent for reads). */
  crate?: CrateRef | undefined
  /** The registry-issued subject (cargo's `secret-key-subject`), if any. */
  subject?: string | undefined
}

export interface BuiltToken {
  token: string
  iat: Date
  kip: string
  /** The message claims in the order they were serialised. */
  claims: Record<string, string>
}

/** A paseto `Key` that carries our Signer, so `PublicSign`'s `run` can reach it. */
interface SignerKey extends Key {
  readonly signer: Signer
}

const v3Sign = new PublicProtocol(
  PublicSign<3, SignerKey>({
    version: 3,
    run: async (key, message, footer, implicitAssertion) =>
      await key.signer.sign(v3PublicPae(key.signer.publicKey, message, footer, implicitAssertion)),
  }),
)

const REQUEST_REMEDY = 'The request does not match what cargo sends for this operation; check the caller'
const invalid = (message: string): AgentError =>
  new AgentError('REQUEST_INVALID', message, { remedy: REQUEST_REMEDY })

// cargo sends `cksum` as the lowercase hex SHA-256 of the .crate file (publish.rs).
const CKSUM = /^[0-9a-f]{64}$/
const CONTROL = /[\u0000-\u001f\u007f]/

function checkText(field: string, value: unknown): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) throw invalid(`${field} must be a non-empty string`)
  if (value.length > LIMITS.tokenClaimMaxChars) {
    throw invalid(
      `${field} is ${value.length} characters long, more than the ${LIMITS.tokenClaimMaxChars} accepted`,
    )
  }
  if (CONTROL.test(value)) throw invalid(`${field} contains control characters`)
}

/**
 * Checks a request against the credential protocol's shape (cargo `lib.rs` `Operation`): each
 * operation's fields present, every other mutation field absent. Returns a frozen copy.
 */
export function validateTokenRequest(request: TokenRequest): Readonly<TokenRequest> {
  if (request === null || typeof request !== 'object') throw invalid('the token request is not an object')
  checkText('indexUrl', request.indexUrl)
  if (!isOperation(request.operation)) throw invalid(`unknown operation ${JSON.stringify(request.operation)}`)
  const required = OPERATION_FIELDS[request.operation]
  const crate = request.crate ?? {}
  const copied: { -readonly [K in keyof CrateRef]: CrateRef[K] } = {}
  for (const field of ['name', 'vers', 'cksum'] as const) {
    const value = crate[field]
    if (required.includes(field)) {
      checkText(field, value)
      copied[field] = value
    } else if (value !== undefined) throw invalid(`${field} must be absent for a ${request.operation} token`)
  }
  if (copied.cksum !== undefined && !CKSUM.test(copied.cksum)) {
    throw invalid('cksum must be the lowercase hex SHA-256 of the .crate file (64 characters)')
  }
  if (request.subject !== undefined) checkText('subject', request.subject)
  const copy: TokenRequest = {
    indexUrl: request.indexUrl,
    operation: request.operation,
    crate: Object.freeze(copied),
    ...(request.subject === undefined ? {} : { subject: request.subject }),
  }
  return Object.freeze(copy)
}

/** The message claims in cargo's field order (struct order of `Message` in paseto.rs). */
export function tokenClaims(request: Readonly<TokenRequest>, iat: Date): Record<string, string> {
  const claims: Record<string, string> = { iat: formatIat(iat) }
  if (request.subject !== undefined) claims['sub'] = request.subject
  if (request.operation !== 'read') claims['mutation'] = request.operation
  const crate = request.crate ?? {}
  for (const field of ['name', 'vers', 'cksum'] as const) {
    const value = crate[field]
    if (value !== undefined) claims[field] = value
  }
  return claims
}

/**
 * Signs the RFC 3231 token cargo would send for `request`, with any Signer.
 *
 * @example
 * ```ts
 * const signer = MemorySigner.generate() // a test key; the agent passes its device signer
 * const { token } = await buildToken(signer, { indexUrl: 'sparse+https://registry.example/index/', operation: 'read' })
 * ```
 */
export async function buildToken(
  signer: Signer,
  request: TokenRequest,
  now: Date = new Date(),
): Promise<BuiltToken> {
  const checked = validateTokenRequest(request)
  const kip = k3Pid(signer.publicKey)
  const iat = new Date(now.valueOf())
  const claims = tokenClaims(checked, iat)
  // The footer names the key `kip`, not the RFC text's `kid` (cargo since commit ccd69bcf2).
  const footer = new TextEncoder().encode(JSON.stringify({ url: checked.indexUrl, kip }))
  const key: SignerKey = {
    algorithm: { name: 'PASETO v3.public' },
    extractable: false,
    type: 'secret',
    signer,
  }
  // Refuse an oversized token before the device is asked (a touch for a token no registry takes).
  const b64Length = (bytes: number): number => Math.ceil((bytes * 4) / 3)
  const messageBytes = new TextEncoder().encode(JSON.stringify(claims)).length
  const length = 'v3.public.'.length + b64Length(messageBytes + 96) + 1 + b64Length(footer.length)
  if (length > LIMITS.tokenMaxChars) {
    throw invalid(`the token would be ${length} characters, more than the ${LIMITS.tokenMaxChars} accepted`)
  }
  // addIssuedAt/nonExpiring: paseto would otherwise add its own `iat` and a one-hour `exp`;
  // cargo's message has neither an `exp` nor anything we did not put there.
  const token = await v3Sign.Sign(key, claims, { footer, addIssuedAt: false, nonExpiring: true })
  return { token, iat, kip, claims }
}
