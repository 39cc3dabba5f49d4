/**
 * How close to the device's own speed does a signature through each layer run?
 *
 * One SoftHSM token, one key, five ways to get a signature, measured side by side in interleaved
 * rounds (these machines are shared and noisy: a lone absolute time means little, a ratio measured
 * in the same run does):
 *   device  – C_SignInit + C_SignAsync on a 48-byte digest through the binding: the hardware's own speed
 *   required – the work every signature must do, inline and nothing else: host SHA-384 of a PAE-sized
 *             message, C_SignInit + C_SignAsync, low-S normalisation, one verify with the public key
 *   fsync   – what the audit line's durability costs alone: one ~700-byte append + fdatasync beside the
 *             agent's audit log (same filesystem)
 *   signer  – Pkcs11Signer.sign: host SHA-384, device sign, DER/low-S normalisation, self-verify
 *   token   – buildToken over that signer: claims, footer, PAE, PASERK id, framing
 *   agent   – one `sign` request over the agent's Unix socket (a real agent process): config lookup,
 *             policy, audit fsync, token, response
 *   shim    – one cargo-credential-pkcs11 process per request, as cargo runs it (process start included)
 * The `spawn` row (`node -e 0` started the same way) separates Node's own start cost from the shim's.
 *
 * Usage: node dist/scripts/bench/sign.js [--rounds N] [--per-round M] [--json FILE]
 */
import { spawn } from 'node:child_process'
import { closeSync, fdatasyncSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import { createHash } from 'node:crypto'

import { AgentConnection } from '../../src/protocol/client.js'
import { Device } from '../../src/pkcs11/device.js'
import { resolveModulePath } from '../../src/pkcs11/modules.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'
import { Pkcs11Module } from '../../src/pkcs11/binding.js'
import { buildToken } from '../../src/token/build.js'
import { normalizeSignature, verifySignature } from '../../src/keys/signature.js'
import { startAgent } from '../../test/helpers/agent.js'
import { median, runPhase } from './common.js'

type Variant = 'device' | 'required' | 'fsync' | 'signer' | 'token' | 'agent' | 'shim' | 'spawn'

const INDEX = 'sparse+http://127.0.0.1:9/index/'

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number
}

