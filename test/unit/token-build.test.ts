import assert from 'node:assert/strict'
import { test } from 'node:test'

import { PublicProtocol } from 'paseto'
import { ImportPublicKeyFactory, VerifyFactory } from 'paseto/v3/public'

import { AgentError } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'
import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { isHighS } from '../../src/keys/signature.js'
import { MemorySigner } from '../../src/signer/memory.js'
import type { Signer } from '../../src/signer/signer.js'
import { buildToken, type TokenRequest } from '../../src/token/build.js'
import { formatIat, parseIat } from '../../src/token/iat.js'
import { parseV3PublicToken } from '../../src/verify/paseto.js'
import { verifyToken } from '../../src/verify/verify.js'

const pasetoV3 = new PublicProtocol(VerifyFactory, ImportPublicKeyFactory)
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes)
const URL = 'sparse+http://127.0.0.1:38573/index/'
const CKSUM = 'a9317ac0b5061c3a5ef180c72659318c22c6811cac5d911c3a165759a93d1fd1'
const NOW = new Date('2026-11-25T16:07:59.219Z')

test('formatIat writes cargo-style RFC 3339: UTC, Z, fraction trimmed, omitted when zero', () => {
  assert.equal(formatIat(new Date('2026-11-25T16:07:59.219Z')), '2026-11-25T16:07:59.219Z')
  assert.equal(formatIat(new Date('2026-11-25T16:07:59.210Z')), '2026-11-25T16:07:59.21Z')
  assert.equal(formatIat(new Date('2026-11-25T16:07:59.200Z')), '2026-11-25T16:07:59.2Z')
  assert.equal(formatIat(new Date('2026-11-25T16:07:59.000Z')), '2026-11-25T16:07:59Z')
  assert.equal(formatIat(new Date('2026-11-25T16:07:59.001Z')), '2026-11-25T16:07:59.001Z')
  assert.equal(formatIat(new Date('2026-11-25T17:07:59.5+01:00')), '2026-11-25T16:07:59.5Z')
})

test('parseIat reads RFC 3339 in the forms cargo, the RFC and other clients write', () => {
  const cases: Record<string, string> = {
    '2026-11-25T16:07:59.108930757Z': '2026-11-25T16:07:59.108Z',
    '2026-11-25T16:07:59Z': '2026-11-25T16:07:59.000Z',
    '2022-02-28T18:33:24+00:00': '2022-02-28T18:33:24.000Z',
    '2026-11-25T17:07:59.5+01:00': '2026-11-25T16:07:59.500Z',
    '2026-11-25t16:07:59z': '2026-11-25T16:07:59.000Z',
    '2016-12-31T23:59:60Z': '2016-12-31T23:59:59.999Z',
  }
  for (const [input, iso] of Object.entries(cases)) assert.equal(parseIat(input)?.toISOString(), iso, input)
  for (const bad of [
    '2026-11-25 16:07:59Z',
    '2026-11-25T16:07:59',
    '2026-02-30T00:00:00Z',
    '2026-11-25T24:00:00Z',
    '1700000000',
    '2026-11-25T16:07:59.Z',
    '',
  ]) {
    assert.equal(parseIat(bad), undefined, bad)
  }
})

const REQUESTS: Record<string, { request: TokenRequest; payload: string }> = {
  read: { request: { indexUrl: URL, operation: 'read' }, payload: '{"iat":"2026-11-25T16:07:59.219Z"}' },
  'read with sub': {
    request: { indexUrl: URL, operation: 'read', subject: 'team-abc' },
    payload: '{"iat":"2026-11-25T16:07:59.219Z","sub":"team-abc"}',
  },
  publish: {
    request: {
      indexUrl: URL,
      operation: 'publish',
      crate: { name: 'sample-crate', vers: '0.1.0', cksum: CKSUM },
    },
    payload: `{"iat":"2026-11-25T16:07:59.219Z","mutation":"publish","name":"sample-crate","vers":"0.1.0","cksum":"${CKSUM}"}`,
  },
  'publish with sub': {
    request: {
      indexUrl: URL,
      operation: 'publish',
      crate: { name: 'sample-crate', vers: '0.1.0', cksum: CKSUM },
      subject: 's',
    },
    payload: `{"iat":"2026-11-25T16:07:59.219Z","sub":"s","mutation":"publish","name":"sample-crate","vers":"0.1.0","cksum":"${CKSUM}"}`,
  },
  yank: {
    request: { indexUrl: URL, operation: 'yank', crate: { name: 'sample-crate', vers: '0.1.0' } },
    payload: '{"iat":"2026-11-25T16:07:59.219Z","mutation":"yank","name":"sample-crate","vers":"0.1.0"}',
  },
  unyank: {
    request: { indexUrl: URL, operation: 'unyank', crate: { name: 'sample-crate', vers: '0.1.0' } },
    payload: '{"iat":"2026-11-25T16:07:59.219Z","mutation":"unyank","name":"sample-crate","vers":"0.1.0"}',
  },
  'owners with sub': {
    request: { indexUrl: URL, operation: 'owners', crate: { name: 'sample-crate' }, subject: 'team-abc' },
    payload: '{"iat":"2026-11-25T16:07:59.219Z","sub":"team-abc","mutation":"owners","name":"sample-crate"}',
  },
}

