/**
 * PINs a human typed, held in agent memory only, per token identity. An entry ends after
 * `idleSeconds` without use or `maxSeconds` after it was typed, whichever comes first (gpg-agent's
 * default-cache-ttl / max-cache-ttl). Every way an entry ends overwrites the PIN bytes (`Pin.wipe`).
 * Nothing here writes anywhere; the cache has no serialisation on purpose.
 */
import { LIMITS } from '../lib/limits.js'
import type { Pin } from '../lib/secret.js'

/** Milliseconds since the epoch. Injected so tests can move time. */
export type Clock = () => number

export const systemClock: Clock = () => Date.now()

export type ForgetReason =
  | 'idle'
  | 'max-lifetime'
  | 'wrong-pin'
  | 'removed'
  | 'disconnected'
  | 'lock'
  | 'sighup'
  | 'replaced'
  | 'shutdown'

interface Entry {
  readonly pin: Pin
  readonly storedAt: number
  lastUsedAt: number
}

export interface PinCacheOptions {
  readonly idleSeconds: number
  readonly maxSeconds: number
  readonly clock?: Clock
  /** Called when an entry ends (for the agent's debug log: token id and reason, never the PIN). */
  readonly onForget?: (tokenId: string, reason: ForgetReason) => void
}

export class PinCache {
  readonly #entries = new Map<string, Entry>()
  readonly #idleMs: number
  readonly #maxMs: number
  readonly #clock: Clock
  readonly #onForget: ((tokenId: string, reason: ForgetReason) => void) | undefined
  #sweeper: NodeJS.Timeout | undefined

  constructor(options: PinCacheOptions) {
    this.#idleMs = options.idleSeconds * 1000
    this.#maxMs = options.maxSeconds * 1000
    this.#clock = options.clock ?? systemClock
    this.#onForget = options.onForget
  }

  /** The cached PIN, refreshed as used, or undefined (an expired entry is wiped on the way). */
  get(tokenId: string): Pin | undefined {
    const entry = this.#entries.get(tokenId)
    if (entry === undefined) return undefined
    const now = this.#clock()
    const reason = this.#expiry(entry, now)
    if (reason !== undefined) {
      this.forget(tokenId, reason)
      return undefined
    }
    entry.lastUsedAt = now
    return entry.pin
  }

  /** Whether a live entry exists, without counting as a use. */
  has(tokenId: string): boolean {
    const entry = this.#entries.get(tokenId)
    return entry !== undefined && this.#expiry(entry, this.#clock()) === undefined
  }

  /**
   * Stores `pin` (the cache takes ownership and will wipe it). A lifetime of 0 disables caching:
   * the PIN is wiped immediately and the caller must not use it afterwards.
   */
  set(tokenId: string, pin: Pin): void {
    if (this.#idleMs === 0 || this.#maxMs === 0) {
      pin.wipe()
      return
    }
    const previous = this.#entries.get(tokenId)
    if (previous !== undefined && previous.pin !== pin) this.forget(tokenId, 'replaced')
    const now = this.#clock()
    this.#entries.set(tokenId, { pin, storedAt: now, lastUsedAt: now })
  }

  forget(tokenId: string, reason: ForgetReason): boolean {
    const entry = this.#entries.get(tokenId)
    if (entry === undefined) return false
    entry.pin.wipe()
    this.#entries.delete(tokenId)
    this.#onForget?.(tokenId, reason)
    return true
  }

  /** `lock`, SIGHUP, shutdown: every PIN goes. Returns how many were forgotten. */
  clear(reason: ForgetReason): number {
    let n = 0
    for (const id of [...this.#entries.keys()]) if (this.forget(id, reason)) n += 1
    return n
  }

  /** Wipes expired entries; returns the token ids that were forgotten. */
  sweep(): string[] {
    const now = this.#clock()
    const gone: string[] = []
    for (const [id, entry] of [...this.#entries]) {
      const reason = this.#expiry(entry, now)
      if (reason !== undefined && this.forget(id, reason)) gone.push(id)
    }
    return gone
  }

  get size(): number {
    return this.#entries.size
  }

  /** Token ids with a live entry (for `status`): ids only, never PINs. */
  tokenIds(): string[] {
    const now = this.#clock()
    return [...this.#entries].filter(([, e]) => this.#expiry(e, now) === undefined).map(([id]) => id)
  }

  /** Wipes expired PINs periodically even when no request arrives (timer does not keep the process alive). */
  startSweeper(intervalMs: number = LIMITS.pinCacheSweepMs): void {
    if (this.#sweeper !== undefined) return
    this.#sweeper = setInterval(() => this.sweep(), intervalMs)
    this.#sweeper.unref()
  }

  stopSweeper(): void {
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper)
    this.#sweeper = undefined
  }

  #expiry(entry: Entry, now: number): ForgetReason | undefined {
    if (now - entry.storedAt >= this.#maxMs) return 'max-lifetime'
    if (now - entry.lastUsedAt >= this.#idleMs) return 'idle'
    return undefined
  }
}
