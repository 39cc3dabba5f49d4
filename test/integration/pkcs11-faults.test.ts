/**
 * The device layer against SoftHSM behind the fault-injecting module
 * (test/fixtures/faulty-pkcs11): wrong PIN handling, removal during a sign and reinsertion, and
 * signs waiting for a simulated touch (event loop and threadpool behaviour).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'

import { AgentError } from '../../src/lib/errors.js'
import { Pin } from '../../src/lib/secret.js'
import { isHighS, verifySignature } from '../../src/keys/signature.js'
import { Device, type DeviceEvent } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { LIMITS } from '../../src/lib/limits.js'
import {
  createSoftHsmStore,
  createSoftHsmToken,
  generateKey,
  repoRoot,
  SOFTHSM_MODULE,
  type SoftHsmStore,
} from '../helpers/softhsm.js'

const run = promisify(execFile)
const FAULTY_DIR = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11')
const FAULTY = join(FAULTY_DIR, 'libfaulty-pkcs11.so')

// CKR values written into the control file (PKCS#11 v2.40 pkcs11t.h).
const CKR_PIN_INCORRECT = 0xa0
const CKR_PIN_LOCKED = 0xa4
const CKF_USER_PIN_LOCKED = 0x40000

function counts(path: string): Map<string, number> {
  const map = new Map<string, number>()
  if (!existsSync(path)) return map
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const [name, value] = line.split(' ')
    if (name !== undefined && value !== undefined) map.set(name, Number(value))
  }
  return map
}

async function rejection(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected AgentError, got ${String(error)}`)
    return error
  }
  assert.fail('expected a rejection')
}

describe('PKCS#11 device behind the fault-injecting module', () => {
  let store: SoftHsmStore
  let control: string
  let countsFile: string

  before(async () => {
    await run('make', ['-s', '-C', FAULTY_DIR])
    store = await createSoftHsmStore()
    await createSoftHsmToken({ store, label: 'touch' })
    await createSoftHsmToken({ store, label: 'other' })
    await createSoftHsmToken({ store, label: 'pins' })
    const shapes = await createSoftHsmToken({ store, label: 'shapes' })
    await generateKey(store, shapes, { label: 'always', id: 'a1', alwaysAuthenticate: true })
    await generateKey(store, shapes, { label: 'p256', id: 'b2', curve: 'prime256v1' })
    control = join(store.dir, 'control')
    countsFile = join(store.dir, 'counts')
    writeFileSync(control, '')
    process.env['SOFTHSM2_CONF'] = store.confPath
    process.env['FAULTY_PKCS11_CONTROL'] = control
    process.env['FAULTY_PKCS11_COUNTS'] = countsFile
    process.env['FAULTY_PKCS11_TARGET'] = SOFTHSM_MODULE
  })

  after(async () => {
    await store.cleanup()
  })

  it('wrong PIN: exactly one C_Login, tries left reported, the owner told to drop the held PIN', async () => {
    const wrong = Pin.fromString('975312')
    let held: Pin | undefined = wrong
    const events: DeviceEvent[] = []
    const device = new Device(
      { module: FAULTY, label: 'pins' },
      {
        cachedPin: () => held,
        // What the agent does with the event (src/agent/agent.ts): the refused PIN is no longer held.
        onEvent: (e) => {
          events.push(e)
          if (e.type === 'pin-rejected') held = undefined
        },
      },
    )
    const logins = (): number => counts(countsFile).get('C_Login') ?? 0
    const loginsBefore = logins()

    const first = await rejection(device.login(wrong))
    assert.equal(first.code, 'PIN_INCORRECT')
    assert.match(first.message, /the PIN is incorrect/)
    // SoftHSM raises CKF_USER_PIN_COUNT_LOW after a failed login; the wire carries it as data.
    assert.equal(first.triesLeft, 'low')
    assert.equal(first.toWire().data?.['triesLeft'], 'low')
    assert.equal(logins() - loginsBefore, 1)
    assert.deepEqual(
      events.map((e) => e.type),
      ['pin-rejected'],
    )

    // A held PIN the token refuses on the device's own re-login is reported the same way, and
    // once dropped it is not sent again: the next sign has no PIN to send.
    const signer = await pkcs11Signer(device, { label: 'gen' })
    held = Pin.fromString('864200')
    assert.equal((await rejection(signer.sign(Buffer.from('x')))).code, 'PIN_INCORRECT')
    assert.equal(logins() - loginsBefore, 2)
    assert.equal(events.filter((e) => e.type === 'pin-rejected').length, 2)
    assert.equal(held, undefined)
    assert.equal((await rejection(signer.sign(Buffer.from('x')))).code, 'PIN_REQUIRED')
    assert.equal(logins() - loginsBefore, 2, 'no C_Login without a held PIN')

    // Final try reported from CKF_USER_PIN_FINAL_TRY.
    writeFileSync(control, 'token_flags_or=0x20000\n')
    const final = await rejection(device.login(Pin.fromString('111111')))
    assert.equal(final.code, 'PIN_INCORRECT')
    assert.equal(final.triesLeft, 'final')
    assert.equal(logins() - loginsBefore, 3)

    writeFileSync(control, `fail.C_Login=${CKR_PIN_LOCKED}\n`)
    const locked = await rejection(device.login(Pin.fromString('222222')))
    assert.equal(locked.code, 'PIN_LOCKED')
    assert.equal(locked.triesLeft, 'locked')

    // The last try: CKR_PIN_INCORRECT, but the flags now say CKF_USER_PIN_LOCKED.
    writeFileSync(control, `fail.C_Login=${CKR_PIN_INCORRECT}\ntoken_flags_or=${CKF_USER_PIN_LOCKED}\n`)
    const last = await rejection(device.login(Pin.fromString('333333')))
    assert.equal(last.code, 'PIN_LOCKED')
    assert.equal(last.triesLeft, 'locked')
    assert.match(last.remedy ?? '', /PUK/)
    writeFileSync(control, '')

    const right = Pin.fromString('123456')
    await device.login(right)
    held = right
    const sig = await signer.sign(Buffer.from('right pin'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('right pin'), sig), true)
    assert.equal(JSON.stringify(first.toWire()).includes('975312'), false, 'the PIN never appears in errors')
    await device.release()
  })

  it('removal during a sign is a typed error; after reinsertion the same Device signs again', async () => {
    const events: DeviceEvent[] = []
    const pin = Pin.fromString('123456')
    const device = new Device(
      { module: FAULTY, label: 'touch' },
      { cachedPin: () => pin, onEvent: (e) => events.push(e) },
    )
    await device.login(pin)
    const signer = await pkcs11Signer(device, { label: 'gen' })
    const ok = await signer.sign(Buffer.from('before'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('before'), ok), true)
    const serial = (await device.status()).serial ?? ''
    assert.ok(serial.length > 0)

    writeFileSync(control, 'sign_delay_ms=3000\n')
    const pending = rejection(signer.sign(Buffer.from('during removal')))
    await new Promise((resolve) => setTimeout(resolve, 300))
    writeFileSync(control, 'sign_delay_ms=3000\nabsent=1\n')
    const removed = await pending
    assert.equal(removed.code, 'DEVICE_REMOVED')
    assert.ok(events.some((e) => e.type === 'removed'))

    const absent = await rejection(signer.sign(Buffer.from('while absent')))
    assert.equal(absent.code, 'TOKEN_ABSENT')
    assert.match(absent.remedy ?? '', new RegExp(`or insert token 'touch' \\(serial ${serial}\\)`))
    assert.equal((await device.status()).present, false)

    writeFileSync(control, '')
    const loginsBefore = counts(countsFile).get('C_Login') ?? 0
    const after = await signer.sign(Buffer.from('after reinsertion'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('after reinsertion'), after), true)
    assert.ok(events.some((e) => e.type === 'reconnected'))
    // The removal ended the login; the held PIN logged in again, once.
    assert.equal((counts(countsFile).get('C_Login') ?? 0) - loginsBefore, 1)
    await device.release()
  })

  it('every injected CKR value reaches the caller as a project error code with a remedy, never a CKR name', async () => {
    const pin = Pin.fromString('123456')
    const device = new Device({ module: FAULTY, label: 'touch' }, { cachedPin: () => pin })
    const signer = await pkcs11Signer(device, { label: 'gen' })
    // [function, CKR value (pkcs11t.h), expected code]
    const table: Array<[string, number, string]> = [
      ['C_Sign', 0x32, 'DEVICE_REMOVED'],
      ['C_Sign', 0xe0, 'TOKEN_ABSENT'],
      ['C_Sign', 0xb3, 'SESSION_LOST'],
      ['C_Sign', 0xb0, 'SESSION_LOST'],
      ['C_Sign', 0x30, 'DEVICE_ERROR'],
      ['C_Sign', 0x31, 'DEVICE_ERROR'],
      ['C_Sign', 0x50, 'TOUCH_TIMEOUT'],
      ['C_Sign', 0x200, 'TOUCH_TIMEOUT'],
      ['C_Sign', 0x101, 'TOUCH_TIMEOUT'], // ykcs11's answer to a missed touch (SW 6982)
      ['C_SignInit', 0x101, 'PIN_REQUIRED'],
      ['C_Sign', 0x80000001, 'DEVICE_ERROR'],
      ['C_SignInit', 0x70, 'MECHANISM_UNSUPPORTED'],
      ['C_SignInit', 0x68, 'KEY_INVALID'],
      ['C_SignInit', 0x63, 'KEY_INVALID'],
    ]
    for (const [fn, rv, expected] of table) {
      writeFileSync(control, `fail.${fn}=${rv}\n`)
      const err = await rejection(signer.sign(Buffer.from('x')))
      assert.equal(err.code, expected, `${fn} 0x${rv.toString(16)}: ${err.describe()}`)
      assert.ok((err.remedy ?? '').length > 0)
      assert.doesNotMatch(err.describe(), /CKR_/)
      assert.equal(err.data['rv'], `0x${rv.toString(16).padStart(8, '0')}`)
    }
    writeFileSync(control, 'fail.C_Login=0x50\n')
    await device.release()
    const cancelled = await rejection(device.login(pin))
    assert.equal(cancelled.code, 'PIN_ENTRY_FAILED')
    writeFileSync(control, '')
    const sig = await signer.sign(Buffer.from('recovered'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('recovered'), sig), true)
    await device.release()
  })

  it('a missed touch or a missing key does not log the token out (no PIN needed afterwards)', async () => {
    const device = new Device({ module: FAULTY, label: 'other' })
    await device.login(Pin.fromString('123456'))
    const signer = await pkcs11Signer(device, { label: 'gen' })
    await signer.sign(Buffer.from('one session'))
    const logins = counts(countsFile).get('C_Login') ?? 0
    writeFileSync(control, 'fail.C_Sign=0x50\n')
    assert.equal((await rejection(signer.sign(Buffer.from('missed')))).code, 'TOUCH_TIMEOUT')
    writeFileSync(control, '')
    assert.equal((await rejection(device.findKey({ label: 'nope' }))).code, 'KEY_NOT_FOUND')
    assert.equal(await device.needsLogin(), false)
    const sig = await signer.sign(Buffer.from('still logged in'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('still logged in'), sig), true)
    assert.equal((counts(countsFile).get('C_Login') ?? 0) - logins, 0)
    await device.release()
  })

  it('protected authentication path: status says so, login(null) is one C_Login without a PIN from the host', async () => {
    writeFileSync(control, 'token_flags_or=0x100\npinpad_pin=123456\n')
    const device = new Device({ module: FAULTY, label: 'pins' })
    try {
      await device.logout()
      const status = await device.status()
      assert.equal(status.protectedAuthPath, true)
      assert.equal(await device.needsLogin(), true)
      const signer = await pkcs11Signer(device, { label: 'gen' })
      const err = await rejection(signer.sign(Buffer.from('no login yet')))
      assert.equal(err.code, 'PIN_REQUIRED')
      assert.match(err.remedy ?? '', /entered on the device/)
      const logins = counts(countsFile).get('C_Login') ?? 0
      await device.login(null)
      assert.equal((counts(countsFile).get('C_Login') ?? 0) - logins, 1)
      const sig = await signer.sign(Buffer.from('pin pad'))
      assert.equal(verifySignature(signer.publicKey, Buffer.from('pin pad'), sig), true)
    } finally {
      writeFileSync(control, '')
      await device.release()
    }
  })

  it('a module that cannot list its readers (ykcs11 without pcscd) is reported as absent, and names pcscd', async () => {
    writeFileSync(control, 'fail.C_GetSlotList=0x30\n')
    const device = new Device({ module: FAULTY, label: 'pins' })
    try {
      assert.equal((await device.status()).present, false)
      const err = await rejection(device.listKeys())
      assert.equal(err.code, 'DEVICE_ERROR')
      assert.match(err.remedy ?? '', /pcscd/)
    } finally {
      writeFileSync(control, '')
    }
  })

  it('a session lost before the device started signing is reopened transparently', async () => {
    const pin = Pin.fromString('123456')
    const device = new Device({ module: FAULTY, label: 'touch' }, { cachedPin: () => pin })
    const signer = await pkcs11Signer(device, { label: 'gen' })
    await signer.sign(Buffer.from('warm'))
    // A removal and reinsertion nobody saw: the faulty module closes every session when it first
    // observes absent=1 (here through a status probe of ANOTHER Device), then the token is back.
    writeFileSync(control, 'absent=1\n')
    assert.equal((await new Device({ module: FAULTY, label: 'other' }).status()).present, false)
    writeFileSync(control, '')
    const opensBefore = counts(countsFile).get('C_OpenSession') ?? 0
    const sig = await signer.sign(Buffer.from('after a silent session loss'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('after a silent session loss'), sig), true)
    assert.ok((counts(countsFile).get('C_OpenSession') ?? 0) > opensBefore, 'a fresh session was opened')
    await device.release()
  })

  it('whatever shape the module returns (DER, high-S) comes out as verified low-S r||s; a bad one never leaves', async () => {
    const pin = Pin.fromString('123456')
    const device = new Device({ module: FAULTY, label: 'shapes' }, { cachedPin: () => pin })
    await device.login(pin)
    const signer = await pkcs11Signer(device, { label: 'gen' })
    for (const shape of ['der', 'high_s']) {
      writeFileSync(control, `sign_output=${shape}\n`)
      for (let i = 0; i < 5; i += 1) {
        const message = Buffer.from(`${shape} ${i}`)
        const sig = await signer.sign(message)
        assert.equal(sig.length, 96)
        assert.equal(isHighS(sig), false, shape)
        assert.equal(verifySignature(signer.publicKey, message, sig), true, shape)
      }
    }
    writeFileSync(control, 'sign_output=corrupt\n')
    assert.equal((await rejection(signer.sign(Buffer.from('corrupt')))).code, 'SELF_CHECK_FAILED')
    // Signatures with others in flight are verified on the worker pool (src/signer/verify-pool.ts): none leaves either.
    const concurrent = await Promise.all(
      Array.from({ length: 6 }, (_, i) => rejection(signer.sign(Buffer.from(`corrupt ${i}`)))),
    )
    assert.deepEqual(
      concurrent.map((e) => e.code),
      Array.from({ length: 6 }, () => 'SELF_CHECK_FAILED'),
    )
    writeFileSync(control, 'sign_output=short\n')
    assert.equal((await rejection(signer.sign(Buffer.from('short')))).code, 'SIGNATURE_MALFORMED')
    writeFileSync(control, '')
    await device.release()
  })

  it('a CKA_ALWAYS_AUTHENTICATE key gets one context-specific C_Login per signature, with the held PIN', async () => {
    let held: Pin | undefined = Pin.fromString('123456')
    const device = new Device({ module: FAULTY, label: 'shapes' }, { cachedPin: () => held })
    await device.login(Pin.fromString('123456'))
    const key = await device.findKey({ label: 'always' })
    assert.equal(key.alwaysAuthenticate, true)
    const signer = await pkcs11Signer(device, { id: 'a1' })
    const before = counts(countsFile).get('C_Login') ?? 0
    for (let i = 0; i < 3; i += 1) {
      const message = Buffer.from(`always ${i}`)
      assert.equal(verifySignature(signer.publicKey, message, await signer.sign(message)), true)
    }
    // SoftHSM refuses C_Sign on such a key without the context login (CKR_USER_NOT_LOGGED_IN).
    assert.equal((counts(countsFile).get('C_Login') ?? 0) - before, 3)
    held = undefined
    assert.equal((await rejection(signer.sign(Buffer.from('no pin')))).code, 'PIN_REQUIRED')
    await device.release()
  })

  it('a P-256 key on the token is not offered as a P-384 key', async () => {
    const pin = Pin.fromString('123456')
    const device = new Device({ module: SOFTHSM_MODULE, label: 'shapes' }, { cachedPin: () => pin })
    await device.login(pin)
    const labels = (await device.listKeys()).map((k) => k.label).sort()
    assert.deepEqual(labels, ['always', 'gen', 'known'])
    const err = await rejection(device.findKey({ label: 'p256' }))
    assert.equal(err.code, 'KEY_NOT_FOUND')
    await device.release()
  })

  it(`more than LIMITS.sessionWaitersMax requests waiting for a session are refused with AGENT_BUSY at once`, async () => {
    const pin = Pin.fromString('123456')
    const device = new Device({ module: FAULTY, label: 'touch' }, { cachedPin: () => pin })
    await device.login(pin)
    const signer = await pkcs11Signer(device, { label: 'gen' })
    writeFileSync(control, 'sign_delay_ms=300\n')
    const total = LIMITS.sessionsPerToken + LIMITS.sessionWaitersMax + 1
    const started = performance.now()
    const refusedAt: number[] = []
    const results = await Promise.allSettled(
      Array.from({ length: total }, (_, i) =>
        signer.sign(Buffer.from(`queued ${i}`)).catch((error: unknown) => {
          refusedAt.push(performance.now() - started)
          throw error
        }),
      ),
    )
    writeFileSync(control, '')
    const reasons = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as AgentError] : []))
    assert.ok(reasons.every((e) => e instanceof AgentError && e.code === 'AGENT_BUSY'))
    // Exactly one request found the queue full; the rest waited (and signed, or ran out of time).
    const full = reasons.filter((e) => /already waiting for the device/.test(e.message))
    assert.equal(full.length, 1)
    assert.ok((refusedAt[0] as number) < LIMITS.sessionWaitMs / 2, 'the queue-full refusal comes at once')
    assert.ok(results.filter((r) => r.status === 'fulfilled').length >= LIMITS.sessionsPerToken)
    assert.ok((await device.status()).sessionsOpen <= LIMITS.sessionsPerToken)
    await device.release()
  })

  it(`a request that waits LIMITS.sessionWaitMs for a session is refused with AGENT_BUSY`, async () => {
    const pin = Pin.fromString('123456')
    const device = new Device({ module: FAULTY, label: 'touch' }, { cachedPin: () => pin })
    await device.login(pin)
    const signer = await pkcs11Signer(device, { label: 'gen' })
    // Signs as slow as a touch: the fifth wave would start after 4 × delay > sessionWaitMs.
    const delayMs = Math.ceil(LIMITS.sessionWaitMs / 3)
    writeFileSync(control, `sign_delay_ms=${delayMs}\n`)
    const total = LIMITS.sessionsPerToken * 5
    const results = await Promise.allSettled(
      Array.from({ length: total }, (_, i) => signer.sign(Buffer.from(`slow ${i}`))),
    )
    writeFileSync(control, '')
    const busy = results.filter(
      (r) => r.status === 'rejected' && r.reason instanceof AgentError && r.reason.code === 'AGENT_BUSY',
    )
    const done = results.filter((r) => r.status === 'fulfilled')
    assert.equal(busy.length + done.length, total)
    assert.ok(done.length >= LIMITS.sessionsPerToken, `the first wave signs (${done.length} did)`)
    assert.ok(busy.length >= LIMITS.sessionsPerToken, `the last wave is refused (${busy.length} were)`)
    assert.match(String((busy[0] as PromiseRejectedResult).reason.message), /no session came free within/)
    await device.release()
  })

  async function load(
    threads: string | undefined,
  ): Promise<{ maxLoopDelayMs: number; ninthMs: number; touchMs: number[]; allVerified: boolean }> {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      LOAD_INPUT: JSON.stringify({
        faultyModule: FAULTY,
        softhsmModule: SOFTHSM_MODULE,
        control,
        touchLabel: 'touch',
        otherLabel: 'other',
        pin: '123456',
        delayMs: 2000,
      }),
    }
    delete env['UV_THREADPOOL_SIZE']
    if (threads !== undefined) env['UV_THREADPOOL_SIZE'] = threads
    const script = join(repoRoot(), 'dist', 'test', 'helpers', 'pkcs11-touch-load.js')
    const { stdout } = await run(process.execPath, [script], { env, timeout: 60_000 })
    return JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as {
      maxLoopDelayMs: number
      ninthMs: number
      touchMs: number[]
      allVerified: boolean
    }
  }

  it('8 signs waiting 2 s for a touch keep the event loop responsive; a 9th on another token is served at once', async (t) => {
    const result = await load('24')
    t.diagnostic(`UV_THREADPOOL_SIZE=24: ${JSON.stringify(result)}`)
    assert.equal(result.allVerified, true)
    assert.equal(result.touchMs.length, 8)
    assert.ok(
      Math.min(...result.touchMs) >= 1900,
      `touch signs waited for the touch: ${result.touchMs.join(', ')}`,
    )
    assert.ok(result.maxLoopDelayMs < 50, `event loop max delay ${result.maxLoopDelayMs} ms`)
    assert.ok(result.ninthMs < 1000, `the 9th sign finished at ${result.ninthMs} ms`)
    assert.ok(result.ninthMs < Math.min(...result.touchMs), 'the 9th finished before every touch sign')
  })

  it('control: with the default 4 libuv threads the 9th sign waits for the touches (why the agent sizes the pool)', async (t) => {
    const result = await load(undefined)
    t.diagnostic(`default pool: ${JSON.stringify(result)}`)
    assert.equal(result.allVerified, true)
    assert.ok(result.ninthMs >= 1900, `the 9th sign finished at ${result.ninthMs} ms`)
  })
})
