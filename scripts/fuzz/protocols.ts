/**
 * Fuzzes both protocols the project speaks with untrusted peers, against the real components:
 *
 *   cargo → shim   cargo's credential protocol on the shim's stdin: the shim's own parser in-process
 *                  for volume (parseCargoRequest), plus real spawns of the compiled shim
 *                  (dist/cjs/src/bin/cargo-credential-pkcs11.js --cargo-plugin) against a real agent;
 *   client → agent the agent socket (docs/agent-protocol.md) of a real agent process on SoftHSM:
 *                  truncated, oversized, wrong types, deep nesting, invalid UTF-8, duplicate ids,
 *                  stray answers, slow (byte by byte) and abrupt (cut mid-frame) clients.
 *
 * Pass criteria, counted per input: 0 crashes (the agent process lives, the shim exits 0/1 with no
 * uncaught exception), 0 hangs (every batch answered within its bound), and a typed answer for each:
 * every frame that needs a response gets exactly one, a result or an error whose code is one of
 * src/lib/errors.ts and not INTERNAL; every parser failure is an AgentError with such a code; the
 * shim answers cargo with one well-formed response line.
 *
 * Usage: node dist/scripts/fuzz/protocols.js [--socket N] [--parser N] [--spawns N] [--seed S]
 * (defaults: 100000 socket inputs, 100000 parser inputs, 300 spawns). Exit status 1 on any failure.
 */
import { spawn } from 'node:child_process'
import { createConnection, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

import { parseCargoRequest } from '../../src/cargo/protocol.js'
import { AgentError, isErrorCode } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'
import { cargoGet, distPath, startAgent, type AgentFixture } from '../../test/helpers/agent.js'
import { KNOWN_KEY } from '../../test/helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38720/index/'

export interface FuzzOptions {
  /** Malformed inputs into the agent socket. */
  readonly socketInputs: number
  /** Malformed cargo lines into the shim's parser, in-process. */
  readonly parserInputs: number
  /** Real shim processes, each with one malformed stdin. */
  readonly shimSpawns: number
  readonly seed: number
  readonly log?: (line: string) => void
}

export interface FuzzReport {
  seed: number
  socketInputs: number
  parserInputs: number
  shimSpawns: number
  crashes: number
  hangs: number
  untyped: number
  /** First few failures, for a human. */
  failures: string[]
  codes: Record<string, number>
}

/** mulberry32: a small seeded PRNG, so a failing run can be replayed with --seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

class Gen {
  readonly random: () => number
  constructor(seed: number) {
    this.random = prng(seed)
  }
  int(n: number): number {
    return Math.floor(this.random() * n)
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T
  }
  /** Random bytes without a newline (a frame boundary is ours to place). */
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n)
    for (let i = 0; i < n; i++) {
      let v = this.int(256)
      if (v === 0x0a) v = 0x0b
      b[i] = v
    }
    return b
  }
  /** A hostile JSON value: wrong types, huge, deep, control and odd Unicode characters. */
  value(depth = 0): unknown {
    switch (this.int(depth > 2 ? 7 : 10)) {
      case 0:
        return null
      case 1:
        return this.pick([0, -1, 1.5, 2 ** 53, -(2 ** 60), 1e308])
      case 2:
        return this.pick([true, false])
      case 3:
        return this.pick(['', 'x', '\u0000', '\u001b]0;t\u0007', '\ud800', '\u202e', 'sparse+', '1.2.3'])
      case 4:
        return 'a'.repeat(this.pick([1, 100, 5_000]))
      case 5:
        return this.pick(['read', 'publish', 'yank', 'unyank', 'owners', 'get', 'login', 'logout'])
      case 6:
        return INDEX
      case 7:
        return Array.from({ length: this.int(4) }, () => this.value(depth + 1))
      default: {
        const o: Record<string, unknown> = {}
        for (let i = this.int(4); i > 0; i--)
          o[this.pick(['v', 'id', 'kind', 'x', '__proto__', 'name'])] = this.value(depth + 1)
        return o
      }
    }
  }
  deep(levels: number): string {
    const open = this.pick(['[', '{"a":'])
    const close = open === '[' ? ']' : '}'
    return open.repeat(levels) + '1' + close.repeat(levels)
  }
}

