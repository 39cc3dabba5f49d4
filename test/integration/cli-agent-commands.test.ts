/**
 * The commands that only talk to a running agent (status, stop, lock, reload, release), against
 * real agent processes on SoftHSM: `reload` reports the agent's verdict (a weakening is refused,
 * exit 1 with the reason; SIGHUP still reloads for systemd's ExecReload), a rejected env PIN is not
 * sent again after `lock` or `reload` (C_Login counted by the fault-injecting module, with no fault
 * set), every one of them finds the agent at the config's `[agent] socket`, and a headless agent's
 * POLICY_DENIED does not advise a touch the SoftHSM key cannot give.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, test } from 'node:test'

import { parse, stringify } from 'smol-toml'

import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, runAgentCli, startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY, repoRoot } from '../helpers/softhsm.js'

const run = promisify(execFile)
const FAULTY_DIR = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11')
const FAULTY = join(FAULTY_DIR, 'libfaulty-pkcs11.so')
const INDEX = 'sparse+http://127.0.0.1:38850/index/'
const CKSUM = 'a'.repeat(64)

type Toml = {
  agent: Record<string, unknown>
  registries: Record<string, Record<string, unknown>>
}

function editConfig(path: string, edit: (config: Toml) => void): void {
  const config = parse(readFileSync(path, 'utf8')) as Toml
  edit(config)
  writeFileSync(path, stringify(config) + '\n', { mode: 0o600 })
}

/** The shim's response line: the token, or the error's message with its causes (the remedy is one). */
function answer(lines: string[]): { token?: string; error?: string } {
  assert.ok(lines[1] !== undefined, `no response line: ${lines.join('\n')}`)
  const parsed = JSON.parse(lines[1]) as {
    Ok?: { token?: string }
    Err?: { message?: string; 'caused-by'?: string[] }
  }
  if (parsed.Err === undefined) return parsed.Ok?.token === undefined ? {} : { token: parsed.Ok.token }
  return { error: [parsed.Err.message ?? '', ...(parsed.Err['caused-by'] ?? [])].join('\n') }
}

async function statusOf(agent: AgentFixture): Promise<{
  registries: { name: string; confirm: string; mutationsPerHour: number }[]
  tokens: { name: string; pinCached: boolean }[]
}> {
  const r = await runAgentCli(['status', '--json'], { env: agent.env })
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout) as Awaited<ReturnType<typeof statusOf>>
}

describe('reload tells the truth', () => {
  let agent: AgentFixture
  before(async () => {
    agent = await startAgent({
      registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label }, confirm: 'prompt' } },
    })
  })
  after(async () => {
    await agent?.stop()
  })

  test('a weakening reload: exit 1 with the reason and the restart, nothing applied, no "configuration reloaded"', async () => {
    const original = readFileSync(agent.configPath, 'utf8')
    editConfig(agent.configPath, (c) => {
      ;(c.registries['local'] as Record<string, unknown>)['confirm'] = 'none'
    })
    try {
      const r = await runAgentCli(['reload'], { env: agent.env })
      assert.equal(r.code, 1, r.stdout + r.stderr)
      assert.equal(r.stdout, '', 'no success line')
      assert.match(
        r.stderr,
        /The agent refused the reload and keeps its previous configuration: it would weaken protection \(registry local: confirm "prompt" → "none"\)/,
      )
      assert.match(r.stderr, /restart the agent to apply it \(`cargo-pkcs11-agent stop`, then run it again\)/)
      const status = await statusOf(agent)
      assert.equal(status.registries.find((x) => x.name === 'local')?.confirm, 'prompt')
      assert.match(
        agent.log(),
        /reload refused, keeping the previous configuration: it would weaken protection/,
      )
      assert.doesNotMatch(agent.log(), /configuration reloaded/)

      // SIGHUP (systemd's ExecReload) takes the same path: refused, and not logged as reloaded.
      const refusals = (): number => agent.log().split('reload refused').length - 1
      agent.process?.kill('SIGHUP')
      for (let i = 0; i < 250 && refusals() < 2; i++) await new Promise((resolve) => setTimeout(resolve, 20))
      assert.equal(refusals(), 2, agent.log())
      assert.doesNotMatch(agent.log(), /configuration reloaded/)
    } finally {
      writeFileSync(agent.configPath, original, { mode: 0o600 })
    }
  })

  test('an accepted reload: exit 0, the new config applies, the log says so', async () => {
    editConfig(agent.configPath, (c) => {
      ;(c.registries['local'] as Record<string, unknown>)['mutations-per-hour'] = 7
    })
    const r = await runAgentCli(['reload'], { env: agent.env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /reloaded the agent \(pid \d+\): configuration re-read from /)
    assert.equal((await statusOf(agent)).registries.find((x) => x.name === 'local')?.mutationsPerHour, 7)
    assert.match(agent.log(), /configuration reloaded from .*; PINs forgotten, devices released/)
  })
})

