/**
 * Kernel peer credentials and process hardening through the small N-API addon in native/peercred/
 * (Node has no API for SO_PEERCRED, prctl or mlock). The addon is loaded on first use only, so a
 * process that never asks (the shim) never maps it.
 *
 * References: `man 7 unix` (SO_PEERCRED), `man 2 prctl` (PR_SET_DUMPABLE), `man 2 mlock`; OpenSSH
 * portable `platform-tracing.c` (`platform_disable_tracing`) and `openbsd-compat/bsd-getpeereid.c`.
 */
import { createRequire } from 'node:module'
import type { Socket } from 'node:net'

import { AgentError } from './errors.js'
import { packageFile } from './package-files.js'

/** Who is at the other end of a Unix socket, as the kernel recorded it at connect(2) time. */
export interface PeerCredentials {
  readonly uid: number
  readonly gid: number
  /** 0 when the peer runs in a PID namespace this process cannot see (`man 7 unix`); always 0 on
   * macOS releases without LOCAL_PEERPID. */
  readonly pid: number
}

interface Addon {
  peerCredentials(fd: number): PeerCredentials
  setNonDumpable(): void
  isDumpable(): boolean
  lockMemory(buf: Buffer): boolean
}

const ADDON_PATH = 'native/peercred/build/Release/peercred.node'
const REBUILD =
  'Rebuild the native addon: `npm rebuild cargo-pkcs11-agent` in the directory it is installed in (`npm root -g`/cargo-pkcs11-agent for a global install; `npm run build` in a checkout); it needs a C compiler, make and python3'

let addon: Addon | undefined

function load(): Addon {
  if (addon !== undefined) return addon
  const path = packageFile(ADDON_PATH, REBUILD)
  try {
    addon = createRequire(import.meta.url)(path) as Addon
  } catch (error) {
    throw new AgentError('INTERNAL', `Cannot load the native addon ${path}: ${(error as Error).message}`, {
      cause: error,
      remedy: REBUILD,
    })
  }
  return addon
}

/** Loads the addon without calling it (doctor): throws what the agent would, with the remedy. */
export function loadAddon(): void {
  load()
}

/** Turns the addon's errno Error (`code` = errno name, `syscall`) into an AgentError. */
function call<T>(what: string, remedy: string, run: (native: Addon) => T): T {
  const native = load()
  try {
    return run(native)
  } catch (error) {
    const { code, syscall } = error as NodeJS.ErrnoException
    throw new AgentError('INTERNAL', `${what}: ${(error as Error).message}`, {
      cause: error,
      remedy,
      data: { errno: code ?? 'EUNKNOWN', syscall: syscall ?? what },
    })
  }
}

/**
 * The file descriptor under a connected Unix `net.Socket`. Node exposes none publicly; `_handle` is
 * libuv's pipe_wrap (node `src/pipe_wrap.cc`), whose `fd` getter (`LibuvStreamWrap::GetFD` in node
 * `src/stream_wrap.cc`) answers the descriptor on Linux and macOS and -1 on Windows. The handle is
 * null once the socket is destroyed, and the descriptor is closed only with the handle on this same
 * thread, so a number read here still names this connection for a synchronous call that follows.
 */
export function socketFd(socket: Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle
  const fd = handle?.fd
  if (typeof fd !== 'number' || !Number.isSafeInteger(fd) || fd < 0) {
    throw new AgentError(
      'INTERNAL',
      handle == null
        ? 'The connection is already closed: no file descriptor to ask the kernel about'
        : `This Node.js does not expose the socket's file descriptor (socket._handle.fd is ${String(fd)})`,
      {
        remedy:
          handle == null
            ? 'Check the peer before the connection can close (in the connection handler)'
            : 'Run the agent with Node.js >= 20 on Linux or macOS',
      },
    )
  }
  return fd
}

/** The kernel's record of the process that connected to `fd` (a connected Unix-domain socket). */
export function peerCredentialsOfFd(fd: number): PeerCredentials {
  if (!Number.isSafeInteger(fd) || fd < 0) {
    throw new AgentError('INTERNAL', `Not a file descriptor: ${String(fd)}`, {
      remedy: 'Pass the descriptor of a connected Unix socket (socketFd)',
    })
  }
  return call(
    'Cannot read the peer credentials of the connection',
    'Peer credentials exist only for connected Unix-domain sockets; this is unexpected for the agent socket, report it',
    (native) => native.peerCredentials(fd),
  )
}

/** The kernel's record of the process that connected `socket` (server side of a Unix socket). */
export function peerCredentials(socket: Socket): PeerCredentials {
  return peerCredentialsOfFd(socketFd(socket))
}

/**
 * Stops other processes of the same user from tracing this one or reading its memory and /proc
 * files, and stops core dumps (Linux PR_SET_DUMPABLE 0, macOS PT_DENY_ATTACH). Reset by execve, so a
 * process calls it for itself.
 */
export function setNonDumpable(): void {
  call(
    'Cannot make the agent process non-dumpable',
    'Start the agent without a debugger or tracer attached; under a sandbox that forbids prctl or ptrace, allow them',
    (native) => native.setNonDumpable(),
  )
}

/** Whether other processes of our user may trace us (Linux PR_GET_DUMPABLE == 1). Linux only. */
export function isDumpable(): boolean {
  return call(
    'Cannot query whether the process is dumpable',
    'Only Linux can answer this; on macOS rely on setNonDumpable() having succeeded',
    (native) => native.isDumpable(),
  )
}

/**
 * Best effort: keeps the pages under `buf` out of swap (mlock). False when the kernel refuses
 * (RLIMIT_MEMLOCK, `ulimit -l`). Locking covers whole pages, which stay locked until exit.
 */
export function lockMemory(buf: Buffer): boolean {
  return call('Cannot lock memory', 'Pass a Buffer', (native) => native.lockMemory(buf))
}
