/**
 * Connection handling for the agent socket: framing, limits, per-request timeouts, events and
 * queries. What a request *does* is the handler's business (src/agent/methods/). Every limit here
 * holds against a client that does not play along (docs/agent-protocol.md, "Limits").
 */
import { createServer, type Server, type Socket } from 'node:net'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { peerCredentials, type PeerCredentials } from '../lib/peercred.js'
import {
  encodeFrame,
  LineDecoder,
  parseClientMessage,
  type AgentMessage,
  type Frame,
  type RequestMessage,
} from '../protocol/frames.js'
import type { EventName, Method, Queries, QueryName } from '../protocol/methods.js'
import { listenUnix, removeSocket, socketIdentity, type SocketIdentity } from './socket.js'

export interface RequestContext {
  readonly id: number
  readonly method: Method
  /** The connecting process as the kernel recorded it (SO_PEERCRED), never what the client says. */
  readonly peer: PeerCredentials
  /** Aborted when the request times out or the client goes away. */
  readonly signal: AbortSignal
  /** Fire and forget: an event that cannot be delivered never fails the request. */
  emit(event: EventName, data: Record<string, unknown>): void
  /** Asks the client; rejects with the client's error, or with TIMEOUT / AGENT_UNREACHABLE. */
  ask<Q extends QueryName>(query: Q, data: Queries[Q]['data']): Promise<Record<string, unknown>>
}

/** Runs one request; the params are untrusted JSON, the result one of the method map's results. */
export type Handler = (
  method: Method,
  params: Readonly<Record<string, unknown>>,
  context: RequestContext,
) => Promise<object>

export interface ServerOptions {
  readonly socketPath: string
  readonly handler: Handler
  readonly log: (line: string) => void
  /** A parsed request the server refused before its handler ran (the agent audits signs). */
  readonly onRefused?: (request: RequestMessage, error: AgentError, peer: PeerCredentials) => void
  readonly requestTimeoutMs?: number
  /** Default LIMITS.maxConnections. */
  readonly maxConnections?: number
  /** The one uid served; default this process's (docs/design.md §4, rule 1). */
  readonly uid?: number
}

interface OpenQuery {
  resolve: (result: Record<string, unknown>) => void
  reject: (error: AgentError) => void
}

/**
 * Logs each kind of refusal at once, then at most one summary per LIMITS.refusalLogIntervalMs: every
 * refusal is counted in a line, and a flood of them cannot fill the disk with the agent log.
 */
class RefusalLog {
  readonly #log: (line: string) => void
  readonly #kinds = new Map<string, { at: number; suppressed: number; timer?: NodeJS.Timeout }>()

  constructor(log: (line: string) => void) {
    this.#log = log
  }

  note(kind: string, full: string): void {
    const max = LIMITS.refusalLogTextMaxChars
    const text = full.length > max ? `${full.slice(0, max)}… (${full.length} characters)` : full
    const now = Date.now()
    const state = this.#kinds.get(kind)
    if (state === undefined || now - state.at >= LIMITS.refusalLogIntervalMs) {
      if (state?.timer !== undefined) clearTimeout(state.timer)
      this.#flush(kind)
      this.#kinds.set(kind, { at: now, suppressed: 0 })
      this.#log(`refused: ${text}`)
      return
    }
    state.suppressed += 1
    state.timer ??= setTimeout(() => this.#flush(kind), LIMITS.refusalLogIntervalMs).unref()
  }

  #flush(kind: string): void {
    const state = this.#kinds.get(kind)
    if (state === undefined || state.suppressed === 0) return
    this.#log(`refused: ${state.suppressed} more (${kind}) in the last ${LIMITS.refusalLogIntervalMs} ms`)
    state.suppressed = 0
    state.at = Date.now()
    delete state.timer
  }
}

let nextConnectionId = 1

/** A new connection waiting for a slot, at most connectionAdmitWaitMs. */
interface Waiting {
  readonly socket: Socket
  readonly peer: PeerCredentials
  readonly since: number
}

/** How many of `items` each peer pid holds. */
function countByPeer(items: Iterable<{ readonly peer: PeerCredentials }>): Map<number, number> {
  const counts = new Map<number, number>()
  for (const { peer } of items) counts.set(peer.pid, (counts.get(peer.pid) ?? 0) + 1)
  return counts
}

/** Whether a peer holding `held` must give one up to a peer holding `mine`: it holds more than
 * LIMITS.connectionsPerPeer and would still hold no fewer than the other afterwards. */
