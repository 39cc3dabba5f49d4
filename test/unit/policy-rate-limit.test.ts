import assert from 'node:assert/strict'
import { test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { MutationRateLimiter } from '../../src/policy/rate-limit.js'

test('the limit applies per registry over a sliding hour and says when it frees up', () => {
  let now = Date.parse('2026-11-25T10:00:00Z')
  const limiter = new MutationRateLimiter({ clock: () => now })
  for (let i = 0; i < 3; i++) {
    limiter.take('reg-a', 3, 'my-registry')
    now += 10 * 60_000
  }
  // 10:30: three mutations at 10:00, 10:10, 10:20.
  assert.throws(
    () => limiter.take('reg-a', 3, 'my-registry'),
    (e: unknown) =>
      e instanceof AgentError &&
      e.code === 'RATE_LIMITED' &&
      e.message.includes('2026-11-25T11:00:00.000Z') &&
      e.data['retryAfterSeconds'] === 1800 &&
      e.message.includes('my-registry'),
  )
  limiter.take('reg-b', 3)
  now = Date.parse('2026-11-25T11:00:00Z')
  limiter.take('reg-a', 3)
  assert.equal(limiter.count('reg-a'), 3)
})

test('a released slot (refused request) is given back; 0 disables mutations', () => {
  const limiter = new MutationRateLimiter({ clock: () => 0 })
  const release = limiter.take('r', 1)
  assert.throws(() => limiter.take('r', 1), { code: 'RATE_LIMITED' })
  release()
  release()
  assert.equal(limiter.count('r'), 0)
  limiter.take('r', 1)
  assert.throws(
    () => limiter.take('other', 0),
    (e: unknown) => e instanceof AgentError && e.code === 'RATE_LIMITED' && /disabled/.test(e.message),
  )
})
