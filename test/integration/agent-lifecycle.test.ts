/**
 * Process lifecycle of the real agent: one signal is one clean stop however it is delivered (to the
 * process group, or to the agent's pid alone), and an agent whose socket path was removed or
 * replaced stops instead of living on unreachable (src/agent/agent.ts).
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, unlinkSync } from 'node:fs'
import { createServer } from 'node:net'
import { after, describe, test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import { startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'

function exitOf(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode)
    else child.once('exit', (code) => resolve(code))
  })
}

/** `run --foreground` without UV_THREADPOOL_SIZE (the entry sets it), in its own process group. */
function spawnInGroup(agent: AgentFixture): { child: ChildProcess; output: () => string } {
  const env = { ...agent.agentEnv }
  delete env['UV_THREADPOOL_SIZE']
  const child = spawn(
    process.execPath,
    [agent.agentPath, 'run', '--foreground', '--config', agent.configPath, '--socket', agent.socket],
    { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  )
  let output = ''
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d))
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d))
  return { child, output: () => output }
}

function count(text: string, pattern: RegExp): number {
  return text.split('\n').filter((l) => pattern.test(l)).length
}

describe('agent lifecycle', () => {
  const fixtures: AgentFixture[] = []
  after(async () => {
    for (const f of fixtures) await f.stop()
  })

  test('SIGTERM or SIGINT to the process group of the agent: one clean stop, 10 of 10', async () => {
    const agent = await startAgent({ start: false })
    fixtures.push(agent)
    for (let run = 0; run < 10; run++) {
      const signal = run % 2 === 0 ? 'SIGTERM' : 'SIGINT'
      const { child, output } = spawnInGroup(agent)
      const exited = exitOf(child)
      await waitForSocket(agent.socket, child, output)
      assert.match(output(), /listening on/)
      process.kill(-(child.pid as number), signal)
      const code = await exited
      const text = output()
      assert.equal(code, 0, `run ${run}: exit code ${code}\n${text}`)
      assert.equal(existsSync(agent.socket), false, `run ${run}: socket left behind`)
      assert.equal(count(text, new RegExp(`${signal}: shutting down`)), 1, text)
      assert.equal(count(text, /already shutting down/), 0, `run ${run}: the signal arrived twice\n${text}`)
      assert.equal(count(text, /: stopped$/), 1, text)
    }
  })

  test("SIGTERM to the agent's pid alone: one clean stop", async () => {
    const agent = await startAgent({ start: false })
    fixtures.push(agent)
    const { child, output } = spawnInGroup(agent)
    const exited = exitOf(child)
    await waitForSocket(agent.socket, child, output)
    child.kill('SIGTERM')
    assert.equal(await exited, 0, output())
    assert.equal(existsSync(agent.socket), false)
    assert.equal(count(output(), /SIGTERM: shutting down/), 1, output())
  })

  test('a removed socket file: the agent notices, says so and stops', async () => {
    const agent = await startAgent()
    fixtures.push(agent)
    const exited = exitOf(agent.process as ChildProcess)
    unlinkSync(agent.socket)
    const timer = setTimeout(() => agent.process?.kill('SIGKILL'), LIMITS.socketWatchIntervalMs * 3 + 5_000)
    assert.equal(await exited, 0)
    clearTimeout(timer)
    assert.match(agent.log(), /the socket .* was removed; no client can reach this agent, stopping/)
    assert.match(agent.log(), /stopped/)
  })

  test("a socket replaced by another listener: the agent stops and leaves the newcomer's socket alone", async () => {
    const agent = await startAgent()
    fixtures.push(agent)
    const exited = exitOf(agent.process as ChildProcess)
    unlinkSync(agent.socket)
    const other = createServer((s) => s.end())
    await new Promise<void>((resolve) => other.listen(agent.socket, resolve))
    try {
      const timer = setTimeout(() => agent.process?.kill('SIGKILL'), LIMITS.socketWatchIntervalMs * 3 + 5_000)
      assert.equal(await exited, 0)
      clearTimeout(timer)
      assert.match(agent.log(), /was replaced by another file; no client can reach this agent, stopping/)
      assert.equal(existsSync(agent.socket), true, 'the other listener keeps its socket')
    } finally {
      await new Promise((r) => other.close(r))
    }
  })
})
