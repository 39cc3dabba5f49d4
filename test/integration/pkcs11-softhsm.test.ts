/**
 * The device layer against a real SoftHSM 2 token: key lookup, on-device signing verified by the
 * token core and by node:crypto, on-device key generation (non-extractable), keygen overwrite rule,
 * login behaviour, release and reopen.
 */
import assert from 'node:assert/strict'
import { verify as cryptoVerify, type KeyObject } from 'node:crypto'
import { after, before, describe, it } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { Pin } from '../../src/lib/secret.js'
import { k3Public } from '../../src/keys/paserk.js'
import { decompressPoint } from '../../src/keys/point.js'
import { isHighS, verifySignature } from '../../src/keys/signature.js'
import { Pkcs11Module } from '../../src/pkcs11/binding.js'
import { buildToken } from '../../src/token/build.js'
import { v3PublicPae } from '../../src/token/pae.js'
import { parseV3PublicToken } from '../../src/verify/paseto.js'
import { verifyToken } from '../../src/verify/verify.js'
import { Device, type DeviceEvent } from '../../src/pkcs11/device.js'
import { resolveModulePath } from '../../src/pkcs11/modules.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { p384PublicKey } from '../helpers/node-crypto-verify.js'
import { createSoftHsmToken, KNOWN_KEY, GENERATED_KEY, type SoftHsmToken } from '../helpers/softhsm.js'

function spki(pk49: Uint8Array): KeyObject {
  return p384PublicKey(decompressPoint(pk49))
}

