import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Pin } from '../../src/lib/secret.js'
import { PinCache, type ForgetReason } from '../../src/policy/pin-cache.js'

function setup(idleSeconds = 60, maxSeconds = 300) {
  let now = 1_000_000
  const forgotten: [string, ForgetReason][] = []
  const cache = new PinCache({
    idleSeconds,
    maxSeconds,
    clock: () => now,
    onForget: (id, reason) => forgotten.push([id, reason]),
  })
  return { cache, forgotten, advance: (s: number) => (now += s * 1000) }
}

test('a cached PIN is returned while used within the idle lifetime', () => {
  const { cache, advance } = setup()
  const pin = Pin.fromString('123456')
  cache.set('tok', pin)
  for (let i = 0; i < 4; i++) {
    advance(59)
    assert.equal(cache.get('tok'), pin)
  }
})

test('after the idle lifetime the PIN is forgotten and its bytes are wiped', () => {
  const { cache, forgotten, advance } = setup()
  const pin = Pin.fromString('123456')
  const bytes = pin.expose()
  cache.set('tok', pin)
  advance(60)
  assert.equal(cache.get('tok'), undefined)
  assert.deepEqual([...bytes], [0, 0, 0, 0, 0, 0])
  assert.deepEqual(forgotten, [['tok', 'idle']])
})

test('the maximum lifetime ends an entry even when it is used all the time', () => {
  const { cache, forgotten, advance } = setup(60, 150)
  cache.set('tok', Pin.fromString('123456'))
  advance(50)
  assert.ok(cache.get('tok'))
  advance(50)
  assert.ok(cache.get('tok'))
  advance(50)
  assert.equal(cache.get('tok'), undefined)
  assert.deepEqual(forgotten, [['tok', 'max-lifetime']])
})

test('lock, removal and wrong PIN forget and wipe; entries are per token', () => {
  const { cache, forgotten } = setup()
  const a = Pin.fromString('1111')
  const b = Pin.fromString('2222')
  cache.set('a', a)
  cache.set('b', b)
  cache.forget('a', 'wrong-pin')
  assert.equal(cache.get('a'), undefined)
  assert.equal(cache.get('b'), b)
  assert.deepEqual([...a.expose()], [0, 0, 0, 0])
  cache.set('a', Pin.fromString('3333'))
  assert.equal(cache.clear('lock'), 2)
  assert.equal(cache.size, 0)
  assert.deepEqual([...b.expose()], [0, 0, 0, 0])
  assert.deepEqual(
    forgotten.map(([, r]) => r),
    ['wrong-pin', 'lock', 'lock'],
  )
})

test('replacing a PIN wipes the old one; lifetime 0 disables caching', () => {
  const { cache } = setup()
  const old = Pin.fromString('1111')
  cache.set('t', old)
  cache.set('t', Pin.fromString('2222'))
  assert.deepEqual([...old.expose()], [0, 0, 0, 0])
  const off = setup(0, 0).cache
  const pin = Pin.fromString('9999')
  off.set('t', pin)
  assert.equal(off.get('t'), undefined)
  assert.deepEqual([...pin.expose()], [0, 0, 0, 0])
})

test('sweep wipes expired entries without a request; has() does not refresh', () => {
  const { cache, advance } = setup(60, 300)
  const pin = Pin.fromString('123456')
  cache.set('t', pin)
  advance(30)
  assert.equal(cache.has('t'), true)
  advance(30)
  assert.deepEqual(cache.sweep(), ['t'])
  assert.deepEqual([...pin.expose()], [0, 0, 0, 0, 0, 0])
})
