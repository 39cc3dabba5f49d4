/**
 * `cargo-pkcs11-agent run [--config F] [--socket S] [--foreground]`
 * Without --foreground the agent detaches (log under the state dir) and this command returns once
 * it answers on its socket.
 */
import { spawn } from 'node:child_process'
import { closeSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { Agent } from '../agent/agent.js'
import { AgentConnection } from '../protocol/client.js'
import { alreadyRunning, probeSocket } from '../agent/socket.js'
import { loadConfig } from '../config/load.js'
import { agentLogPath, resolveConfigPath, resolveSocketPath } from '../config/paths.js'
import { agentLogWriter, openAgentLog } from '../lib/agent-log.js'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import {
  detachFromRelauncher,
  ensureThreadpoolSize,
  relaunchWithThreadpoolSize,
  withThreadpoolSize,
} from '../lib/threadpool.js'
import { parseCommandArgs, USAGE } from './args.js'

/** Polls the socket until the agent answers a ping (used after starting one in the background). */
export async function waitForAgent(
  socketPath: string,
  timeoutMs: number = LIMITS.agentStartWaitMs,
  isDead: () => boolean = () => false,
  pid?: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < deadline && !isDead()) {
    try {
      const connection = await AgentConnection.connect(socketPath, 500)
      try {
        const pong = await connection.request('ping', {}, { timeoutMs: 1_000 })
        // Another agent answering on the path is not the one we started.
        if (pid === undefined || pong['pid'] === pid) return
      } finally {
        connection.close()
      }
    } catch (error) {
      last = error
      await new Promise((r) => setTimeout(r, 25))
    }
  }
  throw new AgentError(
    'AGENT_UNREACHABLE',
    `The agent did not start listening on ${socketPath} within ${timeoutMs} ms`,
    {
      cause: last,
      remedy: `Look at its log, ${agentLogPath()}, or start it with \`cargo-pkcs11-agent run --foreground\` to see why`,
      data: { socket: socketPath },
    },
  )
}

/** Starts `run --foreground` detached, stdio into the agent log. Returns the child's pid. */
export function spawnDetachedAgent(
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): { pid: number; exited: () => boolean; logPath: string } {
  const logPath = agentLogPath(env)
  const log = openAgentLog(logPath).fd
  const bin = fileURLToPath(new URL('../bin/cargo-pkcs11-agent.js', import.meta.url))
  const child = spawn(process.execPath, [bin, 'run', '--foreground', ...args], {
    detached: true,
    stdio: ['ignore', log, log],
    env: withThreadpoolSize(env),
  })
  closeSync(log)
  let exited = false
  child.on('exit', () => (exited = true))
  child.unref()
  return { pid: child.pid ?? -1, exited: () => exited, logPath }
}

export async function run(argv: readonly string[]): Promise<number> {
  const { values: args } = parseCommandArgs(
    argv,
    { config: { type: 'string' }, socket: { type: 'string' }, foreground: { type: 'boolean' } },
    USAGE.run,
  )
  // Validated before detaching (or relaunching), so a config error reaches this terminal.
  const configPath = resolveConfigPath(args.config).path
  const config = loadConfig(configPath)
  const socketPath = resolveSocketPath(args.socket, config.agent.socket).path
  if (args.foreground !== true) {
    if ((await probeSocket(socketPath)) === 'alive') throw alreadyRunning(socketPath)
    const child = spawnDetachedAgent(['--config', configPath, '--socket', socketPath])
    await waitForAgent(socketPath, LIMITS.agentStartWaitMs, child.exited, child.pid)
    process.stderr.write(
      `cargo-pkcs11-agent: started (pid ${child.pid}) on ${socketPath}; log: ${child.logPath}\n`,
    )
    return 0
  }
  // The pool size must be fixed before libuv starts its pool; under ESM only the parent can do that
  // (src/lib/threadpool.ts). A parent that did not costs one relaunch. (relaunch first: it checks the
  // variable itself, and ensureThreadpoolSize() would set it in this process and hide the need.)
  if (await relaunchWithThreadpoolSize()) return (process.exitCode as number | undefined) ?? 0
  detachFromRelauncher()
  ensureThreadpoolSize()
  const log = agentLogWriter(agentLogPath(), 'cargo-pkcs11-agent: ')
  const agent = new Agent({ config, socketPath, configPath, log })
  await agent.start()
  await agent.runUntilSignalled()
  return 0
}
