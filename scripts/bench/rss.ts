/**
 * Does the agent's memory stay flat under a long run? A real agent process answers N `sign`
 * requests (default 100,000) from C pipelined connections (each keeps P requests in flight), and
 * its resident set (VmRSS, /proc/PID/status) is read after 1,000 requests and at checkpoints up to
 * N. One token in every 1,000 is verified against the key's public point (verifying all would take
 * the load generator's CPU from the agent on a 2-core machine); every request must succeed.
 *
 * Usage: node dist/scripts/bench/rss.js [--requests N] [--clients C] [--pipeline P] [--json FILE]
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

import { AgentConnection } from '../../src/protocol/client.js'
import { AgentError } from '../../src/lib/errors.js'
import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { verifyToken } from '../../src/verify/verify.js'
import { startAgent } from '../../test/helpers/agent.js'
import { runPhase } from './common.js'

const INDEX = 'sparse+http://127.0.0.1:9/index/'

function rssMb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'))
  return Number(line?.replace(/\D+/g, '') ?? Number.NaN) / 1024
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      requests: { type: 'string' },
      clients: { type: 'string' },
      pipeline: { type: 'string' },
      json: { type: 'string' },
    },
    strict: true,
  })
  const total = Number(values.requests ?? 100_000)
  const clients = Number(values.clients ?? 32)
  const pipeline = Number(values.pipeline ?? 2)
  const checkpoints = [1_000, 10_000, 25_000, 50_000, 75_000, total].filter((n) => n <= total)

  const fixture = await startAgent({ registries: { bench: { index: INDEX, confirm: 'none' } } })
  try {
    const pid = fixture.process?.pid
    if (pid === undefined) throw new Error('agent not running')
    Object.assign(process.env, fixture.agentEnv)
    const device = new Device({ module: 'softhsm', label: fixture.softhsm.label }, {})
    await device.login(Pin.fromString(fixture.softhsm.pin))
    const publicKey = (await device.findKey({ label: 'gen' })).publicKey
    await device.release()

    const line = JSON.stringify({
      v: 1,
      registry: { 'index-url': INDEX, name: 'bench' },
      kind: 'get',
      operation: 'read',
    })
    const connections = await Promise.all(
      Array.from({ length: clients }, () => AgentConnection.connect(fixture.socket)),
    )
    const fresh = rssMb(pid)
    const samples: Array<{ requests: number; rssMb: number; seconds: number }> = []
    let issued = 0
    let done = 0
    let verified = 0
    const failures: Record<string, number> = {}
    const started = performance.now()
    const loop = async (connection: AgentConnection): Promise<void> => {
      while (issued < total) {
        issued += 1
        try {
          const result = await connection.request('sign', {
            cargo: line,
            requester: { pid: process.pid },
            interactive: false,
          })
          done += 1
          // Synchronously after the count moves, before any await lets another loop move it again.
          while (samples.length < checkpoints.length && done >= (checkpoints[samples.length] as number)) {
            samples.push({ requests: done, rssMb: rssMb(pid), seconds: (performance.now() - started) / 1000 })
          }
          if (done % 1_000 === 0) {
            await verifyToken(result.token, { publicKey, url: INDEX, operation: 'read', strictLowS: true })
            verified += 1
          }
        } catch (error) {
          const code = error instanceof AgentError ? error.code : String(error)
          failures[code] = (failures[code] ?? 0) + 1
        }
      }
    }
    await Promise.all(connections.flatMap((c) => Array.from({ length: pipeline }, () => loop(c))))
    for (const c of connections) c.close()
    const seconds = (performance.now() - started) / 1000
    const at = (n: number): number => samples.find((s) => s.requests >= n)?.rssMb ?? Number.NaN
    const summary = {
      requests: done,
      failures,
      verified,
      seconds,
      perSecond: done / seconds,
      freshRssMb: fresh,
      samples,
      rssLastVsFirst: at(checkpoints.at(-1) as number) / at(1_000),
    }
    process.stdout.write(
      `agent RSS over ${done} sign requests (${clients} connections × ${pipeline} in flight, ${summary.perSecond.toFixed(0)}/s, ${seconds.toFixed(0)} s): ` +
        `fresh ${fresh.toFixed(1)} MB, ${samples.map((s) => `${s.requests}: ${s.rssMb.toFixed(1)} MB`).join(', ')}; ` +
        `last ÷ 1k = ${summary.rssLastVsFirst.toFixed(2)}; ${verified} sampled tokens verified; failures ${JSON.stringify(failures)}\n`,
    )
    if (Object.keys(failures).length > 0) throw new Error(`requests failed: ${JSON.stringify(failures)}`)
    if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(summary, null, 2) + '\n')
  } finally {
    await fixture.stop()
  }
}

runPhase(main)
