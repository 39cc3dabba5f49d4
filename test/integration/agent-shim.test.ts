/**
 * The agent and the shim as real processes over a real socket, signing on SoftHSM. Tokens are
 * verified with the project's verifier against the KNOWN_KEY public key, which comes from the test
 * fixture (not from the agent), so a token signed with any other key fails.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { AgentConnection } from '../../src/protocol/client.js'
import { LIMITS } from '../../src/lib/limits.js'
import { inspectToken, verifyToken } from '../../src/verify/verify.js'
import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38572/index/'
const OTHER = 'sparse+http://127.0.0.1:38573/index/'
const CKSUM = '6dee75a8bd1d03d85f48bbd140b736b2c36df889a700754c5a24214de8b29c62'
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }

function okOf(line: string | undefined): Record<string, unknown> {
  assert.ok(line !== undefined, 'no response line')
  const parsed = JSON.parse(line) as Record<string, unknown>
  const ok = parsed['Ok'] as Record<string, unknown> | undefined
  assert.ok(ok !== undefined, `expected Ok, got ${line}`)
  return ok
}

function errOf(line: string | undefined): Record<string, unknown> {
  assert.ok(line !== undefined, 'no response line')
  const parsed = JSON.parse(line) as Record<string, unknown>
  const err = parsed['Err'] as Record<string, unknown> | undefined
  assert.ok(err !== undefined, `expected Err, got ${line}`)
  return err
}

describe('agent + shim on SoftHSM', () => {
  let agent: AgentFixture

  before(async () => {
    agent = await startAgent({
      registries: {
        local: { index: INDEX, readKey: known, tokenMaxAgeSeconds: 120 },
        nokey: { index: OTHER, readKey: { label: 'not-generated-yet' } },
      },
    })
  })
  after(async () => {
    await agent?.stop()
  })

  test('get read: a token that verifies for read with the registry URL; cached until iat + age + 60 − margin', async () => {
    const before = Math.floor(Date.now() / 1000)
    const r = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.lines[0], '{"v":[1]}')
    assert.equal(r.lines.length, 2)
    const ok = okOf(r.lines[1])
    assert.equal(ok['kind'], 'get')
    assert.equal(ok['operation_independent'], false)
    assert.equal(ok['cache'], 'expires')
    assert.equal(r.stderr, '', 'reads are silent')
    const verified = await verifyToken(String(ok['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'read',
      maxAgeSeconds: 120,
      strictLowS: true,
    })
    const iat = Math.floor(verified.iat.getTime() / 1000)
    assert.ok(iat >= before - 1 && iat <= Math.floor(Date.now() / 1000) + 1)
    assert.equal(ok['expiration'], iat + 120 + 60 - LIMITS.readTokenCacheSafetySeconds)
    // The same token must not pass as a publish token.
    await assert.rejects(
      verifyToken(String(ok['token']), {
        publicKey: KNOWN_KEY.k3Public,
        url: INDEX,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.0.0', cksum: CKSUM },
      }),
    )
  })

  test('get publish: a token that verifies for publish with name, vers and cksum; never cached', async () => {
    const r = await agent.runShim(
      cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.2.3', cksum: CKSUM, registryName: 'local' }),
    )
    assert.equal(r.status, 0, r.stderr)
    const ok = okOf(r.lines[1])
    assert.match(
      r.stderr,
      /signed publish foo 1\.2\.3 for local with [^\n]*key 'known' \(id 02\) \(k3\.pid\./,
    )
    assert.equal(ok['cache'], 'never')
    assert.equal(ok['expiration'], undefined)
    const verified = await verifyToken(String(ok['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'publish',
      crate: { name: 'foo', vers: '1.2.3', cksum: CKSUM },
      strictLowS: true,
    })
    assert.equal(verified.claims['mutation'], 'publish')
    // Bound to this crate version: another version or checksum is rejected.
    await assert.rejects(
      verifyToken(String(ok['token']), {
        publicKey: KNOWN_KEY.k3Public,
        url: INDEX,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.2.4', cksum: CKSUM },
      }),
    )
    await assert.rejects(
      verifyToken(String(ok['token']), {
        publicKey: KNOWN_KEY.k3Public,
        url: OTHER,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.2.3', cksum: CKSUM },
      }),
    )
  })

  test('yank and owners verify for their operation', async () => {
    const yank = okOf((await agent.runShim(cargoGet(INDEX, 'yank', { name: 'foo', vers: '1.2.3' }))).lines[1])
    await verifyToken(String(yank['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'yank',
      crate: { name: 'foo', vers: '1.2.3' },
    })
    const owners = okOf((await agent.runShim(cargoGet(INDEX, 'owners', { name: 'foo' }))).lines[1])
    await verifyToken(String(owners['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'owners',
      crate: { name: 'foo' },
    })
  })

  test('every signature has an audit line with the request and the key id', () => {
    const lines = readAudit(agent.auditLog).filter((l) => l['result'] === 'signed')
    const publish = lines.find((l) => l['operation'] === 'publish')
    assert.ok(publish !== undefined, JSON.stringify(lines))
    assert.equal(publish['crate'], 'foo')
    assert.equal(publish['vers'], '1.2.3')
    assert.equal((publish['registry'] as { url: string }).url, INDEX)
    assert.match(String(publish['kip']), /^k3\.pid\./)
    // The requester is the shim's parent (here this test process, under cargo it is cargo).
    const requester = publish['requester'] as { pid?: number; ppid?: number; command?: string }
    assert.equal(requester.pid, process.pid)
    assert.equal(requester.ppid, process.ppid)
    assert.ok(requester.command?.includes(process.argv[1] ?? '\0'), requester.command)
    assert.ok(!JSON.stringify(lines).includes('v3.public.'), 'the audit log must not hold tokens')
  })

  test('an unbound registry: url-not-supported (cargo tries the next provider)', async () => {
    const r = await agent.runShim(cargoGet('sparse+http://127.0.0.1:1/index/', 'read'))
    assert.equal(r.status, 0)
    assert.deepEqual(JSON.parse(String(r.lines[1])), { Err: { kind: 'url-not-supported' } })
    // cargo itself would only say "no credential providers could handle the request".
    assert.ok(r.stderr.includes('sparse+http://127.0.0.1:1/index/'), r.stderr)
    assert.match(
      r.stderr,
      /\[registries\.NAME\] table with index = "sparse\+http:\/\/127\.0\.0\.1:1\/index\/"/,
    )
    // Exact match only: the same URL without the sparse+ prefix is a different registry.
    const bare = await agent.runShim(cargoGet(INDEX.replace('sparse+', ''), 'read'))
    assert.deepEqual(JSON.parse(String(bare.lines[1])), { Err: { kind: 'url-not-supported' } })
  })

  test('a bound registry whose key does not exist yet: not-found for get (so cargo login can proceed)', async () => {
    const r = await agent.runShim(cargoGet(OTHER, 'read'))
    assert.deepEqual(JSON.parse(String(r.lines[1])), { Err: { kind: 'not-found' } })
  })

  test('cargo login shows k3.public and k3.pid of the bound key on stderr', async () => {
    const r = await agent.runShim({
      v: 1,
      registry: { 'index-url': INDEX, name: 'local' },
      kind: 'login',
      token: 'ignored',
    })
    assert.deepEqual(JSON.parse(String(r.lines[1])), { Ok: { kind: 'login' } })
    assert.ok(r.stderr.includes(KNOWN_KEY.k3Public), r.stderr)
    assert.match(r.stderr, /k3\.pid\.[A-Za-z0-9_-]{44}/)
    assert.equal(r.stdout.includes('k3.public'), false, 'stdout carries only the protocol')
  })

  test('cargo login without consent does not generate; with `-- --generate` it does, and reads then work', async () => {
    const refused = await agent.runShim({ v: 1, registry: { 'index-url': OTHER }, kind: 'login' })
    const e = errOf(refused.lines[1])
    assert.equal(e['kind'], 'other')
    assert.match(JSON.stringify(e['caused-by']), /--generate/)
    const generated = await agent.runShim({
      v: 1,
      registry: { 'index-url': OTHER },
      kind: 'login',
      args: ['--generate'],
    })
    assert.deepEqual(JSON.parse(String(generated.lines[1])), { Ok: { kind: 'login' } }, generated.stderr)
    const k3 = /k3\.public\.[A-Za-z0-9_-]{66}/.exec(generated.stderr)?.[0]
    assert.ok(k3 !== undefined, generated.stderr)
    assert.match(generated.stderr, /generated key "not-generated-yet"/)
    const read = okOf((await agent.runShim(cargoGet(OTHER, 'read'))).lines[1])
    await verifyToken(String(read['token']), { publicKey: k3, url: OTHER, operation: 'read' })
    // The generation is audited like a keygen: the key, the device, the kip the tokens carry.
    const generatedLines = readAudit(agent.auditLog).filter((l) => l['operation'] === 'keygen')
    assert.deepEqual(
      generatedLines.map((l) => [l['result'], l['key'], l['kip'], l['device']]),
      [
        [
          'generated',
          'softhsm/not-generated-yet',
          inspectToken(String(read['token'])).footer.kip,
          { token: 'softhsm', module: agent.softhsm.module },
        ],
      ],
    )
    assert.equal((generatedLines[0]?.['registry'] as { url?: string }).url, OTHER)
  })

  test('cargo logout answers Ok and touches no key', async () => {
    const r = await agent.runShim({ v: 1, registry: { 'index-url': INDEX }, kind: 'logout' })
    assert.deepEqual(JSON.parse(String(r.lines[1])), { Ok: { kind: 'logout' } })
    const again = okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
    await verifyToken(String(again['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'read',
    })
  })

  test('status, lock and release over the socket', async () => {
    const c = await AgentConnection.connect(agent.socket)
    try {
      const status = await c.request('status')
      assert.equal(status['socket'], agent.socket)
      const tokens = status['tokens'] as { name: string; status?: { present: boolean; loggedIn: boolean } }[]
      assert.equal(tokens[0]?.name, 'softhsm')
      assert.equal(tokens[0]?.status?.present, true)
      assert.equal(tokens[0]?.status?.loggedIn, true)
      assert.deepEqual((status['registries'] as { name: string }[]).map((r) => r.name).sort(), [
        'local',
        'nokey',
      ])
      const locked = await c.request('lock')
      assert.equal(typeof locked['forgotten'], 'number')
      const after = await c.request('status')
      assert.equal(
        (after['tokens'] as { status?: { loggedIn: boolean } }[])[0]?.status?.loggedIn,
        false,
        'lock logs the token out',
      )
      assert.deepEqual(Object.keys(await c.request('release')), ['released'])
      const pub = await c.request('pubkey', { registry: 'local' })
      assert.equal(
        (pub['registries'] as { readKey: { k3Public: string } }[])[0]?.readKey.k3Public,
        KNOWN_KEY.k3Public,
      )
    } finally {
      c.close()
    }
    // Signing works again after lock/release (env PIN source logs in again).
    const again = okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
    await verifyToken(String(again['token']), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'read',
    })
  })
})

describe('agent robustness', () => {
  test('malformed params for every method: an error each, and the agent keeps serving', async () => {
    const agent = await startAgent({ registries: { local: { index: INDEX, readKey: known } } })
    try {
      const c = await AgentConnection.connect(agent.socket)
      const junk: unknown[] = [
        undefined,
        null,
        42,
        'x'.repeat(1000),
        '{"v":1',
        '{"v":1,"registry":{"index-url":7},"kind":"get","operation":"read"}',
        JSON.stringify({
          v: 1,
          registry: { 'index-url': INDEX },
          kind: 'get',
          operation: 'publish',
          name: 'a',
        }),
        JSON.stringify({ v: 1, registry: { 'index-url': INDEX }, kind: 'logout' }),
        JSON.stringify({
          v: 1,
          registry: { 'index-url': INDEX, name: { nested: [1, 2] } },
          kind: 'get',
          operation: 'read',
        }),
      ]
      const requesters: unknown[] = [undefined, 'me', { pid: -1, ppid: 'x', command: 5, tty: null }, [1, 2]]
      let errors = 0
      for (const method of ['sign', 'login', 'logout', 'pubkey', 'keygen'] as const) {
        for (const [i, cargo] of junk.entries()) {
          const params = {
            cargo,
            requester: requesters[i % requesters.length],
            interactive: i % 2 === 0,
            token: cargo,
            label: cargo,
            registry: cargo,
            indexUrl: cargo,
          }
          try {
            await c.request(method, params as Record<string, unknown>)
          } catch (error) {
            errors += 1
            assert.ok(error instanceof Error)
            assert.notEqual(
              (error as { code?: string }).code,
              'AGENT_UNREACHABLE',
              `${method} #${i} dropped the connection`,
            )
          }
        }
      }
      assert.ok(errors >= junk.length * 4, `expected most malformed requests to fail, ${errors} did`)
      c.close()
      const ok = okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
      await verifyToken(String(ok['token']), { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
      assert.equal(agent.process?.exitCode, null, 'the agent is still running')
      assert.doesNotMatch(agent.log(), /TypeError|ReferenceError|Unhandled/)
    } finally {
      await agent.stop()
    }
  })

  test('keygen over the socket generates on the device and refuses to overwrite without force', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: { label: 'sock-gen' } } },
    })
    try {
      const c = await AgentConnection.connect(agent.socket)
      try {
        const made = await c.request('keygen', { token: 'softhsm', label: 'sock-gen' })
        assert.match(String(made['k3Public']), /^k3\.public\./)
        await assert.rejects(
          c.request('keygen', { token: 'softhsm', label: 'sock-gen' }),
          (e: unknown) => (e as { code?: string }).code === 'KEY_EXISTS',
        )
        const ok = okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
        await verifyToken(String(ok['token']), {
          publicKey: String(made['k3Public']),
          url: INDEX,
          operation: 'read',
        })
        // Replacing needs an approval no socket client can give (test/integration/agent-trust.test.ts
        // approves one through pinentry): this client has no terminal and no pinentry can ask.
        await assert.rejects(
          c.request('keygen', { token: 'softhsm', label: 'sock-gen', force: true }),
          (e: unknown) => (e as { code?: string }).code === 'POLICY_DENIED',
        )
        const still = okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
        await verifyToken(String(still['token']), {
          publicKey: String(made['k3Public']),
          url: INDEX,
          operation: 'read',
        })
        await assert.rejects(
          c.request('keygen', { token: 'nope', label: 'x' }),
          (e: unknown) => (e as { code?: string }).code === 'CONFIG_INVALID',
        )
      } finally {
        c.close()
      }
    } finally {
      await agent.stop()
    }
  })

  test('release-after-idle-seconds closes the sessions once the agent is idle', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known } },
      agent: { 'release-after-idle-seconds': 1 },
    })
    try {
      okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
      let open = -1
      for (let i = 0; i < 100; i++) {
        await new Promise((r) => setTimeout(r, 100))
        if (agent.log().includes('after 1 s idle')) break
      }
      const c = await AgentConnection.connect(agent.socket)
      try {
        const status = await c.request('status')
        open = (status['tokens'] as { status?: { sessionsOpen: number } }[])[0]?.status?.sessionsOpen ?? -1
      } finally {
        c.close()
      }
      assert.match(agent.log(), /released 1 device\(s\) after 1 s idle/)
      // status itself opens no signing session: the count is what the release left.
      assert.equal(open, 0)
    } finally {
      await agent.stop()
    }
  })
})

describe('agent + shim failures on SoftHSM', () => {
  test('wrong PIN (env source): Err other with the PIN_INCORRECT message, never retried', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known } },
      env: { CARGO_PKCS11_TEST_PIN: '999999' },
    })
    try {
      const r = await agent.runShim(cargoGet(INDEX, 'read'))
      assert.equal(r.status, 0)
      const e = errOf(r.lines[1])
      assert.equal(e['kind'], 'other')
      assert.match(String(e['message']), /Wrong PIN/)
      assert.match(JSON.stringify(e['caused-by']), /PIN_INCORRECT/)
      assert.match(JSON.stringify(e['caused-by']), /CARGO_PKCS11_TEST_PIN/)
      const failed = readAudit(agent.auditLog).filter((l) => l['code'] === 'PIN_INCORRECT')
      assert.equal(failed.length, 1)
    } finally {
      await agent.stop()
    }
  })

  test('token absent: a clear Err naming the token', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known } },
      tokens: { softhsm: { label: 'not-plugged-in' } },
    })
    try {
      const r = await agent.runShim(cargoGet(INDEX, 'read'))
      const e = errOf(r.lines[1])
      assert.equal(e['kind'], 'other')
      assert.match(String(e['message']), /not-plugged-in/)
      assert.match(JSON.stringify(e['caused-by']), /TOKEN_ABSENT/)
    } finally {
      await agent.stop()
    }
  })

  test('confirm = "prompt" without a terminal: refused with a remedy, nothing signed', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known, confirm: 'prompt' } },
    })
    try {
      const read = okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
      assert.ok(String(read['token']).startsWith('v3.public.'), 'reads are never confirmed')
      const r = await agent.runShim(cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.0.0', cksum: CKSUM }))
      const e = errOf(r.lines[1])
      assert.equal(e['kind'], 'other')
      // No terminal: the policy falls back to pinentry, which has no display or tty here either.
      assert.match(JSON.stringify(e['caused-by']), /error code (POLICY_DENIED|PIN_ENTRY_FAILED)/)
      assert.ok(
        Array.isArray(e['caused-by']) && String(e['caused-by'][0]).length > 10,
        'a remedy comes first',
      )
      const publishes = readAudit(agent.auditLog).filter((l) => l['operation'] === 'publish')
      assert.equal(publishes.length, 1)
      assert.notEqual(publishes[0]?.['result'], 'signed', 'nothing was signed')
    } finally {
      await agent.stop()
    }
  })

  test('headless agent with a tty PIN source: PIN_REQUIRED with a remedy', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known } },
      tokens: { softhsm: { pinSource: 'tty' } },
      agent: { headless: true },
    })
    try {
      const e = errOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
      assert.match(JSON.stringify(e['caused-by']), /PIN_REQUIRED/)
      assert.match(JSON.stringify(e['caused-by']), /pin-source = \\"env\\"/)
    } finally {
      await agent.stop()
    }
  })

  test('mutations-per-hour is enforced per registry', async () => {
    const agent = await startAgent({
      registries: { local: { index: INDEX, readKey: known, mutationsPerHour: 1 } },
    })
    try {
      okOf((await agent.runShim(cargoGet(INDEX, 'yank', { name: 'foo', vers: '1.0.0' }))).lines[1])
      const e = errOf((await agent.runShim(cargoGet(INDEX, 'yank', { name: 'foo', vers: '1.0.1' }))).lines[1])
      assert.match(JSON.stringify(e['caused-by']), /RATE_LIMITED/)
      okOf((await agent.runShim(cargoGet(INDEX, 'read'))).lines[1])
    } finally {
      await agent.stop()
    }
  })
})
