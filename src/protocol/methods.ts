/**
 * The agent socket's method map: for each method, what the client sends, what the agent answers,
 * and which questions the agent may ask back while the request runs. The agent's method table
 * (src/agent/methods/index.ts), the client (client.ts) and the shim (src/shim/main.ts) are all
 * typed by it, so a change on one side breaks the build, not a user. Wire format:
 * docs/agent-protocol.md.
 */
import type { RequesterClaim } from '../cargo/intent.js'
import type { CacheControl } from '../cargo/protocol.js'
import type { TriesLeft, WireError } from '../lib/errors.js'

/** Params of the administrative methods that may need a PIN (pubkey, keygen). */
export interface AdminParams {
  requester?: RequesterClaim
  /** The client has a terminal on which it can ask for a PIN (a yes/no it is never asked). */
  interactive?: boolean
}

/** Params of the methods that carry cargo's own request line (sign, login, logout). */
export interface CargoParams extends AdminParams {
  /** The request line exactly as cargo wrote it; the agent parses it itself. */
  cargo: string
}

/** A device key as a registry operator registers it (RFC 3231 key registration). */
export interface KeyInfo {
  token: string
  label: string
  /** CKA_ID, lowercase hex. */
  id: string
  k3Public: string
  k3Pid: string
}

export interface KeyRefInfo {
  token: string
  label?: string
  id?: string
}

/** CK_TOKEN_INFO as `status` reports it (PKCS#11 v2.40 section 3.2). */
export interface TokenStatusInfo {
  present: boolean
  label?: string
  serial?: string
  manufacturer?: string
  model?: string
  loginRequired: boolean
  loggedIn: boolean
  protectedAuthPath: boolean
  pinCountLow: boolean
  pinFinalTry: boolean
  pinLocked: boolean
  sessionsOpen: number
}

/** What a PIV card attests about a key (src/verify/attestation.ts). */
export interface KeyPolicies {
  pinPolicy?: string | undefined
  touchPolicy?: string | undefined
}

export interface StatusResult {
  pid: number
  socket: string
  config: string | null
  headless: boolean
  /** Whether other processes of the user may trace the agent or get its core (PR_GET_DUMPABLE; Linux). */
  dumpable?: boolean
  tokens: {
    name: string
    module: string
    pinSource: string
    pinCached: boolean
    status?: TokenStatusInfo
    error?: WireError
  }[]
  registries: {
    /** The PIN/touch policy each bound key's card attests; null where the module shows none. */
    keyPolicies: { read: KeyPolicies | null; mutation: KeyPolicies | null }
    name: string
    index: string
    readKey: KeyRefInfo
    mutationKey: KeyRefInfo
    /** The effective `confirm`, and why: "touch — default, key 9c attests touch always". */
    confirm: string
    confirmReason: string
    /** Why the agent cannot check this `confirm` (touch on a key that attests none); absent when it can. */
    confirmWarning?: string
    tokenMaxAgeSeconds: number
    mutationsLastHour: number
    mutationsPerHour: number
  }[]
}

export type SignResult = {
  token: string
  /** PASERK k3.pid of the signing key (the token footer's `kip`). */
  kip: string
  /** The token's `iat`, seconds since the epoch. */
  iat: number
  /** Which device key signed, for the shim's "signed … with …" line. */
  key: string
} & CacheControl

/**
 * The questions the agent may ask the requesting client, and the answers it expects. Only a PIN: a
 * yes/no is never asked of the client that made the request, since it could answer it itself
 * (docs/design.md §4, rule 2).
 */
export interface Queries {
  pin: {
    data: { tokenDescription: string; reason: string; prompt: string; triesLeft?: TriesLeft }
    answer: { pin: string }
  }
}
export type QueryName = keyof Queries

export interface Methods {
  ping: { params: Record<string, never>; result: { pong: true; v: number; pid: number }; queries: never }
  status: { params: Record<string, never>; result: StatusResult; queries: never }
  /** Forget every PIN and close every session. */
  lock: { params: Record<string, never>; result: { forgotten: number; released: number }; queries: never }
  /** Close every session so other programs can use the devices; PINs stay cached. */
  release: { params: Record<string, never>; result: { released: number }; queries: never }
  /** Re-read the config file (refused if it does not load or weakens protection); PINs and sessions go either way. */
  reload: { params: Record<string, never>; result: { config: string | null }; queries: never }
  sign: { params: CargoParams; result: SignResult; queries: QueryName }
  pubkey: {
    params: AdminParams & { registry?: string; indexUrl?: string }
    result: {
      registries: { registry: string; index: string; readKey: KeyInfo; mutationKey: KeyInfo }[]
    }
    queries: 'pin'
  }
  /** `cargo login`: the bound keys, generated first only with consent. */
  login: {
    params: CargoParams
    result: { registry: string; keys: KeyInfo[]; generated: string[] }
    queries: 'pin'
  }
  /** `cargo logout`: forget the cached PINs of the registry's tokens. */
  logout: { params: CargoParams; result: { registry: string; forgotten: number }; queries: never }
  keygen: {
    params: AdminParams & { token: string; label: string; id?: string; force?: boolean }
    result: KeyInfo
    queries: 'pin'
  }
}
export type Method = keyof Methods
export type Params<M extends Method> = Methods[M]['params']
export type Result<M extends Method> = Methods[M]['result']
/** A method's params, then request options; params may be left out where none is required. */
export type RequestArgs<M extends Method, O> =
  Record<string, never> extends Params<M>
    ? [params?: Params<M>, options?: O]
    : [params: Params<M>, options?: O]

/** Every method, in the order docs/agent-protocol.md lists them; the compiler checks it is complete. */
export const METHODS = [
  'ping',
  'status',
  'lock',
  'release',
  'reload',
  'pubkey',
  'sign',
  'login',
  'logout',
  'keygen',
] as const satisfies readonly Method[]
type Missing = Exclude<Method, (typeof METHODS)[number]>
const complete: Missing extends never ? true : never = true
void complete

export function isMethod(value: unknown): value is Method {
  return typeof value === 'string' && (METHODS as readonly string[]).includes(value)
}

/** Agent → client notices while a request runs. Clients ignore events they do not know. */
export type EventName = 'touch-pending' | 'pin-needed' | 'confirm-waiting' | 'progress'
