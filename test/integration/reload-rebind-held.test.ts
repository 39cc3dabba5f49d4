/**
 * A reload is held against what the agent applied before, not only against the config it replaces:
 * one reload dropping a registry and the next binding its index again must not lift a limit or open
 * it to forwarded mutations that a single reload would have been refused (src/agent/reload.ts,
 * `earlier`). Real agent on SoftHSM, real shim, SIGHUP.
 * From an attacker's review (two reloads turned mutations-per-hour = 0 into 10000).
 */
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { LIMITS } from '../../src/lib/limits.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'

const INDEX = 'sparse+http://127.0.0.1:38795/index/'
const OTHER = 'sparse+http://127.0.0.1:38796/index/'
let agent: AgentFixture

before(async () => {
  agent = await startAgent({ registries: { ci: { index: INDEX, confirm: 'prompt', mutationsPerHour: 0 } } })
})
after(async () => {
  await agent?.stop()
})

const count = (pattern: RegExp): number =>
  agent
    .log()
    .split('\n')
    .filter((l) => pattern.test(l)).length

async function sighup(): Promise<'applied' | 'refused'> {
  const applied = count(/configuration reloaded/)
  const refused = count(/reload refused/)
  agent.process!.kill('SIGHUP')
  for (let t = 0; t < 200; t++) {
    if (count(/configuration reloaded/) > applied) return 'applied'
    if (count(/reload refused/) > refused) return 'refused'
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`no reload verdict:\n${agent.log().slice(-800)}`)
}

type Doc = { registries: Record<string, Record<string, unknown>> }
const read = (): Doc => parse(readFileSync(agent.configPath, 'utf8')) as Doc
const write = (doc: Doc): void => writeFileSync(agent.configPath, stringify(doc) + '\n', { mode: 0o600 })

async function yank(vers: string): Promise<string> {
  return (await agent.runShim(cargoGet(INDEX, 'yank', { name: 'foo', vers }))).stdout
}

test('drop a registry, then bind its index again: what one reload may not lift, two may not either', async () => {
  const original = read()
  const ci = original.registries['ci']!
  assert.match(await yank('1.0.0'), /RATE_LIMITED/, 'mutations-per-hour = 0 forbids mutations')
  const raised = {
    ...original,
    registries: { ci: { ...ci, 'mutations-per-hour': 10000, forwarded: 'confirm' } },
  }

  // Reload 1: no registry binds that index any more (another keeps the config valid): applied.
  write({ ...original, registries: { other: { ...ci, index: OTHER } } })
  assert.equal(await sighup(), 'applied')
  // Reload 2: the same index again, raised: refused, against its earlier binding.
  write(raised)
  assert.equal(await sighup(), 'refused')
  assert.match(
    agent.log(),
    /registry ci \(its index was bound before\): mutations-per-hour 0 → 10000; registry ci \(its index was bound before\): forwarded "read" → "confirm"/,
  )
  // Even back at the default limit, 0 is what this index had.
  write({ ...original, registries: { ci: { ...ci, 'mutations-per-hour': LIMITS.defaultMutationsPerHour } } })
  assert.equal(await sighup(), 'refused')
  // The original binding itself is no weakening.
  write(original)
  assert.equal(await sighup(), 'applied')
  assert.match(await yank('1.0.1'), /RATE_LIMITED/, 'mutations are still forbidden')
})
