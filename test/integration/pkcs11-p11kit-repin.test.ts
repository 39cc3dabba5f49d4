/**
 * A typed PIN is not sent to whatever answers at the p11-kit server's address after the server went
 * away (docs/remote-tokens.md, "When the server restarts"): nothing authenticates that server, and
 * the token's label and serial it is found by are not secret. The real agent process talks to a real
 * `p11-kit server` exporting SoftHSM through p11-kit-client.so; the PIN comes from the scripted
 * pinentry, which logs every question. After the server is killed and started again on the same
 * socket, the next request asks for the PIN again instead of logging in with the held one.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { verifyToken } from '../../src/verify/verify.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { cargoGet, readAudit, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { startP11KitServer, type P11KitServer } from '../helpers/p11kit.js'
import { createSoftHsmToken, KNOWN_KEY, type SoftHsmToken } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38593/index/'
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }

function response(line: string | undefined): { Ok?: { token?: string }; Err?: Record<string, unknown> } {
  assert.ok(line !== undefined, 'no response line')
  return JSON.parse(line) as { Ok?: { token?: string }; Err?: Record<string, unknown> }
}

describe('p11-kit server restarted: a PIN typed in pinentry is asked for again', () => {
  let dir: string
  let softhsm: SoftHsmToken
  let server: P11KitServer
  let agent: AgentFixture
  let pinentry: ScriptedPinentry

  const questions = (): number => pinentry.commands('GETPIN').length
  const read = async (): Promise<{ token?: string; err?: Record<string, unknown>; raw: string }> => {
    const r = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
    const answer = response(r.lines[1])
    const raw = `${r.stdout}\n${r.stderr}\n${agent.log()}\n${server.log()}`
    return {
      ...(answer.Ok?.token === undefined ? {} : { token: answer.Ok.token }),
      ...(answer.Err === undefined ? {} : { err: answer.Err }),
      raw,
    }
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-p11kit-repin-'))
    softhsm = await createSoftHsmToken({ label: 'fleet' })
    server = await startP11KitServer({
      provider: softhsm.module,
      tokenLabel: softhsm.label,
      socket: join(dir, 'p11-kit.sock'),
      env: softhsm.env,
    })
    pinentry = new ScriptedPinentry()
    agent = await startAgent({
      softhsm,
      start: false,
      tokens: {
        fleet: {
          module: 'p11-kit-client',
          label: softhsm.label,
          kind: 'hsm',
          pinSource: 'pinentry',
          moduleEnv: { P11_KIT_SERVER_ADDRESS: server.address },
        },
      },
      registries: { local: { index: INDEX, readKey: known, confirm: 'none', tokenMaxAgeSeconds: 120 } },
      env: {
        PINENTRY_SCRIPT: pinentry.scriptPath,
        PINENTRY_LOG: pinentry.logPath,
        // Only the server holds the token: the agent's own SoftHSM configuration points nowhere.
        SOFTHSM2_CONF: join(dir, 'no-softhsm-for-the-agent.conf'),
      },
    })
    const config = parse(readFileSync(agent.configPath, 'utf8')) as {
      tokens: Record<string, Record<string, unknown>>
    }
    ;(config.tokens['fleet'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
    writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
    delete agent.agentEnv[agent.pinEnv]
    const child = await agent.spawnAgent()
    await waitForSocket(agent.socket, child, () => agent.log())
  })

  after(async () => {
    await agent?.stop()
    await server?.stop()
    await softhsm?.cleanup()
    pinentry?.cleanup()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('held while the server lives; forgotten when it goes; the next request asks (cancel refuses, the PIN signs)', async () => {
    const verify = (token: string | undefined, raw: string): Promise<unknown> => {
      assert.ok(token !== undefined, raw)
      return verifyToken(token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    }
    // 1. Typed once, then held: the second request asks nobody.
    pinentry.script([`pin:${softhsm.pin}`])
    const first = await read()
    await verify(first.token, first.raw)
    assert.equal(questions(), 1)
    const held = await read()
    await verify(held.token, held.raw)
    assert.equal(questions(), 1, 'the held PIN served the second request')

    // 2. The server goes away and a server is back at the same address (here the same one; the
    //    agent cannot tell it from another that serves a copy of the token).
    await server.kill()
    await server.restart()

    // 3. The next request asks for the PIN: cancelled, it fails and no held PIN was used.
    pinentry.script(['cancel'])
    const asked = await read()
    assert.equal(asked.token, undefined, 'signed with a PIN nobody typed for this server')
    assert.match(JSON.stringify(asked.err), /PIN_ENTRY_FAILED/, asked.raw)
    assert.equal(questions(), 2, 'pinentry was asked again after the server restart')
    assert.match(agent.log(), /token fleet lost its p11-kit server unix:path=\S+; its PIN was forgotten/)
    assert.match(agent.log(), /token fleet reconnected/)

    // 4. Typed again, the same agent process signs through the new server.
    pinentry.script([`pin:${softhsm.pin}`])
    const again = await read()
    await verify(again.token, again.raw)
    assert.equal(questions(), 3)
    assert.equal(agent.process?.exitCode, null, 'the agent kept running')
    assert.deepEqual(
      readAudit(agent.auditLog).map((l) => l['result']),
      ['signed', 'signed', 'failed', 'signed'],
    )
  })
})
