/**
 * The registry kit's parts without a server: the route table against cargo's request paths, the
 * publish body, the single-use store's bound and expiry, the keys file, the replies cargo reads,
 * and the gateway's configuration. (Over HTTP and with real cargo: test/e2e/registry-kit-express
 * and test/e2e/gateway.)
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { loadGatewayConfig } from '../../src/gateway/config.js'
import {
  CargoAuth,
  ROUTES,
  SingleUseStore,
  replayKey,
  encodePublishBody,
  errorReply,
  matchRoute,
  parseKeysFile,
  parsePublishBody,
  sparseIndexPath,
} from '../../src/registry/index.js'
import { decodeBase64url, encodeBase64url } from '../../src/keys/base64url.js'
import { P384, bigIntToBytes, bytesToBigInt } from '../../src/keys/point.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken } from '../../src/token/build.js'
import { VerifyError } from '../../src/verify/errors.js'
import { verifyToken } from '../../src/verify/verify.js'

test('every row of the route table, and only those, is a cargo route', () => {
  const cases: [string, string, string | undefined, object?][] = [
    ['GET', '/index/config.json', 'config'],
    ['GET', '/index/se/rd/serde', 'index', { name: 'serde' }],
    ['GET', '/index/3/f/foo', 'index', { name: 'foo' }],
    ['GET', '/index/1/a', 'index', { name: 'a' }],
    ['GET', '/dl/foo/1.0.0/download', 'download', { name: 'foo', vers: '1.0.0' }],
    ['GET', '/dl/foo/1.0.0', 'download', { name: 'foo', vers: '1.0.0' }],
    ['PUT', '/api/v1/crates/new', 'publish', {}],
    ['DELETE', '/api/v1/crates/foo/1.0.0/yank', 'yank', { name: 'foo', vers: '1.0.0' }],
    ['PUT', '/api/v1/crates/foo/1.0.0/unyank', 'unyank', { name: 'foo', vers: '1.0.0' }],
    ['GET', '/api/v1/crates/foo/owners', 'owners-list', { name: 'foo' }],
    ['PUT', '/api/v1/crates/foo/owners', 'owners-add', { name: 'foo' }],
    ['DELETE', '/api/v1/crates/foo/owners', 'owners-remove', { name: 'foo' }],
    ['GET', '/index/se/rd/other', undefined],
    ['GET', '/index/../secret', undefined],
    ['GET', '/index/se/rd/%2e%2e', undefined],
    ['GET', '/dl/%2e%2e/admin', undefined],
    ['GET', '/dl/../admin', undefined],
    ['GET', '/dl/./foo/1.0.0', undefined],
    ['GET', '/dl/foo/%2e', undefined],
    ['GET', '/dl/foo/1.0.0%5c..%5c..%5cadmin', undefined],
    ['GET', '/dl/foo#/1.0.0', undefined],
    ['GET', '/dl/foo%23/1.0.0', undefined],
    ['GET', '/dl/foo/1.0.0%00', undefined],
    ['GET', '/dl/..;/admin', undefined],
    ['GET', '/dl/foo;x/1.0.0', undefined],
    ['GET', '/dl/%252e%252e/admin', undefined],
    ['DELETE', '/api/v1/crates/%2e%2e/owners', undefined],
    ['DELETE', '/api/v1/crates/foo/%2e%2e/yank', undefined],
    ['POST', '/api/v1/crates/new', undefined],
    ['PUT', '/api/v1/crates/foo/1.0.0/yank', undefined],
    ['GET', '/api/v1/crates', undefined],
    ['GET', '/dl/foo/1.0.0/extra/x', undefined],
    ['GET', '/admin', undefined],
  ]
  for (const [method, path, kind, crate] of cases) {
    const route = matchRoute(method, path)
    assert.equal(route?.kind, kind, `${method} ${path}`)
    if (crate !== undefined) assert.deepEqual(route?.crate, crate, `${method} ${path}`)
  }
  assert.deepEqual(
    [...new Set(cases.flatMap(([, , kind]) => (kind === undefined ? [] : [kind])))].sort(),
    ROUTES.map((r) => r.kind).sort(),
  )
  for (const [method, path, kind] of cases) {
    const row = ROUTES.find((r) => r.kind === kind)
    if (row !== undefined) {
      assert.equal(row.method, method === 'HEAD' ? 'GET' : method, `${method} ${path}`)
      assert.equal(matchRoute(method, path)?.operation, row.operation, `${method} ${path}`)
    }
  }
  assert.equal(matchRoute('GET', '/r/index/config.json', { indexPath: '/r/index' })?.kind, 'config')
  assert.equal(matchRoute('PUT', '/r/api/v1/crates/new', { apiPath: '/r' })?.kind, 'publish')
  assert.deepEqual(['a', 'ab', 'abc', 'Abcd', 'serde'].map(sparseIndexPath), [
    '1/a',
    '2/ab',
    '3/a/abc',
    'ab/cd/abcd',
    'se/rd/serde',
  ])
})

test('the publish body: name, vers and the SHA-256 of the .crate; every malformed body is REQUEST_INVALID 400', () => {
  const crateFile = Buffer.from('tarball bytes')
  const parsed = parsePublishBody(encodePublishBody({ name: 'foo', vers: '1.0.0', deps: [] }, crateFile))
  assert.deepEqual(parsed.crate, {
    name: 'foo',
    vers: '1.0.0',
    cksum: createHash('sha256').update(crateFile).digest('hex'),
  })
  assert.deepEqual(Buffer.from(parsed.crateFile), crateFile)
  const good = encodePublishBody({ name: 'foo', vers: '1.0.0' }, crateFile)
  for (const body of [
    Buffer.alloc(2),
    Buffer.from([0xff, 0xff, 0, 0, 0x7b]),
    good.subarray(0, good.length - 1),
    encodePublishBody({ name: 'foo' }, crateFile),
    encodePublishBody({ name: 7, vers: '1.0.0' }, crateFile),
    Buffer.concat([Buffer.from([2, 0, 0, 0]), Buffer.from('[]'), Buffer.from([0, 0, 0, 0])]),
  ]) {
    assert.throws(
      () => parsePublishBody(body),
      (e: unknown) => e instanceof AgentError && e.code === 'REQUEST_INVALID' && errorReply(e).status === 400,
    )
  }
})

test('the single-use store refuses a replay, forgets a token after its window, and fails closed when full', async () => {
  let now = 1_000_000
  const store = new SingleUseStore({ maxEntries: 2, now: () => now })
  const signer = MemorySigner.generate()
  const yank = async (vers: string): Promise<string> =>
    (
      await buildToken(signer, {
        indexUrl: 'sparse+https://registry.example/index/',
        operation: 'yank',
        crate: { name: 'foo', vers },
      })
    ).token
  const [a, b, c] = [await yank('1.0.0'), await yank('2.0.0'), await yank('3.0.0')]
  store.use(a, new Date(now + 60_000))
  assert.throws(
    () => store.use(a, new Date(now + 60_000)),
    (e: unknown) => e instanceof VerifyError && e.code === 'TOKEN_REPLAYED',
  )
  store.use(b, new Date(now + 120_000))
  assert.throws(
    () => store.use(c, new Date(now + 60_000)),
    (e: unknown) => e instanceof AgentError && e.code === 'RATE_LIMITED' && errorReply(e).status === 429,
  )
  assert.equal(store.size, 2)
  now += 61_000 // a's window has closed: the verifier would call it stale, so it can go
  store.use(c, new Date(now + 60_000))
  assert.equal(store.size, 2)
  assert.throws(() => store.use(b, new Date(now + 60_000)), /already used/)
})

test('a token is one token whatever its string: the high-S twin of a used token is a replay', async () => {
  const signer = MemorySigner.generate()
  const url = 'sparse+https://registry.example/index/'
  const token = (
    await buildToken(signer, { indexUrl: url, operation: 'yank', crate: { name: 'foo', vers: '1.0.0' } })
  ).token
  // (r, s) -> (r, n - s): another string whose signature verifies too (low-S is not enforced).
  const parts = token.split('.')
  const payload = decodeBase64url(parts[2] ?? '', 'payload', (m) => new Error(m))
  const twinPayload = new Uint8Array(payload)
  const s = bytesToBigInt(payload.subarray(payload.length - 48))
  twinPayload.set(bigIntToBytes(P384.n - s, 48), payload.length - 48)
  const twin = [parts[0], parts[1], encodeBase64url(twinPayload), parts[3]].join('.')
  assert.notEqual(twin, token)
  await verifyToken(twin, {
    publicKey: k3Public(signer.publicKey),
    url,
    operation: 'yank',
    crate: { name: 'foo', vers: '1.0.0' },
  })
  assert.equal(replayKey(twin), replayKey(token))
  const store = new SingleUseStore()
  store.use(token, new Date(Date.now() + 60_000))
  assert.throws(
    () => store.use(twin, new Date(Date.now() + 60_000)),
    (e: unknown) => e instanceof VerifyError && e.code === 'TOKEN_REPLAYED',
  )
  // A fresh signature of the same claims (cargo asking again) has a new r: not a replay.
  const again = await buildToken(signer, {
    indexUrl: url,
    operation: 'yank',
    crate: { name: 'foo', vers: '1.0.0' },
  })
  assert.notEqual(replayKey(again.token), replayKey(token))
  store.use(again.token, new Date(Date.now() + 60_000))
})

test('the kit checks a request end to end: resolveKey by kip, the operation, single use', async () => {
  const signer = MemorySigner.generate()
  const url = 'sparse+https://registry.example/index/'
  const seen: string[] = []
  const auth = new CargoAuth({
    url,
    resolveKey: async (kip) => {
      seen.push(kip)
      return kip === k3Pid(signer.publicKey)
        ? { publicKey: k3Public(signer.publicKey), user: 'alice' }
        : undefined
    },
  })
  const route = matchRoute('DELETE', '/api/v1/crates/foo/1.0.0/yank')!
  const token = (
    await buildToken(signer, { indexUrl: url, operation: 'yank', crate: { name: 'foo', vers: '1.0.0' } })
  ).token
  const ok = await auth.check(route, token)
  assert.equal(ok.token?.user, 'alice')
  assert.deepEqual(ok.crate, { name: 'foo', vers: '1.0.0' })
  assert.deepEqual(seen, [k3Pid(signer.publicKey)])
  const refusal = async (authorization: string | undefined, code: string): Promise<void> => {
    await assert.rejects(auth.check(route, authorization), (e: unknown) => {
      assert.ok(e instanceof VerifyError)
      assert.equal(e.code, code)
      const reply = errorReply(e, 'https://registry.example/me')
      assert.equal(reply.status, 401)
      assert.equal(reply.headers['www-authenticate'], 'Cargo login_url="https://registry.example/me"')
      assert.match(
        (JSON.parse(reply.body) as { errors: { detail: string }[] }).errors[0]!.detail,
        new RegExp(`^${code}: `),
      )
      return true
    })
  }
  await refusal(token, 'TOKEN_REPLAYED')
  await refusal(undefined, 'TOKEN_MISSING')
  await refusal(
    (await buildToken(MemorySigner.generate(), { indexUrl: url, operation: 'read' })).token,
    'KEY_ID_MISMATCH',
  )
  await refusal((await buildToken(signer, { indexUrl: url, operation: 'read' })).token, 'MUTATION_MISMATCH')
  const reads = new CargoAuth({ url, resolveKey: () => undefined, authRequired: false })
  assert.equal((await reads.check(matchRoute('GET', '/index/config.json')!, undefined)).token, undefined)
})

test('keys file: key, user, subject, comments; every bad line is named', () => {
  const a = k3Public(MemorySigner.generate().publicKey)
  const b = k3Public(MemorySigner.generate().publicKey)
  const ring = parseKeysFile(`# team keys\n${a} alice\n\n  ${b}   ci sub=team-ci # the CI key\n`)
  assert.deepEqual(ring.get(k3Pid(a)), { publicKey: a, user: 'alice' })
  assert.deepEqual(ring.get(k3Pid(b)), { publicKey: b, user: 'ci', subject: 'team-ci' })
  assert.throws(
    () => parseKeysFile(`${a}\nk3.public.AAAA bob\n${a}\n${b} x y\n`),
    (e: unknown) => {
      assert.ok(e instanceof AgentError && e.code === 'CONFIG_INVALID')
      assert.match(e.message, /line 2: .*line 3: the key is listed twice; line 4: unexpected "y"/)
      return true
    },
  )
})

test('gateway config: flags over TOML, the upstream token only as a Secret, bad settings named', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hwtok-gwconf-'))
  try {
    const tokenFile = join(dir, 'token')
    writeFileSync(tokenFile, 'Bearer s3cret\n', { mode: 0o600 }) // docs/gateway.md: refused otherwise
    const config = join(dir, 'gateway.toml')
    writeFileSync(
      config,
      `listen = "127.0.0.1:8080"\nupstream = "http://127.0.0.1:9000"\nkeys-file = "/k"\nupstream-token-file = "${tokenFile}"\nmax-age-seconds = 300\n`,
    )
    const c = loadGatewayConfig({ config, listen: '127.0.0.1:0' })
    assert.equal(c.port, 0)
    assert.equal(c.maxAgeSeconds, 300)
    assert.equal(c.upstreamToken.expose(), 'Bearer s3cret')
    assert.doesNotMatch(JSON.stringify(c), /s3cret/)
    const bad: [Parameters<typeof loadGatewayConfig>[0], RegExp][] = [
      [{ keys: '/k', 'upstream-token-file': tokenFile }, /`upstream`/],
      [{ upstream: 'http://u', 'upstream-token-file': tokenFile }, /`keys-file`/],
      [{ upstream: 'http://u', keys: '/k' }, /exactly one of/],
      [{ upstream: 'http://u', keys: '/k', 'upstream-token-env': 'NOT_SET_ANYWHERE_G12' }, /is not set/],
      [{ upstream: 'http://user:pw@u', keys: '/k', 'upstream-token-file': tokenFile }, /credentials/],
      [
        { upstream: 'http://u', keys: '/k', 'upstream-token-file': tokenFile, 'public-url': 'https://h/sub' },
        /without a path/,
      ],
      [
        { upstream: 'http://u', keys: '/k', 'upstream-token-file': tokenFile, 'max-age': '901' },
        /max-age-seconds/,
      ],
    ]
    for (const [flags, pattern] of bad) assert.throws(() => loadGatewayConfig(flags), pattern)
    writeFileSync(config, 'upstrem = "x"\n')
    assert.throws(() => loadGatewayConfig({ config }), /unknown key `upstrem`/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
