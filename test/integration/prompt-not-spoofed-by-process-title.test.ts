/**
 * A build script cannot pass for `cargo publish` in the agent's own approval question (SECURITY.md,
 * "A build script that publishes behind your back"). /proc/<pid>/cmdline is the process's own argv
 * memory, which Node's `process.title` overwrites, and cargo's `registry.name` is whatever the
 * client writes; the prompt names the registry from the agent's config and each process by the
 * kernel's /proc/<pid>/exe, with the command line labelled as what the process says about itself
 * (src/policy/intent.ts). Real agent process on SoftHSM with confirm = "prompt", asking in its own
 * (scripted) pinentry: the attacker runs in a new session, without a terminal.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { cargoGet, readAudit, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38790/index/'
const CKSUM = 'd'.repeat(64)
const PAD = 'x'.repeat(400)
const FAKE_CARGO = 'cargo publish --registry production'
const FAKE_SHIM = 'node /usr/local/bin/cargo-credential-pkcs11 --cargo-plugin'
const ESC = '\u001b]0;owned\u0007\u001b[2J'

// The "build script": renames itself, then starts a client that renames itself and sends one request.
const PARENT = `
process.title = ${JSON.stringify(FAKE_CARGO)}
const { spawn } = require('node:child_process')
const c = spawn(process.execPath, [process.env.CHILD, ${JSON.stringify(PAD)}], { stdio: 'inherit' })
c.on('exit', (code) => process.exit(code ?? 1))
`
const CHILD = `
process.title = ${JSON.stringify(FAKE_SHIM)}
const net = require('node:net')
const fs = require('node:fs')
const s = net.createConnection(process.env.SOCK)
let buf = ''
s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: process.env.METHOD, params: JSON.parse(process.env.PARAMS) }) + '\\n'))
s.setEncoding('utf8').on('data', (d) => {
  buf += d
  for (let i; (i = buf.indexOf('\\n')) >= 0; buf = buf.slice(i + 1)) {
    const f = JSON.parse(buf.slice(0, i))
    if (f.type === 'response') { fs.writeFileSync(process.env.OUT, JSON.stringify({ f, pid: process.pid, ppid: process.ppid })); process.exit(0) }
  }
})
`

let agent: AgentFixture
let pinentry: ScriptedPinentry
let work: string

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'prompt-spoof-'))
  writeFileSync(join(work, 'parent.cjs'), PARENT)
  writeFileSync(join(work, 'child.cjs'), CHILD)
  pinentry = new ScriptedPinentry()
  agent = await startAgent({
    start: false,
    tokens: { softhsm: { pinSource: 'pinentry' } },
    registries: {
      staging: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id }, confirm: 'prompt' },
    },
    env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
  })
  const config = parse(readFileSync(agent.configPath, 'utf8')) as {
    tokens: Record<string, Record<string, unknown>>
  }
  config.tokens['softhsm']!['pinentry-program'] = PINENTRY_PROGRAM
  writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
  delete agent.agentEnv[agent.pinEnv]
  delete agent.agentEnv['DISPLAY']
  delete agent.agentEnv['WAYLAND_DISPLAY']
  const child = await agent.spawnAgent()
  await waitForSocket(agent.socket, child, () => agent.log())
})

after(async () => {
  await agent?.stop()
  pinentry?.cleanup()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

/** One request from the renamed pair, in its own session (no terminal); its answer and pids. */
async function asRenamedBuildScript(
  method: string,
  params: object,
): Promise<{ f: { error?: { code: string; message: string } }; pid: number; ppid: number }> {
  const out = join(work, `out-${method}.json`)
  const parent = spawn(process.execPath, [join(work, 'parent.cjs'), PAD], {
    env: {
      PATH: process.env['PATH'],
      CHILD: join(work, 'child.cjs'),
      SOCK: agent.socket,
      OUT: out,
      METHOD: method,
      PARAMS: JSON.stringify(params),
    },
    detached: true,
    stdio: 'ignore',
  })
  await new Promise((r) => parent.on('exit', r))
  return JSON.parse(readFileSync(out, 'utf8')) as Awaited<ReturnType<typeof asRenamedBuildScript>>
}

test('a renamed build script is shown by its executable, with its argv labelled as its own word, and the config’s registry name', async () => {
  pinentry.script(['no', `pin:${agent.softhsm.pin}`])
  const line = cargoGet(INDEX, 'publish', {
    name: 'foo',
    vers: '9.9.9',
    cksum: CKSUM,
    registryName: 'production',
  })
  const { f, pid, ppid } = await asRenamedBuildScript('sign', {
    cargo: JSON.stringify(line),
    interactive: false,
  })
  assert.equal(f.error?.code, 'DENIED', 'scripted pinentry said no (the human would decide here)')
  const desc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
  const node = readlinkSync('/proc/self/exe')
  // The registry is the one the agent's config binds to this index URL, not the client's name for it.
  assert.ok(desc.includes(`to staging (${INDEX}), `), desc)
  assert.doesNotMatch(desc, /to production/)
  // Each process is named by the kernel's executable; its argv only as what it calls itself.
  assert.ok(desc.includes(`requested by pid ${ppid} ${node} (calls itself \`${FAKE_CARGO}\`)`), desc)
  assert.ok(desc.includes(`through pid ${pid} ${node} (calls itself \`${FAKE_SHIM}\`)`), desc)
  const audit = readAudit(agent.auditLog).at(-1) as {
    registry: { name?: string; url: string }
    requester: { exe?: string; command?: string }
  }
  assert.deepEqual(audit.registry, { name: 'staging', url: INDEX })
  assert.equal(audit.requester.exe, node)
})

test('keygen --force: a label with control characters is shown terminal-safe in pinentry and in the refusal', async () => {
  pinentry.script(['no'])
  const label = `gen${ESC}\nReplace nothing`
  const { f, ppid } = await asRenamedBuildScript('keygen', { token: 'softhsm', label, force: true })
  assert.equal(f.error?.code, 'DENIED', JSON.stringify(f))
  const desc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
  assert.ok(
    desc.startsWith('Replace the key "gen\uFFFD]0;owned\uFFFD\uFFFD[2J\uFFFDReplace nothing" on '),
    desc,
  )
  assert.ok(desc.includes(`requested by pid ${ppid} `), desc)
  for (const text of [desc, f.error?.message ?? ''])
    assert.doesNotMatch(text, /[\u0000-\u001f\u007f-\u009f]/, JSON.stringify(text))
  assert.match(f.error?.message ?? '', /^Refused: keygen softhsm\/gen\uFFFD/)
})
