/**
 * Token states SoftHSM never shows by itself, on a real device path: SoftHSM behind the project's
 * fault-injecting PKCS#11 module (test/fixtures/faulty-pkcs11), which ORs CKF_USER_PIN_* flags into
 * C_GetTokenInfo, fails C_Login with a chosen CKR, delays C_Sign like a key waiting for a touch, and
 * counts every call. Policy runs against the real Device; prompts go to the scripted pinentry.
 */
import { approveLoginSignAudit } from '../../src/agent/pipeline/run.js'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, test } from 'node:test'

import { parseAuditLines, AuditLog } from '../../src/audit/log.js'
import { AgentError } from '../../src/lib/errors.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import type { PolicyConfig, RegistryPolicy, TokenPolicy } from '../../src/policy/config.js'
import type { Intent } from '../../src/cargo/intent.js'
import { Policy } from '../../src/policy/policy.js'
import {
  RecordingPrompter,
  ScriptedPinentry,
  publishIntent,
  PUBLISH_CRATE,
  readIntent,
} from '../fixtures/pinentry/harness.js'
import { buildIntentToken, registryPolicy, scriptedPolicy, verifyIntentToken } from '../helpers/policy.js'
import { createSoftHsmToken, repoRoot, SOFTHSM_MODULE, type SoftHsmToken } from '../helpers/softhsm.js'

const run = promisify(execFile)
const FAULTY_DIR = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11')
const FAULTY = join(FAULTY_DIR, 'libfaulty-pkcs11.so')
// CK_TOKEN_INFO flags and CKR values (PKCS#11 v2.40 pkcs11t.h).
const CKF_USER_PIN_COUNT_LOW = 0x10000
const CKF_USER_PIN_FINAL_TRY = 0x20000
const CKF_USER_PIN_LOCKED = 0x40000
const CKR_PIN_INCORRECT = 0xa0

let hsm: SoftHsmToken
let device: Device
let pinentry: ScriptedPinentry
let dir: string
let control: string
let countsFile: string
let audit: AuditLog
let current: Policy | undefined

function faults(lines: string[]): void {
  writeFileSync(control, lines.join('\n') + '\n')
}

function logins(): number {
  if (!existsSync(countsFile)) return 0
  const line = readFileSync(countsFile, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('C_Login '))
  return line === undefined ? 0 : Number(line.split(' ')[1])
}

before(async () => {
  await run('make', ['-s', '-C', FAULTY_DIR])
  hsm = await createSoftHsmToken({ label: 'faults', pin: '482048' })
  dir = mkdtempSync(join(tmpdir(), 'policy-faults-'))
  control = join(dir, 'control')
  countsFile = join(dir, 'counts')
  faults([])
  process.env['SOFTHSM2_CONF'] = hsm.confPath
  process.env['FAULTY_PKCS11_CONTROL'] = control
  process.env['FAULTY_PKCS11_COUNTS'] = countsFile
  process.env['FAULTY_PKCS11_TARGET'] = SOFTHSM_MODULE
  device = new Device({ module: FAULTY, label: 'faults' }, { cachedPin: () => current?.cachedPin('faults') })
  pinentry = new ScriptedPinentry()
  audit = new AuditLog(join(dir, 'state', 'audit.jsonl'))
})

after(async () => {
  faults([])
  await device?.release()
  pinentry?.cleanup()
  rmSync(dir, { recursive: true, force: true })
  await hsm?.cleanup()
})

function policy(overrides: Partial<PolicyConfig> = {}, env: NodeJS.ProcessEnv = pinentry.env()): Policy {
  current?.close()
  current = scriptedPolicy(overrides, { env })
  return current
}

function token(pin: TokenPolicy['pin'] = { kind: 'pinentry' }): TokenPolicy {
  return { id: 'faults', description: "SoftHSM token 'faults'", pin, confirmFinalTry: true }
}

async function request(
  p: Policy,
  intent: Intent,
  registry: RegistryPolicy,
  tok: TokenPolicy = token(),
  prompter = new RecordingPrompter(false),
): Promise<string> {
  const signer = await pkcs11Signer(device, { label: 'gen' })
  const signed = await approveLoginSignAudit(p, audit, {
    intent,
    prompter,
    registry,
    token: tok,
    device,
    sign: async () => {
      const built = await buildIntentToken(signer, intent)
      await verifyIntentToken(built.token, signer.publicKey, intent)
      return { token: built.token, kip: built.kip }
    },
  })
  return signed.token
}

async function loggedOut(): Promise<void> {
  current?.lock()
  await device.logout()
}

const reads = registryPolicy({ confirm: 'none' })

test('final try: pinentry asks for an explicit yes first, warns in the PIN dialog, then one C_Login', async () => {
  const p = policy()
  await loggedOut()
  faults([`token_flags_or=${CKF_USER_PIN_FINAL_TRY}`])
  pinentry.script(['yes', `pin:${hsm.pin}`])
  const before = logins()
  await request(p, readIntent(), reads)
  assert.equal(logins() - before, 1)
  const order = pinentry
    .log()
    .filter((r) => r.event === 'command' && (r.command === 'CONFIRM' || r.command === 'GETPIN'))
    .map((r) => r.command)
  assert.deepEqual(order.slice(-2), ['CONFIRM', 'GETPIN'])
  assert.match(pinentry.commands('SETDESC').at(-2)?.arg ?? '', /^FINAL PIN TRY for SoftHSM token 'faults'/)
  assert.equal(pinentry.commands('SETERROR').at(-1)?.arg, 'FINAL TRY: a wrong PIN blocks the token')
})

