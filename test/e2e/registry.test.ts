/**
 * The verifying registry over real HTTP, with tokens built by the project's token builder and an
 * in-memory signer: the refusals cargo alone cannot provoke (replays, tokens for the wrong operation,
 * registry, checksum or key, high-S under strict mode), the index paths and the request record.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { bigIntToBytes, bytesToBigInt, P384 } from '../../src/keys/point.js'
import { MemorySigner } from '../../src/signer/memory.js'
import type { Signer } from '../../src/signer/signer.js'
import { buildToken, type TokenRequest } from '../../src/token/build.js'
import { sparseIndexPath as indexPath } from '../../src/registry/routes.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'

/** A signer that always returns the high-S twin (r, n - s) of a valid signature, as pasetors may. */
function highSSigner(inner: Signer): Signer {
  return {
    publicKey: inner.publicKey,
    description: 'high-S test signer',
    async sign(message) {
      const sig = await inner.sign(message)
      const s = bytesToBigInt(sig.subarray(48))
      const out = Uint8Array.from(sig)
      out.set(bigIntToBytes(P384.n - s, 48), 48)
      return out
    },
  }
}

function publishBody(metadata: Record<string, unknown>, crate: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(metadata))
  const a = Buffer.alloc(4)
  a.writeUInt32LE(json.length)
  const b = Buffer.alloc(4)
  b.writeUInt32LE(crate.length)
  return Buffer.concat([a, json, b, crate])
}

const meta = (name: string, vers: string, deps: unknown[] = []): Record<string, unknown> => ({
  name,
  vers,
  deps,
  features: {},
  authors: [],
  description: 'test',
  license: 'MIT',
  links: null,
})

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

