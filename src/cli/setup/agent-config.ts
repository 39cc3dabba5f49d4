/**
 * The agent-config half of `setup`: which [tokens.NAME] to use (the configured one, one described by
 * flags, or a private SoftHSM store when no hardware is configured), the [registries.NAME] binding,
 * the whole result validated before anything touches a device, and writing the file.
 */
import { realpathSync } from 'node:fs'

import { pinEnvVariables } from '../../agent/policy-config.js'
import {
  checkIndexUrl,
  CONFIRM_MODES,
  isTable,
  PIN_SOURCES,
  TOKEN_KINDS,
  validateConfig,
  type Config,
  type TokenConfig,
} from '../../config/schema.js'
import { moduleEnvironmentNames } from '../../pkcs11/module-environment.js'
import { resolveModulePath } from '../../pkcs11/modules.js'
import { oneOf, USAGE, usageError } from '../args.js'
import { configuredToken } from '../device-target.js'
import { ensureDefaultSoftHsm } from './softhsm-store.js'
import { describeTokens, tokensOn } from './token-check.js'
import { place, readToml, saveToml, tableAt, type Table } from './tables.js'

/** A string flag of `setup`, if given. */
export type Flag = (name: string) => string | undefined

/** The PIN settings the flags give (none: the table keeps its own); a flag the source ignores is refused. */
function pinSettings(flag: Flag): Table {
  const given = flag('pin-source')
  const env = flag('pin-env')
  const file = flag('pin-file')
  const source =
    given === undefined
      ? env !== undefined
        ? 'env'
        : file !== undefined
          ? 'file'
          : undefined
      : oneOf(given, PIN_SOURCES, '--pin-source', USAGE.setup)
  if (env !== undefined && source !== 'env')
    throw usageError(`--pin-env goes with --pin-source env, not ${source}`, USAGE.setup)
  if (file !== undefined && source !== 'file')
    throw usageError(`--pin-file goes with --pin-source file, not ${source}`, USAGE.setup)
  const table: Table = source === undefined ? {} : { 'pin-source': source }
  if (env !== undefined) table['pin-env'] = env
  if (file !== undefined) table['pin-file'] = file
  return table
}

function sameModule(a: string, b: string): boolean {
  if (a === b) return true
  try {
    return realpathSync(resolveModulePath(a)) === realpathSync(resolveModulePath(b))
  } catch {
    return false
  }
}

/**
 * The token a new run of setup describes by flags: the configured entry for the same module and
 * label/serial when there is one (a re-run without --kind or --token names the same table), else
 * a new [tokens.NAME]. The module's variables (native-config/modules.json `$environment`) set in
 * this environment go into its module-env, so an agent started without them finds the token.
 */
async function tokenFromFlags(
  flag: Flag,
  module: string,
  doc: Table,
  existing: Config,
  notes: string[],
): Promise<{ name: string; table: Table }> {
  const label = flag('token-label')
  const serial = flag('serial')
  if (label === undefined && serial === undefined)
    throw usageError(
      `--module needs --token-label or --serial (slot ids are not stable); ${describeTokens(module, await tokensOn(module, true))}`,
      USAGE.setup,
    )
  const same =
    flag('token') === undefined
      ? Object.values(existing.tokens).find(
          (t) =>
            (label === undefined || t.label === label) &&
            (serial === undefined || t.serial === serial) &&
            sameModule(t.module, module),
        )
      : undefined
  const kind = flag('kind')
  const name = flag('token') ?? same?.name ?? kind ?? 'device'
  const before = same === undefined ? undefined : tableAt(doc, 'tokens', same.name)
  const table: Table = { ...(before ?? { module }) }
  if (label !== undefined) table['label'] = label
  if (serial !== undefined) table['serial'] = serial
  if (kind !== undefined) table['kind'] = oneOf(kind, TOKEN_KINDS, '--kind', USAGE.setup)
  const pin = pinSettings(flag)
  if (pin['pin-source'] !== undefined)
    for (const key of ['pin-source', 'pin-env', 'pin-file']) delete table[key]
  Object.assign(table, pin)
  if (before === undefined) table['pin-source'] ??= 'tty'
  // Paths and TCTI strings, never a PIN: a variable some token reads its PIN from is not copied.
  const pins = new Set([...pinEnvVariables(existing), flag('pin-env')])
  const moduleEnv = { ...(isTable(table['module-env']) ? table['module-env'] : {}) }
  for (const variable of moduleEnvironmentNames(module)) {
    const value = process.env[variable]
    if (value === undefined || value === '' || pins.has(variable) || moduleEnv[variable] === value) continue
    moduleEnv[variable] = value
    notes.push(`${variable}=${value}`)
  }
  if (Object.keys(moduleEnv).length > 0) table['module-env'] = moduleEnv
  return { name, table }
}

/** The token: `--module` describes one, else the configured one, else a private SoftHSM store. */
async function chooseToken(
  flag: Flag,
  doc: Table,
  existing: Config,
  say: (line: string) => void,
  notes: string[],
): Promise<{ name: string; table?: Table }> {
  const module = flag('module')
  if (module !== undefined) return await tokenFromFlags(flag, module, doc, existing, notes)
  const configured = configuredToken(
    existing,
    flag('token'),
    USAGE.setup,
    '; or describe a new one with --module',
  )
  if (configured !== undefined) {
    for (const variable of moduleEnvironmentNames(configured.module))
      if (process.env[variable] !== undefined && configured.moduleEnv[variable] === undefined)
        say(
          `warning: ${variable} is set here but not in module-env of [tokens.${configured.name}]: an agent started without it (autostart, install-service) may not find the token`,
        )
    return { name: configured.name }
  }
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
  const confirm = flag('confirm')
  if (confirm !== undefined) bound['confirm'] = oneOf(confirm, CONFIRM_MODES, '--confirm', USAGE.setup)
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
): Promise<{ doc: Table; tokenName: string; token: TokenConfig; config: Config; moduleEnv: string[] }> {
  const doc = readToml(configPath, 'The agent config')
  /** `NAME=value` of each module variable saved from this environment. */
  const moduleEnv: string[] = []
  // The file as it is (an empty document when there is none), checked before anything is changed.
  const token = await chooseToken(flag, doc, validateConfig(doc, configPath), say, moduleEnv)
  if (token.table !== undefined) place(doc, 'tokens', token.name, token.table, force, configPath)
  bindRegistry(doc, flag, token.name, force, configPath, keys)
  const config = validateConfig(doc, configPath)
  return { doc, tokenName: token.name, token: config.tokens[token.name] as TokenConfig, config, moduleEnv }
}

/** Writes the agent config in place (src/cli/setup/tables.ts); returns the backup's path, if any. */
export function writeAgentConfig(configPath: string, doc: Table): string | undefined {
  return saveToml(configPath, doc, {
    what: 'The agent config',
    header: '# cargo-pkcs11-agent configuration (docs/configuration.md)\n',
    mode: 0o600,
  })
}
