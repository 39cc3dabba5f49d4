/**
 * Throughput under concurrency, each layer side by side in interleaved phases of one run (these
 * machines are shared and noisy: only ratios measured in the same run mean anything).
 *
 *   device  – S sessions (S = LIMITS.sessionsPerToken), each looping C_SignInit + C_SignAsync on a
 *             48-byte digest: the most the token gives this process
 *   signer  – S concurrent callers of pkcs11Signer(device, key).sign(): the session pool, host SHA-384,
 *             low-S normalisation and the public-key self-verify, no agent
 *   agent   – C clients, one socket connection each, looping `sign` requests against a real agent
 *             process (config lookup, policy, login check, audit fsync, token, framing)
 *
 * Reports signatures/s, the ratios agent ÷ device and agent ÷ signer, p50/p99 latency and refusals
 * by error code. Run it with UV_THREADPOOL_SIZE=LIMITS.uvThreadpoolSize (scripts/bench.sh does), so
 * the device phase is not capped by libuv's default 4 threads.
 *
 * BENCH_AGENT_NODE_ARGS (space-separated) are Node flags for the agent process, e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it under this load (NODE_OPTIONS refuses --cpu-prof).
 *
 * --sweep 1,4,16,64 then measures device and agent once more at each concurrency (the device with
 * min(N, S) sessions), for the throughput / p99 chart (scripts/bench/report.ts).
 *
 * Usage: node dist/scripts/bench/load.js [--clients C] [--seconds T] [--rounds R] [--sweep LIST] [--json FILE]
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { parseArgs } from 'node:util'

import { AgentConnection } from '../../src/protocol/client.js'
import { AgentError } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'
import { Pin } from '../../src/lib/secret.js'
import { Pkcs11Module, type Handle } from '../../src/pkcs11/binding.js'
import { Device } from '../../src/pkcs11/device.js'
import { resolveModulePath } from '../../src/pkcs11/modules.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { verifySignature } from '../../src/keys/signature.js'
import { startAgent } from '../../test/helpers/agent.js'
import { median, runPhase } from './common.js'

type Phase = 'device' | 'signer' | 'agent'

const INDEX = 'sparse+http://127.0.0.1:9/index/'

interface PhaseResult {
  ok: number
  latencies: number[]
  errors: Record<string, number>
  seconds: number
  /** CPU this (load-generating) process used meanwhile, in cores: what it took from the agent. */
  generatorCores: number
  /** CPU per completed operation, ms: this process (device/signer phases) or the agent (agent phase). */
  cpuMsPerOp: number
  /** Agent phase: the agent's main-thread (event loop) CPU per request, ms. */
  mainCpuMsPerOp?: number
}

/** CPU seconds used so far by a process (all threads) and by its main thread (tid = pid), from /proc. */
function processCpu(pid: number): { all: number; main: number } {
  const ticks = (path: string): number => {
    const fields = readFileSync(path, 'utf8').split(') ')[1]?.split(' ') ?? []
    // utime and stime are fields 14 and 15 of /proc/PID/stat (proc(5)), 12 and 13 after the comm.
    return (Number(fields[11]) + Number(fields[12])) / 100
  }
  return { all: ticks(`/proc/${pid}/stat`), main: ticks(`/proc/${pid}/task/${pid}/stat`) }
}

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number
}

