/**
 * The device layer against a software TPM 2.0 (swtpm) through the real tpm2-pkcs11 module: a key
 * generated inside the TPM signs tokens that verify with the project's verifier and with
 * node:crypto, and the key cannot leave the TPM.
 */
import assert from 'node:assert/strict'
import type { KeyObject } from 'node:crypto'
import { after, before, describe, it } from 'node:test'

import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import type { Signer } from '../../src/signer/signer.js'
import { buildToken } from '../../src/token/build.js'
import { verifyToken } from '../../src/verify/verify.js'
import { p384PublicKey, verifyWithNodeCrypto } from '../helpers/node-crypto-verify.js'
import { startSoftwareTpm, type SoftwareTpm } from '../helpers/swtpm.js'

const PIN = '246810'
const SO_PIN = '13579135'
const LABEL = 'cargo-ci'
const KEY = { label: 'cargo', id: '01' }
const INDEX_URL = 'sparse+http://127.0.0.1:8000/index/'

/** The public key as pkcs11-tool (OpenSC, not our code) reads it: `EC_POINT: 0461 04 X Y`. */
function publicKeyFromPkcs11Tool(listing: string, label: string): KeyObject {
  const block = listing
    .split(/\n(?=\S)/)
    .find((b) => b.startsWith('Public Key Object') && new RegExp(`label:\\s+${label}\\n`).test(`${b}\n`))
  const hex = /EC_POINT:\s+([0-9a-f]+)/.exec(block ?? '')?.[1]
  assert.ok(hex !== undefined, `no EC_POINT for '${label}' in:\n${listing}`)
  const der = Buffer.from(hex, 'hex')
  assert.equal(
    der.subarray(0, 3).toString('hex'),
    '046104',
    'DER OCTET STRING around an uncompressed P-384 point',
  )
  return p384PublicKey(der.subarray(2)) // 04 || X || Y
}

describe('tpm2-pkcs11 on swtpm', () => {
  let tpm: SoftwareTpm
  let device: Device
  let signer: Signer
  let publicKey: KeyObject
  let privateKeyListing: string
  const pin = Pin.fromString(PIN)

  before(async () => {
    tpm = await startSoftwareTpm({ label: LABEL, pin: PIN, soPin: SO_PIN, key: KEY })
    // OpenSC's view first: without a resource manager the TPM's few object slots are held by the
    // process that has tpm2-pkcs11 loaded, so a second process (pkcs11-tool) cannot log in while
    // this one holds the module (Esys_StartAuthSession: "out of memory for object contexts").
    const pins = { TPM_PIN: PIN }
    const login = ['--token-label', LABEL, '--login', '--pin', 'env:TPM_PIN']
    publicKey = publicKeyFromPkcs11Tool(await tpm.pkcs11Tool([...login, '--list-objects'], pins), KEY.label)
    privateKeyListing = await tpm.pkcs11Tool([...login, '--list-objects', '--type', 'privkey'], pins)
    // tpm2-pkcs11 reads its TCTI and store at C_Initialize, in this process.
    Object.assign(process.env, tpm.env)
    device = new Device({ module: tpm.module, label: LABEL }, { cachedPin: () => pin })
  })

  after(async () => {
    await device?.release()
    await tpm?.stop()
  })

  it('finds the token by label and needs a login', async () => {
    const status = await device.status()
    assert.equal(status.present, true)
    assert.equal(status.label, LABEL)
    assert.equal(status.loginRequired, true)
  })

  it('reads the same public key from the TPM as pkcs11-tool does', async () => {
    const key = await device.findKey(KEY)
    const jwk = publicKey.export({ format: 'jwk' })
    const y = Buffer.from(jwk.y ?? '', 'base64url')
    const compressed = Buffer.concat([
      Buffer.from([2 + ((y[y.length - 1] ?? 0) & 1)]),
      Buffer.from(jwk.x ?? '', 'base64url'),
    ])
    assert.deepEqual(Buffer.from(key.publicKey), compressed)
    signer = await pkcs11Signer(device, KEY)
  })

  it('signs a publish token in the TPM that verifies with verifyToken and node:crypto', async () => {
    const request = {
      indexUrl: INDEX_URL,
      operation: 'publish',
      crate: { name: 'tpm-crate', vers: '0.1.0', cksum: 'b'.repeat(64) },
    } as const
    const built = await buildToken(signer, request)
    const verified = await verifyToken(built.token, {
      ...request,
      url: INDEX_URL,
      publicKey: signer.publicKey,
      strictLowS: true,
    })
    assert.equal(verified.claims['name'], 'tpm-crate')
    assert.equal(verifyWithNodeCrypto(built.token, signer.publicKey, publicKey), true)
  })

  it('signs repeatedly, each signature verifying (no state left behind between signs)', async (t) => {
    const times: number[] = []
    for (let i = 0; i < 20; i += 1) {
      const started = performance.now()
      const built = await buildToken(signer, { indexUrl: INDEX_URL, operation: 'read' })
      times.push(performance.now() - started)
      assert.equal(verifyWithNodeCrypto(built.token, signer.publicKey, publicKey), true)
    }
    times.sort((a, b) => a - b)
    t.diagnostic(
      `tpm2-pkcs11/swtpm token build p50 ${times[10]?.toFixed(1)} ms, max ${times[19]?.toFixed(1)} ms`,
    )
  })

  it('keeps the generated key inside the TPM: sensitive, never extractable', async () => {
    const key = await device.findKey(KEY)
    assert.equal(key.extractable, false)
    assert.equal(key.sensitive, true)
    // The same flags as OpenSC reads them (CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE).
    assert.match(privateKeyListing, /Access:\s+sensitive, always sensitive, never extractable, local/)
  })
})
