/**
 * Single use for mutation tokens. RFC 3231 lets a registry refuse a mutation token it has seen
 * ("Registry checks": a registry may keep used tokens until they expire); cargo signs every
 * mutation afresh, so only a copied token is ever presented twice. A token is remembered by its
 * replayKey until its `iat` + the accepted age: after that the verifier refuses it as IAT_STALE, so
 * forgetting it cannot let it back in. Memory is bounded; when full, new mutations are refused
 * (RATE_LIMITED) instead of forgetting tokens that are still valid.
 */
import { createHash } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { fail } from '../verify/errors.js'
import { parseV3PublicToken } from '../verify/paseto.js'

/**
 * What makes a token the same token: SHA-256 over its message, footer and the signature's r. Not
 * the string: an ECDSA signature (r, s) has a twin (r, n − s) that verifies too (a registry that is
 * not strict about low S accepts both), so a used token could come back as another string. A new
 * signature of the same claims has a fresh r. A shared store (one per registry, not per process)
 * should be keyed on this too.
 */
export function replayKey(token: string): string {
  const { message, footer, signature } = parseV3PublicToken(token)
  const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex')
  const r = signature.subarray(0, signature.length / 2)
  return createHash('sha256')
    .update(`${hex(message)}.${hex(footer)}.${hex(r)}`)
    .digest('hex')
}

export interface SingleUseStoreOptions {
  /** Default LIMITS.registryReplayStoreMaxEntries. */
  readonly maxEntries?: number
  /** For tests: the clock, in milliseconds. */
  readonly now?: () => number
}

export class SingleUseStore {
  /** replayKey -> when it may be forgotten (ms). Insertion order is roughly expiry order. */
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
    const id = replayKey(token)
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
