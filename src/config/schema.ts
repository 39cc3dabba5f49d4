/**
 * The agent configuration as a typed, frozen object (docs/configuration.md). One row per TOML key
 * below drives parsing, defaults and the "did you mean" hint for unknown keys; test/unit/config.test.ts
 * checks that docs/configuration.md lists exactly these keys with these ranges and defaults.
 * Parse, then validate, then act: nothing touches a token until `validateConfig` has accepted the file.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { knownModules } from '../lib/package-files.js'
import { closest } from '../lib/suggest.js'
import { defaultAuditLogPath, type Env } from './paths.js'

export const PIN_SOURCES = ['pinentry', 'tty', 'env', 'file', 'none'] as const
export type PinSource = (typeof PIN_SOURCES)[number]
export const TOKEN_KINDS = ['yubikey', 'tpm', 'hsm', 'softhsm'] as const
export type TokenKind = (typeof TOKEN_KINDS)[number]
export const CONFIRM_MODES = ['touch', 'prompt', 'none'] as const
export type ConfirmMode = (typeof CONFIRM_MODES)[number]
export const FORWARDED_MODES = ['read', 'confirm', 'refuse'] as const
export type ForwardedMode = (typeof FORWARDED_MODES)[number]

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
  /**
   * For mutations; reads are never confirmed (docs/configuration.md, `confirm`). Undefined when the
   * file does not set it: the agent resolves it at start from the mutation key's touch policy
   * (`effectiveConfirm`), so "unset" and "set to the default" stay distinct.
   */
  readonly confirm?: ConfirmMode
  readonly mutationsPerHour: number
  /** Requests through an SSH-forwarded socket (docs/ssh-forwarding.md). */
  readonly forwarded: ForwardedMode
  readonly generateOnLogin: boolean
}

export interface Config {
  /** The file it came from, or undefined for a config built in memory. */
  readonly path?: string
  readonly agent: AgentSettings
  readonly tokens: Readonly<Record<string, TokenConfig>>
  readonly registries: Readonly<Record<string, RegistryConfig>>
}

/** What validation carries from table to table. */
interface Context {
  readonly env: Env
  /** Every problem found, as "where: what"; one CONFIG_INVALID lists them all. */
  readonly issues: string[]
  /** The names under [tokens], valid or not: key references are checked against these. */
  readonly tokenNames: readonly string[]
  /** `module-env` values so far: one agent process has one environment. */
  readonly moduleEnv: Map<string, string>
  /** Index URL → registry name: one index, one binding. */
  readonly indexes: Map<string, string>
}

/** How one value is read; `undefined` means a problem was recorded at `where`. */
export interface Type<T> {
  /** What docs/configuration.md's type column must state: a range, the choices, an inline table's keys. */
  readonly range?: readonly [number, number]
  readonly choices?: readonly string[]
  readonly keys?: readonly { readonly key: string; readonly required: boolean }[]
  read(value: unknown, where: string, ctx: Context): T | undefined
}

export interface Row<T, Table = unknown> {
  /** The TOML key (kebab-case). */
  readonly key: string
  readonly type: Type<T>
  /** For an absent key; a function when it depends on the environment or on an earlier row. */
  readonly default?: T | ((ctx: Context, earlier: Partial<Table>) => T | undefined)
  /** The key must be present; the text says what to write. */
  readonly required?: string
  /**
   * No parse-time default: an absent key stays undefined and is resolved later, from what only the
   * running agent knows; the text is docs/configuration.md's default column, saying how.
   */
  readonly unset?: string
  /** The start of the key's meaning in docs/configuration.md. */
  readonly doc: string
}

/** One row per property of `T`, in the order the docs list them. */
export type Rows<T> = { readonly [K in keyof T]-?: Row<Exclude<T[K], undefined>, T> }

function row<T, Table>(
  key: string,
  type: Type<T>,
  doc: string,
  more: Pick<Row<T, Table>, 'default' | 'required' | 'unset'> = {},
): Row<T, Table> {
  return { key, type, doc, ...more }
}

