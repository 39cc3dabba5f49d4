/**
 * The agent on real PKCS#11 stacks other than SoftHSM, each against its own module's raw signing:
 *   tpm     – tpm2-pkcs11 on swtpm (test/helpers/swtpm.ts), PIN from the environment
 *   yubikey – ykcs11 on the virtual PIV card behind a private pcscd (test/helpers/virtual-yubikey.ts),
 *             slot 9A (PIN once, no touch)
 * raw = C_SignInit + C_SignAsync on a 48-byte digest, in a child process that loads the module, logs
 * in and exits (tpm2-pkcs11 holds swtpm's one TCP connection while loaded, so the raw process and the
 * agent take turns); agent = one `sign` request over the socket of an agent started for that round.
 * Rounds alternate raw and agent; medians and the ratio agent ÷ raw per device. A device whose
 * software is not installed is reported as skipped.
 *
 * Usage: node dist/scripts/bench/devices.js [--rounds R] [--per-round M] [--json FILE]
 *        (internal) node dist/scripts/bench/devices.js --raw-child, with BENCH_RAW={...}
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs, promisify } from 'node:util'

import { AgentConnection } from '../../src/protocol/client.js'
import { Pin } from '../../src/lib/secret.js'
import { Pkcs11Module } from '../../src/pkcs11/binding.js'
import { startAgent, type TokenFixture } from '../../test/helpers/agent.js'
import { startSoftwareTpm, TPM2_MODULE } from '../../test/helpers/swtpm.js'
import { startVirtualYubiKey, YKCS11_MODULE } from '../../test/helpers/virtual-yubikey.js'
import { median, runPhase } from './common.js'

const run = promisify(execFile)
const INDEX = 'sparse+http://127.0.0.1:9/index/'

interface RawInput {
  module: string
  label?: string
  serial?: string
  pin: string
  keyId: string
  count: number
}

/** The raw path in this (child) process: one session, one login, `count` timed signatures. */
async function rawChild(input: RawInput): Promise<number[]> {
  const mod = Pkcs11Module.load(input.module)
  const slot = mod.slotsWithToken().find((s) => {
    const info = mod.tokenInfo(s)
    return (
      (input.label === undefined || info.label === input.label) &&
      (input.serial === undefined || info.serial === input.serial)
    )
  })
  if (slot === undefined) throw new Error('token not found')
  const session = mod.openSession(slot, false)
  mod.login(session, Pin.fromString(input.pin), false, 'bench')
  const [key] = mod.findKeys(session, { cls: 'private', id: Buffer.from(input.keyId, 'hex') }, 'bench')
  if (key === undefined) throw new Error('key not found')
  const digest = createHash('sha384').update('cargo-pkcs11-agent benchmark').digest()
  const once = async (): Promise<void> => {
    mod.signInit(session, key, 'bench')
    await mod.signAsync(session, digest, 'bench')
  }
  await once()
  const times: number[] = []
  for (let i = 0; i < input.count; i += 1) {
    const t0 = performance.now()
    await once()
    times.push(performance.now() - t0)
  }
  if (process.env['BENCH_TOKEN_INFO'] === '1') {
    const t0 = performance.now()
    for (let i = 0; i < input.count; i += 1) mod.tokenInfo(slot)
    process.stderr.write(`C_GetTokenInfo ${((performance.now() - t0) / input.count).toFixed(3)} ms\n`)
    const t1 = performance.now()
    for (let i = 0; i < input.count; i += 1) mod.sessionLoggedIn(session)
    process.stderr.write(`C_GetSessionInfo ${((performance.now() - t1) / input.count).toFixed(3)} ms\n`)
  }
  mod.closeSession(session)
  return times
}

interface Rig {
  name: 'tpm' | 'yubikey'
  env: Record<string, string>
  token: TokenFixture
  raw: Omit<RawInput, 'count'>
  stop: () => Promise<void>
}

