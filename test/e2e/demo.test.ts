/**
 * The demo (`npm run demo`, scripts/demo.sh) as CI runs it: root or not, CI=true, no stdin. It must
 * finish with exit 0, show the registry verifying every token, and leave no process behind.
 * DEMO_SKIP_SETUP=1 because the suite already runs from a fresh build (setup.sh would rebuild dist/).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'

import { REPO_ROOT } from './lib/cargo.js'

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('npm run demo (scripts/demo.sh) under CI conditions', () => {
  const state = mkdtempSync(join(tmpdir(), 'hwtok-demo-'))
  const pids: number[] = []

  after(() => {
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL')
    rmSync(state, { recursive: true, force: true })
  })

  test('publishes, yanks, manages owners and builds through the agent; stops everything', async (t) => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CI: 'true',
      DEMO_STATE_DIR: join(state, 'demo'),
      DEMO_SKIP_SETUP: '1',
    }
    // A PIN the test knows, so it can look for it everywhere the demo writes.
    const pin = '73915286'
    env['CARGO_PKCS11_DEMO_PIN'] = pin
    delete env['CARGO_PKCS11_DEMO_MODULE']
    delete env['NODE_TEST_CONTEXT']
    const child = spawn('bash', [join(REPO_ROOT, 'scripts/demo.sh')], {
      cwd: REPO_ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d))
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    t.diagnostic(
      out
        .split('\n')
        .filter((l) => /^ {3}(registry: |agent: {4}|every )/.test(l))
        .join('\n'),
    )
    assert.equal(code, 0, out)

    assert.match(out, /k3\.public: k3\.public\.[A-Za-z0-9_-]{66}\n/)
    assert.match(out, /answer = 84/)
    assert.match(out, /PUT \/api\/v1\/crates\/new \[publish\] -> 200 token VERIFIED/)
    assert.match(out, /DELETE \/api\/v1\/crates\/hwtok-alpha\/0\.1\.0\/yank \[yank\] -> 200 token VERIFIED/)
    assert.match(out, /GET \/dl\/hwtok-beta\/0\.1\.0\/download \[read\] -> 200 token VERIFIED/)
    assert.doesNotMatch(out, /token REJECTED/)
    assert.match(out, /every token the registry verified appears in the agent audit log/)
    assert.match(out, /stopping the agent and the registry/)

    // The registry's record, read independently of the demo's own summary.
    const records = readFileSync(join(state, 'demo/registry/requests.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { auth: string; operation: string; tokenSha256?: string })
    const checked = records.filter((r) => r.auth === 'accepted' || r.auth === 'rejected')
    assert.ok(checked.every((r) => r.auth === 'accepted'))
    const mutations = checked.filter((r) => r.operation !== 'read')
    assert.deepEqual(
      mutations.map((r) => r.operation),
      ['publish', 'publish', 'yank', 'unyank', 'owners', 'owners'],
    )
    assert.equal(new Set(mutations.map((r) => r.tokenSha256)).size, mutations.length)

    // CI mode stops what it started: the pid files are gone and those processes too.
    for (const name of ['agent', 'registry']) assert.equal(existsSync(join(state, `demo/${name}.pid`)), false)
    for (const m of out.matchAll(/stopped (?:agent|registry) \(pid (\d+)\)/g)) {
      pids.push(Number(m[1]))
      assert.equal(alive(Number(m[1])), false)
    }
    assert.equal(pids.length, 2)
    // The PIN never reaches the output or any file the demo keeps (the SoftHSM store holds only
    // PIN-derived key material).
    assert.equal(out.includes(pin), false)
    const files = readdirSync(join(state, 'demo'), { recursive: true, encoding: 'utf8' })
      .filter((f) => !f.startsWith('softhsm') && !f.startsWith('target') && !f.startsWith('cargo-home'))
      .map((f) => join(state, 'demo', f))
      .filter((f) => statSync(f).isFile())
    assert.ok(files.length > 10)
    for (const f of files) assert.equal(readFileSync(f).includes(pin), false, f)
  })
})
