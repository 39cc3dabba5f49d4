/**
 * The first-day journey with the real cargo (RFC 3231 "cargo login" + registry registration):
 * no key yet -> cargo publish says to log in -> `cargo login -- --generate` makes the key on the
 * token and prints its k3.public -> the registry operator registers that key -> publish works, and
 * the registry finds the key by the footer kip the login printed.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid } from '../../src/keys/paserk.js'
import { startAgent, type AgentFixture } from '../helpers/agent.js'
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoThroughAgent, show, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

describe('cargo login on an empty token, then registration, then publish', () => {
  let dir: string
  let softhsm: SoftHsmToken
  let registry: Registry
  let agent: AgentFixture
  let cargo: CargoSandbox
  let printed: string

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-e2e-login-'))
    softhsm = await createSoftHsmToken({ label: 'fresh', keys: false })
    registry = await startRegistry({ stateDir: join(dir, 'registry'), strictLowS: true })
    agent = await startAgent({
      softhsm,
      registries: { local: { index: registry.indexUrl, readKey: { label: 'cargo' } } },
    })
    cargo = cargoThroughAgent(dir, registry, agent)
  })

  after(async () => {
    await agent?.stop()
    await registry?.stop()
    await softhsm?.cleanup()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('without a key, cargo publish fails and cargo says to log in', async () => {
    const r = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.notEqual(r.code, 0, show(r))
    // The provider answers not-found (docs/cargo-protocol.md §1.7: so `cargo login` can proceed); cargo words the hint.
    assert.match(r.stderr, /no token found for `local`/)
    assert.match(r.stderr, /log in using this registry's credential provider/)
    assert.equal(registry.authenticated().filter((x) => x.auth === 'accepted').length, 0)
  })

  test('cargo login -- --generate makes the key on the token and prints the k3.public to register', async () => {
    const r = await cargo.cargo(['login', '--registry', 'local', '--', '--generate'])
    assert.equal(r.code, 0, show(r) + agent.log())
    const k3 = /^(k3\.public\.[A-Za-z0-9_-]{66})$/m.exec(r.stderr)?.[1]
    assert.ok(k3 !== undefined, r.stderr)
    printed = k3
    assert.match(r.stderr, new RegExp(`^${k3Pid(k3).replace(/[.+-]/g, '\\$&')}$`, 'm'))
    // What the login printed is the key the token holds (read independently with pkcs11-tool).
    assert.equal(await tokenK3Public({ ...softhsm, keyLabel: 'cargo' }), k3)
  })

  test('once the registry has the printed key, publish works and is verified with it', async () => {
    registry.addKey(printed)
    const r = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.equal(r.code, 0, show(r) + agent.log())
    const publish = registry.authenticated().filter((x) => x.operation === 'publish')
    assert.equal(publish.length, 1)
    assert.equal(publish[0]!.auth, 'accepted')
    assert.equal(publish[0]!.kip, k3Pid(printed))
  })
})
