/**
 * What each option of a usage line (src/cli/args.ts USAGE) does, in one line: `help <command>`,
 * `<command> --help` and the man page list them under the usage line. One text per option name;
 * where a command means something else by it, its own text. test/unit/cli-options.test.ts checks
 * that every option of every usage line has a text here, and that no text is left for an option
 * no usage line has.
 */
import { LIMITS } from '../lib/limits.js'
import { usageOptions } from './args.js'
import { COMMANDS, type CommandName } from './commands.js'

const AGENT_CONFIG = 'the agent config (default $XDG_CONFIG_HOME/cargo-pkcs11-agent/config.toml)'

/** One text per option name, as most commands mean it. */
export const OPTION_TEXTS: Readonly<Record<string, string>> = {
  '--config': AGENT_CONFIG,
  '--socket': "the agent's socket (else $CARGO_PKCS11_AGENT_SOCK, the config's [agent] socket, the default)",
  '--foreground': 'stay in the foreground and log to stderr (for systemd, launchd and containers)',
  '--json': 'one JSON document on stdout instead of text',
  '--follow': 'keep printing new lines as they are written',
  '-n': 'show the last N lines (default 20; 0 = all)',
  '--file': 'the audit log to read (default: the one the config names)',
  '--token': 'a token by its name in the config',
  '--module':
    'a PKCS#11 module by path or known name (softhsm, ykcs11, tpm2, opensc, p11-kit, p11-kit-client)',
  '--token-label': "with --module: the token's label",
  '--serial': "with --module: the token's serial number",
  '--pin-env': 'read the PIN from this environment variable',
  '--pin-file': 'read the PIN from this file (mode 0600, owned by you)',
  '--label': "the key's label (CKA_LABEL)",
  '--id': "the key's id (CKA_ID) in hex",
  '--force': 'replace an existing key of that label or id (asks for confirmation)',
  '--login': 'log in first, so private objects (and keys some tokens hide) are listed too',
  '--format': 'print only this form of the key: k3.public, k3.pid, the raw point in hex, or JSON',
  '--attest': "also print the key's PIV attestation chain (PEM), for a registry that requires it",
  '--kind': "the token's kind (and its default name in the config)",
  '--pin-source': 'where the agent gets the PIN of the new token',
  '--registry': "bind this registry's name (from cargo's config) to the key",
  '--index': "the registry's index URL exactly as cargo sends it (sparse+…/index/)",
  '--confirm': 'how publish, yank and owners are confirmed for this registry',
  '--write-cargo-config':
    "write cargo's credential-provider entry into $CARGO_HOME/config.toml instead of printing it",
  '--regenerate-key': 'replace the key on the device (needs --confirm-destroy with the old key)',
  '--confirm-destroy': 'the k3.pid of the key --regenerate-key may destroy',
  '--read-slot': 'YubiKey: the PIV slot of the read key (default 9a)',
  '--mutation-slot': 'YubiKey: the PIV slot of the mutation key (default 9c)',
  '--touch-policy': 'YubiKey: the touch policy of the mutation key (default always)',
  '--pin-policy': "YubiKey: the PIN policy of the mutation key (the read key's is once)",
  '--keep-default-management-key':
    'YubiKey: leave the factory management key as it is (else replaced by a PIN-protected random one)',
  '--certificate':
    'YubiKey: store a self-signed certificate in each slot, for tools that find keys by certificate',
  '--allow-network': 'let the unit reach the network (a network HSM or a TPM over TCP)',
  '--dry-run': 'print what would be written and run, change nothing',
  '--no-start': 'install the unit without starting it',
  '--no-stop': 'remove the unit without stopping the running agent',
  '--output': 'write to this file instead of stdout',
  '--public-key': 'the k3.public key the token must be signed by (with --attestation: the attested key)',
  '--keys': 'a keys file: one k3.public per line, with its user and optional subject',
  '--url': 'the index URL the token must be bound to, exactly as cargo sends it',
  '--operation': 'the operation the token must be for (default read)',
  '--name': 'the crate name a mutation token must carry',
  '--vers': 'the version a mutation token must carry',
  '--cksum': 'the checksum a publish token must carry',
  '--subject': 'the sub claim the registry requires',
  '--max-age': `how old a token may be, in seconds (default ${LIMITS.defaultTokenMaxAgeSeconds})`,
  '--no-time-check': 'skip the iat window (for recorded tokens); everything else is checked',
  '--strict-low-s': 'refuse a high-S signature (cargo-pkcs11-agent always signs low-S)',
  '--attestation': 'a PIV attestation chain (PEM) to check instead of a token',
  '--roots': 'the PEM file of the attestation roots to trust (the Yubico PIV CA)',
  '--require-touch': 'the touch policies the attested key may have',
  '--require-pin': 'the PIN policies the attested key may have',
  '--listen': 'the address the gateway listens on',
  '--public-url': 'the URL cargo reaches the gateway at (its index URL is derived from it)',
  '--upstream': 'the registry the gateway forwards to',
  '--upstream-token-file': "the file holding the upstream registry's bearer token (mode 0600)",
  '--upstream-token-env': "the environment variable holding the upstream registry's bearer token",
}

/** Where a command means something else by an option. */
const OWN_TEXTS: Readonly<Partial<Record<CommandName, Readonly<Record<string, string>>>>> = {
  setup: {
    '--config': 'the agent config to write (default: the one the agent reads)',
    '--token': 'the configured token to use, or the name for a new one',
    '--label': 'the key to reuse or generate on a PKCS#11 token (default cargo)',
    '--force': 'change a table of the configs that differs from what setup would write',
  },
  'install-service': { '--force': 'overwrite a unit that differs from the one this would write' },
  log: { '--config': `${AGENT_CONFIG}, for its audit-log path` },
  gateway: {
    '--config': "the gateway's TOML config (flags override it)",
    '--keys': 'the keys file: one k3.public per line, with its user and optional subject',
  },
}

/** `[option, text]` for every option of `command`'s usage line, in its order. */
export function optionTexts(command: CommandName): [string, string][] {
  return usageOptions(COMMANDS[command].usage).map(({ name }) => [
    name,
    OWN_TEXTS[command]?.[name] ?? OPTION_TEXTS[name] ?? '',
  ])
}

/** The options part of `help <command>`: one aligned line per option. */
export function optionHelp(command: CommandName): string {
  const texts = optionTexts(command)
  if (texts.length === 0) return ''
  const width = Math.max(...texts.map(([name]) => name.length))
  return `\noptions:\n${texts.map(([name, text]) => `  ${name.padEnd(width)}  ${text}\n`).join('')}`
}