/** A cargo request line, valid in shape, then damaged in one of many ways. */
function cargoLine(g: Gen): string {
  const base: Record<string, unknown> = g.pick([
    () => cargoGet(INDEX, 'read') as Record<string, unknown>,
    () =>
      cargoGet(INDEX, 'publish', { name: 'foo', vers: '1.0.0', cksum: 'a'.repeat(64) }) as Record<
        string,
        unknown
      >,
    () => ({ v: 1, registry: { 'index-url': INDEX }, kind: 'login', token: 'x', args: [] }),
    () => ({ v: 1, registry: { 'index-url': INDEX }, kind: 'logout' }),
  ])()
  switch (g.int(12)) {
    case 0: {
      const keys = Object.keys(base)
      delete base[g.pick(keys)]
      break
    }
    case 1:
      base[g.pick(Object.keys(base))] = g.value()
      break
    case 2:
      base[g.pick(['v', 'kind', 'operation', 'registry', 'name', 'vers', 'cksum', 'args', 'headers'])] =
        g.value()
      break
    case 3:
      return JSON.stringify(base).slice(0, g.int(JSON.stringify(base).length))
    case 4:
      return g.bytes(1 + g.int(200)).toString('latin1')
    case 5:
      return g.deep(1 + g.int(20_000))
    case 6:
      return JSON.stringify(base).replace(/"[a-z-]+":/, (k) => `${k}${JSON.stringify(g.value())},${k}`)
    case 7:
      ;(base['registry'] as Record<string, unknown>)['index-url'] = g.value()
      break
    case 8:
      return JSON.stringify(g.value())
    case 9:
      base['v'] = g.pick([2, '1', [1], null])
      break
    default:
      break // some valid lines too: the parser must accept them
  }
  return JSON.stringify(base)
}

/** One frame for the agent socket, and whether the agent must answer it with a response. */
interface SocketInput {
  readonly bytes: Buffer
  readonly answered: boolean
}

function socketInput(g: Gen, id: number): SocketInput {
  const frame = (o: unknown): SocketInput => ({
    bytes: Buffer.from(JSON.stringify(o) + '\n'),
    answered: true,
  })
  const request = (method: unknown, params: unknown): SocketInput =>
    frame({ v: 1, type: 'request', id, method, params })
  switch (g.int(16)) {
    case 0:
      return { bytes: Buffer.concat([g.bytes(1 + g.int(300)), Buffer.from('\n')]), answered: true }
    case 1:
      return { bytes: Buffer.from(g.deep(1 + g.int(20_000)) + '\n'), answered: true }
    case 2:
      return {
        bytes: Buffer.from(
          '{"v":1,"type":"request","id":' +
            id +
            ',"method":"ping","params":"' +
            'p'.repeat(LIMITS.socketFrameMaxBytes) +
            '"}\n',
        ),
        answered: true,
      }
    case 3:
      return frame(g.value())
    case 4:
      return frame({ v: g.value(), type: 'request', id, method: 'ping' })
    case 5:
      return frame({ v: 1, type: g.value(), id, method: 'ping' })
    case 6:
      return frame({ v: 1, type: 'request', id: g.value(), method: 'ping' })
    case 7:
      return request(g.value(), {})
    case 8:
      return request(g.pick(['ping', 'status', 'pubkey', 'sign', 'logout']), g.value())
    case 9:
    case 10:
      return request('sign', { cargo: cargoLine(g), requester: g.value(), interactive: g.value() })
    case 11:
      return request('pubkey', { registry: g.value(), indexUrl: g.value() })
    case 12:
      // Answers to queries nobody asked: ignored, no response.
      return {
        bytes: Buffer.from(
          JSON.stringify({ v: 1, type: 'answer', qid: g.int(100), result: g.value() }) + '\n',
        ),
        answered: false,
      }
    case 13:
      return {
        bytes: Buffer.from(
          `{"v":1,"type":"request","id":${id},"method":"ping"}`.replace(/"/g, g.pick(['"', "'", '`'])) + '\n',
        ),
        answered: true,
      }
    case 14:
      return {
        bytes: Buffer.concat([
          Buffer.from('{"v":1,"type":"request","id":' + id + ',"method":"'),
          g.bytes(8),
          Buffer.from('"}\n'),
        ]),
        answered: true,
      }
    default:
      return request('ping', undefined)
  }
}

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ path })
    s.once('connect', () => resolve(s))
    s.once('error', reject)
  })
}

