/**
 * The agent configuration as a typed, frozen object (docs/configuration.md). Parse, then validate,
 * then act: nothing touches a token until `validateConfig` has accepted the whole file.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { closest } from '../lib/suggest.js'
import { defaultAuditLogPath } from './paths.js'

export const PIN_SOURCES = ['pinentry', 'tty', 'env', 'file', 'none'] as const
export type PinSource = (typeof PIN_SOURCES)[number]
export const TOKEN_KINDS = ['yubikey', 'tpm', 'hsm', 'softhsm'] as const
export type TokenKind = (typeof TOKEN_KINDS)[number]
export const CONFIRM_MODES = ['touch', 'prompt', 'none'] as const
export type ConfirmMode = (typeof CONFIRM_MODES)[number]

export interface AgentSettings {
  readonly socket?: string
  readonly headless: boolean
  readonly auditLog: string
  readonly touchNoticeAfterMs: number
  readonly pinCacheIdleSeconds: number
  readonly pinCacheMaxSeconds: number
  readonly releaseAfterIdleSeconds?: number
  readonly notify: boolean
}

export interface TokenConfig {
  readonly name: string
  /** A path to a PKCS#11 library, or a known name (softhsm, ykcs11, tpm2, opensc). */
  readonly module: string
  readonly label?: string
  readonly serial?: string
  readonly manufacturer?: string
  readonly model?: string
  readonly pinSource: PinSource
  readonly pinEnv?: string
  readonly pinFile?: string
  readonly pinentryProgram?: string
  readonly confirmFinalTry: boolean
  readonly kind?: TokenKind
  /**
   * Environment the PKCS#11 module reads at C_Initialize (SOFTHSM2_CONF, TPM2_PKCS11_TCTI, ...),
   * set in the agent before the module loads: one agent can then serve a private SoftHSM store
   * without the variable being exported to cargo.
   */
  readonly moduleEnv: Readonly<Record<string, string>>
}

export interface KeyRef {
  readonly token: string
  readonly label?: string
  /** CKA_ID as lowercase hex. */
  readonly id?: string
}

export interface RegistryConfig {
  readonly name: string
  /** Exactly as cargo sends `registry.index-url` (sparse+ prefix kept); compared byte for byte. */
  readonly index: string
  readonly readKey: KeyRef
  readonly mutationKey: KeyRef
  readonly subject?: string
  readonly tokenMaxAgeSeconds: number
  /** For mutations; reads are never confirmed (design: reads silent). */
  readonly confirm: ConfirmMode
  readonly mutationsPerHour: number
  readonly generateOnLogin: boolean
}

export interface Config {
  /** The file it came from, or undefined for a config built in memory. */
  readonly path?: string
  readonly agent: AgentSettings
  readonly tokens: Readonly<Record<string, TokenConfig>>
  readonly registries: Readonly<Record<string, RegistryConfig>>
}

type Env = Readonly<Record<string, string | undefined>>

const AGENT_KEYS = [
  'socket',
  'headless',
  'audit-log',
  'touch-notice-after-ms',
  'pin-cache-idle-seconds',
  'pin-cache-max-seconds',
  'release-after-idle-seconds',
  'notify',
] as const
const TOKEN_KEYS = [
  'module',
  'label',
  'serial',
  'manufacturer',
  'model',
  'pin-source',
  'pin-env',
  'pin-file',
  'pinentry-program',
  'confirm-final-try',
  'kind',
  'module-env',
] as const
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const REGISTRY_KEYS = [
  'index',
  'read-key',
  'mutation-key',
  'subject',
  'token-max-age-seconds',
  'confirm',
  'mutations-per-hour',
  'generate-on-login',
] as const
const KEY_REF_KEYS = ['token', 'label', 'id'] as const
const TOP_KEYS = ['agent', 'tokens', 'registries'] as const
const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/

