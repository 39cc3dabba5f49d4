import assert from 'node:assert/strict'
import { before, test } from 'node:test'

import { PublicProtocol } from 'paseto'
import { ImportSecretKeyFactory, SignFactory } from 'paseto/v3/public'

import type { CrateRef } from '../../src/cargo/operation.js'
import { AgentError, VERIFY_CODES, type VerifyCode } from '../../src/lib/errors.js'
import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken } from '../../src/token/build.js'
import { v3PublicPae } from '../../src/token/pae.js'
import { inspectToken, verifyToken, type VerifyOptions } from '../../src/verify/verify.js'
import { cargoVectors, v4Vectors } from '../helpers/vectors.js'

/** An independent signer (paseto's built-in WebCrypto v3.public) to craft tokens our builder would refuse to make. */
const pasetoV3 = new PublicProtocol(SignFactory, ImportSecretKeyFactory)
const URL = 'sparse+http://127.0.0.1:38573/index/'
const CKSUM = 'a9317ac0b5061c3a5ef180c72659318c22c6811cac5d911c3a165759a93d1fd1'
const NOW = new Date('2026-11-25T16:00:00.000Z')
const b64u = (text: string | Uint8Array): string => Buffer.from(text).toString('base64url')

let alice: MemorySigner
let mallory: MemorySigner

async function craft(
  signer: MemorySigner,
  claims: Record<string, unknown>,
  footer: Record<string, unknown> | string | null,
): Promise<string> {
  const key = await pasetoV3.ImportSecretKey(signer.exportK3Secret() as `k3.secret.${string}`)
  const options: { addIssuedAt: false; nonExpiring: true; footer?: Uint8Array } = {
    addIssuedAt: false,
    nonExpiring: true,
  }
  if (footer !== null)
    options.footer = new TextEncoder().encode(typeof footer === 'string' ? footer : JSON.stringify(footer))
  return await pasetoV3.Sign(key, claims as Record<string, string>, options)
}

/** Raw framing for messages paseto refuses to produce (not a JSON object). */
async function frameRaw(signer: MemorySigner, message: string, footer: string): Promise<string> {
  const m = new TextEncoder().encode(message)
  const f = new TextEncoder().encode(footer)
  const sig = await signer.sign(v3PublicPae(signer.publicKey, m, f))
  return `v3.public.${b64u(Uint8Array.from([...m, ...sig]))}.${b64u(f)}`
}

const footerOf = (signer: MemorySigner, url = URL): Record<string, string> => ({
  url,
  kip: k3Pid(signer.publicKey),
})
const iat = (offsetSeconds: number): string => new Date(NOW.valueOf() + offsetSeconds * 1000).toISOString()

/** Options for `operation` on crate foo 1.0.0; the fields of `extra.crate` replace the defaults one by one. */
function base(operation: VerifyOptions['operation'], extra: Partial<VerifyOptions> = {}): VerifyOptions {
  const o: VerifyOptions = { publicKey: k3Public(alice.publicKey), url: URL, operation, now: NOW }
  let crate: CrateRef | undefined
  if (operation === 'publish') crate = { name: 'foo', vers: '1.0.0', cksum: CKSUM }
  if (operation === 'yank' || operation === 'unyank') crate = { name: 'foo', vers: '1.0.0' }
  if (operation === 'owners') crate = { name: 'foo' }
  Object.assign(o, extra)
  if (crate !== undefined || extra.crate !== undefined) o.crate = { ...crate, ...extra.crate }
  return o
}

interface Case {
  name: string
  token: () => Promise<string>
  options: () => VerifyOptions
  code: VerifyCode
}

function flipBase64Char(part: string, index: number): string {
  const c = part[index] === 'A' ? 'B' : 'A'
  return part.slice(0, index) + c + part.slice(index + 1)
}

const publishToken = async (): Promise<string> =>
  (
    await buildToken(
      alice,
      { indexUrl: URL, operation: 'publish', crate: { name: 'foo', vers: '1.0.0', cksum: CKSUM } },
      NOW,
    )
  ).token
