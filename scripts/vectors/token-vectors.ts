/**
 * Writes test/vectors/tokens/rfc3231-tokens.json: RFC 3231 tokens, valid and invalid, each with the
 * verify options and the expected outcome (docs/verifying-tokens.md, "Test vectors"). Signatures are
 * random, so running this again gives other bytes for the same cases; the file is committed and
 * test/unit/token-vectors.test.ts checks every case against the verifier.
 *
 *   node dist/scripts/vectors/token-vectors.js > test/vectors/tokens/rfc3231-tokens.json
 */
import { createHash } from 'node:crypto'

import { encodeBase64url } from '../../src/keys/base64url.js'
import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { bigIntToBytes, bytesToBigInt, P384 } from '../../src/keys/point.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { formatIat } from '../../src/token/iat.js'
import { v3PublicPae } from '../../src/token/pae.js'

const URL = 'sparse+https://registry.example/index/'
const NOW = new Date('2026-01-15T12:00:00Z')
const MAX_AGE = 60
const SKEW = 30
const CKSUM = createHash('sha256').update('the .crate bytes').digest('hex')

const key = MemorySigner.generate()
const other = MemorySigner.generate()
const KEY = k3Public(key.publicKey)
const OTHER = k3Public(other.publicKey)

const at = (secondsBeforeNow: number): string => formatIat(new Date(NOW.valueOf() - secondsBeforeNow * 1000))
const text = (value: unknown): Uint8Array =>
  new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value))

interface Craft {
  claims?: unknown
  footer?: unknown
  signer?: MemorySigner
  highS?: boolean
}

/** A v3.public token over exactly these message and footer bytes (`undefined` footer: no footer part). */
async function craft({
  claims = { iat: at(10) },
  footer = { url: URL, kip: k3Pid(KEY) },
  signer = key,
  highS = false,
}: Craft): Promise<string> {
  const message = text(claims)
  const footerBytes = footer === null ? new Uint8Array(0) : text(footer)
  const signature = await signer.sign(v3PublicPae(signer.publicKey, message, footerBytes))
  if (highS) signature.set(bigIntToBytes(P384.n - bytesToBigInt(signature.subarray(48)), 48), 48)
  const payload = new Uint8Array(message.length + signature.length)
  payload.set(message)
  payload.set(signature, message.length)
  return `v3.public.${encodeBase64url(payload)}${footer === null ? '' : `.${encodeBase64url(footerBytes)}`}`
}

type Crate = { name?: string; vers?: string; cksum?: string }
interface Options {
  publicKey: string
  url: string
  operation: string
  crate?: Crate
  subject?: string
  maxAgeSeconds: number
  clockSkewSeconds: number
  now: string
  strictLowS: boolean
}
const options = (operation: string, extra: Partial<Options> = {}): Options => ({
  publicKey: KEY,
  url: URL,
  operation,
  maxAgeSeconds: MAX_AGE,
  clockSkewSeconds: SKEW,
  now: NOW.toISOString(),
  strictLowS: false,
  ...extra,
})
const PUBLISH: Crate = { name: 'foo', vers: '1.2.3', cksum: CKSUM }
const YANK: Crate = { name: 'foo', vers: '1.2.3' }
const publishClaims = { iat: at(10), mutation: 'publish', ...PUBLISH }

interface Vector {
  name: string
  description: string
  token: string
  options: Options
  expect: { valid: true; claims: Record<string, unknown>; highS: boolean } | { valid: false; code: string }
}
const vectors: Vector[] = []
const ok = async (name: string, description: string, c: Craft, o: Options): Promise<void> => {
  vectors.push({
    name,
    description,
    token: await craft(c),
    options: o,
    expect: {
      valid: true,
      claims: (c.claims ?? { iat: at(10) }) as Record<string, unknown>,
      highS: c.highS === true,
    },
  })
}
const bad = async (
  name: string,
  description: string,
  code: string,
  token: string | Craft,
  o: Options,
): Promise<void> => {
  vectors.push({
    name,
    description,
    token: typeof token === 'string' ? token : await craft(token),
    options: o,
    expect: { valid: false, code },
  })
}