/**
 * "did you mean" for a mistyped key or value: TOML keys are kebab-case, so `pin_source` and
 * `Pin-Source` count as near misses; long keys may be a third of their length off.
 */
export function closestKey(key: string, allowed: readonly string[]): string | undefined {
  return closest(key.toLowerCase().replaceAll('_', '-'), allowed, (candidate) =>
    Math.max(2, Math.ceil(candidate.length / 3)),
  )
}

export function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

function problem(ctx: Context, where: string, what: string): undefined {
  ctx.issues.push(`${where}: ${what}`)
  return undefined
}

/** A non-empty string; `check` names what else is wrong with it, if anything. */
function text(
  check: (value: string, ctx: Context) => string | undefined = () => undefined,
  normalise = (value: string) => value,
): Type<string> {
  return {
    read(value, where, ctx) {
      if (typeof value !== 'string' || value === '') return problem(ctx, where, 'must be a non-empty string')
      const wrong = check(value, ctx)
      return wrong === undefined ? normalise(value) : problem(ctx, where, wrong)
    },
  }
}

const TEXT = text()
const ABSOLUTE = text((path) => (path.startsWith('/') ? undefined : 'must be an absolute path'))

const BOOL: Type<boolean> = {
  read: (value, where, ctx) =>
    typeof value === 'boolean' ? value : problem(ctx, where, 'must be true or false (no quotes)'),
}

function int(min: number, max: number): Type<number> {
  return {
    range: [min, max],
    read(value, where, ctx) {
      const n = typeof value === 'bigint' ? Number(value) : value
      if (typeof n === 'number' && Number.isInteger(n) && n >= min && n <= max) return n
      return problem(ctx, where, `must be a whole number from ${min} to ${max}`)
    },
  }
}

function oneOf<T extends string>(choices: readonly T[]): Type<T> {
  return {
    choices,
    read(value, where, ctx) {
      const s = TEXT.read(value, where, ctx)
      if (s === undefined) return undefined
      if ((choices as readonly string[]).includes(s)) return s as T
      const hint = closestKey(s, choices)
      return problem(
        ctx,
        where,
        `"${s}" is not one of ${choices.map((c) => `"${c}"`).join(', ')}${hint === undefined ? '' : `; did you mean "${hint}"?`}`,
      )
    },
  }
}

/**
 * A table read row by row; an unknown key gets a "did you mean". `check` then looks at keys that
 * depend on each other.
 */
