/**
 * End to end through PKCS#11 remoting (docs/remote-tokens.md): the real cargo -> shim -> agent ->
 * p11-kit-client.so -> `p11-kit server` -> SoftHSM, every token checked by the verifying registry
 * in strict low-S mode. The agent cannot reach SoftHSM itself (its SOFTHSM2_CONF points nowhere):
 * only the server holds the token. The server is then killed (listener and its `p11-kit remote`
 * children) and restarted on the same socket while the same agent process keeps running.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid } from '../../src/keys/paserk.js'
import { tokenFingerprint } from '../../src/audit/entry.js'
import { resolveModulePath } from '../../src/pkcs11/modules.js'
import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { startP11KitServer, type P11KitServer } from '../helpers/p11kit.js'
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoThroughAgent, show, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

type Audit = Record<string, unknown>

describe('cargo -> shim -> agent -> p11-kit-client -> p11-kit server -> SoftHSM -> verifying registry', () => {
  let dir: string
  let softhsm: SoftHsmToken
  let server: P11KitServer
  let registry: Registry
  let agent: AgentFixture
  let cargo: CargoSandbox
  let k3public: string

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-e2e-p11kit-'))
    softhsm = await createSoftHsmToken({ label: 'fleet' })
    server = await startP11KitServer({
      provider: softhsm.module,
      tokenLabel: softhsm.label,
      socket: join(dir, 'p11-kit.sock'),
      env: softhsm.env,
    })
    k3public = await tokenK3Public({ ...softhsm, keyLabel: softhsm.generatedKey.label })
    registry = await startRegistry({
      stateDir: join(dir, 'registry'),
      keys: [k3public],
      strictLowS: true,
      maxAgeSeconds: 120,
    })
    agent = await startAgent({
      softhsm,
      tokens: {
        fleet: {
          module: 'p11-kit-client',
          label: softhsm.label,
          kind: 'hsm',
          moduleEnv: { P11_KIT_SERVER_ADDRESS: server.address },
        },
      },
      registries: { local: { index: registry.indexUrl, tokenMaxAgeSeconds: 120 } },
      env: { CI: 'true', SOFTHSM2_CONF: join(dir, 'no-softhsm-for-the-agent.conf') },
    })
    cargo = cargoThroughAgent(dir, registry, agent)
  })

  after(async () => {
    await agent?.stop()
    await registry?.stop()
    await server?.stop()
    await softhsm?.cleanup()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('publish, server killed: one clean error naming the server; restarted: the same agent signs again', async (t) => {
    const agentPid = agent.process?.pid
    const clientPath = resolveModulePath('p11-kit-client')
    const linesFrom = (from: number): Audit[] => readAudit(agent.auditLog).slice(from)

    // 1. A publish through the server.
    let from = readAudit(agent.auditLog).length
    const first = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.equal(first.code, 0, `${show(first)}\n${agent.log()}\n${server.log()}`)
    const firstLines = linesFrom(from)
    assert.deepEqual(
      firstLines.map((a) => [a['result'], a['operation']]),
      [
        ['signed', 'read'],
        ['signed', 'publish'],
      ],
    )
    for (const line of firstLines)
      assert.deepEqual(line['device'], { token: 'fleet', module: clientPath, server: server.address })

    // 2. The server goes away: the next cargo command fails once, cleanly, naming the server.
    await server.kill()
    from = readAudit(agent.auditLog).length
    const gap = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-beta'),
    })
    assert.notEqual(gap.code, 0, show(gap))
    t.diagnostic(`cargo stderr while the server was down:\n${gap.stderr.trim()}`)
    assert.match(gap.stderr, /TOKEN_ABSENT/)
    assert.ok(gap.stderr.includes(`p11-kit server at ${server.address} is not reachable`), gap.stderr)
    assert.match(gap.stderr, /Start \(or restart\) `p11-kit server` on that address/)
    const gapLines = linesFrom(from)
    assert.equal(gapLines.length, 1, JSON.stringify(gapLines, null, 2))
    assert.equal(gapLines[0]?.['result'], 'failed')
    assert.equal(gapLines[0]?.['code'], 'TOKEN_ABSENT')
    assert.ok(String(gapLines[0]?.['reason']).includes(server.address))
    assert.deepEqual(gapLines[0]?.['device'], { token: 'fleet', module: clientPath, server: server.address })
    assert.deepEqual(registry.index('hwtok-beta'), [], 'nothing was published in the gap')

    // 3. The server is back on the same socket: the next request signs, on the same agent process.
    await server.restart()
    const started = performance.now()
    const read = await agent.runShim(cargoGet(registry.indexUrl, 'read', { registryName: 'local' }))
    const reconnectMs = performance.now() - started
    assert.equal(read.status, 0, `${read.stderr}\n${agent.log()}\n${server.log()}`)
    const readToken = (JSON.parse(read.lines[1] ?? '{}') as { Ok?: { token?: string } }).Ok?.token ?? ''
    assert.ok(readToken.startsWith('v3.public.'), read.stdout)
    const again = performance.now()
    await agent.runShim(cargoGet(registry.indexUrl, 'read', { registryName: 'local' }))
    t.diagnostic(
      `first request after the restart (reconnect + login + sign, one shim process): ${reconnectMs.toFixed(0)} ms; the next: ${(performance.now() - again).toFixed(0)} ms`,
    )
    from = readAudit(agent.auditLog).length
    const second = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-beta'),
    })
    assert.equal(second.code, 0, `${show(second)}\n${agent.log()}\n${server.log()}`)
    assert.deepEqual(
      linesFrom(from).map((a) => [a['result'], a['operation'], (a['device'] as Audit)['server']]),
      [
        ['signed', 'read', server.address],
        ['signed', 'publish', server.address],
      ],
    )
    assert.equal(agent.process?.pid, agentPid, 'the same agent process')
    assert.equal(agent.process?.exitCode, null, 'the agent kept running')
    // The env PIN held before was forgotten with the server and read again from the environment for
    // the re-login (docs/remote-tokens.md, "When the server restarts").
    assert.ok(
      agent.log().includes(`token fleet lost its p11-kit server ${server.address}; its PIN was forgotten`),
      agent.log(),
    )
    assert.match(agent.log(), /token fleet reconnected/)

    // Every token the registry saw verified (strict low-S) for the registered key, and each one
    // is an audit line's token: nothing was signed that the log does not show.
    const checked = registry.authenticated()
    assert.ok(checked.length >= 4)
    assert.ok(
      checked.every((r) => r.auth === 'accepted' && r.kip === k3Pid(k3public)),
      JSON.stringify(checked, null, 2),
    )
    const audited = new Set(readAudit(agent.auditLog).map((a) => a['token']))
    for (const r of checked) assert.ok(audited.has(`sha256:${(r.tokenSha256 ?? '').slice(0, 16)}`))
    assert.ok(audited.has(tokenFingerprint(readToken)))
    assert.deepEqual(
      registry.index('hwtok-beta').map((l) => l.vers),
      ['0.1.0'],
    )
  })
})