class Tally {
  readonly report: FuzzReport
  constructor(seed: number) {
    this.report = {
      seed,
      socketInputs: 0,
      parserInputs: 0,
      shimSpawns: 0,
      crashes: 0,
      hangs: 0,
      untyped: 0,
      failures: [],
      codes: {},
    }
  }
  code(code: string): void {
    this.report.codes[code] = (this.report.codes[code] ?? 0) + 1
  }
  fail(kind: 'crashes' | 'hangs' | 'untyped', what: string): void {
    this.report[kind] += 1
    if (this.report.failures.length < 20) this.report.failures.push(`${kind}: ${what}`)
  }
}

/** A response's error must carry one of our codes, and not INTERNAL (that would be a bug). */
function checkResponse(tally: Tally, frame: Record<string, unknown>, input: string): void {
  if (frame['result'] !== undefined && typeof frame['result'] === 'object') {
    tally.code('ok')
    return
  }
  const error = frame['error'] as { code?: unknown; message?: unknown } | undefined
  if (
    error !== undefined &&
    isErrorCode(error.code) &&
    error.code !== 'INTERNAL' &&
    typeof error.message === 'string'
  ) {
    tally.code(error.code)
    return
  }
  tally.fail('untyped', `${JSON.stringify(frame).slice(0, 200)} for ${input.slice(0, 120)}`)
}

/** One connection: a batch of frames, then a final ping; every answerable frame gets one response. */
async function socketBatch(agent: AgentFixture, g: Gen, tally: Tally, size: number): Promise<void> {
  const socket = await connect(agent.socket)
  const inputs: SocketInput[] = []
  for (let i = 0; i < size; i++) inputs.push(socketInput(g, i + 1))
  const expected = inputs.filter((i) => i.answered).length + 1
  await new Promise<void>((resolve) => {
    let text = ''
    let got = 0
    let done = false
    const finish = (failure?: ['hangs' | 'untyped', string]): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (failure !== undefined) tally.fail(...failure)
      socket.destroy()
      resolve()
    }
    const bound = LIMITS.requestTimeoutMs / 4
    const timer = setTimeout(
      () => finish(['hangs', `batch of ${size}: ${got} of ${expected} responses within ${bound} ms`]),
      bound,
    )
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => {
      text += chunk
      let nl
      while ((nl = text.indexOf('\n')) !== -1) {
        const line = text.slice(0, nl)
        text = text.slice(nl + 1)
        const frame = JSON.parse(line) as Record<string, unknown>
        if (frame['type'] !== 'response') continue
        got += 1
        checkResponse(tally, frame, line)
        // Responses come in any order (docs/agent-protocol.md): done when each has come.
        if (got === expected) finish()
      }
    })
    socket.on('error', () => undefined)
    socket.on('close', () =>
      finish(['hangs', `batch of ${size}: closed after ${got} of ${expected} responses`]),
    )
    // Frames go out in random slices: the agent must not care where the reads split them.
    const all = Buffer.concat([
      ...inputs.map((i) => i.bytes),
      Buffer.from(`{"v":1,"type":"request","id":${size + 1},"method":"ping"}\n`),
    ])
    let at = 0
    const write = (): void => {
      while (at < all.length) {
        const n = 1 + g.int(64 * 1024)
        const ok = socket.write(all.subarray(at, at + n))
        at += n
        if (!ok) {
          socket.once('drain', write)
          return
        }
      }
    }
    write()
  })
  tally.report.socketInputs += size
}

