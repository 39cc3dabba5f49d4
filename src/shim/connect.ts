/**
 * Finding the agent: connect, and when nothing listens start one in the background (unless
 * CARGO_PKCS11_AGENT_NO_AUTOSTART=1) and wait up to LIMITS.agentStartWaitMs for it. An agent that
 * exits meanwhile (a config error, a missing module) ends the wait at once with its own lines.
 */
import { AgentConnection, unreachable } from '../protocol/client.js'
import { agentLogPath } from '../config/paths.js'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'

export function autostartDisabled(env: NodeJS.ProcessEnv): boolean {
  const value = env['CARGO_PKCS11_AGENT_NO_AUTOSTART']
  return value !== undefined && value !== '' && value !== '0' && value !== 'false'
}

export interface StartedAgent {
  readonly pid: number
  readonly logPath: string
  /** Where this agent's lines begin in the log. */
  readonly offset: number
  /** Set once the child has exited: its exit code, or 128 + signal. */
  exit: number | undefined
}

/**
 * Starts `run --foreground` detached, its output appended to the agent log. `args` are further
 * `run` options (`cargo-pkcs11-agent run` passes its `--config`).
 */
export async function startAgent(
  socketPath: string,
  env: NodeJS.ProcessEnv,
  args: readonly string[] = [],
): Promise<StartedAgent> {
  // Loaded only on this path: the common case (agent running) never pays for child_process.
  const [
    { spawn },
    { closeSync, existsSync, realpathSync },
    { dirname, join },
    { constants },
    { openAgentLog },
  ] = await Promise.all([
    import('node:child_process'),
    import('node:fs'),
    import('node:path'),
    import('node:os'),
    import('../lib/agent-log.js'),
  ])
  const logPath = agentLogPath(env)
  const log = openAgentLog(logPath)
  // The agent's entry sits next to this process's (dist/src/bin/: the agent's own `run`, or the shim's
  // ESM build), or — when the shim runs from its
  // CommonJS build (dist/cjs/src/bin/, tsconfig.shim.json) — in the ESM build three levels up.
  // Found from argv[1] rather than import.meta so the same source compiles to both formats.
  const here = dirname(realpathSync(process.argv[1] ?? '.'))
  const candidates = [
    join(here, 'cargo-pkcs11-agent.cjs'),
    join(here, '..', '..', '..', 'src', 'bin', 'cargo-pkcs11-agent.cjs'),
  ]
  const bin = candidates.find((c) => existsSync(c)) ?? (candidates[0] as string)
  const child = spawn(process.execPath, [bin, 'run', '--foreground', '--socket', socketPath, ...args], {
    detached: true,
    stdio: ['ignore', log.fd, log.fd],
    env,
  })
  closeSync(log.fd)
  const started: StartedAgent = { pid: child.pid ?? -1, logPath, offset: log.offset, exit: undefined }
  child.once('exit', (code, signal) => {
    started.exit = code ?? 128 + (signal === null ? 0 : (constants.signals[signal] ?? 0))
  })
  child.once('error', () => {
    started.exit ??= 127
  })
  // The exit listener keeps working while the shim waits (its timers hold the loop); once connected,
  // a detached, unreferenced child outlives the shim.
  child.unref()
  return started
}

/** What the agent wrote since it was started: the reason it stopped, in its own words. */
async function linesSince(agent: StartedAgent): Promise<string[]> {
  const { readFileSync } = await import('node:fs')
  let text = ''
  try {
    text = readFileSync(agent.logPath).subarray(agent.offset).toString('utf8')
  } catch {
    return []
  }
  return text
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l !== '')
    .slice(-LIMITS.agentExitLogLines)
}

export async function connectOrStart(
  socketPath: string,
  env: NodeJS.ProcessEnv,
  onNotice: (text: string) => void,
): Promise<AgentConnection> {
  try {
    return await AgentConnection.connect(socketPath)
  } catch (error) {
    const code =
      error instanceof AgentError ? (error.cause as NodeJS.ErrnoException | undefined)?.code : undefined
    if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw error
    if (autostartDisabled(env)) {
      throw new AgentError(
        'AGENT_UNREACHABLE',
        `The cargo-pkcs11-agent is not running (no agent at ${socketPath}) and autostart is disabled`,
        {
          cause: error,
          remedy:
            'Start it with `cargo-pkcs11-agent run`, or unset CARGO_PKCS11_AGENT_NO_AUTOSTART so the provider starts it',
          data: { socket: socketPath },
        },
      )
    }
  }
  onNotice(`starting cargo-pkcs11-agent on ${socketPath}`)
  return await waitForStartedAgent(socketPath, await startAgent(socketPath, env))
}

/**
 * Connects to the agent just started, polling until it listens. An agent that exits first ends the
 * wait at once, with the lines it wrote to its log as the message.
 */
export async function waitForStartedAgent(socketPath: string, agent: StartedAgent): Promise<AgentConnection> {
  const deadline = Date.now() + LIMITS.agentStartWaitMs
  let last: unknown
  while (Date.now() < deadline) {
    try {
      return await AgentConnection.connect(socketPath, 500)
    } catch (error) {
      last = error
    }
    if (agent.exit !== undefined) {
      // Another agent may have won the race for the socket (AGENT_ALREADY_RUNNING): try it once more.
      try {
        return await AgentConnection.connect(socketPath, 500)
      } catch {
        // it really is gone
      }
      // cargo prints the message as it is: the agent's own lines, with their line breaks.
      const lines = await linesSince(agent)
      throw new AgentError(
        'AGENT_UNREACHABLE',
        `The cargo-pkcs11-agent it started exited (status ${agent.exit}) before listening on ${socketPath}` +
          (lines.length === 0 ? '' : `:\n${lines.join('\n')}`),
        {
          remedy: `Fix what the agent says (its log: ${agent.logPath}), then run the cargo command again`,
          data: { socket: socketPath },
        },
      )
    }
    await new Promise((r) => setTimeout(r, 25))
  }
  const base = unreachable(socketPath, (last as AgentError | undefined)?.cause ?? last)
  throw new AgentError(
    'AGENT_UNREACHABLE',
    `The cargo-pkcs11-agent did not start on ${socketPath} within ${LIMITS.agentStartWaitMs} ms`,
    {
      cause: base,
      remedy: `See its log ${agent.logPath}, or run \`cargo-pkcs11-agent run --foreground\` to see why it does not start`,
      data: { socket: socketPath },
    },
  )
}