const readToken = async (): Promise<string> =>
  (await buildToken(alice, { indexUrl: URL, operation: 'read' }, NOW)).token

const CASES: Case[] = [
  {
    name: 'token signed by another key',
    token: async () => (await buildToken(mallory, { indexUrl: URL, operation: 'read' }, NOW)).token,
    options: () => base('read'),
    code: 'KEY_ID_MISMATCH',
  },
  {
    name: 'another key claiming our kip',
    token: () => craft(mallory, { iat: iat(0) }, footerOf(alice)),
    options: () => base('read'),
    code: 'SIGNATURE_INVALID',
  },
  {
    name: 'token for another registry url',
    token: async () =>
      (await buildToken(alice, { indexUrl: 'sparse+http://127.0.0.1:9/index/', operation: 'read' }, NOW))
        .token,
    options: () => base('read'),
    code: 'URL_MISMATCH',
  },
  {
    name: 'url without the sparse+ prefix',
    token: async () =>
      (await buildToken(alice, { indexUrl: URL.replace('sparse+', ''), operation: 'read' }, NOW)).token,
    options: () => base('read'),
    code: 'URL_MISMATCH',
  },
  {
    name: 'stale iat (61 s, window 60 s)',
    token: readToken,
    options: () => base('read', { now: new Date(NOW.valueOf() + 61_000) }),
    code: 'IAT_STALE',
  },
  {
    name: 'stale iat beyond a 15-minute window',
    token: readToken,
    options: () => base('read', { maxAgeSeconds: 900, now: new Date(NOW.valueOf() + 901_000) }),
    code: 'IAT_STALE',
  },
  {
    name: 'iat 31 s in the future (skew 30 s)',
    token: readToken,
    options: () => base('read', { now: new Date(NOW.valueOf() - 31_000) }),
    code: 'IAT_FUTURE',
  },
  {
    name: 'publish token replayed for another crate',
    token: publishToken,
    options: () => base('publish', { crate: { name: 'bar' } }),
    code: 'NAME_MISMATCH',
  },
  {
    name: 'publish token replayed for another version',
    token: publishToken,
    options: () => base('publish', { crate: { vers: '1.0.1' } }),
    code: 'VERS_MISMATCH',
  },
  {
    name: 'publish token replayed for another upload',
    token: publishToken,
    options: () => base('publish', { crate: { cksum: CKSUM.replace('a9', 'b9') } }),
    code: 'CKSUM_MISMATCH',
  },
  {
    name: 'publish token presented for yank',
    token: publishToken,
    options: () => base('yank'),
    code: 'MUTATION_MISMATCH',
  },
  {
    name: 'read token presented for publish',
    token: readToken,
    options: () => base('publish'),
    code: 'MUTATION_MISMATCH',
  },
  {
    name: 'mutation claims on a read (publish token used to read)',
    token: publishToken,
    options: () => base('read'),
    code: 'UNEXPECTED_CLAIM',
  },
  {
    name: 'a lone `name` claim on a read token',
    token: () => craft(alice, { iat: iat(0), name: 'foo' }, footerOf(alice)),
    options: () => base('read'),
    code: 'UNEXPECTED_CLAIM',
  },
  {
    name: 'vers on an owners token',
    token: () =>
      craft(alice, { iat: iat(0), mutation: 'owners', name: 'foo', vers: '1.0.0' }, footerOf(alice)),
    options: () => base('owners'),
    code: 'UNEXPECTED_CLAIM',
  },
  {
    name: 'cksum on a yank token',
    token: () =>
      craft(
        alice,
        { iat: iat(0), mutation: 'yank', name: 'foo', vers: '1.0.0', cksum: CKSUM },
        footerOf(alice),
      ),
    options: () => base('yank'),
    code: 'UNEXPECTED_CLAIM',
  },
  {
    name: 'tampered payload',
    token: async () => {
      const [h, p, payload, footer] = (await publishToken()).split('.') as [string, string, string, string]
      return [h, p, flipBase64Char(payload, 20), footer].join('.')
    },
    options: () => base('publish'),
    code: 'SIGNATURE_INVALID',
  },
  {
    name: 'tampered signature',
    token: async () => {
      const [h, p, payload, footer] = (await publishToken()).split('.') as [string, string, string, string]
      return [h, p, flipBase64Char(payload, payload.length - 40), footer].join('.')
    },
    options: () => base('publish'),
    code: 'SIGNATURE_INVALID',
  },
  {
    name: 'tampered footer (url swapped, kip kept)',
    token: async () => {
      const [h, p, payload] = (
        await buildToken(alice, { indexUrl: 'sparse+http://127.0.0.1:9/index/', operation: 'read' }, NOW)
      ).token.split('.') as [string, string, string]
      return [h, p, payload, b64u(JSON.stringify(footerOf(alice)))].join('.')
    },
    options: () => base('read'),
    code: 'SIGNATURE_INVALID',
  },
  {
    name: '`kid`-only footer (RFC text)',
    token: () => craft(alice, { iat: iat(0) }, { url: URL, kid: k3Pid(alice.publicKey) }),
    options: () => base('read'),
    code: 'FOOTER_INVALID',
  },
  {
    name: 'footer without url',
    token: () => craft(alice, { iat: iat(0) }, { kip: k3Pid(alice.publicKey) }),
    options: () => base('read'),
    code: 'FOOTER_INVALID',
  },
  {
    name: 'no footer at all',
    token: () => craft(alice, { iat: iat(0) }, null),
    options: () => base('read'),
    code: 'FOOTER_INVALID',
  },
  {
    name: 'footer not JSON',
    token: () => craft(alice, { iat: iat(0) }, 'kip'),
    options: () => base('read'),
    code: 'FOOTER_INVALID',
  },
  {
    name: 'base64 padding on the payload',
    token: async () => {
      const [h, p, payload, footer] = (await readToken()).split('.') as [string, string, string, string]
      return [h, p, `${payload}==`, footer].join('.')
    },
    options: () => base('read'),
    code: 'TOKEN_ENCODING',
  },
  {
    name: 'standard base64 characters',
    token: async () => {
      const [h, p, payload, footer] = (await readToken()).split('.') as [string, string, string, string]
      return [h, p, `${payload.slice(0, 10)}+${payload.slice(11)}`, footer].join('.')
    },
    options: () => base('read'),
    code: 'TOKEN_ENCODING',
  },
  {
    name: 'a v4.public token',
    token: async () => v4Vectors().find((v) => v.token.startsWith('v4.public.'))?.token ?? '',
    options: () => base('read'),
    code: 'TOKEN_WRONG_PURPOSE',
  },
  {
    name: 'a bearer token',
    token: async () => 'cio1234567890abcdef',
    options: () => base('read'),
    code: 'TOKEN_MALFORMED',
  },
  {
    name: 'five parts',
    token: async () => `${await readToken()}.eyJ9`,
    options: () => base('read'),
    code: 'TOKEN_MALFORMED',
  },
  {
    name: 'payload shorter than a signature',
    token: async () => `v3.public.${b64u(new Uint8Array(96))}.${b64u('{}')}`,
    options: () => base('read'),
    code: 'TOKEN_MALFORMED',
  },
  {
    name: 'message not a JSON object',
    token: () => frameRaw(alice, '["iat"]', JSON.stringify(footerOf(alice))),
    options: () => base('read'),
    code: 'CLAIMS_INVALID',
  },
  {
    name: 'sub that is not a string',
    token: () => frameRaw(alice, `{"iat":"${iat(0)}","sub":7}`, JSON.stringify(footerOf(alice))),
    options: () => base('read', { subject: '7' }),
    code: 'CLAIMS_INVALID',
  },
  {
    name: 'name that is not a string',
    token: () => craft(alice, { iat: iat(0), mutation: 'owners', name: ['foo'] }, footerOf(alice)),
    options: () => base('owners'),
    code: 'CLAIMS_INVALID',
  },
  {
    name: 'no iat',
    token: () => craft(alice, {}, footerOf(alice)),
    options: () => base('read'),
    code: 'IAT_MISSING',
  },
  {
    name: 'iat not RFC 3339',
    token: () => frameRaw(alice, '{"iat":"yesterday"}', JSON.stringify(footerOf(alice))),
    options: () => base('read'),
    code: 'IAT_INVALID',
  },
  {
    name: 'unexpected sub',
    token: () => craft(alice, { iat: iat(0), sub: 'x' }, footerOf(alice)),
    options: () => base('read'),
    code: 'SUBJECT_MISMATCH',
  },
  {
    name: 'missing sub',
    token: readToken,
    options: () => base('read', { subject: 'team-abc' }),
    code: 'SUBJECT_MISMATCH',
  },
  {
    name: 'another sub',
    token: () => craft(alice, { iat: iat(0), sub: 'team-xyz' }, footerOf(alice)),
    options: () => base('read', { subject: 'team-abc' }),
    code: 'SUBJECT_MISMATCH',
  },
  {
    name: 'message format v=2',
    token: () => craft(alice, { iat: iat(0), v: 2 }, footerOf(alice)),
    options: () => base('read'),
    code: 'VERSION_UNSUPPORTED',
  },
  {
    name: 'cargo high-S token under strictLowS',
    token: async () => cargoVectors().find((v) => v['s-is-high'] && v.operation === 'read')?.token ?? '',
    options: () => {
      const v = cargoVectors().find((v) => v['s-is-high'] && v.operation === 'read')
      return {
        publicKey: v?.['public-key'] ?? '',
        url: (JSON.parse(v?.footer ?? '{}') as { url: string }).url,
        operation: 'read',
        checkTime: false,
        strictLowS: true,
      }
    },
    code: 'SIGNATURE_HIGH_S',
  },
]

