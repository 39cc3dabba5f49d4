/**
 * `cargo-pkcs11-agent setup`: first run in one command. Finds a token (the configured one, one given
 * by flags, or a private SoftHSM store under $XDG_DATA_HOME when no hardware is configured),
 * generates or reuses a P-384 key on it, prints the k3.public / k3.pid to register, writes the agent
 * config and prints (or writes) the cargo config snippet. Anything that would replace a key or a
 * different existing setting needs --force.
 */
import { execFile } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { parse, stringify } from 'smol-toml'

import { parseConfig } from '../config/load.js'
import { dataDir, resolveConfigPath } from '../config/paths.js'
import {
  checkIndexUrl,
  PIN_SOURCES,
  TOKEN_KINDS,
  validateConfig,
  type TokenConfig,
} from '../config/schema.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import { AgentError } from '../lib/errors.js'
import { readPinFile } from '../lib/pin-file.js'
import { Pin } from '../lib/secret.js'
import { Device } from '../pkcs11/device.js'
import type { DeviceKey } from '../pkcs11/key-catalogue.js'
import { applyModuleEnvironment, resolveModulePath } from '../pkcs11/modules.js'
import { askPinOnTty, hasTerminal } from '../shim/tty.js'
import { parseCommandArgs, USAGE, usageError } from './args.js'

const run = promisify(execFile)

type Table = Record<string, unknown>

function isTable(value: unknown): value is Table {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

function readToml(path: string, what: string): Table {
  if (!existsSync(path)) return {}
  try {
    return parse(readFileSync(path, 'utf8')) as Table
  } catch (error) {
    throw new AgentError('CONFIG_INVALID', `${what} ${path} is not valid TOML`, {
      cause: error,
      remedy: 'Fix it by hand first; setup does not overwrite a file it cannot read',
    })
  }
}

/** Order-insensitive comparison of TOML values (smol-toml tables may have a null prototype). */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    isTable(v)
      ? Object.fromEntries(
          Object.keys(v)
            .sort()
            .map((k) => [k, v[k]]),
        )
      : v,
  )
}

/** Puts `value` at doc[section][name]; a different existing value needs --force. */
function place(
  doc: Table,
  section: string,
  name: string,
  value: Table,
  force: boolean,
  file: string,
): 'added' | 'unchanged' | 'replaced' {
  const tables = isTable(doc[section]) ? (doc[section] as Table) : {}
  doc[section] = tables
  const existing = tables[name]
  if (existing !== undefined && canonical(existing) === canonical(value)) return 'unchanged'
  if (existing !== undefined && !force) {
    throw new AgentError('KEY_EXISTS', `${file} already has a different [${section}.${name}]`, {
      remedy: `Pass --force to replace it, or choose another name`,
      data: { section, name },
    })
  }
  tables[name] = value
  return existing === undefined ? 'added' : 'replaced'
}

function writePrivate(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  writeFileSync(path, text, { mode: 0o600 })
}

interface DefaultSoftHsm {
  confPath: string
  pinFile: string
  label: string
}

