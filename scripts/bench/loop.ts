/**
 * Event-loop delay while 8 signs wait on 2 s touches (the fault-injecting module in
 * test/fixtures/faulty-pkcs11 delays C_Sign like a YubiKey waiting for its touch) and another client
 * keeps signing on a second token: test/helpers/pkcs11-touch-load.ts, in its own process with the
 * agent's libuv pool size, sampled at 1 ms. Reports the p99 less that resolution, and the max.
 *
 * Usage: node dist/scripts/bench/loop.js [--rounds R] [--json FILE]
 */
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'

import { LIMITS } from '../../src/lib/limits.js'
import {
  createSoftHsmStore,
  createSoftHsmToken,
  repoRoot,
  SOFTHSM_MODULE,
} from '../../test/helpers/softhsm.js'
import { runPhase } from './common.js'

const run = promisify(execFile)

interface LoadResult {
  maxLoopDelayMs: number
  loopP99Ms: number
  otherSigns: number
  allVerified: boolean
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string' }, json: { type: 'string' } },
    strict: true,
  })
  const rounds = Number(values.rounds ?? 3)
  const faultyDir = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11')
  await run('make', ['-s', '-C', faultyDir])
  const store = await createSoftHsmStore()
  try {
    await createSoftHsmToken({ store, label: 'touch' })
    await createSoftHsmToken({ store, label: 'other' })
    const control = join(store.dir, 'control')
    writeFileSync(control, '')
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      SOFTHSM2_CONF: store.confPath,
      FAULTY_PKCS11_CONTROL: control,
      FAULTY_PKCS11_COUNTS: join(store.dir, 'counts'),
      FAULTY_PKCS11_TARGET: SOFTHSM_MODULE,
      UV_THREADPOOL_SIZE: String(LIMITS.uvThreadpoolSize),
      LOAD_INPUT: JSON.stringify({
        faultyModule: join(faultyDir, 'libfaulty-pkcs11.so'),
        softhsmModule: SOFTHSM_MODULE,
        control,
        touchLabel: 'touch',
        otherLabel: 'other',
        pin: '123456',
        delayMs: 2000,
      }),
    }
    const script = join(repoRoot(), 'dist', 'test', 'helpers', 'pkcs11-touch-load.js')
    const results: LoadResult[] = []
    for (let i = 0; i < rounds; i += 1) {
      const { stdout } = await run(process.execPath, [script], { env, timeout: 60_000 })
      const result = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as LoadResult
      if (!result.allVerified) throw new Error('a signature under load did not verify')
      results.push(result)
    }
    const p99s = results.map((r) => r.loopP99Ms).sort((a, b) => a - b)
    const summary = {
      loopP99Ms: p99s[Math.floor(p99s.length / 2)] as number,
      loopP99MsPerRound: results.map((r) => Number(r.loopP99Ms.toFixed(2))),
      loopMaxMsPerRound: results.map((r) => Number(r.maxLoopDelayMs.toFixed(2))),
      otherSignsPerRound: results.map((r) => r.otherSigns),
    }
    process.stdout.write(
      `event loop while 8 signs wait 2 s for touches and another client signs (${rounds} rounds, 1 ms resolution)\n` +
        `p99 − resolution: median ${summary.loopP99Ms.toFixed(2)} ms (${summary.loopP99MsPerRound.join(', ')}); ` +
        `max ${summary.loopMaxMsPerRound.join(', ')} ms; other signs meanwhile ${summary.otherSignsPerRound.join(', ')}\n`,
    )
    if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(summary, null, 2) + '\n')
  } finally {
    await store.cleanup()
  }
}

runPhase(main)
