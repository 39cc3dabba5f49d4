/**
 * A same-user process that can write the config and send a signal must not get a `pin-env` PIN
 * that lives only in the (non-dumpable) agent's environment: a reload that switches the token to
 * pin-source = "pinentry" (no weakening, src/agent/reload.ts) drops the variable from the config
 * but not from process.env, and the next pinentry (any program the new config names) is started
 * without it (src/agent/policy-config.ts strips every pin-env name seen since start). Real agent,
 * scripted pinentry that records its /proc/self/environ.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'

const INDEX = 'sparse+http://127.0.0.1:38795/index/'
let agent: AgentFixture
let pinentry: ScriptedPinentry

before(async () => {
  pinentry = new ScriptedPinentry()
  agent = await startAgent({
    registries: { r: { index: INDEX, confirm: 'prompt' } },
    env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
  })
})
after(async () => {
  await agent?.stop()
  pinentry?.cleanup()
})

test('after a reload to pin-source = "pinentry", the old pin-env variable is not in pinentry’s environment', async () => {
  // Holds before: the env PIN signs, no pinentry is started.
  const first = await agent.runShim(cargoGet(INDEX, 'read'))
  assert.match(first.stdout, /"Ok"/, first.stdout)
  assert.equal(pinentry.starts(), 0)
  const config = parse(readFileSync(agent.configPath, 'utf8')) as {
    tokens: Record<string, Record<string, unknown>>
  }
  const token = config.tokens['softhsm']!
  token['pin-source'] = 'pinentry'
  delete token['pin-env']
  token['pinentry-program'] = PINENTRY_PROGRAM // any program of the attacker's
  writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
  agent.process!.kill('SIGHUP')
  for (let i = 0; i < 100 && !/configuration reloaded/.test(agent.log()); i++)
    await new Promise((r) => setTimeout(r, 50))
  assert.match(agent.log(), /configuration reloaded/, 'the reload is applied, not refused')
  pinentry.script(['cancel'])
  // Any client: a read in a new session (no terminal), so the agent starts its pinentry.
  const client = spawn(
    process.execPath,
    [
      '-e',
      `
    const s = require('node:net').createConnection(process.env.SOCK)
    s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: 'sign', params: { cargo: process.env.LINE } }) + '\\n'))
    let b = ''; s.on('data', (d) => { b += d; if (b.includes('"response"')) process.exit(0) })`,
    ],
    {
      env: { SOCK: agent.socket, LINE: JSON.stringify(cargoGet(INDEX, 'read')) },
      detached: true,
      stdio: 'ignore',
    },
  )
  await new Promise((r) => client.on('exit', r))
  const start = pinentry.log().find((r) => r.event === 'start')
  assert.ok(start !== undefined, `pinentry was started: ${agent.log().slice(-600)}`)
  const leaked = (start.environ ?? '').split('\0').find((v) => v.startsWith(`${agent.pinEnv}=`))
  assert.ok((start.environ ?? '').includes('PINENTRY_SCRIPT='), 'the environment was recorded')
  assert.equal(leaked, undefined, 'the dropped pin-env variable is not in the child environment')
})