before(() => {
  alice = MemorySigner.generate()
  mallory = MemorySigner.generate()
})

for (const c of CASES) {
  test(`rejects ${c.name} with ${c.code}`, async () => {
    const token = await c.token()
    await assert.rejects(verifyToken(token, c.options()), (error: unknown) => {
      assert.ok(error instanceof AgentError, String(error))
      assert.equal(error.code, c.code, `${c.name}: ${error.message}`)
      assert.ok((error.remedy ?? '').length > 10, 'a remedy for the operator or the user')
      return true
    })
  })
}

/** Codes a registry adds on top of the stateless verifier (replay needs the registry's memory). */
const REGISTRY_POLICY_CODES: readonly VerifyCode[] = ['TOKEN_REPLAYED', 'TOKEN_MISSING']

test('every reason code of the stateless verifier has at least one case', () => {
  const covered = new Set(CASES.map((c) => c.code))
  assert.deepEqual(
    VERIFY_CODES.filter((code) => !covered.has(code) && !REGISTRY_POLICY_CODES.includes(code)),
    [],
  )
})

test('boundaries of the time window and the positive twins of the crafted cases are accepted', async () => {
  const token = await readToken()
  await verifyToken(token, base('read', { now: new Date(NOW.valueOf() + 60_000) }))
  await verifyToken(token, base('read', { now: new Date(NOW.valueOf() - 30_000) }))
  await verifyToken(token, base('read', { maxAgeSeconds: 900, now: new Date(NOW.valueOf() + 899_000) }))
  await verifyToken(token, base('read', { checkTime: false, now: new Date(NOW.valueOf() + 86_400_000) }))
  await verifyToken(
    await craft(alice, { iat: iat(0), v: 1, challenge: 'ignored' }, footerOf(alice)),
    base('read'),
  )
  await verifyToken(
    await craft(alice, { iat: iat(0), sub: 'team-abc' }, footerOf(alice)),
    base('read', { subject: 'team-abc' }),
  )
  await verifyToken(
    await craft(alice, { iat: iat(0), mutation: 'owners', name: 'foo' }, footerOf(alice)),
    base('owners'),
  )
  await verifyToken(
    await craft(alice, { iat: '2026-11-25T16:00:00+00:00' }, { ...footerOf(alice), extra: 1 }),
    base('read'),
  )
})

