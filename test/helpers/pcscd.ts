import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { freePortPair, readLog, watchChild } from './daemon.js'

/**
 * A private pcscd with one vsmartcard "vpcd" virtual reader, for tests.
 *
 * Isolation: pcscd 1.9.9 has its socket path compiled in (/run/pcscd/pcscd.comm, plus a pid file
 * it refuses to start beside), and only the *client* library honours PCSCLITE_CSOCK_NAME
 * (checked: the string is in libpcsclite.so.1, not in /usr/sbin/pcscd). So pcscd runs in private
 * mount and network namespaces (`unshare --mount --net`; unprivileged users add `--user
 * --map-root-user`) with a temp dir bound over /run: its socket appears at
 * <dir>/run/pcscd/pcscd.comm for everyone else (path-named Unix sockets cross network namespaces),
 * and clients are pointed there with PCSCLITE_CSOCK_NAME. A system pcscd, if any, is untouched.
 *
 * Why a network namespace too: vpcd binds its card port on all interfaces (vpcd.c `opensock`,
 * INADDR_ANY), and Debian's vpcd 0.8 writes each message as two send() calls (2-byte length, then
 * payload) on a socket with Nagle on: the payload waits for the ACK of the length, which the card's
 * kernel delays by ~40 ms, so every APDU cost 40 ms (seen with strace: ykcs11's 90-APDU login took
 * 4 s). In the private namespace the card port is invisible outside, the packaged port 35963
 * cannot collide, and the loopback routes get `quickack 1`, which removes the delay. The virtual
 * card must run in the same namespace: start it through `inNetwork()`.
 *
 * Where namespaces are not allowed (a container without CAP_SYS_ADMIN and no user namespaces, or
 * VPIV_NO_NAMESPACES=1), pcscd runs unconfined on the system socket /run/pcscd/pcscd.comm (so no
 * other pcscd may be running, and only one such fixture per machine at a time), vpcd's ports are a
 * free pair on all interfaces, and every APDU pays the 40 ms described above.
 */

export interface Pcscd {
  /** pcscd's client socket; give it to clients as PCSCLITE_CSOCK_NAME. */
  readonly socketPath: string
  /** Environment a PC/SC client (libpcsclite, so ykcs11 too) needs to reach this pcscd. */
  readonly env: Readonly<Record<string, string>>
  /** TCP port (in pcscd's network namespace) where the first reader waits for a virtual card. */
  readonly cardPort: number
  /** Full name of the first reader as PC/SC lists it. */
  readonly readerName: string
  /** `[command, args]` that runs `argv` inside pcscd's network namespace (for the virtual card). */
  inNetwork(argv: readonly string[]): [string, string[]]
  /** pcscd's own log so far (for failure messages). */
  log(): string
  stop(): Promise<void>
}

export interface PcscdOptions {
  /** FRIENDLYNAME of the reader; ykcs11 only looks at readers whose name starts with "Yubico". */
  readonly friendlyName: string
  /** `--apdu --debug` logging into `log()`. */
  readonly debug?: boolean
}

const PCSCD = '/usr/sbin/pcscd'
const VPCD_DRIVER = '/usr/lib/pcsc/drivers/serial/libifdvpcd.so'
/** vpcd's packaged port (0x8C7B); free by construction in the private network namespace. */
const NAMESPACED_CARD_PORT = 35963
const SYSTEM_SOCKET = '/run/pcscd/pcscd.comm'
const START_TIMEOUT_MS = 10_000

// Runs inside the new namespaces. pcscd stops when our stdin closes (stop(), or the test process
// died), so a crashed test cannot leave a daemon behind.
const NAMESPACE_SCRIPT = `
set -e
ip link set lo up
ip route change local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1
ip route change local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1
mount --bind "$1" /run
set +e
"$3" --foreground --config "$2" $4 </dev/null &
pid=$!
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid"
`

// Fallback without namespaces: same supervision, no isolation.
const PLAIN_SCRIPT = `
"$3" --foreground --config "$2" $4 </dev/null &
pid=$!
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid"
`

let namespacesChecked: boolean | undefined

