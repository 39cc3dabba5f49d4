/**
 * The native addon in this process: peer credentials over a real Unix socket, the errors for things
 * that are not connected Unix sockets, dumpability and mlock as the kernel reports them in /proc.
 * Other processes and other uids: test/integration/peercred.test.ts.
 */
import assert from 'node:assert/strict'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import {
  isDumpable,
  lockMemory,
  peerCredentials,
  peerCredentialsOfFd,
  socketFd,
} from '../../src/lib/peercred.js'

const dir = mkdtempSync(join(tmpdir(), 'peercred-unit-'))
after(() => rmSync(dir, { recursive: true, force: true }))

/** A listening server and one connected pair: [server side, client side]. */
async function connectedPair(server: Server, connect: () => Socket): Promise<[Socket, Socket]> {
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve))
  const client = connect()
  await new Promise<void>((resolve, reject) => {
    client.once('connect', resolve)
    client.once('error', reject)
  })
  return [await accepted, client]
}

function listen(server: Server, where: string | number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    if (typeof where === 'string') server.listen(where, resolve)
    else server.listen(where, '127.0.0.1', resolve)
  })
}

function rejects(run: () => unknown, errno: string): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof AgentError, String(error))
    assert.equal(error.code, 'INTERNAL')
    assert.equal(error.data['errno'], errno, error.message)
    assert.ok(error.remedy !== undefined && error.remedy.length > 0)
    return true
  })
}

test('a Unix connection from this process: the kernel names our uid, gid and pid on both ends', async () => {
  const path = join(dir, 'self.sock')
  const server = createServer()
  await listen(server, path)
  try {
    const [serverSide, clientSide] = await connectedPair(server, () => createConnection({ path }))
    const expected = { uid: process.getuid?.(), gid: process.getgid?.(), pid: process.pid }
    assert.deepEqual({ ...peerCredentials(serverSide) }, expected)
    assert.deepEqual({ ...peerCredentials(clientSide) }, expected)
    serverSide.destroy()
    clientSide.destroy()
  } finally {
    server.close()
  }
})

test('a destroyed socket has no descriptor: socketFd refuses with an AgentError', async () => {
  const path = join(dir, 'closed.sock')
  const server = createServer()
  await listen(server, path)
  try {
    const [serverSide, clientSide] = await connectedPair(server, () => createConnection({ path }))
    assert.ok(socketFd(serverSide) >= 0)
    serverSide.destroy()
    clientSide.destroy()
    assert.throws(
      () => socketFd(serverSide),
      (error: unknown) => error instanceof AgentError && /already closed/.test(error.message),
    )
  } finally {
    server.close()
  }
})

test('a TCP connection is refused (Linux would answer uid -1 / pid 0 for it, not fail)', async () => {
  const server = createServer()
  await listen(server, 0)
  try {
    const { port } = server.address() as { port: number }
    const [serverSide, clientSide] = await connectedPair(server, () =>
      createConnection({ host: '127.0.0.1', port }),
    )
    rejects(() => peerCredentials(serverSide), 'EAFNOSUPPORT')
    serverSide.destroy()
    clientSide.destroy()
  } finally {
    server.close()
  }
})

test('descriptors that are not sockets get their errno names', () => {
  const fd = openSync(process.execPath, 'r')
  rejects(() => peerCredentialsOfFd(fd), 'ENOTSOCK')
  closeSync(fd)
  rejects(() => peerCredentialsOfFd(fd), 'EBADF') // closed and (this process is quiet) not reused
  assert.throws(() => peerCredentialsOfFd(-1), AgentError)
  assert.throws(() => peerCredentialsOfFd(1.5), AgentError)
})

test('a fresh process is dumpable (PR_GET_DUMPABLE 1): the setting the agent will change', () => {
  assert.equal(isDumpable(), true)
})

/** Locked memory of this process in KiB, as the kernel accounts it (`man 5 proc`, VmLck). */
function lockedKiB(): number {
  const match = /^VmLck:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))
  assert.ok(match?.[1] !== undefined, 'no VmLck line in /proc/self/status')
  return Number(match[1])
}

test('lockMemory locks the buffer pages: VmLck grows by at least the buffer size', () => {
  const before = lockedKiB()
  const buf = Buffer.alloc(32 * 1024) // under the oldest default RLIMIT_MEMLOCK (64 KiB); its own allocation, not the small-Buffer pool
  assert.equal(lockMemory(buf), true)
  assert.ok(lockedKiB() - before >= 32, `VmLck went from ${before} to ${lockedKiB()} kB`)
  assert.equal(lockMemory(Buffer.alloc(0)), true)
  assert.throws(() => lockMemory('1234' as unknown as Buffer), AgentError)
})
