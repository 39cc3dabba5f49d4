/**
 * PASERK k3 serialisations (paserk types/public.md, types/secret.md, operations/ID.md).
 *
 * Written by hand rather than through the `paseto` package: its PASERK operations are async
 * (WebCrypto digests) and take its own key objects, while the agent, the config loader and the
 * CLI need synchronous string <-> bytes helpers for keys held on a device. Tests check every
 * function against the official vectors and against `paseto`'s own implementation.
 */
import { createHash } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { decodeBase64url, encodeBase64url } from './base64url.js'
import { COMPRESSED_POINT_BYTES, P384, bytesToBigInt } from './point.js'

export const K3_PUBLIC_PREFIX = 'k3.public.'
export const K3_SECRET_PREFIX = 'k3.secret.'
export const K3_PID_PREFIX = 'k3.pid.'
/** ID.md: the identifier is the first 264 bits (33 bytes) of SHA-384. */
const PID_DIGEST_BYTES = 33

const PUBLIC_REMEDY =
  'Give the key as `k3.public.` followed by 66 base64url characters, as printed by `cargo-pkcs11-agent pubkey`'
const SECRET_REMEDY =
  'Give a software test key as `k3.secret.` followed by 64 base64url characters (a 48-byte P-384 scalar)'

function keyInvalid(message: string, remedy: string): AgentError {
  return new AgentError('KEY_INVALID', message, { remedy })
}

/** The strictly decoded bytes of a `k3.public.…` / `k3.secret.…` PASERK; KEY_INVALID for anything else. */
function decodePaserk(s: string, type: 'public' | 'secret', remedy: string): Uint8Array {
  const prefix = type === 'public' ? K3_PUBLIC_PREFIX : K3_SECRET_PREFIX
  if (typeof s !== 'string' || !s.startsWith(prefix))
    throw keyInvalid(`the ${type} key is not a k3.${type} PASERK (PASETO v3, P-384)`, remedy)
  return decodeBase64url(s.slice(prefix.length), `the k3.${type} key`, (m) => keyInvalid(m, remedy))
}

function assertCompressed(pk: Uint8Array): void {
  if (pk.length !== COMPRESSED_POINT_BYTES || (pk[0] !== 0x02 && pk[0] !== 0x03)) {
    throw keyInvalid(
      `a k3 public key is a 49-byte compressed P-384 point starting 02 or 03, got ${pk.length} bytes`,
      PUBLIC_REMEDY,
    )
  }
}

function assertScalar(scalar: Uint8Array): void {
  if (scalar.length !== P384.size) {
    throw keyInvalid(`a k3 secret key is exactly 48 bytes, got ${scalar.length}`, SECRET_REMEDY)
  }
  const d = bytesToBigInt(scalar)
  if (d <= 0n || d >= P384.n)
    throw keyInvalid('the k3 secret scalar is outside 1..n-1 for P-384', SECRET_REMEDY)
}

/**
 * The 49-byte compressed point as `k3.public.…`.
 *
 * @example
 * ```ts
 * console.log(k3Public(signer.publicKey)) // k3.public.A… (76 characters)
 * ```
 */
export function k3Public(pk49: Uint8Array): string {
  assertCompressed(pk49)
  return K3_PUBLIC_PREFIX + encodeBase64url(pk49)
}

/**
 * `k3.public.…` to the 49-byte compressed point; KEY_INVALID for anything else.
 *
 * @example
 * ```ts
 * const point = parseK3Public(registeredKey) // validate a key when a user registers it
 * ```
 */
export function parseK3Public(s: string): Uint8Array {
  const pk = decodePaserk(s, 'public', PUBLIC_REMEDY)
  assertCompressed(pk)
  return pk
}

/**
 * `k3.pid.` + b64u(SHA-384("k3.pid." || "k3.public.…")[0..33]) — the header is hashed with the whole
 * PASERK. This is the footer's `kip`, the id a registry files a registered key under.
 *
 * @example
 * ```ts
 * keysByKip.set(k3Pid(registeredKey), registeredKey)
 * ```
 */
export function k3Pid(key: Uint8Array | string): string {
  const paserk = typeof key === 'string' ? k3Public(parseK3Public(key)) : k3Public(key)
  const digest = createHash('sha384')
    .update(K3_PID_PREFIX + paserk, 'ascii')
    .digest()
  return K3_PID_PREFIX + encodeBase64url(digest.subarray(0, PID_DIGEST_BYTES))
}

/** Only for software test keys: a device's private scalar never leaves it. */
export function k3Secret(scalar48: Uint8Array): string {
  assertScalar(scalar48)
  return K3_SECRET_PREFIX + encodeBase64url(scalar48)
}

export function parseK3Secret(s: string): Uint8Array {
  const scalar = decodePaserk(s, 'secret', SECRET_REMEDY)
  assertScalar(scalar)
  return scalar
}
