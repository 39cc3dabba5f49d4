/**
 * A second, independent check of a v3.public token: PASETO's PAE and ECDSA P-384 with node:crypto
 * alone, none of the project's token or verify code, so a bug shared by our signer and our verifier
 * cannot make a device test pass. Public keys come from raw points through JWK, not src/keys.
 */
import assert from 'node:assert/strict'
import { createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto'

/** PASETO PAE (Version3.md, common.md §PAE): LE64 count, then LE64 length + bytes per piece. */
function pae(pieces: Uint8Array[]): Buffer {
  const le64 = (n: number): Buffer => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(n))
    return b
  }
  return Buffer.concat([le64(pieces.length), ...pieces.flatMap((p) => [le64(p.length), Buffer.from(p)])])
}

/** Checks a v3.public token with node:crypto alone: PAE(pk, h, m, f, "") signed r||s over SHA-384. */
export function verifyWithNodeCrypto(token: string, publicKey49: Uint8Array, key: KeyObject): boolean {
  const [version, purpose, body, footer] = token.split('.')
  assert.equal(`${version}.${purpose}.`, 'v3.public.')
  const raw = Buffer.from(body ?? '', 'base64url')
  const message = raw.subarray(0, raw.length - 96)
  const signature = raw.subarray(raw.length - 96)
  const signed = pae([
    publicKey49,
    Buffer.from('v3.public.'),
    message,
    Buffer.from(footer ?? '', 'base64url'),
    Buffer.alloc(0),
  ])
  return cryptoVerify('sha384', signed, { key, dsaEncoding: 'ieee-p1363' }, signature)
}

/** A P-384 public key from its uncompressed SEC1 point (04 || X || Y), through JWK. */
export function p384PublicKey(uncompressed: Uint8Array): KeyObject {
  const point = Buffer.from(uncompressed)
  assert.equal(point.length, 97, 'an uncompressed P-384 point is 97 bytes')
  return createPublicKey({
    key: {
      kty: 'EC',
      crv: 'P-384',
      x: point.subarray(1, 49).toString('base64url'),
      y: point.subarray(49).toString('base64url'),
    },
    format: 'jwk',
  })
}
