import { spawn } from 'node:child_process'
import { constants } from 'node:os'
import { LIMITS } from './limits.js'

/**
 * libuv worker-thread pool sizing for the agent process.
 *
 * Why: pkcs11js runs `C_Sign` (async form) on the libuv threadpool and a sign that waits for a touch
 * holds its worker thread for the whole wait. With Node's default of 4 workers, 4 pending touches
 * stall every `fs`, `dns` and `crypto.pbkdf2` call in the agent and any fifth sign, even on another
 * token (measured: a fifth sign finished only when the first touch came; spec/pkcs11-platform-notes §3).
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

/**
 * Re-runs this very process (same node flags, script and arguments) with UV_THREADPOOL_SIZE set,
 * unless it already started with it,
 * relays termination signals to it and exits with its status. Resolves to `false` (nothing done)
 * when the size is already right, so an entry point can write:
 *   `if (await relaunchWithThreadpoolSize()) return`
 * Node 20 has no execve(), so this costs one extra idle parent process.
 */
export async function relaunchWithThreadpoolSize(): Promise<boolean> {
  // Decided by the value at process start: `ensureThreadpoolSize()` may already have raised the
  // variable in this process, which does not resize a pool that is running.
  if (currentSize({ [VARIABLE]: AT_START }) >= LIMITS.uvThreadpoolSize) return false
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    env: withThreadpoolSize(process.env),
    stdio: 'inherit',
  })
  const relay = (signal: NodeJS.Signals): void => {
    child.kill(signal)
  }
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(signal, relay)
  await new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      process.exitCode = code ?? (signal === null ? 1 : 128 + (constants.signals[signal] ?? 15))
      resolve()
    })
  })
  return true
}
