/**
 * The shim as cargo sees it: a real process fed lines on stdin, without an agent. Every malformed
 * input must produce the right Err line and exit, never a crash or a hang (bounded by timeoutMs).
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import { runShim, shimBinPath } from '../helpers/agent.js'

const SHIM = shimBinPath()
const INDEX = 'sparse+http://127.0.0.1:9/index/'
let dir: string
let env: NodeJS.ProcessEnv

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shim-proto-'))
  // No agent listens here and none may be started: every request that passes parsing fails to connect.
  env = {
    ...process.env,
    CARGO_PKCS11_AGENT_SOCK: join(dir, 'none', 'agent.sock'),
    CARGO_PKCS11_AGENT_NO_AUTOSTART: '1',
    XDG_STATE_HOME: join(dir, 'state'),
  }
})
after(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function exchange(
  input: string,
  options: { closeStdin?: boolean } = {},
): Promise<{
  status: number | null
  hello: string | undefined
  response: Record<string, unknown> | undefined
  lines: string[]
  stderr: string
}> {
  const r = await runShim(SHIM, input, { env, timeoutMs: 15_000, ...options })
  const response = r.lines[1] === undefined ? undefined : (JSON.parse(r.lines[1]) as Record<string, unknown>)
  return { status: r.status, hello: r.lines[0], response, lines: r.lines, stderr: r.stderr }
}

function errOf(response: Record<string, unknown> | undefined): Record<string, unknown> {
  assert.ok(response !== undefined, 'no response line')
  const e = response['Err'] as Record<string, unknown> | undefined
  assert.ok(e !== undefined, `expected Err, got ${JSON.stringify(response)}`)
  return e
}

describe('shim alone: cargo protocol v1 edge cases', () => {
  test('hello first, then an Err other for malformed JSON; exit 0', async () => {
    const r = await exchange('{"v":1,"registry":\n')
    assert.equal(r.hello, '{"v":[1]}')
    assert.equal(r.lines.length, 2)
    const e = errOf(r.response)
    assert.equal(e['kind'], 'other')
    assert.match(String(e['message']), /not valid JSON/)
    assert.equal(r.status, 0)
  })

  test('unknown kind and unknown operation: operation-not-supported', async () => {
    const kind = await exchange(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"frobnicate"}\n`)
    assert.deepEqual(kind.response, { Err: { kind: 'operation-not-supported' } })
    assert.equal(kind.status, 0)
    const op = await exchange(
      `{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"delete-everything"}\n`,
    )
    assert.deepEqual(op.response, { Err: { kind: 'operation-not-supported' } })
  })

  test('missing fields: Err other naming the field', async () => {
    const noCksum = errOf(
      (
        await exchange(
          `{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"publish","name":"foo","vers":"1.0.0"}\n`,
        )
      ).response,
    )
    assert.equal(noCksum['kind'], 'other')
    assert.match(String(noCksum['message']), /`publish` request has no `cksum`/)
    const noRegistry = errOf((await exchange('{"v":1,"kind":"get","operation":"read"}\n')).response)
    assert.match(String(noRegistry['message']), /no `registry`/)
    const noOp = errOf(
      (await exchange(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get"}\n`)).response,
    )
    assert.match(String(noOp['message']), /no `operation`/)
  })

  test('a line larger than the limit is refused without reading it all', async () => {
    const huge = `{"v":1,"registry":{"index-url":"${'a'.repeat(LIMITS.cargoLineMaxBytes + 10)}"}}\n`
    const r = await exchange(huge)
    const e = errOf(r.response)
    assert.equal(e['kind'], 'other')
    assert.match(String(e['message']), new RegExp(`larger than ${LIMITS.cargoLineMaxBytes} bytes`))
    assert.equal(r.status, 0)
  })

  test('stdin closed before a request: Err other and a failing exit status', async () => {
    const empty = await exchange('')
    assert.equal(empty.hello, '{"v":[1]}')
    assert.match(String(errOf(empty.response)['message']), /stdin closed before cargo sent a request/)
    assert.equal(empty.status, 1)
    const partial = await exchange('{"v":1,"regis')
    assert.match(String(errOf(partial.response)['message']), /in the middle of the request line/)
    assert.equal(partial.status, 1)
  })

  test('agent down and autostart disabled: Err other naming the socket and the fix', async () => {
    const r = await exchange(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"read"}\n`)
    const e = errOf(r.response)
    assert.equal(e['kind'], 'other')
    assert.ok(String(e['message']).includes(String(env['CARGO_PKCS11_AGENT_SOCK'])), String(e['message']))
    assert.match(JSON.stringify(e['caused-by']), /cargo-pkcs11-agent run/)
    assert.equal(r.status, 0)
  })

  test('provider args from cargo config: --socket=PATH and --no-autostart', async () => {
    const other = join(dir, 'elsewhere', 'agent.sock')
    const withoutEnv = { ...env }
    delete withoutEnv['CARGO_PKCS11_AGENT_NO_AUTOSTART']
    const r = await runShim(
      SHIM,
      `{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"get","operation":"read","args":["--socket=${other}","--no-autostart"]}\n`,
      { env: withoutEnv, timeoutMs: 15_000 },
    )
    const e = errOf(JSON.parse(String(r.lines[1])) as Record<string, unknown>)
    assert.ok(String(e['message']).includes(other), String(e['message']))
    assert.match(String(e['message']), /autostart is disabled/)
  })

  test('logout with no agent running succeeds without starting one (nothing is cached)', async () => {
    const r = await exchange(`{"v":1,"registry":{"index-url":"${INDEX}"},"kind":"logout"}\n`)
    assert.deepEqual(r.response, { Ok: { kind: 'logout' } })
  })

  test('started by hand (no --cargo-plugin): usage on stderr, nothing on stdout, exit 2', async () => {
    const r = await runShim(SHIM, '', { env, args: [], timeoutMs: 15_000 })
    assert.equal(r.stdout, '')
    assert.match(r.stderr, /credential-provider = "cargo-credential-pkcs11"/)
    assert.equal(r.status, 2)
  })
})
