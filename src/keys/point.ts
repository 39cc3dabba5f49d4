/**
 * P-384 public points in every form PKCS#11 modules hand out, reduced to the one form PASETO v3
 * uses: the SEC1 compressed point (49 bytes), which goes into the PAE, `k3.public` and `k3.pid`
 * (PASETO Version3.md §Point Compression; PASERK types/public.md).
 */
import { ECDH, createPublicKey, type KeyObject } from 'node:crypto'

import { AgentError } from '../lib/errors.js'

/** SEC 2 §2.5.1 secp384r1 domain parameters. */
export const P384 = Object.freeze({
  p: 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffffn,
  a: 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffcn,
  b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
  gx: 0xaa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7n,
  n: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
  /** Bytes of a coordinate, a scalar and each signature half. */
  size: 48,
})

export const COMPRESSED_POINT_BYTES = 49
export const UNCOMPRESSED_POINT_BYTES = 97

/** DER of the named-curve OID 1.3.132.0.34 (secp384r1), the usual CKA_EC_PARAMS value. */
export const P384_OID_DER = Uint8Array.from([0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22])
/** id-fieldType prime-field, 1.2.840.10045.1.1 (X9.62). */
const PRIME_FIELD_OID = Uint8Array.from([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x01, 0x01])

const KEY_REMEDY =
  'Use a P-384 (secp384r1) EC key; if the module returned this key, run `cargo-pkcs11-agent doctor` and report the module and device'

function keyInvalid(message: string, cause?: unknown): AgentError {
  return new AgentError('KEY_INVALID', message, { remedy: KEY_REMEDY, cause })
}

export function bytesToBigInt(bytes: Uint8Array): bigint {
  return bytes.length === 0 ? 0n : BigInt(`0x${Buffer.from(bytes).toString('hex')}`)
}

export function bigIntToBytes(value: bigint, length: number): Uint8Array {
  const hex = value.toString(16).padStart(length * 2, '0')
  if (hex.length > length * 2) throw new RangeError(`value does not fit in ${length} bytes`)
  return Uint8Array.from(Buffer.from(hex, 'hex'))
}

/** `04 || X || Y` (97 bytes) -> `02|03 || X` (49 bytes); the prefix carries Y's parity (SEC1 §2.3.3). */
export function compressPoint(uncompressed97: Uint8Array): Uint8Array {
  if (uncompressed97.length !== UNCOMPRESSED_POINT_BYTES || uncompressed97[0] !== 0x04) {
    throw keyInvalid(
      `expected an uncompressed P-384 point (97 bytes starting 04), got ${uncompressed97.length} bytes`,
    )
  }
  const out = new Uint8Array(COMPRESSED_POINT_BYTES)
  out[0] = 0x02 | ((uncompressed97[96] ?? 0) & 1)
  out.set(uncompressed97.subarray(1, 49), 1)
  return out
}

/** The 97-byte point for a compressed one; OpenSSL checks that the point lies on the curve. */
export function decompressPoint(compressed49: Uint8Array): Uint8Array {
  if (
    compressed49.length !== COMPRESSED_POINT_BYTES ||
    (compressed49[0] !== 0x02 && compressed49[0] !== 0x03)
  ) {
    throw keyInvalid(
      `expected a compressed P-384 point (49 bytes starting 02 or 03), got ${compressed49.length} bytes`,
    )
  }
  try {
    return new Uint8Array(
      ECDH.convertKey(Buffer.from(compressed49), 'secp384r1', undefined, undefined, 'uncompressed') as Buffer,
    )
  } catch (cause) {
    throw keyInvalid('the public key is not a point on the P-384 curve', cause)
  }
}

/**
 * CKA_EC_POINT as modules really return it, to the 49-byte compressed point:
 * - DER OCTET STRING around the X9.62 point, `04 61 04||X||Y` (PKCS#11 v2.40 §2.3.3; SoftHSM,
 *   tpm2-pkcs11), also with a long-form length `04 81 61 ...` or around a compressed point;
 * - the bare 97-byte uncompressed point (pre-2.40 modules, ykcs11 on some firmware paths);
 * - the bare 49-byte compressed point.
 * Forms are told apart by total length first, because a bare point also starts with 0x04.
 */
export function publicKeyFromDevice(ecPoint: Uint8Array): Uint8Array {
  const n = ecPoint.length
  const starts = (...bytes: number[]): boolean => bytes.every((byte, i) => ecPoint[i] === byte)
  const compressedAt = (i: number): boolean => ecPoint[i] === 0x02 || ecPoint[i] === 0x03
  let point: Uint8Array
  if (n === UNCOMPRESSED_POINT_BYTES && starts(0x04)) point = ecPoint
  else if (n === COMPRESSED_POINT_BYTES && compressedAt(0)) point = ecPoint
  else if (n === 99 && starts(0x04, 0x61, 0x04)) point = ecPoint.subarray(2)
  else if (n === 100 && starts(0x04, 0x81, 0x61, 0x04)) point = ecPoint.subarray(3)
  else if (n === 51 && starts(0x04, 0x31) && compressedAt(2)) point = ecPoint.subarray(2)
  else {
    throw keyInvalid(
      `CKA_EC_POINT of ${n} bytes (starting ${Buffer.from(ecPoint.subarray(0, 3)).toString('hex')}) is not a P-384 point in any known encoding`,
    )
  }
  const compressed = point.length === UNCOMPRESSED_POINT_BYTES ? compressPoint(point) : Uint8Array.from(point)
  const full = decompressPoint(compressed)
  // For an uncompressed input the round trip proves Y was the curve's Y for X, not any 48 bytes.
  if (point.length === UNCOMPRESSED_POINT_BYTES && !Buffer.from(full).equals(point)) {
    throw keyInvalid('the public point is not on the P-384 curve')
  }
  return compressed
}

