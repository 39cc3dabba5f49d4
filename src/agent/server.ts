/**
 * Connection handling for the agent socket: framing, limits, per-request timeouts, events and
 * queries. What a request *does* is its method's business (src/agent/methods/).
 */
import { createServer, type Server, type Socket } from 'node:net'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import {
  encodeFrame,
  LineDecoder,
  parseClientMessage,
  type AgentMessage,
  type RequestMessage,
} from '../protocol/frames.js'
import type { EventName, Method, Queries, QueryName } from '../protocol/methods.js'
import { listenUnix, removeSocket } from './socket.js'

export interface RequestContext {
  readonly id: number
  readonly method: Method
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
  readonly requestTimeoutMs?: number
  /** Default LIMITS.maxConnections. */
  readonly maxConnections?: number
}

interface OpenQuery {
  resolve: (result: Record<string, unknown>) => void
  reject: (error: AgentError) => void
}

class Connection {
  readonly #socket: Socket
  readonly #options: ServerOptions
  readonly #queries = new Map<number, OpenQuery>()
  readonly #inflight = new Map<number, AbortController>()
  readonly #onIdle: () => void
  #nextQid = 1
  #readTimer: NodeJS.Timeout | undefined
  #closed = false

  constructor(socket: Socket, options: ServerOptions, onIdle: () => void) {
    this.#socket = socket
    this.#options = options
    this.#onIdle = onIdle
    const decoder = new LineDecoder(LIMITS.socketFrameMaxBytes)
    // Slowloris guard: a client that connects and says nothing is dropped.
    this.#readTimer = setTimeout(() => socket.destroy(), LIMITS.requestReadTimeoutMs)
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.kind === 'oversize') {
          this.#send({
            v: 1,
            type: 'response',
            id: null,
            error: new AgentError(
              'PROTOCOL_ERROR',
              `A ${frame.bytes}-byte frame exceeds the ${LIMITS.socketFrameMaxBytes}-byte limit; it was discarded`,
              {
                remedy: 'Keep each message under the frame limit (docs/agent-protocol.md)',
              },
            ).toWire(),
          })
          continue
        }
        this.#onLine(frame.text)
      }
    })
    socket.on('error', () => socket.destroy())
    socket.on('close', () => {
      this.#closed = true
      if (this.#readTimer !== undefined) clearTimeout(this.#readTimer)
      const gone = new AgentError('AGENT_UNREACHABLE', 'The client disconnected', {
        remedy: 'Retry the request',
      })
      for (const query of this.#queries.values()) query.reject(gone)
      this.#queries.clear()
      for (const controller of this.#inflight.values()) controller.abort(gone)
      this.#onIdle()
    })
  }

  get busy(): boolean {
    return this.#inflight.size > 0
  }

  destroy(): void {
    this.#socket.destroy()
  }

  /** Closes the connection once its in-flight requests have answered. */
  endWhenIdle(): void {
    if (!this.busy) this.#socket.end()
  }

  #send(message: AgentMessage): void {
    if (this.#closed || this.#socket.destroyed) return
    try {
      this.#socket.write(encodeFrame(message))
    } catch (error) {
      // A result too large for a frame is a bug on our side: report it as such on the same id.
      if (message.type === 'response') {
        this.#socket.write(
          encodeFrame({ v: 1, type: 'response', id: message.id, error: toAgentError(error).toWire() }),
        )
      }
    }
  }

  #onLine(text: string): void {
    if (this.#readTimer !== undefined) {
      clearTimeout(this.#readTimer)
      this.#readTimer = undefined
    }
    let message
    try {
      message = parseClientMessage(text)
    } catch (error) {
      const agentError = toAgentError(error, 'PROTOCOL_ERROR')
      const id = agentError.data['id']
      this.#send({
        v: 1,
        type: 'response',
        id: typeof id === 'number' ? id : null,
        error: agentError.toWire(),
      })
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
    if (this.#inflight.has(message.id)) {
      this.#send({
        v: 1,
        type: 'response',
        id: message.id,
        error: new AgentError(
          'PROTOCOL_ERROR',
          `Request id ${message.id} is already in use on this connection`,
          { remedy: 'Use a new id for every request' },
        ).toWire(),
      })
      return
    }
    void this.#run(message)
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
      this.#onIdle()
    }
  }
}

export class AgentServer {
  readonly #options: ServerOptions
  readonly #server: Server
  readonly #connections = new Set<Connection>()
  readonly #refused = new Set<Socket>()
  #closing = false
  #idleWaiters: (() => void)[] = []

  constructor(options: ServerOptions) {
    this.#options = options
    this.#server = createServer({ allowHalfOpen: false }, (socket) => this.#accept(socket))
  }

  get socketPath(): string {
    return this.#options.socketPath
  }

  async listen(): Promise<void> {
    await listenUnix(this.#server, this.#options.socketPath)
  }

  #accept(socket: Socket): void {
    if (this.#closing) {
      socket.destroy()
      return
    }
    if (this.#connections.size >= (this.#options.maxConnections ?? LIMITS.maxConnections)) {
      // Told, not just dropped: the shim turns this into a cargo error that says what to do.
      const busy = new AgentError(
        'AGENT_BUSY',
        `The agent already serves ${this.#connections.size} connections`,
        {
          remedy:
            'Retry when the running cargo commands have finished; if this persists, look for a program flooding the agent socket',
        },
      )
      this.#refused.add(socket)
      socket.on('error', () => socket.destroy())
      socket.on('close', () => this.#refused.delete(socket))
      socket.end(encodeFrame({ v: 1, type: 'response', id: null, error: busy.toWire() }))
      // Read (and drop) what the client sends so its EOF is seen and the socket closes.
      socket.resume()
      setTimeout(() => socket.destroy(), LIMITS.requestReadTimeoutMs).unref()
      return
    }
    const connection = new Connection(socket, this.#options, () => this.#checkIdle(connection, socket))
    this.#connections.add(connection)
    socket.on('close', () => {
      this.#connections.delete(connection)
      this.#checkIdle(connection, socket)
    })
  }

  #checkIdle(connection: Connection, socket: Socket): void {
    if (this.#closing && !connection.busy && !socket.destroyed) connection.endWhenIdle()
    if ([...this.#connections].every((c) => !c.busy)) {
      const waiters = this.#idleWaiters
      this.#idleWaiters = []
      for (const w of waiters) w()
    }
  }

  /**
   * Graceful stop: no new connections, in-flight requests may finish for up to `graceMs`, then
   * every connection is cut and the socket file removed.
   */
  async close(graceMs: number = LIMITS.shutdownGraceMs): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    removeSocket(this.#options.socketPath)
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
