/**
 * The read-only sessions one token's signatures run on. A session runs one operation at a time
 * (PKCS#11 v2.40 section 5.2: C_SignInit ... C_Sign), so concurrent requests each take their own, up
 * to LIMITS.sessionsPerToken; further requests wait here in call order, at most
 * LIMITS.sessionWaitersMax of them and each for at most LIMITS.sessionWaitMs (then AGENT_BUSY).
 * Every session belongs to a generation: dropping the pool (token lost, `release`) starts a new one,
 * and sessions of an older generation are closed as soon as their request gives them back.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Handle } from './binding.js'

export interface PooledSession {
  readonly handle: Handle
  readonly generation: number
  busy: boolean
}

export class SessionPool {
  readonly #close: (session: Handle) => void
  #sessions: PooledSession[] = []
  #generation = 0
  #waiters: Array<() => void> = []

  /** `close` is best effort (a removed token's sessions are gone anyway). */
  constructor(close: (session: Handle) => void) {
    this.#close = close
  }

  get size(): number {
    return this.#sessions.length
  }

  /** Starts at 0, one more per `drop`: state learnt in one generation (a login) ends with it. */
  get generation(): number {
    return this.#generation
  }

  /** Any session of the current generation (for status queries that need one). */
  any(): PooledSession | undefined {
    return this.#sessions.find((s) => s.generation === this.#generation)
  }

  /**
   * An idle current session, else a new one from `open`, else a wait for one to come back.
   * `check` runs first on every round (the health check; it may drop the pool).
   */
  async acquire(check: () => void, open: () => Handle, where: () => string): Promise<PooledSession> {
    const deadline = Date.now() + LIMITS.sessionWaitMs
    for (;;) {
      check()
      const idle = this.#sessions.find((s) => !s.busy && s.generation === this.#generation)
      if (idle !== undefined) {
        idle.busy = true
        return idle
      }
      if (this.#sessions.length < LIMITS.sessionsPerToken) {
        const session: PooledSession = { handle: open(), generation: this.#generation, busy: true }
        this.#sessions.push(session)
        return session
      }
      const left = deadline - Date.now()
      if (this.#waiters.length >= LIMITS.sessionWaitersMax || left <= 0) {
        throw new AgentError(
          'AGENT_BUSY',
          left <= 0
            ? `${where()}: no session came free within ${LIMITS.sessionWaitMs} ms (all ${this.#sessions.length} are waiting for the device)`
            : `${where()}: ${this.#waiters.length} requests are already waiting for the device`,
          { remedy: 'Wait for pending signatures (touches) to finish, then retry' },
        )
      }
      await this.#wait(left)
    }
  }

  /** Until a session is given back (or the pool dropped), or `ms` have passed. */
  #wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== wake)
        resolve()
      }, ms)
      this.#waiters.push(wake)
    })
  }

  /**
   * Back to the pool; a session from before a drop, or one that failed, is closed. `reopen` (given
   * while the token is connected) replaces the application's last session before it closes, since
   * closing that one logs the token out (PKCS#11 v2.40 section 5.6) and would cost a PIN entry.
   */
  giveBack(session: PooledSession, healthy: boolean, reopen: (() => Handle) | undefined): void {
    session.busy = false
    if (!healthy || session.generation !== this.#generation) {
      this.#sessions = this.#sessions.filter((s) => s !== session)
      if (session.generation === this.#generation && reopen !== undefined && this.any() === undefined) {
        try {
          this.#sessions.push({ handle: reopen(), generation: this.#generation, busy: false })
        } catch {
          // The device is going away; the next request reconnects.
        }
      }
      this.#close(session.handle)
    }
    this.#waiters.shift()?.()
  }

  /** A new generation: idle sessions close now; busy ones (a sign waiting for a touch) when given back. */
  drop(): void {
    this.#generation += 1
    for (const s of this.#sessions.filter((x) => !x.busy)) this.#close(s.handle)
    this.#sessions = this.#sessions.filter((s) => s.busy)
    for (const wake of this.#waiters.splice(0)) wake()
  }
}
