/**
 * The agent's listening socket: a per-user directory (0700, ours) holding a 0600 socket. Never a TCP
 * port (docs/design.md §5, point 7; §4 rule 1).
 */
import { randomBytes } from 'node:crypto'
import { chmodSync, linkSync, lstatSync, mkdirSync, unlinkSync, type Stats } from 'node:fs'
import { createConnection, type Server } from 'node:net'
import { dirname, join } from 'node:path'

import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'

function uid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined
}

/** A socket path the agent will not use; the remedy says which path to use instead. */
function unusablePath(message: string, remedy: string, cause?: unknown): AgentError {
  return new AgentError('CONFIG_INVALID', message, { remedy, cause })
}

/**
 * Creates the socket directory 0700, or checks an existing one: it must be a real directory (not a
 * symlink another user could point elsewhere), owned by us, and not reachable by group or others.
 */
export function prepareSocketDir(socketPath: string): void {
  const dir = dirname(socketPath)
  try {
    mkdirSync(dir, { recursive: true, mode: LIMITS.socketDirMode })
  } catch (error) {
    throw unusablePath(
      `Cannot create the socket directory ${dir} (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
      'Choose a socket path in a directory you own (--socket, CARGO_PKCS11_AGENT_SOCK or [agent] socket)',
      error,
    )
  }
  const stat = lstatSync(dir)
  const me = uid()
  if (!stat.isDirectory()) {
    throw unusablePath(
      `The socket directory ${dir} is not a directory (a symlink or file is there)`,
      `Remove ${dir} or choose another socket path`,
    )
  }
  if (me !== undefined && stat.uid !== me) {
    throw unusablePath(
      `The socket directory ${dir} belongs to uid ${stat.uid}, not to you (uid ${me})`,
      `Another user may be trying to intercept your signing requests: do not use ${dir}; choose another socket path`,
    )
  }
  if ((stat.mode & 0o777) !== LIMITS.socketDirMode) {
    // Our own directory with loose permissions (e.g. created by hand): tighten rather than refuse.
    chmodSync(dir, LIMITS.socketDirMode)
  }
}

export type SocketState = 'absent' | 'alive' | 'stale'

/** Probes an existing socket path: a live agent accepts the connection, a dead one's file refuses it. */
export function probeSocket(socketPath: string, timeoutMs = 1_000): Promise<SocketState> {
  return new Promise((resolve) => {
    const socket = createConnection({ path: socketPath })
    const timer = setTimeout(() => {
      socket.destroy()
      resolve('alive') // accepting but slow: something is there, do not steal its path
    }, timeoutMs)
    socket.once('connect', () => {
      clearTimeout(timer)
      socket.destroy()
      resolve('alive')
    })
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      resolve(error.code === 'ENOENT' ? 'absent' : error.code === 'ECONNREFUSED' ? 'stale' : 'alive')
    })
  })
}

export function alreadyRunning(socketPath: string): AgentError {
  return new AgentError('AGENT_ALREADY_RUNNING', `An agent is already listening on ${socketPath}`, {
    remedy: 'Use the running agent (`cargo-pkcs11-agent status`), or stop it first',
    data: { socket: socketPath },
  })
}

/** The bind (EADDRINUSE) or the link into place (EEXIST) lost the path to another agent, or failed. */
function bindFailed(socketPath: string, error: NodeJS.ErrnoException): AgentError {
  if (error.code === 'EADDRINUSE' || error.code === 'EEXIST')
    return new AgentError(
      'AGENT_ALREADY_RUNNING',
      `Another agent took ${socketPath} while this one was starting`,
      {
        remedy: 'Use the running agent',
        data: { socket: socketPath },
      },
    )
  return new AgentError('INTERNAL', `Cannot listen on ${socketPath}: ${error.message}`, {
    cause: error,
    remedy: 'Choose another socket path',
  })
}

/** Longest path a Unix socket can be bound to (sun_path is 108 bytes on Linux, 104 on macOS). */
const SUN_PATH_MAX = 103

/**
 * Listens on `socketPath`: refuses while another agent lives there, replaces a stale socket left by a
 * dead one, and creates the socket under umask 0177 so it is 0600 from its first instant (no window
 * where another user could connect).
 *
 * The socket is bound under a private temporary name and hard-linked into place (link(2) fails
 * with EEXIST when the path is taken, as bind would with EADDRINUSE). Reason: libuv unlinks the
 * path a pipe server was bound to when it closes (src/unix/pipe.c, uv__pipe_close), which would
 * delete the socket of an agent that replaced ours at the same path; bound elsewhere, closing
 * deletes only the temporary name, and removeSocket() decides about the real one by its inode.
 */
export async function listenUnix(server: Server, socketPath: string): Promise<void> {
  prepareSocketDir(socketPath)
  const existing = lstatSync(socketPath, { throwIfNoEntry: false })
  if (existing !== undefined && !existing.isSocket())
    throw unusablePath(
      `${socketPath} exists and is not a socket`,
      `Remove ${socketPath} or choose another socket path`,
    )
  if (existing !== undefined) {
    const state = await probeSocket(socketPath)
    if (state === 'alive') throw alreadyRunning(socketPath)
    if (state === 'stale') unlinkSync(socketPath)
  }
  const temporary = join(dirname(socketPath), `.${process.pid}-${randomBytes(4).toString('hex')}.sock`)
  const bindPath = Buffer.byteLength(temporary) <= SUN_PATH_MAX ? temporary : socketPath
  const previous = process.umask(0o177)
  try {
    await new Promise<void>((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        server.off('listening', onListening)
        reject(bindFailed(socketPath, error))
      }
      const onListening = (): void => {
        server.off('error', onError)
        resolve()
      }
      server.once('error', onError)
      server.once('listening', onListening)
      server.listen({ path: bindPath, exclusive: true })
    })
  } finally {
    process.umask(previous)
  }
  // Belt and braces: the umask already produced 0600; make it explicit whatever the platform did.
  chmodSync(bindPath, LIMITS.socketFileMode)
  if (bindPath === socketPath) return
  try {
    linkSync(bindPath, socketPath)
  } catch (error) {
    server.close()
    throw bindFailed(socketPath, error as NodeJS.ErrnoException)
  } finally {
    removeSocket(bindPath)
  }
}

/** Which file a path names: a socket deleted and re-created at the same path has a new inode. */
export interface SocketIdentity {
  readonly dev: number
  readonly ino: number
}

/** The identity of the socket at `socketPath` now, or undefined when nothing (or no socket) is there. */
export function socketIdentity(socketPath: string): SocketIdentity | undefined {
  let stat: Stats
  try {
    stat = lstatSync(socketPath)
  } catch {
    return undefined
  }
  return stat.isSocket() ? { dev: stat.dev, ino: stat.ino } : undefined
}

export function sameSocket(a: SocketIdentity | undefined, b: SocketIdentity | undefined): boolean {
  return a !== undefined && b !== undefined && a.dev === b.dev && a.ino === b.ino
}

/**
 * Removes the socket file, but only while it is still `ours`: an agent started after ours was cut
 * off may already listen at the same path, and unlinking its socket would cut it off too.
 */
export function removeSocket(socketPath: string, ours?: SocketIdentity): void {
  if (ours !== undefined && !sameSocket(ours, socketIdentity(socketPath))) return
  try {
    unlinkSync(socketPath)
  } catch {
    // already gone
  }
}
