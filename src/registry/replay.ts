/**
 * Single use for mutation tokens. RFC 3231 lets a registry refuse a mutation token it has seen
 * ("Registry checks": a registry may keep used tokens until they expire); cargo signs every
 * mutation afresh, so only a copied token is ever presented twice. A token is remembered by its
 * SHA-256 until its `iat` + the accepted age: after that the verifier refuses it as IAT_STALE, so
 * forgetting it cannot let it back in. Memory is bounded; when full, new mutations are refused
 * (RATE_LIMITED) instead of forgetting tokens that are still valid.
 */
import { createHash } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { fail } from '../verify/errors.js'

export interface SingleUseStoreOptions {
  /** Default LIMITS.registryReplayStoreMaxEntries. */
  readonly maxEntries?: number
  /** For tests: the clock, in milliseconds. */
  readonly now?: () => number
}

export class SingleUseStore {
  /** token SHA-256 (hex) -> when it may be forgotten (ms). Insertion order is roughly expiry order. */
  readonly #seen = new Map<string, number>()
  readonly #maxEntries: number
  readonly #now: () => number

  constructor(options: SingleUseStoreOptions = {}) {
    this.#maxEntries = options.maxEntries ?? LIMITS.registryReplayStoreMaxEntries
    this.#now = options.now ?? Date.now
  }

  get size(): number {
    return this.#seen.size
  }

  /**
   * Records `token` as used until `forgetAfter`; throws TOKEN_REPLAYED if it already was, and
   * RATE_LIMITED when the store is full of tokens that are all still valid.
   */
  use(token: string, forgetAfter: Date): void {
    const id = createHash('sha256').update(token).digest('hex')
    const now = this.#now()
    const until = this.#seen.get(id)
    if (until !== undefined && until >= now) {
      fail(
        'TOKEN_REPLAYED',
        'this mutation token was already used',
        'Mutation tokens are single-use; let cargo ask the credential provider for a fresh one',
      )
    }
    if (this.#seen.size >= this.#maxEntries) this.#sweep(now)
    if (this.#seen.size >= this.#maxEntries) {
      throw new AgentError('RATE_LIMITED', 'too many mutations in the accepted token window', {
        remedy: 'Retry in a minute; the registry operator can raise the single-use store size',
        data: { status: 429 },
      })
    }
    this.#seen.delete(id)
    this.#seen.set(id, forgetAfter.valueOf())
  }

  /** Forgets every token whose window has closed. `use` calls it when the store is full. */
  sweep(): void {
    this.#sweep(this.#now())
  }

  #sweep(now: number): void {
    for (const [id, until] of this.#seen) if (until < now) this.#seen.delete(id)
  }
}
