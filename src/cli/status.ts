/** `cargo-pkcs11-agent status [--config FILE] [--socket PATH] [--json]`: what the running agent holds. */
import { loadConfig } from '../config/load.js'
import { resolveConfigPath, resolveSocketPath } from '../config/paths.js'
import { AgentError, toAgentError } from '../lib/errors.js'
import { callAgent } from '../protocol/client.js'
import type { KeyRefInfo } from '../protocol/methods.js'
import { parseCommandArgs, USAGE } from './args.js'

/**
 * The agent's socket for the commands that only talk to the agent, chosen as `run` and `doctor`
 * choose it (docs/configuration.md, "Socket"): `--socket`, `$CARGO_PKCS11_AGENT_SOCK`, the config's
 * `[agent] socket`, the default. The config (`--config`, `$CARGO_PKCS11_AGENT_CONFIG`, else the
 * default file if there is one) is read only when neither of the first two names the socket.
 */
export function agentSocket(values: { socket?: string | undefined; config?: string | undefined }): string {
  const given = resolveSocketPath(values.socket, undefined)
  if (given.source !== 'default') return given.path
  const configPath = resolveConfigPath(values.config)
  let configured: string | undefined
  try {
    configured = loadConfig(configPath.path).agent.socket
  } catch (error) {
    const e = toAgentError(error)
    if (e.code !== 'CONFIG_MISSING' || configPath.source !== 'default')
      throw new AgentError(e.code, e.message, {
        cause: e,
        remedy: `${e.remedy ?? 'Fix the file'}; or pass --socket PATH, since the agent's socket is read from this file`,
      })
  }
  return resolveSocketPath(undefined, configured).path
}

/** `--config FILE` and `--socket PATH`: the agent's socket (`agentSocket`). */
export function socketArgs(argv: readonly string[], usage: string): { socket: string } {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' }, socket: { type: 'string' } }, usage)
  return { socket: agentSocket(values) }
}

function yes(value: boolean): string {
  return value === true ? 'yes' : 'no'
}

export async function status(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    { config: { type: 'string' }, socket: { type: 'string' }, json: { type: 'boolean' } },
    USAGE.status,
  )
  const socket = agentSocket(values)
  const result = await callAgent(socket, 'status')
  if (values.json === true) {
    process.stdout.write(JSON.stringify(result, null, 2) + '\n')
    return 0
  }
  const lines = [
    `agent pid ${result.pid}`,
    `socket   ${socket}`,
    `config   ${result.config ?? '(none)'}`,
    `headless ${yes(result.headless)}`,
    'tokens:',
  ]
  for (const t of result.tokens) {
    const s = t.status
    const flagsText = [
      s?.pinCountLow === true ? 'PIN count low' : '',
      s?.pinFinalTry === true ? 'FINAL PIN try' : '',
      s?.pinLocked === true ? 'PIN LOCKED' : '',
    ]
      .filter((x) => x !== '')
      .join(', ')
    lines.push(
      `  ${t.name}: module ${t.module}, ` +
        (s === undefined
          ? `unavailable (${t.error?.message ?? 'unknown'})`
          : `present ${yes(s.present)}, logged in ${yes(s.loggedIn)}, sessions ${s.sessionsOpen}`) +
        `, PIN cached ${yes(t.pinCached)}, PIN source ${t.pinSource}${flagsText === '' ? '' : `, ${flagsText}`}`,
    )
  }
  lines.push('registries:')
  const key = (k: KeyRefInfo): string => `${k.token}/${k.label ?? ''}${k.id === undefined ? '' : `#${k.id}`}`
  for (const r of result.registries) {
    lines.push(
      `  ${r.name}: ${r.index} read ${key(r.readKey)}, mutations ${key(r.mutationKey)}, confirm ${r.confirmReason}, ${r.mutationsLastHour}/${r.mutationsPerHour} mutations this hour`,
    )
    if (r.confirmWarning !== undefined) lines.push(`    warning: ${r.confirmWarning}`)
  }
  process.stdout.write(lines.join('\n') + '\n')
  return 0
}