describe('a wrong PIN from the environment is not sent again', () => {
  let agent: AgentFixture
  let counts: string
  const logins = (): number => {
    if (!existsSync(counts)) return 0
    const line = readFileSync(counts, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('C_Login '))
    return line === undefined ? 0 : Number(line.split(' ')[1])
  }
  const read = async (): Promise<ReturnType<typeof answer>> =>
    answer((await agent.runShim(cargoGet(INDEX, 'read', { registryName: 'local' }))).lines)

  before(async () => {
    await run('make', ['-s', '-C', FAULTY_DIR])
    agent = await startAgent({
      start: false,
      // SoftHSM behind the counting module, no fault set: only the wrong value refuses.
      tokens: { softhsm: { module: FAULTY } },
      registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label } } },
    })
    counts = join(agent.dir, 'counts')
    Object.assign(agent.agentEnv, {
      [agent.pinEnv]: '999999',
      FAULTY_PKCS11_COUNTS: counts,
      FAULTY_PKCS11_CONTROL: join(agent.dir, 'no-faults'),
    })
    await waitForSocket(agent.socket, await agent.spawnAgent(), () => agent.log())
  })
  after(async () => {
    await agent?.stop()
  })

  test('wrong env PIN: one C_Login; after lock and after reload none, and the advice is to restart with the fixed variable', async () => {
    const first = await read()
    assert.match(first.error ?? '', /Wrong PIN for SoftHSM token/, JSON.stringify(first))
    assert.match(
      first.error ?? '',
      new RegExp(
        `Set ${agent.pinEnv} to the right PIN where the agent is started, then restart it: \`cargo-pkcs11-agent stop\``,
      ),
    )
    assert.equal(logins(), 1)

    // What the old advice said to do: lock. The agent still holds the same wrong value.
    const lock = await runAgentCli(['lock'], { env: agent.env })
    assert.equal(lock.code, 0, lock.stderr)
    const afterLock = await read()
    assert.match(
      afterLock.error ?? '',
      new RegExp(
        `already rejected the PIN from its environment variable ${agent.pinEnv}; it is not tried again`,
      ),
      JSON.stringify(afterLock),
    )
    assert.match(afterLock.error ?? '', /restart it: `cargo-pkcs11-agent stop`.*reads \w+ only at its start/)
    assert.equal(logins(), 1, 'lock made the agent send the rejected PIN again')

    const reload = await runAgentCli(['reload'], { env: agent.env })
    assert.equal(reload.code, 0, reload.stderr)
    assert.match((await read()).error ?? '', /already rejected the PIN/)
    assert.equal(logins(), 1, 'reload made the agent send the rejected PIN again')

    // The advice works: stop, and a new agent with the fixed variable signs.
    const stop = await runAgentCli(['stop'], { env: agent.env })
    assert.equal(stop.code, 0, stop.stderr)
    agent.agentEnv[agent.pinEnv] = agent.softhsm.pin
    await waitForSocket(agent.socket, await agent.spawnAgent(), () => agent.log())
    const signed = await read()
    assert.ok(signed.token !== undefined, JSON.stringify(signed) + agent.log())
    await verifyToken(signed.token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    assert.equal(logins(), 1, 'the new agent logged in once')
  })
})

