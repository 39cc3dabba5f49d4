/**
 * How every command takes its arguments: one usage line per command (shown by `help <command>`,
 * `<command> --help` and every usage error) and one strict parser. Parse, then validate, then act:
 * a command sees typed values or exits 2 with its usage line as the remedy.
 */
import { parseArgs } from 'node:util'

import { AgentError } from '../lib/errors.js'
import { closest } from '../lib/suggest.js'

export const BIN = 'cargo-pkcs11-agent'

/** How keygen, list and pubkey name a token: from the config, or by module and token flags. */
export const TARGET_USAGE =
  '[--config FILE] [--token NAME | --module NAME|PATH [--token-label L] [--serial S]] [--pin-env VAR | --pin-file FILE]'

/** Usage lines after the program name. Kept apart from the commands so `help` loads none of them. */
export const USAGE = Object.freeze({
  run: 'run [--config FILE] [--socket PATH] [--foreground]',
  status: 'status [--config FILE] [--socket PATH] [--json]',
  stop: 'stop [--config FILE] [--socket PATH]',
  reload: 'reload [--config FILE] [--socket PATH]',
  lock: 'lock [--config FILE] [--socket PATH]',
  release: 'release [--config FILE] [--socket PATH]',
  log: 'log [--follow] [--json] [-n N] [--file PATH] [--config FILE]',
  keygen: `keygen ${TARGET_USAGE} --label K [--id HEX] [--force] [--json]`,
  list: `list ${TARGET_USAGE} [--login] [--json]`,
  pubkey: `pubkey ${TARGET_USAGE} (--label K | --id HEX) [--json | --format k3|pid|hex|json] [--attest]`,
  setup:
    'setup [--config FILE] [--token NAME] [--module M (--token-label L | --serial S)] [--kind yubikey|tpm|hsm|softhsm] ' +
    '[--pin-source tty|pinentry|env|file|none] [--pin-env VAR] [--pin-file FILE] [--label cargo] [--id HEX] ' +
    '[--registry NAME --index URL [--confirm touch|prompt|none]] [--write-cargo-config] [--force] [--regenerate-key [--confirm-destroy K3PID]] ' +
    '[--read-slot 9a] [--mutation-slot 9c] [--touch-policy always|cached|never] [--pin-policy never|once|always] ' +
    '[--keep-default-management-key] [--certificate]',
  doctor: 'doctor [--config FILE] [--socket PATH] [--json]',
  'install-service': 'install-service [--config FILE] [--allow-network] [--dry-run] [--no-start] [--force]',
  'uninstall-service': 'uninstall-service [--dry-run] [--no-stop]',
  completions: 'completions bash|zsh|fish',
  man: 'man [--output FILE]',
  verify:
    'verify TOKEN|- (--public-key k3.public.… | --keys FILE) --url URL [--operation read|publish|yank|unyank|owners] [--name N] [--vers V] [--cksum C] [--subject S] [--max-age SECONDS] [--no-time-check] [--strict-low-s] [--json]' +
    ' | verify --attestation FILE|- --roots PEMFILE --public-key k3.public.… [--require-touch always,cached] [--require-pin once,always] [--json]',
  gateway:
    'gateway [--config FILE] [--listen HOST:PORT] [--public-url URL] [--upstream URL] [--keys FILE] [--upstream-token-file FILE | --upstream-token-env VAR] [--max-age SECONDS]',
} as const)

/** An option as a usage line writes it. */
export interface UsageOption {
  readonly name: string
  /** Takes a value (`--config FILE`), as opposed to a flag (`--json`). */
  readonly value: boolean
  /** Fixed choices from the usage line (`--format k3|pid|hex|json`). */
  readonly choices: readonly string[]
  /** The value is a path. */
  readonly files: boolean
}

/** Options whose value is a path. */
const FILE_VALUES = /^(FILE|PATH|NAME\|PATH)$/

/** Reads options and their values off a usage line: `--opt`, `-n N`, `--opt VALUE`, `--opt a|b|c`. */
export function usageOptions(usage: string): UsageOption[] {
  const options = new Map<string, UsageOption>()
  for (const match of usage.matchAll(/(?<![\w-])(--?[a-z][a-z0-9-]*)(?: ([^\s[\]()]+))?/g)) {
    const option = match[1] as string
    const next = match[2]
    const value = next !== undefined && !next.startsWith('-') && next !== '|'
    const choices = value && /^[a-z0-9]+(\|[a-z0-9]+)+$/.test(next) ? next.split('|') : []
    if (!options.has(option))
      options.set(option, { name: option, value, choices, files: value && FILE_VALUES.test(next) })
  }
  return [...options.values()]
}

/**
 * The parser's specs for the long options of a usage line, so a command whose values are read by
 * name (setup, the device-target options) cannot take an option its usage line does not show.
 */
export function usageOptionSpecs(usage: string): OptionSpecs {
  return Object.fromEntries(
    usageOptions(usage)
      .filter((o) => o.name.startsWith('--'))
      .map((o) => [o.name.slice(2), { type: o.value ? 'string' : 'boolean' }]),
  )
}

/** A USAGE error (exit status 2) whose remedy is the command's usage line. */
export function usageError(message: string, usage: string): AgentError {
  return new AgentError('USAGE', message, { remedy: `Usage: ${BIN} ${usage}` })
}

/** `value` when it is one of `allowed`; else a usage error naming the flag and the choices. */
export function oneOf<const T extends string>(
  value: string,
  allowed: readonly T[],
  flag: string,
  usage: string,
): T {
  if (!(allowed as readonly string[]).includes(value))
    throw usageError(`${flag} must be one of ${allowed.join(', ')}; got '${value}'`, usage)
  return value as T
}

export type OptionSpecs = Record<string, { readonly type: 'string' | 'boolean'; readonly short?: string }>

interface StrictConfig<O extends OptionSpecs> {
  args: string[]
  options: O
  strict: true
  allowPositionals: boolean
}

export type ParsedCommandArgs<O extends OptionSpecs> = ReturnType<typeof parseArgs<StrictConfig<O>>>

/**
 * Strict `node:util` parseArgs: an unknown option, a missing value or (unless `positionals`) a stray
 * argument is a usage error; a mistyped long option gets a "did you mean" hint.
 */
export function parseCommandArgs<const O extends OptionSpecs>(
  argv: readonly string[],
  options: O,
  usage: string,
  { positionals = false }: { positionals?: boolean } = {},
): ParsedCommandArgs<O> {
  try {
    return parseArgs<StrictConfig<O>>({
      args: [...argv],
      options,
      strict: true,
      allowPositionals: positionals,
    })
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    if ((error as NodeJS.ErrnoException).code !== 'ERR_PARSE_ARGS_UNKNOWN_OPTION')
      throw usageError(message, usage)
    // Node appends advice about "--" for positional arguments; the hint is more to the point.
    const unknown = /'(--?[^']+)'/.exec(message)?.[1]
    const hint =
      unknown === undefined
        ? undefined
        : closest(unknown.replace(/^-+/, '').split('=')[0] ?? '', Object.keys(options))
    throw usageError(
      `${message.split('. ')[0] ?? message}${hint === undefined ? '' : ` (did you mean --${hint}?)`}`,
      usage,
    )
  }
}
