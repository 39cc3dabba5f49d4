/**
 * What does the agent cost a real `cargo publish`? The same crate is published (each time a new
 * version) to two instances of the local registry fixture (test/fixtures/registry/server.ts):
 *   agent – RFC 3231 mode, cargo's credential provider is our shim, the agent signs on SoftHSM
 *           (a read token for the index and a publish token: two shim processes, two signatures)
 *   token – bearer mode, `credential-provider = "cargo:token"` with a static token in the environment
 * in interleaved rounds, twice: as `cargo publish` runs by default (it builds the packaged crate
 * first) and with `--no-verify` (no build: the credential path is as large a share of the wall time
 * as it gets). Reports the median wall time of each and their ratio.
 *
 * Usage: node dist/scripts/bench/publish.js [--rounds N] [--json FILE]
 */
import { readFileSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

import { k3Public } from '../../src/keys/paserk.js'
import { Pin } from '../../src/lib/secret.js'
import { Device } from '../../src/pkcs11/device.js'
import { startAgent } from '../../test/helpers/agent.js'
import { startRegistry } from '../../test/fixtures/registry/server.js'
import { createCargoSandbox, cargoThroughAgent, show } from '../../test/e2e/lib/cargo.js'
import { median, runPhase } from './common.js'

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string' }, json: { type: 'string' } },
    strict: true,
  })
  const rounds = Number(values.rounds ?? 6)
  const dir = mkdtempSync(join(tmpdir(), 'hwtok-bench-publish-'))
  const staticToken = 'bench-static-token-0123456789abcdef'
  const stops: Array<() => Promise<void>> = []
  try {
    // The agent's key is generated on its SoftHSM token: its public point is registered.
    const asym = await startRegistry({ stateDir: join(dir, 'asym'), maxAgeSeconds: 120, strictLowS: true })
    stops.push(() => asym.stop())
    const agent = await startAgent({
      registries: {
        local: { index: asym.indexUrl, confirm: 'none', tokenMaxAgeSeconds: 120, mutationsPerHour: 10_000 },
      },
    })
    stops.push(() => agent.stop())
    Object.assign(process.env, agent.agentEnv)
    const device = new Device({ module: 'softhsm', label: agent.softhsm.label }, {})
    await device.login(Pin.fromString(agent.softhsm.pin))
    asym.addKey(k3Public((await device.findKey({ label: 'gen' })).publicKey))
    await device.release()
    const bearer = await startRegistry({ stateDir: join(dir, 'bearer'), bearerToken: staticToken })
    stops.push(() => bearer.stop())

    // The agent fixture's shim points at a running agent with the registry's index in its config.
    const agentCargo = cargoThroughAgent(join(dir, 'a'), asym, agent)
    const tokenCargo = createCargoSandbox({
      dir: join(dir, 't'),
      indexUrl: bearer.indexUrl,
      credentialProvider: 'cargo:token',
      env: { CARGO_REGISTRIES_LOCAL_TOKEN: staticToken },
    })
    const setups = { agent: agentCargo, token: tokenCargo }
    const crates = { agent: agentCargo.crate('hwtok-alpha'), token: tokenCargo.crate('hwtok-alpha') }
    const manifest = readFileSync(join(crates.agent, 'Cargo.toml'), 'utf8')
    let version = 0
    const publish = async (which: 'agent' | 'token', verify: boolean): Promise<number> => {
      version += 1
      const crate = crates[which]
      writeFileSync(
        join(crate, 'Cargo.toml'),
        manifest.replace(/^version = ".*"$/m, `version = "0.1.${version}"`),
      )
      const t0 = performance.now()
      const args = ['publish', '--registry', 'local', '--allow-dirty', ...(verify ? [] : ['--no-verify'])]
      const r = await setups[which].cargo(args, { cwd: crate })
      const ms = performance.now() - t0
      if (r.code !== 0) throw new Error(`cargo publish (${which}) failed:\n${show(r)}`)
      return ms
    }
    // Warm-up: cargo's first run in a fresh CARGO_HOME creates its caches (and the first build).
    for (const verify of [true, false]) {
      await publish('agent', verify)
      await publish('token', verify)
    }
    const modes: Record<string, unknown> = {}
    for (const verify of [true, false]) {
      const samples: Record<'agent' | 'token', number[]> = { agent: [], token: [] }
      for (let round = 1; round <= rounds; round += 1) {
        const order = round % 2 === 0 ? (['agent', 'token'] as const) : (['token', 'agent'] as const)
        for (const which of order) samples[which].push(await publish(which, verify))
      }
      const ratios = samples.agent.map((a, i) => a / (samples.token[i] as number))
      const mode = {
        agentMs: median(samples.agent),
        tokenMs: median(samples.token),
        agentSamplesMs: samples.agent.map((v) => Math.round(v)),
        tokenSamplesMs: samples.token.map((v) => Math.round(v)),
        ratio: median(samples.agent) / median(samples.token),
        ratioSpread: [Math.min(...ratios), Math.max(...ratios)],
      }
      modes[verify ? 'verify' : 'noVerify'] = mode
      process.stdout.write(
        `cargo publish${verify ? '' : ' --no-verify'}, ${rounds} interleaved rounds: agent ${mode.agentMs.toFixed(0)} ms (${mode.agentSamplesMs.join(', ')}), ` +
          `cargo:token ${mode.tokenMs.toFixed(0)} ms (${mode.tokenSamplesMs.join(', ')}) = ${mode.ratio.toFixed(2)}×\n`,
      )
    }
    const summary = { rounds, ...modes }
    if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(summary, null, 2) + '\n')
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined)
    rmSync(dir, { recursive: true, force: true })
  }
}

runPhase(main)
