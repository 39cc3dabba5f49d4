/**
 * The YubiKey day end to end, from a blank card: `setup --module ykcs11` (factory management key
 * replaced, keys generated with their policies), the keys registered at the registry fixture with
 * their attestations (pubkey --attest), then the real `cargo publish` through the shim and the agent:
 * the publish waits for a touch on 9c (the notice names the crate), the reads on 9a do not, and every
 * token verifies at the registry against the attested keys.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parseConfig } from '../../src/config/load.js'
import { k3Pid } from '../../src/keys/paserk.js'
import { LIMITS } from '../../src/lib/limits.js'
import { runAgentCli, startAgent, type AgentFixture } from '../helpers/agent.js'
import { startVirtualYubiKey, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoThroughAgent, show, type CargoSandbox } from './lib/cargo.js'

const PIN = '123456' // the factory PIN of a blank card
const SERIAL = 27182818
const TOUCH_MS = LIMITS.touchNoticeAfterMs + 1_000

describe('cargo publish from a blank YubiKey: setup, attested registration, touch for the publish only', () => {
  let dir: string
  let yk: VirtualYubiKey
  let registry: Registry
  let agent: AgentFixture
  let cargo: CargoSandbox
  let keys: { read: string; mutation: string }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-e2e-yk-setup-'))
    yk = await startVirtualYubiKey({ serial: SERIAL, blank: true })
    await yk.waitForToken()
    registry = await startRegistry({
      stateDir: join(dir, 'registry'),
      attestationRoots: [yk.attestationCa.pem],
      strictLowS: true,
      maxAgeSeconds: 120,
    })
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...yk.env,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_PKCS11_TEST_PIN: PIN,
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    const r = await runAgentCli(
      [
        'setup',
        '--module',
        'ykcs11',
        '--pin-source',
        'env',
        '--pin-env',
        'CARGO_PKCS11_TEST_PIN',
        '--registry',
        'local',
        '--index',
        registry.indexUrl,
      ],
      { env, timeoutMs: 120_000 },
    )
    assert.equal(r.code, 0, r.stdout + r.stderr)
    const key = (role: string): string =>
      new RegExp(`${role} key in slot 9[ac][^\\n]*\\n(k3\\.public\\.[A-Za-z0-9_-]+)`).exec(r.stdout)?.[1] ??
      ''
    keys = { read: key('read'), mutation: key('mutation') }
    const configPath = join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')
    const written = parseConfig(readFileSync(configPath, 'utf8'), configPath, env).registries['local']
    assert.equal(written?.confirm, 'touch')

    for (const [role, id] of [
      ['read', '01'],
      ['mutation', '02'],
    ] as const) {
      const chain = await runAgentCli(
        ['pubkey', '--config', configPath, '--token', 'yubikey', '--id', id, '--attest'],
        { env },
      )
      assert.equal(chain.code, 0, chain.stderr)
      registry.registerAttestedKey(keys[role], chain.stdout, role)
    }

    await yk.control.setTouchDelay(TOUCH_MS)
    // The agent fixture writes its own config; the binding is the one setup wrote.
    agent = await startAgent({
      tokens: { yubikey: { module: yk.module, serial: String(SERIAL), kind: 'yubikey', pinSource: 'env' } },
      registries: {
        local: {
          index: registry.indexUrl,
          tokenMaxAgeSeconds: 120,
          readKey: { token: 'yubikey', id: String(written?.readKey.id) },
          mutationKey: { token: 'yubikey', id: String(written?.mutationKey.id) },
          confirm: 'touch',
        },
      },
      env: { ...yk.env, CARGO_PKCS11_TEST_PIN: PIN },
    })
    cargo = cargoThroughAgent(dir, registry, agent)
  })

  after(async () => {
    await agent?.stop()
    await registry?.stop()
    await yk?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('publish waits for one touch, announced with the crate; reads do not; all tokens verify at the registry', async () => {
    const touches = (await yk.control.counters()).touches
    const r = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.equal(r.code, 0, show(r) + agent.log())
    const checked = registry.authenticated()
    assert.ok(
      checked.every((x) => x.auth === 'accepted'),
      JSON.stringify(checked, null, 2),
    )
    const reads = checked.filter((x) => x.operation === 'read')
    assert.ok(reads.every((x) => x.kip === k3Pid(keys.read)))
    const publish = checked.filter((x) => x.operation === 'publish')
    assert.equal(publish.length, 1)
    assert.equal(publish[0]!.kip, k3Pid(keys.mutation))
    assert.match(r.stderr, /Touch .*publish hwtok-alpha 0\.1\.0/)
    assert.doesNotMatch(r.stderr, /Touch .*\bread\b/)
    assert.equal((await yk.control.counters()).touches - touches, 1)
  })
})