/** Whether this machine lets us create mount and network namespaces (and configure loopback in one). */
function namespacesAvailable(unshare: readonly string[]): boolean {
  if (process.env['VPIV_NO_NAMESPACES'] === '1') return false
  namespacesChecked ??=
    spawnSync('unshare', [...unshare, '--', 'sh', '-c', 'ip link set lo up'], {
      stdio: 'ignore',
      timeout: 10_000,
    }).status === 0
  return namespacesChecked
}

export async function startPcscd(options: PcscdOptions): Promise<Pcscd> {
  for (const path of [PCSCD, VPCD_DRIVER]) {
    if (!existsSync(path))
      throw new Error(`${path} is missing: install the Debian packages pcscd and vsmartcard-vpcd`)
  }
  const dir = await mkdtemp(join(tmpdir(), 'pcscd-'))
  const runDir = join(dir, 'run')
  const confDir = join(dir, 'reader.conf.d')
  await mkdir(runDir)
  await mkdir(confDir)
  const root = process.getuid?.() === 0
  const unshare = root ? ['--mount', '--net'] : ['--user', '--map-root-user', '--mount', '--net']
  const isolated = namespacesAvailable(unshare)
  if (!isolated && existsSync(SYSTEM_SOCKET)) {
    await rm(dir, { recursive: true, force: true })
    throw new Error(
      `cannot create a private pcscd (namespaces unavailable) while ${SYSTEM_SOCKET} exists: stop the system pcscd`,
    )
  }
  const cardPort = isolated ? NAMESPACED_CARD_PORT : await freePortPair('0.0.0.0', 'vpcd')
  await writeFile(
    join(confDir, 'vpcd'),
    [
      `FRIENDLYNAME "${options.friendlyName}"`,
      `DEVICENAME   /dev/null:${cardPort}`,
      `LIBPATH      ${VPCD_DRIVER}`,
      `CHANNELID    ${cardPort}`,
      '',
    ].join('\n'),
  )

  // The log goes to a file, not a pipe: while the test process sits in a synchronous ykcs11 call it
  // reads no pipe, and a debug-level pcscd would block on a full pipe and never answer.
  const logPath = join(dir, 'pcscd.log')
  const logFd = openSync(logPath, 'w')
  const scriptArgs = [runDir, confDir, PCSCD, options.debug === true ? '--apdu --debug' : '--info']
  const child: ChildProcess = isolated
    ? spawn(
        'unshare',
        [
          ...unshare,
          '--propagation',
          'private',
          '--',
          'sh',
          '-c',
          NAMESPACE_SCRIPT,
          'pcscd-ns',
          ...scriptArgs,
        ],
        { stdio: ['pipe', logFd, logFd] },
      )
    : spawn('sh', ['-c', PLAIN_SCRIPT, 'pcscd-plain', ...scriptArgs], { stdio: ['pipe', logFd, logFd] })
  closeSync(logFd)
  const log = (): string => readLog(logPath)
  const watched = watchChild(child)

  const socketPath = isolated ? join(runDir, 'pcscd', 'pcscd.comm') : SYSTEM_SOCKET
  const stop = async (): Promise<void> => {
    await watched.stop()
    await rm(dir, { recursive: true, force: true })
  }

  const deadline = Date.now() + START_TIMEOUT_MS
  while (!(existsSync(socketPath) && log().includes('daemon ready'))) {
    if (!watched.running() || Date.now() > deadline) {
      const why = watched.running() ? 'timeout' : 'exited'
      const tail = log().slice(-2000)
      await stop()
      throw new Error(`pcscd did not start (${why}): ${tail}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }

  // `unshare` execs the shell in the new namespaces, so the child's pid names them.
  const target = String(child.pid)
  const inNetwork = (argv: readonly string[]): [string, string[]] =>
    isolated
      ? [
          'nsenter',
          [...(root ? [] : ['--user', '--preserve-credentials']), '--target', target, '--net', '--', ...argv],
        ]
      : [argv[0] ?? '', argv.slice(1)]

  return {
    socketPath,
    env: { PCSCLITE_CSOCK_NAME: socketPath },
    cardPort,
    readerName: `${options.friendlyName} 00 00`,
    inNetwork,
    log,
    stop,
  }
}
