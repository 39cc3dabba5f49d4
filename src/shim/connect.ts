/**
 * Finding the agent: connect, and when nothing listens start one in the background (unless
 * CARGO_PKCS11_AGENT_NO_AUTOSTART=1) and wait up to LIMITS.agentStartWaitMs for it.
 */
import { AgentConnection, unreachable } from '../protocol/client.js'
import { agentLogPath } from '../config/paths.js'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'

export function autostartDisabled(env: NodeJS.ProcessEnv): boolean {
  const value = env['CARGO_PKCS11_AGENT_NO_AUTOSTART']
  return value !== undefined && value !== '' && value !== '0' && value !== 'false'
}

async function startAgent(socketPath: string, env: NodeJS.ProcessEnv): Promise<string> {
  // Loaded only on this path: the common case (agent running) never pays for child_process.
  const [{ spawn }, { mkdirSync, openSync, closeSync, existsSync, realpathSync }, { dirname, join }] =
    await Promise.all([import('node:child_process'), import('node:fs'), import('node:path')])
  const logPath = agentLogPath(env)
  mkdirSync(dirname(logPath), { recursive: true, mode: 0o700 })
  const log = openSync(logPath, 'a', 0o600)
  // The agent's entry sits next to this shim's (dist/src/bin/), or — when the shim runs from its
  // CommonJS build (dist/cjs/src/bin/, tsconfig.shim.json) — in the ESM build three levels up.
  // Found from argv[1] rather than import.meta so the same source compiles to both formats.
  const here = dirname(realpathSync(process.argv[1] ?? '.'))
  const candidates = [
    join(here, 'cargo-pkcs11-agent.js'),
    join(here, '..', '..', '..', 'src', 'bin', 'cargo-pkcs11-agent.js'),
  ]
  const bin = candidates.find((c) => existsSync(c)) ?? (candidates[0] as string)
  // The pool size must come from the parent's environment (src/lib/threadpool.ts).
  const childEnv = {
    ...env,
    UV_THREADPOOL_SIZE: String(Math.max(LIMITS.uvThreadpoolSize, Number(env['UV_THREADPOOL_SIZE'] ?? 0))),
  }
  const child = spawn(process.execPath, [bin, 'run', '--foreground', '--socket', socketPath], {
    detached: true,
    stdio: ['ignore', log, log],
    env: childEnv,
  })
  closeSync(log)
  child.unref()
  return logPath
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
  const logPath = await startAgent(socketPath, env)
  const deadline = Date.now() + LIMITS.agentStartWaitMs
  let last: unknown
  while (Date.now() < deadline) {
    try {
      return await AgentConnection.connect(socketPath, 500)
    } catch (error) {
      last = error
      await new Promise((r) => setTimeout(r, 25))
    }
  }
  const base = unreachable(socketPath, (last as AgentError | undefined)?.cause ?? last)
  throw new AgentError(
    'AGENT_UNREACHABLE',
    `The cargo-pkcs11-agent did not start on ${socketPath} within ${LIMITS.agentStartWaitMs} ms`,
    {
      cause: base,
      remedy: `See its log ${logPath}, or run \`cargo-pkcs11-agent run --foreground\` to see why it does not start`,
      data: { socket: socketPath },
    },
  )
}
