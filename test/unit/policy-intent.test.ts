import assert from 'node:assert/strict'
import { test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import { describeIntent, displaySafe } from '../../src/policy/intent.js'
import { publishIntent, PUBLISH_CRATE, readIntent } from '../fixtures/pinentry/harness.js'

test('a publish intent names operation, crate, version, checksum start, registry, URL and requester', () => {
  assert.equal(
    describeIntent(publishIntent()),
    'publish foo 1.2.3 (cksum 6dee75a8…) to my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 4242 (calls itself `cargo publish`)',
  )
})

test('the kernel’s executables are shown as fact, command lines as what each process says of itself', () => {
  const intent = publishIntent({
    requester: {
      pid: 4242,
      exe: '/home/u/.rustup/toolchains/stable/bin/cargo',
      command: 'cargo publish',
      tty: '/dev/pts/3',
      client: { pid: 4250, exe: '/usr/bin/node', command: 'node /usr/bin/cargo-credential-pkcs11' },
    },
  })
  assert.equal(
    describeIntent(intent),
    'publish foo 1.2.3 (cksum 6dee75a8…) to my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 4242 /home/u/.rustup/toolchains/stable/bin/cargo (calls itself `cargo publish`) on /dev/pts/3 through pid 4250 /usr/bin/node (calls itself `node /usr/bin/cargo-credential-pkcs11`)',
  )
  assert.equal(
    describeIntent(publishIntent({ requester: { pid: 9, exe: '/usr/bin/make', client: { pid: 10 } } })),
    'publish foo 1.2.3 (cksum 6dee75a8…) to my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 9 /usr/bin/make through pid 10',
  )
})

test('reads, yanks and owners read naturally; a nameless registry shows its URL', () => {
  assert.equal(
    describeIntent(readIntent()),
    'read from my-registry (sparse+http://127.0.0.1:8080/index/), requested by pid 4242 (calls itself `cargo build`)',
  )
  const { registryName: _unused, ...noName } = publishIntent({ operation: 'yank' })
  const { cksum: _c, ...yankCrate } = noName.crate
  const yank = { ...noName, crate: yankCrate }
  assert.equal(
    describeIntent(yank),
    'yank foo 1.2.3 on sparse+http://127.0.0.1:8080/index/, requested by pid 4242 (calls itself `cargo publish`)',
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

test('bidirectional and invisible characters cannot reorder the prompt or hide in a name', () => {
  for (const c of [
    '\u200e',
    '\u200f',
    '\u061c',
    '\u202a',
    '\u202e',
    '\u2066',
    '\u2069',
    '\u200b',
    '\u200d',
    '\u2060',
    '\ufeff',
  ])
    assert.equal(displaySafe(`cargo${c}publish`), 'cargo\uFFFDpublish', `U+${c.codePointAt(0)?.toString(16)}`)
  assert.equal(displaySafe('cargo publish — ok'), 'cargo publish — ok', 'ordinary text is kept')
})

test('very long fields are cut so the real request stays visible', () => {
  const long = displaySafe('x'.repeat(10_000))
  assert.equal(long.length, LIMITS.intentFieldMaxChars)
  assert.ok(long.endsWith('…'))
  const text = describeIntent(publishIntent({ requester: { pid: 7, command: 'cargo ' + 'a'.repeat(5_000) } }))
  assert.ok(text.length < 3 * LIMITS.intentFieldMaxChars + 200)
})
