/**
 * `cargo-pkcs11-agent <command> …`: the management CLI and the agent share one binary.
 *
 * Each command module is imported only when that command runs, so `status` or `verify` never pay
 * for loading the PKCS#11 binding and the agent. Exit codes: EXIT_CODES in commands.ts (docs/cli.md).
 */
import { AgentError, toAgentError } from '../lib/errors.js'
import { packageVersion } from '../lib/package-files.js'
import { closest } from '../lib/suggest.js'
import { BIN } from './args.js'
import { COMMANDS, EXIT_CODES, type CommandName } from './commands.js'
import { nativeBindingError, nativeBindingMissing } from './native.js'

/** A command receives the arguments after its name and resolves to the process exit code. */
export type Command = (argv: readonly string[]) => Promise<number>

/** How each command of the table (src/cli/commands.ts) is loaded: its module, imported only when it runs. */
const LOADERS: Readonly<Record<CommandName, () => Promise<Command>>> = {
  run: async () => (await import('./run.js')).run,
  stop: async () => (await import('./stop.js')).stop,
  reload: async () => (await import('./stop.js')).reload,
  status: async () => (await import('./status.js')).status,
  lock: async () => (await import('./lock.js')).lock,
  release: async () => (await import('./release.js')).release,
  log: async () => (await import('./log.js')).log,
  keygen: async () => (await import('./keygen.js')).keygen,
  list: async () => (await import('./list.js')).list,
  pubkey: async () => (await import('./pubkey.js')).pubkey,
  setup: async () => (await import('./setup.js')).setup,
  doctor: async () => (await import('./doctor.js')).doctor,
  'install-service': async () => (await import('./install-service.js')).installService,
  'uninstall-service': async () => (await import('./install-service.js')).uninstallService,
  verify: async () => (await import('./verify.js')).verify,
  completions: async () => (await import('./completions.js')).completions,
  man: async () => (await import('./completions.js')).manPage,
  gateway: async () => (await import('./gateway.js')).gateway,
}

/** The commands that load the PKCS#11 binding: checked for a missing native build first (src/cli/native.ts). */
const NATIVE: ReadonlySet<CommandName> = new Set(['run', 'keygen', 'list', 'pubkey', 'setup'])

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
      // Commands whose output is data take `--json` (one JSON document on stdout).
      .filter(([, entry]) => /\[--json\b/.test(entry.usage))
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

export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv
  try {
    if (
      name === undefined ||
      name === '--help' ||
      name === '-h' ||
      (name === 'help' && [undefined, '--help', '-h'].includes(rest[0]))
    ) {
      process.stdout.write(helpText())
      return name === undefined ? 2 : 0
    }
    if (name === '--version' || name === '-V') {
      process.stdout.write(`${BIN} ${packageVersion()}\n`)
      return 0
    }
    const helpTopic = name === 'help' ? rest[0] : undefined
    const command = helpTopic ?? name
    if (!Object.hasOwn(COMMANDS, command)) {
      const hint = helpTopic === undefined ? closest(command, Object.keys(COMMANDS)) : undefined
      throw usageError(
        `unknown command '${command}'${hint === undefined ? '' : ` (did you mean '${hint}'?)`}`,
      )
    }
    const entry = COMMANDS[command as CommandName]
    if (helpTopic !== undefined || rest[0] === '--help' || rest[0] === '-h') {
      process.stdout.write(`usage: ${BIN} ${entry.usage}\n  ${entry.summary}\n`)
      return 0
    }
    if (NATIVE.has(command as CommandName)) {
      const missing = nativeBindingMissing()
      if (missing !== undefined) throw missing
    }
    const run = await LOADERS[command as CommandName]()
    return await run(rest)
  } catch (error) {
    // Every failure is printed the same way and maps to the exit code (EXIT_CODES).
    const e = toAgentError(nativeBindingError(error) ?? error)
    process.stderr.write(`${BIN}: ${e.describe()}\n`)
    return e.code === 'USAGE' ? 2 : 1
  }
}
