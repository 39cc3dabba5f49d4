import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { cacheControl } from '../../src/agent/pipeline/respond.js'
import { cargoErrorFor, errOther, HELLO, okGet, parseCargoRequest } from '../../src/cargo/protocol.js'
import { AgentError } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'

const INDEX = 'sparse+http://127.0.0.1:38572/index/'
const CKSUM = '6dee75a8bd1d03d85f48bbd140b736b2c36df889a700754c5a24214de8b29c62'

function codeOf(line: string): string {
  try {
    parseCargoRequest(line)
    return 'ok'
  } catch (error) {
    assert.ok(error instanceof AgentError)
    return error.code
  }
}

describe('cargo request parsing (docs/cargo-protocol.md §1.4)', () => {
  test('the exact lines cargo 1.95 sent are accepted with their fields', () => {
    // [observed] lines from the spec, headers and args included.
    const read = parseCargoRequest(
      `{"v":1,"registry":{"index-url":"${INDEX}","name":"extreg","headers":["WWW-Authenticate: Cargo login_url=\\"http://127.0.0.1:38572/me\\""]},"kind":"get","operation":"read","args":["--from-config","two words"]}`,
    )
    assert.equal(read.kind, 'get')
    assert.equal(read.registry.indexUrl, INDEX)
    assert.equal(read.registry.name, 'extreg')
    assert.deepEqual(read.args, ['--from-config', 'two words'])
    assert.deepEqual(read.registry.headers, ['WWW-Authenticate: Cargo login_url="http://127.0.0.1:38572/me"'])
    const publish = parseCargoRequest(
      `{"v":1,"registry":{"index-url":"${INDEX}","name":"extreg"},"kind":"get","operation":"publish","name":"foo-ext","vers":"0.1.0","cksum":"${CKSUM}"}`,
    )
    assert.deepEqual(
      {
        kind: publish.kind,
        op: publish.kind === 'get' && publish.operation,
        name: publish.kind === 'get' && publish.crate.name,
        vers: publish.kind === 'get' && publish.crate.vers,
        cksum: publish.kind === 'get' && publish.crate.cksum,
      },
      { kind: 'get', op: 'publish', name: 'foo-ext', vers: '0.1.0', cksum: CKSUM },
    )
    const login = parseCargoRequest(
      `{"v":1,"registry":{"index-url":"${INDEX}","name":"extreg"},"kind":"login","token":"k3.secret.xyz","login-url":"http://127.0.0.1:38572/me","args":["--generate"]}`,
    )
    assert.equal(login.kind, 'login')
    assert.equal(login.kind === 'login' && login.hasToken, true)
    assert.equal(login.kind === 'login' && login.loginUrl, 'http://127.0.0.1:38572/me')
    assert.equal(
      parseCargoRequest(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"logout"}`).kind,
      'logout',
    )
  })

  test('owners carries name only; a stray vers on owners is dropped, not signed', () => {
    const owners = parseCargoRequest(
      `{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"owners","name":"foo","vers":"1.0.0"}`,
    )
    assert.ok(owners.kind === 'get')
    assert.equal(owners.crate.name, 'foo')
    assert.equal(owners.crate.vers, undefined)
  })

  test('malformed input is REQUEST_INVALID, unknown kinds and operations OPERATION_UNSUPPORTED', () => {
    assert.equal(codeOf('not json'), 'REQUEST_INVALID')
    assert.equal(codeOf('[1,2]'), 'REQUEST_INVALID')
    assert.equal(
      codeOf('{"v":2,"registry":{"index-url":"x"},"kind":"get","operation":"read"}'),
      'REQUEST_INVALID',
    )
    assert.equal(codeOf('{"v":1,"kind":"get","operation":"read"}'), 'REQUEST_INVALID')
    assert.equal(codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"operation":"read"}`), 'REQUEST_INVALID')
    assert.equal(codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get"}`), 'REQUEST_INVALID')
    assert.equal(
      codeOf(
        `{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"publish","name":"foo","vers":"1.0.0"}`,
      ),
      'REQUEST_INVALID',
    )
    assert.equal(
      codeOf(
        `{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"publish","name":"foo","vers":"1.0.0","cksum":"ABC"}`,
      ),
      'REQUEST_INVALID',
    )
    assert.equal(
      codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"yank","name":"foo"}`),
      'REQUEST_INVALID',
    )
    assert.equal(
      codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"owners"}`),
      'REQUEST_INVALID',
    )
    assert.equal(
      codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"read","args":[1]}`),
      'REQUEST_INVALID',
    )
    assert.equal(
      codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"read","name":7}`),
      'REQUEST_INVALID',
    )
    assert.equal(
      codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"cache-clear"}`),
      'OPERATION_UNSUPPORTED',
    )
    assert.equal(
      codeOf(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"delete"}`),
      'OPERATION_UNSUPPORTED',
    )
  })
})

