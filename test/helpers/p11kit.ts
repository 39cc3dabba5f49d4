/**
 * A real `p11-kit server` (Debian `p11-kit`) exporting one SoftHSM token on a Unix socket, for the
 * tests of docs/remote-tokens.md. The agent reaches it through the real `p11-kit-client.so`
 * (Debian `p11-kit-modules`) with P11_KIT_SERVER_ADDRESS in its token's `module-env`.
 *
 * The server forks one `p11-kit remote` per client connection (p11-kit `p11-kit/server.c`
 * server_loop), and stopping the listener alone leaves those running. `kill()` therefore ends the
 * whole process group, as a host going down or `systemctl stop` (its cgroup) would.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'

export interface P11KitServer {
  /** `unix:path=<socket>`, what P11_KIT_SERVER_ADDRESS must say. */
  readonly address: string
  readonly socket: string
  /** The listener's pid (the leader of its process group). */
  pid(): number | undefined
  /** Everything the server processes wrote to stderr so far. */
  log(): string
  /** SIGKILL to the listener and every `p11-kit remote` it forked; resolves when the listener is gone. */
  kill(): Promise<void>
  /** Starts it again on the same socket; resolves once it accepts connections. */
  restart(): Promise<void>
  stop(): Promise<void>
}

export interface P11KitServerOptions {
  /** The PKCS#11 module the server exports (SoftHSM in the tests). */
  provider: string
  /** Token label: the server is started with `pkcs11:token=<label>`. */
  tokenLabel: string
  socket: string
  /** The server's own environment (SOFTHSM2_CONF for the provider). */
  env: NodeJS.ProcessEnv
}

export async function startP11KitServer(options: P11KitServerOptions): Promise<P11KitServer> {
  let child: ChildProcess | undefined
  let stderr = ''
  const address = `unix:path=${options.socket}`

  async function start(): Promise<void> {
    // A killed server leaves its socket file behind; the server removes it too, before bind.
    rmSync(options.socket, { force: true })
    const c = spawn(
      'p11-kit',
      [
        'server',
        '--foreground',
        '--provider',
        options.provider,
        '-n',
        options.socket,
        `pkcs11:token=${options.tokenLabel}`,
      ],
      // Its own process group, so kill() reaches the forked `p11-kit remote` children too.
      { env: options.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    child = c
    c.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    // In the foreground it prints the environment to set once the socket is bound (server.c).
    await new Promise<void>((resolve, reject) => {
      let out = ''
      const timer = setTimeout(
        () => reject(new Error(`p11-kit server did not start within 5 s: ${stderr}`)),
        5_000,
      )
      c.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`p11-kit server exited (${code}) before listening: ${stderr}`))
      })
      c.stdout?.setEncoding('utf8').on('data', (d: string) => {
        out += d
        if (out.includes(`P11_KIT_SERVER_ADDRESS=${address}`) && existsSync(options.socket)) {
          clearTimeout(timer)
          resolve()
        }
      })
    })
  }

  async function kill(): Promise<void> {
    const c = child
    if (c === undefined || c.pid === undefined || c.exitCode !== null || c.signalCode !== null) return
    const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()))
    try {
      process.kill(-c.pid, 'SIGKILL')
    } catch {
      // already gone
    }
    await gone
  }

  await start()
  return {
    address,
    socket: options.socket,
    pid: () => child?.pid,
    log: () => stderr,
    kill,
    restart: start,
    async stop() {
      await kill()
      rmSync(options.socket, { force: true })
    },
  }
}