function overShare(held: number, mine: number): boolean {
  return held > LIMITS.connectionsPerPeer && held >= mine + 2
}

class Connection {
  readonly id = nextConnectionId++
  readonly peer: PeerCredentials
  readonly #socket: Socket
  readonly #options: ServerOptions
  readonly #refusals: RefusalLog
  readonly #queries = new Map<number, OpenQuery>()
  readonly #inflight = new Map<number, AbortController>()
  /** Requests past the in-flight cap, in arrival order (bounded by count and bytes). */
  readonly #queue: { request: RequestMessage; bytes: number }[] = []
  #queuedBytes = 0
  readonly #onGone: () => void
  readonly #onIdle: () => void
  readonly #decoder = new LineDecoder(LIMITS.socketFrameMaxBytes)
  /** Bytes read but not yet split into frames: at most one read while output is backed up. */
  #inbox: Buffer | undefined
  #outputPaused = false
  #timer: NodeJS.Timeout
  #sawFrame = false
  #gone = false
  #nextQid = 1
  /** Requests other than `ping` running or queued: only these make a connection worth keeping. */
  #work = 0
  readonly since = Date.now()
  /** When the connection last did something (eviction picks the longest idle). */
  lastActive = this.since

  constructor(
    socket: Socket,
    peer: PeerCredentials,
    options: ServerOptions,
    refusals: RefusalLog,
    onGone: () => void,
    onIdle: () => void,
  ) {
    this.peer = peer
    this.#socket = socket
    this.#options = options
    this.#refusals = refusals
    this.#onGone = onGone
    this.#onIdle = onIdle
    // Slowloris guard: a client that connects and says nothing (or trickles one frame) is dropped.
    this.#timer = setTimeout(() => this.#onTimer(), LIMITS.requestReadTimeoutMs)
    socket.on('data', (chunk: Buffer) => {
      this.#inbox = this.#inbox === undefined ? chunk : Buffer.concat([this.#inbox, chunk])
      this.#pump()
    })
    socket.on('drain', () => {
      this.#timer.refresh()
      this.#pump()
    })
    // With allowHalfOpen false an EOF ends the conversation: nothing can be answered any more.
    socket.on('end', () => this.#release())
    socket.on('error', () => socket.destroy())
    socket.on('close', () => this.#release())
  }

  /** Requests running or waiting on this connection. */
  get busy(): boolean {
    return this.#inflight.size > 0 || this.#queue.length > 0
  }

  /** Nothing running, queued, unread or unsent: closing it loses nothing. */
  get idle(): boolean {
    return !this.busy && this.#inbox === undefined && this.#socket.writableLength === 0
  }

  /** Closing it cuts no request but pings. A client that has connected but not yet spoken gets
   * connectionEvictIdleMs to send its request (the shim sends it at once). */
  cuttable(now: number): boolean {
    return this.#work === 0 && (this.#sawFrame || now - this.since >= LIMITS.connectionEvictIdleMs)
  }

  /** Cuts the connection; with a reason, logged as a refusal of that kind. */
  destroy(kind?: string, reason?: string): void {
    if (kind !== undefined) this.#refusals.note(kind, `connection ${this.id}: ${reason ?? kind}`)
    this.#socket.destroy()
    this.#release()
  }

  /** Closes the connection once its in-flight requests have answered. */
  endWhenIdle(): void {
    if (!this.busy) this.#socket.end()
  }

  /** Gone the moment the client ended it, not when the kernel's close arrives a loop turn later. */
  #release(): void {
    if (this.#gone) return
    this.#gone = true
    clearTimeout(this.#timer)
    const gone = new AgentError('AGENT_UNREACHABLE', 'The client disconnected', {
      remedy: 'Retry the request',
    })
    for (const query of this.#queries.values()) query.reject(gone)
    this.#queries.clear()
    this.#queue.length = 0
    this.#queuedBytes = 0
    for (const controller of this.#inflight.values()) controller.abort(gone)
    this.#inbox = undefined
    this.#onGone()
  }

  #onTimer(): void {
    if (this.#gone) return
    if (!this.#sawFrame) {
      this.destroy('slow', `no complete frame within ${LIMITS.requestReadTimeoutMs} ms of connecting`)
      return
    }
    if (this.#outputPaused) {
      this.destroy('unread', `answers unread for ${LIMITS.connectionIdleTimeoutMs} ms`)
      return
    }
    // Running requests are bounded by requestTimeoutMs; the idle clock starts when they are done.
    if (this.busy) {
      this.#timer.refresh()
      return
    }
    this.destroy('idle', `idle for ${LIMITS.connectionIdleTimeoutMs} ms`)
  }

  /**
   * Splits the inbox one frame at a time and stops, pausing the socket, as soon as the unsent
   * output is over LIMITS.socketOutputMaxBytes; 'drain' resumes it. So a client that never reads
   * costs the agent at most that much output plus one read.
   */
  #pump(): void {
    while (this.#inbox !== undefined && !this.#gone) {
      if (this.#socket.writableLength > LIMITS.socketOutputMaxBytes) {
        if (!this.#outputPaused) {
          this.#outputPaused = true
          this.#socket.pause()
        }
        return
      }
      const newline = this.#inbox.indexOf(0x0a)
      let piece: Buffer
      if (newline === -1) {
        piece = this.#inbox
        this.#inbox = undefined
      } else {
        piece = this.#inbox.subarray(0, newline + 1)
        this.#inbox = newline + 1 < this.#inbox.length ? this.#inbox.subarray(newline + 1) : undefined
      }
      for (const frame of this.#decoder.push(piece)) this.#onFrame(frame)
    }
    if (this.#outputPaused && !this.#gone) {
      this.#outputPaused = false
      this.#socket.resume()
    }
  }

  #send(message: AgentMessage): void {
    if (this.#gone || this.#socket.destroyed || this.#socket.writableEnded) return
    let frame: Buffer
    try {
      frame = encodeFrame(message)
    } catch (error) {
      // A result too large for a frame is a bug on our side: report it as such on the same id.
      if (message.type !== 'response') return
      frame = encodeFrame({ v: 1, type: 'response', id: message.id, error: toAgentError(error).toWire() })
    }
    this.#socket.write(frame)
  }

  #answerError(id: number | null, error: AgentError): void {
    this.#send({ v: 1, type: 'response', id, error: error.toWire() })
  }

  #onFrame(frame: Frame): void {
    this.lastActive = Date.now()
    if (!this.#sawFrame) {
      this.#sawFrame = true
      clearTimeout(this.#timer)
      this.#timer = setTimeout(() => this.#onTimer(), LIMITS.connectionIdleTimeoutMs)
    } else this.#timer.refresh()
    if (frame.kind === 'oversize') {
      this.#refusals.note('protocol', `connection ${this.id}: a ${frame.bytes}-byte frame`)
      this.#answerError(
        null,
        new AgentError(
          'PROTOCOL_ERROR',
          `A ${frame.bytes}-byte frame exceeds the ${LIMITS.socketFrameMaxBytes}-byte limit; it was discarded`,
          { remedy: 'Keep each message under the frame limit (docs/agent-protocol.md)' },
        ),
      )
      return
    }
    this.#onLine(frame.text)
  }

  #onLine(text: string): void {
    let message
    try {
      message = parseClientMessage(text)
    } catch (error) {
      const agentError = toAgentError(error, 'PROTOCOL_ERROR')
      const id = agentError.data['id']
      this.#refusals.note('protocol', `connection ${this.id}: ${agentError.message}`)
      this.#answerError(typeof id === 'number' ? id : null, agentError)
      return
    }
    if (message.type === 'answer') {
      const query = this.#queries.get(message.qid)
      if (query === undefined) return // late answer to a query that already timed out
      this.#queries.delete(message.qid)
      if (message.error !== undefined) query.reject(AgentError.fromWire(message.error))
      else query.resolve(message.result ?? {})
      return
    }
    if (this.#inflight.has(message.id) || this.#queue.some((q) => q.request.id === message.id)) {
      this.#refuse(
        message,
        new AgentError('PROTOCOL_ERROR', `Request id ${message.id} is already in use on this connection`, {
          remedy: 'Use a new id for every request',
        }),
      )
      return
    }
    const bytes = Buffer.byteLength(text)
    if (this.#inflight.size < LIMITS.maxInflightPerConnection) {
      if (message.method !== 'ping') this.#work += 1
      void this.#run(message)
    } else if (
      this.#queue.length < LIMITS.maxQueuedRequestsPerConnection &&
      this.#queuedBytes + bytes <= LIMITS.maxQueuedRequestBytesPerConnection
    ) {
      if (message.method !== 'ping') this.#work += 1
      this.#queue.push({ request: message, bytes })
      this.#queuedBytes += bytes
    } else {
      this.#refuse(
        message,
        new AgentError(
          'AGENT_BUSY',
          `This connection already has ${this.#inflight.size} requests running and ${this.#queue.length} waiting`,
          {
            remedy:
              'Wait for answers before sending more requests on one connection (docs/agent-protocol.md, "Limits")',
          },
        ),
      )
    }
  }

