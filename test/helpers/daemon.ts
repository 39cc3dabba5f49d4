/**
 * What the daemon fixtures (pcscd + vpcd, swtpm, the PIV card emulator) share: free TCP port pairs,
 * a log file read while it grows, and a child that stops when its stdin closes.
 */
import type { ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

function portFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)))
  })
}

function anyFreePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

/**
 * A port P with P and P + 1 free on `host`: vpcd opens both, and swtpm's control channel is at the
 * command port + 1 (the TSS "swtpm" TCTI assumes it). `what` names the daemon in the error.
 */
export async function freePortPair(host: string, what: string): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = await anyFreePort(host)
    if (port > 0 && port < 65535 && (await portFree(port + 1, host))) return port
  }
  throw new Error(`no free pair of TCP ports on ${host} for ${what}`)
}

/** A log file's text so far: '' before the daemon created it or after clean-up removed it. */
export function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

/** A daemon that has not exited this long after its stdin closed is killed. */
const STOP_TIMEOUT_MS = 5_000

export interface WatchedChild {
  /** Resolves when the child has exited, for whatever reason. */
  readonly exited: Promise<void>
  running(): boolean
  /**
   * Closes the child's stdin, which the fixtures' supervise scripts and the emulator take as "stop",
   * and SIGKILLs it if it has not exited 5 s later. Nothing to do if it already exited.
   */
  stop(): Promise<void>
}

export function watchChild(child: ChildProcess): WatchedChild {
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  let running = true
  void exited.then(() => {
    running = false
  })
  return {
    exited,
    running: () => running,
    stop: async () => {
      if (!running) return
      child.stdin?.end()
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
      await exited
      clearTimeout(timer)
    },
  }
}
