/**
 * Stage "respond": the answer to `sign`, with the cache rule cargo gets with the token
 * (docs/cargo-protocol.md, "Caching").
 */
import type { Operation } from '../../cargo/operation.js'
import type { CacheControl } from '../../cargo/protocol.js'
import type { RegistryConfig } from '../../config/schema.js'
import { LIMITS } from '../../lib/limits.js'
import type { Signed } from './sign.js'

/** The `sign` method's result (docs/agent-protocol.md). */
export type SignAnswer = {
  readonly token: string
  readonly kip: string
  /** Seconds since the epoch, as in the token's `iat`. */
  readonly iat: number
  /** Which device key signed, for the shim's "signed … with …" line. */
  readonly key: string
} & CacheControl

export function respond(
  operation: Operation,
  signed: Signed & { readonly key: string },
  registry: Pick<RegistryConfig, 'tokenMaxAgeSeconds'>,
): SignAnswer {
  return {
    token: signed.token,
    kip: signed.kip,
    iat: signed.iatSeconds,
    key: signed.key,
    ...cacheControl(operation, signed.iatSeconds, registry),
  }
}

/**
 * Mutations: `never` (each is bound to one crate/version/cksum). Reads: `expires` at
 * iat + the registry's accepted age + 60 s − a safety margin. cargo stops reusing a cached token
 * 60 s before `expiration` (auth/mod.rs), so every reuse happens while the token is still at least
 * `readTokenCacheSafetySeconds` inside the registry's window. `session` (cargo:paseto's choice) would
 * let a read token go stale during a long `cargo publish` and the post-upload index polling fail.
 */
export function cacheControl(
  operation: Operation,
  iatSeconds: number,
  registry: Pick<RegistryConfig, 'tokenMaxAgeSeconds'>,
): CacheControl {
  if (operation !== 'read') return { cache: 'never' }
  const expiration =
    iatSeconds +
    registry.tokenMaxAgeSeconds +
    LIMITS.cargoCacheReuseMarginSeconds -
    LIMITS.readTokenCacheSafetySeconds
  // A window shorter than the safety margin leaves nothing to reuse: do not cache at all.
  if (expiration <= iatSeconds + LIMITS.cargoCacheReuseMarginSeconds) return { cache: 'never' }
  return { cache: 'expires', expiration }
}
