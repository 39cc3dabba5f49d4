/**
 * The gateway forwards only cargo's routes (docs/gateway.md: anything else is refused with 404 and
 * not forwarded, because the upstream token opens the whole upstream). A route is matched on
 * decoded segments and the raw target is forwarded, so a segment an upstream would normalise
 * (`%2e%2e`, RFC 3986 §5.2.4) or read as structure must not match any route: GET /dl/%2e%2e/admin
 * would reach nginx's /admin with the gateway's own token. Real gateway process, real nginx upstream
 * that checks the bearer token, real agent signing the read token.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { callAgent } from '../../src/protocol/client.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'

const BIN = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))
const INDEX = 'sparse+http://gateway.test/index/'
const UPSTREAM_TOKEN = 'Bearer upstream-secret'

let agent: AgentFixture
let gateway: ChildProcess
let nginx: ChildProcess
let port = 0
let work: string

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const p = (s.address() as { port: number }).port
  await new Promise((r) => s.close(r))
  return p
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'gateway-paths-'))
  mkdirSync(join(work, 'tmp'))
  const up = await freePort()
  writeFileSync(
    join(work, 'nginx.conf'),
    [
      ...(process.getuid?.() === 0 ? ['user root;'] : []),
      'worker_processes 1;',
      'daemon off;',
      `pid ${join(work, 'nginx.pid')};`,
      `error_log ${join(work, 'error.log')} warn;`,
      'events { worker_connections 64; }',
      'http {',
      `  access_log ${join(work, 'access.log')};`,
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(
        (t) => `  ${t}_temp_path ${join(work, 'tmp', t)};`,
      ),
      '  server {',
      `    listen 127.0.0.1:${up};`,
      `    if ($http_authorization != "${UPSTREAM_TOKEN}") { return 401; }`,
      '    location = /admin { return 200 "upstream admin area\\n"; }',
      '    location /dl/ { return 200 "a download\\n"; }',
      '  }',
      '}',
    ].join('\n'),
  )
  nginx = spawn('/usr/sbin/nginx', ['-c', join(work, 'nginx.conf'), '-p', work], { stdio: 'ignore' })
  await new Promise((r) => setTimeout(r, 500))
  writeFileSync(join(work, 'token'), UPSTREAM_TOKEN, { mode: 0o600 })
  agent = await startAgent({ registries: { gw: { index: INDEX } } })
  const pub = await callAgent(agent.socket, 'pubkey', { registry: 'gw' })
  writeFileSync(join(work, 'keys'), `${pub.registries[0]!.readKey.k3Public} alice\n`)
  gateway = spawn(
    process.execPath,
    [
      BIN,
      'gateway',
      '--listen',
      '127.0.0.1:0',
      '--upstream',
      `http://127.0.0.1:${up}`,
      '--keys',
      join(work, 'keys'),
      '--upstream-token-file',
      join(work, 'token'),
      '--public-url',
      'http://gateway.test',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let first = ''
  port = await new Promise<number>((resolve, reject) => {
    gateway.stdout!.setEncoding('utf8').on('data', (d: string) => {
      first += d
      if (first.includes('\n')) resolve((JSON.parse(first.split('\n')[0]!) as { port: number }).port)
    })
    gateway.on('exit', (c) => reject(new Error(`gateway exited ${c}`)))
  })
})

after(async () => {
  gateway?.kill('SIGTERM')
  nginx?.kill('SIGTERM')
  await agent?.stop()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

function get(path: string, authorization: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method: 'GET', headers: { authorization } },
      (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (d: string) => (body += d))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      },
    )
    req.on('error', reject)
    req.end()
  })
}

test('a read token reaches no upstream path outside the route table, however the path is spelt', async () => {
  const shim = await agent.runShim(cargoGet(INDEX, 'read'))
  const token = (JSON.parse(shim.lines.at(-1)!) as { Ok: { token: string } }).Ok.token
  assert.equal((await get('/dl/foo/1.0.0/download', token)).status, 200, 'a real download is forwarded')
  for (const path of [
    '/admin',
    '/dl/%2e%2e/admin',
    '/dl/%2E%2E/admin',
    '/dl/foo/%2e%2e/%2e%2e/admin',
    '/dl/./%2e%2e/admin',
    '/dl/..%5c..%5cadmin/x',
    '/dl/foo#/../../admin',
    '/dl/..;/admin',
    '/dl/%252e%252e/admin',
  ]) {
    const answer = await get(path, token)
    assert.equal(answer.status, 404, `${path}: ${answer.status} ${JSON.stringify(answer.body)}`)
    assert.doesNotMatch(answer.body, /upstream admin area/, path)
  }
  const access = readFileSync(join(work, 'access.log'), 'utf8')
  assert.doesNotMatch(access, /admin/, 'nothing but the download reached the upstream')
})
