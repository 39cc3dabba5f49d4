/**
 * THE COMMAND TABLE: every command's name, usage line (src/cli/args.ts USAGE) and one-line summary,
 * and the exit statuses. `help`, `<command> --help`, the completions and the man page are generated
 * from it (src/cli/main.ts, src/cli/completions.ts). It imports no command module, so printing help
 * loads none of them; main.ts says how each command is loaded.
 */
import { USAGE } from './args.js'

export type CommandName = keyof typeof USAGE

export interface CommandEntry {
  readonly usage: string
  readonly summary: string
}

/**
 * One summary per usage line. To add a command: its usage line (args.ts), its summary here and its
 * loader (main.ts LOADERS); the compiler checks that each command has all three. Keep the order as
 * `help` shows it: agent lifecycle, keys, diagnostics, registry side.
 */
const SUMMARIES: Readonly<Record<CommandName, string>> = {
  run: 'start the agent (detached unless --foreground)',
  stop: 'stop the running agent (it finishes requests in flight)',
  reload: 're-read the config (checked first), forget cached PINs, release the devices',
  status: 'what the running agent holds: tokens, sessions, cached PINs',
  lock: 'forget every cached PIN and log the tokens out',
  release: 'close the device sessions so other programs can use the device',
  log: 'show the audit log: one line per signing decision',
  keygen: 'generate a P-384 key on the device (refuses to overwrite without --force)',
  list: 'the P-384 keys on a token (or every token of a module) with their k3.public',
  pubkey: 'print the k3.public of a device key, to register with the registry',
  setup: 'first run: find a token (or make a SoftHSM one), generate or reuse the key, write the configs',
  doctor: 'explain what is wrong, one check per line, with the fix',
  'install-service': 'install and start the agent as a systemd user unit / launchd agent',
  'uninstall-service': 'stop and remove the service that install-service installed',
  verify: 'check a token as a registry must (exit 0 valid, 1 invalid, 2 usage)',
  completions: 'print a shell completion script (bash, zsh or fish) for this command table',
  man: 'print the manual page (roff), generated from this command table',
  gateway: 'a reverse proxy that checks RFC 3231 tokens in front of a bearer-token registry',
}

export const COMMANDS: Readonly<Record<CommandName, CommandEntry>> = Object.freeze(
  Object.fromEntries(
    Object.entries(SUMMARIES).map(([name, summary]) => [
      name,
      { usage: USAGE[name as CommandName], summary },
    ]),
  ) as Record<CommandName, CommandEntry>,
)

/** Exit statuses of every command (also in the man page and docs/cli.md). */
export const EXIT_CODES: readonly (readonly [number, string])[] = Object.freeze([
  [0, 'success (doctor: no check failed; verify: the token is valid)'],
  [1, 'failure: the message says what happened and what to do (doctor: a check failed; verify: invalid)'],
  [2, 'usage error: unknown command or option, missing or bad argument'],
])