const read = await craft({})
const readPayload = read.split('.')[2] ?? ''

// Valid tokens, one per operation.
await ok('read', 'a read token: only `iat`', {}, options('read'))
await ok(
  'publish',
  'a publish token for foo 1.2.3 with the cksum of the upload',
  { claims: publishClaims },
  options('publish', { crate: PUBLISH }),
)
await ok(
  'yank',
  'yank carries name and vers',
  { claims: { iat: at(10), mutation: 'yank', ...YANK } },
  options('yank', { crate: YANK }),
)
await ok(
  'unyank',
  'unyank carries name and vers',
  { claims: { iat: at(10), mutation: 'unyank', ...YANK } },
  options('unyank', { crate: YANK }),
)
await ok(
  'owners',
  'owners carries name only (a cargo addition to RFC 3231)',
  { claims: { iat: at(10), mutation: 'owners', name: 'foo' } },
  options('owners', { crate: { name: 'foo' } }),
)
await ok(
  'read-subject',
  'a registry that issued a subject: `sub` must equal it',
  { claims: { iat: at(10), sub: 'team-ci' } },
  options('read', { subject: 'team-ci' }),
)
await ok(
  'read-v1',
  '`v: 1` is the message format this spec describes',
  { claims: { iat: at(10), v: 1 } },
  options('read'),
)
await ok(
  'read-high-s',
  'high S is accepted unless strict (cargo 1.95 `cargo:paseto` emits it)',
  { highS: true },
  options('read'),
)
await ok(
  'read-iat-at-max-age',
  'exactly maxAgeSeconds old is still accepted',
  { claims: { iat: at(MAX_AGE) } },
  options('read'),
)
await ok(
  'read-iat-within-skew',
  'up to clockSkewSeconds in the future is accepted',
  { claims: { iat: at(-SKEW) } },
  options('read'),
)
await ok(
  'read-unknown-claim',
  'claims this spec does not name are ignored',
  { claims: { iat: at(10), 'x-trace': 'abc' } },
  options('read'),
)
await ok(
  'read-iat-offset',
  'an RFC 3339 `iat` with a UTC offset',
  { claims: { iat: '2026-01-15T13:59:50+02:00' } },
  options('read'),
)

