/**
 * A PIN the agent holds, refused by the token on a login the device does by itself, is never sent
 * again. The key has CKA_ALWAYS_AUTHENTICATE (like YubiKey PIV slot 9C), so every signature needs a
 * context-specific C_Login with the held PIN. The real agent process signs on SoftHSM behind the
 * fault-injecting module (test/fixtures/faulty-pkcs11), which refuses C_Login on demand and counts
 * every C_Login; the PIN comes from the scripted pinentry, which records every time it is asked.
 */
import assert from 'node:assert/strict'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { k3Public } from '../../src/keys/paserk.js'
import { Device } from '../../src/pkcs11/device.js'
import { verifyToken } from '../../src/verify/verify.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { cargoGet, runAgentCli, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import {
  createSoftHsmToken,
  generateKey,
  repoRoot,
  SOFTHSM_MODULE,
  type SoftHsmToken,
} from '../helpers/softhsm.js'

const FAULTY = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11', 'libfaulty-pkcs11.so')
const INDEX = 'sparse+http://127.0.0.1:38811/index/'
const KEY = { label: 'always', id: 'a1' }
const CKR_PIN_INCORRECT = 0xa0

function response(line: string | undefined): { Ok?: { token?: string }; Err?: Record<string, unknown> } {
  assert.ok(line !== undefined, 'no response line')
  return JSON.parse(line) as { Ok?: { token?: string }; Err?: Record<string, unknown> }
}

