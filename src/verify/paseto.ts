/**
 * Low-level PASETO v3.public parsing and signature verification, with one error code per reason.
 *
 * The structural checks (header, part count, strict base64url, length) are ours only because a
 * registry needs to know *why* a token was refused; `paseto`'s `PublicVerify` then re-parses the
 * token, rebuilds the PAE and parses the claims, with our `run` doing the ECDSA check through
 * node:crypto. Our run is used instead of paseto's built-in WebCrypto one so that we learn whether
 * it was the signature or the claims that failed without matching error-message text.
 *
 * Both accept high-S signatures (OpenSSL does not enforce low S), as cargo's pasetors does; the
 * strict mode is ours. What paseto's defaults would refuse in cargo's tokens is only PASETO's own
 * temporal policy (a missing `exp`), which we switch off below.
 */
import { PublicProtocol, PublicVerify, ClaimValidationError, type Key } from 'paseto'

import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { decodeBase64url } from '../keys/base64url.js'
import { SIGNATURE_BYTES, isHighS, verifySignature } from '../keys/signature.js'
import { V3_PUBLIC_HEADER, v3PublicPae } from '../token/pae.js'
import { fail } from './errors.js'

export interface ParsedV3PublicToken {
  message: Uint8Array
  signature: Uint8Array
  /** Empty when the token has no footer part. */
  footer: Uint8Array
  hasFooter: boolean
}

const FORMAT_REMEDY =
  'The Authorization header must be a PASETO v3.public token exactly as the credential provider produced it; check that nothing (a proxy, a shell) altered it'

const malformed = (message: string): never => fail('TOKEN_MALFORMED', message, FORMAT_REMEDY)

export function parseV3PublicToken(token: string): ParsedV3PublicToken {
  if (typeof token !== 'string') malformed('the token is not a string')
  if (token.length > LIMITS.tokenMaxChars) {
    malformed(`the token is ${token.length} characters long, more than the ${LIMITS.tokenMaxChars} accepted`)
  }
  if (!token.startsWith(V3_PUBLIC_HEADER)) {
    const header = /^(v\d+)\.(local|public)\./.exec(token)
    if (header !== null) {
      fail(
        'TOKEN_WRONG_PURPOSE',
        `the token is a PASETO ${header[1]}.${header[2]} token; RFC 3231 tokens are v3.public`,
        'Configure the client to produce RFC 3231 asymmetric tokens (PASETO v3.public, P-384), e.g. with cargo-credential-pkcs11',
      )
    }
    fail(
      'TOKEN_MALFORMED',
      'the token does not start with `v3.public.`',
      'This registry accepts RFC 3231 asymmetric tokens only; configure cargo with an asymmetric-token credential provider',
    )
  }
  const parts = token.split('.')
  if (parts.length !== 3 && parts.length !== 4)
    malformed(`the token has ${parts.length} dot-separated parts; v3.public has 3 or 4`)
  const encodedPayload = parts[2] ?? ''
  const encodedFooter = parts[3]
  if (encodedPayload === '' || encodedFooter === '')
    malformed('the token has an empty payload or footer part')
  const encoding = (message: string): never => fail('TOKEN_ENCODING', message, FORMAT_REMEDY)
  const payload = decodeBase64url(encodedPayload, 'the token payload', encoding)
  const footer =
    encodedFooter === undefined
      ? new Uint8Array(0)
      : decodeBase64url(encodedFooter, 'the token footer', encoding)
  // Version3.md §Verify: the last 96 bytes are the signature, the message before it must not be empty.
  if (payload.length <= SIGNATURE_BYTES) {
    malformed(
      `the token payload has ${payload.length} bytes, too short for a message and a 96-byte signature`,
    )
  }
  return {
    message: payload.subarray(0, payload.length - SIGNATURE_BYTES),
    signature: payload.subarray(payload.length - SIGNATURE_BYTES),
    footer,
    hasFooter: encodedFooter !== undefined,
  }
}

