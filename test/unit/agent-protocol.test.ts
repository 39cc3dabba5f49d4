/**
 * The agent socket protocol over a real Unix socket, with the real server and client and a test
 * handler (no device): framing, limits, errors, events, queries, timeouts, fuzzing.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { AgentConnection } from '../../src/protocol/client.js'
import { LineDecoder, parseClientMessage } from '../../src/protocol/frames.js'
import { AgentServer, type Handler } from '../../src/agent/server.js'
import { AgentError } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'

describe('framing', () => {
  test('LineDecoder splits lines across chunks and keeps UTF-8 intact', () => {
    const d = new LineDecoder(64)
    const bytes = Buffer.from('{"a":"é"}\n{"b":1}\n{"c"', 'utf8')
    const frames = [
      ...d.push(bytes.subarray(0, 7)),
      ...d.push(bytes.subarray(7, 15)),
      ...d.push(bytes.subarray(15)),
    ]
    assert.deepEqual(frames, [
      { kind: 'line', text: '{"a":"é"}' },
      { kind: 'line', text: '{"b":1}' },
    ])
    assert.equal(d.pending, 4)
  })

  test('an oversize line is reported once, skipped to its newline, and the next line is intact', () => {
    const d = new LineDecoder(16)
    const frames = [
      ...d.push(Buffer.from('x'.repeat(10))),
      ...d.push(Buffer.from('y'.repeat(100))),
      ...d.push(Buffer.from('z\n{"ok":1}\n')),
    ]
    assert.deepEqual(frames, [
      { kind: 'oversize', bytes: 112 },
      { kind: 'line', text: '{"ok":1}' },
    ])
  })

  test('client messages are validated with the request id kept for the error', () => {
    const code = (text: string): [string, unknown] => {
      try {
        parseClientMessage(text)
        return ['ok', undefined]
      } catch (error) {
        assert.ok(error instanceof AgentError)
        return [error.code, error.data['id']]
      }
    }
    assert.deepEqual(code('nope'), ['PROTOCOL_ERROR', undefined])
    assert.deepEqual(code('{"v":2,"type":"request","id":4,"method":"ping"}'), ['PROTOCOL_ERROR', 4])
    assert.deepEqual(code('{"v":1,"type":"shout","id":5}'), ['PROTOCOL_ERROR', 5])
    assert.deepEqual(code('{"v":1,"type":"request","id":6,"method":"format-disk"}'), ['PROTOCOL_ERROR', 6])
    assert.deepEqual(code('{"v":1,"type":"request","method":"ping"}'), ['PROTOCOL_ERROR', undefined])
    assert.deepEqual(code('{"v":1,"type":"request","id":7,"method":"ping","params":[1]}'), [
      'PROTOCOL_ERROR',
      7,
    ])
    assert.deepEqual(code('{"v":1,"type":"request","id":8,"method":"ping"}'), ['ok', undefined])
  })
})

describe('server and client over a real socket', () => {
  let dir: string
  let socket: string
  let server: AgentServer
  const logs: string[] = []
  const handler: Handler = async (method, params, context) => {
    if (method === 'ping') return { pong: true }
    if (method === 'status' && params['slow'] === true) {
      await new Promise((r) => setTimeout(r, 300))
      return { slow: true }
    }
    if (method === 'pubkey' && params['registry'] === 'hang') return await new Promise(() => {})
    if (method === 'sign') {
      context.emit('progress', { text: 'working' })
      const pin = await context.ask('pin', { prompt: 'PIN: ', tokenDescription: 'token', reason: 'test' })
      return { gotPin: pin['pin'], peer: context.peer }
    }
    if (method === 'lock') throw new AgentError('DENIED', 'nope', { remedy: 'ask nicely' })
    if (method === 'release') throw new Error('a bug')
    return {}
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agent-proto-'))
    socket = join(dir, 'run', 'agent.sock')
    server = new AgentServer({
      socketPath: socket,
      handler,
      log: (l) => logs.push(l),
      requestTimeoutMs: 1_000,
    })
    await server.listen()
  })
  after(async () => {
    await server.close(100)
    await rm(dir, { recursive: true, force: true })
  })

  function raw(path = socket): Promise<{ sock: Socket; next: () => Promise<Record<string, unknown>> }> {
    return new Promise((resolve, reject) => {
      const sock = createConnection({ path })
      const queue: Record<string, unknown>[] = []
      const waiters: ((m: Record<string, unknown>) => void)[] = []
      const decoder = new LineDecoder()
      sock.on('data', (chunk: Buffer) => {
        for (const f of decoder.push(chunk)) {
          if (f.kind !== 'line') continue
          const m = JSON.parse(f.text) as Record<string, unknown>
          const w = waiters.shift()
          if (w !== undefined) w(m)
          else queue.push(m)
        }
      })
      sock.once('error', reject)
      sock.once('connect', () =>
        resolve({
          sock,
          next: () => {
            const m = queue.shift()
            return m !== undefined ? Promise.resolve(m) : new Promise((r) => waiters.push(r))
          },
        }),
      )
    })
  }

  test('request and response carry the id; errors carry code, message and remedy', async () => {
    const c = await AgentConnection.connect(socket)
    try {
      assert.deepEqual(await c.request('ping'), { pong: true })
      await assert.rejects(
        c.request('lock'),
        (e: unknown) => e instanceof AgentError && e.code === 'DENIED' && e.remedy === 'ask nicely',
      )
      // A bug in a handler is INTERNAL with a remedy, and is logged; the connection stays usable.
      await assert.rejects(
        c.request('release'),
        (e: unknown) => e instanceof AgentError && e.code === 'INTERNAL' && e.message === 'a bug',
      )
      assert.ok(logs.some((l) => l.includes('a bug')))
      assert.deepEqual(await c.request('ping'), { pong: true })
    } finally {
      c.close()
    }
  })

  test('unknown message types get PROTOCOL_ERROR while the connection keeps serving other requests', async () => {
    const { sock, next } = await raw()
    try {
      sock.write('{"v":1,"type":"request","id":1,"method":"status","params":{"slow":true}}\n')
      sock.write('{"v":1,"type":"telepathy","id":2}\n')
      sock.write('{"v":1,"type":"request","id":3,"method":"ping"}\n')
      const answers = [await next(), await next(), await next()]
      const byId = new Map(answers.map((a) => [a['id'], a]))
      assert.equal((byId.get(2)?.['error'] as { code: string }).code, 'PROTOCOL_ERROR')
      assert.deepEqual(byId.get(3)?.['result'], { pong: true })
      assert.deepEqual(byId.get(1)?.['result'], { slow: true })
    } finally {
      sock.destroy()
    }
  })

  test('a frame over the size limit is discarded with PROTOCOL_ERROR and the connection survives', async () => {
    const { sock, next } = await raw()
    try {
      sock.write(
        `{"v":1,"type":"request","id":1,"method":"ping","params":{"pad":"${'x'.repeat(LIMITS.socketFrameMaxBytes)}"}}\n`,
      )
      const error = await next()
      assert.equal(error['id'], null)
      assert.equal((error['error'] as { code: string }).code, 'PROTOCOL_ERROR')
      sock.write('{"v":1,"type":"request","id":2,"method":"ping"}\n')
      assert.deepEqual((await next())['result'], { pong: true })
    } finally {
      sock.destroy()
    }
  })

  test('a reused request id is refused', async () => {
    const { sock, next } = await raw()
    try {
      sock.write(
        '{"v":1,"type":"request","id":9,"method":"status","params":{"slow":true}}\n{"v":1,"type":"request","id":9,"method":"ping"}\n',
      )
      const first = await next()
      assert.equal(first['id'], 9)
      assert.match((first['error'] as { message: string }).message, /already in use/)
      assert.deepEqual((await next())['result'], { slow: true })
    } finally {
      sock.destroy()
    }
  })

  test('events reach the client and queries are answered by it', async () => {
    const c = await AgentConnection.connect(socket)
    const events: unknown[] = []
    try {
      const result = await c.request(
        'sign',
        { cargo: '' },
        {
          onEvent: (e) => events.push(e.data),
          onQuery: async () => ({ result: { pin: '4321' } }),
        },
      )
      // The client is this very process: the kernel's peer credentials name it.
      assert.deepEqual(result, {
        gotPin: '4321',
        peer: { uid: process.getuid?.(), gid: process.getgid?.(), pid: process.pid },
      })
      assert.deepEqual(events, [{ text: 'working' }])
      // A client that cannot answer: the query fails and so does the request, with the client's code.
      await assert.rejects(
        c.request('sign', { cargo: '' }),
        (e: unknown) => e instanceof AgentError && e.code === 'PIN_ENTRY_FAILED',
      )
    } finally {
      c.close()
    }
  })

  test('a request that does not finish in time ends with TIMEOUT', async () => {
    const c = await AgentConnection.connect(socket)
    try {
      await assert.rejects(
        c.request('pubkey', { registry: 'hang' }),
        (e: unknown) => e instanceof AgentError && e.code === 'TIMEOUT',
      )
      assert.deepEqual(await c.request('ping'), { pong: true })
    } finally {
      c.close()
    }
  })

  test('closing a connection rejects its pending requests at once', async () => {
    const c = await AgentConnection.connect(socket)
    const pending = c.request('pubkey', { registry: 'hang' }, { timeoutMs: 60_000 })
    c.close()
    // Without the rejection the promise would wait for its 60 s timer (and keep the process alive).
    const outcome = await Promise.race([
      pending.then(
        () => 'resolved',
        (e: unknown) => (e instanceof AgentError ? e.code : 'other'),
      ),
      new Promise((resolve) => setTimeout(resolve, 5_000, 'still pending').unref()),
    ])
    assert.equal(outcome, 'AGENT_UNREACHABLE')
  })

  test('connections over the limit are told AGENT_BUSY', async () => {
    const busySocket = join(dir, 'busy', 'agent.sock')
    const small = new AgentServer({ socketPath: busySocket, handler, log: () => {}, maxConnections: 2 })
    await small.listen()
    const held = [await AgentConnection.connect(busySocket), await AgentConnection.connect(busySocket)]
    try {
      assert.deepEqual(await held[0]?.request('ping'), { pong: true })
      // Busy connections (an idle one would give its place to the newcomer): requests that never end.
      for (const c of held) void c.request('pubkey', { registry: 'hang' }).catch(() => undefined)
      await new Promise((r) => setTimeout(r, 50))
      const third = await AgentConnection.connect(busySocket)
      await assert.rejects(
        third.request('ping'),
        (e: unknown) => e instanceof AgentError && e.code === 'AGENT_BUSY',
      )
      third.close()
      held.pop()?.close()
      await new Promise((r) => setTimeout(r, 50))
      const fourth = await AgentConnection.connect(busySocket)
      assert.deepEqual(await fourth.request('ping'), { pong: true })
      fourth.close()
    } finally {
      for (const c of held) c.close()
      await small.close(100)
    }
  })

  test('a waiting connection that gets an evicted slot is admitted once (each request answered once)', async () => {
    const oneSocket = join(dir, 'one', 'agent.sock')
    const one = new AgentServer({ socketPath: oneSocket, handler, log: () => {}, maxConnections: 1 })
    await one.listen()
    try {
      const first = await raw(oneSocket)
      first.sock.write('{"v":1,"type":"request","id":1,"method":"ping"}\n')
      assert.equal((await first.next())['id'], 1)
      // Not idle for connectionEvictIdleMs yet: the second waits, then takes the first one's place.
      const second = await raw(oneSocket)
      second.sock.write('{"v":1,"type":"request","id":7,"method":"ping"}\n')
      assert.deepEqual((await second.next())['result'], { pong: true })
      const again = await Promise.race([
        second.next().then((m) => m['id']),
        new Promise((resolve) => setTimeout(resolve, 300, 'no second answer')),
      ])
      assert.equal(again, 'no second answer')
      second.sock.destroy()
    } finally {
      await one.close(100)
    }
  })

  test('fuzz: random bytes and mangled frames never crash the server', async () => {
    const valid = '{"v":1,"type":"request","id":1,"method":"ping","params":{"a":[1,2,{"b":null}]}}'
    for (let round = 0; round < 40; round++) {
      const { sock } = await raw()
      const mangled = Buffer.from(valid)
      for (let i = 0; i < 1 + (round % 6); i++)
        mangled[Math.floor(Math.random() * mangled.length)] = Math.floor(Math.random() * 256)
      const garbage = Buffer.concat([
        randomBytes(round * 37),
        Buffer.from('\n'),
        mangled,
        Buffer.from('\n'),
        Buffer.from(`{"v":1,"type":"answer","qid":${round}}\n{"v":1}\nnull\n[]\n"x"\n`),
      ])
      await new Promise<void>((resolve) => sock.write(garbage, () => resolve()))
      if (round % 2 === 0) sock.destroy()
      else sock.end()
    }
    const c = await AgentConnection.connect(socket)
    try {
      assert.deepEqual(await c.request('ping'), { pong: true })
    } finally {
      c.close()
    }
  })
})
