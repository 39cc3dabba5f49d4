/**
 * The policy inside the real agent process: the shim (as cargo runs it, no terminal) asks the agent
 * over its socket; the agent asks the scripted pinentry for the PIN and for confirmation, signs on
 * SoftHSM, writes the audit line. Then: the PIN is nowhere it must not be.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { after, before, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { verifyToken } from '../../src/verify/verify.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { cargoGet, readAudit, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const run = promisify(execFile)
const INDEX = 'sparse+http://127.0.0.1:38590/index/'
const CKSUM = '6dee75a8bd1d03d85f48bbd140b736b2c36df889a700754c5a24214de8b29c62'
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }
let agent: AgentFixture
let pinentry: ScriptedPinentry

function tokenOf(line: string | undefined): string {
  const ok = (JSON.parse(line ?? 'null') as { Ok?: { token?: string } } | null)?.Ok
  assert.ok(ok?.token !== undefined, `expected a token, got ${line}`)
  return ok.token
}

before(async () => {
  pinentry = new ScriptedPinentry()
  agent = await startAgent({
    start: false,
    tokens: { softhsm: { pinSource: 'pinentry' } },
    registries: { local: { index: INDEX, readKey: known, confirm: 'prompt' } },
    env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
  })
  const config = parse(readFileSync(agent.configPath, 'utf8')) as {
    tokens: Record<string, Record<string, unknown>>
  }
  ;(config.tokens['softhsm'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
  writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
  // This token's PIN comes from pinentry only: the agent's environment must not carry it.
  delete agent.agentEnv[agent.pinEnv]
  const child = await agent.spawnAgent()
  await waitForSocket(agent.socket, child, () => agent.log())
})

after(async () => {
  await agent?.stop()
  pinentry?.cleanup()
})

test('reads: the agent asks pinentry once, describing the token and the request, then uses the cached PIN', async () => {
  pinentry.script([`pin:${agent.softhsm.pin}`])
  for (let i = 0; i < 2; i++) {
    const r = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
    assert.equal(r.status, 0, r.stderr)
    await verifyToken(tokenOf(r.lines[1]), {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'read',
      strictLowS: true,
    })
  }
  assert.equal(pinentry.starts(), 1)
  const desc = pinentry.commands('SETDESC')[0]?.arg ?? ''
  assert.match(desc, /read from local \(sparse\+http:\/\/127\.0\.0\.1:38590\/index\/\), requested by pid \d+/)
})

test('confirm = "prompt" with no terminal: pinentry CONFIRM shows the publish; yes signs, no is refused and audited', async () => {
  pinentry.script(['yes', 'no'])
  const yes = await agent.runShim(
    cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.2.3', cksum: CKSUM, registryName: 'local' }),
  )
  assert.equal(yes.status, 0, yes.stderr)
  await verifyToken(tokenOf(yes.lines[1]), {
    publicKey: KNOWN_KEY.k3Public,
    url: INDEX,
    operation: 'publish',
    crate: { name: 'foo', vers: '1.2.3', cksum: CKSUM },
    strictLowS: true,
  })
  const confirmDesc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
  assert.match(
    confirmDesc,
    /^Allow publish foo 1\.2\.3 \(cksum 6dee75a8…\) to local \(sparse\+http:\/\/127\.0\.0\.1:38590\/index\/\), requested by pid \d+/,
  )

  const no = await agent.runShim(
    cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.2.4', cksum: CKSUM, registryName: 'local' }),
  )
  const err = (JSON.parse(no.lines[1] ?? 'null') as { Err?: { kind: string; message?: string } } | null)?.Err
  assert.equal(err?.kind, 'other')
  assert.match(err?.message ?? '', /Refused: publish foo 1\.2\.4/)
  const last = readAudit(agent.auditLog).at(-1)
  assert.equal(last?.['result'], 'denied')
  assert.equal(last?.['code'], 'DENIED')
  assert.equal(last?.['vers'], '1.2.4')
})

test('after `cargo-pkcs11-agent lock` the PIN is asked again', async () => {
  await run(process.execPath, [agent.agentPath, 'lock'], { env: agent.env })
  pinentry.script([`pin:${agent.softhsm.pin}`])
  const starts = pinentry.starts()
  const r = await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))
  assert.equal(r.status, 0, r.stderr)
  assert.equal(pinentry.starts(), starts + 1)
})

test('`cargo-pkcs11-agent log` shows the decisions; the PIN is not in the audit log, agent output, argv or environments', async () => {
  const { stdout } = await run(
    process.execPath,
    [agent.agentPath, 'log', '-n', '0', '--config', agent.configPath],
    { env: agent.env },
  )
  assert.match(stdout, /signed  publish foo 1\.2\.3 \(cksum 6dee75a8bd1d03d8\) to local .*approved: pinentry/)
  assert.match(stdout, /DENIED  publish foo 1\.2\.4 /)
  const pin = agent.softhsm.pin
  assert.equal(readFileSync(agent.auditLog, 'utf8').includes(pin), false)
  assert.equal(agent.log().includes(pin), false)
  const pid = agent.process?.pid
  assert.ok(pid !== undefined)
  assert.equal(readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(pin), false)
  assert.equal(readFileSync(`/proc/${pid}/environ`, 'utf8').includes(pin), false)
  for (const s of pinentry.log().filter((r) => r.event === 'start')) {
    assert.equal(s.cmdline?.includes(pin), false)
    assert.equal(s.environ?.includes(pin), false)
  }
})
