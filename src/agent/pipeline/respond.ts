/**
 * Stage 6: the cache answer cargo gets with a token (spec §1.5, design "Token rules").
 */
import type { CacheControl } from '../../cargo/protocol.js'
import type { RegistryConfig } from '../../config/schema.js'
import { LIMITS } from '../../lib/limits.js'

/**
 * Mutations: `never` (each is bound to one crate/version/cksum). Reads: `expires` at
 * iat + the registry's accepted age + 60 s − a safety margin. cargo stops reusing a cached token
 * 60 s before `expiration` (auth/mod.rs), so every reuse happens while the token is still at least
 * `readTokenCacheSafetySeconds` inside the registry's window. `session` (cargo:paseto's choice) would
 * let a read token go stale during a long `cargo publish` and the post-upload index polling fail.
 */
export function cacheControl(
  operation: string,
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
