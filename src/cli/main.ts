/**
 * `cargo-pkcs11-agent <command> …`: the management CLI and the agent share one binary.
 *
 * Each command module is imported only when that command runs, so `status` or `verify` never pay
 * for loading the PKCS#11 binding and the agent. Exit codes: 0 success, 1 failure, 2 usage error.
 */
import { readFileSync } from 'node:fs'

import { AgentError, toAgentError } from '../lib/errors.js'
import { packageFile } from '../lib/package-files.js'
import { closest } from '../lib/suggest.js'
import { BIN, USAGE } from './args.js'

/** A command receives the arguments after its name and resolves to the process exit code. */
export type Command = (argv: readonly string[]) => Promise<number>

interface CommandEntry {
  readonly usage: string
  readonly summary: string
  readonly load: () => Promise<Command>
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
  },
  list: {
    usage: USAGE.list,
    summary: 'the P-384 keys on a token (or every token of a module) with their k3.public',
    load: async () => (await import('./list.js')).list,
  },
  pubkey: {
    usage: USAGE.pubkey,
    summary: 'print the k3.public of a device key, to register with the registry',
    load: async () => (await import('./pubkey.js')).pubkey,
  },
  setup: {
    usage: USAGE.setup,
    summary: 'first run: find a token (or make a SoftHSM one), generate or reuse the key, write the configs',
    load: async () => (await import('./setup.js')).setup,
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
  verify: {
    usage: USAGE.verify,
    summary: 'check a token as a registry must (exit 0 valid, 1 invalid, 2 usage)',
    load: async () => (await import('./verify.js')).verify,
  },
  gateway: {
    usage: USAGE.gateway,
    summary: 'a reverse proxy that checks RFC 3231 tokens in front of a bearer-token registry',
    load: async () => (await import('./gateway.js')).gateway,
  },
})

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
    `${BIN} --version prints the version.`,
  ]
  return lines.join('\n') + '\n'
}

function version(): string {
  const pkg = JSON.parse(readFileSync(packageFile('package.json'), 'utf8')) as {
    version?: string
  }
  return pkg.version ?? 'unknown'
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
      process.stdout.write(`${BIN} ${version()}\n`)
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
    const command = await entry.load()
    return await command(rest)
  } catch (error) {
    return reportError(error)
  }
}
