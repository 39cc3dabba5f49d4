/**
 * ECDSA P-384 signatures in the shape PASETO v3.public needs: `r || s`, 48 bytes each, big-endian
 * (Version3.md §Sign step 5), with s in the low half.
 */
import { verify as cryptoVerify } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { P384, bigIntToBytes, bytesToBigInt, publicKeyObject, readSequence, readTlv } from './point.js'

export const SIGNATURE_BYTES = 96
const HALF_N = P384.n >> 1n

function malformed(message: string): AgentError {
  return new AgentError('SIGNATURE_MALFORMED', message, {
    remedy:
      'The PKCS#11 module returned a signature that is neither r||s nor DER; run `cargo-pkcs11-agent doctor` and report the module and device',
  })
}

/** DER `SEQUENCE { INTEGER r, INTEGER s }` (X9.62 ECDSA-Sig-Value) -> [r, s], or undefined. */
function parseDerSignature(der: Uint8Array): [bigint, bigint] | undefined {
  const outer = readTlv(der, 0)
  if (outer?.tag !== 0x30 || outer.end !== der.length) return undefined
  const integers = readSequence(outer.value)
  if (integers?.length !== 2) return undefined
  const [r, s] = integers.map(({ tag, value }) =>
    tag === 0x02 && value.length > 0 && value.length <= P384.size + 1 && ((value[0] ?? 0) & 0x80) === 0
      ? bytesToBigInt(value)
      : undefined,
  )
  return r === undefined || s === undefined ? undefined : [r, s]
}

/**
 * Raw `r || s` (96 bytes, PKCS#11 v2.40 §2.3.1 "EC signatures") or DER (some modules, and what a
 * PIV card answers) -> 96-byte `r || s` with s replaced by n - s when s > n/2. Both (r, s) and
 * (r, n - s) verify for the same key and digest; strict verifiers (and the PASETO test-vector
 * maintainers since commit 32d7406) accept only the low one.
 */
export function normalizeSignature(sig: Uint8Array): Uint8Array {
  let pair = parseDerSignature(sig)
  if (pair === undefined) {
    if (sig.length !== SIGNATURE_BYTES) {
      throw malformed(
        `the device signature has ${sig.length} bytes and is not DER; a P-384 r||s signature has 96`,
      )
    }
    pair = [bytesToBigInt(sig.subarray(0, P384.size)), bytesToBigInt(sig.subarray(P384.size))]
  }
  const [r, s] = pair
  if (r <= 0n || r >= P384.n || s <= 0n || s >= P384.n) {
    throw malformed('the device signature has r or s outside 1..n-1 for P-384')
  }
  const out = new Uint8Array(SIGNATURE_BYTES)
  out.set(bigIntToBytes(r, P384.size), 0)
  out.set(bigIntToBytes(s > HALF_N ? P384.n - s : s, P384.size), P384.size)
  return out
}

/** s > n/2: valid ECDSA, but rejected by low-S-only verifiers. cargo 1.95 emits these. */
export function isHighS(sig96: Uint8Array): boolean {
  if (sig96.length !== SIGNATURE_BYTES)
    throw malformed(`expected a 96-byte r||s signature, got ${sig96.length} bytes`)
  return bytesToBigInt(sig96.subarray(P384.size)) > HALF_N
}

/** ECDSA P-384 over SHA-384(message) with the compressed public key; accepts high and low S like cargo. */
export function verifySignature(compressedPk: Uint8Array, message: Uint8Array, sig96: Uint8Array): boolean {
  if (sig96.length !== SIGNATURE_BYTES) return false
  return cryptoVerify(
    'sha384',
    message,
    { key: publicKeyObject(compressedPk), dsaEncoding: 'ieee-p1363' },
    sig96,
  )
}
