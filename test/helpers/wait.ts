/**
 * Waiting for output another process (or another async task) writes on its own schedule: a log
 * line, an event on a child's stderr, what a follower printed. A loaded machine delivers those
 * late, so a test that reads them once, right after the request that causes them, is flaky; it
 * polls for the content it expects instead, and a deadline turns "never came" into a failure that
 * shows what was there.
 */

/** How long the expected output may take; a test that needs longer passes its own. */
const WAIT_TIMEOUT_MS = 15_000
/** Time between looks: short next to the deadline, long enough not to spin. */
const WAIT_INTERVAL_MS = 20

export interface WaitOptions<T> {
  readonly timeoutMs?: number
  /** How the failure message shows the last thing seen (default: JSON, or the string itself). */
  readonly show?: (seen: T) => string
}

/**
 * Looks with `probe` until `done` holds for what it returns, and returns that. After the deadline
 * it throws, naming `what` and showing the last value seen. A probe that throws ends the wait with
 * that error (a child that exited, a line that does not parse).
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | Promise<T>,
  done: (seen: T) => boolean,
  options: WaitOptions<T> = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? WAIT_TIMEOUT_MS
  const show = options.show ?? ((v: T) => (typeof v === 'string' ? v : JSON.stringify(v, null, 1)))
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const seen = await probe()
    if (done(seen)) return seen
    if (Date.now() >= deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last seen:\n${show(seen)}`)
    await new Promise((resolve) => setTimeout(resolve, WAIT_INTERVAL_MS))
  }
}
