/**
 * A registry's RFC 3231 check of one request: find the route's operation, take the crate claims
 * from the URL or the publish body, find the key by the token's `kip` (`resolveKey`), verify for
 * exactly that operation, and refuse a mutation token seen before. Framework-free: `http.ts` wraps
 * it as node:http middleware, the gateway calls it directly.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { crateFor, type CrateRef, type Operation } from '../cargo/operation.js'
import { fail } from '../verify/errors.js'
import { inspectToken, verifyToken, type VerifiedToken } from '../verify/verify.js'
import { printableKip, type RegisteredKey } from './keys-file.js'
import { parsePublishBody, type PublishBody } from './publish-body.js'
import { SingleUseStore } from './replay.js'
import { matchRoute, type RouteLayout, type RouteMatch } from './routes.js'

export interface CargoAuthOptions {
  /** This registry's index URL exactly as cargo sends it and tokens carry it (`sparse+https://…/index/`). */
  readonly url: string
  /** The key registered under `kip` (a `k3.public.…` or a RegisteredKey with user and subject), or undefined. */
  readonly resolveKey: (
    kip: string,
  ) => RegisteredKey | string | undefined | Promise<RegisteredKey | string | undefined>
  /** Reads need a read token (`"auth-required": true` in config.json). Default true. */
  readonly authRequired?: boolean
  /** Accepted token age, seconds (default LIMITS.defaultTokenMaxAgeSeconds, at most 900). */
  readonly maxAgeSeconds?: number
  readonly clockSkewSeconds?: number
  readonly strictLowS?: boolean
  /** Where mutation tokens are remembered; `false` turns single use off. Default: one per CargoAuth. */
  readonly singleUse?: SingleUseStore | false
  readonly layout?: RouteLayout
  /** Sent as `WWW-Authenticate: Cargo login_url="…"` with every 401 (cargo prints it, `cargo login` opens it). */
  readonly loginUrl?: string
  /** Largest publish body read. Default LIMITS.registryMaxUploadBytes. */
  readonly maxUploadBytes?: number
  readonly now?: () => Date
}

/** What a request was allowed to do, by whom. */
export interface CargoRequestAuth {
  readonly route: RouteMatch
  readonly operation: Operation
  /** The verified claims' crate: exactly the fields the operation carries (publish: name, vers, cksum). */
  readonly crate: CrateRef
  /** undefined when no token was needed (reads without auth-required). */
  readonly token?: {
    readonly kip: string
    readonly user?: string | undefined
    readonly verified: VerifiedToken
  }
  /** Publish only: the parsed body (metadata and the .crate bytes). */
  readonly publish?: PublishBody
}

export class CargoAuth {
  readonly options: CargoAuthOptions
  readonly singleUse: SingleUseStore | undefined

  constructor(options: CargoAuthOptions) {
    if (typeof options?.url !== 'string' || options.url === '')
      throw new AgentError('USAGE', 'CargoAuth needs `url`, the index URL as cargo sends it', {
        remedy: 'Pass the registry index URL exactly as users configure it, e.g. sparse+https://host/index/',
      })
    if (typeof options.resolveKey !== 'function')
      throw new AgentError('USAGE', 'CargoAuth needs `resolveKey(kip)`', {
        remedy: 'Pass a function that returns the k3.public registered under a key id, or undefined',
      })
    this.options = options
    this.singleUse = options.singleUse === false ? undefined : (options.singleUse ?? new SingleUseStore())
  }

  route(method: string, path: string): RouteMatch | undefined {
    return matchRoute(method, path, this.options.layout)
  }

  needsToken(route: RouteMatch): boolean {
    return route.operation !== 'read' || this.options.authRequired !== false
  }

  /**
   * Checks one request. `body` is needed for publish (the whole body, already read). Throws a
   * VerifyError (the token is refused: answer 401) or an AgentError (a bad request: its
   * `data.status`, else 400 for REQUEST_INVALID).
   */
  async check(
    route: RouteMatch,
    authorization: string | undefined,
    body?: Uint8Array,
  ): Promise<CargoRequestAuth> {
    let publish: PublishBody | undefined
    let crate = crateFor(route.operation, route.crate)
    if (route.kind === 'publish') {
      // The body is judged before the token: an unparseable upload has no cksum to compare.
      publish = parsePublishBody(body ?? new Uint8Array(0))
      crate = publish.crate
    }
    const base = { route, operation: route.operation, crate, ...(publish === undefined ? {} : { publish }) }
    if (!this.needsToken(route)) return base
    if (authorization === undefined || authorization === '')
      fail(
        'TOKEN_MISSING',
        `this registry needs an RFC 3231 token for ${route.operation} requests`,
        'Configure a credential provider for this registry that makes asymmetric tokens (cargo-credential-pkcs11 or cargo:paseto)',
      )
    const { footer } = inspectToken(authorization)
    const found = await this.options.resolveKey(footer.kip)
    const key: RegisteredKey | undefined = typeof found === 'string' ? { publicKey: found } : found
    if (key === undefined)
      fail(
        'KEY_ID_MISMATCH',
        `no key with id ${printableKip(footer.kip)} is registered with this registry`,
        'Register the k3.public key that `cargo-pkcs11-agent pubkey` prints with the registry operator',
      )
    const now = this.options.now?.() ?? new Date()
    const maxAgeSeconds = this.options.maxAgeSeconds ?? LIMITS.defaultTokenMaxAgeSeconds
    const verified = await verifyToken(authorization, {
      publicKey: key.publicKey,
      url: this.options.url,
      operation: route.operation,
      crate,
      subject: key.subject,
      maxAgeSeconds,
      clockSkewSeconds: this.options.clockSkewSeconds,
      strictLowS: this.options.strictLowS,
      now,
    })
    if (route.operation !== 'read')
      this.singleUse?.use(authorization, new Date(verified.iat.valueOf() + maxAgeSeconds * 1000))
    return { ...base, token: { kip: footer.kip, user: key.user, verified } }
  }
}
