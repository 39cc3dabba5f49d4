import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { parseK3Public, k3Public } from '../../src/keys/paserk.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { verifyV3Public } from '../../src/verify/paseto.js'
import { verifyToken } from '../../src/verify/verify.js'
import { VECTORS_DIR, hex, v3Vectors, v4Vectors } from '../helpers/vectors.js'

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text)
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes)

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected AgentError, got ${String(error)}`)
    assert.ok((error.remedy ?? '').length > 0)
    return error.code
  }
  assert.fail('expected a rejection')
}

test('the vector copies are unmodified (git blob hashes recorded in test/vectors/README.md)', () => {
  const readme = readFileSync(`${VECTORS_DIR}README.md`, 'utf8')
  const rows = [...readme.matchAll(/^\| `([^`]+)` \| `([0-9a-f]{40})` \|$/gm)]
  assert.equal(rows.length, 7)
  for (const [, file, blob] of rows) {
    const bytes = readFileSync(`${VECTORS_DIR}${file}`)
    const hash = createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex')
    assert.equal(hash, blob, file)
  }
})

const publicVectors = v3Vectors().filter((v) => v.token.startsWith('v3.public.'))

test('the v3 file holds the four public-purpose vectors', () => {
  assert.deepEqual(
    publicVectors.map((v) => v.name),
    ['3-S-1', '3-S-2', '3-S-3', '3-F-2'],
  )
})

for (const v of publicVectors.filter((v) => !v['expect-fail'])) {
  test(`${v.name} verifies, with its footer and implicit assertion, and yields its payload`, async () => {
    const pk = hex(v['public-key'] ?? '')
    const result = await verifyV3Public(v.token, pk, { implicitAssertion: utf8(v['implicit-assertion']) })
    assert.equal(text(result.message), v.payload)
    assert.equal(text(result.footer), v.footer)
    assert.deepEqual(result.claims, JSON.parse(v.payload ?? ''))
    // The vectors were re-signed low-S upstream (commit 32d7406).
    assert.equal(result.highS, false)
    const strict = await verifyV3Public(v.token, pk, {
      implicitAssertion: utf8(v['implicit-assertion']),
      strictLowS: true,
    })
    assert.equal(text(strict.message), v.payload)
    // The same key as a PASERK and as a MemorySigner built from the vector's secret scalar.
    assert.equal(
      k3Public(
        MemorySigner.fromK3Secret(
          `k3.secret.${Buffer.from(hex(v['secret-key'] ?? '')).toString('base64url')}`,
        ).publicKey,
      ),
      k3Public(pk),
    )
  })

  test(`${v.name} fails with a different implicit assertion or another key`, async () => {
    const pk = hex(v['public-key'] ?? '')
    assert.equal(
      await codeOf(verifyV3Public(v.token, pk, { implicitAssertion: utf8(`${v['implicit-assertion']}x`) })),
      'SIGNATURE_INVALID',
    )
    assert.equal(
      await codeOf(verifyV3Public(v.token, MemorySigner.generate().publicKey)),
      'SIGNATURE_INVALID',
    )
  })
}

test('3-F-2 (expect-fail) is rejected', async () => {
  const bad = publicVectors.find((v) => v.name === '3-F-2')
  const good = publicVectors.find((v) => v.name === '3-S-3')
  assert.ok(bad !== undefined && good !== undefined && bad['expect-fail'])
  // Its "key" is a 32-byte local key: not a v3 public key at all.
  assert.equal(
    await codeOf(
      Promise.resolve().then(() =>
        parseK3Public(
          `k3.public.${Buffer.from(hex((bad as unknown as { key: string }).key)).toString('base64url')}`,
        ),
      ),
    ),
    'KEY_INVALID',
  )
  // And no v3.public key verifies it: not the suite's key, not a fresh one.
  for (const pk of [hex(good['public-key'] ?? ''), MemorySigner.generate().publicKey]) {
    assert.equal(
      await codeOf(verifyV3Public(bad.token, pk, { implicitAssertion: utf8(bad['implicit-assertion']) })),
      'SIGNATURE_INVALID',
    )
  }
})

test('v4 tokens and v3.local tokens are refused with TOKEN_WRONG_PURPOSE', async () => {
  const pk = MemorySigner.generate().publicKey
  const others = [...v4Vectors(), ...v3Vectors().filter((v) => !v.token.startsWith('v3.public.'))]
  assert.ok(others.some((v) => v.token.startsWith('v4.public.')))
  for (const v of others) {
    assert.equal(await codeOf(verifyV3Public(v.token, pk)), 'TOKEN_WRONG_PURPOSE', v.name)
    assert.equal(
      await codeOf(
        verifyToken(v.token, { publicKey: pk, url: 'sparse+http://127.0.0.1/index/', operation: 'read' }),
      ),
      'TOKEN_WRONG_PURPOSE',
      v.name,
    )
  }
})
