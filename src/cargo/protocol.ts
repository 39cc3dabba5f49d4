/**
 * cargo's credential-provider protocol v1 (stable since cargo 1.74), as the serde types in
 * `credential/cargo-credential/src/lib.rs` define it (docs/cargo-protocol.md §1). Builtins only: the shim loads this.
 */
import { AgentError, type ErrorCode } from '../lib/errors.js'
import { isRecord } from '../lib/json.js'
import { isOperation, OPERATION_FIELDS, OPERATIONS, type CrateRef, type Operation } from './operation.js'

/** `{"v":[1]}`: the versions this provider speaks (docs/cargo-protocol.md §1.3). */
export const HELLO = '{"v":[1]}'

export interface CargoRegistry {
  readonly indexUrl: string
  readonly name?: string
  readonly headers?: readonly string[]
}

interface Common {
  readonly registry: CargoRegistry
  /** Configured provider args followed by `cargo login -- <args>` (docs/cargo-protocol.md §1.4). */
  readonly args: readonly string[]
}

export interface CargoGet extends Common {
  readonly kind: 'get'
  readonly operation: Operation
  /** Only the fields `operation` carries (OPERATION_FIELDS); empty for reads. */
  readonly crate: CrateRef
}

export interface CargoLogin extends Common {
  readonly kind: 'login'
  /** Whatever the user piped into `cargo login`; a hardware key needs no token, so it is only noted. */
  readonly hasToken: boolean
  readonly loginUrl?: string
}

export interface CargoLogout extends Common {
  readonly kind: 'logout'
}

export type CargoRequest = CargoGet | CargoLogin | CargoLogout

function invalid(message: string): AgentError {
  return new AgentError('REQUEST_INVALID', message, {
    remedy:
      'cargo sent something this provider cannot read; update cargo-credential-pkcs11 or report the request line',
  })
}

function unsupported(message: string): AgentError {
  return new AgentError('OPERATION_UNSUPPORTED', message, {
    remedy:
      'Use a cargo operation this provider supports (read, publish, yank, unyank, owners, login, logout)',
  })
}

function optionalString(value: Record<string, unknown>, key: string): string | undefined {
  const field = value[key]
  if (field === undefined || field === null) return undefined
  if (typeof field !== 'string') throw invalid(`The request's \`${key}\` is not a string`)
  return field
}

const CKSUM = /^[0-9a-f]{64}$/

/**
 * Parses the request line. Unknown `kind`/`operation` values throw OPERATION_UNSUPPORTED (cargo's
 * helper crate maps them to `Unknown` for forward compatibility, docs/cargo-protocol.md §1.4); everything malformed
 * throws REQUEST_INVALID. Unknown extra keys are ignored, as serde does.
 */