  /** A parsed request answered with an error before it ran: logged, and handed to onRefused. */
  #refuse(request: RequestMessage, error: AgentError): void {
    this.#refusals.note(
      error.code === 'AGENT_BUSY' ? 'busy' : 'protocol',
      `connection ${this.id}: ${request.method}#${request.id}: ${error.code}: ${error.message}`,
    )
    this.#answerError(request.id, error)
    try {
      this.#options.onRefused?.(request, error, this.peer)
    } catch (hookError) {
      this.#options.log(`refusal hook failed: ${toAgentError(hookError).describe()}`)
    }
  }

  async #run(request: RequestMessage): Promise<void> {
    const controller = new AbortController()
    this.#inflight.set(request.id, controller)
    const timeoutMs = this.#options.requestTimeoutMs ?? LIMITS.requestTimeoutMs
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const error = new AgentError(
          'TIMEOUT',
          `The ${request.method} request did not finish within ${Math.round(timeoutMs / 1000)} s`,
          {
            remedy:
              'Answer prompts and touch the device sooner, or check the device with `cargo-pkcs11-agent status`',
          },
        )
        controller.abort(error)
        reject(error)
      }, timeoutMs)
    })
    const aborted = new Promise<never>((_, reject) => {
      controller.signal.addEventListener('abort', () => reject(toAgentError(controller.signal.reason)), {
        once: true,
      })
    })
    const context: RequestContext = {
      id: request.id,
      method: request.method,
      peer: this.peer,
      signal: controller.signal,
      emit: (event, data) => this.#send({ v: 1, type: 'event', id: request.id, event, data }),
      ask: (query, data) => {
        if (controller.signal.aborted) return Promise.reject(toAgentError(controller.signal.reason))
        const qid = this.#nextQid++
        return new Promise((resolve, reject) => {
          this.#queries.set(qid, { resolve, reject })
          controller.signal.addEventListener(
            'abort',
            () => {
              if (this.#queries.delete(qid)) reject(toAgentError(controller.signal.reason))
            },
            { once: true },
          )
          this.#send({ v: 1, type: 'query', id: request.id, qid, query, data })
        })
      },
    }
    try {
      const work = this.#options.handler(request.method, request.params ?? {}, context)
      const result = await Promise.race([work, timeout, aborted])
      this.#send({ v: 1, type: 'response', id: request.id, result })
    } catch (error) {
      const agentError = toAgentError(error)
      if (agentError.code === 'INTERNAL')
        this.#options.log(
          `request ${request.method}#${request.id} failed: ${agentError.stack ?? agentError.message}`,
        )
      this.#send({ v: 1, type: 'response', id: request.id, error: agentError.toWire() })
    } finally {
      if (timer !== undefined) clearTimeout(timer)
      this.#inflight.delete(request.id)
      if (request.method !== 'ping') this.#work -= 1
      this.lastActive = Date.now()
      if (!this.#gone) this.#timer.refresh()
      const next = this.#queue.shift()
      if (next !== undefined && !this.#gone) {
        this.#queuedBytes -= next.bytes
        void this.#run(next.request)
      }
      this.#onIdle()
    }
  }
}