describe(
  'the agent never resends a held PIN the token refused',
  { skip: existsSync(FAULTY) ? false : `build ${FAULTY} first (scripts/setup.sh)` },
  () => {
    let softhsm: SoftHsmToken
    let agent: AgentFixture
    let pinentry: ScriptedPinentry
    let control: string
    let counts: string
    let publicKey: string

    const logins = (): number => {
      if (!existsSync(counts)) return 0
      const line = readFileSync(counts, 'utf8')
        .split('\n')
        .find((l) => l.startsWith('C_Login '))
      return line === undefined ? 0 : Number(line.split(' ')[1])
    }

    before(async () => {
      softhsm = await createSoftHsmToken()
      await generateKey(softhsm, softhsm, { ...KEY, alwaysAuthenticate: true })
      // The key's public half, read here (no login needed) to verify what the agent signs.
      process.env['SOFTHSM2_CONF'] = softhsm.confPath
      const device = new Device({ module: SOFTHSM_MODULE, label: softhsm.label })
      const key = await device.findKey(KEY)
      publicKey = k3Public(key.publicKey)
      await device.release()

      pinentry = new ScriptedPinentry()
      agent = await startAgent({
        softhsm,
        start: false,
        tokens: { softhsm: { module: FAULTY, pinSource: 'pinentry' } },
        registries: { local: { index: INDEX, readKey: KEY, confirm: 'none' } },
        env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
      })
      const config = parse(readFileSync(agent.configPath, 'utf8')) as {
        tokens: Record<string, Record<string, unknown>>
      }
      ;(config.tokens['softhsm'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
      writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
      delete agent.agentEnv[agent.pinEnv]
      control = join(agent.dir, 'faults')
      counts = join(agent.dir, 'counts')
      writeFileSync(control, '')
      Object.assign(agent.agentEnv, { FAULTY_PKCS11_CONTROL: control, FAULTY_PKCS11_COUNTS: counts })
      const child = await agent.spawnAgent()
      await waitForSocket(agent.socket, child, () => agent.log())
    })

    after(async () => {
      await agent?.stop()
      await softhsm?.cleanup()
      pinentry?.cleanup()
    })

    test('refused at the context-specific login: forgotten, the human is asked, the PIN is not sent again', async () => {
      // 1. The PIN is typed once: C_Login(CKU_USER), then C_Login(CKU_CONTEXT_SPECIFIC) for the signature.
      pinentry.script([`pin:${softhsm.pin}`])
      const first = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
      const token = response(first.lines[1]).Ok?.token
      assert.ok(token !== undefined, first.stdout + first.stderr + agent.log())
      await verifyToken(token, { publicKey, url: INDEX, operation: 'read' })
      assert.equal(pinentry.starts(), 1)
      const afterFirst = logins()
      assert.equal(afterFirst, 2, 'one C_Login as user, one context-specific')

      // 2. The token now refuses that PIN (changed elsewhere): the one context-specific login fails.
      writeFileSync(control, `fail.C_Login=${CKR_PIN_INCORRECT}\n`)
      const refused = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
      assert.match(JSON.stringify(response(refused.lines[1]).Err), /PIN_INCORRECT/, refused.stdout)
      assert.equal(logins(), afterFirst + 1, 'exactly one C_Login with the held PIN')
      assert.equal(pinentry.starts(), 1, 'the held PIN was used, nobody was asked')
      assert.match(agent.log(), /token softhsm refused the held PIN; it was forgotten/)

      // 3. The next request has no held PIN: it asks the human (who cancels) instead of resending it.
      pinentry.script(['cancel'])
      const asked = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
      assert.match(JSON.stringify(response(asked.lines[1]).Err), /PIN_ENTRY_FAILED/, asked.stdout)
      assert.equal(pinentry.starts(), 2, 'pinentry was asked for a new PIN')
      assert.equal(logins(), afterFirst + 1, 'the refused PIN was not sent a second time')

      // 4. With the right PIN typed again, signing resumes.
      writeFileSync(control, '')
      pinentry.script([`pin:${softhsm.pin}`])
      const again = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
      const token2 = response(again.lines[1]).Ok?.token
      assert.ok(token2 !== undefined, again.stdout + again.stderr + agent.log())
      await verifyToken(token2, { publicKey, url: INDEX, operation: 'read' })
      assert.equal(pinentry.starts(), 3)
    })
  },
)

describe(
  'a PIN from a file, refused at the context-specific login, is not resent until the file changes',
  { skip: existsSync(FAULTY) ? false : `build ${FAULTY} first (scripts/setup.sh)` },
  () => {
    let softhsm: SoftHsmToken
    let agent: AgentFixture
    let control: string
    let counts: string
    let pinFile: string
    let publicKey: string

    const logins = (): number => {
      if (!existsSync(counts)) return 0
      const line = readFileSync(counts, 'utf8')
        .split('\n')
        .find((l) => l.startsWith('C_Login '))
      return line === undefined ? 0 : Number(line.split(' ')[1])
    }
    const read = async () => await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))

    before(async () => {
      softhsm = await createSoftHsmToken()
      await generateKey(softhsm, softhsm, { ...KEY, alwaysAuthenticate: true })
      // This process's SoftHSM already read the first store's config: ask a child for the key.
      const pub = await runAgentCli(
        [
          'pubkey',
          '--module',
          SOFTHSM_MODULE,
          '--token-label',
          softhsm.label,
          '--label',
          KEY.label,
          '--format',
          'k3',
        ],
        { env: { ...process.env, SOFTHSM2_CONF: softhsm.confPath } },
      )
      assert.equal(pub.code, 0, pub.stderr)
      publicKey = pub.stdout.trim()
      agent = await startAgent({
        softhsm,
        start: false,
        tokens: { softhsm: { module: FAULTY, pinSource: 'file', pinFile: '/placeholder' } },
        registries: { local: { index: INDEX, readKey: KEY, confirm: 'none' } },
      })
      pinFile = join(agent.dir, 'user.pin')
      writeFileSync(pinFile, softhsm.pin, { mode: 0o600 })
      const config = parse(readFileSync(agent.configPath, 'utf8')) as {
        tokens: Record<string, Record<string, unknown>>
      }
      ;(config.tokens['softhsm'] as Record<string, unknown>)['pin-file'] = pinFile
      writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
      control = join(agent.dir, 'faults')
      counts = join(agent.dir, 'counts')
      writeFileSync(control, '')
      Object.assign(agent.agentEnv, { FAULTY_PKCS11_CONTROL: control, FAULTY_PKCS11_COUNTS: counts })
      const child = await agent.spawnAgent()
      await waitForSocket(agent.socket, child, () => agent.log())
    })

    after(async () => {
      await agent?.stop()
      await softhsm?.cleanup()
    })

    test('one refusal costs one try; the same value is refused by the agent; a changed value is tried', async () => {
      const first = await read()
      const token = response(first.lines[1]).Ok?.token
      assert.ok(token !== undefined, first.stdout + first.stderr + agent.log())
      await verifyToken(token, { publicKey, url: INDEX, operation: 'read' })
      const afterFirst = logins()
      assert.equal(afterFirst, 2, 'one C_Login as user, one context-specific')

      // The token now refuses that PIN (changed elsewhere): one context-specific login fails.
      writeFileSync(control, `fail.C_Login=${CKR_PIN_INCORRECT}\n`)
      const refused = await read()
      assert.match(JSON.stringify(response(refused.lines[1]).Err), /PIN_INCORRECT/, refused.stdout)
      assert.equal(logins(), afterFirst + 1)

      // The file still holds the refused value: the agent refuses it itself, no C_Login.
      for (let i = 0; i < 2; i += 1) {
        const again = await read()
        const err = JSON.stringify(response(again.lines[1]).Err)
        assert.match(err, /already rejected the PIN from its PIN file/, again.stdout + agent.log())
        assert.equal(logins(), afterFirst + 1, 'the refused PIN was not sent again')
      }

      // A changed value is tried (once), and after the token accepts PINs again the right one signs.
      writeFileSync(pinFile, `${softhsm.pin}0`, { mode: 0o600 })
      const changed = await read()
      assert.match(JSON.stringify(response(changed.lines[1]).Err), /PIN_INCORRECT/, changed.stdout)
      assert.equal(logins(), afterFirst + 2, 'the new value was tried once')
      writeFileSync(control, '')
      writeFileSync(pinFile, softhsm.pin, { mode: 0o600 })
      const signed = await read()
      const token2 = response(signed.lines[1]).Ok?.token
      assert.ok(token2 !== undefined, signed.stdout + signed.stderr + agent.log())
      await verifyToken(token2, { publicKey, url: INDEX, operation: 'read' })
    })
  },
)
