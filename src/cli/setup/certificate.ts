/**
 * A self-signed X.509 certificate for a PIV slot, for clients that find PIV keys only through the
 * slot's certificate (OpenSC, native-config/devices.md "YubiKey: setup"). The card signs the
 * TBSCertificate itself (ecdsa-with-SHA384, RFC 5758 section 3.2) through ykcs11, so the certificate
 * proves nothing more than the key's possession; registries trust the attestation, not this.
 * DER per RFC 5280 section 4.1 (X.690 definite lengths).
 */
import { createHash, randomBytes } from 'node:crypto'

import { publicKeyObject } from '../../keys/point.js'
import { normalizeSignature } from '../../keys/signature.js'

const tlv = (tag: number, ...content: Uint8Array[]): Buffer => {
  const body = Buffer.concat(content)
  const n = body.length
  const length =
    n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff])
  return Buffer.concat([Buffer.from([tag]), length, body])
}
const seq = (...c: Uint8Array[]): Buffer => tlv(0x30, ...c)
/** A positive INTEGER from big-endian bytes (leading zeros dropped, a 00 added when the top bit is set). */
const integer = (bytes: Uint8Array): Buffer => {
  let b = Buffer.from(bytes)
  while (b.length > 1 && b[0] === 0 && (b[1] ?? 0) < 0x80) b = b.subarray(1)
  return tlv(0x02, (b[0] ?? 0) >= 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b)
}
const ECDSA_WITH_SHA384 = seq(Buffer.from('06082a8648ce3d040303', 'hex'))
const CN = Buffer.from('0603550403', 'hex')
const name = (cn: string): Buffer => seq(tlv(0x31, seq(CN, tlv(0x0c, Buffer.from(cn, 'utf8')))))
/** UTCTime YYMMDDHHMMSSZ (RFC 5280 section 4.1.2.5.1: years before 2050). */
const utcTime = (d: Date): Buffer =>
  tlv(0x17, Buffer.from(d.toISOString().replace(/[-:T]/g, '').slice(2, 14) + 'Z'))

/**
 * `sign` receives the SHA-384 digest of the TBSCertificate and returns the card's signature (DER or
 * r||s); the result is the certificate's DER.
 */
export async function selfSignedCertificate(
  publicKey: Uint8Array,
  commonName: string,
  sign: (digest: Uint8Array) => Promise<Uint8Array>,
  now = new Date(),
): Promise<Buffer> {
  const serial = randomBytes(16)
  serial[0] = (serial[0] ?? 0) & 0x7f
  const until = new Date(Date.UTC(2049, 11, 31, 23, 59, 59))
  const spki = publicKeyObject(publicKey).export({ type: 'spki', format: 'der' })
  const tbs = seq(
    tlv(0xa0, integer(Buffer.from([2]))),
    integer(serial),
    ECDSA_WITH_SHA384,
    name(commonName),
    seq(utcTime(now), utcTime(until)),
    name(commonName),
    spki,
  )
  const rs = normalizeSignature(await sign(createHash('sha384').update(tbs).digest()))
  const signature = seq(integer(rs.subarray(0, 48)), integer(rs.subarray(48)))
  return seq(tbs, ECDSA_WITH_SHA384, tlv(0x03, Buffer.from([0]), signature))
}
