/**
 * Cross-check: the verifying registry (and so our verifier) accepts the tokens cargo's own
 * `cargo:paseto` provider signs (pasetors, high-S signatures included), for every operation, through
 * a real cargo run: publish, yank, unyank, owners, and a build that downloads.
 *
 * cargo 1.95 enables `cargo:paseto` only on nightly: `-Z asymmetric-token` under the channel
 * override is how /work/shared/vectors/cargo-1.95-paseto-tokens.json was captured.
 */
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid, k3Public, k3Secret } from '../../src/keys/paserk.js'
import { compressPoint } from '../../src/keys/point.js'
import { startRegistry, type Registry, type RequestRecord } from '../fixtures/registry/server.js'
import { createCargoSandbox, show, type CargoSandbox } from './lib/cargo.js'

function softwareKey(): { k3public: string; k3secret: string } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
  const jwk = privateKey.export({ format: 'jwk' })
  const b = (s: string | undefined): Buffer => Buffer.from(s ?? '', 'base64url')
  const point = Buffer.concat([Buffer.from([4]), b(jwk.x), b(jwk.y)])
  return { k3public: k3Public(compressPoint(point)), k3secret: k3Secret(b(jwk.d)) }
}

const since = (registry: Registry, seq: number): RequestRecord[] =>
  registry.records().filter((r) => r.seq > seq)
const lastSeq = (registry: Registry): number => registry.records().at(-1)?.seq ?? 0

