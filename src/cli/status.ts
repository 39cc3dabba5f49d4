/** `cargo-pkcs11-agent status [--socket PATH] [--json]`: what the running agent holds. */
import { callAgent } from '../protocol/client.js'
import { resolveSocketPath } from '../config/paths.js'
import { parseCommandArgs, USAGE } from './args.js'

/** `--socket PATH` plus the command's boolean flags, for commands that only talk to the agent. */
export function socketArgs(
  argv: readonly string[],
  usage: string,
  extra: Record<string, { type: 'boolean' }> = {},
): { socket: string; flags: Record<string, boolean> } {
  const { values } = parseCommandArgs(argv, { socket: { type: 'string' }, ...extra }, usage)
  const flags: Record<string, boolean> = {}
  for (const key of Object.keys(extra)) flags[key] = (values as Record<string, unknown>)[key] === true
  return { socket: resolveSocketPath(values.socket as string | undefined, undefined).path, flags }
}

function yes(value: unknown): string {
  return value === true ? 'yes' : 'no'
}

export async function status(argv: readonly string[]): Promise<number> {
  const { socket, flags } = socketArgs(argv, USAGE.status, { json: { type: 'boolean' } })
  const result = await callAgent(socket, 'status')
  if (flags['json'] === true) {
    process.stdout.write(JSON.stringify(result, null, 2) + '\n')
    return 0
  }
  const lines = [
    `agent pid ${String(result['pid'])}`,
    `socket   ${socket}`,
    `config   ${String(result['config'] ?? '(none)')}`,
    `headless ${yes(result['headless'])}`,
    'tokens:',
  ]
  for (const t of (result['tokens'] as Record<string, unknown>[] | undefined) ?? []) {
    const s = t['status'] as Record<string, unknown> | undefined
    const err = t['error'] as { message?: string } | undefined
    const flagsText =
      s === undefined
        ? ''
        : [
            s['pinCountLow'] === true ? 'PIN count low' : '',
            s['pinFinalTry'] === true ? 'FINAL PIN try' : '',
            s['pinLocked'] === true ? 'PIN LOCKED' : '',
          ]
            .filter((x) => x !== '')
            .join(', ')
    lines.push(
      `  ${String(t['name'])}: module ${String(t['module'])}, ` +
        (s === undefined
          ? `unavailable (${err?.message ?? 'unknown'})`
          : `present ${yes(s['present'])}, logged in ${yes(s['loggedIn'])}, sessions ${String(s['sessionsOpen'])}`) +
        `, PIN cached ${yes(t['pinCached'])}, PIN source ${String(t['pinSource'])}${flagsText === '' ? '' : `, ${flagsText}`}`,
    )
  }
  lines.push('registries:')
  for (const r of (result['registries'] as Record<string, unknown>[] | undefined) ?? []) {
    const read = r['readKey'] as { token: string; label?: string; id?: string }
    const mut = r['mutationKey'] as { token: string; label?: string; id?: string }
    const key = (k: { token: string; label?: string; id?: string }): string =>
      `${k.token}/${k.label ?? ''}${k.id === undefined ? '' : `#${k.id}`}`
    lines.push(
      `  ${String(r['name'])}: ${String(r['index'])} read ${key(read)}, mutations ${key(mut)}, confirm ${String(r['confirm'])}, ${String(r['mutationsLastHour'])}/${String(r['mutationsPerHour'])} mutations this hour`,
    )
  }
  process.stdout.write(lines.join('\n') + '\n')
  return 0
}