export function parseCargoRequest(line: string): CargoRequest {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch {
    throw invalid('The request from cargo is not valid JSON')
  }
  if (!isRecord(value)) throw invalid('The request from cargo is not a JSON object')
  if (value['v'] !== 1)
    throw invalid(
      `The request asks for protocol version ${JSON.stringify(value['v'])}; this provider speaks version 1`,
    )
  const registry = value['registry']
  if (!isRecord(registry)) throw invalid('The request has no `registry` object')
  const indexUrl = registry['index-url']
  if (typeof indexUrl !== 'string' || indexUrl === '')
    throw invalid("The request's registry has no `index-url`")
  const reg: { indexUrl: string; name?: string; headers?: string[] } = { indexUrl }
  const regName = optionalString(registry, 'name')
  if (regName !== undefined) reg.name = regName
  const headers = registry['headers']
  if (Array.isArray(headers)) reg.headers = headers.filter((h): h is string => typeof h === 'string')
  const rawArgs = value['args']
  if (rawArgs !== undefined && (!Array.isArray(rawArgs) || rawArgs.some((a) => typeof a !== 'string'))) {
    throw invalid("The request's `args` is not a list of strings")
  }
  const args = (rawArgs ?? []) as string[]
  const kind = value['kind']
  if (typeof kind !== 'string') throw invalid('The request has no `kind`')
  switch (kind) {
    case 'get': {
      const operation = value['operation']
      if (typeof operation !== 'string') throw invalid('A `get` request has no `operation`')
      if (!isOperation(operation))
        throw unsupported(
          `cargo asked for the unknown operation \`${operation}\` (this provider knows ${OPERATIONS.join(', ')})`,
        )
      const fields = {
        name: optionalString(value, 'name'),
        vers: optionalString(value, 'vers'),
        cksum: optionalString(value, 'cksum'),
      }
      // Which fields each operation carries: docs/cargo-protocol.md §1.4 (lib.rs `Operation`); the
      // others are dropped.
      const crate: { -readonly [K in keyof CrateRef]: CrateRef[K] } = {}
      for (const field of OPERATION_FIELDS[operation]) {
        const given = fields[field]
        if (given === undefined || given === '')
          throw invalid(`A \`${operation}\` request has no ${field === 'name' ? 'crate ' : ''}\`${field}\``)
        crate[field] = given
      }
      if (operation === 'publish' && !CKSUM.test(crate.cksum ?? ''))
        throw invalid("The `publish` request's `cksum` is not a lowercase hex SHA-256")
      return { kind: 'get', registry: reg, args, operation, crate }
    }
    case 'login': {
      const login: { -readonly [K in keyof CargoLogin]: CargoLogin[K] } = {
        kind: 'login',
        registry: reg,
        args,
        hasToken: typeof value['token'] === 'string',
      }
      const loginUrl = optionalString(value, 'login-url')
      if (loginUrl !== undefined) login.loginUrl = loginUrl
      return login
    }
    case 'logout':
      return { kind: 'logout', registry: reg, args }
    default:
      throw unsupported(`cargo asked for the unknown action \`${kind}\``)
  }
}

export type CacheControl =
  { cache: 'never' } | { cache: 'session' } | { cache: 'expires'; expiration: number }

export type CargoErrorKind = 'url-not-supported' | 'not-found' | 'operation-not-supported' | 'other'

/** Response lines (docs/cargo-protocol.md §1.5): serde's externally tagged Result, compact, one line. */
export function okGet(token: string, cache: CacheControl): string {
  // operation_independent is always false for asymmetric tokens: a cached read token must never be
  // sent for a publish/yank (docs/cargo-protocol.md §1.5, §2.5).
  return JSON.stringify({ Ok: { kind: 'get', token, ...cache, operation_independent: false } })
}

export function okLogin(): string {
  return '{"Ok":{"kind":"login"}}'
}

export function okLogout(): string {
  return '{"Ok":{"kind":"logout"}}'
}

export function err(kind: Exclude<CargoErrorKind, 'other'>): string {
  return JSON.stringify({ Err: { kind } })
}

export function errOther(message: string, causedBy: readonly string[] = []): string {
  return JSON.stringify(
    causedBy.length === 0
      ? { Err: { kind: 'other', message } }
      : { Err: { kind: 'other', message, 'caused-by': causedBy } },
  )
}

/**
 * How an agent failure reaches cargo. `url-not-supported` and `not-found` make cargo try the next
 * provider (docs/cargo-protocol.md §1.5), so they are used only where that is right: a registry this agent does not
 * serve, and — for `get` — a registry with no key yet (so `cargo login` can proceed, docs/cargo-protocol.md §1.7).
 */
export function cargoErrorFor(error: AgentError, kind: CargoRequest['kind']): string {
  const code: ErrorCode = error.code
  if (code === 'REGISTRY_NOT_CONFIGURED') return err('url-not-supported')
  if (code === 'OPERATION_UNSUPPORTED') return err('operation-not-supported')
  if (code === 'KEY_NOT_FOUND' && kind === 'get') return err('not-found')
  const causes: string[] = []
  if (error.remedy !== undefined) causes.push(error.remedy)
  causes.push(`cargo-pkcs11-agent error code ${code}`)
  return errOther(error.message, causes)
}