describe('verifying registry with cargo:paseto tokens (real cargo 1.95)', () => {
  let dir: string
  let registry: Registry
  let sandbox: CargoSandbox
  let key: { k3public: string; k3secret: string }
  const Z = ['-Z', 'asymmetric-token']

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-paseto-'))
    key = softwareKey()
    registry = await startRegistry({
      stateDir: join(dir, 'registry'),
      keys: [key.k3public],
      maxAgeSeconds: 300,
    })
    sandbox = createCargoSandbox({
      dir: join(dir, 'cargo'),
      indexUrl: registry.indexUrl,
      credentialProvider: 'cargo:paseto',
      env: {
        __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS: 'nightly',
        // A throwaway software key made by this test; cargo reads it from the environment.
        CARGO_REGISTRIES_LOCAL_SECRET_KEY: key.k3secret,
      },
    })
  })

  after(async () => {
    await registry?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('publish: read token then publish token, each verified for exactly its operation', async () => {
    const from = lastSeq(registry)
    const crate = sandbox.crate('hwtok-alpha')
    const r = await sandbox.cargo([...Z, 'publish', '--registry', 'local', '--no-verify'], { cwd: crate })
    assert.equal(r.code, 0, show(r))

    const seen = since(registry, from)
    assert.ok(
      seen.every((x) => x.auth !== 'rejected'),
      JSON.stringify(seen, null, 2),
    )
    const publish = seen.filter((x) => x.operation === 'publish')
    assert.equal(publish.length, 1)
    const p = publish[0]!
    assert.equal(p.auth, 'accepted')
    assert.equal(p.status, 200)
    assert.equal(p.kip, k3Pid(key.k3public))
    assert.equal(p.footerUrl, registry.indexUrl)
    const line = registry.index('hwtok-alpha')
    assert.equal(line.length, 1)
    assert.deepEqual(
      {
        mutation: p.claims?.['mutation'],
        name: p.claims?.['name'],
        vers: p.claims?.['vers'],
        cksum: p.claims?.['cksum'],
      },
      { mutation: 'publish', name: 'hwtok-alpha', vers: '0.1.0', cksum: line[0]!.cksum },
    )
    // The read token precedes the publish token (cargo asks for a read token first, docs/cargo-protocol.md §1.8).
    const firstRead = seen.findIndex((x) => x.operation === 'read' && x.auth === 'accepted')
    assert.ok(firstRead >= 0 && firstRead < seen.indexOf(p), 'a verified read precedes the publish')
    for (const read of seen.filter((x) => x.operation === 'read' && x.auth === 'accepted'))
      assert.deepEqual(Object.keys(read.claims ?? {}), ['iat'], 'read tokens carry only iat')
  })

  test('publish of a crate with a renamed registry dependency writes the index format', async () => {
    const crate = sandbox.crate('hwtok-beta')
    const r = await sandbox.cargo([...Z, 'publish', '--registry', 'local', '--no-verify'], { cwd: crate })
    assert.equal(r.code, 0, show(r))
    const [line] = registry.index('hwtok-beta')
    assert.ok(line !== undefined)
    assert.deepEqual(line.deps, [
      {
        name: 'alpha',
        req: '^0.1',
        features: [],
        optional: false,
        default_features: true,
        target: null,
        kind: 'normal',
        registry: null,
        package: 'hwtok-alpha',
      },
    ])
    assert.deepEqual(line.features, { default: [], doubled: [] })
  })

  test("republishing an existing version stops at cargo's index check, before any mutation token", async () => {
    const from = lastSeq(registry)
    const crate = sandbox.crate('hwtok-alpha')
    const r = await sandbox.cargo([...Z, 'publish', '--registry', 'local', '--no-verify'], { cwd: crate })
    assert.notEqual(r.code, 0, show(r))
    assert.match(r.stderr, /hwtok-alpha@0\.1\.0 already exists on `local` index/)
    assert.deepEqual(
      since(registry, from).filter((x) => x.operation !== 'read'),
      [],
      'the version check uses the (read-authenticated) index only',
    )
  })

  test('yank and unyank: mutation tokens name the crate and version', async () => {
    for (const [args, op, yanked] of [
      [['yank', '--version', '0.1.0', 'hwtok-alpha'], 'yank', true],
      [['yank', '--undo', '--version', '0.1.0', 'hwtok-alpha'], 'unyank', false],
    ] as const) {
      const from = lastSeq(registry)
      const r = await sandbox.cargo([...Z, ...args, '--registry', 'local'])
      assert.equal(r.code, 0, show(r))
      const muts = since(registry, from).filter((x) => x.operation === op)
      assert.equal(muts.length, 1)
      assert.equal(muts[0]!.auth, 'accepted')
      assert.deepEqual(
        [
          muts[0]!.claims?.['mutation'],
          muts[0]!.claims?.['name'],
          muts[0]!.claims?.['vers'],
          muts[0]!.claims?.['cksum'],
        ],
        [op, 'hwtok-alpha', '0.1.0', undefined],
      )
      assert.equal(registry.index('hwtok-alpha')[0]!.yanked, yanked)
    }
  })

  test('owners: add, list, remove each use an owners token without vers', async () => {
    const steps: [string[], RegExp][] = [
      [['--add', 'alice'], /alice/],
      [['--list'], /alice/],
      [['--remove', 'alice'], /Owner removing|removed/i],
    ]
    for (const [args, pattern] of steps) {
      const from = lastSeq(registry)
      const r = await sandbox.cargo([...Z, 'owner', ...args, 'hwtok-beta', '--registry', 'local'])
      assert.equal(r.code, 0, show(r))
      assert.match(r.stdout + r.stderr, pattern)
      const owners = since(registry, from).filter((x) => x.operation === 'owners')
      assert.equal(owners.length, 1)
      assert.equal(owners[0]!.auth, 'accepted')
      assert.equal(owners[0]!.claims?.['mutation'], 'owners')
      assert.equal(owners[0]!.claims?.['name'], 'hwtok-beta')
      assert.equal('vers' in (owners[0]!.claims ?? {}), false)
    }
    assert.deepEqual(registry.owners('hwtok-beta'), ['publisher'])
  })

  test('a build downloads both crates with verified read tokens and runs', async () => {
    const from = lastSeq(registry)
    const app = sandbox.crate('hwtok-app')
    const r = await sandbox.cargo([...Z, 'run', '--quiet'], { cwd: app })
    assert.equal(r.code, 0, show(r))
    assert.match(r.stdout, /answer = 84/)
    const downloads = since(registry, from).filter((x) => x.path.startsWith('/dl/'))
    assert.deepEqual(downloads.map((x) => x.crate?.name).sort(), ['hwtok-alpha', 'hwtok-beta'])
    for (const d of downloads) {
      assert.equal(d.operation, 'read')
      assert.equal(d.auth, 'accepted')
      assert.equal(d.status, 200)
    }
  })

  test('every mutation token was distinct', (t) => {
    const mutations = registry.authenticated().filter((x) => x.operation !== 'read' && x.auth === 'accepted')
    // 2 publishes + yank + unyank + 3 owners.
    assert.equal(mutations.length, 7, JSON.stringify(mutations, null, 2))
    assert.equal(new Set(mutations.map((x) => x.tokenSha256)).size, mutations.length)
    // pasetors does not normalise S (docs/cargo-protocol.md §3): the registry runs non-strict, as cargo's own does.
    const accepted = registry.authenticated().filter((x) => x.auth === 'accepted')
    t.diagnostic(
      `${accepted.filter((x) => x.highS === true).length} of ${accepted.length} accepted cargo tokens were high-S`,
    )
  })

  test('a registry that does not know the key rejects cargo, which prints the verifier code and message', async (t) => {
    const other = await startRegistry({ stateDir: join(dir, 'other'), keys: [softwareKey().k3public] })
    try {
      const box = createCargoSandbox({
        dir: join(dir, 'cargo-other'),
        indexUrl: other.indexUrl,
        credentialProvider: 'cargo:paseto',
        env: {
          __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS: 'nightly',
          CARGO_REGISTRIES_LOCAL_SECRET_KEY: key.k3secret,
        },
      })
      const r = await box.cargo([...Z, 'publish', '--registry', 'local', '--no-verify'], {
        cwd: box.crate('hwtok-alpha'),
      })
      assert.notEqual(r.code, 0, show(r))
      const rejected = other.records().filter((x) => x.auth === 'rejected')
      assert.ok(rejected.length >= 1, JSON.stringify(other.records(), null, 2))
      assert.equal(rejected[0]!.code, 'KEY_ID_MISMATCH')
      t.diagnostic(r.stderr)
      assert.match(r.stderr, /KEY_ID_MISMATCH: no key with id k3\.pid\.\S+ is registered with this registry/)
    } finally {
      await other.stop()
    }
  })
})