test('token bytes are deterministic apart from the signature: exact payload and footer per operation', async () => {
  const signer = MemorySigner.generate()
  const footer = `{"url":"${URL}","kip":"${k3Pid(signer.publicKey)}"}`
  for (const [label, { request, payload }] of Object.entries(REQUESTS)) {
    const first = await buildToken(signer, request, NOW)
    const second = await buildToken(signer, request, NOW)
    const a = parseV3PublicToken(first.token)
    const b = parseV3PublicToken(second.token)
    assert.equal(text(a.message), payload, label)
    assert.equal(text(a.footer), footer, label)
    assert.deepEqual([text(b.message), text(b.footer)], [payload, footer], label)
    assert.deepEqual(first.claims, JSON.parse(payload), label)
    assert.equal(JSON.stringify(first.claims), payload, `${label}: claims keep serialisation order`)
    assert.equal(first.iat.valueOf(), NOW.valueOf())
    assert.equal(first.kip, k3Pid(signer.publicKey))
    assert.ok(first.token.startsWith('v3.public.'))
    assert.equal(isHighS(a.signature), false, `${label}: low-S`)
    // ECDSA nonces are random: same bytes signed, different signatures, both valid.
    assert.notEqual(first.token, second.token)
    for (const token of [first.token, second.token]) {
      await verifyToken(token, {
        publicKey: signer.publicKey,
        url: URL,
        now: NOW,
        strictLowS: true,
        ...expectation(request),
      })
    }
  }
})

function expectation(request: TokenRequest): Pick<TokenRequest, 'operation' | 'crate' | 'subject'> {
  const { operation, crate, subject } = request
  return { operation, crate, subject }
}

test("paseto's own v3.public verifier accepts our tokens and sees only our claims (no exp added)", async () => {
  const signer = MemorySigner.generate()
  const key = await pasetoV3.ImportPublicKey(k3Public(signer.publicKey) as `k3.public.${string}`)
  const { token } = await buildToken(signer, REQUESTS['publish']?.request as TokenRequest)
  const result = await pasetoV3.Verify(key, token, { allowNonExpiring: true })
  assert.deepEqual(Object.keys(result.claims), ['iat', 'mutation', 'name', 'vers', 'cksum'])
})

test('buildToken refuses requests cargo would never send, with REQUEST_INVALID', async () => {
  const signer = MemorySigner.generate()
  const bad: [string, TokenRequest][] = [
    ['publish without cksum', { indexUrl: URL, operation: 'publish', crate: { name: 'a', vers: '1.0.0' } }],
    [
      'publish with upper-case cksum',
      {
        indexUrl: URL,
        operation: 'publish',
        crate: { name: 'a', vers: '1.0.0', cksum: CKSUM.toUpperCase() },
      },
    ],
    ['yank without vers', { indexUrl: URL, operation: 'yank', crate: { name: 'a' } }],
    [
      'yank with cksum',
      { indexUrl: URL, operation: 'yank', crate: { name: 'a', vers: '1.0.0', cksum: CKSUM } },
    ],
    ['owners with vers', { indexUrl: URL, operation: 'owners', crate: { name: 'a', vers: '1.0.0' } }],
    ['read with name', { indexUrl: URL, operation: 'read', crate: { name: 'a' } }],
    ['empty url', { indexUrl: '', operation: 'read' }],
    ['newline in name', { indexUrl: URL, operation: 'owners', crate: { name: 'a\nb' } }],
    ['empty subject', { indexUrl: URL, operation: 'read', subject: '' }],
    ['huge url', { indexUrl: `sparse+http://127.0.0.1/${'x'.repeat(5000)}/`, operation: 'read' }],
    ['unknown operation', { indexUrl: URL, operation: 'login' as TokenRequest['operation'] }],
  ]
  for (const [label, request] of bad) {
    await assert.rejects(buildToken(signer, request), (error: unknown) => {
      assert.ok(error instanceof AgentError, label)
      assert.equal(error.code, 'REQUEST_INVALID', label)
      assert.ok((error.remedy ?? '').length > 0)
      return true
    })
  }
})

test('a token longer than LIMITS.tokenMaxChars is refused before the signer is asked', async () => {
  let asked = 0
  const inner = MemorySigner.generate()
  const counting: Signer = {
    publicKey: inner.publicKey,
    description: 'counts',
    sign: async (m) => {
      asked++
      return await inner.sign(m)
    },
  }
  const long = 'x'.repeat(LIMITS.tokenClaimMaxChars)
  const request: TokenRequest = {
    indexUrl: long,
    operation: 'publish',
    crate: { name: long, vers: long, cksum: CKSUM },
    subject: long,
  }
  await assert.rejects(buildToken(counting, request), {
    code: 'REQUEST_INVALID',
    message: /characters, more than the 8192 accepted/,
  })
  assert.equal(asked, 0)
  // Just under the limit is built, and its real length matches the estimate's bound.
  const fits = await buildToken(counting, {
    indexUrl: URL,
    operation: 'owners',
    crate: { name: 'x'.repeat(2000) },
    subject: 'y'.repeat(2000),
  })
  assert.equal(asked, 1)
  assert.ok(fits.token.length <= LIMITS.tokenMaxChars)
})

test('a Signer failure reaches the caller unchanged', async () => {
  const failing: Signer = {
    publicKey: MemorySigner.generate().publicKey,
    description: 'always fails',
    sign: () => Promise.reject(new AgentError('TOUCH_TIMEOUT', 'no touch', { remedy: 'touch it' })),
  }
  await assert.rejects(buildToken(failing, { indexUrl: URL, operation: 'read' }), { code: 'TOUCH_TIMEOUT' })
})

test('the index URL goes into the footer verbatim (no canonicalisation)', async () => {
  const signer = MemorySigner.generate()
  for (const url of [
    'sparse+https://registry.example/index/',
    'https://registry.example/git-index',
    'file:///tmp/index',
    'sparse+http://127.0.0.1:1/i ndex/',
  ]) {
    const built = await buildToken(signer, { indexUrl: url, operation: 'read' })
    assert.equal((JSON.parse(text(parseV3PublicToken(built.token).footer)) as { url: string }).url, url)
  }
})
