import assert from 'node:assert/strict'
import { test } from 'node:test'

import pkcs11js from 'pkcs11js'

import { CKR, fromReturnValue } from '../../src/pkcs11/ckr.js'

// Not exported by pkcs11js 2.1; their values come from PKCS#11 v3.0 section 5.1.4 (pkcs11t.h).
const NOT_IN_PKCS11JS = new Set(['CURVE_NOT_SUPPORTED', 'ACTION_PROHIBITED'])

test('every CKR value the table names is the one pkcs11js (pkcs11t.h) defines', () => {
  const exported = pkcs11js as unknown as Record<string, unknown>
  const checked: string[] = []
  for (const [name, { rv: value }] of Object.entries(CKR)) {
    if (NOT_IN_PKCS11JS.has(name)) {
      assert.equal(exported[`CKR_${name}`], undefined, `pkcs11js now exports CKR_${name}: compare it`)
      continue
    }
    assert.equal(exported[`CKR_${name}`], value, `CKR_${name}`)
    checked.push(name)
  }
  assert.equal(checked.length, Object.keys(CKR).length - NOT_IN_PKCS11JS.size)
  assert.equal(
    new Set(Object.values(CKR).map((t) => t.rv)).size,
    Object.keys(CKR).length,
    'no value appears twice',
  )
})

test('return values translate by number, with the operation deciding where it changes the meaning', () => {
  const wrong = fromReturnValue(CKR.PIN_INCORRECT.rv, 'login', 'token t', undefined)
  assert.equal(wrong.code, 'PIN_INCORRECT')
  assert.equal(wrong.message, 'token t: the PIN is incorrect')
  assert.equal(wrong.data['rv'], '0x000000a0')
  assert.equal(fromReturnValue(CKR.FUNCTION_CANCELED.rv, 'sign', 't', undefined).code, 'TOUCH_TIMEOUT')
  assert.equal(fromReturnValue(CKR.FUNCTION_CANCELED.rv, 'find', 't', undefined).code, 'TIMEOUT')
  assert.equal(fromReturnValue(CKR.USER_NOT_LOGGED_IN.rv, 'sign', 't', undefined).code, 'TOUCH_TIMEOUT')
  assert.equal(fromReturnValue(CKR.USER_NOT_LOGGED_IN.rv, 'find', 't', undefined).code, 'PIN_REQUIRED')
  const unknown = fromReturnValue(0x8000_0001, 'sign-init', 't', undefined)
  assert.equal(unknown.code, 'DEVICE_ERROR')
  assert.equal(unknown.data['rv'], '0x80000001')
  assert.ok(unknown.remedy !== undefined)
})