// Step 1: framing.
await bad(
  'not-paseto',
  'a bearer token is not v3.public',
  'TOKEN_MALFORMED',
  'Bearer cio0123456789',
  options('read'),
)
await bad(
  'v4-public',
  'another PASETO version',
  'TOKEN_WRONG_PURPOSE',
  `v4.public.${readPayload}`,
  options('read'),
)
await bad(
  'v3-local',
  'another PASETO purpose',
  'TOKEN_WRONG_PURPOSE',
  `v3.local.${readPayload}`,
  options('read'),
)
await bad('five-parts', 'too many dot-separated parts', 'TOKEN_MALFORMED', `${read}.e30`, options('read'))
await bad(
  'empty-footer-part',
  'a trailing dot: an empty footer part',
  'TOKEN_MALFORMED',
  `v3.public.${readPayload}.`,
  options('read'),
)
await bad(
  'payload-too-short',
  'no room for a message before the 96-byte signature',
  'TOKEN_MALFORMED',
  `v3.public.${encodeBase64url(new Uint8Array(96))}.${read.split('.')[3]}`,
  options('read'),
)
await bad(
  'base64-padding',
  'base64url with `=` padding',
  'TOKEN_ENCODING',
  read.replace(readPayload, `${readPayload}=`),
  options('read'),
)
await bad(
  'base64-alphabet',
  'standard base64 characters (`+`)',
  'TOKEN_ENCODING',
  read.replace(readPayload, `+${readPayload.slice(1)}`),
  options('read'),
)
await bad(
  'too-long',
  'longer than 8192 characters',
  'TOKEN_MALFORMED',
  `v3.public.${'A'.repeat(8192)}`,
  options('read'),
)
// Step 2: footer.
await bad(
  'no-footer',
  'no footer part, so no `url` and `kip`',
  'FOOTER_INVALID',
  { footer: null },
  options('read'),
)
await bad('footer-not-json', 'the footer is not JSON', 'FOOTER_INVALID', { footer: 'url=x' }, options('read'))
await bad(
  'footer-kid',
  'the RFC text says `kid`; cargo and registries use `kip`',
  'FOOTER_INVALID',
  { footer: { url: URL, kid: k3Pid(KEY) } },
  options('read'),
)
await bad(
  'footer-no-url',
  'no `url` in the footer',
  'FOOTER_INVALID',
  { footer: { kip: k3Pid(KEY) } },
  options('read'),
)
// Step 3: key id.
await bad(
  'other-key',
  'signed by an unregistered key (its own kip)',
  'KEY_ID_MISMATCH',
  { signer: other, footer: { url: URL, kip: k3Pid(OTHER) } },
  options('read'),
)
await bad(
  'kip-before-signature',
  'a wrong kip is reported before the signature is checked',
  'KEY_ID_MISMATCH',
  { footer: { url: 'sparse+https://elsewhere.example/index/', kip: k3Pid(OTHER) } },
  options('read'),
)
// Step 4: signature.
await bad(
  'tampered-message',
  'one byte of the message changed after signing',
  'SIGNATURE_INVALID',
  read.replace(
    readPayload,
    readPayload.slice(0, 4) + (readPayload[4] === 'A' ? 'B' : 'A') + readPayload.slice(5),
  ),
  options('read'),
)
await bad(
  'forged-kip',
  "signed by another key under the registered key's kip",
  'SIGNATURE_INVALID',
  { signer: other },
  options('read'),
)
await bad(
  'signature-before-url',
  'a bad signature is reported before the url is compared',
  'SIGNATURE_INVALID',
  { signer: other, footer: { url: 'sparse+https://elsewhere.example/index/', kip: k3Pid(KEY) } },
  options('read'),
)
await bad(
  'high-s-strict',
  'strictLowS refuses s > n/2',
  'SIGNATURE_HIGH_S',
  { highS: true },
  options('read', { strictLowS: true }),
)
// Step 5: url.
await bad(
  'other-registry',
  'a token for another registry',
  'URL_MISMATCH',
  { footer: { url: 'sparse+https://elsewhere.example/index/', kip: k3Pid(KEY) } },
  options('read'),
)
await bad(
  'url-without-sparse',
  'the url is compared byte for byte: cargo keeps `sparse+`',
  'URL_MISMATCH',
  { footer: { url: URL.slice('sparse+'.length), kip: k3Pid(KEY) } },
  options('read'),
)
// Step 6: claims.
await bad(
  'claims-array',
  'the message is a JSON array',
  'CLAIMS_INVALID',
  { claims: [at(10)] },
  options('read'),
)
await bad(
  'claims-not-json',
  'the message is not JSON',
  'CLAIMS_INVALID',
  { claims: 'iat=now' },
  options('read'),
)
await bad(
  'claim-number',
  'a known claim that is not a string',
  'CLAIMS_INVALID',
  { claims: { iat: at(10), mutation: 'yank', name: 7, vers: '1.2.3' } },
  options('yank', { crate: YANK }),
)
await bad(
  'version-2',
  '`v` other than 1',
  'VERSION_UNSUPPORTED',
  { claims: { iat: at(10), v: 2 } },
  options('read'),
)
await bad(
  'no-iat',
  'no `iat`',
  'IAT_MISSING',
  { claims: { mutation: 'yank', ...YANK } },
  options('yank', { crate: YANK }),
)
await bad(
  'iat-not-rfc3339',
  '`iat` is not an RFC 3339 timestamp',
  'IAT_INVALID',
  { claims: { iat: 'yesterday' } },
  options('read'),
)
await bad(
  'iat-stale',
  'one second older than maxAgeSeconds',
  'IAT_STALE',
  { claims: { iat: at(MAX_AGE + 1) } },
  options('read'),
)
await bad(
  'iat-future',
  'further in the future than clockSkewSeconds',
  'IAT_FUTURE',
  { claims: { iat: at(-SKEW - 1) } },
  options('read'),
)
await bad(
  'sub-not-issued',
  'a `sub` the registry never issued',
  'SUBJECT_MISMATCH',
  { claims: { iat: at(10), sub: 'team-ci' } },
  options('read'),
)
await bad(
  'sub-missing',
  'the registry issued a subject, the token has none',
  'SUBJECT_MISMATCH',
  {},
  options('read', { subject: 'team-ci' }),
)
await bad(
  'sub-other',
  'another subject',
  'SUBJECT_MISMATCH',
  { claims: { iat: at(10), sub: 'team-cd' } },
  options('read', { subject: 'team-ci' }),
)
await bad(
  'read-for-publish',
  'a read token presented for a publish',
  'MUTATION_MISMATCH',
  {},
  options('publish', { crate: PUBLISH }),
)
await bad(
  'yank-for-unyank',
  'a yank token presented for an unyank',
  'MUTATION_MISMATCH',
  { claims: { iat: at(10), mutation: 'yank', ...YANK } },
  options('unyank', { crate: YANK }),
)
await bad(
  'publish-other-name',
  'a publish token replayed for another crate',
  'NAME_MISMATCH',
  { claims: publishClaims },
  options('publish', { crate: { ...PUBLISH, name: 'bar' } }),
)
await bad(
  'publish-other-version',
  'a publish token replayed for another version',
  'VERS_MISMATCH',
  { claims: publishClaims },
  options('publish', { crate: { ...PUBLISH, vers: '1.2.4' } }),
)
await bad(
  'publish-other-upload',
  'the upload is not what was signed',
  'CKSUM_MISMATCH',
  { claims: publishClaims },
  options('publish', { crate: { ...PUBLISH, cksum: '0'.repeat(64) } }),
)
await bad(
  'name-case',
  'crate names are compared byte for byte',
  'NAME_MISMATCH',
  { claims: { iat: at(10), mutation: 'yank', name: 'Foo', vers: '1.2.3' } },
  options('yank', { crate: YANK }),
)
await bad(
  'mutation-on-read',
  'a yank token presented for a download',
  'UNEXPECTED_CLAIM',
  { claims: { iat: at(10), mutation: 'yank', ...YANK } },
  options('read'),
)
await bad(
  'owners-with-vers',
  'an owners token must not carry `vers`',
  'UNEXPECTED_CLAIM',
  { claims: { iat: at(10), mutation: 'owners', name: 'foo', vers: '1.2.3' } },
  options('owners', { crate: { name: 'foo' } }),
)
await bad(
  'yank-with-cksum',
  'a yank token must not carry `cksum`',
  'UNEXPECTED_CLAIM',
  { claims: { iat: at(10), mutation: 'yank', ...YANK, cksum: CKSUM } },
  options('yank', { crate: YANK }),
)

process.stdout.write(
  JSON.stringify(
    {
      name: 'RFC 3231 asymmetric tokens (PASETO v3.public, P-384), as cargo sends them',
      spec: 'docs/verifying-tokens.md',
      keys: {
        registered: { public: KEY, pid: k3Pid(KEY), secret: key.exportK3Secret() },
        other: { public: OTHER, pid: k3Pid(OTHER), secret: other.exportK3Secret() },
      },
      tests: vectors,
    },
    null,
    2,
  ) + '\n',
)
