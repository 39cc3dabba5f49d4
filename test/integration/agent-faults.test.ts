/**
 * The agent and the shim against a device that behaves like hardware: the fault-injecting PKCS#11
 * module (test/fixtures/faulty-pkcs11) in front of SoftHSM delays C_Sign (a touch), removes the
 * token, and counts C_Login calls.
 */
import assert from 'node:assert/strict'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY, repoRoot } from '../helpers/softhsm.js'

const FAULTY = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11', 'libfaulty-pkcs11.so')
const INDEX = 'sparse+http://127.0.0.1:38800/index/'
const CKSUM = 'c'.repeat(64)
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }

function parsed(line: string | undefined): { Ok?: Record<string, unknown>; Err?: Record<string, unknown> } {
  assert.ok(line !== undefined, 'no response line')
  return JSON.parse(line) as { Ok?: Record<string, unknown>; Err?: Record<string, unknown> }
}

function logins(countsFile: string): number {
  if (!existsSync(countsFile)) return 0
  const line = readFileSync(countsFile, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('C_Login '))
  return line === undefined ? 0 : Number(line.split(' ')[1])
}

describe(
  'agent + shim on a device with faults',
  { skip: existsSync(FAULTY) ? false : `build ${FAULTY} first (scripts/setup.sh)` },
  () => {
    let agent: AgentFixture
    let control: string
    let counts: string

    before(async () => {
      agent = await startAgent({
        registries: { local: { index: INDEX, readKey: known, confirm: 'touch' } },
        tokens: { yubikey: { module: FAULTY, kind: 'yubikey' } },
        agent: { 'touch-notice-after-ms': 300 },
        start: false,
      })
      control = join(agent.dir, 'faults')
      counts = join(agent.dir, 'counts')
      Object.assign(agent.agentEnv, { FAULTY_PKCS11_CONTROL: control, FAULTY_PKCS11_COUNTS: counts })
      const child = await agent.spawnAgent()
      const { waitForSocket } = await import('../helpers/agent.js')
      await waitForSocket(agent.socket, child, agent.log)
    })
    after(async () => {
      await agent?.stop()
    })

    test('a slow signature is announced on stderr with what is being signed, and then verifies', async () => {
      writeFileSync(control, 'sign_delay_ms=1500\n')
      const r = await agent.runShim(
        cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.0.0', cksum: CKSUM, registryName: 'local' }),
      )
      writeFileSync(control, '')
      const ok = parsed(r.lines[1]).Ok
      assert.ok(ok !== undefined, r.stdout + r.stderr)
      await verifyToken(String(ok['token']), {
        publicKey: KNOWN_KEY.k3Public,
        url: INDEX,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.0.0', cksum: CKSUM },
      })
      assert.match(
        r.stderr,
        /cargo-credential-pkcs11: Touch your YubiKey[^\n]* to publish foo 1\.0\.0 \(cksum cccccccc…\) to local[^\n]*\(\d+ s to touch\)/,
      )
      assert.equal(r.stdout.includes('Touch'), false, 'notices never reach the protocol stream')
    })

    test('a fast signature shows no touch notice', async () => {
      const r = await agent.runShim(cargoGet(INDEX, 'read'))
      assert.ok(parsed(r.lines[1]).Ok !== undefined)
      assert.doesNotMatch(r.stderr, /Touch/)
    })

    test('token removed: a clear error; reinserted: signing resumes without restarting the agent', async () => {
      writeFileSync(control, 'absent=1\n')
      const gone = await agent.runShim(cargoGet(INDEX, 'read'))
      const err = parsed(gone.lines[1]).Err
      assert.equal(err?.['kind'], 'other', gone.stdout)
      assert.match(JSON.stringify(err), /TOKEN_ABSENT|DEVICE_REMOVED/)
      writeFileSync(control, '')
      const back = await agent.runShim(cargoGet(INDEX, 'read'))
      const ok = parsed(back.lines[1]).Ok
      assert.ok(ok !== undefined, back.stdout + back.stderr + agent.log())
      await verifyToken(String(ok['token']), { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    })

    test('a rejected PIN is tried exactly once', async () => {
      const c = await import('../../src/protocol/client.js')
      await c.callAgent(agent.socket, 'lock')
      const before = logins(counts)
      writeFileSync(control, 'fail.C_Login=0xa0\n')
      const r = await agent.runShim(cargoGet(INDEX, 'read'))
      writeFileSync(control, '')
      assert.match(JSON.stringify(parsed(r.lines[1]).Err), /PIN_INCORRECT/)
      assert.equal(logins(counts) - before, 1)
    })
  },
)
