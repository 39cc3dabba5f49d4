/**
 * Several runners, one token (docs/remote-tokens.md): two real agent processes, each with its own
 * socket, config and audit log, reach one SoftHSM token through one real `p11-kit server` (each
 * agent is its own client connection, served by its own `p11-kit remote`). Both sign at the same
 * time through the real shim. Every token is verified with the project's verifier against
 * KNOWN_KEY, whose public key comes from the fixture, not from either agent; each audit log holds
 * exactly one line per token its agent issued, naming the module and the server.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { tokenFingerprint } from '../../src/audit/entry.js'
import { resolveModulePath } from '../../src/pkcs11/modules.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { startP11KitServer, type P11KitServer } from '../helpers/p11kit.js'
import { createSoftHsmToken, KNOWN_KEY, type SoftHsmToken } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38590/index/'
const CKSUM = '6dee75a8bd1d03d85f48bbd140b736b2c36df889a700754c5a24214de8b29c62'
const PER_AGENT = 8
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }

describe('two agents share one token behind one p11-kit server', () => {
  let dir: string
  let softhsm: SoftHsmToken
  let server: P11KitServer
  const agents: AgentFixture[] = []

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-p11kit-shared-'))
    softhsm = await createSoftHsmToken({ label: 'shared' })
    server = await startP11KitServer({
      provider: softhsm.module,
      tokenLabel: softhsm.label,
      socket: join(dir, 'p11-kit.sock'),
      env: softhsm.env,
    })
    for (let i = 0; i < 2; i++) {
      agents.push(
        await startAgent({
          softhsm,
          tokens: {
            shared: {
              module: 'p11-kit-client',
              label: softhsm.label,
              kind: 'hsm',
              moduleEnv: { P11_KIT_SERVER_ADDRESS: server.address },
            },
          },
          registries: { local: { index: INDEX, readKey: known, tokenMaxAgeSeconds: 120 } },
          env: { CI: 'true', SOFTHSM2_CONF: join(dir, 'no-softhsm-for-the-agents.conf') },
        }),
      )
    }
  })

  after(async () => {
    for (const agent of agents) await agent.stop()
    await server?.stop()
    await softhsm?.cleanup()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('concurrent reads and publishes from both agents: every token verifies, both audit logs complete', async (t) => {
    const started = performance.now()
    const requests = agents.flatMap((agent, a) =>
      Array.from({ length: PER_AGENT }, (_, i) => {
        const publish = i % 2 === 1
        const crate = { name: `runner${a}-crate${i}`, vers: '1.0.0', cksum: CKSUM }
        return agent
          .runShim(
            publish
              ? cargoGet(INDEX, 'publish', { ...crate, registryName: 'local' })
              : cargoGet(INDEX, 'read', { registryName: 'local' }),
          )
          .then((r) => ({ agent: a, publish, crate, r }))
      }),
    )
    const results = await Promise.all(requests)
    t.diagnostic(
      `${results.length} shim requests over ${agents.length} agents and one p11-kit server: ${(performance.now() - started).toFixed(0)} ms`,
    )

    // Both agents are clients of the one server: it forked one `p11-kit remote` for each.
    const pid = server.pid()
    assert.ok(pid !== undefined)
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)
    assert.equal(children.length, agents.length, `p11-kit remote processes: ${children.join(' ')}`)

    const issued: string[][] = agents.map(() => [])
    for (const { agent, publish, crate, r } of results) {
      assert.equal(r.status, 0, `${r.stderr}\n${agents[agent]?.log()}\n${server.log()}`)
      const token = (JSON.parse(r.lines[1] ?? '{}') as { Ok?: { token?: string } }).Ok?.token ?? ''
      await verifyToken(token, {
        publicKey: KNOWN_KEY.k3Public,
        url: INDEX,
        strictLowS: true,
        ...(publish ? { operation: 'publish', crate } : { operation: 'read' }),
      })
      issued[agent]?.push(tokenFingerprint(token))
    }

    const module = resolveModulePath('p11-kit-client')
    agents.forEach((agent, a) => {
      const lines = readAudit(agent.auditLog)
      assert.equal(lines.length, PER_AGENT, JSON.stringify(lines, null, 2))
      assert.ok(lines.every((l) => l['result'] === 'signed'))
      assert.deepEqual(lines.map((l) => l['token']).sort(), [...(issued[a] ?? [])].sort())
      assert.equal(new Set(lines.map((l) => l['token'])).size, PER_AGENT)
      assert.deepEqual(
        lines
          .filter((l) => l['operation'] === 'publish')
          .map((l) => l['crate'])
          .sort(),
        Array.from({ length: PER_AGENT / 2 }, (_, i) => `runner${a}-crate${2 * i + 1}`),
      )
      for (const l of lines)
        assert.deepEqual(l['device'], { token: 'shared', module, server: server.address })
    })
  })
})