async function rejects(promise: Promise<unknown>, code: string): Promise<AgentError> {
  try {
    await promise
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected AgentError, got ${String(error)}`)
    assert.equal(error.code, code, error.describe())
    assert.ok(error.remedy !== undefined && error.remedy.length > 0, 'every error carries a remedy')
    return error
  }
  assert.fail(`expected ${code}`)
}

describe('PKCS#11 device on SoftHSM', () => {
  let token: SoftHsmToken
  let pin: Pin | undefined
  let device: Device
  const events: DeviceEvent[] = []

  before(async () => {
    token = await createSoftHsmToken({ label: 'cargo', pin: '123456', soPin: '12345678' })
    process.env['SOFTHSM2_CONF'] = token.confPath
    device = new Device(
      { module: 'softhsm', label: 'cargo' },
      { cachedPin: () => pin, onEvent: (e) => events.push(e) },
    )
  })

  after(async () => {
    await device.release()
    await token.cleanup()
  })

  it('resolves the known module name from native-config/modules.json', () => {
    assert.equal(resolveModulePath('softhsm'), '/usr/lib/softhsm/libsofthsm2.so')
    assert.equal(resolveModulePath('/opt/x/libfoo.so'), '/opt/x/libfoo.so')
    assert.throws(
      () => resolveModulePath('nosuchdevice'),
      (e: unknown) => e instanceof AgentError && e.code === 'CONFIG_INVALID',
    )
  })

  it('reports status and needs a login before private keys are usable', async () => {
    const status = await device.status()
    assert.equal(status.present, true)
    assert.equal(status.label, 'cargo')
    assert.ok(status.serial !== undefined && status.serial.length > 0)
    assert.equal(status.loginRequired, true)
    assert.equal(await device.needsLogin(), true)
    assert.match(device.describe(), /^token 'cargo' \(serial [0-9a-f]+\) via libsofthsm2\.so$/)
  })

  it('finds the imported key by label and by id, with the public key of the known PEM', async () => {
    const byLabel = await device.findKey({ label: KNOWN_KEY.label })
    assert.equal(Buffer.from(byLabel.publicKey).toString('hex'), KNOWN_KEY.publicKeyHex)
    assert.equal(k3Public(byLabel.publicKey), KNOWN_KEY.k3Public)
    const byId = await device.findKey({ id: KNOWN_KEY.id })
    assert.equal(byId.label, KNOWN_KEY.label)
    const err = await rejects(device.findKey({ label: 'nope' }), 'KEY_NOT_FOUND')
    assert.match(err.remedy ?? '', /'known' \(id 02\)/)
    assert.match(err.remedy ?? '', /'gen' \(id 01\)/)
  })

  it('signing without a held PIN fails with PIN_REQUIRED', async () => {
    const signer = await pkcs11Signer(device, { label: KNOWN_KEY.label })
    await rejects(signer.sign(new Uint8Array([1, 2, 3])), 'PIN_REQUIRED')
  })

  it('logs in once and signs; signatures verify with the token core and node:crypto, low-S', async () => {
    await device.login(Pin.fromString('123456'))
    assert.equal(await device.needsLogin(), false)
    for (const key of [KNOWN_KEY, GENERATED_KEY]) {
      const signer = await pkcs11Signer(device, { label: key.label })
      assert.match(signer.description, /key '(known|gen)'/)
      for (let i = 0; i < 8; i += 1) {
        const message = Buffer.from(`v3.public.message ${i} for ${key.label}`)
        const sig = await signer.sign(message)
        assert.equal(sig.length, 96)
        assert.equal(isHighS(sig), false)
        assert.equal(verifySignature(signer.publicKey, message, sig), true)
        assert.equal(
          cryptoVerify('sha384', message, { key: spki(signer.publicKey), dsaEncoding: 'ieee-p1363' }, sig),
          true,
        )
        const other = Buffer.from(message)
        other[0] = (other[0] ?? 0) ^ 1
        assert.equal(verifySignature(signer.publicKey, other, sig), false)
      }
    }
  })

  it('a publish token signed on the device verifies with the token core verifier and with node:crypto', async () => {
    const signer = await pkcs11Signer(device, { label: KNOWN_KEY.label })
    const indexUrl = 'sparse+http://127.0.0.1:1/index/'
    const cksum = 'ab'.repeat(32)
    const built = await buildToken(signer, {
      indexUrl,
      operation: 'publish',
      crate: { name: 'foo', vers: '1.2.3', cksum },
    })
    const verified = await verifyToken(built.token, {
      publicKey: KNOWN_KEY.k3Public,
      url: indexUrl,
      operation: 'publish',
      crate: { name: 'foo', vers: '1.2.3', cksum },
      strictLowS: true,
    })
    assert.equal(verified.claims['mutation'], 'publish')
    assert.equal(verified.highS, false)
    const parsed = parseV3PublicToken(built.token)
    const pae = v3PublicPae(signer.publicKey, parsed.message, parsed.footer)
    const key = spki(Buffer.from(KNOWN_KEY.publicKeyHex, 'hex'))
    assert.equal(cryptoVerify('sha384', pae, { key, dsaEncoding: 'ieee-p1363' }, parsed.signature), true)
    const tampered = await rejects(
      verifyToken(built.token, {
        publicKey: KNOWN_KEY.k3Public,
        url: indexUrl,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.2.4', cksum },
      }),
      'VERS_MISMATCH',
    )
    assert.ok(tampered)
  })

  it('signs concurrently from a pool of sessions', async () => {
    const signer = await pkcs11Signer(device, { id: GENERATED_KEY.id })
    const messages = Array.from({ length: 20 }, (_, i) => Buffer.from(`concurrent ${i}`))
    const sigs = await Promise.all(messages.map((m) => signer.sign(m)))
    sigs.forEach((s, i) => assert.equal(verifySignature(signer.publicKey, messages[i] as Buffer, s), true))
    const status = await device.status()
    assert.ok(status.sessionsOpen > 1, `expected several sessions, got ${status.sessionsOpen}`)
  })

  it('generates a non-extractable, sensitive P-384 key whose CKA_VALUE cannot be read', async () => {
    const key = await device.generateKey({ label: 'fresh', id: '0a0b' })
    assert.equal(key.label, 'fresh')
    assert.equal(key.id, '0a0b')
    assert.equal(key.extractable, false)
    assert.equal(key.sensitive, true)
    assert.equal(key.publicKey.length, 49)
    const listed = (await device.listKeys()).find((k) => k.id === '0a0b')
    assert.ok(listed !== undefined)
    assert.equal(listed.extractable, false)
    assert.equal(listed.sensitive, true)
    // Read CKA_VALUE straight through the binding, as an attacker with the session would.
    const mod = Pkcs11Module.load('/usr/lib/softhsm/libsofthsm2.so')
    const slot = mod.slotsWithToken().find((s) => mod.tokenInfo(s).label === 'cargo')
    assert.ok(slot !== undefined)
    const session = mod.openSession(slot, false)
    try {
      const [handle] = mod.findKeys(session, { cls: 'private', id: Buffer.from('0a0b', 'hex') }, 'test')
      assert.ok(handle !== undefined, 'private key visible while logged in')
      assert.throws(
        () => mod.readValue(session, handle, 'test'),
        (e: unknown) => e instanceof AgentError && e.code === 'OPERATION_UNSUPPORTED',
      )
    } finally {
      mod.closeSession(session)
    }
    const signer = await pkcs11Signer(device, { label: 'fresh' })
    const sig = await signer.sign(Buffer.from('fresh key'))
    assert.equal(verifySignature(key.publicKey, Buffer.from('fresh key'), sig), true)
  })

  it('keygen refuses to overwrite a label or id without force, replaces with force', async () => {
    const before = await device.findKey({ label: 'fresh' })
    const byLabel = await rejects(device.generateKey({ label: 'fresh' }), 'KEY_EXISTS')
    assert.match(byLabel.message, /already has a key labelled 'fresh'$/)
    const byId = await rejects(device.generateKey({ label: 'other', id: '0a0b' }), 'KEY_EXISTS')
    assert.match(byId.message, /already has a key with id 0a0b$/)
    const unchanged = await device.findKey({ label: 'fresh' })
    assert.deepEqual(unchanged.publicKey, before.publicKey)
    const replaced = await device.generateKey({ label: 'fresh', id: '0a0b' }, { force: true })
    assert.notDeepEqual(replaced.publicKey, before.publicKey)
    const keys = (await device.listKeys()).filter((k) => k.label === 'fresh')
    assert.equal(keys.length, 1, 'the old pair is destroyed')
    assert.deepEqual(keys[0]?.publicKey, replaced.publicKey)
    // Replaced by label alone: the key keeps its CKA_ID (on PIV tokens the id names the slot).
    const again = await device.generateKey({ label: 'fresh' }, { force: true })
    assert.equal(again.id, '0a0b')
    assert.notDeepEqual(again.publicKey, replaced.publicKey)
  })

  it('release closes every session; the next sign reopens and logs in again with the held PIN', async () => {
    pin = Pin.fromString('123456')
    await device.release()
    assert.equal((await device.status()).sessionsOpen, 0)
    assert.ok(events.some((e) => e.type === 'released'))
    const signer = await pkcs11Signer(device, { label: KNOWN_KEY.label })
    const sig = await signer.sign(Buffer.from('after release'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('after release'), sig), true)
    const status = await device.status()
    assert.equal(status.loggedIn, true)
    assert.ok(status.sessionsOpen >= 1)
  })

  it('logout then login with a PIN the device does not hold: the next sign works (stale key handles are looked up again)', async () => {
    const held = pin
    pin = undefined
    const signer = await pkcs11Signer(device, { label: KNOWN_KEY.label })
    await signer.sign(Buffer.from('before logout'))
    await device.logout()
    assert.equal(await device.needsLogin(), true)
    await rejects(signer.sign(Buffer.from('logged out')), 'PIN_REQUIRED')
    const once = Pin.fromString('123456')
    await device.login(once)
    once.wipe()
    const sig = await signer.sign(Buffer.from('after login'))
    assert.equal(verifySignature(signer.publicKey, Buffer.from('after login'), sig), true)
    pin = held
  })

  it("a key replaced behind the signer's back (keygen --force elsewhere) is caught by the self-check", async () => {
    const signer = await pkcs11Signer(device, { label: 'fresh' })
    await signer.sign(Buffer.from('old key'))
    const other = new Device({ module: 'softhsm', label: 'cargo' })
    await other.login(Pin.fromString('123456'))
    await other.generateKey({ label: 'fresh', id: '0a0b' }, { force: true })
    await other.release()
    const err = await rejects(signer.sign(Buffer.from('new key under the old name')), 'SELF_CHECK_FAILED')
    assert.match(err.remedy ?? '', /pubkey/)
  })

  it('an absent token is reported as not present, with an insert-token remedy', async () => {
    const missing = new Device({ module: 'softhsm', label: 'not-here', serial: '42' })
    assert.equal((await missing.status()).present, false)
    const err = await rejects(missing.listKeys(), 'TOKEN_ABSENT')
    assert.match(err.remedy ?? '', /or insert token 'not-here' \(serial 42\); the agent picks it up/)
  })

  it('selects the token by serial alone or by manufacturer/model, never by slot id; one module initialisation is shared', async () => {
    const serial = (await device.status()).serial ?? ''
    const bySerial = new Device({ module: '/usr/lib/softhsm/libsofthsm2.so', serial })
    assert.equal((await bySerial.status()).label, 'cargo')
    const byModel = new Device({
      module: 'softhsm',
      manufacturer: 'SoftHSM project',
      model: 'SoftHSM v2',
      label: 'cargo',
    })
    assert.equal((await byModel.status()).serial, serial)
    const wrongModel = new Device({ module: 'softhsm', model: 'YubiKey YK5', label: 'cargo' })
    assert.equal((await wrongModel.status()).present, false)
    const wrongSerial = new Device({ module: 'softhsm', label: 'cargo', serial: '0000' })
    assert.equal((await wrongSerial.status()).present, false)
    // A second load of the same library (also via another path to the same file) is the same instance.
    assert.equal(
      Pkcs11Module.load('/usr/lib/softhsm/libsofthsm2.so'),
      Pkcs11Module.load('/usr/lib/softhsm/../softhsm/libsofthsm2.so'),
    )
    await bySerial.release()
    await byModel.release()
  })

  it('a missing module file is a clear MODULE_LOAD_FAILED', async () => {
    const nope = new Device({ module: '/nonexistent/libnothing.so', label: 'x' })
    const err = await rejects(nope.status(), 'MODULE_LOAD_FAILED')
    assert.match(err.message, /does not exist/)
  })
})