/** Slow and abrupt clients: byte-by-byte frames, frames cut mid-way, connections closed at once. */
async function oddClients(agent: AgentFixture, g: Gen, tally: Tally, count: number): Promise<void> {
  const tasks: Promise<void>[] = []
  for (let i = 0; i < count; i++) {
    const kind = g.int(3)
    tasks.push(
      (async () => {
        const socket = await connect(agent.socket)
        socket.on('error', () => undefined)
        const frame = Buffer.from(
          JSON.stringify({ v: 1, type: 'request', id: 1, method: 'sign', params: { cargo: cargoLine(g) } }) +
            '\n',
        )
        if (kind === 0) {
          // Slow: one byte every few ms; still one typed answer.
          const answer = new Promise<string>((resolve) => {
            let text = ''
            socket.setEncoding('utf8').on('data', (d: string) => {
              text += d
              if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')))
            })
            socket.on('close', () => resolve(text))
          })
          for (const byte of frame.subarray(0, 60)) {
            socket.write(Buffer.from([byte]))
            await new Promise((r) => setTimeout(r, 2))
          }
          socket.write(frame.subarray(60))
          const line = await Promise.race([
            answer,
            new Promise<string>((r) => setTimeout(() => r('timeout'), 15_000).unref()),
          ])
          if (line === 'timeout') tally.fail('hangs', 'a slow client got no answer')
          else {
            try {
              checkResponse(tally, JSON.parse(line) as Record<string, unknown>, frame.toString())
            } catch {
              tally.fail('untyped', `slow client: not a frame: ${line.slice(0, 100)}`)
            }
          }
        } else if (kind === 1) {
          socket.write(frame.subarray(0, 1 + g.int(frame.length - 1)))
          await new Promise((r) => setTimeout(r, g.int(5)))
        }
        socket.destroy()
        tally.report.socketInputs += 1
      })(),
    )
  }
  await Promise.all(tasks)
}

/** The shim's parser in-process: each input parses or throws an AgentError with a known code. */
function parserRun(g: Gen, tally: Tally, count: number): void {
  for (let i = 0; i < count; i++) {
    const line = cargoLine(g)
    try {
      parseCargoRequest(line)
      tally.code('parsed')
    } catch (error) {
      if (
        error instanceof AgentError &&
        isErrorCode(error.code) &&
        error.code !== 'INTERNAL' &&
        error.message !== ''
      )
        tally.code(error.code)
      else tally.fail('untyped', `parser threw ${String(error).slice(0, 100)} for ${line.slice(0, 100)}`)
    }
    tally.report.parserInputs += 1
  }
}

/** One real shim process: hello, then exactly one well-formed cargo response line. */
function shimOnce(agent: AgentFixture, input: Buffer, tally: Tally): Promise<void> {
  const shim = distPath('cjs', 'src', 'bin', 'cargo-credential-pkcs11.js')
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [shim, '--cargo-plugin'], {
      env: agent.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d))
    child.stdin.on('error', () => undefined)
    const timer = setTimeout(() => {
      tally.fail('hangs', `shim did not exit for ${input.subarray(0, 80).toString('latin1')}`)
      child.kill('SIGKILL')
    }, 20_000)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      tally.report.shimSpawns += 1
      const lines = out.split('\n').filter((l) => l !== '')
      if (signal !== null || (status !== 0 && status !== 1) || /at .*\.js:\d+/.test(err)) {
        tally.fail('crashes', `shim ${status ?? signal}: ${err.slice(0, 200)}`)
        return resolve()
      }
      try {
        if (lines.length !== 2 || lines[0] !== '{"v":[1]}')
          throw new Error(`lines: ${JSON.stringify(lines).slice(0, 200)}`)
        const response = JSON.parse(lines[1] as string) as { Ok?: unknown; Err?: { kind?: unknown } }
        if (response.Ok === undefined && typeof response.Err?.kind !== 'string') throw new Error(lines[1])
        tally.code(response.Ok !== undefined ? 'shim-ok' : `shim-${String(response.Err?.kind)}`)
      } catch (error) {
        tally.fail('untyped', `shim answered ${String(error).slice(0, 200)}`)
      }
      resolve()
    })
    child.stdin.end(input)
  })
}

