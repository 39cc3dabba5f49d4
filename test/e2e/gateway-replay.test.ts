/**
 * A used mutation token stays used, whatever its string: an ECDSA signature (r, s) has a twin
 * (r, n − s) that verifies too, and the gateway accepts high-S (cargo's own tokens may carry it), so
 * the single-use store keys on message, footer and r (src/registry/replay.ts replayKey). Real agent
 * (SoftHSM) signs, real `cargo-pkcs11-agent gateway` process checks, an upstream records what
 * reached it.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingMessage } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { decodeBase64url, encodeBase64url } from '../../src/keys/base64url.js'
import { P384, bigIntToBytes, bytesToBigInt } from '../../src/keys/point.js'
import { callAgent } from '../../src/protocol/client.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'

const BIN = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))

let agent: AgentFixture
let gateway: ChildProcess
let gatewayUrl = ''
let indexUrl = ''
const reached: string[] = []
let upstream: ReturnType<typeof createServer>
let work: string

function twin(token: string): string {
  const parts = token.split('.')
  const payload = decodeBase64url(parts[2]!, 'payload', (m) => new Error(m))
  const s = bytesToBigInt(payload.subarray(payload.length - 48))
  const out = new Uint8Array(payload)
  out.set(bigIntToBytes(P384.n - s, 48), payload.length - 48)
  parts[2] = encodeBase64url(out)
  return parts.join('.')
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'gateway-replay-'))
  upstream = createServer((req: IncomingMessage, res) => {
    reached.push(`${req.method} ${req.url}`)
    res.setHeader('content-type', 'application/json')
    res.end('{"ok":true}')
  })
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r))
  const upPort = (upstream.address() as { port: number }).port
  // The gateway's index URL is announced on its first stdout line; bind the agent to it afterwards.
  writeFileSync(join(work, 'token'), 'Bearer upstream-secret', { mode: 0o600 })
  // Start agent first to learn its public key for the keys file.
  agent = await startAgent({ registries: { gw: { index: 'sparse+http://gateway.test/index/' } } })
  const pub = await callAgent(agent.socket, 'pubkey', { registry: 'gw' })
  const k3 = pub.registries[0]?.mutationKey.k3Public
  assert.ok(k3, JSON.stringify(pub))
  writeFileSync(join(work, 'keys'), `${k3} alice\n`)
  gateway = spawn(
    process.execPath,
    [
      BIN,
      'gateway',
      '--listen',
      '127.0.0.1:0',
      '--upstream',
      `http://127.0.0.1:${upPort}`,
      '--keys',
      join(work, 'keys'),
      '--public-url',
      'http://gateway.test',
      '--upstream-token-file',
      join(work, 'token'),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let first = ''
  const info = await new Promise<{ url: string; indexUrl: string; port: number }>((resolve, reject) => {
    gateway.stdout!.setEncoding('utf8').on('data', (d: string) => {
      first += d
      if (first.includes('\n')) resolve(JSON.parse(first.split('\n')[0]!))
    })
    gateway.on('exit', (c) => reject(new Error(`gateway exited ${c}`)))
  })
  gatewayUrl = `http://127.0.0.1:${info.port}`
  indexUrl = info.indexUrl
  assert.equal(indexUrl, 'sparse+http://gateway.test/index/')
})

after(async () => {
  gateway?.kill('SIGTERM')
  await agent?.stop()
  upstream?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

async function yankWith(token: string): Promise<number> {
  const res = await fetch(`${gatewayUrl}/api/v1/crates/foo/1.0.0/yank`, {
    method: 'DELETE',
    headers: { authorization: token },
  })
  await res.text()
  return res.status
}

test('a used yank token replayed as its high-S twin is refused and not forwarded', async () => {
  const shim = await agent.runShim(cargoGet(indexUrl, 'yank', { name: 'foo', vers: '1.0.0' }))
  assert.equal(shim.status, 0, shim.stderr)
  const token = (JSON.parse(shim.lines.at(-1)!) as { Ok: { token: string } }).Ok.token
  assert.equal(await yankWith(token), 200, 'the genuine yank is forwarded')
  const before = reached.length
  assert.equal(await yankWith(token), 401, 'the same string is refused as replayed')
  assert.equal(await yankWith(twin(token)), 401, 'its high-S twin is refused as replayed')
  assert.equal(reached.length, before, 'neither reached the upstream')
})

test('the owners token of a `cargo owner --list`, once used, cannot add an owner as its high-S twin', async () => {
  const shim = await agent.runShim(cargoGet(indexUrl, 'owners', { name: 'foo' }))
  assert.equal(shim.status, 0, shim.stderr)
  const token = (JSON.parse(shim.lines.at(-1)!) as { Ok: { token: string } }).Ok.token
  const list = await fetch(`${gatewayUrl}/api/v1/crates/foo/owners`, { headers: { authorization: token } })
  await list.text()
  assert.equal(list.status, 200, 'the genuine owner --list is forwarded')
  const add = await fetch(`${gatewayUrl}/api/v1/crates/foo/owners`, {
    method: 'PUT',
    headers: { authorization: twin(token), 'content-type': 'application/json' },
    body: JSON.stringify({ users: ['mallory'] }),
  })
  const body = await add.text()
  assert.equal(add.status, 401, body)
  assert.match(body, /TOKEN_REPLAYED/)
  assert.notEqual(reached.at(-1), 'PUT /api/v1/crates/foo/owners')
})
