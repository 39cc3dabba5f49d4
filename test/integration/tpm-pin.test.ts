/**
 * Wrong PINs on a TPM through tpm2-pkcs11: each is one C_Login and PIN_INCORRECT, with no tries-left
 * flags, until the TPM's dictionary-attack protection locks out; from then on even the right PIN is
 * refused (PIN_LOCKED), for the whole TPM. Why the agent must never retry a PIN by itself.
 * Its own file and swtpm: the lockout would poison any other test on the same TPM.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { startSoftwareTpm, type SoftwareTpm } from '../helpers/swtpm.js'

const PIN = '192837'
const LABEL = 'tpm-pin'

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected an AgentError, got ${String(error)}`)
    assert.ok(error.remedy !== undefined && error.remedy.length > 0)
    return error.code
  }
  return 'OK'
}

describe('tpm2-pkcs11 on swtpm: wrong PINs and the TPM lockout', () => {
  let tpm: SoftwareTpm
  let device: Device
  let pin: Pin | undefined

  before(async () => {
    tpm = await startSoftwareTpm({ label: LABEL, pin: PIN, soPin: '56473829' })
    Object.assign(process.env, tpm.env)
    device = new Device({ module: tpm.module, label: LABEL }, { cachedPin: () => pin })
  })

  after(async () => {
    await device?.release()
    await tpm?.stop()
  })

  it('reports wrong PINs as PIN_INCORRECT without tries-left flags, then locks out even the right PIN', async () => {
    const codes: string[] = []
    for (let attempt = 0; attempt < 10 && codes.at(-1) !== 'PIN_LOCKED'; attempt += 1) {
      pin = Pin.fromString(`00000${attempt}`)
      codes.push(await codeOf(device.login(pin)))
      const status = await device.status()
      // tpm2-pkcs11 keeps no PIN counter of its own: the TPM's lockout is invisible in the flags.
      assert.deepEqual([status.pinCountLow, status.pinFinalTry, status.pinLocked], [false, false, false])
    }
    assert.equal(codes[0], 'PIN_INCORRECT')
    assert.equal(codes.at(-1), 'PIN_LOCKED', `codes: ${codes.join(', ')}`)
    assert.ok(
      codes.slice(0, -1).every((c) => c === 'PIN_INCORRECT'),
      codes.join(', '),
    )
    pin = Pin.fromString(PIN)
    assert.equal(await codeOf(device.login(pin)), 'PIN_LOCKED', 'the right PIN is refused during the lockout')
  })
})
