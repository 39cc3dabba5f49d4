/**
 * `cargo-pkcs11-agent gateway` (a real process) refusing to start on settings a new operator gets
 * wrong, each with the setting to fix (docs/gateway.md, "Configuration"): an upstream token file
 * others can read, a `listen` address another process holds, a mistyped key in the config file.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { k3Public } from '../../src/keys/paserk.js'
import { MemorySigner } from '../../src/signer/memory.js'

const BIN = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))
const UPSTREAM_TOKEN = 'Bearer upstream-secret-4711'

interface Outcome {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs the gateway until it exits or prints its listening line (then stops it). */
function gateway(args: string[]): Promise<Outcome> {
  const child = spawn(process.execPath, [BIN, 'gateway', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d
    if (stdout.includes('\n')) child.kill('SIGTERM')
  })
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    }),
  )
}

describe('gateway: settings refused at start, with what to change', () => {
  let dir: string
  let keys: string
  let tokenFile: string
  let base: string[]

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'gateway-config-'))
    keys = join(dir, 'keys')
    writeFileSync(keys, `${k3Public(MemorySigner.generate().publicKey)} alice\n`)
    tokenFile = join(dir, 'upstream-token')
    writeFileSync(tokenFile, `${UPSTREAM_TOKEN}\n`, { mode: 0o600 })
    base = ['--upstream', 'http://127.0.0.1:9', '--keys', keys]
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  test('an upstream token file group or others can read is refused, like a PIN file; 0600 starts', async () => {
    chmodSync(tokenFile, 0o644)
    const loose = await gateway([...base, '--listen', '127.0.0.1:0', '--upstream-token-file', tokenFile])
    assert.equal(loose.code, 1, loose.stdout + loose.stderr)
    assert.equal(loose.stdout, '')
    assert.match(
      loose.stderr,
      new RegExp(
        `The upstream token file ${tokenFile} is accessible by group or others \\(mode 644\\); the upstream token was not used\\. Restrict it to its owner: chmod 600 `,
      ),
    )
    assert.equal(loose.stderr.includes('upstream-secret-4711'), false)
    chmodSync(tokenFile, 0o600)
    const tight = await gateway([...base, '--listen', '127.0.0.1:0', '--upstream-token-file', tokenFile])
    assert.match(tight.stdout, /^\{"url":"http:\/\/127\.0\.0\.1:\d+"/, tight.stderr)
  })

  test('a listen address in use names `listen` and what holds the port, not "unexpected"', async () => {
    const holder: Server = createServer()
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve))
    const { port } = holder.address() as { port: number }
    try {
      const r = await gateway([...base, '--listen', `127.0.0.1:${port}`, '--upstream-token-file', tokenFile])
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.match(
        r.stderr,
        new RegExp(
          `the gateway cannot listen on 127\\.0\\.0\\.1:${port}: another process already listens there\\. Pick another \`listen\` .*ss -ltnp 'sport = :${port}'`,
        ),
      )
      assert.doesNotMatch(r.stderr, /unexpected/i)
    } finally {
      await new Promise((resolve) => holder.close(resolve))
    }
  })

  test('a mistyped key in the gateway config gets a did-you-mean', async () => {
    const config = join(dir, 'gateway.toml')
    writeFileSync(
      config,
      [
        'listen = "127.0.0.1:0"',
        'upstream = "http://127.0.0.1:9"',
        `keys-file = ${JSON.stringify(keys)}`,
        `upstream-token-file = ${JSON.stringify(tokenFile)}`,
        'max-age-second = 60',
      ].join('\n') + '\n',
    )
    const r = await gateway(['--config', config])
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stderr, /unknown key `max-age-second`; did you mean `max-age-seconds`\?/)
  })
})
