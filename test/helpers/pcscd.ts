import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * A private pcscd with one vsmartcard "vpcd" virtual reader, for tests.
 *
 * Isolation: pcscd 1.9.9 has its socket path compiled in (/run/pcscd/pcscd.comm, plus a pid file
 * it refuses to start beside), and only the *client* library honours PCSCLITE_CSOCK_NAME
 * (checked: the string is in libpcsclite.so.1, not in /usr/sbin/pcscd). So pcscd runs in a private
 * mount namespace (`unshare --mount`; unprivileged users get `--user --map-root-user`) with a
 * temp dir bound over /run: its socket appears at <dir>/run/pcscd/pcscd.comm for everyone else,
 * and clients are pointed there with PCSCLITE_CSOCK_NAME. The system pcscd, if any, is untouched.
 *
 * vpcd listens for the virtual card on TCP port CHANNELID and CHANNELID+1 (two readers, suffixes
 * "00 00" and "00 01"), bound to all interfaces (vpcd.c `opensock` uses INADDR_ANY); we pick a
 * free pair instead of the packaged 35963 so tests cannot collide with a system vpcd.
 */

export interface Pcscd {
  /** pcscd's client socket; give it to clients as PCSCLITE_CSOCK_NAME. */
  readonly socketPath: string
  /** Environment a PC/SC client (libpcsclite, so ykcs11 too) needs to reach this pcscd. */
  readonly env: Readonly<Record<string, string>>
  /** TCP port where the first virtual reader waits for a virtual card (the second is port + 1). */
  readonly cardPort: number
  /** Full name of the first reader as PC/SC lists it. */
  readonly readerName: string
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
const START_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 5_000

// Runs inside the new mount namespace. pcscd stops when our stdin closes (stop(), or the test
// process died), so a crashed test cannot leave a daemon behind.
const NAMESPACE_SCRIPT = `
mount --bind "$1" /run || exit 97
"$3" --foreground --config "$2" $4 </dev/null &
pid=$!
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid"
`

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen({ port, host: '0.0.0.0', exclusive: true }, () => server.close(() => resolve(true)))
  })
}

async function ephemeralPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen({ port: 0, host: '0.0.0.0', exclusive: true }, () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

/** A port P such that P and P + 1 are both free (vpcd opens both). */
async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = await ephemeralPort()
    if (port > 0 && port < 65535 && (await portIsFree(port + 1))) return port
  }
  throw new Error('no free pair of TCP ports for vpcd')
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
  const cardPort = await freePortPair()
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
  const unshare = process.getuid?.() === 0 ? ['--mount'] : ['--user', '--map-root-user', '--mount']
  const child: ChildProcess = spawn(
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
      runDir,
      confDir,
      PCSCD,
      options.debug === true ? '--apdu --debug' : '--info',
    ],
    { stdio: ['pipe', logFd, logFd] },
  )
  closeSync(logFd)
  const log = (): string => {
    try {
      return readFileSync(logPath, 'utf8')
    } catch {
      return ''
    }
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  let running = true
  void exited.then(() => {
    running = false
  })

  const socketPath = join(runDir, 'pcscd', 'pcscd.comm')
  const stop = async (): Promise<void> => {
    if (running) {
      child.stdin?.end()
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
      await exited
      clearTimeout(timer)
    }
    await rm(dir, { recursive: true, force: true })
  }

  const deadline = Date.now() + START_TIMEOUT_MS
  while (!(existsSync(socketPath) && log().includes('daemon ready'))) {
    if (!running || Date.now() > deadline) {
      const tail = log().slice(-2000)
      await stop()
      throw new Error(`pcscd did not start (${running ? 'timeout' : 'exited'}): ${tail}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }

  return {
    socketPath,
    env: { PCSCLITE_CSOCK_NAME: socketPath },
    cardPort,
    readerName: `${options.friendlyName} 00 00`,
    log,
    stop,
  }
}
