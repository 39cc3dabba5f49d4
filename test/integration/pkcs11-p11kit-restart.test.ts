/**
 * The p11-kit server goes away while a signature is running on it (docs/remote-tokens.md §1.1).
 * The server exports the fault-injecting module (test/fixtures/faulty-pkcs11) in front of SoftHSM,
 * so its C_Sign waits like a touch; the server is killed during that wait. The request fails with
 * one error naming the server, and once the server is back the same agent process signs again.
 */
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { startP11KitServer, type P11KitServer } from '../helpers/p11kit.js'
import { createSoftHsmToken, KNOWN_KEY, repoRoot, type SoftHsmToken } from '../helpers/softhsm.js'

const FAULTY = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11', 'libfaulty-pkcs11.so')
const INDEX = 'sparse+http://127.0.0.1:38591/index/'
const CKSUM = '6dee75a8bd1d03d85f48bbd140b736b2c36df889a700754c5a24214de8b29c62'
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }

describe(
  'p11-kit server killed during a signature',
  { skip: existsSync(FAULTY) ? false : `build ${FAULTY} first (scripts/setup.sh)` },
  () => {
    let dir: string
    let control: string
    let softhsm: SoftHsmToken
    let server: P11KitServer
    let agent: AgentFixture

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'hwtok-p11kit-restart-'))
      control = join(dir, 'faulty.control')
      writeFileSync(control, '')
      softhsm = await createSoftHsmToken({ label: 'slow' })
      server = await startP11KitServer({
        provider: FAULTY,
        tokenLabel: softhsm.label,
        socket: join(dir, 'p11-kit.sock'),
        env: { ...softhsm.env, FAULTY_PKCS11_TARGET: softhsm.module, FAULTY_PKCS11_CONTROL: control },
      })
      agent = await startAgent({
        softhsm,
        tokens: {
          slow: {
            module: 'p11-kit-client',
            label: softhsm.label,
            kind: 'hsm',
            moduleEnv: { P11_KIT_SERVER_ADDRESS: server.address },
          },
        },
        registries: { local: { index: INDEX, readKey: known, tokenMaxAgeSeconds: 120 } },
        env: { CI: 'true', SOFTHSM2_CONF: join(dir, 'no-softhsm-for-the-agent.conf') },
      })
    })

    after(async () => {
      await agent?.stop()
      await server?.stop()
      await softhsm?.cleanup()
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
    })

    test('the pending signature fails naming the server; after the restart the same agent signs', async () => {
      const publish = cargoGet(INDEX, 'publish', {
        name: 'foo',
        vers: '1.0.0',
        cksum: CKSUM,
        registryName: 'local',
      })
      // A first signature logs the agent in through the server.
      const warm = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
      assert.equal(warm.status, 0, `${warm.stderr}\n${agent.log()}`)

      writeFileSync(control, 'sign_delay_ms=3000\n')
      const pending = agent.runShim(publish)
      // Wait until the server's C_Sign is waiting (the agent logged the sign as pending is not
      // observable from here; the delay is long enough that 800 ms lands inside it).
      await new Promise((r) => setTimeout(r, 800))
      await server.kill()
      const failed = await pending
      const err = (JSON.parse(failed.lines[1] ?? '{}') as { Err?: { message?: string } }).Err
      assert.ok(err !== undefined, failed.stdout)
      assert.ok(
        err.message?.includes(`the connection to the p11-kit server at ${server.address} failed`),
        JSON.stringify(err),
      )
      assert.match(failed.stderr + JSON.stringify(err), /DEVICE_ERROR/)
      const lines = readAudit(agent.auditLog)
      assert.deepEqual(
        lines.map((l) => [l['result'], l['operation'], l['code']]),
        [
          ['signed', 'read', undefined],
          ['failed', 'publish', 'DEVICE_ERROR'],
        ],
      )

      writeFileSync(control, '')
      await server.restart()
      const pid = agent.process?.pid
      const again = await agent.runShim(publish)
      assert.equal(again.status, 0, `${again.stderr}\n${agent.log()}\n${server.log()}`)
      const token = (JSON.parse(again.lines[1] ?? '{}') as { Ok?: { token?: string } }).Ok?.token ?? ''
      await verifyToken(token, {
        publicKey: KNOWN_KEY.k3Public,
        url: INDEX,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.0.0', cksum: CKSUM },
        strictLowS: true,
      })
      assert.equal(agent.process?.pid, pid)
      assert.equal(agent.process?.exitCode, null)
      assert.equal(readAudit(agent.auditLog).at(-1)?.['result'], 'signed')
      // The connection broke inside C_Sign: the held env PIN went with it, and the re-login read it
      // again from the environment (docs/remote-tokens.md, "When the server restarts").
      assert.ok(
        agent.log().includes(`token slow lost its p11-kit server ${server.address}; its PIN was forgotten`),
        agent.log(),
      )
    })
  },
)
