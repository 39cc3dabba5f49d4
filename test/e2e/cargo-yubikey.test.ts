/**
 * End to end on a (virtual) YubiKey: the real cargo -> shim -> agent -> the REAL ykcs11 -> pcscd ->
 * the PIV card emulator (test/fixtures/vpiv). The touch notice must reach cargo's stderr and say
 * what is being approved (docs/design.md §5, point 1).
 *
 * ykcs11 2.2 marks slot 9C (digital signature) CKA_ALWAYS_AUTHENTICATE whatever its PIN policy, so
 * 9C needs a context-specific login per signature, with the PIN the agent holds (from pin-env here).
 * The first suite signs everything with 9A; the second uses the design's layout: reads on 9A without
 * touch, mutations on 9C with touch.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import { LIMITS } from '../../src/lib/limits.js'
import { readAudit, startAgent, type AgentFixture, type RegistryFixture } from '../helpers/agent.js'
import {
  startVirtualYubiKey,
  type VirtualYubiKey,
  type VirtualYubiKeyOptions,
} from '../helpers/virtual-yubikey.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoThroughAgent, show, type CargoSandbox } from './lib/cargo.js'

const PIN = '654321'
const SERIAL = 31415926
/** Longer than LIMITS.touchNoticeAfterMs, so the agent announces the pending touch. */
const TOUCH_MS = LIMITS.touchNoticeAfterMs + 1_000

interface Rig {
  dir: string
  yk: VirtualYubiKey
  registry: Registry
  agent: AgentFixture
  cargo: CargoSandbox
}

async function startRig(
  prefix: string,
  card: Omit<VirtualYubiKeyOptions, 'pin' | 'serial'>,
  binding: Omit<RegistryFixture, 'index'>,
): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  // Whatever started before a failure is stopped here: `after` only sees a complete rig.
  const started: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })]
  try {
    return await assemble(dir, card, binding, started)
  } catch (error) {
    for (const stop of started.reverse()) await stop().catch(() => {})
    throw error
  }
}

async function assemble(
  dir: string,
  card: Omit<VirtualYubiKeyOptions, 'pin' | 'serial'>,
  binding: Omit<RegistryFixture, 'index'>,
  started: (() => Promise<void>)[],
): Promise<Rig> {
  const yk = await startVirtualYubiKey({ pin: PIN, serial: SERIAL, ...card })
  started.push(() => yk.stop())
  await yk.waitForToken()
  const keys = [yk.publicKeys['9a'], yk.publicKeys['9c']]
    .filter((k) => k !== undefined)
    .map((k) => k3Public(k))
  const registry = await startRegistry({
    stateDir: join(dir, 'registry'),
    keys,
    strictLowS: true,
    maxAgeSeconds: 120,
  })
  started.push(() => registry.stop())
  const agent = await startAgent({
    tokens: { yubikey: { module: yk.module, serial: String(SERIAL), kind: 'yubikey', pinSource: 'env' } },
    registries: { local: { index: registry.indexUrl, tokenMaxAgeSeconds: 120, ...binding } },
    env: { ...yk.env, CARGO_PKCS11_TEST_PIN: PIN },
  })
  const cargo = cargoThroughAgent(dir, registry, agent)
  return { dir, yk, registry, agent, cargo }
}

async function stopRig(rig: Rig | undefined): Promise<void> {
  if (rig === undefined) return
  await rig.agent.stop()
  await rig.registry.stop()
  await rig.yk.stop()
  rmSync(rig.dir, { recursive: true, force: true })
}

describe('cargo -> shim -> agent -> ykcs11 on a virtual YubiKey (slot 9A, touch always)', () => {
  let rig: Rig

  before(async () => {
    rig = await startRig(
      'hwtok-e2e-yk-',
      { touchDelayMs: TOUCH_MS, keys: { '9a': { pinPolicy: 'once', touchPolicy: 'always' }, '9c': false } },
      {
        readKey: { token: 'yubikey', id: '01' },
        mutationKey: { token: 'yubikey', id: '01' },
        confirm: 'touch',
      },
    )
  })

  after(() => stopRig(rig))

  test('publish: two signatures on the card, the publish touch announced with crate and version', async () => {
    const { yk, registry, agent, cargo } = rig
    const signs = (await yk.control.counters()).sign
    const fromAudit = readAudit(agent.auditLog).length
    const r = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.equal(r.code, 0, show(r) + agent.log())

    const checked = registry.authenticated()
    assert.ok(
      checked.every((x) => x.auth === 'accepted' && x.kip === k3Pid(yk.publicKeys['9a']!)),
      JSON.stringify(checked, null, 2),
    )
    const publish = checked.filter((x) => x.operation === 'publish')
    assert.equal(publish.length, 1)
    assert.equal(publish[0]!.claims?.['name'], 'hwtok-alpha')
    assert.equal((await yk.control.counters()).sign - signs, 2, 'read + publish, each signed by the card')
    const audit = readAudit(agent.auditLog)
      .slice(fromAudit)
      .filter((a) => a['result'] === 'signed')
    assert.deepEqual(
      audit.map((a) => [a['operation'], a['approval']]),
      [
        ['read', 'not-required'],
        ['publish', 'touch'],
      ],
    )
    // The human sees what the touch approves before touching: operation, crate, version.
    assert.match(r.stderr, /Touch .*publish hwtok-alpha 0\.1\.0/)
    assert.equal(r.stderr.includes(PIN), false)
  })

  test('yank: a fresh signature after another touch, verified for exactly that yank', async () => {
    const { registry, agent, cargo } = rig
    const r = await cargo.cargo(['yank', '--version', '0.1.0', 'hwtok-alpha', '--registry', 'local'])
    assert.equal(r.code, 0, show(r) + agent.log())
    const yank = registry.authenticated().filter((x) => x.operation === 'yank')
    assert.equal(yank.length, 1)
    assert.equal(yank[0]!.auth, 'accepted')
    assert.deepEqual([yank[0]!.claims?.['name'], yank[0]!.claims?.['vers']], ['hwtok-alpha', '0.1.0'])
    assert.match(r.stderr, /Touch .*yank hwtok-alpha 0\.1\.0/)
    assert.equal(registry.index('hwtok-alpha')[0]!.yanked, true)
  })
})

describe('virtual YubiKey, design layout: reads on 9A (no touch), mutations on 9C (PIN always + touch), PIN from the environment', () => {
  let rig: Rig

  before(async () => {
    rig = await startRig(
      'hwtok-e2e-yk2-',
      { touchDelayMs: TOUCH_MS },
      {
        readKey: { token: 'yubikey', id: '01' },
        mutationKey: { token: 'yubikey', id: '02' },
        confirm: 'touch',
      },
    )
  })

  after(() => stopRig(rig))

  test('publish: read by 9A silently, publish by 9C after a touch', async () => {
    const { yk, registry, agent, cargo } = rig
    const r = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.equal(r.code, 0, show(r) + agent.log())
    const checked = registry.authenticated()
    assert.ok(
      checked.filter((x) => x.operation === 'read').every((x) => x.kip === k3Pid(yk.publicKeys['9a']!)),
    )
    const publish = checked.filter((x) => x.operation === 'publish')
    assert.equal(publish.length, 1)
    assert.equal(publish[0]!.auth, 'accepted')
    assert.equal(publish[0]!.kip, k3Pid(yk.publicKeys['9c']!))
    assert.match(r.stderr, /Touch .*publish hwtok-alpha 0\.1\.0/)
    assert.doesNotMatch(r.stderr, /Touch .*\bread\b/)
  })
})
