/**
 * When signing cannot happen, the real cargo must fail cleanly: non-zero exit, and its stderr names
 * the cause and the fix (the shim maps agent errors to cargo's `other` kind with the remedy as a
 * cause, docs/cargo-protocol.md §1.5). Nothing reaches the registry with a valid token in any of these cases.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test, type TestContext } from 'node:test'

import { startAgent, type AgentFixture, type StartAgentOptions } from '../helpers/agent.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { createCargoSandbox, show, type CargoResult } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

describe('cargo fails cleanly when the agent cannot sign', () => {
  let dir: string
  let n = 0
  const cleanups: (() => Promise<void>)[] = []

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-e2e-err-'))
  })

  after(async () => {
    for (const c of cleanups.reverse()) await c()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  /** A registry, an agent configured by `agentOptions(registry)`, and a cargo publish through it. */
  async function publishWith(
    t: TestContext,
    agentOptions: (registry: Registry) => StartAgentOptions,
    tweak: {
      afterStart?: (agent: AgentFixture) => Promise<void>
      env?: (agent: AgentFixture) => NodeJS.ProcessEnv
    } = {},
  ): Promise<{ result: CargoResult; registry: Registry; agent: AgentFixture }> {
    const here = join(dir, `case-${++n}`)
    const registry = await startRegistry({ stateDir: join(here, 'registry'), strictLowS: true })
    cleanups.push(() => registry.stop())
    const agent = await startAgent(agentOptions(registry))
    cleanups.push(() => agent.stop())
    registry.addKey(await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label }))
    await tweak.afterStart?.(agent)
    const cargo = createCargoSandbox({
      dir: join(here, 'cargo'),
      indexUrl: registry.indexUrl,
      credentialProvider: agent.shimPath,
      env: tweak.env?.(agent) ?? agent.env,
    })
    const result = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.notEqual(result.code, 0, show(result))
    t.diagnostic(`cargo stderr:\n${result.stderr.trim()}`)
    assert.equal(
      registry.authenticated().filter((r) => r.auth === 'accepted').length,
      0,
      'no token was issued',
    )
    assert.deepEqual(registry.index('hwtok-alpha'), [])
    return { result, registry, agent }
  }

  const bound = (registry: Registry): StartAgentOptions => ({
    registries: { local: { index: registry.indexUrl } },
  })

  test('agent down, autostart disabled: says it is not running and how to start it', async (t) => {
    const { result } = await publishWith(t, bound, {
      afterStart: async (agent) => void (await agent.stopAgent()),
    })
    assert.match(result.stderr, /not running/)
    assert.match(result.stderr, /cargo-pkcs11-agent run/)
    assert.match(result.stderr, /AGENT_UNREACHABLE/)
  })

  test('agent down and cannot start (broken config): says so and points at its log', async (t) => {
    const { result } = await publishWith(t, bound, {
      afterStart: async (agent) => {
        await agent.stopAgent()
        writeFileSync(agent.configPath, '[registries.local]\nindex = 42\n')
      },
      env: (agent) => {
        const env = { ...agent.env }
        delete env['CARGO_PKCS11_AGENT_NO_AUTOSTART']
        return env
      },
    })
    // It exited: cargo shows why (the agent's own lines), and where its log is.
    assert.match(result.stderr, /exited \(status 1\) before listening/)
    assert.match(result.stderr, /registries\.local\.index: must be a non-empty string/)
    assert.match(result.stderr, /its log: .*agent\.log/)
    assert.match(result.stderr, /AGENT_UNREACHABLE/)
  })

  test('token absent: names the token and asks to insert it', async (t) => {
    const { result } = await publishWith(t, (registry) => ({
      registries: { local: { index: registry.indexUrl } },
      tokens: { softhsm: { label: 'not-plugged-in' } },
    }))
    assert.match(result.stderr, /TOKEN_ABSENT/)
    assert.match(result.stderr, /not-plugged-in/)
  })

  // cargo prints only "no credential providers could handle the request" for url-not-supported; the
  // cause and the fix can only reach the user on the provider's stderr (inherited, docs/cargo-protocol.md §1.1).
  test('registry not bound: the provider declines, and stderr names the registry and the config fix', async (t) => {
    const { result, registry } = await publishWith(t, () => ({
      registries: { elsewhere: { index: 'sparse+http://registry.example/index/' } },
    }))
    assert.match(result.stderr, /no credential providers could handle the request/)
    assert.ok(result.stderr.includes(registry.indexUrl), 'names the index URL')
    assert.match(result.stderr, /\[registries\./, 'says how to bind it')
  })

  test('wrong PIN: says the PIN is incorrect, never shows it', async (t) => {
    const wrong = '987654'
    const { result, agent } = await publishWith(t, (registry) => ({
      registries: { local: { index: registry.indexUrl } },
      env: { CARGO_PKCS11_TEST_PIN: wrong },
    }))
    assert.match(result.stderr, /PIN_INCORRECT/)
    assert.match(result.stderr, /PIN/)
    assert.doesNotMatch(result.stderr + agent.log(), new RegExp(wrong))
    assert.doesNotMatch(result.stderr, new RegExp(agent.softhsm.pin))
  })
})