export class AgentServer {
  readonly #options: ServerOptions
  readonly #server: Server
  readonly #refusals: RefusalLog
  readonly #connections = new Set<Connection>()
  readonly #refused = new Set<Socket>()
  /** Accepted while the agent was full, waiting (bounded) for a slot. */
  #admitting: Waiting[] = []
  /** While #admitNext runs: an eviction's release must not admit from inside it. */
  #admittingNow = false
  #retry: NodeJS.Timeout | undefined
  #identity: SocketIdentity | undefined
  #closing = false
  #idleWaiters: (() => void)[] = []

  constructor(options: ServerOptions) {
    this.#options = options
    this.#refusals = new RefusalLog(options.log)
    this.#server = createServer({ allowHalfOpen: false }, (socket) => this.#accept(socket))
  }

  get socketPath(): string {
    return this.#options.socketPath
  }

  /** Device and inode of the socket this server created (see Agent's socket watch). */
  get identity(): SocketIdentity | undefined {
    return this.#identity
  }

  get #max(): number {
    return this.#options.maxConnections ?? LIMITS.maxConnections
  }

  async listen(): Promise<void> {
    await listenUnix(this.#server, this.#options.socketPath)
    this.#identity = socketIdentity(this.#options.socketPath)
  }

  #accept(socket: Socket): void {
    if (this.#closing) {
      socket.destroy()
      return
    }
    const peer = this.#checkPeer(socket)
    if (peer === undefined) return
    if (this.#admitting.length === 0 && this.#connections.size < this.#max) {
      this.#admit(socket, peer)
      return
    }
    if (this.#admitting.length >= this.#max && !this.#displaceWaiter(peer)) {
      this.#refuse(socket)
      return
    }
    // Slots free up within milliseconds when clients merely reconnect (the kernel can hand us a
    // client's new connection before the EOF of its previous one), so wait a moment for one.
    socket.pause()
    const waiting: Waiting = { socket, peer, since: Date.now() }
    socket.once('close', () => (this.#admitting = this.#admitting.filter((w) => w !== waiting)))
    this.#admitting.push(waiting)
    this.#admitNext()
  }

  /**
   * Gives slots to waiting connections, the one whose peer holds the fewest connections first (then
   * in arrival order), evicting to make room; refuses those that waited connectionAdmitWaitMs, and
   * tries again every connectionEvictIdleMs while any wait.
   */
  #admitNext(): void {
    if (this.#admittingNow || this.#closing) return
    this.#admittingNow = true
    try {
      this.#admitting = this.#admitting.filter((w) => !w.socket.destroyed)
      while (this.#admitting.length > 0) {
        const held = countByPeer(this.#connections)
        let next = this.#admitting[0] as Waiting
        for (const w of this.#admitting)
          if ((held.get(w.peer.pid) ?? 0) < (held.get(next.peer.pid) ?? 0)) next = w
        if (this.#connections.size >= this.#max && !this.#evict(next.peer, held)) break
        this.#admitting = this.#admitting.filter((w) => w !== next)
        this.#admit(next.socket, next.peer)
      }
      const now = Date.now()
      const late = this.#admitting.filter((w) => now - w.since >= LIMITS.connectionAdmitWaitMs)
      this.#admitting = this.#admitting.filter((w) => !late.includes(w))
      for (const w of late) this.#refuse(w.socket)
    } finally {
      this.#admittingNow = false
    }
    if (this.#admitting.length > 0)
      this.#retry ??= setTimeout(() => {
        this.#retry = undefined
        this.#admitNext()
      }, LIMITS.connectionEvictIdleMs)
  }

  /**
   * Makes room for a connection of `peer`: closes the longest-idle connection (idle at least
   * connectionEvictIdleMs), else, of the peer holding the most connections over its share
   * (`overShare`), the oldest one running no request but pings. False when there is neither.
   */
  #evict(peer: PeerCredentials, held: Map<number, number>): boolean {
    const now = Date.now()
    const mine = held.get(peer.pid) ?? 0
    let idlest: Connection | undefined
    let hog: Connection | undefined
    let hogHeld = 0
    for (const c of this.#connections) {
      if (c.idle && now - c.lastActive >= LIMITS.connectionEvictIdleMs)
        if (idlest === undefined || c.lastActive < idlest.lastActive) idlest = c
      const theirs = held.get(c.peer.pid) ?? 0
      if (!overShare(theirs, mine) || !c.cuttable(now)) continue
      if (hog === undefined || theirs > hogHeld || (theirs === hogHeld && c.since < hog.since)) {
        hog = c
        hogHeld = theirs
      }
    }
    if (idlest !== undefined)
      idlest.destroy('evicted', `idle, closed to admit a new connection (${this.#connections.size} open)`)
    else if (hog !== undefined)
      hog.destroy(
        'evicted',
        `pid ${hog.peer.pid} holds ${hogHeld} of ${this.#connections.size} connections: its oldest without a running request closed to admit one of pid ${peer.pid}`,
      )
    return idlest !== undefined || hog !== undefined
  }

  /** The waiting queue is full: the newest waiter of the peer with the most waiting gives its place
   * to a connection of `peer` when that peer waits with fewer (`overShare`). */
  #displaceWaiter(peer: PeerCredentials): boolean {
    const waiting = countByPeer(this.#admitting)
    let top: Waiting | undefined
    for (const w of this.#admitting)
      if (top === undefined || (waiting.get(w.peer.pid) ?? 0) >= (waiting.get(top.peer.pid) ?? 0)) top = w
    if (top === undefined || !overShare(waiting.get(top.peer.pid) ?? 0, waiting.get(peer.pid) ?? 0))
      return false
    this.#admitting = this.#admitting.filter((w) => w !== top)
    this.#refuse(top.socket)
    return true
  }

  #refuse(socket: Socket): void {
    this.#refusals.note('connections', `a connection: all ${this.#connections.size} connections are busy`)
    if (this.#refused.size >= this.#max) {
      socket.destroy() // a flood: no answer, no file descriptor held
      return
    }
    // Told, not just dropped: the shim turns this into a cargo error that says what to do.
    const busy = new AgentError(
      'AGENT_BUSY',
      `The agent already serves ${this.#connections.size} busy connections`,
      {
        remedy:
          'Retry when the running cargo commands have finished; if this persists, look for a program flooding the agent socket',
      },
    )
    this.#refused.add(socket)
    socket.on('close', () => this.#refused.delete(socket))
    tellAndClose(socket, busy)
  }

  /**
   * The kernel's peer credentials, read once at accept (`man 7 unix`, SO_PEERCRED: fixed at
   * connect(2)). Another uid is refused however the socket's modes were loosened; a connection the
   * kernel cannot vouch for is refused too (fail closed).
   */
  #checkPeer(socket: Socket): PeerCredentials | undefined {
    const uid = this.#options.uid ?? process.getuid?.() ?? -1
    let peer: PeerCredentials
    try {
      peer = peerCredentials(socket)
    } catch (error) {
      this.#refusals.note(
        'peer',
        `a connection whose peer credentials cannot be read: ${toAgentError(error).message}`,
      )
      socket.destroy()
      return undefined
    }
    if (peer.uid === uid) return peer
    this.#refusals.note(
      'peer',
      `a connection from uid ${peer.uid} (pid ${peer.pid}): this agent serves uid ${uid} only`,
    )
    const refused = new AgentError(
      'PEER_REFUSED',
      `This agent serves uid ${uid} only; the connecting process runs as uid ${peer.uid}`,
      {
        remedy:
          'Run cargo as the user who owns the agent, or start an agent of your own (`cargo-pkcs11-agent run`); check that the socket directory is mode 0700',
      },
    )
    tellAndClose(socket, refused)
    return undefined
  }

  #admit(socket: Socket, peer: PeerCredentials): void {
    const connection: Connection = new Connection(
      socket,
      peer,
      this.#options,
      this.#refusals,
      () => {
        this.#connections.delete(connection)
        this.#admitNext()
        this.#checkIdle()
      },
      () => {
        if (this.#closing) connection.endWhenIdle()
        this.#checkIdle()
      },
    )
    this.#connections.add(connection)
    socket.resume()
  }

  #checkIdle(): void {
    if ([...this.#connections].every((c) => !c.busy)) {
      const waiters = this.#idleWaiters
      this.#idleWaiters = []
      for (const w of waiters) w()
    }
  }

  /**
   * Graceful stop: no new connections, in-flight requests may finish for up to `graceMs`, then
   * every connection is cut and the socket file removed (only if it is still ours).
   */
  async close(graceMs: number = LIMITS.shutdownGraceMs): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    removeSocket(this.#options.socketPath, this.#identity)
    clearTimeout(this.#retry)
    for (const { socket } of this.#admitting) socket.destroy()
    this.#admitting = []
    for (const connection of this.#connections) connection.endWhenIdle()
    if ([...this.#connections].some((c) => c.busy)) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs)
        this.#idleWaiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
    for (const connection of this.#connections) connection.destroy()
    for (const socket of this.#refused) socket.destroy()
    await closed
  }
}

/** Answers a connection that is not admitted with `error`; drops what it sends until its EOF. */
function tellAndClose(socket: Socket, error: AgentError): void {
  socket.on('error', () => socket.destroy())
  socket.end(encodeFrame({ v: 1, type: 'response', id: null, error: error.toWire() }))
  socket.resume()
  setTimeout(() => socket.destroy(), LIMITS.requestReadTimeoutMs).unref()
}