function table<T>(
  rows: Rows<T>,
  notATable: string,
  check?: (value: Partial<T>, where: string, ctx: Context) => void,
): Type<T> {
  const list = Object.entries(rows) as [string, Row<unknown, T> & { default?: unknown }][]
  const allowed = list.map(([, row]) => row.key)
  return {
    keys: list.map(([, row]) => ({ key: row.key, required: row.required !== undefined })),
    read(value, where, ctx) {
      if (!isTable(value)) return problem(ctx, where, notATable)
      for (const key of Object.keys(value)) {
        if (allowed.includes(key)) continue
        const hint = closestKey(key, allowed)
        problem(
          ctx,
          where === '' ? key : `${where}.${key}`,
          `unknown key${hint === undefined ? `; allowed keys: ${allowed.join(', ')}` : `; did you mean \`${hint}\`?`}`,
        )
      }
      const out: Record<string, unknown> = {}
      for (const [prop, row] of list) {
        const at = where === '' ? row.key : `${where}.${row.key}`
        const raw = value[row.key]
        if (raw === undefined && row.required !== undefined) problem(ctx, at, row.required)
        let v = raw === undefined ? undefined : row.type.read(raw, at, ctx)
        if (v === undefined && typeof row.default === 'function')
          v = (row.default as (ctx: Context, earlier: Partial<T>) => unknown)(ctx, out as Partial<T>)
        else if (v === undefined) v = row.default
        if (v !== undefined) out[prop] = v
      }
      check?.(out as Partial<T>, where, ctx)
      return Object.freeze(out) as T
    },
  }
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/

/** `[section.NAME]` tables; every value gets its `name`. */
function named<T extends { readonly name: string }>(
  section: string,
  rows: Rows<Omit<T, 'name'>>,
  options: { readonly badName?: string; readonly check?: (value: T, where: string, ctx: Context) => void },
): Type<Readonly<Record<string, T>>> {
  const one = table(rows, 'must be a table')
  return {
    read(value, where, ctx) {
      if (!isTable(value)) return problem(ctx, where, `must be a table of [${section}.NAME] tables`)
      const out: Record<string, T> = {}
      for (const [name, v] of Object.entries(value)) {
        const at = `${where}.${name}`
        if (options.badName !== undefined && !NAME.test(name)) problem(ctx, at, options.badName)
        const item = one.read(v, at, ctx)
        if (item === undefined) continue
        const full = Object.freeze({ name, ...item }) as unknown as T
        options.check?.(full, at, ctx)
        out[name] = full
      }
      return Object.freeze(out)
    },
  }
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/

/** `module-env`: variables are process-wide, so two tokens may not want different values for one. */
const MODULE_ENV: Type<Readonly<Record<string, string>>> = {
  read(value, where, ctx) {
    if (!isTable(value))
      return problem(ctx, where, 'must be an inline table like { SOFTHSM2_CONF = "/path/softhsm2.conf" }')
    const out: Record<string, string> = {}
    for (const [name, v] of Object.entries(value)) {
      const at = `${where}.${name}`
      if (!ENV_NAME.test(name)) problem(ctx, at, 'is not an environment variable name')
      else if (typeof v !== 'string') problem(ctx, at, 'must be a string')
      else if (ctx.moduleEnv.has(name) && ctx.moduleEnv.get(name) !== v)
        problem(ctx, at, `conflicts with another token's ${name}; the agent has one environment`)
      else {
        ctx.moduleEnv.set(name, v)
        out[name] = v
      }
    }
    return Object.freeze(out)
  },
}

const KEY_REF = table<KeyRef>(
  {
    token: row(
      'token',
      text((token, ctx) => {
        if (ctx.tokenNames.includes(token)) return undefined
        const hint = closestKey(token, ctx.tokenNames)
        return `"${token}" is not defined; add a [tokens.${token}] table${hint === undefined ? '' : ` or did you mean "${hint}"?`}`
      }),
      'the token the key is on',
      { required: 'missing; name a [tokens.NAME] table' },
    ),
    label: row('label', TEXT, "the key's CKA_LABEL"),
    id: row(
      'id',
      text(
        (id) => (/^([0-9a-fA-F]{2})+$/.test(id) ? undefined : 'must be hex bytes, e.g. "01"'),
        (id) => id.toLowerCase(),
      ),
      "the key's CKA_ID in hex",
    ),
  },
  'must be an inline table like { token = "NAME", label = "cargo" }',
  (ref, where, ctx) => {
    if (ref.label === undefined && ref.id === undefined)
      problem(ctx, where, 'needs `label` or `id` to find the key on the token')
  },
)

const LIFETIME = int(0, LIMITS.configLifetimeMaxSeconds)

export const AGENT_ROWS: Rows<AgentSettings> = {
  socket: row('socket', TEXT, 'where the agent listens'),
  headless: row('headless', BOOL, 'never prompt', { default: (ctx) => ctx.env['CI'] === 'true' }),
  auditLog: row('audit-log', TEXT, "one fsync'd JSON line per signing decision", {
    default: (ctx) => defaultAuditLogPath(ctx.env),
  }),
  touchNoticeAfterMs: row(
    'touch-notice-after-ms',
    int(0, LIMITS.touchNoticeMaxMs),
    'delay before "Touch your YubiKey …" is shown',
    { default: LIMITS.touchNoticeAfterMs },
  ),
  pinCacheIdleSeconds: row('pin-cache-idle-seconds', LIFETIME, 'a cached PIN ends after this long unused', {
    default: LIMITS.pinCacheIdleSeconds,
  }),
  pinCacheMaxSeconds: row(
    'pin-cache-max-seconds',
    LIFETIME,
    'a cached PIN ends this long after it was typed',
    { default: LIMITS.pinCacheMaxSeconds },
  ),
  releaseAfterIdleSeconds: row(
    'release-after-idle-seconds',
    int(1, LIMITS.configLifetimeMaxSeconds),
    'close all device sessions after this long without requests',
  ),
  notify: row('notify', BOOL, 'desktop notifications', { default: true }),
}

const WHICH_TOKEN = 'which token of that module'

export const TOKEN_ROWS: Rows<Omit<TokenConfig, 'name'>> = {
  module: row(
    'module',
    text((module) => {
      // A path's existence is checked when the agent starts (src/cli/run.ts); doctor reports it per token.
      if (module.includes('/')) return module.startsWith('/') ? undefined : 'a module path must be absolute'
      const names = Object.keys(knownModules())
      if (names.includes(module)) return undefined
      const hint = closestKey(module, names)
      return `unknown PKCS#11 module name "${module}" (known: ${names.join(', ')}; or the library's absolute path)${hint === undefined ? '' : `; did you mean "${hint}"?`}`
    }),
    'the PKCS#11 library',
    { required: 'missing; give a PKCS#11 library path or one of softhsm, ykcs11, tpm2, opensc' },
  ),
  label: row('label', TEXT, WHICH_TOKEN),
  serial: row('serial', TEXT, WHICH_TOKEN),
  manufacturer: row('manufacturer', TEXT, WHICH_TOKEN),
  model: row('model', TEXT, WHICH_TOKEN),
  pinSource: row('pin-source', oneOf(PIN_SOURCES), 'where the PIN comes from', { default: 'tty' }),
  pinEnv: row('pin-env', TEXT, "the agent's environment variable holding the PIN"),
  pinFile: row('pin-file', ABSOLUTE, 'the file holding the PIN'),
  pinentryProgram: row('pinentry-program', TEXT, 'the pinentry program'),
  confirmFinalTry: row(
    'confirm-final-try',
    BOOL,
    "at the token's final PIN try, use a PIN only after an explicit yes",
    { default: true },
  ),
  kind: row('kind', oneOf(TOKEN_KINDS), 'the kind of device'),
  moduleEnv: row('module-env', MODULE_ENV, 'environment the module reads at C_Initialize', {
    default: Object.freeze({}),
  }),
}

export const REGISTRY_ROWS: Rows<Omit<RegistryConfig, 'name'>> = {
  index: row('index', text(checkIndexUrl), 'the index URL exactly as cargo sends it', {
    required:
      'missing; the index URL exactly as cargo sends it, e.g. "sparse+https://registry.example/index/"',
  }),
  readKey: row('read-key', KEY_REF, 'key for read tokens', {
    required: 'missing; e.g. read-key = { token = "yubikey", label = "cargo" }',
  }),
  mutationKey: row('mutation-key', KEY_REF, 'key for publish / yank / unyank / owners', {
    default: (_ctx, earlier) => earlier.readKey,
  }),
  subject: row('subject', TEXT, 'sub claim'),
  tokenMaxAgeSeconds: row(
    'token-max-age-seconds',
    int(1, LIMITS.maxTokenMaxAgeSeconds),
    'the iat window the registry accepts',
    { default: LIMITS.defaultTokenMaxAgeSeconds },
  ),
  confirm: row('confirm', oneOf(CONFIRM_MODES), 'confirmation for mutations', {
    unset: '`"touch"` when the mutation key attests touch `always` or `cached`, else `"prompt"`',
  }),
  mutationsPerHour: row(
    'mutations-per-hour',
    int(0, LIMITS.maxMutationsPerHour),
    'sliding one-hour limit per registry',
    { default: LIMITS.defaultMutationsPerHour },
  ),
  forwarded: row(
    'forwarded',
    oneOf(FORWARDED_MODES),
    'what requests through an SSH-forwarded socket may do',
    {
      default: LIMITS.defaultForwarded,
    },
  ),
  generateOnLogin: row('generate-on-login', BOOL, 'let cargo login generate a missing key on the device', {
    default: false,
  }),
}

const AGENT = table(AGENT_ROWS, 'must be a table ([agent])', (agent, _where, ctx) => {
  if ((agent.pinCacheIdleSeconds ?? 0) > (agent.pinCacheMaxSeconds ?? 0))
    problem(ctx, 'agent.pin-cache-idle-seconds', 'must not exceed pin-cache-max-seconds')
})

const TOKENS = named<TokenConfig>('tokens', TOKEN_ROWS, {
  badName: 'token names use letters, digits, "-" and "_"',
  check(token, where, ctx) {
    // A pin-env / pin-file already refused (empty, relative) is not also "missing".
    const refused = (key: string): boolean => ctx.issues.some((i) => i.startsWith(`${where}.${key}:`))
    if (token.pinSource === 'env' && token.pinEnv === undefined && !refused('pin-env'))
      problem(
        ctx,
        `${where}.pin-env`,
        'missing; pin-source = "env" needs the variable name, e.g. pin-env = "TOKEN_PIN"',
      )
    if (token.pinSource === 'file' && token.pinFile === undefined && !refused('pin-file'))
      problem(
        ctx,
        `${where}.pin-file`,
        'missing; pin-source = "file" needs a path to a file readable only by you',
      )
  },
})

const REGISTRIES = named<RegistryConfig>('registries', REGISTRY_ROWS, {
  check(registry, where, ctx) {
    if (registry.index === undefined) return
    const other = ctx.indexes.get(registry.index)
    if (other !== undefined)
      problem(ctx, `${where}.index`, `the same index is already bound by [registries.${other}]`)
    ctx.indexes.set(registry.index, registry.name)
  },
})

const CONFIG = table<Omit<Config, 'path'>>(
  {
    agent: row('agent', AGENT, 'the agent process', { default: (ctx) => AGENT.read({}, 'agent', ctx) }),
    tokens: row('tokens', TOKENS, 'PKCS#11 tokens by name', { default: Object.freeze({}) }),
    registries: row('registries', REGISTRIES, 'registry bindings by name', { default: Object.freeze({}) }),
  },
  'is not a TOML table',
)

/**
 * Index URLs as cargo sends them (docs/configuration.md, `index`): `sparse+http(s)://…` for sparse
 * registries, the plain git URL otherwise. Compared byte for byte, so the check is about catching
 * typos, not normalising.
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

/** Validates a parsed TOML document. Throws one CONFIG_INVALID listing every problem found. */
export function validateConfig(doc: unknown, path: string | undefined, env: Env = process.env): Config {
  const file = path ?? 'config'
  if (!isTable(doc))
    throw new AgentError('CONFIG_INVALID', `${file} is not a TOML table`, {
      remedy: 'See docs/configuration.md for a full example',
    })
  const tokens = doc['tokens']
  const ctx: Context = {
    env,
    issues: [],
    tokenNames: isTable(tokens) ? Object.keys(tokens) : [],
    moduleEnv: new Map(),
    indexes: new Map(),
  }
  const config = CONFIG.read(doc, '', ctx) as Omit<Config, 'path'>
  const { issues } = ctx
  if (issues.length > 0) {
    const many = issues.length > 1
    throw new AgentError(
      'CONFIG_INVALID',
      `${file} has ${many ? `${issues.length} problems` : 'a problem'}:\n  ${issues.join('\n  ')}`,
      {
        remedy: 'Fix the keys named above; docs/configuration.md lists every key with an example',
        data: { path: file, problems: issues.length },
      },
    )
  }
  return Object.freeze(path === undefined ? config : { path, ...config })
}

/** Only PIV cards (ykcs11) attest their keys' policies; other tokens have no touch policy to read. */
export function isPivToken(token: TokenConfig): boolean {
  return token.kind === 'yubikey' || /ykcs11/i.test(token.module)
}

/** A mutation key's touch policy as the agent read it at start (attestation or metadata). */
export type MutationKeyTouch =
  | { readonly key: string; readonly touchPolicy: string | undefined }
  | { readonly key: string; readonly unread: string }

/** `confirm` as the agent applies it, and why: status and doctor show `reason`. */
export interface EffectiveConfirm {
  readonly mode: ConfirmMode
  /** `config`: the file sets it; `default`: resolved because the file does not. */
  readonly source: 'config' | 'default'
  /**
   * The mutation key's card attests touch always/cached, so a touch is the device's to ask. A
   * `touch` that is not attested is only what the operator asserted (docs/policy.md, "Touch the
   * agent cannot check"): a reload ranks it as `none` and a forwarded mutation is asked in pinentry.
   */
  readonly touchAttested: boolean
  /** e.g. "touch — default, key 9c attests touch always". */
  readonly reason: string
  /** Set for `confirm = "touch"` on a key that attests no touch: logged at start, shown by status and doctor. */
  readonly warning?: string
}

/**
 * The touch policies that make `touch` the default (docs/policy.md, "Touch as the default"): the
 * card then asks for a finger on every mutation (`always`) or once per 15 s (`cached`), which
 * confirms on a channel no process holds; `never` confirms nothing, so the prompt stays.
 */
const TOUCH_CONFIRMS: readonly string[] = ['always', 'cached']

/**
 * An unset `confirm` is `touch` on a mutation key that attests touch always/cached, else
 * `LIMITS.defaultConfirm`; a set one is what the file says (`confirm = "touch"` on a touch-never
 * key is refused at start, src/agent/devices.ts; on a key that attests no touch it is honoured
 * with a `warning`). `mutation` is undefined when the key's device shows no policies (not a PIV card).
 */
export function effectiveConfirm(registry: RegistryConfig, mutation?: MutationKeyTouch): EffectiveConfirm {
  const seen =
    mutation === undefined
      ? 'the mutation key shows no touch policy'
      : 'unread' in mutation
        ? `the touch policy of ${mutation.key} could not be read (${mutation.unread})`
        : mutation.touchPolicy === undefined
          ? `${mutation.key} shows no touch policy`
          : `${mutation.key} attests touch ${mutation.touchPolicy}`
  const touchAttested =
    mutation !== undefined && 'touchPolicy' in mutation && TOUCH_CONFIRMS.includes(mutation.touchPolicy ?? '')
  if (registry.confirm !== undefined) {
    const named =
      mutation === undefined
        ? `the mutation key (${describeRef(registry.mutationKey)}) shows no touch policy`
        : seen
    return {
      mode: registry.confirm,
      source: 'config',
      touchAttested,
      reason: `${registry.confirm} — set in the config, ${seen}`,
      ...(registry.confirm === 'touch' && !touchAttested
        ? {
            warning: `registry ${registry.name}: confirm = "touch" but ${named}: the agent cannot check that the device asks for a touch, so a reload counts it as no confirmation, and forwarded mutations are asked in the agent's pinentry`,
          }
        : {}),
    }
  }
  const mode = touchAttested ? 'touch' : LIMITS.defaultConfirm
  return { mode, source: 'default', touchAttested, reason: `${mode} — default, ${seen}` }
}

function describeRef(ref: KeyRef): string {
  return [
    `token "${ref.token}"`,
    ref.label === undefined ? undefined : `label "${ref.label}"`,
    ref.id === undefined ? undefined : `id ${ref.id}`,
  ]
    .filter((p) => p !== undefined)
    .join(' ')
}

/** The registry a request's `index-url` is bound to: exact string match (RFC 3231 footer `url`). */
export function registryFor(config: Config, indexUrl: string): RegistryConfig | undefined {
  for (const registry of Object.values(config.registries)) if (registry.index === indexUrl) return registry
  return undefined
}
