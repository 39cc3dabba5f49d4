import assert from 'node:assert/strict'
import { randomBytes, randomInt, verify as cryptoVerify } from 'node:crypto'
import { test } from 'node:test'

import { PublicProtocol } from 'paseto'
import { ImportPublicKeyFactory, VerifyFactory } from 'paseto/v3/public'

import { k3Public } from '../../src/keys/paserk.js'
import { publicKeyObject } from '../../src/keys/point.js'
import { isHighS } from '../../src/keys/signature.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken, type TokenRequest } from '../../src/token/build.js'
import { OPERATIONS, type CrateRef } from '../../src/cargo/operation.js'
import { v3PublicPae } from '../../src/token/pae.js'
import { parseV3PublicToken } from '../../src/verify/paseto.js'
import { verifyToken } from '../../src/verify/verify.js'

const pasetoV3 = new PublicProtocol(VerifyFactory, ImportPublicKeyFactory)
const COUNT = 1000

/** Printable text with JSON-significant characters and non-ASCII, so escaping is exercised too. */
function randomText(max: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+/:"\\ éλ中🦀'
  const chars = [...alphabet]
  let out = ''
  const length = randomInt(1, max + 1)
  for (let i = 0; i < length; i++) out += chars[randomInt(chars.length)]
  return out
}

function randomRequest(): TokenRequest {
  const operation = OPERATIONS[randomInt(OPERATIONS.length)] ?? 'read'
  const request: TokenRequest = {
    indexUrl: `sparse+http://127.0.0.1:${randomInt(1, 65536)}/${randomText(20)}/`,
    operation,
  }
  if (randomInt(2) === 1) request.subject = randomText(16)
  const crate: { -readonly [K in keyof CrateRef]: CrateRef[K] } = {}
  if (operation !== 'read') crate.name = randomText(32)
  if (operation === 'publish' || operation === 'yank' || operation === 'unyank')
    crate.vers = `${randomInt(100)}.${randomInt(100)}.${randomInt(100)}${randomInt(3) === 0 ? `-${randomText(6)}` : ''}`
  if (operation === 'publish') crate.cksum = randomBytes(32).toString('hex')
  if (operation !== 'read') request.crate = crate
  return request
}

test(`${COUNT} tokens from random claims verify with our verifier, paseto's v3 verifier and node:crypto, all low-S`, async () => {
  const signers = [MemorySigner.generate(), MemorySigner.generate(), MemorySigner.generate()]
  const pasetoKeys = await Promise.all(
    signers.map((s) => pasetoV3.ImportPublicKey(k3Public(s.publicKey) as `k3.public.${string}`)),
  )
  const keyObjects = signers.map((s) => publicKeyObject(s.publicKey))
  const seen = new Set<string>()
  for (let i = 0; i < COUNT; i++) {
    const which = randomInt(signers.length)
    const signer = signers[which] as MemorySigner
    const request = randomRequest()
    seen.add(request.operation)
    const built = await buildToken(signer, request)

    const ours = await verifyToken(built.token, {
      publicKey: k3Public(signer.publicKey),
      url: request.indexUrl,
      operation: request.operation,
      crate: request.crate,
      subject: request.subject,
      strictLowS: true,
    })
    assert.deepEqual(ours.claims, built.claims)
    assert.equal(ours.highS, false)

    const theirs = await pasetoV3.Verify(
      pasetoKeys[which] as Parameters<typeof pasetoV3.Verify>[0],
      built.token,
      {
        allowNonExpiring: true,
        footer: new TextEncoder().encode(JSON.stringify({ url: request.indexUrl, kip: built.kip })),
      },
    )
    assert.deepEqual(theirs.claims, built.claims)

    const parsed = parseV3PublicToken(built.token)
    assert.equal(isHighS(parsed.signature), false)
    const pae = v3PublicPae(signer.publicKey, parsed.message, parsed.footer)
    assert.equal(
      cryptoVerify(
        'sha384',
        pae,
        { key: keyObjects[which] as ReturnType<typeof publicKeyObject>, dsaEncoding: 'ieee-p1363' },
        parsed.signature,
      ),
      true,
    )
  }
  assert.deepEqual([...seen].sort(), [...OPERATIONS].sort())
})