test('final try refused, or with a PIN from the environment: POLICY_DENIED and no C_Login at all', async () => {
  const p = policy()
  await loggedOut()
  faults([`token_flags_or=${CKF_USER_PIN_FINAL_TRY}`])
  pinentry.script(['no'])
  const before = logins()
  await assert.rejects(request(p, readIntent(), reads), { code: 'POLICY_DENIED' })
  assert.equal(pinentry.commands('GETPIN').length, 1, 'no PIN asked after the refusal')
  const envPolicy = policy({ headless: true }, { FAULTS_PIN: hsm.pin })
  await assert.rejects(
    request(envPolicy, readIntent(), reads, token({ kind: 'env', variable: 'FAULTS_PIN' })),
    (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'POLICY_DENIED')
      assert.match(e.remedy ?? '', /pkcs11-tool --module <module> --login --login-type so --init-pin/)
      return true
    },
  )
  assert.equal(logins(), before)
  const last = parseAuditLines(readFileSync(audit.path, 'utf8')).at(-1)
  assert.deepEqual([last?.result, last?.code], ['denied', 'POLICY_DENIED'])
})

test('locked PIN: PIN_LOCKED before any prompt or C_Login', async () => {
  const p = policy()
  await loggedOut()
  faults([`token_flags_or=${CKF_USER_PIN_LOCKED}`])
  const starts = pinentry.starts()
  const before = logins()
  await assert.rejects(request(p, readIntent(), reads), { code: 'PIN_LOCKED' })
  assert.equal(pinentry.starts(), starts)
  assert.equal(logins(), before)
})

test('the token rejects the PIN: exactly one C_Login, tries shown, nothing cached, next request asks again', async () => {
  const p = policy()
  await loggedOut()
  faults([`fail.C_Login=${CKR_PIN_INCORRECT}`, `token_flags_or=${CKF_USER_PIN_COUNT_LOW}`])
  pinentry.script([`pin:${hsm.pin}`, `pin:${hsm.pin}`])
  const before = logins()
  await assert.rejects(request(p, readIntent(), reads), (e: unknown) => {
    assert.ok(e instanceof AgentError)
    assert.equal(e.code, 'PIN_INCORRECT')
    assert.match(e.message, /few tries left/)
    return true
  })
  assert.equal(logins() - before, 1)
  assert.equal(p.pinCache.size, 0)
  assert.equal(pinentry.remaining().length, 1)
  assert.equal(
    pinentry.commands('SETERROR').at(-1)?.arg,
    'Few PIN tries left: check the PIN before you press OK',
  )
  faults([])
  await request(p, readIntent(), reads)
  assert.equal(pinentry.remaining().length, 0, 'the next request asked for the PIN again')
})

test('after lock and logout, the next request costs exactly one C_Login (the key is found again, no stale handle)', async () => {
  const p = policy()
  pinentry.script([`pin:${hsm.pin}`, `pin:${hsm.pin}`])
  await request(p, readIntent(), reads) // the device now holds the key's handle
  await loggedOut()
  const before = logins()
  await request(p, readIntent(), reads)
  assert.equal(logins() - before, 1)
})

test('a signature waiting on the device raises the touch notice with the intent, then completes', async () => {
  const p = policy({ touchNoticeAfterMs: 200 })
  pinentry.script([`pin:${hsm.pin}`])
  await request(p, readIntent(), reads)
  faults(['sign_delay_ms=1200'])
  const prompter = new RecordingPrompter(false)
  const intent = publishIntent()
  await request(p, intent, registryPolicy({ confirm: 'touch' }), token(), prompter)
  faults([])
  const notice = prompter.notices.find((n) => n.kind === 'touch-pending')
  assert.ok(notice !== undefined && notice.kind === 'touch-pending')
  assert.equal(notice.intent, intent)
  assert.match(
    notice.text,
    /^Touch SoftHSM token 'faults' to publish foo 1\.2\.3 \(cksum 6dee75a8…\) to my-registry/,
  )
  const last = parseAuditLines(readFileSync(audit.path, 'utf8')).at(-1)
  // SoftHSM attests no touch policy: the audit line says the touch is only the operator's word.
  assert.deepEqual([last?.result, last?.approval], ['signed', 'touch-unattested'])
  assert.match(last?.kip ?? '', /^k3\.pid\./)
})

test('a touch that never comes: TOUCH_TIMEOUT says so, nothing is released, the audit line says failed', async () => {
  const p = policy({ touchNoticeAfterMs: 100, touchTimeoutMs: 600 })
  pinentry.script([`pin:${hsm.pin}`])
  await request(p, readIntent(), reads)
  faults(['sign_delay_ms=2500'])
  const prompter = new RecordingPrompter(false)
  await assert.rejects(
    request(
      p,
      publishIntent({ crate: { ...PUBLISH_CRATE, vers: '3.0.0' } }),
      registryPolicy({ confirm: 'touch' }),
      token(),
      prompter,
    ),
    (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'TOUCH_TIMEOUT')
      assert.match(
        e.message,
        /^No touch received on SoftHSM token 'faults' within 0\.6 s, so nothing was signed$/,
      )
      return true
    },
  )
  faults([])
  assert.ok(prompter.notices.some((n) => n.kind === 'touch-pending'))
  const last = parseAuditLines(readFileSync(audit.path, 'utf8')).at(-1)
  assert.deepEqual(
    [last?.result, last?.code, last?.vers, last?.token],
    ['failed', 'TOUCH_TIMEOUT', '3.0.0', undefined],
  )
  // The device call itself finishes later; wait for it so the session comes back before cleanup.
  await new Promise((r) => setTimeout(r, 2_500))
})
