import assert from 'node:assert/strict'
import { createECDH, generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify } from 'node:crypto'
import { test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import {
  P384,
  compressPoint,
  decompressPoint,
  isP384EcParams,
  publicKeyFromDevice,
  publicKeyObject,
} from '../../src/keys/point.js'
import { isHighS, normalizeSignature, verifySignature } from '../../src/keys/signature.js'
import { hex, toHex } from '../helpers/vectors.js'

/** `openssl ecparam -name secp384r1 -param_enc explicit -outform DER`: 347 bytes, the form ykcs11 2.2 returns. */
const P384_EXPLICIT =
  '30820157020101303c06072a8648ce3d0101023100fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff307b0430fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc0430b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef031500a335926aa319a27a1d00896a6773a4827acdac73046104aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f023100ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973020101'
/** Same curve, `-no_seed`. */
const P384_EXPLICIT_NO_SEED =
  '30820140020101303c06072a8648ce3d0101023100fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff30640430fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc0430b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef046104aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f023100ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973020101'
/** `openssl ecparam -name prime256v1 -param_enc explicit -outform DER`. */
const P256_EXPLICIT =
  '3081f7020101302c06072a8648ce3d0101022100ffffffff00000001000000000000000000000000ffffffffffffffffffffffff305b0420ffffffff00000001000000000000000000000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101'

function freshPoint(): { uncompressed: Uint8Array; compressed: Uint8Array } {
  const ecdh = createECDH('secp384r1')
  ecdh.generateKeys()
  return {
    uncompressed: new Uint8Array(ecdh.getPublicKey(null, 'uncompressed')),
    compressed: new Uint8Array(ecdh.getPublicKey(null, 'compressed')),
  }
}

function codeOf(fn: () => unknown): string {
  try {
    fn()
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected AgentError, got ${String(error)}`)
    assert.ok(error.remedy !== undefined && error.remedy.length > 0, 'every error carries a remedy')
    return error.code
  }
  assert.fail('expected an error')
}

test('compressPoint agrees with OpenSSL for many random points (both Y parities)', () => {
  const prefixes = new Set<number>()
  for (let i = 0; i < 50; i++) {
    const { uncompressed, compressed } = freshPoint()
    assert.equal(toHex(compressPoint(uncompressed)), toHex(compressed))
    assert.equal(toHex(decompressPoint(compressed)), toHex(uncompressed))
    prefixes.add(compressed[0] ?? 0)
  }
  assert.deepEqual([...prefixes].sort(), [2, 3])
})

test('publicKeyFromDevice accepts every CKA_EC_POINT form modules return', () => {
  const { uncompressed, compressed } = freshPoint()
  const forms: Record<string, Uint8Array> = {
    'DER OCTET STRING 04 61 04||X||Y (SoftHSM, tpm2-pkcs11)': Uint8Array.from([0x04, 0x61, ...uncompressed]),
    'DER OCTET STRING, long-form length 04 81 61': Uint8Array.from([0x04, 0x81, 0x61, ...uncompressed]),
    'bare 97-byte uncompressed point': uncompressed,
    'bare 49-byte compressed point': compressed,
    'DER OCTET STRING around a compressed point': Uint8Array.from([0x04, 0x31, ...compressed]),
  }
  for (const [label, form] of Object.entries(forms)) {
    assert.equal(toHex(publicKeyFromDevice(form)), toHex(compressed), label)
  }
})

test('publicKeyFromDevice rejects other curves, wrong lengths and points off the curve with KEY_INVALID', () => {
  const p256 = createECDH('prime256v1')
  p256.generateKeys()
  const p256Point = new Uint8Array(p256.getPublicKey())
  assert.equal(
    codeOf(() => publicKeyFromDevice(p256Point)),
    'KEY_INVALID',
  )
  assert.equal(
    codeOf(() => publicKeyFromDevice(Uint8Array.from([0x04, 0x41, ...p256Point]))),
    'KEY_INVALID',
  )
  assert.equal(
    codeOf(() => publicKeyFromDevice(new Uint8Array(0))),
    'KEY_INVALID',
  )
  const { uncompressed } = freshPoint()
  const offCurve = Uint8Array.from(uncompressed)
  offCurve[96] = (offCurve[96] ?? 0) ^ 0x01
  assert.equal(
    codeOf(() => publicKeyFromDevice(offCurve)),
    'KEY_INVALID',
  )
  assert.equal(
    codeOf(() => publicKeyFromDevice(Uint8Array.from([0x04, 0x61, ...offCurve]))),
    'KEY_INVALID',
  )
  // X = p is not a field element.
  const notField = Uint8Array.from([0x02, ...Buffer.from(P384.p.toString(16), 'hex')])
  assert.equal(
    codeOf(() => publicKeyFromDevice(notField)),
    'KEY_INVALID',
  )
})

test('isP384EcParams recognises the named OID and explicit P-384 parameters only', () => {
  assert.equal(isP384EcParams(hex('06052b81040022')), true)
  assert.equal(hex(P384_EXPLICIT).length, 347)
  assert.equal(isP384EcParams(hex(P384_EXPLICIT)), true)
  assert.equal(isP384EcParams(hex(P384_EXPLICIT_NO_SEED)), true)
  assert.equal(isP384EcParams(hex('06082a8648ce3d030107')), false, 'P-256 OID')
  assert.equal(isP384EcParams(hex('06052b81040023')), false, 'P-521 OID')
  assert.equal(isP384EcParams(hex(P256_EXPLICIT)), false, 'explicit P-256')
  assert.equal(isP384EcParams(hex('0500')), false, 'implicitCA NULL')
  assert.equal(isP384EcParams(new Uint8Array(0)), false)
  // Wrong order inside otherwise valid explicit parameters.
  const tampered = hex(P384_EXPLICIT)
  tampered[tampered.length - 5] = (tampered[tampered.length - 5] ?? 0) ^ 0x01
  assert.equal(isP384EcParams(tampered), false, 'order changed')
  const truncated = hex(P384_EXPLICIT).subarray(0, 300)
  assert.equal(isP384EcParams(truncated), false, 'truncated')
})

test('normalizeSignature: raw and DER from node:crypto give a verifying low-S r||s', () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
  const compressed = compressPoint(rawPoint(publicKey))
  let sawHigh = 0
  for (let i = 0; i < 64; i++) {
    const message = Buffer.from(`message ${i}`)
    const raw = new Uint8Array(cryptoSign('sha384', message, { key: privateKey, dsaEncoding: 'ieee-p1363' }))
    const der = new Uint8Array(cryptoSign('sha384', message, { key: privateKey, dsaEncoding: 'der' }))
    if (isHighS(raw)) sawHigh++
    const fromRaw = normalizeSignature(raw)
    assert.equal(fromRaw.length, 96)
    assert.equal(isHighS(fromRaw), false)
    assert.equal(verifySignature(compressed, message, fromRaw), true)
    assert.equal(verifySignature(compressed, message, raw), true, 'high-S is still a valid ECDSA signature')
    const fromDer = normalizeSignature(der)
    assert.equal(isHighS(fromDer), false)
    assert.equal(verifySignature(compressed, message, fromDer), true)
    assert.equal(verifySignature(compressed, Buffer.from('other'), fromRaw), false)
  }
  assert.ok(sawHigh > 0, 'random nonces give high-S signatures some of the time')
})

test('normalizeSignature left-pads short DER integers', () => {
  // r = 1, s = 2: DER 30 06 02 01 01 02 01 02
  const sig = normalizeSignature(hex('3006020101020102'))
  assert.equal(toHex(sig), '00'.repeat(47) + '01' + '00'.repeat(47) + '02')
  // s = n - 1 is high and becomes 1.
  const nMinus1 = (P384.n - 1n).toString(16)
  const raw = hex('00'.repeat(47) + '05' + nMinus1)
  assert.equal(isHighS(raw), true)
  assert.equal(toHex(normalizeSignature(raw)), '00'.repeat(47) + '05' + '00'.repeat(47) + '01')
})

test('normalizeSignature rejects what is neither r||s nor DER with SIGNATURE_MALFORMED', () => {
  assert.equal(
    codeOf(() => normalizeSignature(new Uint8Array(64))),
    'SIGNATURE_MALFORMED',
  )
  assert.equal(
    codeOf(() => normalizeSignature(new Uint8Array(95))),
    'SIGNATURE_MALFORMED',
  )
  assert.equal(
    codeOf(() => normalizeSignature(new Uint8Array(96))),
    'SIGNATURE_MALFORMED',
    'r = s = 0',
  )
  assert.equal(
    codeOf(() => normalizeSignature(hex('3006020101020102ff'))),
    'SIGNATURE_MALFORMED',
    'trailing byte',
  )
  assert.equal(
    codeOf(() => normalizeSignature(hex('3006020181020102'))),
    'SIGNATURE_MALFORMED',
    'negative r',
  )
  const nHex = P384.n.toString(16)
  assert.equal(
    codeOf(() => normalizeSignature(hex(nHex + '00'.repeat(47) + '01'))),
    'SIGNATURE_MALFORMED',
    'r = n',
  )
})

test('publicKeyObject gives the same public key as the original, usable by node:crypto', () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
  const key = publicKeyObject(compressPoint(rawPoint(publicKey)))
  assert.equal(key.asymmetricKeyDetails?.namedCurve, 'secp384r1')
  assert.equal(
    toHex(key.export({ format: 'der', type: 'spki' })),
    toHex(publicKey.export({ format: 'der', type: 'spki' })),
  )
  const message = Buffer.from('m')
  const sig = cryptoSign('sha384', message, { key: privateKey, dsaEncoding: 'ieee-p1363' })
  assert.equal(cryptoVerify('sha384', message, { key, dsaEncoding: 'ieee-p1363' }, sig), true)
})

function rawPoint(publicKey: import('node:crypto').KeyObject): Uint8Array {
  const jwk = publicKey.export({ format: 'jwk' })
  return Uint8Array.from([
    0x04,
    ...Buffer.from(jwk.x ?? '', 'base64url'),
    ...Buffer.from(jwk.y ?? '', 'base64url'),
  ])
}
