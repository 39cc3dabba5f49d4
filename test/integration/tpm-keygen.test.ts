/**
 * Key generation through the product's own path (Device.generateKey) inside a software TPM via
 * tpm2-pkcs11: the new key is sensitive and never extractable, and it signs tokens that verify.
 * Its own file (own process, own swtpm): without a resource manager a process can create only
 * one TPM key after loading others (few transient object slots), so this runs on a fresh module.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'

import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { buildToken } from '../../src/token/build.js'
import { verifyToken } from '../../src/verify/verify.js'
import { startSoftwareTpm, type SoftwareTpm } from '../helpers/swtpm.js'

const PIN = '864209'
const LABEL = 'tpm-keygen'
const INDEX_URL = 'sparse+http://127.0.0.1:8000/index/'

describe('Device.generateKey on tpm2-pkcs11 (swtpm)', () => {
  let tpm: SoftwareTpm
  let device: Device
  const pin = Pin.fromString(PIN)

  before(async () => {
    tpm = await startSoftwareTpm({ label: LABEL, pin: PIN, soPin: '97531975', key: false })
    Object.assign(process.env, tpm.env)
    device = new Device({ module: tpm.module, label: LABEL }, { cachedPin: () => pin })
  })

  after(async () => {
    await device?.release()
    await tpm?.stop()
  })

  it('generates a non-extractable P-384 key in the TPM that signs verifiable tokens', async () => {
    assert.deepEqual(await device.listKeys(), [])
    const key = await device.generateKey({ label: 'cargo', id: '0a' })
    assert.equal(key.label, 'cargo')
    assert.equal(key.id, '0a')
    assert.equal(key.extractable, false)
    assert.equal(key.sensitive, true)
    assert.equal(key.publicKey.length, 49)
    const signer = await pkcs11Signer(device, { id: '0a' })
    assert.deepEqual(Buffer.from(signer.publicKey), Buffer.from(key.publicKey))
    const built = await buildToken(signer, {
      indexUrl: INDEX_URL,
      operation: 'yank',
      crate: { name: 'x', vers: '1.0.0' },
    })
    await verifyToken(built.token, {
      url: INDEX_URL,
      operation: 'yank',
      crate: { name: 'x', vers: '1.0.0' },
      publicKey: key.publicKey,
      strictLowS: true,
    })
  })
})