describe('`[agent] socket` in the config', () => {
  let agent: AgentFixture
  let env: NodeJS.ProcessEnv
  let socket: string
  before(async () => {
    agent = await startAgent({ start: false, registries: { local: { index: INDEX } } })
    socket = join(agent.dir, 'elsewhere', 'agent.sock')
    editConfig(agent.configPath, (c) => {
      c.agent['socket'] = socket
    })
    // A user's shell: no socket or config variable, the config passed by flag.
    env = { ...agent.agentEnv }
    delete env['CARGO_PKCS11_AGENT_SOCK']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
  })
  after(async () => {
    if (existsSync(socket)) await runAgentCli(['stop', '--socket', socket], { env })
    await agent?.stop()
  })

  test('status, lock, release, reload and stop find the agent there with --config or $CARGO_PKCS11_AGENT_CONFIG', async () => {
    const started = await runAgentCli(['run', '--config', agent.configPath], { env })
    assert.equal(started.code, 0, started.stderr)
    assert.match(started.stderr, new RegExp(`started \\(pid \\d+\\) on ${socket}`))

    const withoutConfig = await runAgentCli(['status'], { env })
    assert.equal(withoutConfig.code, 1, 'the default socket has no agent')
    assert.doesNotMatch(withoutConfig.stderr, new RegExp(socket))

    const status = await runAgentCli(['status', '--config', agent.configPath], { env })
    assert.equal(status.code, 0, status.stderr)
    assert.match(status.stdout, new RegExp(`^socket +${socket}$`, 'm'))
    const fromEnv = await runAgentCli(['status', '--json'], {
      env: { ...env, CARGO_PKCS11_AGENT_CONFIG: agent.configPath },
    })
    assert.equal(fromEnv.code, 0, fromEnv.stderr)
    assert.equal((JSON.parse(fromEnv.stdout) as { socket: string }).socket, socket)

    for (const [command, output] of [
      ['lock', /forgot \d+ PIN\(s\)/],
      ['release', /closed the sessions of \d+ token\(s\)/],
      ['reload', /reloaded the agent \(pid \d+\)/],
      ['stop', new RegExp(`stopped the agent \\(pid \\d+\\) on ${socket}`)],
    ] as const) {
      const r = await runAgentCli([command, '--config', agent.configPath], { env })
      assert.equal(r.code, 0, `${command}: ${r.stderr}`)
      assert.match(r.stdout, output, command)
    }
    assert.equal(existsSync(socket), false, 'stop ended the agent')
  })

  test('a config that cannot be read: the error says so and that --socket reaches the agent without it', async () => {
    const r = await runAgentCli(['status', '--config', join(agent.dir, 'missing.toml')], { env })
    assert.equal(r.code, 1)
    assert.match(r.stderr, /No configuration at .*missing\.toml/)
    assert.match(r.stderr, /or pass --socket PATH, since the agent's socket is read from this file/)
  })
})

describe('a headless agent refusing a publish', () => {
  let agent: AgentFixture
  before(async () => {
    agent = await startAgent({
      agent: { headless: true },
      registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label }, confirm: 'prompt' } },
    })
  })
  after(async () => {
    await agent?.stop()
  })

  test('POLICY_DENIED advises confirm = "none" or a key with a touch policy, not a touch SoftHSM cannot give', async () => {
    const lines = (
      await agent.runShim(
        cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.0.0', cksum: CKSUM, registryName: 'local' }),
      )
    ).lines
    const message = answer(lines).error ?? ''
    assert.match(
      message,
      /Confirmation is required to publish foo 1\.0\.0 .*but the agent runs headless/,
      message,
    )
    assert.match(
      message,
      /set confirm = "none" for this registry in the agent config \(its mutation key attests no touch policy/,
    )
    assert.match(message, /use a mutation key with a touch policy/)
    assert.doesNotMatch(message, /set confirm = "touch"/)
  })
})
