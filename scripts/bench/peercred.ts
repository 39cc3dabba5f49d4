/**
 * What asking the kernel for a connection's peer costs, per accepted connection.
 *
 * One Unix connection to ourselves; interleaved rounds (shared, noisy machines: the ratio to a
 * known one-syscall Node call measured in the same run means more than a lone time):
 *   fstat    – fs.fstatSync(fd): one syscall through Node's own binding, the yardstick
 *   fd       – peerCredentialsOfFd(fd): getsockname + getsockopt(SO_PEERCRED) + the result object
 *   socket   – peerCredentials(socket): the same plus reading socket._handle.fd
 * The first call (dlopen of the addon) is timed on its own: the agent pays it once, the shim never.
 *
 * Usage: node dist/scripts/bench/peercred.js [--rounds N] [--per-round M] [--json FILE]
 */
import { fstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createConnection, createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

import { isDumpable, peerCredentials, peerCredentialsOfFd, socketFd } from '../../src/lib/peercred.js'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '20' },
    'per-round': { type: 'string', default: '20000' },
    json: { type: 'string' },
  },
})
const rounds = Number(values.rounds)
const perRound = Number(values['per-round'])

const firstStart = process.hrtime.bigint()
isDumpable()
const loadMs = Number(process.hrtime.bigint() - firstStart) / 1e6

const dir = mkdtempSync(join(tmpdir(), 'peercred-bench-'))
const path = join(dir, 'bench.sock')
const server = createServer()
await new Promise<void>((resolve) => server.listen(path, resolve))
const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve))
const client = createConnection({ path })
const socket = await accepted
const fd = socketFd(socket)

const variants = {
  fstat: () => fstatSync(fd),
  fd: () => peerCredentialsOfFd(fd),
  socket: () => peerCredentials(socket),
} as const
type Variant = keyof typeof variants
const samples: Record<Variant, number[]> = { fstat: [], fd: [], socket: [] }

for (let round = 0; round < rounds; round += 1) {
  for (const name of Object.keys(variants) as Variant[]) {
    const run = variants[name]
    const start = process.hrtime.bigint()
    for (let i = 0; i < perRound; i += 1) run()
    samples[name].push(Number(process.hrtime.bigint() - start) / perRound)
  }
}

function median(list: readonly number[]): number {
  const sorted = [...list].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

const results = Object.fromEntries(
  (Object.keys(samples) as Variant[]).map((name) => [name, median(samples[name].slice(1))]), // round 0 warms up
) as Record<Variant, number>
console.log(`first call (loads the addon): ${loadMs.toFixed(2)} ms`)
for (const name of Object.keys(results) as Variant[]) {
  const ns = results[name]
  console.log(
    `${name.padEnd(8)} median ${ns.toFixed(0).padStart(6)} ns/call = ${(ns / results.fstat).toFixed(2)}× fstat`,
  )
}
if (values.json !== undefined) {
  writeFileSync(values.json, JSON.stringify({ loadMs, nsPerCall: results, rounds, perRound }, null, 2) + '\n')
}

client.destroy()
socket.destroy()
server.close()
rmSync(dir, { recursive: true, force: true })
