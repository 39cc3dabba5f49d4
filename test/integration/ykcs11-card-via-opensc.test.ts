/**
 * The virtual YubiKey (with certificates in 9A and 9C, as `ykman` leaves them) driven by OpenSC's
 * PKCS#11 module instead of ykcs11: the device layer must work with either module on the same card.
 * OpenSC finds PIV keys only through the slot certificates, names the token after the first
 * certificate's subject, reports removal as CKR_DEVICE_REMOVED (ykcs11: CKR_DEVICE_ERROR) and a
 * missed touch, like ykcs11, as CKR_USER_NOT_LOGGED_IN.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'

import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { buildToken } from '../../src/token/build.js'
import { verifyToken } from '../../src/verify/verify.js'
import { rejectsWithCode } from '../helpers/errors.js'
import { startVirtualYubiKey, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'

const PIN = '445566'
const INDEX_URL = 'sparse+http://127.0.0.1:8000/index/'
const PUBLISH = {
  indexUrl: INDEX_URL,
  operation: 'publish',
  crate: { name: 'opensc-crate', vers: '2.0.0', cksum: 'c'.repeat(64) },
} as const

describe('virtual YubiKey through OpenSC (opensc-pkcs11.so)', () => {
  let yk: VirtualYubiKey
  let device: Device
  const pin = Pin.fromString(PIN)

  before(async () => {
    yk = await startVirtualYubiKey({
      pin: PIN,
      serial: 24681012,
      keys: { '9a': { certificate: true }, '9c': { certificate: true } },
    })
    Object.assign(process.env, yk.env)
    // OpenSC's PIV emulation has no card serial without a CHUID ("00000000"); its token label is
    // the subject of the first certificate found.
    device = new Device({ module: 'opensc', label: 'vpiv slot 9a' }, { cachedPin: () => pin })
  })

  after(async () => {
    await device?.release()
    await yk?.stop()
  })

  it('finds both keys through their certificates, with the card public keys and the 9C always-authenticate flag', async () => {
    const status = await device.status()
    assert.equal(status.present, true)
    assert.equal(status.model, 'PKCS#15 emulated')
    await device.login(pin)
    const keys = new Map((await device.listKeys()).map((k) => [k.id, k]))
    assert.deepEqual(Buffer.from(keys.get('01')?.publicKey ?? []), Buffer.from(yk.publicKeys['9a'] ?? []))
    assert.deepEqual(Buffer.from(keys.get('02')?.publicKey ?? []), Buffer.from(yk.publicKeys['9c'] ?? []))
    assert.equal(keys.get('02')?.alwaysAuthenticate, true)
    assert.equal(keys.get('01')?.alwaysAuthenticate, false)
    for (const key of keys.values()) assert.equal(key.extractable, false)
  })

  it('signs a publish token with 9C (one context VERIFY each) and a read token with 9A', async () => {
    const sign = await pkcs11Signer(device, { id: '02' })
    const before = await yk.control.counters()
    const built = await buildToken(sign, PUBLISH)
    const after = await yk.control.counters()
    assert.equal(after.verify - before.verify, 1, 'the context-specific login for 9C')
    assert.equal(after.sign - before.sign, 1)
    await verifyToken(built.token, {
      ...PUBLISH,
      url: INDEX_URL,
      publicKey: yk.publicKeys['9c'] as Uint8Array,
    })
    const read = await buildToken(await pkcs11Signer(device, { id: '01' }), {
      indexUrl: INDEX_URL,
      operation: 'read',
    })
    await verifyToken(read.token, {
      url: INDEX_URL,
      operation: 'read',
      publicKey: yk.publicKeys['9a'] as Uint8Array,
    })
  })

  it('reports a missed touch as TOUCH_TIMEOUT', async () => {
    await yk.control.missTouch(true)
    try {
      const err = await rejectsWithCode(
        (await pkcs11Signer(device, { id: '02' })).sign(Buffer.from('no touch')),
        'TOUCH_TIMEOUT',
      )
      assert.equal(err.data['rv'], '0x00000101')
    } finally {
      await yk.control.missTouch(false)
    }
  })

  it('reports removal as DEVICE_REMOVED and signs again after reinsertion', async () => {
    const signer = await pkcs11Signer(device, { id: '02' })
    await yk.control.remove()
    const err = await rejectsWithCode(signer.sign(Buffer.from('unplugged')), 'DEVICE_REMOVED')
    assert.equal(err.data['rv'], '0x00000032')
    await yk.control.insert()
    const built = await buildToken(signer, PUBLISH)
    await verifyToken(built.token, { ...PUBLISH, url: INDEX_URL, publicKey: signer.publicKey })
  })
})