test('untrusted token text reaches error messages quoted and cut short (no log injection)', async () => {
  const hostile = `evil\n2026-11-25 INFO accepted publish ${'x'.repeat(500)}`
  const tokens = [
    await craft(alice, { iat: iat(0), mutation: hostile, name: hostile }, footerOf(alice)),
    await craft(
      alice,
      { iat: iat(0), mutation: 'publish', name: hostile, vers: '1.0.0', cksum: CKSUM },
      footerOf(alice),
    ),
    await craft(alice, { iat: iat(0) }, { url: hostile, kip: k3Pid(alice.publicKey) }),
    await craft(alice, { iat: iat(0) }, { url: URL, kip: hostile }),
  ]
  for (const [i, operation] of (['read', 'publish', 'read', 'read'] as const).entries()) {
    await assert.rejects(verifyToken(tokens[i] ?? '', base(operation)), (error: unknown) => {
      assert.ok(error instanceof AgentError)
      assert.equal(/[\n\r]/.test(error.describe()), false, error.code)
      assert.ok(error.message.length < 400, `${error.code}: ${error.message.length} characters`)
      return true
    })
  }
})

test('verify options are validated before any token is looked at', async () => {
  const token = await readToken()
  const usage: Partial<VerifyOptions>[] = [
    { maxAgeSeconds: 901 },
    { maxAgeSeconds: 0 },
    { clockSkewSeconds: -1 },
    { crate: { name: 'foo' } },
    { url: '' },
  ]
  for (const extra of usage)
    await assert.rejects(verifyToken(token, base('read', extra)), { code: 'USAGE' }, JSON.stringify(extra))
  const { cksum: _c, ...noCksum } = base('publish').crate ?? {}
  await assert.rejects(verifyToken(token, { ...base('publish'), crate: noCksum }), { code: 'USAGE' })
  await assert.rejects(verifyToken(token, base('read', { publicKey: 'k3.public.AAAA' })), {
    code: 'KEY_INVALID',
  })
})

