import assert from 'node:assert/strict'
import { test } from 'node:test'
import { inspect } from 'node:util'

import { Pin, Secret } from '../../src/lib/secret.js'

test('a Secret prints [REDACTED] however it is turned into text', () => {
  const secret = new Secret('123456')
  assert.equal(String(secret), '[REDACTED]')
  assert.equal(`${secret}`, '[REDACTED]')
  assert.equal(JSON.stringify({ pin: secret }), '{"pin":"[REDACTED]"}')
  assert.equal(inspect({ pin: secret }), "{ pin: '[REDACTED]' }".replace("'[REDACTED]'", '[REDACTED]'))
  assert.equal(secret.expose(), '123456')
})

test('a wiped Pin no longer holds its bytes', () => {
  const pin = Pin.fromString('654321')
  const bytes = pin.expose()
  pin.wipe()
  assert.deepEqual([...bytes], [0, 0, 0, 0, 0, 0])
  assert.equal(inspect(pin).includes('654321'), false)
})
