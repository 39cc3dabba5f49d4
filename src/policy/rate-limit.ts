/**
 * Sliding-window limit on mutations per registry. A script that got hold of the agent socket can
 * publish or yank only this often even where confirmation is `none`; the human sees RATE_LIMITED with
 * the time the window frees up.
 */
import { AgentError } from '../lib/errors.js'
import type { Clock } from './pin-cache.js'
import { systemClock } from './pin-cache.js'

const HOUR_MS = 3_600_000

export class MutationRateLimiter {
  readonly #windows = new Map<string, number[]>()
  readonly #clock: Clock
  readonly #windowMs: number

  constructor(options: { clock?: Clock; windowMs?: number } = {}) {
    this.#clock = options.clock ?? systemClock
    this.#windowMs = options.windowMs ?? HOUR_MS
  }

  /** Throws RATE_LIMITED when `key` already had `limit` mutations inside the window. */
  check(key: string, limit: number, label: string = key): void {
    const now = this.#clock()
    const times = this.#prune(key, now)
    if (times.length < limit) return
    if (limit === 0) {
      throw new AgentError('RATE_LIMITED', `Mutations are disabled for ${label} (mutations-per-hour = 0)`, {
        remedy: 'Raise mutations-per-hour for this registry in the agent config if mutations are intended',
        data: { limit },
      })
    }
    const oldest = times[times.length - limit] ?? now
    const freeAt = oldest + this.#windowMs
    const retryAfterSeconds = Math.max(1, Math.ceil((freeAt - now) / 1000))
    throw new AgentError(
      'RATE_LIMITED',
      `${limit} mutations for ${label} in the last ${Math.round(this.#windowMs / 60_000)} minutes reached the limit; the next one is possible at ${new Date(freeAt).toISOString()} (in ${retryAfterSeconds} s)`,
      {
        remedy:
          'Wait until then, or raise mutations-per-hour for this registry in the agent config if this volume is expected',
        data: { limit, retryAfterSeconds, freeAt: new Date(freeAt).toISOString() },
      },
    )
  }

  /**
   * Checks and counts in one step (no await in between, so concurrent requests cannot both take the
   * last slot). Returns a function that gives the slot back, for a request the human then refused.
   */
  take(key: string, limit: number, label: string = key): () => void {
    this.check(key, limit, label)
    const at = this.#clock()
    const times = this.#windows.get(key) ?? []
    times.push(at)
    this.#windows.set(key, times)
    let released = false
    return () => {
      if (released) return
      released = true
      const current = this.#windows.get(key)
      const i = current?.lastIndexOf(at) ?? -1
      if (current !== undefined && i >= 0) current.splice(i, 1)
    }
  }

  /** Mutations counted for `key` inside the current window. */
  count(key: string): number {
    return this.#prune(key, this.#clock()).length
  }

  #prune(key: string, now: number): number[] {
    const times = (this.#windows.get(key) ?? []).filter((t) => now - t < this.#windowMs)
    if (times.length === 0) this.#windows.delete(key)
    else this.#windows.set(key, times)
    return times
  }
}