describe('verifying registry over HTTP', () => {
  let dir: string
  let registry: Registry
  const signer = MemorySigner.generate()
  const stranger = MemorySigner.generate()

  const token = async (
    request: Omit<TokenRequest, 'indexUrl'>,
    s: Signer = signer,
    indexUrl?: string,
  ): Promise<string> => (await buildToken(s, { indexUrl: indexUrl ?? registry.indexUrl, ...request })).token

  const call = async (
    method: string,
    path: string,
    auth?: string,
    body?: Buffer | string,
  ): Promise<{ status: number; headers: Headers; text: string; bytes: Buffer }> => {
    const init: RequestInit = { method, headers: auth === undefined ? {} : { authorization: auth } }
    if (body !== undefined) init.body = body
    const res = await fetch(`${registry.url}${path}`, init)
    const bytes = Buffer.from(await res.arrayBuffer())
    return { status: res.status, headers: res.headers, text: bytes.toString('utf8'), bytes }
  }

  const detail = (text: string): string =>
    (JSON.parse(text) as { errors: { detail: string }[] }).errors[0]!.detail

  const publish = async (name: string, vers: string, crate: Buffer, tokenCksum = sha256(crate)) =>
    call(
      'PUT',
      '/api/v1/crates/new',
      await token({ operation: 'publish', crate: { name, vers, cksum: tokenCksum } }),
      publishBody(meta(name, vers), crate),
    )

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-registry-'))
    registry = await startRegistry({
      stateDir: join(dir, 'state'),
      keys: [k3Public(signer.publicKey)],
      strictLowS: true,
    })
  })

  after(async () => {
    await registry?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('config.json without a token: 401 with a Cargo challenge naming the login URL', async () => {
    const r = await call('GET', '/index/config.json')
    assert.equal(r.status, 401)
    assert.equal(r.headers.get('www-authenticate'), `Cargo login_url="${registry.url}/me"`)
    assert.match(detail(r.text), /^TOKEN_MISSING: /)
    assert.equal(registry.records().at(-1)?.auth, 'missing')
  })

  test('config.json with a read token: dl, api and auth-required', async () => {
    const r = await call('GET', '/index/config.json', await token({ operation: 'read' }))
    assert.equal(r.status, 200, r.text)
    assert.deepEqual(JSON.parse(r.text), {
      dl: `${registry.url}/dl`,
      api: registry.url,
      'auth-required': true,
    })
    const rec = registry.records().at(-1)!
    assert.equal(rec.auth, 'accepted')
    assert.equal(rec.operation, 'read')
    assert.equal(rec.kip, k3Pid(signer.publicKey))
    assert.equal(rec.highS, false)
  })

  test('publish, then the index at the sparse path and the download with read tokens', async () => {
    const crate = Buffer.from('not really a tarball, the registry stores bytes')
    const r = await publish('hwtok-alpha', '0.1.0', crate)
    assert.equal(r.status, 200, r.text)
    const read = await token({ operation: 'read' })
    const idx = await call('GET', '/index/hw/to/hwtok-alpha', read)
    assert.equal(idx.status, 200, idx.text)
    const line = JSON.parse(idx.text.trim()) as { name: string; vers: string; cksum: string; yanked: boolean }
    assert.deepEqual(
      [line.name, line.vers, line.cksum, line.yanked],
      ['hwtok-alpha', '0.1.0', sha256(crate), false],
    )
    const dl = await call('GET', '/dl/hwtok-alpha/0.1.0/download', read)
    assert.equal(dl.status, 200)
    assert.deepEqual(dl.bytes, crate)
    assert.equal((await call('GET', '/index/hw/to/nothing-here', read)).status, 404)
  })

  test('index paths for 1, 2, 3 and 4+ character names follow cargo', async () => {
    assert.deepEqual(['a', 'ab', 'abc', 'Abcd', 'serde'].map(indexPath), [
      '1/a',
      '2/ab',
      '3/a/abc',
      'ab/cd/abcd',
      'se/rd/serde',
    ])
    for (const name of ['x', 'xy', 'xyz']) {
      assert.equal((await publish(name, '1.0.0', Buffer.from(name))).status, 200)
      const r = await call('GET', `/index/${indexPath(name)}`, await token({ operation: 'read' }))
      assert.equal(r.status, 200, `${name}: ${r.text}`)
      assert.equal((JSON.parse(r.text) as { name: string }).name, name)
    }
  })

  test('an existing version is refused after a valid publish token', async () => {
    const r = await publish('hwtok-alpha', '0.1.0', Buffer.from('other bytes'))
    assert.equal(r.status, 400)
    assert.match(detail(r.text), /^VERSION_EXISTS: /)
    assert.equal(registry.records().at(-1)?.auth, 'accepted')
    assert.equal(registry.index('hwtok-alpha').length, 1)
  })

  test('a publish token whose cksum is not the uploaded crate is refused, nothing is stored', async () => {
    const r = await publish('hwtok-alpha', '0.2.0', Buffer.from('uploaded'), sha256(Buffer.from('signed')))
    assert.equal(r.status, 401)
    assert.match(detail(r.text), /^CKSUM_MISMATCH: /)
    assert.equal(r.headers.get('www-authenticate'), `Cargo login_url="${registry.url}/me"`)
    assert.equal(registry.index('hwtok-alpha').length, 1)
  })

  test('a token for the wrong operation, crate, registry or key is refused with its reason', async () => {
    const yankPath = '/api/v1/crates/hwtok-alpha/0.1.0/yank'
    const cases: [string, string, string, RegExp][] = [
      [
        'read token at yank',
        'DELETE',
        await token({ operation: 'read' }),
        /^(MUTATION_MISMATCH|UNEXPECTED_CLAIM): /,
      ],
      [
        'unyank token at yank',
        'DELETE',
        await token({ operation: 'unyank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } }),
        /^MUTATION_MISMATCH: /,
      ],
      [
        'other crate',
        'DELETE',
        await token({ operation: 'yank', crate: { name: 'hwtok-beta', vers: '0.1.0' } }),
        /^NAME_MISMATCH: /,
      ],
      [
        'other version',
        'DELETE',
        await token({ operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.1' } }),
        /^VERS_MISMATCH: /,
      ],
      [
        'other registry',
        'DELETE',
        await token(
          { operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } },
          signer,
          'sparse+http://registry.example/index/',
        ),
        /^URL_MISMATCH: /,
      ],
      [
        'unregistered key',
        'DELETE',
        await token({ operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } }, stranger),
        /^KEY_ID_MISMATCH: /,
      ],
      [
        'a subject this registry never issued',
        'DELETE',
        await token({ operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' }, subject: 'someone' }),
        /^SUBJECT_MISMATCH: /,
      ],
      [
        'stale iat',
        'DELETE',
        (
          await buildToken(
            signer,
            { indexUrl: registry.indexUrl, operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } },
            new Date(Date.now() - 10 * 60_000),
          )
        ).token,
        /^IAT_STALE: /,
      ],
      ['not a token', 'DELETE', 'Bearer abc', /^TOKEN_(MALFORMED|WRONG_PURPOSE): /],
    ]
    for (const [what, method, auth, pattern] of cases) {
      const r = await call(method, yankPath, auth)
      assert.equal(r.status, 401, what)
      assert.match(detail(r.text), pattern, what)
      assert.equal(registry.records().at(-1)?.auth, 'rejected', what)
    }
    assert.equal(registry.index('hwtok-alpha')[0]!.yanked, false)
  })

  test('a read token on a download carrying mutation claims is refused', async () => {
    const r = await call(
      'GET',
      '/dl/hwtok-alpha/0.1.0',
      await token({ operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } }),
    )
    assert.equal(r.status, 401)
    assert.match(detail(r.text), /^(UNEXPECTED_CLAIM|MUTATION_MISMATCH): /)
  })

  test('strict low-S: a high-S twin of a valid signature is refused', async () => {
    const r = await call('GET', '/index/config.json', await token({ operation: 'read' }, highSSigner(signer)))
    assert.equal(r.status, 401)
    assert.match(detail(r.text), /^SIGNATURE_HIGH_S: /)
  })

  test('yank, unyank: a mutation token is accepted once; a replay is refused', async () => {
    const yank = await token({ operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } })
    const first = await call('DELETE', '/api/v1/crates/hwtok-alpha/0.1.0/yank', yank)
    assert.equal(first.status, 200, first.text)
    assert.deepEqual(JSON.parse(first.text), { ok: true })
    assert.equal(registry.index('hwtok-alpha')[0]!.yanked, true)
    const replay = await call('DELETE', '/api/v1/crates/hwtok-alpha/0.1.0/yank', yank)
    assert.equal(replay.status, 401)
    assert.match(detail(replay.text), /^TOKEN_REPLAYED: /)
    const unyank = await call(
      'PUT',
      '/api/v1/crates/hwtok-alpha/0.1.0/unyank',
      await token({ operation: 'unyank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } }),
    )
    assert.equal(unyank.status, 200, unyank.text)
    assert.equal(registry.index('hwtok-alpha')[0]!.yanked, false)
    // Read tokens may be reused (RFC 3231: so a hardware token is not asked for every request).
    const read = await token({ operation: 'read' })
    assert.equal((await call('GET', '/index/config.json', read)).status, 200)
    assert.equal((await call('GET', '/index/config.json', read)).status, 200)
  })

  test("owners: list, add, remove with cargo's JSON shapes", async () => {
    const owners = (): Promise<string> => token({ operation: 'owners', crate: { name: 'hwtok-alpha' } })
    const path = '/api/v1/crates/hwtok-alpha/owners'
    const list = await call('GET', path, await owners())
    assert.deepEqual(JSON.parse(list.text), { users: [{ id: 1, login: 'publisher', name: null }] })
    const add = await call('PUT', path, await owners(), JSON.stringify({ users: ['alice', 'bob'] }))
    assert.equal(add.status, 200, add.text)
    assert.equal((JSON.parse(add.text) as { ok: boolean }).ok, true)
    assert.deepEqual(registry.owners('hwtok-alpha'), ['publisher', 'alice', 'bob'])
    const remove = await call('DELETE', path, await owners(), JSON.stringify({ users: ['alice'] }))
    assert.equal(remove.status, 200, remove.text)
    assert.deepEqual(registry.owners('hwtok-alpha'), ['publisher', 'bob'])
    const bad = await call('DELETE', path, await owners(), JSON.stringify({ users: ['mallory'] }))
    assert.equal(bad.status, 400)
    assert.match(detail(bad.text), /^NOT_AN_OWNER: /)
    const vers = await call(
      'GET',
      path,
      await token({ operation: 'yank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } }),
    )
    assert.equal(vers.status, 401, 'a yank token is not an owners token')
  })

  test('the JSON log holds exactly the in-process record, without token text', () => {
    const lines = readFileSync(registry.logPath, 'utf8').trim().split('\n')
    assert.deepEqual(
      lines.map((l) => JSON.parse(l) as unknown),
      registry.records().map((r) => JSON.parse(JSON.stringify(r)) as unknown),
    )
    assert.doesNotMatch(readFileSync(registry.logPath, 'utf8'), /v3\.public\.[A-Za-z0-9_-]{40}/)
  })

  test('malformed bodies and unknown routes are refused before any token check; invalid names and versions never become files', async () => {
    const publishToken = await token({
      operation: 'publish',
      crate: { name: 'x', vers: '9.9.9', cksum: sha256(Buffer.from('x')) },
    })
    const good = publishBody(meta('x', '9.9.9'), Buffer.from('x'))
    const bodies: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['json length past the end', Buffer.from([0xff, 0xff, 0, 0, 0x7b])],
      ['crate length wrong', Buffer.concat([good.subarray(0, good.length - 1)])],
      ['metadata not JSON', publishBody({}, Buffer.from('x')).fill(0x20, 4, 6)],
    ]
    for (const [what, body] of bodies) {
      const r = await call('PUT', '/api/v1/crates/new', publishToken, body)
      assert.equal(r.status, 400, what)
      assert.match(detail(r.text), /^REQUEST_INVALID: publish body: /, what)
      assert.equal(registry.records().at(-1)?.auth, 'unchecked', what)
    }
    // Names and versions become file names in the registry's state: only valid ones get that far.
    for (const [name, vers, code] of [
      ['../../escape', '1.0.0', 'NAME_INVALID'],
      ['fine', '1.0.0/../../x', 'VERSION_INVALID'],
    ]) {
      const crate = Buffer.from('c')
      const bad = await call(
        'PUT',
        '/api/v1/crates/new',
        await token({ operation: 'publish', crate: { name: name!, vers: vers!, cksum: sha256(crate) } }),
        publishBody(meta(name!, vers!), crate),
      )
      assert.equal(bad.status, 400, `${name} ${vers}`)
      assert.match(detail(bad.text), new RegExp(`^${code}: `))
    }
    const r = await call('POST', '/api/v1/crates/x/9.9.9/yank', publishToken)
    assert.equal(r.status, 404)
    assert.equal(registry.records().at(-1)?.auth, 'unchecked')
    assert.deepEqual(
      registry.index('x').map((l) => l.vers),
      ['1.0.0'],
    )
  })

  test('a registry that issued a subject accepts exactly that sub', async () => {
    const other = await startRegistry({
      stateDir: join(dir, 'with-subject'),
      keys: [k3Public(signer.publicKey)],
      subject: 'team-ci',
    })
    try {
      const get = async (subject?: string): Promise<number> => {
        const t = await buildToken(signer, {
          indexUrl: other.indexUrl,
          operation: 'read',
          ...(subject === undefined ? {} : { subject }),
        })
        return (await fetch(`${other.url}/index/config.json`, { headers: { authorization: t.token } })).status
      }
      assert.equal(await get('team-ci'), 200)
      assert.equal(await get('team-cd'), 401)
      assert.equal(await get(), 401)
      assert.deepEqual(
        other.records().map((r) => [r.auth, r.code, r.claims?.['sub']]),
        [
          ['accepted', undefined, 'team-ci'],
          ['rejected', 'SUBJECT_MISMATCH', undefined],
          ['rejected', 'SUBJECT_MISMATCH', undefined],
        ],
      )
    } finally {
      await other.stop()
    }
  })

  test('state survives a restart on the same state dir', async () => {
    const stateDir = registry.stateDir
    await registry.stop()
    registry = await startRegistry({ stateDir, keys: [k3Public(signer.publicKey)], strictLowS: true })
    const r = await call('GET', '/index/hw/to/hwtok-alpha', await token({ operation: 'read' }))
    assert.equal(r.status, 200, r.text)
    assert.equal((JSON.parse(r.text.trim()) as { vers: string }).vers, '0.1.0')
    assert.deepEqual(registry.owners('hwtok-alpha'), ['publisher', 'bob'])
  })
})
