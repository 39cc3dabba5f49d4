import assert from 'node:assert/strict'
import { createPublicKey } from 'node:crypto'
import { test } from 'node:test'

import { PublicProtocol } from 'paseto'
import { PublicKeyIDFactory } from 'paseto/v3/public'

import { AgentError } from '../../src/lib/errors.js'
import { compressPoint } from '../../src/keys/point.js'
import { k3Pid, k3Public, k3Secret, parseK3Public, parseK3Secret } from '../../src/keys/paserk.js'
import { isHighS, verifySignature } from '../../src/keys/signature.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { hex, paserkVectors, toHex } from '../helpers/vectors.js'

const paseto = new PublicProtocol(PublicKeyIDFactory)

function codeOf(fn: () => unknown): string {
  try {
    fn()
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected AgentError, got ${String(error)}`)
    return error.code
  }
  assert.fail('expected an error')
}

test('every k3.public vector: serialise, parse back, and the fail cases are rejected', () => {
  const vectors = paserkVectors('public')
  assert.equal(vectors.length, 3)
  for (const v of vectors) {
    if (v['expect-fail']) {
      assert.equal(
        codeOf(() => k3Public(hex(v.key))),
        'KEY_INVALID',
        v.name,
      )
      continue
    }
    assert.equal(k3Public(hex(v.key)), v.paserk, v.name)
    assert.equal(toHex(parseK3Public(v.paserk ?? '')), v.key, v.name)
  }
})

test('every k3.pid vector, and our pid equals the paseto package one', async () => {
  const vectors = paserkVectors('pid')
  assert.equal(vectors.length, 4)
  for (const v of vectors) {
    if (v['expect-fail']) {
      assert.equal(
        codeOf(() => k3Pid(hex(v.key))),
        'KEY_INVALID',
        v.name,
      )
      continue
    }
    assert.equal(k3Pid(hex(v.key)), v.paserk, v.name)
    const publicPaserk = k3Public(hex(v.key))
    assert.equal(k3Pid(publicPaserk), v.paserk, `${v.name} from the k3.public string`)
    assert.equal(
      await paseto.PublicKeyID(publicPaserk as `k3.public.${string}`),
      v.paserk,
      `${v.name} via paseto`,
    )
  }
})

test('every k3.secret vector, and the derived public key matches the vector PEM', () => {
  const vectors = paserkVectors('secret')
  assert.equal(vectors.length, 5)
  for (const v of vectors) {
    if (v['expect-fail']) {
      assert.equal(
        codeOf(() => k3Secret(hex(v.key))),
        'KEY_INVALID',
        v.name,
      )
      continue
    }
    assert.equal(k3Secret(hex(v.key)), v.paserk, v.name)
    assert.equal(toHex(parseK3Secret(v.paserk ?? '')), v.key, v.name)
    const pem = Buffer.from(v['public-key'] ?? '', 'hex').toString('utf8')
    const jwk = createPublicKey(pem).export({ format: 'jwk' })
    const expected = compressPoint(
      Uint8Array.from([
        0x04,
        ...Buffer.from(jwk.x ?? '', 'base64url'),
        ...Buffer.from(jwk.y ?? '', 'base64url'),
      ]),
    )
    assert.equal(toHex(MemorySigner.fromK3Secret(v.paserk ?? '').publicKey), toHex(expected), v.name)
  }
})

test('the RFC 3231 example key gives the RFC key id', () => {
  // RFC 3231 / cargo's login.rs test key, in docs/cargo-protocol.md §4.
  const pub = 'k3.public.AmDwjlyf8jAV3gm5Z7Kz9xAOcsKslt_Vwp5v-emjFzBHLCtcANzTaVEghTNEMj9PkQ'
  assert.equal(k3Pid(pub), 'k3.pid.QB3WNBP-5j-0XQV2MOuvuOcLlJ8uz-pmqtIZus1x3YTu')
})

test('PASERK parsers reject wrong versions, padding, bad characters and wrong sizes', () => {
  const good = 'k3.public.AnBxcnN0dXZ3eHl6e3x9fn-AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2enw'
  const cases = [
    good.replace('k3.', 'k4.'),
    good.replace('k3.public.', 'k3.secret.'),
    `${good}==`,
    good.replace('-', '+'),
    good.slice(0, -1),
    good.slice(0, -1) + 'x', // non-zero trailing bits
    'k3.public.' + Buffer.alloc(49, 0x04).toString('base64url'), // not 02/03
  ]
  for (const text of cases)
    assert.equal(
      codeOf(() => parseK3Public(text)),
      'KEY_INVALID',
      text,
    )
  assert.equal(
    codeOf(() => parseK3Secret('k3.secret.' + Buffer.alloc(48).toString('base64url'))),
    'KEY_INVALID',
    'zero scalar',
  )
  assert.equal(
    codeOf(() => parseK3Secret('k4.secret.' + Buffer.alloc(48, 1).toString('base64url'))),
    'KEY_INVALID',
  )
  assert.equal(
    codeOf(() => k3Pid('k3.pid.mL4lGxNG7cz128frmpn83_76V9C7LmV2sHAMtJ8vIdwG')),
    'KEY_INVALID',
  )
})

test('a secret key never appears in the error raised for it', () => {
  const secret = 'k3.secret.' + Buffer.alloc(47, 7).toString('base64url')
  try {
    parseK3Secret(secret)
    assert.fail('expected an error')
  } catch (error) {
    assert.ok(error instanceof AgentError)
    assert.equal(error.describe().includes(secret.slice(10)), false)
  }
})

test('MemorySigner round-trips through k3.secret and signs low-S', async () => {
  const signer = MemorySigner.generate()
  const again = MemorySigner.fromK3Secret(signer.exportK3Secret())
  assert.equal(toHex(again.publicKey), toHex(signer.publicKey))
  assert.equal(signer.publicKey.length, 49)
  assert.match(signer.description, /^in-memory P-384 key k3\.public\./)
  for (let i = 0; i < 32; i++) {
    const message = Buffer.from(`m${i}`)
    const sig = await again.sign(message)
    assert.equal(isHighS(sig), false)
    assert.equal(verifySignature(signer.publicKey, message, sig), true)
  }
})
