/**
 * UV_THREADPOOL_SIZE for the agent: under ESM the pool already runs when the entry module starts,
 * so raising the variable in-process changes nothing and `relaunchWithThreadpoolSize()` must re-run
 * the process with it (src/lib/threadpool.ts). Thread counts come from /proc (Linux).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

import { LIMITS } from '../../src/lib/limits.js'
import { repoRoot } from '../helpers/softhsm.js'

const run = promisify(execFile)

describe('libuv threadpool sizing', () => {
  let dir: string
  let script: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'threadpool-'))
    script = join(dir, 'entry.mjs')
    const lib = pathToFileURL(join(repoRoot(), 'dist', 'src', 'lib', 'threadpool.js')).href
    // An ESM entry like the agent's: report threads before and after forcing the pool to start.
    await writeFile(
      script,
      `import { readdirSync } from 'node:fs'
import { pbkdf2 } from 'node:crypto'
import { ensureThreadpoolSize, relaunchWithThreadpoolSize } from ${JSON.stringify(lib)}
const atStart = ensureThreadpoolSize()
if (!(await relaunchWithThreadpoolSize())) {
  await new Promise((r) => pbkdf2('a', 'b', 1, 8, 'sha256', r))
  const threads = readdirSync('/proc/self/task').length
  console.log(JSON.stringify({ pid: process.pid, atStart, env: process.env.UV_THREADPOOL_SIZE, threads }))
  process.exitCode = 7
}
`,
    )
  })

  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('an ESM entry without the variable is relaunched once with a pool of LIMITS.uvThreadpoolSize', async () => {
    const env = { ...process.env }
    delete env['UV_THREADPOOL_SIZE']
    const result = await run(process.execPath, [script], { env }).catch(
      (e: { code: number; stdout: string }) => e,
    )
    assert.equal(
      'code' in result ? result.code : 0,
      7,
      'the exit status of the relaunched child is passed on',
    )
    const lines = result.stdout.trim().split('\n')
    assert.equal(lines.length, 1, 'only the relaunched child did the work')
    const child = JSON.parse(lines[0] ?? '{}') as { atStart: boolean; env: string; threads: number }
    assert.equal(child.atStart, true)
    assert.equal(child.env, String(LIMITS.uvThreadpoolSize))
    assert.ok(child.threads >= LIMITS.uvThreadpoolSize, `${child.threads} threads`)
  })

  it('with the variable inherited, nothing is relaunched (and setting it late would not have helped)', async () => {
    const inherited = await run(process.execPath, [script], {
      env: { ...process.env, UV_THREADPOOL_SIZE: String(LIMITS.uvThreadpoolSize) },
    }).catch((e: { stdout: string }) => e)
    const child = JSON.parse(inherited.stdout.trim()) as { atStart: boolean; threads: number }
    assert.equal(child.atStart, true)
    // Control: an ESM process that only sets the variable itself keeps libuv's default pool of 4.
    const late = join(dir, 'late.mjs')
    await writeFile(
      late,
      `process.env.UV_THREADPOOL_SIZE = '${LIMITS.uvThreadpoolSize}'
const { readdirSync } = await import('node:fs')
const { pbkdf2 } = await import('node:crypto')
await new Promise((r) => pbkdf2('a', 'b', 1, 8, 'sha256', r))
console.log(readdirSync('/proc/self/task').length)
`,
    )
    const env = { ...process.env }
    delete env['UV_THREADPOOL_SIZE']
    const { stdout } = await run(process.execPath, [late], { env })
    const lateThreads = Number(stdout.trim())
    assert.ok(lateThreads < child.threads - 10, `late: ${lateThreads} threads, inherited: ${child.threads}`)
  })
})
