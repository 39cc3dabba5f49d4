/**
 * The mutation rate limit is the only control left on a `confirm = "none"` registry
 * (docs/policy.md, "Mutations"). A same-user build script can send SIGHUP; a reload builds a new
 * Policy, which must get the running limiter (src/agent/agent.ts reload → createPolicy), or the
 * sliding hour would start empty after each `kill -HUP`. A reload that raises
 * `mutations-per-hour` is refused like a lowered `confirm` (src/agent/reload.ts). Real agent and
 * shim on SoftHSM.
 */
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'

const INDEX = 'sparse+http://127.0.0.1:38794/index/'
let agent: AgentFixture

before(async () => {
  agent = await startAgent({ registries: { ci: { index: INDEX, confirm: 'none', mutationsPerHour: 2 } } })
})
after(async () => {
  await agent?.stop()
})

async function yank(vers: string): Promise<string> {
  const shim = await agent.runShim(cargoGet(INDEX, 'yank', { name: 'foo', vers }))
  return shim.stdout
}

function count(pattern: RegExp): number {
  return agent
    .log()
    .split('\n')
    .filter((l) => pattern.test(l)).length
}

/** Sends SIGHUP and waits for the reload's verdict in the agent log (applied or refused). */
async function sighup(): Promise<void> {
  const verdict = /configuration reloaded|reload refused/
  const before = count(verdict)
  agent.process!.kill('SIGHUP')
  for (let t = 0; t < 100 && count(verdict) === before; t++) await new Promise((r) => setTimeout(r, 50))
  assert.equal(count(verdict), before + 1, 'the reload ran')
}

test('SIGHUP keeps the sliding hour: 2 per hour stays 2 across reloads', async () => {
  let signed = 0
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 2; i++) if ((await yank(`1.${round}.${i}`)).includes('"Ok"')) signed++
    assert.match(await yank(`1.${round}.9`), /RATE_LIMITED/, 'the limit holds within one round')
    await sighup()
  }
  assert.equal(signed, 2, `${signed} mutations signed within the hour with mutations-per-hour = 2`)
})

test('a reload that raises mutations-per-hour is refused, and the limit stays', async () => {
  const config = parse(readFileSync(agent.configPath, 'utf8')) as {
    registries: Record<string, Record<string, unknown>>
  }
  config.registries['ci']!['mutations-per-hour'] = 10
  writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
  const refused = count(/reload refused/)
  await sighup()
  assert.equal(count(/reload refused/), refused + 1, agent.log().slice(-600))
  assert.match(agent.log(), /reload refused.*registry ci: mutations-per-hour 2 → 10/)
  assert.match(await yank('2.0.0'), /RATE_LIMITED/, 'still 2 per hour')
})