/** Decompressing and importing costs ~0.7 ms, more than the ECDSA verify itself; an agent and a
 * registry use a handful of keys, so the last few KeyObjects (immutable) are kept. */
const KEY_OBJECT_CACHE_SIZE = 32
const keyObjects = new Map<string, KeyObject>()

/** A node:crypto verification key for a compressed P-384 point. */
export function publicKeyObject(compressed: Uint8Array): KeyObject {
  const id = Buffer.from(compressed).toString('hex')
  const cached = keyObjects.get(id)
  if (cached !== undefined) return cached
  const full = decompressPoint(compressed)
  const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url')
  const key = createPublicKey({
    key: { kty: 'EC', crv: 'P-384', x: b64(full.subarray(1, 49)), y: b64(full.subarray(49, 97)) },
    format: 'jwk',
  })
  if (keyObjects.size >= KEY_OBJECT_CACHE_SIZE) keyObjects.delete(keyObjects.keys().next().value ?? '')
  keyObjects.set(id, key)
  return key
}

export interface Tlv {
  tag: number
  value: Uint8Array
  end: number
}

/** Minimal DER reader: one TLV at `offset`, definite lengths only (X.690 §8.1.3). */
export function readTlv(der: Uint8Array, offset: number): Tlv | undefined {
  const tag = der[offset]
  let lengthByte = der[offset + 1]
  if (tag === undefined || lengthByte === undefined) return undefined
  let cursor = offset + 2
  let length = lengthByte
  if (lengthByte & 0x80) {
    const count = lengthByte & 0x7f
    if (count === 0 || count > 2) return undefined
    length = 0
    for (let i = 0; i < count; i++) {
      lengthByte = der[cursor++]
      if (lengthByte === undefined) return undefined
      length = (length << 8) | lengthByte
    }
  }
  const end = cursor + length
  if (end > der.length) return undefined
  return { tag, value: der.subarray(cursor, end), end }
}

export function readSequence(der: Uint8Array): Tlv[] | undefined {
  const items: Tlv[] = []
  let offset = 0
  while (offset < der.length) {
    const item = readTlv(der, offset)
    if (item === undefined) return undefined
    items.push(item)
    offset = item.end
  }
  return items
}

/**
 * True when CKA_EC_PARAMS names P-384: either the named-curve OID `06 05 2b 81 04 00 22`
 * (SoftHSM, tpm2-pkcs11) or explicit X9.62 ECParameters carrying P-384's numbers (ykcs11 2.2
 * returns a 347-byte explicit form). For the explicit form the field prime, a, b, the base
 * point's X and the group order are compared with SEC 2's secp384r1 values.
 */
export function isP384EcParams(params: Uint8Array): boolean {
  if (Buffer.from(params).equals(P384_OID_DER)) return true
  const outer = readTlv(params, 0)
  if (outer === undefined || outer.tag !== 0x30 || outer.end !== params.length) return false
  // ECParameters ::= SEQUENCE { version, fieldID, curve, base, order, cofactor OPTIONAL } (X9.62 / RFC 3279 §2.3.5)
  const fields = readSequence(outer.value)
  if (fields === undefined || fields.length < 5) return false
  const [version, fieldId, curve, base, order] = fields as [Tlv, Tlv, Tlv, Tlv, Tlv, ...Tlv[]]
  if (version.tag !== 0x02 || bytesToBigInt(version.value) < 1n) return false
  if (fieldId.tag !== 0x30) return false
  const field = readSequence(fieldId.value)
  if (field?.length !== 2) return false
  const [fieldType, prime] = field as [Tlv, Tlv]
  if (fieldType.tag !== 0x06 || !Buffer.from(fieldType.value).equals(PRIME_FIELD_OID)) return false
  if (prime.tag !== 0x02 || bytesToBigInt(prime.value) !== P384.p) return false
  if (curve.tag !== 0x30) return false
  const coefficients = readSequence(curve.value)
  if (coefficients === undefined || coefficients.length < 2) return false
  const [a, b] = coefficients as [Tlv, Tlv]
  if (a.tag !== 0x04 || b.tag !== 0x04) return false
  if (bytesToBigInt(a.value) !== P384.a || bytesToBigInt(b.value) !== P384.b) return false
  if (base.tag !== 0x04 || base.value.length < COMPRESSED_POINT_BYTES) return false
  if (bytesToBigInt(base.value.subarray(1, 49)) !== P384.gx) return false
  if (order.tag !== 0x02 || bytesToBigInt(order.value) !== P384.n) return false
  const cofactor = fields[5]
  if (cofactor !== undefined && (cofactor.tag !== 0x02 || bytesToBigInt(cofactor.value) !== 1n)) return false
  return true
}
