/**
 * The policy stage against a real SoftHSM token (src/pkcs11/device.ts), the scripted pinentry as a
 * real child process speaking Assuan, real signatures verified with src/verify, and the real
 * fsync'd audit log. The only wrapper is a pass-through that counts C_Login / C_Logout calls.
 */
import { approveLoginSignAudit } from '../../src/agent/pipeline/run.js'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'

import { parseAuditLines, AuditLog } from '../../src/audit/log.js'
import { AgentError } from '../../src/lib/errors.js'
import type { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import type { PolicyConfig, RegistryPolicy, TokenPolicy } from '../../src/policy/config.js'
import { describeIntent, type Prompter } from '../../src/policy/intent.js'
import type { Intent } from '../../src/cargo/intent.js'
import type { PolicyDevice } from '../../src/policy/login.js'
import { Policy } from '../../src/policy/policy.js'
import type { Signer } from '../../src/signer/signer.js'
import {
  RecordingPrompter,
  ScriptedPinentry,
  publishIntent,
  PUBLISH_CRATE,
  readIntent,
} from '../fixtures/pinentry/harness.js'
import { buildIntentToken, registryPolicy, scriptedPolicy, verifyIntentToken } from '../helpers/policy.js'
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm.js'

const PIN = '246810'
let hsm: SoftHsmToken
let device: Device
let counted: PolicyDevice & { logins: number; logouts: number }
let signer: Signer
let pinentry: ScriptedPinentry
let dir: string
let audit: AuditLog
let now = Date.parse('2026-11-25T12:00:00Z')
const logEvents: string[] = []
let signs = 0

before(async () => {
  hsm = await createSoftHsmToken({ label: 'policy', pin: PIN })
  // SoftHSM reads SOFTHSM2_CONF once, at C_Initialize (first Device call).
  process.env['SOFTHSM2_CONF'] = hsm.confPath
  // Wired as the agent wires it (src/agent/agent.ts): the device may log in again with the PIN the
  // policy holds, e.g. after reconnecting.
  device = new Device(
    { module: hsm.module, label: 'policy' },
    { cachedPin: () => current?.cachedPin('policy') },
  )
  counted = {
    logins: 0,
    logouts: 0,
    status: () => device.status(),
    needsLogin: () => device.needsLogin(),
    login: async (pin: Pin | null) => {
      counted.logins += 1
      await device.login(pin)
    },
    logout: async () => {
      counted.logouts += 1
      await device.logout()
    },
  }
  pinentry = new ScriptedPinentry()
  dir = mkdtempSync(join(tmpdir(), 'policy-softhsm-'))
  audit = new AuditLog(join(dir, 'state', 'audit.jsonl'))
})

after(async () => {
  await device?.release()
  pinentry?.cleanup()
  rmSync(dir, { recursive: true, force: true })
  await hsm?.cleanup()
})

let current: Policy | undefined

function policy(
  overrides: Partial<PolicyConfig> = {},
  env: NodeJS.ProcessEnv = pinentry.env(),
  secretEnvVariables: string[] = [],
): Policy {
  current = scriptedPolicy(
    { pinCacheIdleSeconds: 60, pinCacheMaxSeconds: 600, ...overrides },
    {
      clock: () => now,
      env,
      secretEnvVariables,
      log: (event, data) => logEvents.push(JSON.stringify({ event, data })),
    },
  )
  return current
}

function tokenPolicy(pin: TokenPolicy['pin'] = { kind: 'pinentry' }): TokenPolicy {
  return { id: 'policy', description: device.describe(), pin, confirmFinalTry: true }
}

async function getSigner(): Promise<Signer> {
  signer ??= await pkcs11Signer(device, { label: 'gen' })
  return signer
}

/** One request through the whole policy stage; the sign step builds a real token on the device. */
async function request(
  p: Policy,
  intent: Intent,
  registry: RegistryPolicy,
  prompter: Prompter = new RecordingPrompter(false),
  token = tokenPolicy(),
): Promise<string> {
  const signed = await approveLoginSignAudit(p, audit, {
    intent,
    prompter,
    registry,
    token,
    device: counted,
    kip: 'k3.pid.test',
    sign: async () => {
      signs += 1
      return { token: (await buildIntentToken(await getSigner(), intent)).token }
    },
  })
  return signed.token
}

async function verifies(token: string, intent: Intent): Promise<void> {
  await verifyIntentToken(token, (await getSigner()).publicKey, intent)
}

function lastAudit() {
  return parseAuditLines(readFileSync(audit.path, 'utf8')).at(-1)
}

const reads = registryPolicy({ confirm: 'none' })
const prompted = registryPolicy({ confirm: 'prompt' })
const shared = { policy: undefined as Policy | undefined }

test('the PIN is asked once through pinentry, cached, and used for the next requests', async () => {
  const p = (shared.policy = policy())
  pinentry.script([`pin:${PIN}`])
  const intent = readIntent({ requester: { pid: 4242, command: 'cargo build', tty: '/dev/pts/9' } })
  for (let i = 0; i < 3; i++) {
    const token = await request(p, intent, reads)
    await verifies(token, intent)
    now += 30_000
  }
  assert.equal(pinentry.starts(), 1)
  assert.equal(counted.logins, 1)
  const desc = pinentry.commands('SETDESC')[0]?.arg ?? ''
  assert.ok(desc.includes("token 'policy'"), desc)
  assert.ok(desc.includes(describeIntent(intent)), desc)
  assert.ok(pinentry.commands('OPTION').some((c) => c.arg === 'ttyname=/dev/pts/9'))
  assert.equal(pinentry.commands('GETPIN').length, 1)
  assert.equal(lastAudit()?.result, 'signed')
})

test('after the idle lifetime the PIN is forgotten, the token logged out, and the PIN asked again', async () => {
  const p = shared.policy as Policy
  now += 61_000
  pinentry.script([`pin:${PIN}`])
  const before = { starts: pinentry.starts(), logins: counted.logins, logouts: counted.logouts }
  const token = await request(p, readIntent(), reads)
  await verifies(token, readIntent())
  assert.equal(pinentry.starts(), before.starts + 1)
  assert.equal(counted.logouts, before.logouts + 1)
  assert.equal(counted.logins, before.logins + 1)
  assert.ok(logEvents.some((l) => l.includes('"reason":"idle"')))
})

test('after lock the PIN is asked again', async () => {
  const p = shared.policy as Policy
  assert.equal(p.lock(), 1)
  pinentry.script([`pin:${PIN}`])
  const starts = pinentry.starts()
  await request(p, readIntent(), reads)
  assert.equal(pinentry.starts(), starts + 1)
  assert.equal(p.pinCache.size, 1)
})

test('concurrent requests for one token share one PIN dialog', async () => {
  const p = policy()
  await device.logout()
  pinentry.script([`pin:${PIN}`, `pin:${PIN}`, `pin:${PIN}`])
  const starts = pinentry.starts()
  const tokens = await Promise.all([1, 2, 3].map(() => request(p, readIntent(), reads)))
  for (const t of tokens) await verifies(t, readIntent())
  assert.equal(pinentry.starts(), starts + 1)
  assert.equal(pinentry.remaining().length, 2)
})

test('a wrong PIN leads to exactly one login attempt, is not retried, and is not cached', async () => {
  const p = shared.policy as Policy
  p.lock()
  await device.logout()
  pinentry.script(['pin:999999', `pin:${PIN}`])
  const before = { starts: pinentry.starts(), logins: counted.logins }
  await assert.rejects(request(p, readIntent(), reads), (e: unknown) => {
    assert.ok(e instanceof AgentError)
    assert.equal(e.code, 'PIN_INCORRECT')
    assert.match(e.message, /does not retry/)
    return true
  })
  assert.equal(counted.logins, before.logins + 1)
  assert.equal(pinentry.starts(), before.starts + 1)
  assert.deepEqual(pinentry.remaining(), [`pin:${PIN}`])
  assert.equal(p.pinCache.size, 0)
  assert.equal(lastAudit()?.result, 'failed')
  assert.equal(lastAudit()?.code, 'PIN_INCORRECT')
  // The next request asks again and succeeds with the right PIN.
  await request(p, readIntent(), reads)
  assert.equal(counted.logins, before.logins + 2)
})

test('confirm = "prompt" through pinentry CONFIRM: approve proceeds and the signed token carries the intent', async () => {
  const p = shared.policy as Policy
  pinentry.script(['yes'])
  const intent = publishIntent()
  const signsBefore = signs
  const token = await request(p, intent, prompted)
  await verifies(token, intent)
  assert.equal(signs, signsBefore + 1)
  const desc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
  assert.ok(
    desc.includes(
      'publish foo 1.2.3 (cksum 6dee75a8…) to my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 4242 (calls itself `cargo publish`)',
    ),
    desc,
  )
  assert.equal(pinentry.commands('CONFIRM').length, 1)
  const line = lastAudit()
  assert.equal(line?.result, 'signed')
  assert.equal(line?.approval, 'pinentry')
  assert.equal(line?.crate, 'foo')
  assert.equal(line?.cksum, '6dee75a8f0d2b1c4')
})

test('confirm = "prompt": deny is DENIED, nothing is signed, and the audit line says denied', async () => {
  const p = shared.policy as Policy
  pinentry.script(['no'])
  const signsBefore = signs
  await assert.rejects(request(p, publishIntent({ crate: { ...PUBLISH_CRATE, vers: '1.2.4' } }), prompted), {
    code: 'DENIED',
  })
  assert.equal(signs, signsBefore)
  const line = lastAudit()
  assert.equal(line?.result, 'denied')
  assert.equal(line?.code, 'DENIED')
  assert.equal(line?.vers, '1.2.4')
  assert.equal(line?.token, undefined)
})

test('confirm on the requesting terminal (shim prompter): the question shows the intent', async () => {
  const p = policy({ confirmVia: 'auto' })
  const prompter = new RecordingPrompter(true)
  prompter.answers = [true, false]
  prompter.pins = [PIN]
  const intent = publishIntent({ operation: 'yank' })
  const { cksum: _c, ...yankCrate } = intent.crate
  const yank = { ...intent, crate: yankCrate }
  await request(p, yank, prompted, prompter, tokenPolicy({ kind: 'tty' }))
  assert.equal(prompter.pinRequests.length, 1)
  assert.equal(prompter.pinRequests[0]?.reason, describeIntent(yank))
  assert.match(prompter.confirmations[0]?.text ?? '', /^Allow yank foo 1\.2\.3 on my-registry/)
  await assert.rejects(request(p, yank, prompted, prompter, tokenPolicy({ kind: 'tty' })), { code: 'DENIED' })
  assert.equal(prompter.pinRequests.length, 1)
})

test('headless with no PIN: immediate PIN_REQUIRED, no pinentry started, nothing consumed', async () => {
  const p = policy({ headless: true })
  await device.logout()
  pinentry.script([`pin:${PIN}`, 'yes'])
  const starts = pinentry.starts()
  const signsBefore = signs
  await assert.rejects(request(p, readIntent(), reads), (e: unknown) => {
    assert.ok(e instanceof AgentError)
    assert.equal(e.code, 'PIN_REQUIRED')
    assert.match(e.remedy ?? '', /pin-env|pin-file/)
    return true
  })
  // A prompted mutation cannot be confirmed headless either (refused before any PIN).
  await assert.rejects(request(p, publishIntent(), prompted), { code: 'POLICY_DENIED' })
  assert.equal(pinentry.starts(), starts)
  assert.equal(pinentry.remaining().length, 2)
  assert.equal(signs, signsBefore)
})

test('headless with pin-env works, and the PIN variable never reaches pinentry', async () => {
  const env = { ...pinentry.env(), CARGO_PKCS11_TEST_PIN: PIN }
  const p = policy({}, env, ['CARGO_PKCS11_TEST_PIN'])
  await device.logout()
  pinentry.script(['yes'])
  const token = await request(
    p,
    publishIntent({ crate: { ...PUBLISH_CRATE, vers: '2.0.0' } }),
    prompted,
    new RecordingPrompter(false),
    tokenPolicy({ kind: 'env', variable: 'CARGO_PKCS11_TEST_PIN' }),
  )
  await verifies(token, publishIntent({ crate: { ...PUBLISH_CRATE, vers: '2.0.0' } }))
  const start = pinentry
    .log()
    .filter((r) => r.event === 'start')
    .at(-1)
  assert.ok(start?.environ?.includes('PINENTRY_SCRIPT='))
  assert.equal(start?.environ?.includes('CARGO_PKCS11_TEST_PIN'), false)
})

test('nothing secret in the audit log, the debug log, notices, errors or pinentry argv/env', async () => {
  const starts = pinentry.log().filter((r) => r.event === 'start')
  assert.ok(starts.length >= 5)
  for (const s of starts) {
    assert.equal(s.cmdline?.includes(PIN), false)
    assert.equal(s.environ?.includes(PIN), false)
    assert.deepEqual(s.argv?.slice(2), [])
  }
  // The pinentry log holds every command the client sent (D lines come from pinentry, not to it).
  for (const r of pinentry.log().filter((x) => x.event === 'command'))
    assert.equal(r.raw?.includes(PIN), false)
  const auditText = readFileSync(audit.path, 'utf8')
  assert.equal(auditText.includes(PIN), false)
  assert.ok(
    parseAuditLines(auditText).every((e) => e.token === undefined || /^sha256:[0-9a-f]{16}$/.test(e.token)),
  )
  assert.equal(logEvents.join('\n').includes(PIN), false)
  // An error path that carries the PIN source: wrong PIN from the environment.
  const p = policy({}, { CARGO_PKCS11_TEST_PIN: '13579135' }, ['CARGO_PKCS11_TEST_PIN'])
  await device.logout()
  const error = await request(
    p,
    readIntent(),
    reads,
    new RecordingPrompter(false),
    tokenPolicy({ kind: 'env', variable: 'CARGO_PKCS11_TEST_PIN' }),
  ).then(
    () => undefined,
    (e: unknown) => e,
  )
  assert.ok(error instanceof AgentError && error.code === 'PIN_INCORRECT')
  const wire = JSON.stringify({ wire: error.toWire(), describe: error.describe(), stack: error.stack })
  assert.equal(wire.includes('13579135'), false)
  assert.match(error.remedy ?? '', /CARGO_PKCS11_TEST_PIN/)
  assert.equal(readFileSync(audit.path, 'utf8').includes('13579135'), false)
})