/**
 * "did you mean" for a mistyped key or value: TOML keys are kebab-case, so `pin_source` and
 * `Pin-Source` count as near misses; long keys may be a third of their length off.
 */
export function closestKey(key: string, allowed: readonly string[]): string | undefined {
  return closest(key.toLowerCase().replaceAll('_', '-'), allowed, (candidate) =>
    Math.max(2, Math.ceil(candidate.length / 3)),
  )
}

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

class Issues {
  readonly list: string[] = []
  add(where: string, problem: string): void {
    this.list.push(`${where}: ${problem}`)
  }
}

function checkKeys(
  table: Record<string, unknown>,
  allowed: readonly string[],
  where: string,
  issues: Issues,
): void {
  for (const key of Object.keys(table)) {
    if (allowed.includes(key)) continue
    const hint = closestKey(key, allowed)
    issues.add(
      where === '' ? key : `${where}.${key}`,
      `unknown key${hint === undefined ? `; allowed keys: ${allowed.join(', ')}` : `; did you mean \`${hint}\`?`}`,
    )
  }
}

function str(table: Record<string, unknown>, key: string, where: string, issues: Issues): string | undefined {
  const value = table[key]
  if (value === undefined) return undefined
  if (typeof value !== 'string' || value === '') {
    issues.add(`${where}.${key}`, 'must be a non-empty string')
    return undefined
  }
  return value
}

function bool(
  table: Record<string, unknown>,
  key: string,
  where: string,
  issues: Issues,
): boolean | undefined {
  const value = table[key]
  if (value === undefined) return undefined
  if (typeof value !== 'boolean') {
    issues.add(`${where}.${key}`, 'must be true or false (no quotes)')
    return undefined
  }
  return value
}

function int(
  table: Record<string, unknown>,
  key: string,
  where: string,
  issues: Issues,
  min: number,
  max: number,
): number | undefined {
  const value = table[key]
  if (value === undefined) return undefined
  const n = typeof value === 'bigint' ? Number(value) : value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    issues.add(`${where}.${key}`, `must be a whole number from ${min} to ${max}`)
    return undefined
  }
  return n
}

function oneOf<T extends string>(
  table: Record<string, unknown>,
  key: string,
  where: string,
  issues: Issues,
  allowed: readonly T[],
): T | undefined {
  const value = str(table, key, where, issues)
  if (value === undefined) return undefined
  if (!(allowed as readonly string[]).includes(value)) {
    const hint = closestKey(value, allowed)
    issues.add(
      `${where}.${key}`,
      `"${value}" is not one of ${allowed.map((a) => `"${a}"`).join(', ')}${hint === undefined ? '' : `; did you mean "${hint}"?`}`,
    )
    return undefined
  }
  return value as T
}

/**
 * Index URLs as cargo sends them (spec §1.4): `sparse+http(s)://…` for sparse registries, the plain
 * git URL otherwise. Compared byte for byte, so the check is about catching typos, not normalising.
 */
export function checkIndexUrl(index: string): string | undefined {
  if (/\s/.test(index)) return 'must not contain spaces'
  const bare = index.startsWith('sparse+') ? index.slice('sparse+'.length) : index
  let url: URL
  try {
    url = new URL(bare)
  } catch {
    return `"${index}" is not a URL; write it exactly as cargo sends it, e.g. "sparse+https://registry.example/index/"`
  }
  if (index.startsWith('sparse+')) {
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      return `a sparse index must be sparse+http:// or sparse+https://, not ${url.protocol}`
    // cargo requires sparse index URLs to end in "/" and sends them so; without it nothing would match.
    if (!bare.endsWith('/')) return `a sparse index URL ends with "/" (cargo sends "${index}/")`
  } else if (!['http:', 'https:', 'file:', 'ssh:', 'git:'].includes(url.protocol)) {
    return `unsupported scheme ${url.protocol}; use "sparse+https://…/" for sparse registries or the git index URL`
  }
  return undefined
}

/** `module-env`: variables are process-wide, so two tokens may not want different values for one. */
function moduleEnv(
  value: unknown,
  where: string,
  issues: Issues,
  seen: Map<string, string>,
): Record<string, string> {
  if (value === undefined) return {}
  if (!isTable(value)) {
    issues.add(where, 'must be an inline table like { SOFTHSM2_CONF = "/path/softhsm2.conf" }')
    return {}
  }
  const out: Record<string, string> = {}
  for (const [name, v] of Object.entries(value)) {
    if (!ENV_NAME.test(name)) issues.add(`${where}.${name}`, 'is not an environment variable name')
    else if (typeof v !== 'string') issues.add(`${where}.${name}`, 'must be a string')
    else if (seen.has(name) && seen.get(name) !== v)
      issues.add(`${where}.${name}`, `conflicts with another token's ${name}; the agent has one environment`)
    else {
      seen.set(name, v)
      out[name] = v
    }
  }
  return out
}

function keyRef(
  value: unknown,
  where: string,
  issues: Issues,
  tokens: Record<string, unknown>,
): KeyRef | undefined {
  if (!isTable(value)) {
    issues.add(where, 'must be an inline table like { token = "NAME", label = "cargo" }')
    return undefined
  }
  checkKeys(value, KEY_REF_KEYS, where, issues)
  const token = str(value, 'token', where, issues)
  const label = str(value, 'label', where, issues)
  const id = str(value, 'id', where, issues)
  if (token === undefined) {
    if (value['token'] === undefined) issues.add(`${where}.token`, 'missing; name a [tokens.NAME] table')
    return undefined
  }
  if (!Object.hasOwn(tokens, token)) {
    const hint = closestKey(token, Object.keys(tokens))
    issues.add(
      `${where}.token`,
      `"${token}" is not defined; add a [tokens.${token}] table${hint === undefined ? '' : ` or did you mean "${hint}"?`}`,
    )
  }
  if (id !== undefined && !/^([0-9a-fA-F]{2})+$/.test(id))
    issues.add(`${where}.id`, 'must be hex bytes, e.g. "01"')
  if (label === undefined && id === undefined)
    issues.add(where, 'needs `label` or `id` to find the key on the token')
  const ref: { token: string; label?: string; id?: string } = { token }
  if (label !== undefined) ref.label = label
  if (id !== undefined) ref.id = id.toLowerCase()
  return Object.freeze(ref)
}

/** Validates a parsed TOML document. Throws one CONFIG_INVALID listing every problem found. */
export function validateConfig(doc: unknown, path: string | undefined, env: Env = process.env): Config {
  const issues = new Issues()
  const file = path ?? 'config'
  if (!isTable(doc))
    throw new AgentError('CONFIG_INVALID', `${file} is not a TOML table`, {
      remedy: 'See docs/configuration.md for a full example',
    })
  checkKeys(doc, TOP_KEYS, '', issues)

  const agentTable = doc['agent'] ?? {}
  const agent: { -readonly [K in keyof AgentSettings]: AgentSettings[K] } = {
    headless: env['CI'] === 'true',
    auditLog: defaultAuditLogPath(env),
    touchNoticeAfterMs: LIMITS.touchNoticeAfterMs,
    pinCacheIdleSeconds: LIMITS.pinCacheIdleSeconds,
    pinCacheMaxSeconds: LIMITS.pinCacheMaxSeconds,
    notify: true,
  }
  if (!isTable(agentTable)) issues.add('agent', 'must be a table ([agent])')
  else {
    checkKeys(agentTable, AGENT_KEYS, 'agent', issues)
    const socket = str(agentTable, 'socket', 'agent', issues)
    if (socket !== undefined) agent.socket = socket
    agent.headless = bool(agentTable, 'headless', 'agent', issues) ?? agent.headless
    agent.auditLog = str(agentTable, 'audit-log', 'agent', issues) ?? agent.auditLog
    agent.touchNoticeAfterMs =
      int(agentTable, 'touch-notice-after-ms', 'agent', issues, 0, LIMITS.touchNoticeMaxMs) ??
      agent.touchNoticeAfterMs
    agent.pinCacheIdleSeconds =
      int(agentTable, 'pin-cache-idle-seconds', 'agent', issues, 0, LIMITS.configLifetimeMaxSeconds) ??
      agent.pinCacheIdleSeconds
    agent.pinCacheMaxSeconds =
      int(agentTable, 'pin-cache-max-seconds', 'agent', issues, 0, LIMITS.configLifetimeMaxSeconds) ??
      agent.pinCacheMaxSeconds
    const release = int(
      agentTable,
      'release-after-idle-seconds',
      'agent',
      issues,
      1,
      LIMITS.configLifetimeMaxSeconds,
    )
    if (release !== undefined) agent.releaseAfterIdleSeconds = release
    agent.notify = bool(agentTable, 'notify', 'agent', issues) ?? agent.notify
    if (agent.pinCacheIdleSeconds > agent.pinCacheMaxSeconds)
      issues.add('agent.pin-cache-idle-seconds', 'must not exceed pin-cache-max-seconds')
  }

  const tokensTable = doc['tokens'] ?? {}
  const tokens: Record<string, TokenConfig> = {}
  if (!isTable(tokensTable)) issues.add('tokens', 'must be a table of [tokens.NAME] tables')
  const tokenDocs = isTable(tokensTable) ? tokensTable : {}
  const seenModuleEnv = new Map<string, string>()
  for (const [name, value] of Object.entries(tokenDocs)) {
    const where = `tokens.${name}`
    if (!NAME.test(name)) issues.add(where, 'token names use letters, digits, "-" and "_"')
    if (!isTable(value)) {
      issues.add(where, 'must be a table')
      continue
    }
    checkKeys(value, TOKEN_KEYS, where, issues)
    const module = str(value, 'module', where, issues)
    if (module === undefined && value['module'] === undefined)
      issues.add(
        `${where}.module`,
        'missing; give a PKCS#11 library path or one of softhsm, ykcs11, tpm2, opensc',
      )
    if (module !== undefined && module.includes('/') && !module.startsWith('/'))
      issues.add(`${where}.module`, 'a module path must be absolute')
    const pinSource = oneOf(value, 'pin-source', where, issues, PIN_SOURCES) ?? 'tty'
    const token: { -readonly [K in keyof TokenConfig]: TokenConfig[K] } = {
      name,
      module: module ?? '',
      pinSource,
      confirmFinalTry: bool(value, 'confirm-final-try', where, issues) ?? true,
      moduleEnv: Object.freeze(moduleEnv(value['module-env'], `${where}.module-env`, issues, seenModuleEnv)),
    }
    for (const [key, prop] of [
      ['label', 'label'],
      ['serial', 'serial'],
      ['manufacturer', 'manufacturer'],
      ['model', 'model'],
      ['pin-env', 'pinEnv'],
      ['pin-file', 'pinFile'],
      ['pinentry-program', 'pinentryProgram'],
    ] as const) {
      const v = str(value, key, where, issues)
      if (v !== undefined) token[prop] = v
    }
    const kind = oneOf(value, 'kind', where, issues, TOKEN_KINDS)
    if (kind !== undefined) token.kind = kind
    if (pinSource === 'env' && token.pinEnv === undefined)
      issues.add(
        `${where}.pin-env`,
        'missing; pin-source = "env" needs the variable name, e.g. pin-env = "TOKEN_PIN"',
      )
    if (pinSource === 'file' && token.pinFile === undefined)
      issues.add(
        `${where}.pin-file`,
        'missing; pin-source = "file" needs a path to a file readable only by you',
      )
    if (token.pinFile !== undefined && !token.pinFile.startsWith('/'))
      issues.add(`${where}.pin-file`, 'must be an absolute path')
    tokens[name] = Object.freeze(token)
  }

  const registriesTable = doc['registries'] ?? {}
  const registries: Record<string, RegistryConfig> = {}
  if (!isTable(registriesTable)) issues.add('registries', 'must be a table of [registries.NAME] tables')
  const seenIndex = new Map<string, string>()
  for (const [name, value] of Object.entries(isTable(registriesTable) ? registriesTable : {})) {
    const where = `registries.${name}`
    if (!isTable(value)) {
      issues.add(where, 'must be a table')
      continue
    }
    checkKeys(value, REGISTRY_KEYS, where, issues)
    const index = str(value, 'index', where, issues)
    if (index === undefined) {
      if (value['index'] === undefined)
        issues.add(
          `${where}.index`,
          'missing; the index URL exactly as cargo sends it, e.g. "sparse+https://registry.example/index/"',
        )
    } else {
      const problem = checkIndexUrl(index)
      if (problem !== undefined) issues.add(`${where}.index`, problem)
      const other = seenIndex.get(index)
      if (other !== undefined)
        issues.add(`${where}.index`, `the same index is already bound by [registries.${other}]`)
      seenIndex.set(index, name)
    }
    const readKey =
      value['read-key'] === undefined
        ? (issues.add(`${where}.read-key`, 'missing; e.g. read-key = { token = "yubikey", label = "cargo" }'),
          undefined)
        : keyRef(value['read-key'], `${where}.read-key`, issues, tokenDocs)
    const mutationKey =
      value['mutation-key'] === undefined
        ? readKey
        : keyRef(value['mutation-key'], `${where}.mutation-key`, issues, tokenDocs)
    const registry: { -readonly [K in keyof RegistryConfig]: RegistryConfig[K] } = {
      name,
      index: index ?? '',
      readKey: readKey ?? { token: '' },
      mutationKey: mutationKey ?? readKey ?? { token: '' },
      tokenMaxAgeSeconds:
        int(value, 'token-max-age-seconds', where, issues, 1, LIMITS.maxTokenMaxAgeSeconds) ??
        LIMITS.defaultTokenMaxAgeSeconds,
      confirm: oneOf(value, 'confirm', where, issues, CONFIRM_MODES) ?? LIMITS.defaultConfirm,
      mutationsPerHour:
        int(value, 'mutations-per-hour', where, issues, 0, LIMITS.maxMutationsPerHour) ??
        LIMITS.defaultMutationsPerHour,
      generateOnLogin: bool(value, 'generate-on-login', where, issues) ?? false,
    }
    const subject = str(value, 'subject', where, issues)
    if (subject !== undefined) registry.subject = subject
    registries[name] = Object.freeze(registry)
  }

  if (issues.list.length > 0) {
    const many = issues.list.length > 1
    throw new AgentError(
      'CONFIG_INVALID',
      `${file} has ${many ? `${issues.list.length} problems` : 'a problem'}:\n  ${issues.list.join('\n  ')}`,
      {
        remedy: 'Fix the keys named above; docs/configuration.md lists every key with an example',
        data: { path: file, problems: issues.list.length },
      },
    )
  }
  const config: {
    path?: string
    agent: AgentSettings
    tokens: Readonly<Record<string, TokenConfig>>
    registries: Readonly<Record<string, RegistryConfig>>
  } = {
    agent: Object.freeze(agent),
    tokens: Object.freeze(tokens),
    registries: Object.freeze(registries),
  }
  if (path !== undefined) config.path = path
  return Object.freeze(config)
}

/** The registry a request's `index-url` is bound to: exact string match (RFC 3231 footer `url`). */
export function registryFor(config: Config, indexUrl: string): RegistryConfig | undefined {
  for (const registry of Object.values(config.registries)) if (registry.index === indexUrl) return registry
  return undefined
}
