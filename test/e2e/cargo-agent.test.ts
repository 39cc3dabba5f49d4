/**
 * End to end: the real cargo 1.95 -> the real shim (`credential-provider`) -> the real agent on a
 * SoftHSM token -> the verifying registry, which checks every token with our verifier for exactly the
 * operation of its HTTP request, in strict low-S mode (the agent must normalise S).
 *
 * Signature counts come from two independent places: the agent's audit log (one line per signing
 * decision) and the registry's record (one per request); they are cross-linked by token fingerprint.
 */
import assert from 'node:assert/strict'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid } from '../../src/keys/paserk.js'
import { readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { startRegistry, type Registry, type RequestRecord } from '../fixtures/registry/server.js'
import { cargoThroughAgent, show, type CargoResult, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

type Audit = Record<string, unknown>

/** Runs one cargo command and returns what the registry and the audit log saw during it. */
async function observe(
  registry: Registry,
  agent: AgentFixture,
  run: () => Promise<CargoResult>,
): Promise<{ result: CargoResult; records: RequestRecord[]; audit: Audit[] }> {
  const fromSeq = registry.records().at(-1)?.seq ?? 0
  const fromAudit = readAudit(agent.auditLog).length
  const result = await run()
  return {
    result,
    records: registry.records().filter((r) => r.seq > fromSeq),
    audit: readAudit(agent.auditLog).slice(fromAudit),
  }
}

const signed = (audit: Audit[]): Audit[] => audit.filter((a) => a['result'] === 'signed')
const fingerprint = (r: RequestRecord): string => `sha256:${(r.tokenSha256 ?? '').slice(0, 16)}`

describe('cargo -> shim -> agent (SoftHSM) -> verifying registry', () => {
  let dir: string
  let registry: Registry
  let agent: AgentFixture
  let cargo: CargoSandbox
  let k3public: string

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-e2e-'))
    registry = await startRegistry({ stateDir: join(dir, 'registry'), strictLowS: true, maxAgeSeconds: 120 })
    agent = await startAgent({ registries: { local: { index: registry.indexUrl, tokenMaxAgeSeconds: 120 } } })
    k3public = await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label })
    registry.addKey(k3public)
    cargo = cargoThroughAgent(dir, registry, agent)
  })

  after(async () => {
    await agent?.stop()
    await registry?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('cargo publish costs exactly two signatures, read then publish, both verified', async () => {
    const { result, records, audit } = await observe(registry, agent, () =>
      cargo.cargo(['publish', '--registry', 'local', '--no-verify'], { cwd: cargo.crate('hwtok-alpha') }),
    )
    assert.equal(result.code, 0, show(result) + agent.log())
    assert.deepEqual(
      signed(audit).map((a) => a['operation']),
      ['read', 'publish'],
      JSON.stringify(audit, null, 2),
    )
    const checked = records.filter((r) => r.auth === 'accepted' || r.auth === 'rejected')
    assert.ok(
      checked.every((r) => r.auth === 'accepted'),
      JSON.stringify(checked, null, 2),
    )
    assert.equal(
      new Set(checked.map((r) => r.tokenSha256)).size,
      2,
      'one read token (reused) and one publish token',
    )
    const publish = checked.filter((r) => r.operation === 'publish')
    assert.equal(publish.length, 1)
    const p = publish[0]!
    assert.equal(p.kip, k3Pid(k3public))
    assert.equal(p.footerUrl, registry.indexUrl)
    assert.equal(p.highS, false)
    const [line] = registry.index('hwtok-alpha')
    assert.deepEqual(
      [p.claims?.['mutation'], p.claims?.['name'], p.claims?.['vers'], p.claims?.['cksum']],
      ['publish', 'hwtok-alpha', '0.1.0', line?.cksum],
    )
    // The audit line and the registry record describe the same token.
    const auditPublish = signed(audit).find((a) => a['operation'] === 'publish')!
    assert.equal(auditPublish['token'], fingerprint(p))
    assert.equal(auditPublish['crate'], 'hwtok-alpha')
    assert.equal(auditPublish['vers'], '0.1.0')
    const reads = checked.filter((r) => r.operation === 'read')
    assert.ok(reads.length >= 1)
    for (const r of reads) assert.deepEqual(Object.keys(r.claims ?? {}), ['iat'])
    assert.equal(signed(audit).find((a) => a['operation'] === 'read')!['token'], fingerprint(reads[0]!))
  })

  test('publish of a crate depending on the first one from the same registry', async () => {
    const { result, audit } = await observe(registry, agent, () =>
      cargo.cargo(['publish', '--registry', 'local', '--no-verify'], { cwd: cargo.crate('hwtok-beta') }),
    )
    assert.equal(result.code, 0, show(result) + agent.log())
    assert.deepEqual(
      signed(audit).map((a) => a['operation']),
      ['read', 'publish'],
    )
    const [line] = registry.index('hwtok-beta')
    assert.equal(line?.deps[0]?.package, 'hwtok-alpha')
    assert.equal(line?.deps[0]?.registry, null)
  })

  for (const [title, args, op, yanked] of [
    ['cargo yank --version', ['yank', '--version', '0.1.0', 'hwtok-alpha'], 'yank', true],
    ['cargo yank --undo', ['yank', '--undo', '--version', '0.1.0', 'hwtok-alpha'], 'unyank', false],
  ] as const) {
    test(`${title}: read then ${op}, the ${op} token names crate and version`, async () => {
      const { result, records, audit } = await observe(registry, agent, () =>
        cargo.cargo([...args, '--registry', 'local']),
      )
      assert.equal(result.code, 0, show(result) + agent.log())
      assert.deepEqual(
        signed(audit).map((a) => a['operation']),
        ['read', op],
      )
      const m = records.filter((r) => r.operation === op)
      assert.equal(m.length, 1)
      assert.equal(m[0]!.auth, 'accepted')
      assert.deepEqual(
        [
          m[0]!.claims?.['mutation'],
          m[0]!.claims?.['name'],
          m[0]!.claims?.['vers'],
          'cksum' in (m[0]!.claims ?? {}),
        ],
        [op, 'hwtok-alpha', '0.1.0', false],
      )
      assert.equal(registry.index('hwtok-alpha')[0]!.yanked, yanked)
    })
  }

  test('cargo owner --add, --list, --remove: one owners token each, no vers', async () => {
    for (const [args, expectOwners] of [
      [
        ['--add', 'alice'],
        ['publisher', 'alice'],
      ],
      [['--list'], ['publisher', 'alice']],
      [['--remove', 'alice'], ['publisher']],
    ] as const) {
      const { result, records, audit } = await observe(registry, agent, () =>
        cargo.cargo(['owner', ...args, 'hwtok-beta', '--registry', 'local']),
      )
      assert.equal(result.code, 0, show(result) + agent.log())
      if (args[0] === '--list') assert.match(result.stdout, /alice/)
      assert.deepEqual(
        signed(audit).map((a) => a['operation']),
        ['read', 'owners'],
      )
      const o = records.filter((r) => r.operation === 'owners')
      assert.equal(o.length, 1)
      assert.equal(o[0]!.auth, 'accepted')
      assert.deepEqual(Object.keys(o[0]!.claims ?? {}).sort(), ['iat', 'mutation', 'name'])
      assert.deepEqual(registry.owners('hwtok-beta'), expectOwners)
    }
  })

  test('a build downloads the published crates with read tokens only', async () => {
    const { result, records, audit } = await observe(registry, agent, () =>
      cargo.cargo(['run', '--quiet'], { cwd: cargo.crate('hwtok-app') }),
    )
    assert.equal(result.code, 0, show(result) + agent.log())
    assert.match(result.stdout, /answer = 84/)
    // One read signature for the whole build: the agent answers reads with cache "expires", so cargo
    // reuses the token for every index fetch and download of this invocation.
    assert.equal(signed(audit).length, 1, JSON.stringify(audit, null, 2))
    const reads = records.filter((r) => r.auth === 'accepted')
    assert.ok(reads.length >= 5, 'config.json, two index files, two downloads')
    assert.equal(new Set(reads.map((r) => r.tokenSha256)).size, 1)
    assert.ok(
      signed(audit).every((a) => a['operation'] === 'read'),
      JSON.stringify(audit, null, 2),
    )
    const downloads = records.filter((r) => r.path.startsWith('/dl/'))
    assert.deepEqual(downloads.map((r) => r.crate?.name).sort(), ['hwtok-alpha', 'hwtok-beta'])
    assert.ok(downloads.every((r) => r.operation === 'read' && r.auth === 'accepted' && r.status === 200))
  })

  test('two cargo publish at once: both verified, four signatures, each publish token for its own version', async () => {
    const fromAudit = readAudit(agent.auditLog).length
    const versions = ['0.2.0', '0.3.0']
    const dirs = versions.map((v) => {
      const dir = join(cargo.dir, `alpha-${v}`)
      cpSync(cargo.crate('hwtok-alpha'), dir, { recursive: true })
      const manifest = join(dir, 'Cargo.toml')
      writeFileSync(manifest, readFileSync(manifest, 'utf8').replace(/^version = .*$/m, `version = "${v}"`))
      return dir
    })
    const results = await Promise.all(
      dirs.map((dir) => cargo.cargo(['publish', '--registry', 'local', '--no-verify'], { cwd: dir })),
    )
    for (const r of results) assert.equal(r.code, 0, show(r) + agent.log())
    const audit = signed(readAudit(agent.auditLog).slice(fromAudit))
    assert.deepEqual(audit.map((a) => a['operation']).sort(), ['publish', 'publish', 'read', 'read'])
    const publishes = registry
      .authenticated()
      .filter((r) => r.operation === 'publish' && r.crate?.name === 'hwtok-alpha')
    assert.deepEqual(publishes.map((r) => r.claims?.['vers']).sort(), ['0.1.0', ...versions])
    assert.ok(publishes.every((r) => r.auth === 'accepted'))
    // Index order is arrival order, which two parallel uploads do not fix.
    assert.deepEqual(
      registry
        .index('hwtok-alpha')
        .map((l) => l.vers)
        .sort(),
      ['0.1.0', ...versions],
    )
  })

  test('no mutation token was ever presented twice; every registry-seen token is in the audit log', () => {
    const mutations = registry.authenticated().filter((r) => r.operation !== 'read')
    // alpha ×3, beta publishes + yank + unyank + 3 owners.
    assert.equal(mutations.length, 9)
    assert.ok(mutations.every((r) => r.auth === 'accepted'))
    assert.equal(new Set(mutations.map((r) => r.tokenSha256)).size, mutations.length)
    const issued = new Set(signed(readAudit(agent.auditLog)).map((a) => a['token']))
    for (const r of registry.authenticated()) assert.ok(issued.has(fingerprint(r)), `${r.method} ${r.path}`)
  })
})
