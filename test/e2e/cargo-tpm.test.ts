/**
 * End to end on a TPM 2.0: the real cargo -> shim -> agent -> tpm2-pkcs11 -> swtpm (the CI runner
 * case: a key in the machine's TPM, PIN from the environment, headless). Every token is checked by
 * the verifying registry for exactly its operation, in strict low-S mode.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid } from '../../src/keys/paserk.js'
import { readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { startSoftwareTpm, type SoftwareTpm } from '../helpers/swtpm.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoThroughAgent, show, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

const LABEL = 'cargo-tpm'
const PIN = '24681357'
const KEY = { label: 'cargo', id: '01' }

describe('cargo -> shim -> agent (headless) -> tpm2-pkcs11 on swtpm -> verifying registry', () => {
  let dir: string
  let tpm: SoftwareTpm
  let registry: Registry
  let agent: AgentFixture
  let cargo: CargoSandbox
  let k3public: string

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-e2e-tpm-'))
    tpm = await startSoftwareTpm({ label: LABEL, pin: PIN, soPin: '86420864', key: KEY })
    k3public = await tokenK3Public({
      module: tpm.module,
      env: { ...process.env, ...tpm.env },
      label: LABEL,
      keyLabel: KEY.label,
    })
    registry = await startRegistry({
      stateDir: join(dir, 'registry'),
      keys: [k3public],
      strictLowS: true,
      maxAgeSeconds: 120,
    })
    agent = await startAgent({
      tokens: { tpm: { module: tpm.module, label: LABEL, kind: 'tpm', pinSource: 'env' } },
      registries: {
        local: {
          index: registry.indexUrl,
          readKey: { token: 'tpm', label: KEY.label },
          tokenMaxAgeSeconds: 120,
        },
      },
      env: { ...tpm.env, CARGO_PKCS11_TEST_PIN: PIN, CI: 'true' },
    })
    cargo = cargoThroughAgent(dir, registry, agent)
  })

  after(async () => {
    await agent?.stop()
    await registry?.stop()
    await tpm?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('publish of two crates, yank, and a build that downloads them, all signed in the TPM', async () => {
    const steps: [string[], string | undefined, string[]][] = [
      [['publish', '--registry', 'local', '--no-verify'], 'hwtok-alpha', ['read', 'publish']],
      [['publish', '--registry', 'local', '--no-verify'], 'hwtok-beta', ['read', 'publish']],
      [['yank', '--version', '0.1.0', 'hwtok-beta', '--registry', 'local'], undefined, ['read', 'yank']],
      [
        ['yank', '--undo', '--version', '0.1.0', 'hwtok-beta', '--registry', 'local'],
        undefined,
        ['read', 'unyank'],
      ],
      [['run', '--quiet'], 'hwtok-app', ['read']],
    ]
    for (const [args, crate, ops] of steps) {
      const fromAudit = readAudit(agent.auditLog).length
      const r = await cargo.cargo(args, crate === undefined ? {} : { cwd: cargo.crate(crate) })
      assert.equal(r.code, 0, `cargo ${args.join(' ')}\n${show(r)}${agent.log()}\n${tpm.log()}`)
      const signed = readAudit(agent.auditLog)
        .slice(fromAudit)
        .filter((a) => a['result'] === 'signed')
      assert.deepEqual(
        signed.map((a) => a['operation']),
        ops,
        `cargo ${args.join(' ')}`,
      )
      if (args[0] === 'run') assert.match(r.stdout, /answer = 84/)
    }
    const checked = registry.authenticated()
    assert.ok(
      checked.every((x) => x.auth === 'accepted' && x.kip === k3Pid(k3public)),
      JSON.stringify(checked, null, 2),
    )
    const mutations = checked.filter((x) => x.operation !== 'read')
    assert.deepEqual(
      mutations.map((x) => x.operation),
      ['publish', 'publish', 'yank', 'unyank'],
    )
    assert.equal(new Set(mutations.map((x) => x.tokenSha256)).size, 4)
    assert.deepEqual(
      checked
        .filter((x) => x.path.startsWith('/dl/'))
        .map((x) => x.crate?.name)
        .sort(),
      ['hwtok-alpha', 'hwtok-beta'],
    )
  })
})