test('inspectToken reads footer and claims without verifying, and says so', async () => {
  const forged = await craft(mallory, { iat: iat(0), name: 'x' }, footerOf(alice))
  const contents = inspectToken(forged)
  assert.equal(contents.verified, false)
  assert.equal(contents.footer.kip, k3Pid(alice.publicKey))
  assert.equal(contents.footer.url, URL)
  assert.equal(contents.claims['name'], 'x')
  await assert.rejects(verifyToken(forged, base('read')), { code: 'SIGNATURE_INVALID' })
  assert.throws(() => inspectToken('not-a-token'), { code: 'TOKEN_MALFORMED' })
})

test('a token whose kip has no registered key is a VerifyError KEY_ID_MISMATCH (the docs example answers 401)', async () => {
  // Through the public entry point, as docs/verifying-tokens.md §8 and packages/verify/README.md use it.
  const verify = await import('../../src/verify/index.js')
  const keysByKip = new Map([[verify.k3Pid(mallory.publicKey), verify.k3Public(mallory.publicKey)]])
  const token = await readToken()
  const { footer } = verify.inspectToken(token)
  await assert.rejects(
    verify.verifyToken(token, { ...base('read'), publicKey: keysByKip.get(footer.kip) }),
    (error: unknown) => {
      assert.ok(error instanceof verify.VerifyError, String(error))
      assert.equal(error.code, 'KEY_ID_MISMATCH')
      assert.match(error.message, /no key with id "k3\.pid\.[\w-]+" is registered/)
      return true
    },
  )
  // The call is still checked first: a bad option with no key is the caller's USAGE, not a refusal.
  await assert.rejects(verify.verifyToken(token, { ...base('read', { url: '' }), publicKey: undefined }), {
    code: 'USAGE',
  })
})