/** The public key handed to paseto's Verify; `outcome` tells us what our run concluded. */
interface VerifyKey extends Key {
  readonly publicKey: Uint8Array
  readonly outcome: { signatureValid?: boolean }
}

const v3Verify = new PublicProtocol(
  PublicVerify<3, VerifyKey>({
    version: 3,
    run: async (key, message, signature, footer, implicitAssertion) => {
      const valid = verifySignature(
        key.publicKey,
        v3PublicPae(key.publicKey, message, footer, implicitAssertion),
        signature,
      )
      key.outcome.signatureValid = valid
      return valid
    },
  }),
)

/**
 * Turns off paseto's PASETO-level temporal claims (`exp`, `nbf`, `iat` in the future): RFC 3231
 * tokens carry no `exp`, and the registry's `iat` window is applied by verifyToken with its own
 * reason codes. Any finite tolerance larger than every plausible clock difference does that.
 */
const TEMPORAL_CHECKS_OFF_SECONDS = 1e10

export interface VerifiedV3Public {
  message: Uint8Array
  footer: Uint8Array
  claims: Record<string, unknown>
  highS: boolean
}

export interface V3PublicVerifyOptions {
  /** PASETO implicit assertion; cargo's is empty, test vector 3-S-3 has one. */
  implicitAssertion?: Uint8Array | undefined
  /** Reject s > n/2. cargo 1.95 signs with high S about half the time, so the default accepts it. */
  strictLowS?: boolean | undefined
}

/**
 * Verifies a v3.public token's signature for `publicKey49` and returns its authenticated message,
 * footer and claims (a JSON object). No claim is interpreted here: for RFC 3231 use verifyToken.
 *
 * @example
 * ```ts
 * const { claims, footer } = await verifyV3Public(token, parseK3Public('k3.public.…'))
 * ```
 */
export async function verifyV3Public(
  token: string,
  publicKey49: Uint8Array,
  options: V3PublicVerifyOptions = {},
): Promise<VerifiedV3Public> {
  const parsed = parseV3PublicToken(token)
  const key: VerifyKey = {
    algorithm: { name: 'PASETO v3.public' },
    extractable: true,
    type: 'public',
    publicKey: publicKey49,
    outcome: {},
  }
  let claims: Record<string, unknown>
  try {
    const result = await v3Verify.Verify(key, token, {
      implicitAssertion: new Uint8Array(options.implicitAssertion ?? new Uint8Array(0)),
      allowNonExpiring: true,
      clockTolerance: TEMPORAL_CHECKS_OFF_SECONDS,
    })
    claims = result.claims
  } catch (error) {
    if (error instanceof AgentError) throw error
    if (key.outcome.signatureValid === false) {
      fail(
        'SIGNATURE_INVALID',
        'the token signature does not verify with the registered public key',
        'The token was altered or signed by another key; the user should check that the k3.public registered here is the one `cargo-pkcs11-agent pubkey` prints',
        error,
      )
    }
    if (key.outcome.signatureValid === true) {
      const claim = error instanceof ClaimValidationError ? error.claim : undefined
      fail(
        claim === 'iat' ? 'IAT_INVALID' : 'CLAIMS_INVALID',
        claim === undefined
          ? 'the token message is not a JSON object'
          : `the token claim \`${claim}\` is not valid`,
        'The signer produced claims no RFC 3231 registry accepts; report the client that made this token',
        error,
      )
    }
    fail('TOKEN_MALFORMED', error instanceof Error ? error.message : String(error), FORMAT_REMEDY, error)
  }
  const highS = isHighS(parsed.signature)
  if (highS && options.strictLowS === true) {
    fail(
      'SIGNATURE_HIGH_S',
      'the token signature has a high S value (s > n/2)',
      'This registry requires low-S signatures; cargo-pkcs11-agent always emits low S, cargo:paseto (cargo 1.95) does not — use a provider that normalises S',
    )
  }
  return { message: new Uint8Array(parsed.message), footer: new Uint8Array(parsed.footer), claims, highS }
}