async function shimRun(agent: AgentFixture, g: Gen, tally: Tally, count: number): Promise<void> {
  const inputs: Buffer[] = []
  for (let i = 0; i < count; i++) {
    const line = Buffer.from(cargoLine(g), g.int(8) === 0 ? 'latin1' : 'utf8')
    switch (g.int(6)) {
      case 0:
        inputs.push(line) // no newline: EOF mid-line
        break
      case 1:
        inputs.push(Buffer.concat([Buffer.from('x'.repeat(LIMITS.cargoLineMaxBytes + 1)), Buffer.from('\n')]))
        break
      case 2:
        inputs.push(Buffer.alloc(0))
        break
      default:
        inputs.push(Buffer.concat([line, Buffer.from(g.pick(['\n', '\r\n']))]))
    }
  }
  const concurrency = 8
  let next = 0
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < inputs.length) await shimOnce(agent, inputs[next++] as Buffer, tally)
    }),
  )
}

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const log = options.log ?? (() => undefined)
  const g = new Gen(options.seed)
  const tally = new Tally(options.seed)
  const agent = await startAgent({
    registries: { local: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id } } },
  })
  try {
    parserRun(g, tally, options.parserInputs)
    log(`parser: ${tally.report.parserInputs} inputs`)
    const odd = Math.max(1, Math.floor(options.socketInputs / 500))
    const batches = options.socketInputs - odd
    while (tally.report.socketInputs < batches) {
      // A one-frame client now and then races the big batch; its frame is counted inside the total.
      const room = batches - tally.report.socketInputs
      const side = room > 1 && g.int(4) === 0 ? 1 : 0
      const size = Math.min(room - side, 200 + g.int(300))
      await Promise.all([
        socketBatch(agent, g, tally, size),
        side === 1 ? socketBatch(agent, g, tally, 1) : Promise.resolve(),
      ])
      if (agent.process?.exitCode !== null) break
    }
    await oddClients(agent, g, tally, odd)
    log(`socket: ${tally.report.socketInputs} inputs`)
    await shimRun(agent, g, tally, options.shimSpawns)
    log(`shim: ${tally.report.shimSpawns} spawns`)
    if (agent.process?.exitCode !== null || agent.process.signalCode !== null)
      tally.fail(
        'crashes',
        `the agent exited (${agent.process?.exitCode ?? agent.process?.signalCode}): ${agent.log().slice(-500)}`,
      )
    if (/request \w+#\d+ failed:/.test(agent.log()))
      tally.fail('untyped', 'the agent logged an INTERNAL failure')
  } finally {
    await agent.stop()
  }
  return tally.report
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      socket: { type: 'string', default: '100000' },
      parser: { type: 'string', default: '100000' },
      spawns: { type: 'string', default: '300' },
      seed: { type: 'string' },
    },
  })
  const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed)
  const started = Date.now()
  const report = await runFuzz({
    socketInputs: Number(values.socket),
    parserInputs: Number(values.parser),
    shimSpawns: Number(values.spawns),
    seed,
    log: (line) => process.stderr.write(`fuzz: ${line}\n`),
  })
  process.stdout.write(`${JSON.stringify({ ...report, seconds: (Date.now() - started) / 1000 }, null, 2)}\n`)
  process.exitCode = report.crashes + report.hangs + report.untyped === 0 ? 0 : 1
}
