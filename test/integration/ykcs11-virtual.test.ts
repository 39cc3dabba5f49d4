/**
 * The device layer against the REAL ykcs11 (yubico-piv-tool 2.2) talking through a private pcscd
 * and the vsmartcard vpcd driver to our PIV card emulator (test/fixtures/vpiv): tokens signed on the
 * "YubiKey" verify with the project's verifier and with node:crypto, and the failure paths a
 * hardware key has (slow touch, missed touch, wrong PIN, blocked PIN, unplugging) surface as typed
 * errors, after which the same Device keeps working.
 */
import assert from 'node:assert/strict'
import type { KeyObject } from 'node:crypto'
import { after, before, describe, it } from 'node:test'

import { Pin } from '../../src/lib/secret.js'
import { Device, type DeviceEvent } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import type { Signer } from '../../src/signer/signer.js'
import { buildToken } from '../../src/token/build.js'
import { verifyToken } from '../../src/verify/verify.js'
import { verifyWithNodeCrypto } from '../helpers/node-crypto-verify.js'
import { rejectsWithCode } from '../helpers/errors.js'
import { startVirtualYubiKey, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'

const PIN = '123456'
const SERIAL = 7654321
const INDEX_URL = 'sparse+http://127.0.0.1:8000/index/'
const PUBLISH = {
  indexUrl: INDEX_URL,
  operation: 'publish',
  crate: { name: 'demo-crate', vers: '1.2.3', cksum: 'a'.repeat(64) },
} as const

describe('ykcs11 on a virtual YubiKey (vpcd + PIV emulator)', () => {
  let yk: VirtualYubiKey
  let device: Device
  let pin: Pin | undefined = Pin.fromString(PIN)
  const events: DeviceEvent[] = []
  let signer9c: Signer
  let signer9a: Signer

  before(async () => {
    yk = await startVirtualYubiKey({ pin: PIN, serial: SERIAL })
    // libpcsclite reads PCSCLITE_CSOCK_NAME when ykcs11 first connects, in this process.
    Object.assign(process.env, yk.env)
    device = new Device(
      { module: yk.module, serial: String(SERIAL) },
      {
        cachedPin: () => pin,
        // What the agent does with the event (src/agent/agent.ts): the refused PIN is no longer held.
        onEvent: (e) => {
          events.push(e)
          if (e.type === 'pin-rejected') pin = undefined
        },
      },
    )
  })

  after(async () => {
    await device?.release()
    await yk?.stop()
  })

  it('sees the card as a YubiKey token with its serial', async () => {
    const status = await device.status()
    assert.equal(status.present, true)
    assert.equal(status.label, yk.label)
    assert.equal(status.serial, String(SERIAL))
    assert.match(status.manufacturer ?? '', /^Yubico/)
    assert.equal(status.loginRequired, true)
  })

  it('lists the P-384 keys of slots 9C and 9A with the public keys the card holds', async () => {
    await device.login(pin ?? null)
    const keys = await device.listKeys()
    const byId = new Map(keys.map((k) => [k.id, k]))
    // ykcs11 numbers PIV slots: CKA_ID 01 = 9A (authentication), 02 = 9C (digital signature).
    const k9a = byId.get('01')
    const k9c = byId.get('02')
    assert.ok(
      k9a !== undefined && k9c !== undefined,
      `keys: ${keys.map((k) => `${k.label}/${k.id}`).join(', ')}`,
    )
    assert.deepEqual(Buffer.from(k9c.publicKey), Buffer.from(yk.publicKeys['9c'] ?? []))
    assert.deepEqual(Buffer.from(k9a.publicKey), Buffer.from(yk.publicKeys['9a'] ?? []))
    // Slot 9C has PIN policy "always": ykcs11 marks it CKA_ALWAYS_AUTHENTICATE.
    assert.equal(k9c.alwaysAuthenticate, true)
    assert.equal(k9a.alwaysAuthenticate, false)
    for (const key of [k9a, k9c]) {
      assert.equal(key.extractable, false)
      assert.equal(key.sensitive, true)
    }
    signer9c = await pkcs11Signer(device, { id: '02' })
    signer9a = await pkcs11Signer(device, { id: '01' })
  })

  it('signs a publish token on the card (9C) that verifies with verifyToken and node:crypto', async () => {
    const before = await yk.control.counters()
    const built = await buildToken(signer9c, PUBLISH)
    const after = await yk.control.counters()
    assert.equal(after.sign - before.sign, 1, 'exactly one GENERAL AUTHENTICATE reached the card')
    const verified = await verifyToken(built.token, {
      ...PUBLISH,
      url: INDEX_URL,
      publicKey: signer9c.publicKey,
      strictLowS: true,
    })
    assert.equal(verified.claims['mutation'], 'publish')
    assert.equal(verified.claims['name'], 'demo-crate')
    assert.equal(
      verifyWithNodeCrypto(built.token, signer9c.publicKey, yk.publicKeyObjects['9c'] as KeyObject),
      true,
    )
  })

  it('signs a read token with the no-touch 9A key', async () => {
    const built = await buildToken(signer9a, { indexUrl: INDEX_URL, operation: 'read' })
    await verifyToken(built.token, { url: INDEX_URL, operation: 'read', publicKey: signer9a.publicKey })
    assert.equal(
      verifyWithNodeCrypto(built.token, signer9a.publicKey, yk.publicKeyObjects['9a'] as KeyObject),
      true,
    )
  })

  it('waits for a slow touch and still returns a valid signature', async () => {
    const delayMs = 1500
    await yk.control.setTouchDelay(delayMs)
    try {
      const started = performance.now()
      let settled = false
      const touched = yk.control.touchRequested()
      const pending = buildToken(signer9c, PUBLISH).finally(() => {
        settled = true
      })
      // While the card waits for the touch, this process keeps serving its event loop: it still
      // hears from the card's control channel that the key is blinking.
      assert.deepEqual(await touched, { slot: '9c' })
      assert.equal(settled, false, 'the card holds the request while the event loop keeps running')
      const built = await pending
      // A lower bound only: the card cannot have answered before its touch delay ran out.
      assert.ok(performance.now() - started >= delayMs, 'the signature waited for the touch')
      await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer9c.publicKey })
    } finally {
      await yk.control.setTouchDelay(0)
    }
  })

  it('reports a missed touch as TOUCH_TIMEOUT, and the next signature works', async () => {
    await yk.control.setTouchDelay(200)
    await yk.control.missTouch(true)
    try {
      // The card answers SW 6982 (what a YubiKey says when the touch timer runs out); ykcs11 2.2
      // turns that into CKR_USER_NOT_LOGGED_IN, the same value as "PIN not verified".
      await rejectsWithCode(signer9c.sign(Buffer.from('missed touch')), 'TOUCH_TIMEOUT')
    } finally {
      await yk.control.missTouch(false)
      await yk.control.setTouchDelay(0)
    }
    const built = await buildToken(signer9c, PUBLISH)
    await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer9c.publicKey })
  })

  it('turns a wrong PIN into PIN_INCORRECT with tries left, after exactly one VERIFY, and never resends it', async () => {
    await device.release() // ykcs11 logs out when its last session closes
    pin = Pin.fromString('999999')
    const before = await yk.control.counters()
    const err = await rejectsWithCode(device.login(pin), 'PIN_INCORRECT')
    assert.ok(
      err.data['triesLeft'] !== undefined,
      `tries left in the error data: ${JSON.stringify(err.data)}`,
    )
    assert.equal((await yk.control.state()).pinTriesLeft, 2)
    // The device reported the refusal and the owner dropped the PIN: a signature must not spend
    // another try.
    assert.equal(pin, undefined)
    assert.ok(events.some((e) => e.type === 'pin-rejected'))
    await rejectsWithCode(signer9c.sign(Buffer.from('with the rejected PIN')), 'PIN_REQUIRED')
    const afterWrong = await yk.control.counters()
    assert.equal(afterWrong.verify - before.verify, 1, 'exactly one VERIFY with a PIN reached the card')
    assert.equal(afterWrong.sign, before.sign, 'no signature was attempted')

    pin = Pin.fromString(PIN)
    const built = await buildToken(signer9c, PUBLISH)
    await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer9c.publicKey })
    assert.equal((await yk.control.state()).pinTriesLeft, 3, 'a correct PIN resets the counter')
  })

  it('reports a blocked PIN as PIN_LOCKED', async () => {
    await device.release()
    await yk.control.setPinTries(1)
    pin = Pin.fromString('111111')
    await rejectsWithCode(device.login(pin), 'PIN_LOCKED')
    assert.equal((await yk.control.state()).pinTriesLeft, 0)
    assert.equal((await device.status()).pinLocked, true)
    // Unblock as the PUK would, so later tests have a usable card.
    await yk.control.setPinTries(3)
    pin = Pin.fromString(PIN)
  })

  it('fails with a typed error when the key is pulled before a signature, then works after reinsertion', async () => {
    await yk.control.remove()
    events.length = 0
    await rejectsWithCode(
      signer9c.sign(Buffer.from('unplugged')),
      'DEVICE_REMOVED',
      'TOKEN_ABSENT',
      'DEVICE_ERROR',
    )
    assert.ok(
      events.some((e) => e.type === 'removed'),
      `a removal event was emitted: ${JSON.stringify(events)}`,
    )
    await yk.control.insert()
    const built = await buildToken(signer9c, PUBLISH)
    await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer9c.publicKey })
    assert.ok(events.some((e) => e.type === 'reconnected'))
  })

  it('fails with a typed error when the key is pulled while waiting for the touch, then works after reinsertion', async () => {
    await yk.control.setTouchDelay(5_000)
    const touched = yk.control.touchRequested()
    const pending = signer9c.sign(Buffer.from('pulled mid-touch'))
    const settled = pending.then(
      () => undefined,
      () => undefined,
    ) // handled below; keeps the rejection from counting as unhandled meanwhile
    // Pull only once the card waits for the touch (deterministic, no fixed sleep).
    await touched
    await yk.control.remove()
    await settled
    await rejectsWithCode(pending, 'DEVICE_REMOVED', 'TOKEN_ABSENT', 'DEVICE_ERROR')
    await yk.control.setTouchDelay(0)
    await yk.control.insert()
    const built = await buildToken(signer9c, PUBLISH)
    await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer9c.publicKey })
  })

  it('a Device that starts while the key is unplugged says TOKEN_ABSENT with the serial, and signs once it is inserted', async () => {
    await yk.control.remove()
    const late = new Device({ module: yk.module, serial: String(SERIAL) }, { cachedPin: () => pin })
    try {
      assert.equal((await late.status()).present, false)
      const err = await rejectsWithCode(pkcs11Signer(late, { id: '02' }), 'TOKEN_ABSENT')
      assert.match(err.remedy ?? '', new RegExp(`serial ${SERIAL}`))
      await yk.control.insert()
      const signer = await pkcs11Signer(late, { id: '02' })
      const built = await buildToken(signer, PUBLISH)
      await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer.publicKey })
    } finally {
      await late.release()
    }
  })
})
