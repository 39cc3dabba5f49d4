/**
 * The PIV key-generation template and the choice between PKCS#11 and yubico-piv-tool
 * (src/pkcs11/keygen.ts). The expected numbers are written out from yubico-piv-tool's
 * `ykcs11/pkcs11y.h` (2.3.0): YUBICO_BASE_VENDOR 0x59554200, CKA_YUBICO = CKA_VENDOR_DEFINED
 * (0x80000000) + it, CKA_YUBICO_TOUCH_POLICY = CKA_YUBICO + 1, CKA_YUBICO_PIN_POLICY = CKA_YUBICO + 2;
 * YKPIV_TOUCHPOLICY_DEFAULT/NEVER/ALWAYS/CACHED 0/1/2/3, YKPIV_PINPOLICY_DEFAULT/NEVER/ONCE/ALWAYS
 * 0/1/2/3, each read by `ykcs11/mechanisms.c` check_pvtkey_template as one CK_BYTE. The version
 * rule follows `ykcs11/ykcs11.c` C_GetInfo: libraryVersion.minor = MINOR * 10 + PATCH.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'

import {
  CKA_YUBICO_PIN_POLICY,
  CKA_YUBICO_TOUCH_POLICY,
  pivKeygenRoute,
  pivPolicyAttributes,
  ykcs11Version,
} from '../../src/pkcs11/keygen.js'

const YUBICO = 'Yubico (www.yubico.com)'
const info = (major: number, minor: number, manufacturer = YUBICO) => ({
  manufacturer,
  description: 'PKCS#11 PIV Library (SP-800-73)',
  version: { major, minor },
})

test('the vendor attribute types are ykcs11/pkcs11y.h values', () => {
  assert.equal(CKA_YUBICO_TOUCH_POLICY, 0xd9554201)
  assert.equal(CKA_YUBICO_PIN_POLICY, 0xd9554202)
})

test('the template carries one CK_BYTE per chosen policy; "default" leaves the attribute out', () => {
  const bytes = (attrs: { type: number; value: Buffer }[]) => attrs.map((a) => [a.type, [...a.value]])
  // setup's defaults: read key 9a (PIN once, touch never), mutation key 9c (touch always, PIN default).
  assert.deepEqual(bytes(pivPolicyAttributes('once', 'never')), [
    [0xd9554201, [1]],
    [0xd9554202, [2]],
  ])
  assert.deepEqual(bytes(pivPolicyAttributes('default', 'always')), [[0xd9554201, [2]]])
  assert.deepEqual(bytes(pivPolicyAttributes('always', 'cached')), [
    [0xd9554201, [3]],
    [0xd9554202, [3]],
  ])
  assert.deepEqual(bytes(pivPolicyAttributes('never', 'default')), [[0xd9554202, [1]]])
  assert.deepEqual(pivPolicyAttributes('default', 'default'), [])
})

test('PKCS#11 generation from ykcs11 2.3.0 (CK_INFO 2.30) on; Debian bookworm 2.2.0 (2.20) and 2.2.1 use the tool', () => {
  assert.equal(pivKeygenRoute(info(2, 20)), 'tool')
  assert.equal(pivKeygenRoute(info(2, 21)), 'tool')
  assert.equal(pivKeygenRoute(info(2, 30)), 'pkcs11')
  assert.equal(pivKeygenRoute(info(2, 31)), 'pkcs11')
  assert.equal(pivKeygenRoute(info(2, 72)), 'pkcs11')
  assert.equal(pivKeygenRoute(info(3, 0)), 'pkcs11')
  assert.equal(pivKeygenRoute(info(1, 99)), 'tool')
  // Another vendor's numbering means nothing here (OpenSC 0.23 reports 0.23, SoftHSM 2.6).
  assert.equal(pivKeygenRoute(info(2, 60, 'SoftHSM')), 'tool')
  assert.equal(ykcs11Version(info(2, 20)), '2.2.0')
  assert.equal(ykcs11Version(info(2, 30)), '2.3.0')
  assert.equal(ykcs11Version(info(2, 72)), '2.7.2')
})
