/** `cargo-pkcs11-agent status [--socket PATH] [--json]`: what the running agent holds. */
import { callAgent } from '../protocol/client.js'
import type { KeyRefInfo } from '../protocol/methods.js'
import { resolveSocketPath } from '../config/paths.js'
import { parseCommandArgs, USAGE } from './args.js'

/** The agent's socket (`--socket PATH`, else the default), for commands that only talk to the agent. */
export function socketArgs(argv: readonly string[], usage: string): { socket: string } {
  const { values } = parseCommandArgs(argv, { socket: { type: 'string' } }, usage)
  return { socket: resolveSocketPath(values.socket, undefined).path }
}

function yes(value: boolean): string {
  return value === true ? 'yes' : 'no'
}

export async function status(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    { socket: { type: 'string' }, json: { type: 'boolean' } },
    USAGE.status,
  )
  const socket = resolveSocketPath(values.socket, undefined).path
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
