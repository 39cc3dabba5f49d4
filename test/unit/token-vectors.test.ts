/**
 * Every token vector in test/vectors/tokens/ (the language-neutral cases of docs/verifying-tokens.md)
 * through the project's verifier: a valid one must verify with exactly its claims, an invalid one must
 * be refused with exactly its code. The vectors and the verifier cannot drift apart.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { test } from 'node:test'

import { VERIFY_CODES } from '../../src/lib/errors.js'
import { k3Pid } from '../../src/keys/paserk.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { VerifyError } from '../../src/verify/errors.js'
import { verifyToken, type VerifyOptions } from '../../src/verify/verify.js'
import { VECTORS_DIR } from '../helpers/vectors.js'

interface TokenVector {
  name: string
  description: string
  token: string
  options: Omit<VerifyOptions, 'now'> & { now: string }
  expect: { valid: true; claims: Record<string, unknown>; highS: boolean } | { valid: false; code: string }
}
interface VectorFile {
  keys: Record<string, { public: string; pid: string; secret: string }>
  tests: TokenVector[]
}

const DIR = `${VECTORS_DIR}tokens/`
const files = readdirSync(DIR).filter((f) => f.endsWith('.json'))

test('the token vector directory has vectors for every refusal code but the registry-side ones', () => {
  assert.ok(files.length > 0)
  const codes = new Set(
    files.flatMap((f) =>
      (JSON.parse(readFileSync(DIR + f, 'utf8')) as VectorFile).tests.flatMap((t) =>
        t.expect.valid ? [] : [t.expect.code],
      ),
    ),
  )
  // TOKEN_REPLAYED and TOKEN_MISSING are the registry's (state, headers), not one token's.
  const uncovered = VERIFY_CODES.filter(
    (c) => !codes.has(c) && c !== 'TOKEN_REPLAYED' && c !== 'TOKEN_MISSING',
  )
  assert.deepEqual(uncovered, [])
})

for (const file of files) {
  const vectors = JSON.parse(readFileSync(DIR + file, 'utf8')) as VectorFile
  test(`${file}: the listed keys are what their PASERKs say`, () => {
    for (const key of Object.values(vectors.keys)) {
      assert.equal(k3Pid(key.public), key.pid)
      assert.equal(k3Pid(MemorySigner.fromK3Secret(key.secret).publicKey), key.pid)
    }
  })
  for (const vector of vectors.tests) {
    test(`${file}: ${vector.name}: ${vector.expect.valid ? 'valid' : vector.expect.code}`, async () => {
      const options: VerifyOptions = { ...vector.options, now: new Date(vector.options.now) }
      if (vector.expect.valid) {
        const result = await verifyToken(vector.token, options)
        assert.deepEqual(result.claims, vector.expect.claims)
        assert.equal(result.highS, vector.expect.highS)
        assert.equal(result.footer.url, vector.options.url)
      } else {
        const code = vector.expect.code
        await assert.rejects(verifyToken(vector.token, options), (error: unknown) => {
          assert.ok(error instanceof VerifyError, `${vector.name}: ${String(error)}`)
          assert.equal(error.code, code, `${vector.name}: ${error.message}`)
          return true
        })
      }
    })
  }
}
