import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'

import { PublicProtocol } from 'paseto'
import { ImportPublicKeyFactory, VerifyFactory } from 'paseto/v3/public'

import { AgentError } from '../../src/lib/errors.js'
import { k3Pid, parseK3Public } from '../../src/keys/paserk.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken } from '../../src/token/build.js'
import { OPERATIONS, type CrateRef, type Operation } from '../../src/cargo/operation.js'
import { v3PublicPae } from '../../src/token/pae.js'
import { parseV3PublicToken } from '../../src/verify/paseto.js'
import { verifyToken, type VerifyOptions } from '../../src/verify/verify.js'
import { cargoVectors, type CargoVector } from '../helpers/vectors.js'

const vectors = cargoVectors()
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes)

interface Payload {
  iat: string
  sub?: string
  mutation?: string
  name?: string
  vers?: string
  cksum?: string
}

const operationOf = (v: CargoVector): Operation => v.operation.split(' ')[0] as Operation
const payloadOf = (v: CargoVector): Payload => JSON.parse(v.payload) as Payload
const urlOf = (v: CargoVector): string => (JSON.parse(v.footer) as { url: string }).url
const publishCksum = payloadOf(vectors.find((v) => operationOf(v) === 'publish') ?? vectors[0]!).cksum ?? ''

/** Options a registry would pass for `operation`, with this token's crate/version and the capture's cksum. */
function optionsFor(v: CargoVector, operation: Operation): VerifyOptions {
  const p = payloadOf(v)
  const crate: { -readonly [K in keyof CrateRef]: CrateRef[K] } = {}
  if (operation !== 'read') crate.name = p.name ?? 'sample-crate'
  if (operation === 'publish' || operation === 'yank' || operation === 'unyank')
    crate.vers = p.vers ?? '0.1.0'
  if (operation === 'publish') crate.cksum = p.cksum ?? publishCksum
  const options: VerifyOptions = {
    publicKey: v['public-key'],
    url: urlOf(v),
    operation,
    crate,
    checkTime: false,
  }
  if (p.sub !== undefined) options.subject = p.sub
  return options
}

test('the capture holds six cargo 1.95 tokens covering read, publish, yank, owners and sub', () => {
  assert.equal(vectors.length, 6)
  assert.deepEqual(new Set(vectors.map(operationOf)), new Set(['read', 'publish', 'yank', 'owners']))
  assert.ok(vectors.some((v) => payloadOf(v).sub !== undefined))
  assert.ok(vectors.some((v) => v['s-is-high']) && vectors.some((v) => !v['s-is-high']))
})

for (const v of vectors) {
  test(`${v.name}: verifies for ${operationOf(v)} (time check off) and reports high-S as recorded`, async () => {
    const result = await verifyToken(v.token, optionsFor(v, operationOf(v)))
    assert.deepEqual(result.claims, payloadOf(v))
    assert.deepEqual(result.footer, JSON.parse(v.footer))
    assert.equal(result.footer.kip, v.kip)
    assert.equal(k3Pid(v['public-key']), v.kip)
    assert.equal(result.highS, v['s-is-high'])
    // cargo's nanosecond iat is read (to the millisecond).
    assert.equal(result.iat.toISOString(), `${payloadOf(v).iat.slice(0, 23)}Z`)
  })

  test(`${v.name}: fails for every other operation`, async () => {
    for (const operation of OPERATIONS.filter((op) => op !== operationOf(v))) {
      await assert.rejects(verifyToken(v.token, optionsFor(v, operation)), (error: unknown) => {
        assert.ok(error instanceof AgentError)
        const expected = operation === 'read' ? 'UNEXPECTED_CLAIM' : 'MUTATION_MISMATCH'
        assert.equal(error.code, expected, `${v.name} presented for ${operation}`)
        return true
      })
    }
  })

  test(`${v.name}: our PAE is byte-identical to the one cargo signed`, () => {
    const parsed = parseV3PublicToken(v.token)
    assert.equal(text(parsed.message), v.payload)
    assert.equal(text(parsed.footer), v.footer)
    const pae = v3PublicPae(parseK3Public(v['public-key']), parsed.message, parsed.footer)
    assert.equal(createHash('sha384').update(pae).digest('hex'), v['sha384-of-pae-hex'])
  })

  test(`${v.name}: strictLowS refuses it exactly when cargo signed with high S`, async () => {
    const strict = { ...optionsFor(v, operationOf(v)), strictLowS: true }
    if (v['s-is-high']) {
      await assert.rejects(verifyToken(v.token, strict), { code: 'SIGNATURE_HIGH_S' })
    } else {
      assert.equal((await verifyToken(v.token, strict)).highS, false)
    }
  })

  test(`${v.name}: buildToken with the same key writes cargo's footer and message bytes (iat aside)`, async () => {
    const p = payloadOf(v)
    const signer = MemorySigner.fromK3Secret(v['secret-key'])
    const built = await buildToken(signer, {
      indexUrl: urlOf(v),
      operation: operationOf(v),
      crate: {
        ...(p.name === undefined ? {} : { name: p.name }),
        ...(p.vers === undefined ? {} : { vers: p.vers }),
        ...(p.cksum === undefined ? {} : { cksum: p.cksum }),
      },
      subject: p.sub,
    })
    const ours = parseV3PublicToken(built.token)
    assert.equal(text(ours.footer), v.footer, 'footer bytes identical')
    assert.equal(built.kip, v.kip)
    const ourIat = built.claims['iat'] ?? ''
    assert.equal(
      text(ours.message),
      v.payload.replace(p.iat, ourIat),
      'message bytes identical apart from iat',
    )
    // The signed prefix before the message is identical as well, so only iat and the signature differ.
    assert.equal(built.token.split('.').length, v.token.split('.').length)
    assert.equal(built.token.split('.')[3], v.token.split('.')[3])
    await verifyToken(built.token, { ...optionsFor(v, operationOf(v)), checkTime: true, strictLowS: true })
  })
}

test("paseto's built-in v3 verifier also accepts every cargo token, high-S and nanosecond iat included", async () => {
  const paseto = new PublicProtocol(VerifyFactory, ImportPublicKeyFactory)
  for (const v of vectors) {
    const key = await paseto.ImportPublicKey(v['public-key'] as `k3.public.${string}`)
    // cargo's tokens have no `exp`, so a generic PASETO consumer must allow that explicitly.
    await assert.rejects(paseto.Verify(key, v.token), { claim: 'exp' })
    const result = await paseto.Verify(key, v.token, { allowNonExpiring: true })
    assert.deepEqual(result.claims, payloadOf(v), v.name)
  }
})

test('the iat shape matches cargo: RFC 3339 UTC, Z, trimmed fraction', () => {
  for (const v of vectors) assert.match(payloadOf(v).iat, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$/)
})
