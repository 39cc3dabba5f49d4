import assert from 'node:assert/strict'
import { test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import { describeIntent, displaySafe } from '../../src/policy/intent.js'
import { publishIntent, PUBLISH_CRATE, readIntent } from '../fixtures/pinentry/harness.js'

test('a publish intent names operation, crate, version, checksum start, registry, URL and requester', () => {
  assert.equal(
    describeIntent(publishIntent()),
    'publish foo 1.2.3 (cksum 6dee75a8…) to my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 4242 `cargo publish`',
  )
})

test('reads, yanks and owners read naturally; a nameless registry shows its URL', () => {
  assert.equal(
    describeIntent(readIntent()),
    'read from my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 4242 `cargo build`',
  )
  const { registryName: _unused, ...noName } = publishIntent({ operation: 'yank' })
  const { cksum: _c, ...yankCrate } = noName.crate
  const yank = { ...noName, crate: yankCrate }
  assert.equal(
    describeIntent(yank),
    'yank foo 1.2.3 on sparse+http://127.0.0.1:8080/index/, requested by pid 4242 `cargo publish`',
  )
  const owners = describeIntent({
    indexUrl: 'sparse+http://127.0.0.1:1/index/',
    operation: 'owners',
    crate: { name: 'bar' },
    requester: {},
  })
  assert.equal(owners, 'owners bar on sparse+http://127.0.0.1:1/index/, requested by an unknown program')
})

test('control characters from another process cannot rewrite the prompt', () => {
  const hostile = publishIntent({
    crate: { ...PUBLISH_CRATE, name: 'foo\u001b[2K\rpublish nice-crate' },
    requester: { pid: 1, command: 'cargo\npublish\u202e' },
  })
  const text = describeIntent(hostile)
  assert.equal(/[\u0000-\u001f\u007f\u202e]/.test(text), false)
  assert.match(text, /foo\uFFFD\[2K\uFFFDpublish nice-crate/)
})

test('very long fields are cut so the real request stays visible', () => {
  const long = displaySafe('x'.repeat(10_000))
  assert.equal(long.length, LIMITS.intentFieldMaxChars)
  assert.ok(long.endsWith('…'))
  const text = describeIntent(publishIntent({ requester: { pid: 7, command: 'cargo ' + 'a'.repeat(5_000) } }))
  assert.ok(text.length < 3 * LIMITS.intentFieldMaxChars + 200)
})