function runProcess(
  command: string,
  args: readonly string[],
  input: string,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['pipe', 'pipe', 'ignore'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()))
    child.on('error', reject)
    child.on('exit', (code) => {
      if (code === 0 && (input === '' || out.includes('"Ok"'))) resolve()
      else reject(new Error(`${command} exited ${String(code)}: ${out.slice(0, 300)}`))
    })
    child.stdin.end(input)
  })
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string' }, 'per-round': { type: 'string' }, json: { type: 'string' } },
    strict: true,
  })
  const rounds = Number(values.rounds ?? 15)
  const perRoundCount = Number(values['per-round'] ?? 10)

  // BENCH_AGENT_NODE_ARGS: Node flags for the agent process, as in load.ts (e.g. --cpu-prof).
  const nodeArgs = (process.env['BENCH_AGENT_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '')
  const fixture = await startAgent({ registries: { bench: { index: INDEX, confirm: 'none' } }, nodeArgs })
  try {
    // The benchmark process loads the same SoftHSM store as the agent (both sign with key 'gen').
    Object.assign(process.env, fixture.agentEnv)
    const device = new Device({ module: 'softhsm', label: fixture.softhsm.label }, {})
    const { Pin } = await import('../../src/lib/secret.js')
    await device.login(Pin.fromString(fixture.softhsm.pin))
    const signer = await pkcs11Signer(device, { label: 'gen' })
    const key = await device.findKey({ label: 'gen' })

    // The raw path: one session, the private key handle, CKM_ECDSA on a precomputed digest.
    const module = Pkcs11Module.load(resolveModulePath('softhsm'))
    const slot = module.slotsWithToken().find((s) => module.tokenInfo(s).label === fixture.softhsm.label)
    if (slot === undefined) throw new Error('benchmark token not found')
    const session = module.openSession(slot, false)
    const [privateKey] = module.findKeys(session, { cls: 'private', label: 'gen' }, 'bench')
    if (privateKey === undefined) throw new Error('benchmark key not found')
    const digest = createHash('sha384').update('cargo-pkcs11-agent benchmark').digest()
    const message = new TextEncoder().encode('x'.repeat(250)) // about a PAE's size

    const request = (operation: string): string =>
      JSON.stringify({ v: 1, registry: { 'index-url': INDEX, name: 'bench' }, kind: 'get', operation })
    const connection = await AgentConnection.connect(fixture.socket)
    mkdirSync(dirname(fixture.auditLog), { recursive: true })
    const auditFd = openSync(join(dirname(fixture.auditLog), 'bench-fsync.log'), 'a')
    const auditLine = 'x'.repeat(700) + '\n'
    const shimEnv = { ...process.env, ...fixture.env }

    // The synchronous Cryptoki calls a request makes on the event loop, timed alone.
    const signInitMs: number[] = []
    const tokenInfoMs: number[] = []
    for (let i = 0; i < 200; i += 1) {
      const t0 = performance.now()
      module.tokenInfo(slot)
      tokenInfoMs.push(performance.now() - t0)
    }
    const run: Record<Variant, () => Promise<unknown>> = {
      device: async () => {
        const t0 = performance.now()
        module.signInit(session, privateKey, 'bench')
        signInitMs.push(performance.now() - t0)
        return module.signAsync(session, digest, 'bench')
      },
      required: async () => {
        const hashed = createHash('sha384').update(message).digest()
        module.signInit(session, privateKey, 'bench')
        const signature = normalizeSignature(await module.signAsync(session, hashed, 'bench'))
        if (!verifySignature(signer.publicKey, message, signature)) throw new Error('did not verify')
      },
      fsync: async () => {
        writeSync(auditFd, auditLine)
        fdatasyncSync(auditFd)
      },
      signer: () => signer.sign(message),
      token: () => buildToken(signer, { indexUrl: INDEX, operation: 'read' }),
      agent: () =>
        connection.request('sign', {
          cargo: request('read'),
          requester: { pid: process.pid },
          interactive: false,
        }),
      shim: () =>
        runProcess(process.execPath, [fixture.shimPath, '--cargo-plugin'], request('read') + '\n', shimEnv),
      spawn: () => runProcess(process.execPath, ['-e', '0'], '', shimEnv),
    }
    const variants = Object.keys(run) as Variant[]
    const samples: Record<Variant, number[]> = {
      device: [],
      required: [],
      fsync: [],
      signer: [],
      token: [],
      agent: [],
      shim: [],
      spawn: [],
    }

    for (const variant of variants) await run[variant]() // warm-up: JIT, sessions, login
    // Per round, each variant's median: the spread of a ratio is its range over the rounds.
    const roundMedians: Record<Variant, number[]> = Object.fromEntries(variants.map((v) => [v, []])) as never
    for (let round = 0; round < rounds; round += 1) {
      for (const variant of variants) {
        const count =
          variant === 'shim' || variant === 'spawn'
            ? Math.max(1, Math.floor(perRoundCount / 2))
            : perRoundCount
        const mine: number[] = []
        for (let i = 0; i < count; i += 1) {
          const start = process.hrtime.bigint()
          await run[variant]()
          mine.push(Number(process.hrtime.bigint() - start) / 1e6)
        }
        samples[variant].push(...mine)
        roundMedians[variant].push(median(mine))
      }
    }
    const perRound = (a: Variant, b: Variant): number[] =>
      roundMedians[a].map((v, i) => Number((v / (roundMedians[b][i] as number)).toFixed(3)))
    const ratioRounds = {
      agentVsRequired: perRound('agent', 'required'),
      agentVsDevice: perRound('agent', 'device'),
      shimVsNode: perRound('shim', 'spawn'),
    }
    connection.close()
    closeSync(auditFd)
    module.closeSession(session)

    const base = median(samples.device)
    const rows = variants.map((variant) => ({
      variant,
      n: samples[variant].length,
      medianMs: Number(median(samples[variant]).toFixed(3)),
      p90Ms: Number(percentile(samples[variant], 90).toFixed(3)),
      ratioToDevice: Number((median(samples[variant]) / base).toFixed(2)),
    }))
    const spawnMedian = median(samples.spawn)
    const shimOverNode = median(samples.shim) / spawnMedian
    process.stdout.write(`signature latency per layer (SoftHSM, P-384; ${rounds} interleaved rounds)\n`)
    process.stdout.write('variant   n     median ms   p90 ms    × device\n')
    for (const r of rows) {
      process.stdout.write(
        `${r.variant.padEnd(8)}  ${String(r.n).padEnd(5)} ${r.medianMs.toFixed(3).padStart(9)}  ${r.p90Ms.toFixed(3).padStart(8)}  ${r.ratioToDevice.toFixed(2).padStart(8)}\n`,
      )
    }
    process.stdout.write(
      `synchronous calls on the event loop: C_SignInit ${(median(signInitMs) * 1000).toFixed(0)} µs, C_GetTokenInfo ${(median(tokenInfoMs) * 1000).toFixed(0)} µs\n`,
    )
    process.stdout.write(
      `shim request (start + agent round trip) / bare node start: ${shimOverNode.toFixed(2)}×\n`,
    )
    process.stdout.write(
      `key ${key.label}: agent overhead over the device = ${(median(samples.agent) - base).toFixed(3)} ms per signature\n`,
    )
    if (values.json !== undefined)
      writeFileSync(
        values.json,
        JSON.stringify(
          {
            rows,
            shimOverNode,
            ratioRounds,
            syncCallsMs: { signInit: median(signInitMs), tokenInfo: median(tokenInfoMs) },
          },
          null,
          2,
        ) + '\n',
      )
    await device.release()
  } finally {
    await fixture.stop()
  }
}

runPhase(main)
