/**
 * The agent-config half of `setup`: which [tokens.NAME] to use (the configured one, one described by
 * flags, or a private SoftHSM store when no hardware is configured), the [registries.NAME] binding,
 * the whole result validated before anything touches a device, and writing the file.
 */
import {
  checkIndexUrl,
  PIN_SOURCES,
  TOKEN_KINDS,
  validateConfig,
  type Config,
  type TokenConfig,
} from '../../config/schema.js'
import { oneOf, USAGE, usageError } from '../args.js'
import { configuredToken } from '../device-target.js'
import { ensureDefaultSoftHsm } from './softhsm-store.js'
import { place, readToml, saveToml, tableAt, type Table } from './tables.js'

/** A string flag of `setup`, if given. */
export type Flag = (name: string) => string | undefined

/** The token: `--module` describes a new one, else the configured one, else a private SoftHSM store. */
async function chooseToken(
  flag: Flag,
  existing: Config,
  say: (line: string) => void,
): Promise<{ name: string; table?: Table }> {
  const module = flag('module')
  if (module !== undefined) {
    if (flag('token-label') === undefined && flag('serial') === undefined)
      throw usageError('--module needs --token-label or --serial (slot ids are not stable)', USAGE.setup)
    const table: Table = { module }
    if (flag('token-label') !== undefined) table['label'] = flag('token-label')
    if (flag('serial') !== undefined) table['serial'] = flag('serial')
    const kind = flag('kind')
    if (kind !== undefined) table['kind'] = oneOf(kind, TOKEN_KINDS, '--kind', USAGE.setup)
    const source =
      flag('pin-source') ??
      (flag('pin-env') !== undefined ? 'env' : flag('pin-file') !== undefined ? 'file' : 'tty')
    table['pin-source'] = oneOf(source, PIN_SOURCES, '--pin-source', USAGE.setup)
    if (flag('pin-env') !== undefined) table['pin-env'] = flag('pin-env')
    if (flag('pin-file') !== undefined) table['pin-file'] = flag('pin-file')
    return { name: flag('token') ?? kind ?? 'device', table }
  }
  const configured = configuredToken(
    existing,
    flag('token'),
    USAGE.setup,
    '; or describe a new one with --module',
  )
  if (configured !== undefined) return { name: configured.name }
  const soft = await ensureDefaultSoftHsm(say)
  say(
    'no hardware token is configured: using a SoftHSM token (the key is software-protected; use --module for a YubiKey, TPM or HSM)',
  )
  return {
    name: 'softhsm',
    table: {
      module: 'softhsm',
      label: soft.label,
      kind: 'softhsm',
      'pin-source': 'file',
      'pin-file': soft.pinFile,
      'module-env': { SOFTHSM2_CONF: soft.confPath },
    },
  }
}

/** The read and mutation keys a YubiKey setup binds, by ykcs11 CKA_ID, and the confirmation. */
export interface KeyBinding {
  readonly readId: string
  readonly mutationId: string
  readonly confirm: 'touch' | 'prompt'
}

/** `--registry NAME --index URL` (optional, together) binds the registry to the token's key(s). */
function bindRegistry(
  doc: Table,
  flag: Flag,
  tokenName: string,
  force: boolean,
  configPath: string,
  keys: KeyBinding | undefined,
): void {
  const registryName = flag('registry')
  const index = flag('index')
  if ((registryName === undefined) !== (index === undefined))
    throw usageError('--registry and --index go together', USAGE.setup)
  if (registryName === undefined || index === undefined) return
  const problem = checkIndexUrl(index)
  if (problem !== undefined) throw usageError(`--index: ${problem}`, USAGE.setup)
  const ref: Table = { token: tokenName, label: flag('label') ?? 'cargo' }
  const keyId = flag('id')
  if (keyId !== undefined) ref['id'] = keyId.toLowerCase()
  const bound: Table =
    keys === undefined
      ? { 'read-key': ref }
      : {
          'read-key': { token: tokenName, id: keys.readId },
          'mutation-key': { token: tokenName, id: keys.mutationId },
          confirm: keys.confirm,
        }
  const table = { ...(tableAt(doc, 'registries', registryName) ?? {}), index, ...bound }
  place(doc, 'registries', registryName, table, force, configPath)
}

/** The agent config `setup` will write (`doc`), validated as a whole; nothing is written yet. */
export async function planAgentConfig(
  configPath: string,
  flag: Flag,
  force: boolean,
  say: (line: string) => void,
  keys?: KeyBinding,
): Promise<{ doc: Table; tokenName: string; token: TokenConfig }> {
  const doc = readToml(configPath, 'The agent config')
  // The file as it is (an empty document when there is none), checked before anything is changed.
  const token = await chooseToken(flag, validateConfig(doc, configPath), say)
  if (token.table !== undefined) place(doc, 'tokens', token.name, token.table, force, configPath)
  bindRegistry(doc, flag, token.name, force, configPath, keys)
  const config = validateConfig(doc, configPath)
  return { doc, tokenName: token.name, token: config.tokens[token.name] as TokenConfig }
}

/** Writes the agent config in place (src/cli/setup/tables.ts); returns the backup's path, if any. */
export function writeAgentConfig(configPath: string, doc: Table): string | undefined {
  return saveToml(configPath, doc, {
    what: 'The agent config',
    header: '# cargo-pkcs11-agent configuration (docs/configuration.md)\n',
    mode: 0o600,
  })
}