/** `workers` loops calling `once` until `seconds` have passed. */
async function closedLoop(
  workers: number,
  seconds: number,
  once: (worker: number) => Promise<unknown>,
  agentPid?: number,
): Promise<PhaseResult> {
  const result: PhaseResult = { ok: 0, latencies: [], errors: {}, seconds, generatorCores: 0, cpuMsPerOp: 0 }
  const started = performance.now()
  const cpu = process.cpuUsage()
  const agentCpu = agentPid === undefined ? undefined : processCpu(agentPid)
  const deadline = started + seconds * 1000
  await Promise.all(
    Array.from({ length: workers }, async (_, worker) => {
      while (performance.now() < deadline) {
        const t0 = performance.now()
        try {
          await once(worker)
          result.ok += 1
          result.latencies.push(performance.now() - t0)
        } catch (error) {
          const code = error instanceof AgentError ? error.code : String(error)
          result.errors[code] = (result.errors[code] ?? 0) + 1
          // A refused caller waits a little, as a retrying client would, instead of spinning.
          await new Promise((resolve) => setTimeout(resolve, 5))
        }
      }
    }),
  )
  result.seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  result.generatorCores = (used.user + used.system) / 1e6 / result.seconds
  if (agentPid === undefined || agentCpu === undefined) {
    result.cpuMsPerOp = (used.user + used.system) / 1e3 / result.ok
  } else {
    const now = processCpu(agentPid)
    result.cpuMsPerOp = ((now.all - agentCpu.all) * 1e3) / result.ok
    result.mainCpuMsPerOp = ((now.main - agentCpu.main) * 1e3) / result.ok
  }
  return result
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      clients: { type: 'string' },
      seconds: { type: 'string' },
      rounds: { type: 'string' },
      sweep: { type: 'string' },
      json: { type: 'string' },
    },
    strict: true,
  })
  const clients = Number(values.clients ?? 64)
  const seconds = Number(values.seconds ?? 4)
  const rounds = Number(values.rounds ?? 3)
  const agentNodeArgs = (process.env['BENCH_AGENT_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '')

  const fixture = await startAgent({
    registries: { bench: { index: INDEX, confirm: 'none' } },
    nodeArgs: agentNodeArgs,
  })
  try {
    Object.assign(process.env, fixture.agentEnv)
    delete process.env['NODE_OPTIONS']
    const pin = Pin.fromString(fixture.softhsm.pin)
    const device = new Device({ module: 'softhsm', label: fixture.softhsm.label }, { cachedPin: () => pin })
    await device.login(pin)
    const signer = await pkcs11Signer(device, { label: 'gen' })

    const module = Pkcs11Module.load(resolveModulePath('softhsm'))
    const slot = module.slotsWithToken().find((s) => module.tokenInfo(s).label === fixture.softhsm.label)
    if (slot === undefined) throw new Error('benchmark token not found')
    const sessions = Array.from({ length: LIMITS.sessionsPerToken }, () => module.openSession(slot, false))
    const [privateKey] = module.findKeys(sessions[0] as Handle, { cls: 'private', label: 'gen' }, 'bench')
    if (privateKey === undefined) throw new Error('benchmark key not found')
    const digest = createHash('sha384').update('cargo-pkcs11-agent benchmark').digest()
    const message = new TextEncoder().encode('x'.repeat(250))

    const line = JSON.stringify({
      v: 1,
      registry: { 'index-url': INDEX, name: 'bench' },
      kind: 'get',
      operation: 'read',
    })
    const sweep = (values.sweep ?? '')
      .split(',')
      .filter((v) => v !== '')
      .map(Number)
    const agentPid = fixture.process?.pid
    // Fresh connections for every agent phase, outside its timing: the agent closes a connection
    // idle for LIMITS.connectionIdleTimeoutMs, which the other phases and sweep steps would exceed.
    const agentLoop = async (workers: number, seconds: number): Promise<PhaseResult> => {
      const connections = await Promise.all(
        Array.from({ length: workers }, () => AgentConnection.connect(fixture.socket)),
      )
      try {
        return await closedLoop(
          workers,
          seconds,
          (worker) =>
            (connections[worker] as AgentConnection).request('sign', {
              cargo: line,
              requester: { pid: process.pid },
              interactive: false,
            }),
          agentPid,
        )
      } finally {
        for (const c of connections) c.close()
      }
    }
    const deviceLoop = (workers: number, seconds: number): Promise<PhaseResult> =>
      closedLoop(workers, seconds, async (worker) => {
        const session = sessions[worker] as Handle
        module.signInit(session, privateKey, 'bench')
        return module.signAsync(session, digest, 'bench')
      })

    const run: Record<Phase, (seconds: number) => Promise<PhaseResult>> = {
      device: (seconds) => deviceLoop(sessions.length, seconds),
      signer: (seconds) => closedLoop(sessions.length, seconds, () => signer.sign(message)),
      agent: (seconds) => agentLoop(clients, seconds),
    }
    const phases = Object.keys(run) as Phase[]
    for (const phase of phases) await run[phase](0.5) // warm-up: JIT, sessions, login
    const all: Record<Phase, PhaseResult[]> = { device: [], signer: [], agent: [] }
    for (let round = 0; round < rounds; round += 1) {
      for (const phase of phases) all[phase].push(await run[phase](seconds))
    }
    // What one self-verify costs alone (this process, one thread): the agent's extra work per request.
    const sample = await signer.sign(message)
    const verifyCpu = process.cpuUsage()
    const verifyCount = 400
    for (let i = 0; i < verifyCount; i += 1) verifySignature(signer.publicKey, message, sample)
    const verifyUsed = process.cpuUsage(verifyCpu)
    const verifyCpuMs = (verifyUsed.user + verifyUsed.system) / 1e3 / verifyCount
    const sweepRows: Array<{
      clients: number
      phase: 'device' | 'agent'
      perSecond: number
      p99Ms: number
      errors: Record<string, number>
    }> = []
    for (const n of sweep) {
      for (const phase of ['device', 'agent'] as const) {
        const r =
          phase === 'device'
            ? await deviceLoop(Math.min(n, sessions.length), seconds / 2)
            : await agentLoop(n, seconds / 2)
        sweepRows.push({
          clients: n,
          phase,
          perSecond: r.ok / r.seconds,
          p99Ms: percentile(r.latencies, 99),
          errors: r.errors,
        })
      }
    }
    for (const s of sessions) module.closeSession(s)
    const sweepErrors = sweepRows.filter((r) => Object.keys(r.errors).length > 0)
    if (sweepErrors.length > 0)
      throw new Error(`requests failed in the sweep: ${JSON.stringify(sweepErrors)}`)

    const rows = phases.map((phase) => {
      const results = all[phase]
      const ok = results.reduce((n, r) => n + r.ok, 0)
      const time = results.reduce((n, r) => n + r.seconds, 0)
      const latencies = results.flatMap((r) => r.latencies)
      const errors: Record<string, number> = {}
      for (const r of results) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v
      const refused = Object.values(errors).reduce((n, v) => n + v, 0)
      return {
        phase,
        workers: phase === 'agent' ? clients : sessions.length,
        perSecond: ok / time,
        perRound: results.map((r) => Math.round(r.ok / r.seconds)),
        p50Ms: percentile(latencies, 50),
        p99Ms: percentile(latencies, 99),
        errors,
        refusedShare: refused / (ok + refused),
        generatorCores: results.reduce((n, r) => n + r.generatorCores, 0) / results.length,
        cpuMsPerOp: median(results.map((r) => r.cpuMsPerOp)),
        mainCpuMsPerOp:
          phase === 'agent' ? median(results.map((r) => r.mainCpuMsPerOp ?? Number.NaN)) : undefined,
      }
    })
    const by = (p: Phase) => rows.find((r) => r.phase === p) as (typeof rows)[number]
    process.stdout.write(`throughput, ${rounds} interleaved rounds of ${seconds} s (SoftHSM, P-384)\n`)
    process.stdout.write('phase    workers  sig/s (per round)            p50 ms   p99 ms  refused\n')
    for (const r of rows) {
      process.stdout.write(
        `${r.phase.padEnd(8)} ${String(r.workers).padStart(7)}  ${r.perSecond.toFixed(0).padStart(5)} (${r.perRound.join(', ')})`.padEnd(
          46,
        ) +
          `${r.p50Ms.toFixed(1).padStart(7)}  ${r.p99Ms.toFixed(1).padStart(7)}  ${(r.refusedShare * 100).toFixed(2)} % ${JSON.stringify(r.errors)}\n`,
      )
    }
    const ratios = {
      agentOverDevice: by('agent').perSecond / by('device').perSecond,
      agentOverSigner: by('agent').perSecond / by('signer').perSecond,
      signerOverDevice: by('signer').perSecond / by('device').perSecond,
    }
    process.stdout.write(
      `agent ÷ device ${ratios.agentOverDevice.toFixed(2)}   agent ÷ signer ${ratios.agentOverSigner.toFixed(2)}   signer ÷ device ${ratios.signerOverDevice.toFixed(2)}\n` +
        `load generator CPU during the agent phase: ${by('agent').generatorCores.toFixed(2)} of this machine's cores\n`,
    )
    // The ceiling on 2 cores: every agent request needs at least the raw sign's CPU plus one verify.
    const cores = availableParallelism()
    const deviceCpu = by('device').cpuMsPerOp
    const ceiling = {
      cores,
      deviceCpuMsPerSign: deviceCpu,
      verifyCpuMsPerOp: verifyCpuMs,
      agentCpuMsPerRequest: by('agent').cpuMsPerOp,
      agentMainThreadCpuMsPerRequest: by('agent').mainCpuMsPerOp,
      /** CPU-bound on every core, raw signs at cores ÷ sign CPU; a request that must also verify can at
       * best run at cores ÷ (sign + verify CPU): the ceiling of agent ÷ raw whatever else is done. */
      throughputCeilingVsRaw: deviceCpu / (deviceCpu + verifyCpuMs),
      /** What the agent's own measured CPU per request allows: raw sign CPU ÷ agent CPU per request. */
      agentCpuBoundVsRaw: deviceCpu / by('agent').cpuMsPerOp,
    }
    process.stdout.write(
      `CPU per op: raw sign ${deviceCpu.toFixed(2)} ms, one verify ${verifyCpuMs.toFixed(2)} ms, agent request ${ceiling.agentCpuMsPerRequest.toFixed(2)} ms ` +
        `(main thread ${(ceiling.agentMainThreadCpuMsPerRequest ?? Number.NaN).toFixed(2)} ms); ` +
        `ceiling (sign + verify) ${ceiling.throughputCeilingVsRaw.toFixed(2)} × raw, the agent's CPU allows ${ceiling.agentCpuBoundVsRaw.toFixed(2)} × raw\n`,
    )
    if (values.json !== undefined)
      writeFileSync(values.json, JSON.stringify({ rows, ratios, ceiling, sweep: sweepRows }, null, 2) + '\n')
    await device.release()
  } finally {
    await fixture.stop()
  }
}

runPhase(main)
