/**
 * `cargo-pkcs11-agent <command> …`: the management CLI and the agent share one binary.
 *
 * Each command module is imported only when that command runs, so `status` or `verify` never pay
 * for loading the PKCS#11 binding and the agent. Exit codes: EXIT_CODES below (docs/cli.md).
 */
import { AgentError, toAgentError } from '../lib/errors.js'
import { packageVersion } from '../lib/package-files.js'
import { closest } from '../lib/suggest.js'
import { BIN, USAGE } from './args.js'
import { nativeBindingError, nativeBindingMissing } from './native.js'

/** A command receives the arguments after its name and resolves to the process exit code. */
export type Command = (argv: readonly string[]) => Promise<number>

interface CommandEntry {
  readonly usage: string
  readonly summary: string
  readonly load: () => Promise<Command>
  /** Loads the PKCS#11 binding: checked for a missing native build first (src/cli/native.ts). */
  readonly native?: true
}

/**
 * THE COMMAND TABLE. To add a command: one entry, its module exporting a `Command`.
 * Keep the order as `help` shows it: agent lifecycle, keys, diagnostics, registry side.
 */
export const COMMANDS: Readonly<Record<string, CommandEntry>> = Object.freeze({
  run: {
    usage: USAGE.run,
    summary: 'start the agent (detached unless --foreground)',
    load: async () => (await import('./run.js')).run,
    native: true,
  },
  stop: {
    usage: USAGE.stop,
    summary: 'stop the running agent (it finishes requests in flight)',
    load: async () => (await import('./stop.js')).stop,
  },
  reload: {
    usage: USAGE.reload,
    summary: 're-read the config (checked first), forget cached PINs, release the devices',
    load: async () => (await import('./stop.js')).reload,
  },
  status: {
    usage: USAGE.status,
    summary: 'what the running agent holds: tokens, sessions, cached PINs',
    load: async () => (await import('./status.js')).status,
  },
  lock: {
    usage: USAGE.lock,
    summary: 'forget every cached PIN and log the tokens out',
    load: async () => (await import('./lock.js')).lock,
  },
  release: {
    usage: USAGE.release,
    summary: 'close the device sessions so other programs can use the device',
    load: async () => (await import('./release.js')).release,
  },
  log: {
    usage: USAGE.log,
    summary: 'show the audit log: one line per signing decision',
    load: async () => (await import('./log.js')).log,
  },
  keygen: {
    usage: USAGE.keygen,
    summary: 'generate a P-384 key on the device (refuses to overwrite without --force)',
    load: async () => (await import('./keygen.js')).keygen,
    native: true,
  },
  list: {
    usage: USAGE.list,
    summary: 'the P-384 keys on a token (or every token of a module) with their k3.public',
    load: async () => (await import('./list.js')).list,
    native: true,
  },
  pubkey: {
    usage: USAGE.pubkey,
    summary: 'print the k3.public of a device key, to register with the registry',
    load: async () => (await import('./pubkey.js')).pubkey,
    native: true,
  },
  setup: {
    usage: USAGE.setup,
    summary: 'first run: find a token (or make a SoftHSM one), generate or reuse the key, write the configs',
    load: async () => (await import('./setup.js')).setup,
    native: true,
  },
  doctor: {
    usage: USAGE.doctor,
    summary: 'explain what is wrong, one check per line, with the fix',
    load: async () => (await import('./doctor.js')).doctor,
  },
  'install-service': {
    usage: USAGE['install-service'],
    summary: 'install and start the agent as a systemd user unit / launchd agent',
    load: async () => (await import('./install-service.js')).installService,
  },
  'uninstall-service': {
    usage: USAGE['uninstall-service'],
    summary: 'stop and remove the service that install-service installed',
    load: async () => (await import('./install-service.js')).uninstallService,
  },
  verify: {
    usage: USAGE.verify,
    summary: 'check a token as a registry must (exit 0 valid, 1 invalid, 2 usage)',
    load: async () => (await import('./verify.js')).verify,
  },
  completions: {
    usage: USAGE.completions,
    summary: 'print a shell completion script (bash, zsh or fish) for this command table',
    load: async () => (await import('./completions.js')).completions,
  },
  man: {
    usage: USAGE.man,
    summary: 'print the manual page (roff), generated from this command table',
    load: async () => (await import('./completions.js')).manPage,
  },
  gateway: {
    usage: USAGE.gateway,
    summary: 'a reverse proxy that checks RFC 3231 tokens in front of a bearer-token registry',
    load: async () => (await import('./gateway.js')).gateway,
  },
})

/** Exit statuses of every command (also in the man page and docs/cli.md). */
export const EXIT_CODES: readonly (readonly [number, string])[] = Object.freeze([
  [0, 'success (doctor: no check failed; verify: the token is valid)'],
  [1, 'failure: the message says what happened and what to do (doctor: a check failed; verify: invalid)'],
  [2, 'usage error: unknown command or option, missing or bad argument'],
])

/** Commands whose output is data take `--json` (one JSON document on stdout). */
export function takesJson(usage: string): boolean {
  return /\[--json\b/.test(usage)
}

function helpText(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length))
  const lines = [
    `${BIN}: hardware-backed RFC 3231 asymmetric tokens for cargo`,
    '',
    `usage: ${BIN} <command> [options]`,
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, entry]) => `  ${name.padEnd(width)}  ${entry.summary}`),
    `  ${'help'.padEnd(width)}  this text, or \`help <command>\` for its options`,
    '',
    `--json on every command whose output is data: ${Object.entries(COMMANDS)
      .filter(([, entry]) => takesJson(entry.usage))
      .map(([name]) => name)
      .join(', ')}.`,
    '',
    'exit status:',
    ...EXIT_CODES.map(([code, meaning]) => `  ${code}  ${meaning}`),
    '',
    `${BIN} --version prints the version.`,
  ]
  return lines.join('\n') + '\n'
}

function usageError(message: string): AgentError {
  return new AgentError('USAGE', message, { remedy: `Run \`${BIN} help\` for the list of commands` })
}

/** Prints a failure the way every command does, and maps it to the exit code. */
export function reportError(error: unknown): number {
  const e = toAgentError(error)
  process.stderr.write(`${BIN}: ${e.describe()}\n`)
  return e.code === 'USAGE' ? 2 : 1
}

export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv
  try {
    if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
      const topic = name === 'help' ? rest[0] : undefined
      if (topic === undefined) {
        process.stdout.write(helpText())
        return name === undefined ? 2 : 0
      }
      const entry = Object.hasOwn(COMMANDS, topic) ? COMMANDS[topic] : undefined
      if (entry === undefined) throw usageError(`unknown command '${topic}'`)
      process.stdout.write(`usage: ${BIN} ${entry.usage}\n  ${entry.summary}\n`)
      return 0
    }
    if (name === '--version' || name === '-V') {
      process.stdout.write(`${BIN} ${packageVersion()}\n`)
      return 0
    }
    const entry = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined
    if (entry === undefined) {
      const hint = closest(name, Object.keys(COMMANDS))
      throw usageError(`unknown command '${name}'${hint === undefined ? '' : ` (did you mean '${hint}'?)`}`)
    }
    if (rest[0] === '--help' || rest[0] === '-h') {
      process.stdout.write(`usage: ${BIN} ${entry.usage}\n  ${entry.summary}\n`)
      return 0
    }
    if (entry.native === true) {
      const missing = nativeBindingMissing()
      if (missing !== undefined) throw missing
    }
    const command = await entry.load()
    return await command(rest)
  } catch (error) {
    return reportError(nativeBindingError(error) ?? error)
  }
}