async function tpmRig(): Promise<Rig | undefined> {
  if (!existsSync(TPM2_MODULE) || !existsSync('/usr/bin/swtpm')) return undefined
  const pin = '24681357'
  const tpm = await startSoftwareTpm({
    label: 'bench-tpm',
    pin,
    soPin: '86420864',
    key: { label: 'cargo', id: '01' },
  })
  return {
    name: 'tpm',
    env: { ...tpm.env },
    token: { module: tpm.module, label: 'bench-tpm', kind: 'tpm', pinSource: 'env' },
    raw: { module: tpm.module, label: 'bench-tpm', pin, keyId: '01' },
    stop: () => tpm.stop(),
  }
}

async function yubikeyRig(): Promise<Rig | undefined> {
  if (!existsSync(YKCS11_MODULE)) return undefined
  const pin = '123456'
  const serial = 31415926
  const yk = await startVirtualYubiKey({
    pin,
    serial,
    keys: { '9a': { pinPolicy: 'once', touchPolicy: 'never' }, '9c': false },
  })
  await yk.waitForToken()
  return {
    name: 'yubikey',
    env: { ...yk.env },
    token: { module: yk.module, serial: String(serial), kind: 'yubikey', pinSource: 'env' },
    raw: { module: yk.module, serial: String(serial), pin, keyId: '01' },
    stop: () => yk.stop(),
  }
}

async function measure(rig: Rig, rounds: number, perRound: number) {
  const raw: number[] = []
  const agent: number[] = []
  const self = fileURLToPath(import.meta.url)
  const line = JSON.stringify({
    v: 1,
    registry: { 'index-url': INDEX, name: 'bench' },
    kind: 'get',
    operation: 'read',
  })
  for (let round = 0; round < rounds; round += 1) {
    const { stdout } = await run(process.execPath, [self, '--raw-child'], {
      env: { ...process.env, ...rig.env, BENCH_RAW: JSON.stringify({ ...rig.raw, count: perRound }) },
      timeout: 120_000,
    })
    raw.push(...(JSON.parse(stdout) as number[]))
    const fixture = await startAgent({
      tokens: { dev: rig.token },
      registries: { bench: { index: INDEX, confirm: 'none', readKey: { token: 'dev', id: '01' } } },
      env: { ...rig.env, CARGO_PKCS11_TEST_PIN: rig.raw.pin, CI: 'true' },
    })
    try {
      const connection = await AgentConnection.connect(fixture.socket)
      const sign = () =>
        connection.request('sign', { cargo: line, requester: { pid: process.pid }, interactive: false })
      await sign() // session, login, key lookup
      for (let i = 0; i < perRound; i += 1) {
        const t0 = performance.now()
        await sign()
        agent.push(performance.now() - t0)
      }
      connection.close()
    } finally {
      await fixture.stop()
    }
  }
  return {
    rawMs: median(raw),
    agentMs: median(agent),
    ratio: median(agent) / median(raw),
    rawSpreadMs: [Math.min(...raw), Math.max(...raw)],
    agentSpreadMs: [Math.min(...agent), Math.max(...agent)],
    n: raw.length,
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string' },
      'per-round': { type: 'string' },
      json: { type: 'string' },
      'raw-child': { type: 'boolean' },
    },
    strict: true,
  })
  if (values['raw-child'] === true) {
    process.stdout.write(
      JSON.stringify(await rawChild(JSON.parse(process.env['BENCH_RAW'] ?? '{}') as RawInput)),
    )
    return
  }
  const rounds = Number(values.rounds ?? 3)
  const perRound = Number(values['per-round'] ?? 10)
  const results: Record<string, unknown> = {}
  for (const start of [tpmRig, yubikeyRig]) {
    let rig: Rig | undefined
    try {
      rig = await start()
      if (rig === undefined) {
        results[start === tpmRig ? 'tpm' : 'yubikey'] = { skipped: 'not installed' }
        continue
      }
      const r = await measure(rig, rounds, perRound)
      results[rig.name] = r
      process.stdout.write(
        `${rig.name.padEnd(8)} raw ${r.rawMs.toFixed(2)} ms (${r.rawSpreadMs.map((v) => v.toFixed(1)).join('–')}), agent ${r.agentMs.toFixed(2)} ms (${r.agentSpreadMs.map((v) => v.toFixed(1)).join('–')}), agent ÷ raw ${r.ratio.toFixed(2)}× (n=${r.n} each)\n`,
      )
    } finally {
      await rig?.stop()
    }
  }
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(results, null, 2) + '\n')
}

runPhase(main)