/** A private SoftHSM store under $XDG_DATA_HOME, made once with a random PIN kept in a 0600 file. */
async function ensureDefaultSoftHsm(log: (line: string) => void): Promise<DefaultSoftHsm> {
  const base = join(dataDir(), 'softhsm')
  const confPath = join(base, 'softhsm2.conf')
  const pinFile = join(base, 'user.pin')
  const label = 'cargo-pkcs11-agent'
  if (existsSync(confPath) && existsSync(pinFile)) return { confPath, pinFile, label }
  const tokens = join(base, 'tokens')
  mkdirSync(tokens, { recursive: true, mode: 0o700 })
  writePrivate(
    confPath,
    `# Private SoftHSM store created by cargo-pkcs11-agent setup.\ndirectories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
  )
  const digits = (n: number): string => Array.from({ length: n }, () => String(randomInt(10))).join('')
  const pin = digits(8)
  const soPin = digits(16)
  writePrivate(pinFile, `${pin}\n`)
  writePrivate(join(base, 'so.pin'), `${soPin}\n`)
  const module = resolveModulePath('softhsm')
  // PINs reach pkcs11-tool as env:VAR, never in argv.
  const env = { ...process.env, SOFTHSM2_CONF: confPath, SETUP_SO_PIN: soPin, SETUP_PIN: pin }
  try {
    await run(
      'pkcs11-tool',
      ['--module', module, '--init-token', '--label', label, '--so-pin', 'env:SETUP_SO_PIN'],
      { env },
    )
    await run(
      'pkcs11-tool',
      [
        '--module',
        module,
        '--token-label',
        label,
        '--login',
        '--login-type',
        'so',
        '--so-pin',
        'env:SETUP_SO_PIN',
        '--init-pin',
        '--pin',
        'env:SETUP_PIN',
      ],
      { env },
    )
  } catch (error) {
    throw new AgentError(
      'DEVICE_ERROR',
      `Creating the SoftHSM token in ${base} failed: ${(error as { stderr?: string }).stderr ?? String(error)}`,
      {
        cause: error,
        remedy:
          'Install softhsm2 and opensc (scripts/setup.sh), remove the half-made store, and run setup again',
      },
    )
  }
  log(`created a SoftHSM token '${label}' in ${base} (PIN in ${pinFile}, mode 0600)`)
  return { confPath, pinFile, label }
}

async function pinFor(token: TokenConfig): Promise<Pin | null> {
  switch (token.pinSource) {
    case 'none':
      return null
    case 'env': {
      const value = process.env[token.pinEnv ?? '']
      if (value === undefined || value === '')
        throw new AgentError('PIN_REQUIRED', `The PIN variable ${token.pinEnv ?? ''} is not set`, {
          remedy: `Export ${token.pinEnv ?? 'it'} with the token PIN and run setup again`,
        })
      return Pin.fromString(value)
    }
    case 'file':
      return await readPinFile(token.pinFile ?? '')
    case 'tty':
    case 'pinentry':
      if (!hasTerminal())
        throw new AgentError(
          'PIN_REQUIRED',
          `Setup needs the PIN of token ${token.name} and there is no terminal`,
          { remedy: 'Run setup in a terminal, or pass --pin-source env --pin-env VAR' },
        )
      return Pin.fromString(await askPinOnTty(`PIN for token ${token.name}: `))
  }
}

/** The shim as this package installs it (package.json `bin`): the path cargo's config should name. */
function installedShimPath(): string {
  const root = fileURLToPath(new URL('../../../', import.meta.url))
  try {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      bin?: Record<string, string>
    }
    const bin = pkg.bin?.['cargo-credential-pkcs11']
    if (bin !== undefined) return join(root, bin)
  } catch {
    // fall back to the sibling entry
  }
  return fileURLToPath(new URL('../bin/cargo-credential-pkcs11.js', import.meta.url))
}

export async function setup(argv: readonly string[]): Promise<number> {
  const values = parseCommandArgs(
    argv,
    {
      config: { type: 'string' },
      token: { type: 'string' },
      module: { type: 'string' },
      'token-label': { type: 'string' },
      serial: { type: 'string' },
      kind: { type: 'string' },
      'pin-source': { type: 'string' },
      'pin-env': { type: 'string' },
      'pin-file': { type: 'string' },
      label: { type: 'string' },
      id: { type: 'string' },
      registry: { type: 'string' },
      index: { type: 'string' },
      'write-cargo-config': { type: 'boolean' },
      force: { type: 'boolean' },
    },
    USAGE.setup,
  ).values as Record<string, string | boolean | undefined>
  const str = (key: string): string | undefined =>
    typeof values[key] === 'string' ? (values[key] as string) : undefined
  const force = values['force'] === true
  const say = (line: string): void => {
    process.stderr.write(`cargo-pkcs11-agent setup: ${line}\n`)
  }
  const configPath = resolveConfigPath(str('config')).path
  const doc = readToml(configPath, 'The agent config')
  const existing = existsSync(configPath)
    ? parseConfig(readFileSync(configPath, 'utf8'), configPath)
    : validateConfig({}, configPath)

  // 1. The token.
  let tokenName: string
  let tokenTable: Table | undefined
  const module = str('module')
  if (module !== undefined) {
    if (str('token-label') === undefined && str('serial') === undefined)
      throw usageError('--module needs --token-label or --serial (slot ids are not stable)', USAGE.setup)
    tokenName = str('token') ?? str('kind') ?? 'device'
    tokenTable = { module }
    if (str('token-label') !== undefined) tokenTable['label'] = str('token-label')
    if (str('serial') !== undefined) tokenTable['serial'] = str('serial')
    const kind = str('kind')
    if (kind !== undefined) {
      if (!(TOKEN_KINDS as readonly string[]).includes(kind))
        throw usageError(`--kind must be one of ${TOKEN_KINDS.join(', ')}`, USAGE.setup)
      tokenTable['kind'] = kind
    }
    const source =
      str('pin-source') ??
      (str('pin-env') !== undefined ? 'env' : str('pin-file') !== undefined ? 'file' : 'tty')
    if (!(PIN_SOURCES as readonly string[]).includes(source))
      throw usageError(`--pin-source must be one of ${PIN_SOURCES.join(', ')}`, USAGE.setup)
    tokenTable['pin-source'] = source
    if (str('pin-env') !== undefined) tokenTable['pin-env'] = str('pin-env')
    if (str('pin-file') !== undefined) tokenTable['pin-file'] = str('pin-file')
  } else {
    const names = Object.keys(existing.tokens)
    const wanted = str('token') ?? (names.length === 1 ? names[0] : undefined)
    if (wanted !== undefined) {
      if (existing.tokens[wanted] === undefined) {
        throw new AgentError('CONFIG_INVALID', `No token named '${wanted}' in ${configPath}`, {
          remedy: `Configured tokens: ${names.join(', ') || 'none'}; or describe a new one with --module`,
        })
      }
      tokenName = wanted
    } else if (names.length > 1) {
      throw usageError(
        `several tokens are configured (${names.join(', ')}): choose one with --token`,
        USAGE.setup,
      )
    } else {
      // No hardware configured: a private SoftHSM store (keys in software, for trying things out and CI).
      const soft = await ensureDefaultSoftHsm(say)
      tokenName = 'softhsm'
      tokenTable = {
        module: 'softhsm',
        label: soft.label,
        kind: 'softhsm',
        'pin-source': 'file',
        'pin-file': soft.pinFile,
        'module-env': { SOFTHSM2_CONF: soft.confPath },
      }
      say(
        'no hardware token is configured: using a SoftHSM token (the key is software-protected; use --module for a YubiKey, TPM or HSM)',
      )
    }
  }
  if (tokenTable !== undefined) place(doc, 'tokens', tokenName, tokenTable, force, configPath)

  // 2. The registry binding (optional).
  const registryName = str('registry')
  const index = str('index')
  const keyLabel = str('label') ?? 'cargo'
  const keyId = str('id')
  if ((registryName === undefined) !== (index === undefined))
    throw usageError('--registry and --index go together', USAGE.setup)
  if (index !== undefined) {
    const problem = checkIndexUrl(index)
    if (problem !== undefined) throw usageError(`--index: ${problem}`, USAGE.setup)
  }
  if (registryName !== undefined && index !== undefined) {
    const ref: Table = { token: tokenName, label: keyLabel }
    if (keyId !== undefined) ref['id'] = keyId.toLowerCase()
    const previous = isTable(doc['registries']) ? (doc['registries'] as Table)[registryName] : undefined
    const table: Table = isTable(previous)
      ? { ...previous, index, 'read-key': ref }
      : { index, 'read-key': ref }
    place(doc, 'registries', registryName, table, force, configPath)
  }
  // Validate the whole result before touching the device or writing anything.
  const config = validateConfig(doc, configPath)
  const token = config.tokens[tokenName] as TokenConfig

  // 3. The key, on the device.
  applyModuleEnvironment(token.moduleEnv)
  const pin = await pinFor(token)
  const device = new Device(token, { cachedPin: () => pin ?? undefined })
  let key: DeviceKey
  let action: string
  try {
    if (await device.needsLogin()) await device.login(pin)
    const wanted = keyId === undefined ? { label: keyLabel } : { label: keyLabel, id: keyId }
    let found: DeviceKey | undefined
    try {
      found = await device.findKey(wanted)
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== 'KEY_NOT_FOUND') throw error
    }
    if (found !== undefined && !force) {
      key = found
      action = 'reused'
    } else {
      key = await device.generateKey(
        keyId === undefined ? { label: keyLabel } : { label: keyLabel, id: keyId },
        { force },
      )
      action = found === undefined ? 'generated' : 'regenerated (the old key was destroyed)'
    }
  } finally {
    await device.release()
    pin?.wipe()
  }

  // 4. Write the agent config (validated above).
  writePrivate(configPath, `# cargo-pkcs11-agent configuration (docs/configuration.md)\n${stringify(doc)}\n`)

  const shim = installedShimPath()
  const out: string[] = [
    `key '${key.label}' (id ${key.id}) on token ${tokenName}: ${action}`,
    'register this public key with the registry:',
    k3Public(key.publicKey),
    k3Pid(key.publicKey),
    `agent config: ${configPath}`,
  ]
  if (registryName !== undefined && index !== undefined) {
    const snippet = { registries: { [registryName]: { index, 'credential-provider': [shim] } } }
    const cargoHome = process.env['CARGO_HOME'] ?? join(homedir(), '.cargo')
    const cargoConfig = join(cargoHome, 'config.toml')
    if (values['write-cargo-config'] === true) {
      const cargoDoc = readToml(cargoConfig, 'The cargo config')
      const outcome = place(
        cargoDoc,
        'registries',
        registryName,
        {
          ...((isTable(cargoDoc['registries'])
            ? ((cargoDoc['registries'] as Table)[registryName] as Table | undefined)
            : undefined) ?? {}),
          index,
          'credential-provider': [shim],
        },
        force,
        cargoConfig,
      )
      if (outcome !== 'unchanged') {
        mkdirSync(dirname(cargoConfig), { recursive: true })
        writeFileSync(cargoConfig, stringify(cargoDoc) + '\n')
      }
      out.push(`cargo config: ${cargoConfig} (${outcome})`)
    } else {
      out.push(`cargo config: add to ${cargoConfig} (or pass --write-cargo-config):`, stringify(snippet))
    }
    out.push(
      `then: cargo login --registry ${registryName}   (shows the same key), cargo publish --registry ${registryName}`,
    )
  } else {
    out.push(
      'bind a registry with: cargo-pkcs11-agent setup --registry NAME --index "sparse+https://registry.example/index/"',
    )
  }
  process.stdout.write(out.join('\n') + '\n')
  return 0
}