describe('cargo responses (docs/cargo-protocol.md §1.5)', () => {
  test('hello and get responses are the exact serde shapes', () => {
    assert.equal(HELLO, '{"v":[1]}')
    assert.equal(
      okGet('v3.public.x', { cache: 'never' }),
      '{"Ok":{"kind":"get","token":"v3.public.x","cache":"never","operation_independent":false}}',
    )
    assert.equal(
      okGet('t', { cache: 'expires', expiration: 1700000000 }),
      '{"Ok":{"kind":"get","token":"t","cache":"expires","expiration":1700000000,"operation_independent":false}}',
    )
    assert.equal(
      errOther('boom', ['fix it']),
      '{"Err":{"kind":"other","message":"boom","caused-by":["fix it"]}}',
    )
  })

  test('agent errors map to the cargo kinds that make cargo do the right thing', () => {
    const e = (
      code: 'REGISTRY_NOT_CONFIGURED' | 'KEY_NOT_FOUND' | 'OPERATION_UNSUPPORTED' | 'PIN_INCORRECT',
    ): AgentError => new AgentError(code, `m ${code}`, { remedy: 'do this' })
    assert.equal(cargoErrorFor(e('REGISTRY_NOT_CONFIGURED'), 'get'), '{"Err":{"kind":"url-not-supported"}}')
    assert.equal(cargoErrorFor(e('KEY_NOT_FOUND'), 'get'), '{"Err":{"kind":"not-found"}}')
    // For login, "not-found" would make cargo say "no token found"; the remedy matters more there.
    assert.deepEqual(JSON.parse(cargoErrorFor(e('KEY_NOT_FOUND'), 'login')), {
      Err: {
        kind: 'other',
        message: 'm KEY_NOT_FOUND',
        'caused-by': ['do this', 'cargo-pkcs11-agent error code KEY_NOT_FOUND'],
      },
    })
    assert.equal(
      cargoErrorFor(e('OPERATION_UNSUPPORTED'), 'get'),
      '{"Err":{"kind":"operation-not-supported"}}',
    )
    assert.deepEqual(JSON.parse(cargoErrorFor(e('PIN_INCORRECT'), 'get')), {
      Err: {
        kind: 'other',
        message: 'm PIN_INCORRECT',
        'caused-by': ['do this', 'cargo-pkcs11-agent error code PIN_INCORRECT'],
      },
    })
  })
})

describe('read-token cache expiry', () => {
  test('reads expire at iat + max age + 60 s − margin; mutations are never cached', () => {
    const iat = 1_800_000_000
    assert.deepEqual(cacheControl('read', iat, { tokenMaxAgeSeconds: 60 }), {
      cache: 'expires',
      expiration: iat + 60 + 60 - LIMITS.readTokenCacheSafetySeconds,
    })
    assert.deepEqual(cacheControl('read', iat, { tokenMaxAgeSeconds: 900 }), {
      cache: 'expires',
      expiration: iat + 900 + 60 - LIMITS.readTokenCacheSafetySeconds,
    })
    for (const op of ['publish', 'yank', 'unyank', 'owners'] as const)
      assert.deepEqual(cacheControl(op, iat, { tokenMaxAgeSeconds: 900 }), { cache: 'never' })
  })

  test('cargo reuses a cached read token only while it is still inside the registry window', () => {
    // cargo reuses while now < expiration - 60 (auth/mod.rs); the token must then be younger than max age.
    for (const maxAge of [11, 60, 300, 900]) {
      const iat = 1_800_000_000
      const c = cacheControl('read', iat, { tokenMaxAgeSeconds: maxAge })
      assert.equal(c.cache, 'expires')
      const lastReuse = (c as { expiration: number }).expiration - LIMITS.cargoCacheReuseMarginSeconds
      assert.ok(lastReuse - iat < maxAge, `max age ${maxAge}: reused at age ${lastReuse - iat}`)
    }
  })

  test('a window shorter than the safety margin is not cached at all', () => {
    assert.deepEqual(cacheControl('read', 1000, { tokenMaxAgeSeconds: LIMITS.readTokenCacheSafetySeconds }), {
      cache: 'never',
    })
  })
})
