/**
 * `cargo-pkcs11-agent stop|reload [--config FILE] [--socket PATH]`: what `ssh-agent -k` and
 * `gpgconf --kill` / `--reload gpg-agent` do. `stop` sends SIGTERM (the agent finishes the requests
 * in flight and exits); the pid comes from the agent itself (`ping` on its 0600 socket), not from a
 * pid file. `reload` asks over the socket, as SIGHUP does for systemd's ExecReload, and gets the
 * agent's verdict: the config re-read, or refused with the reason (src/agent/agent.ts `reload`).
 */
import { loadConfig } from '../config/load.js'
import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { callAgent } from '../protocol/client.js'
import { USAGE } from './args.js'
import { socketArgs } from './status.js'

async function agentPid(socket: string, verb: string): Promise<number> {
  try {
    return (await callAgent(socket, 'ping')).pid
  } catch (error) {
    const e = toAgentError(error)
    if (e.code !== 'AGENT_UNREACHABLE') throw e
    throw new AgentError('AGENT_UNREACHABLE', `No agent is running on ${socket}: nothing to ${verb}`, {
      cause: e,
      remedy: 'Pass --socket (or set CARGO_PKCS11_AGENT_SOCK) if it listens elsewhere; `status` shows it',
      data: { socket },
    })
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export async function stop(argv: readonly string[]): Promise<number> {
  const { socket } = socketArgs(argv, USAGE.stop)
  const pid = await agentPid(socket, 'stop')
  process.kill(pid, 'SIGTERM')
  const deadline = Date.now() + LIMITS.agentStopWaitMs
  while (alive(pid)) {
    if (Date.now() > deadline)
      throw new AgentError(
        'TIMEOUT',
        `The agent (pid ${pid}) did not stop within ${LIMITS.agentStopWaitMs} ms`,
        {
          remedy: `A device call may be hanging; \`kill -KILL ${pid}\` ends it at once`,
        },
      )
    await new Promise((r) => setTimeout(r, 50))
  }
  process.stdout.write(`stopped the agent (pid ${pid}) on ${socket}\n`)
  return 0
}

export async function reload(argv: readonly string[]): Promise<number> {
  const { socket } = socketArgs(argv, USAGE.reload)
  await agentPid(socket, 'reload')
  const status = await callAgent(socket, 'status')
  // A config that does not load is reported here, where the user is, and not sent.
  if (status.config !== null) loadConfig(status.config)
  // The agent's verdict: a refusal (a weakening, a file that stopped loading) is thrown with its reason.
  await callAgent(socket, 'reload')
  process.stdout.write(
    `reloaded the agent (pid ${status.pid}): ${status.config === null ? 'configuration kept (it has no file)' : `configuration re-read from ${status.config}`}, cached PINs forgotten, devices released\n`,
  )
  return 0
}
