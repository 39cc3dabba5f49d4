import { spawn } from 'node:child_process'
import { constants } from 'node:os'
import { LIMITS } from './limits.js'

/**
 * libuv worker-thread pool sizing for the agent process.
 *
 * Why: pkcs11js runs `C_Sign` (async form) on the libuv threadpool and a sign that waits for a touch
 * holds its worker thread for the whole wait. With Node's default of 4 workers, 4 pending touches
 * stall every `fs`, `dns` and `crypto.pbkdf2` call in the agent and any fifth sign, even on another
 * token (measured: a fifth sign finished only when the first touch came; docs/pkcs11-platforms.md §3).
 *
 * libuv reads UV_THREADPOOL_SIZE once, when the pool first starts. Under ESM the loader itself
 * already uses the pool to read module files, so setting the variable from inside an ESM entry point
 * is TOO LATE (measured on Node 20: the pool has 4 threads by the time the entry module runs). It
 * works only (a) from the environment of the parent (shim spawning the agent, systemd unit,
 * launchd plist), or (b) from a CommonJS entry before any asynchronous I/O. Hence three helpers.
 */

const VARIABLE = 'UV_THREADPOOL_SIZE'
/** The value this process started with: what the pool really has, whatever is set later. */
const AT_START = process.env[VARIABLE]

function currentSize(env: NodeJS.ProcessEnv): number {
  const raw = env[VARIABLE]
  const parsed = raw === undefined ? Number.NaN : Number.parseInt(raw, 10)
  return Number.isFinite(parsed) ? parsed : 4
}

/** `env` with UV_THREADPOOL_SIZE raised to the agent's need. Use when spawning the agent. */
export function withThreadpoolSize(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  if (currentSize(env) >= LIMITS.uvThreadpoolSize) return { ...env }
  return { ...env, [VARIABLE]: String(LIMITS.uvThreadpoolSize) }
}

/**
 * Raises UV_THREADPOOL_SIZE in this process's environment. Returns true when the variable was
 * already large enough on entry (i.e. it came from the parent and the pool certainly has that
 * size); false when it had to be raised here, which takes effect only in a CommonJS entry before
 * any asynchronous I/O, and for child processes. An ESM agent seeing false should call
 * `relaunchWithThreadpoolSize()`.
 */
export function ensureThreadpoolSize(): boolean {
  const started = currentSize({ [VARIABLE]: AT_START })
  if (currentSize(process.env) < LIMITS.uvThreadpoolSize)
    process.env[VARIABLE] = String(LIMITS.uvThreadpoolSize)
  return started >= LIMITS.uvThreadpoolSize
}

/** Set in the relaunched child's environment; `detachFromRelauncher()` removes it again. */
const RELAUNCHED = 'CARGO_PKCS11_AGENT_RELAUNCHED'
const IS_RELAUNCHED = process.env[RELAUNCHED] === '1'

const RELAY_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const
type RelaySignal = (typeof RELAY_SIGNALS)[number]

/** What a relaunched child tells its parent over the IPC channel. */
interface SignalReport {
  readonly relaunchedGotSignal: RelaySignal
}

function isSignalReport(message: unknown): message is SignalReport {
  return (
    typeof message === 'object' &&
    message !== null &&
    RELAY_SIGNALS.includes((message as { relaunchedGotSignal?: unknown }).relaunchedGotSignal as RelaySignal)
  )
}

/**
 * In a child started by `relaunchWithThreadpoolSize()`: tells the parent that this process got
 * `signal` itself, so the parent does not relay a second copy. No-op in any other process.
 */
export function reportSignalToRelauncher(signal: NodeJS.Signals): void {
  if (!IS_RELAUNCHED || typeof process.send !== 'function' || !process.connected) return
  const report: SignalReport = { relaunchedGotSignal: signal as RelaySignal }
  try {
    process.send(report, undefined, {}, () => undefined)
  } catch {
    // the parent is gone; nobody is left to relay anything
  }
}

/**
 * Re-runs this very process (same node flags, script and arguments) with UV_THREADPOOL_SIZE set,
 * unless it already started with it, relays termination signals to it and exits with its status.
 * Resolves to `false` (nothing done) when the size is already right, so an entry point can write:
 *   `if (await relaunchWithThreadpoolSize()) return`
 * Node 20 has no execve(), so this costs one extra idle parent process.
 *
 * One signal must be one stop. Parent and child share a process group, so a signal to the group
 * (Ctrl-C, `kill -TERM -PGID`, systemd's control-group kill) reaches both: the child reports each
 * signal it got over an IPC channel, and the parent relays its own only when no report came within
 * LIMITS.signalRelayWaitMs (a signal sent to the parent's pid alone). The child also ignores a
 * repeat while it stops (src/agent/agent.ts), so a late report costs a log line, not a crash.
 */
export async function relaunchWithThreadpoolSize(): Promise<boolean> {
  // Decided by the value at process start: `ensureThreadpoolSize()` may already have raised the
  // variable in this process, which does not resize a pool that is running.
  if (currentSize({ [VARIABLE]: AT_START }) >= LIMITS.uvThreadpoolSize) return false
  // Reports that arrived before this process saw its own copy of the signal, consumed one for one.
  const reported = new Map<RelaySignal, number[]>()
  const waiting = new Map<RelaySignal, NodeJS.Timeout[]>()
  // Installed before the spawn: a signal in between must not kill this process with the default action.
  let child: ReturnType<typeof spawn> | undefined
  const relay = (signal: RelaySignal): void => {
    const now = Date.now()
    const early = (reported.get(signal) ?? []).filter((at) => now - at < LIMITS.signalRelayWaitMs)
    if (early.length > 0) {
      early.shift()
      reported.set(signal, early)
      return
    }
    reported.set(signal, early)
    const timer = setTimeout(() => {
      const timers = waiting.get(signal) ?? []
      timers.splice(timers.indexOf(timer), 1)
      if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill(signal)
    }, LIMITS.signalRelayWaitMs)
    waiting.set(signal, [...(waiting.get(signal) ?? []), timer])
  }
  for (const signal of RELAY_SIGNALS) process.on(signal, relay)
  child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    env: { ...withThreadpoolSize(process.env), [RELAUNCHED]: '1' },
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
  })
  child.on('message', (message: unknown) => {
    if (!isSignalReport(message)) return
    const signal = message.relaunchedGotSignal
    const timer = waiting.get(signal)?.shift()
    if (timer !== undefined) clearTimeout(timer)
    else reported.set(signal, [...(reported.get(signal) ?? []), Date.now()])
  })
  await new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      process.exitCode = code ?? (signal === null ? 1 : 128 + (constants.signals[signal] ?? 15))
      for (const timers of waiting.values()) for (const timer of timers) clearTimeout(timer)
      for (const s of RELAY_SIGNALS) process.off(s, relay)
      // Signals may still arrive while this process exits; swallow them rather than die by them.
      for (const s of RELAY_SIGNALS) process.on(s, () => undefined)
      resolve()
    })
  })
  return true
}

/** In the relaunched child: the IPC channel to the parent must not keep this process alive. */
export function detachFromRelauncher(): void {
  delete process.env[RELAUNCHED] // not for the agent's own children (pinentry, notifiers)
  if (!IS_RELAUNCHED) return
  process.channel?.unref()
  process.on('disconnect', () => undefined)
}
