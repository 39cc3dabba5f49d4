/**
 * A real `cargo publish` approved where the requester cannot answer (docs/design.md §4, rule 2):
 * on cargo's terminal (a tmux pane), where the AGENT writes the question and reads the "y" itself,
 * and, with no terminal at all, in the pinentry the agent starts (the scripted one). The registry
 * verifies every token; the audit line names the approval and the kernel's requester.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { readAudit, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { cargoThroughAgent, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

const quote = (value: string): string => `'${value.replace(/'/g, `'\\''`)}'`

describe('cargo publish approved on a channel cargo does not answer', () => {
  let dir: string
  let registry: Registry
  let agent: AgentFixture
  let cargo: CargoSandbox
  let pinentry: ScriptedPinentry
  const server = `trust-${process.pid}`
  const tmux = (...args: string[]): string => {
    const r = spawnSync('tmux', ['-L', server, ...args], { encoding: 'utf8' })
    assert.equal(r.status, 0, `tmux ${args.join(' ')}: ${r.stderr}`)
    return r.stdout
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cargo-trust-'))
    registry = await startRegistry({ stateDir: join(dir, 'registry'), strictLowS: true, maxAgeSeconds: 120 })
    pinentry = new ScriptedPinentry()
    agent = await startAgent({
      start: false,
      tokens: { softhsm: { pinSource: 'pinentry' } },
      registries: { local: { index: registry.indexUrl, confirm: 'prompt', tokenMaxAgeSeconds: 120 } },
      env: { PINENTRY_SCRIPT: pinentry.scriptPath, PINENTRY_LOG: pinentry.logPath },
    })
    const config = parse(readFileSync(agent.configPath, 'utf8')) as {
      tokens: Record<string, Record<string, unknown>>
    }
    ;(config.tokens['softhsm'] as Record<string, unknown>)['pinentry-program'] = PINENTRY_PROGRAM
    writeFileSync(agent.configPath, stringify(config) + '\n', { mode: 0o600 })
    delete agent.agentEnv[agent.pinEnv]
    delete agent.agentEnv['DISPLAY']
    delete agent.agentEnv['WAYLAND_DISPLAY']
    const child = await agent.spawnAgent()
    await waitForSocket(agent.socket, child, () => agent.log())
    registry.addKey(await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label }))
    cargo = cargoThroughAgent(dir, registry, agent)
  })

  after(async () => {
    spawnSync('tmux', ['-L', server, 'kill-server'])
    await agent?.stop()
    await registry?.stop()
    pinentry?.cleanup()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('on cargo’s terminal: the agent asks there, "y" typed on the terminal publishes', async () => {
    // The read before the publish needs the PIN (from pinentry, pointed at cargo's terminal).
    pinentry.script([`pin:${agent.softhsm.pin}`])
    const crate = cargo.crate('hwtok-alpha')
    const script = join(dir, 'publish.sh')
    const env = Object.entries({ ...cargo.env, TERM: 'xterm-256color' })
      .filter(([k, v]) => v !== undefined && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && !k.startsWith('TMUX'))
      .map(([k, v]) => `export ${k}=${quote(v as string)}`)
    writeFileSync(
      script,
      [
        ...env,
        `cd ${quote(crate)}`,
        'cargo publish --registry local --no-verify',
        'echo "EXIT=$?"',
        'sleep 600',
        '',
      ].join('\n'),
    )
    tmux('new-session', '-d', '-x', '200', '-y', '60', '-s', 'pub', `bash ${quote(script)}`)
    const paneTty = tmux('display-message', '-p', '-t', 'pub', '#{pane_tty}').trim()
    const capture = (): string => tmux('capture-pane', '-p', '-J', '-t', 'pub', '-S', '-')
    let screen = capture()
    const deadline = Date.now() + 120_000
    let typed = false
    while (!/EXIT=\d+/.test(screen) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200))
      screen = capture()
      if (!typed && /\[y\/N\]\s*$/m.test(screen)) {
        tmux('send-keys', '-t', 'pub', 'y')
        typed = true
      }
    }
    assert.match(screen, /EXIT=0/, `${screen}\n${agent.log()}`)
    assert.ok(typed, 'the agent asked on the terminal')
    const prompt = screen.split('\n').find((l) => l.includes('[y/N]')) ?? ''
    assert.match(
      prompt,
      /^cargo-pkcs11-agent: Allow publish hwtok-alpha 0\.1\.0 \(cksum [0-9a-f]{8}…\) to local \(sparse\+http:\/\/127\.0\.0\.1:\d+\/index\/\), requested by pid \d+ \/\S*cargo \(calls itself `[^`]*cargo publish --registry local --no-verify`\) /,
    )
    assert.ok(prompt.includes(` on ${paneTty} `), `${paneTty}: ${prompt}`)
    assert.equal(registry.index('hwtok-alpha').length, 1)
    const line = readAudit(agent.auditLog).find((a) => a['operation'] === 'publish')
    assert.equal(line?.['result'], 'signed')
    assert.equal(line?.['approval'], 'terminal')
    const requester = line?.['requester'] as Record<string, unknown>
    assert.equal(requester['tty'], paneTty)
    assert.match(String(requester['command']), /cargo publish --registry local --no-verify$/)
    assert.match(String(requester['exe']), /cargo$/)
    assert.ok(
      pinentry.commands('OPTION').some((c) => c.arg === `ttyname=${paneTty}`),
      'the PIN dialog was pointed at cargo’s terminal',
    )
  })

  test('no terminal: the agent’s pinentry asks; "no" refuses, "yes" publishes', async () => {
    const crate = cargo.crate('hwtok-beta')
    // cargo in a session of its own: no controlling terminal for anyone to be asked on.
    const publish = (): Promise<{ code: number | null; stderr: string }> =>
      new Promise((resolve, reject) => {
        const child = spawn('cargo', ['publish', '--registry', 'local', '--no-verify'], {
          cwd: crate,
          env: cargo.env,
          detached: true,
          stdio: ['ignore', 'ignore', 'pipe'],
        })
        let stderr = ''
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
        child.on('error', reject)
        child.on('close', (code) => resolve({ code, stderr }))
      })
    pinentry.script(['no'])
    const refused = await publish()
    assert.notEqual(refused.code, 0)
    assert.match(refused.stderr, /DENIED/)
    assert.equal(registry.index('hwtok-beta').length, 0)
    pinentry.script(['yes'])
    const ok = await publish()
    assert.equal(ok.code, 0, ok.stderr)
    assert.equal(registry.index('hwtok-beta').length, 1)
    const desc = pinentry.commands('SETDESC').at(-1)?.arg ?? ''
    assert.match(
      desc,
      /publish hwtok-beta 0\.1\.0 .*requested by pid \d+ \/\S*cargo \(calls itself `[^`]*cargo publish --registry local --no-verify`\)/,
    )
    const lines = readAudit(agent.auditLog).filter((a) => a['crate'] === 'hwtok-beta')
    assert.deepEqual(
      lines.map((a) => [a['result'], a['approval'] ?? null]),
      [
        ['denied', null],
        ['signed', 'pinentry'],
      ],
    )
  })
})
