/**
 * Which way `setup` generates PIV keys (src/pkcs11/keygen.ts `pivKeygenRoute`), against the REAL
 * Debian ykcs11 2.2.0 → pcscd → vpcd → test/fixtures/vpiv: the module reports 2.20 in CK_INFO, so
 * the yubico-piv-tool route is chosen, and the reason holds: through this module the SO login with
 * the management key and the P-384 template work, but the CKA_YUBICO_* policy attributes are refused
 * (CKR_ATTRIBUTE_TYPE_INVALID) before anything reaches the card. A card with firmware 5.7 (AES-192
 * factory management key) gets a typed error from setup naming what to install or change.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { Secret } from '../../src/lib/secret.js'
import { generateInPivSlot, moduleInfo, pivKeygenRoute, ykcs11Version } from '../../src/pkcs11/keygen.js'
import { compressPoint } from '../../src/keys/point.js'
import { runAgentCli } from '../helpers/agent.js'
import { rejectsWithCode } from '../helpers/errors.js'
import {
  DEFAULT_MANAGEMENT_KEY,
  startVirtualYubiKey,
  type VirtualYubiKey,
} from '../helpers/virtual-yubikey.js'

const SERIAL = 27182818

describe("Debian's ykcs11 2.2.0: the yubico-piv-tool route, and why", () => {
  let yk: VirtualYubiKey
  const managementKey = () => new Secret(Buffer.from(DEFAULT_MANAGEMENT_KEY))

  before(async () => {
    yk = await startVirtualYubiKey({ serial: SERIAL, blank: true })
    // libpcsclite reads PCSCLITE_CSOCK_NAME when ykcs11 first connects, in this process.
    Object.assign(process.env, yk.env)
    await yk.waitForToken()
  })
  after(async () => {
    await yk?.stop()
  })

  test('CK_INFO says 2.2.0 (2.20): the tool route', () => {
    const info = moduleInfo(yk.module)
    assert.match(info.manufacturer, /^Yubico/)
    assert.deepEqual(info.version, { major: 2, minor: 20 })
    assert.equal(ykcs11Version(info), '2.2.0')
    assert.equal(pivKeygenRoute(info), 'tool')
  })

  test('the policy attributes are refused by 2.2.0 and the card generates nothing', async () => {
    const before = await yk.control.counters()
    const refused = await rejectsWithCode(
      (async () =>
        generateInPivSlot(yk.module, String(SERIAL), {
          id: Buffer.from([0x02]),
          pinPolicy: 'default',
          touchPolicy: 'always',
          managementKey: managementKey(),
        }))(),
      'OPERATION_UNSUPPORTED',
    )
    assert.match(refused.message, /ykcs11 2\.2\.0 refuses the PIN\/touch policy attributes/)
    assert.match(refused.remedy ?? '', /ykcs11 2\.3\.0 or later/)
    const after = await yk.control.counters()
    assert.equal(after.generate, before.generate, 'no GENERATE reached the card')
    assert.equal(
      after.managementAuth,
      before.managementAuth + 1,
      'the SO login with the management key worked',
    )
    assert.equal(
      (await yk.control.slots()).find((s) => s.slot === '9c'),
      undefined,
    )
  })

  test('without them the same template and SO login generate in 9c (with the slot defaults)', async () => {
    const made = generateInPivSlot(yk.module, String(SERIAL), {
      id: Buffer.from([0x02]),
      pinPolicy: 'default',
      touchPolicy: 'default',
      managementKey: managementKey(),
    })
    const slot = (await yk.control.slots()).find((s) => s.slot === '9c')
    assert.equal(slot?.origin, 'generated')
    assert.equal(slot?.touchPolicy, 'never', "9c's default: no touch, which is why setup needs the tool here")
    assert.deepEqual(
      Buffer.from(compressPoint(Buffer.from(String(slot?.publicPoint), 'hex'))),
      Buffer.from(made.publicKey),
    )
  })

  test('a wrong management key is MANAGEMENT_KEY_INCORRECT, not a PIN error', async () => {
    const wrong = Buffer.from(DEFAULT_MANAGEMENT_KEY)
    wrong[0] = (wrong[0] ?? 0) ^ 0xff
    await rejectsWithCode(
      (async () =>
        generateInPivSlot(yk.module, String(SERIAL), {
          id: Buffer.from([0x01]),
          pinPolicy: 'default',
          touchPolicy: 'default',
          managementKey: new Secret(wrong),
        }))(),
      'MANAGEMENT_KEY_INCORRECT',
    )
  })
})

describe("firmware 5.7 (AES-192 factory management key) with Debian's 3DES-only ykcs11 2.2.0 and yubico-piv-tool 2.2", () => {
  let yk: VirtualYubiKey
  let dir: string

  before(async () => {
    yk = await startVirtualYubiKey({ serial: SERIAL + 1, blank: true, version: [5, 7, 1] })
    await yk.waitForToken()
    dir = await mkdtemp(join(tmpdir(), 'ykcs11-fw57-'))
  })
  after(async () => {
    await yk?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  test('setup stops with an error naming the firmware, AES-192, the ykcs11 found and the remedies; the card is untouched', async () => {
    assert.equal(yk.initialManagementKey.algorithm, 'aes192')
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...yk.env,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_HOME: join(dir, 'cargo-home'),
      YK_FW57_PIN: '123456',
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    const before = await yk.control.counters()
    const r = await runAgentCli(
      ['setup', '--module', 'ykcs11', '--pin-source', 'env', '--pin-env', 'YK_FW57_PIN'],
      { env, timeoutMs: 120_000 },
    )
    assert.equal(r.code, 1, r.stdout + r.stderr)
    const text = r.stdout + r.stderr
    assert.match(text, new RegExp(`YubiKey ${SERIAL + 1} has firmware 5\\.7\\.1`))
    assert.match(text, /AES-192/)
    assert.match(text, /ykcs11 2\.2\.0/)
    assert.match(text, /ykcs11 2\.3\.0 or later/)
    assert.match(text, /ykman piv access change-management-key --algorithm TDES --generate --protect/)
    const after = await yk.control.counters()
    assert.deepEqual([after.generate, after.putData], [before.generate, before.putData])
    assert.deepEqual(await yk.control.slots(), [])
    assert.equal((await yk.control.managementKey()).isDefault, true)
  })
})
