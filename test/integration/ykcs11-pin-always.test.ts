/**
 * ykcs11 2.2 decides CKA_ALWAYS_AUTHENTICATE by slot (9C), not by the key's PIN policy. A 9A key
 * with PIN policy "always" is therefore signed without the context-specific login it needs: the
 * first signature rides on the login's VERIFY, the next is refused by the card (SW 6982), which
 * ykcs11 reports exactly like a missed touch.
 * Its own file: libpcsclite binds a process to one pcscd, and this needs a differently set up card.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { startVirtualYubiKey, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'

const PIN = '112233'
const SERIAL = 1357911

describe('ykcs11: PIN policy "always" outside slot 9C', () => {
  let yk: VirtualYubiKey
  let device: Device
  const pin = Pin.fromString(PIN)

  before(async () => {
    yk = await startVirtualYubiKey({
      pin: PIN,
      serial: SERIAL,
      keys: {
        '9a': { pinPolicy: 'always', touchPolicy: 'never' },
        '9c': { pinPolicy: 'once', touchPolicy: 'never' },
      },
    })
    Object.assign(process.env, yk.env)
    device = new Device({ module: yk.module, serial: String(SERIAL) }, { cachedPin: () => pin })
  })

  after(async () => {
    await device?.release()
    await yk?.stop()
  })

  it('flags CKA_ALWAYS_AUTHENTICATE on 9C and not on 9A, whatever the card says', async () => {
    await device.login(pin)
    const keys = new Map((await device.listKeys()).map((k) => [k.id, k]))
    assert.equal(keys.get('01')?.alwaysAuthenticate, false, '9A (PIN always on the card)')
    assert.equal(keys.get('02')?.alwaysAuthenticate, true, '9C (PIN once on the card)')
  })

  it('the second 9A signature is refused by the card, reported as a missed touch, with no VERIFY sent', async () => {
    const signer = await pkcs11Signer(device, { id: '01' })
    const before = await yk.control.counters()
    // The login's VERIFY was the card's last command, so the first signature is allowed.
    await signer.sign(Buffer.from('first'))
    const error = await signer.sign(Buffer.from('second')).then(
      () => undefined,
      (e: unknown) => e,
    )
    assert.ok(error instanceof AgentError, `expected an AgentError, got ${String(error)}`)
    // Indistinguishable from a missed touch at the PKCS#11 level (see native-config/devices.md).
    assert.equal(error.code, 'TOUCH_TIMEOUT')
    const after = await yk.control.counters()
    assert.equal(after.verify - before.verify, 0, 'ykcs11 sent no VERIFY for the 9A signatures')
    assert.equal(after.sign - before.sign, 2)
  })

  it('9C with PIN policy "once" still gets its context login and signs every time', async () => {
    const signer = await pkcs11Signer(device, { id: '02' })
    for (let i = 0; i < 3; i += 1) await signer.sign(Buffer.from(`9c ${i}`))
  })
})
