import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { k3Public } from '../../src/keys/paserk.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken } from '../../src/token/build.js'
import { cargoVectors } from '../helpers/vectors.js'

const BIN = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))
const URL_ = 'sparse+http://127.0.0.1:38573/index/'
const CKSUM = 'a9317ac0b5061c3a5ef180c72659318c22c6811cac5d911c3a165759a93d1fd1'

interface Run {
  status: number | null
  stdout: string
  stderr: string
}

/** Runs the real binary as a separate process; `input` goes to its stdin. */
function runCli(args: readonly string[], input = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, stdout, stderr }))
    child.stdin.end(input)
  })
}

let signer: MemorySigner
let publishToken: string
let publicKey: string
const publishArgs = (): string[] => [
  '--public-key',
  publicKey,
  '--url',
  URL_,
  '--operation',
  'publish',
  '--name',
  'foo',
  '--vers',
  '1.0.0',
  '--cksum',
  CKSUM,
]

before(async () => {
  signer = MemorySigner.generate()
  publicKey = k3Public(signer.publicKey)
  publishToken = (
    await buildToken(signer, {
      indexUrl: URL_,
      operation: 'publish',
      crate: { name: 'foo', vers: '1.0.0', cksum: CKSUM },
    })
  ).token
})

test('a good token read from stdin (-) exits 0 and says what it was for', async () => {
  const r = await runCli(['verify', '-', ...publishArgs()], `${publishToken}\n`)
  assert.equal(r.status, 0, r.stderr)
  assert.match(r.stdout, /^valid: v3\.public token for publish foo 1\.0\.0/)
  assert.match(r.stdout, /s {4}low/)
  assert.equal(r.stderr, '')
})

test('--json on a good token prints the verified claims', async () => {
  const r = await runCli(['verify', '-', ...publishArgs(), '--json'], publishToken)
  assert.equal(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout) as {
    valid: boolean
    claims: Record<string, string>
    footer: { url: string }
    highS: boolean
  }
  assert.equal(out.valid, true)
  assert.equal(out.claims['cksum'], CKSUM)
  assert.equal(out.footer.url, URL_)
  assert.equal(out.highS, false)
})

test('a bad token exits 1 and prints the reason code', async () => {
  const replayed = await runCli(
    ['verify', '-', ...publishArgs().map((a) => (a === 'foo' ? 'bar' : a))],
    publishToken,
  )
  assert.equal(replayed.status, 1)
  assert.match(replayed.stderr, /^invalid: NAME_MISMATCH: /)
  const json = await runCli(
    ['verify', '-', ...publishArgs().map((a) => (a === '1.0.0' ? '1.0.1' : a)), '--json'],
    publishToken,
  )
  assert.equal(json.status, 1)
  assert.equal((JSON.parse(json.stdout) as { code: string }).code, 'VERS_MISMATCH')
  const other = await runCli(
    [
      'verify',
      '-',
      ...publishArgs().map((a) => (a === publicKey ? k3Public(MemorySigner.generate().publicKey) : a)),
    ],
    publishToken,
  )
  assert.equal(other.status, 1)
  assert.match(other.stderr, /KEY_ID_MISMATCH/)
})

test('a recorded cargo token: stale with the time check, valid without; high-S refused only with --strict-low-s', async () => {
  const v = cargoVectors().find((x) => x.operation === 'read' && x['s-is-high'])
  assert.ok(v !== undefined)
  const url = (JSON.parse(v.footer) as { url: string }).url
  const base = ['verify', '-', '--public-key', v['public-key'], '--url', url]
  const stale = await runCli(base, v.token)
  assert.equal(stale.status, 1)
  assert.match(stale.stderr, /IAT_STALE/)
  const ok = await runCli([...base, '--no-time-check'], v.token)
  assert.equal(ok.status, 0, ok.stderr)
  assert.match(ok.stdout, /s {4}high/)
  const strict = await runCli([...base, '--no-time-check', '--strict-low-s'], v.token)
  assert.equal(strict.status, 1)
  assert.match(strict.stderr, /SIGNATURE_HIGH_S/)
  const positional = await runCli([
    'verify',
    v.token,
    '--public-key',
    v['public-key'],
    '--url',
    url,
    '--no-time-check',
  ])
  assert.equal(positional.status, 0, positional.stderr)
})

test('usage errors exit 2 with a hint', async () => {
  const cases: [string[], RegExp][] = [
    [
      ['verify', '-', ...publishArgs(), '--publick-key', 'x'],
      /Unknown option '--publick-key' \(did you mean --public-key\?\)/,
    ],
    [['verify', '-', '--public-key', 'k3.public.AAAA', '--url', URL_], /--public-key: /],
    [['verify', '-', '--public-key', publicKey], /--url is required/],
    [
      ['verify', '-', ...publishArgs().slice(0, 4), '--operation', 'delete'],
      /--operation must be one of read, publish, yank, unyank, owners/,
    ],
    [['verify', '-', ...publishArgs(), '--max-age', '901'], /--max-age takes whole seconds, 1\.\.900/],
    [['verify', '-', ...publishArgs().slice(0, 6)], /needs the expected name/],
    [['verify', ...publishArgs()], /give the token, or - to read it from stdin/],
    [['verfy'], /unknown command 'verfy' \(did you mean 'verify'\?\)/],
    [[], /usage: cargo-pkcs11-agent <command>/],
  ]
  for (const [args, pattern] of cases) {
    const r = await runCli(args, publishToken)
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`)
    assert.match(r.stderr + r.stdout, pattern, args.join(' '))
  }
})

test('help and --version exit 0', async () => {
  const help = await runCli(['help'])
  assert.equal(help.status, 0)
  assert.match(help.stdout, /^ {2}verify +check a token as a registry must/m)
  const verifyHelp = await runCli(['help', 'verify'])
  assert.equal(verifyHelp.status, 0)
  assert.match(verifyHelp.stdout, /--public-key k3\.public/)
  const version = await runCli(['--version'])
  assert.equal(version.status, 0)
  assert.match(version.stdout, /^cargo-pkcs11-agent \d+\.\d+\.\d+\n$/)
})

test('--keys FILE: the key is found by the token kip, its user shown; unknown key exit 1, bad file exit 2', async () => {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const dir = mkdtempSync(join(tmpdir(), 'hwtok-keys-'))
  try {
    const keys = join(dir, 'keys')
    const otherKey = k3Public(MemorySigner.generate().publicKey)
    writeFileSync(keys, `${otherKey} bob\n${publicKey} alice\n`)
    const withKeys = publishArgs().map((a) => (a === '--public-key' ? '--keys' : a === publicKey ? keys : a))
    const ok = await runCli(['verify', '-', ...withKeys, '--json'], publishToken)
    assert.equal(ok.status, 0, ok.stderr)
    assert.equal((JSON.parse(ok.stdout) as { user: string }).user, 'alice')
    writeFileSync(keys, `${otherKey} bob\n`)
    const unknown = await runCli(['verify', '-', ...withKeys], publishToken)
    assert.equal(unknown.status, 1)
    assert.match(unknown.stderr, /KEY_ID_MISMATCH: no key with id/)
    writeFileSync(keys, `not-a-key bob\n`)
    const bad = await runCli(['verify', '-', ...withKeys], publishToken)
    assert.equal(bad.status, 2)
    assert.match(bad.stderr, /--keys: .*line 1/)
    const both = await runCli(['verify', '-', ...withKeys, '--public-key', publicKey], publishToken)
    assert.equal(both.status, 2)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
