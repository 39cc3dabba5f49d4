/**
 * A client for the agent socket, used by the shim and by `status`/`lock`/`release`.
 * Builtins only (the shim's start-up budget).
 */
import { createConnection, type Socket } from 'node:net'

import { AgentError, type WireError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import {
  encodeFrame,
  LineDecoder,
  parseAgentMessage,
  type EventMessage,
  type QueryMessage,
} from './frames.js'
import type { Method, RequestArgs, Result } from './methods.js'

export interface QueryAnswer {
  result?: Record<string, unknown>
  error?: WireError
}

export interface RequestOptions {
  onEvent?: (event: EventMessage) => void
  /** Answers the agent's PIN / confirmation questions. Without it every query is declined. */
  onQuery?: (query: QueryMessage) => Promise<QueryAnswer>
  /** Client-side bound; the agent bounds requests itself (LIMITS.requestTimeoutMs). */
  timeoutMs?: number
}

interface Pending {
  resolve: (result: object) => void
  reject: (error: AgentError) => void
  options: RequestOptions
  timer: NodeJS.Timeout
}

export function unreachable(socketPath: string, cause: unknown): AgentError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code
  const why =
    code === 'ENOENT'
      ? 'no socket there'
      : code === 'ECONNREFUSED'
        ? 'nothing is listening (stale socket)'
        : code === 'EACCES'
          ? 'permission denied'
          : String(code ?? cause)
  return new AgentError(
    'AGENT_UNREACHABLE',
    `The cargo-pkcs11-agent is not reachable at ${socketPath} (${why})`,
    {
      cause,
      remedy:
        'Start it with `cargo-pkcs11-agent run`, or set CARGO_PKCS11_AGENT_SOCK to the socket of the running agent',
      data: { socket: socketPath },
    },
  )
}

export class AgentConnection {
  readonly socketPath: string
  readonly #socket: Socket
  readonly #pending = new Map<number, Pending>()
  #nextId = 1
  #closed: AgentError | undefined

  private constructor(socketPath: string, socket: Socket) {
    this.socketPath = socketPath
    this.#socket = socket
    const decoder = new LineDecoder()
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.kind === 'oversize') {
          this.#fail(
            new AgentError('PROTOCOL_ERROR', `The agent sent a ${frame.bytes}-byte frame, over the limit`, {
              remedy: 'Use the shim and the agent from the same release',
            }),
          )
          return
        }
        this.#dispatch(frame.text)
      }
    })
    socket.on('error', (error) => this.#fail(unreachable(socketPath, error)))
    socket.on('close', () =>
      this.#fail(
        new AgentError(
          'AGENT_UNREACHABLE',
          `The agent at ${socketPath} closed the connection before answering`,
          {
            remedy:
              'Look at the agent log (`cargo-pkcs11-agent status`); it may have been stopped or restarted',
            data: { socket: socketPath },
          },
        ),
      ),
    )
  }

  static connect(
    socketPath: string,
    timeoutMs: number = LIMITS.requestReadTimeoutMs,
  ): Promise<AgentConnection> {
    return new Promise((resolve, reject) => {
      const socket = createConnection({ path: socketPath })
      const timer = setTimeout(() => {
        socket.destroy()
        reject(unreachable(socketPath, Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })))
      }, timeoutMs)
      socket.once('error', (error) => {
        clearTimeout(timer)
        reject(unreachable(socketPath, error))
      })
      socket.once('connect', () => {
        clearTimeout(timer)
        socket.removeAllListeners('error')
        resolve(new AgentConnection(socketPath, socket))
      })
    })
  }

  /**
   * One request. The result is typed by the method map; it is trusted as far as the agent socket is
   * (the agent of the same release, found at a per-user 0700 path), and callers that hand a field to
   * cargo check its type again (src/shim/main.ts).
   */
  request<M extends Method>(
    method: M,
    ...[params, options = {}]: RequestArgs<M, RequestOptions>
  ): Promise<Result<M>> {
    if (this.#closed !== undefined) return Promise.reject(this.#closed)
    const id = this.#nextId++
    return new Promise<object>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? LIMITS.requestTimeoutMs + 5_000
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(
          new AgentError(
            'TIMEOUT',
            `The agent did not answer the ${method} request within ${Math.round(timeoutMs / 1000)} s`,
            {
              remedy: 'Check `cargo-pkcs11-agent status` and the agent log',
            },
          ),
        )
      }, timeoutMs)
      this.#pending.set(id, { resolve, reject, options, timer })
      this.#socket.write(encodeFrame({ v: 1, type: 'request', id, method, params: { ...(params ?? {}) } }))
    }) as Promise<Result<M>>
  }

  /** Requests still waiting are rejected now (their timers cleared), not left to time out. */
  close(): void {
    this.#socket.end()
    this.#fail(new AgentError('AGENT_UNREACHABLE', 'The connection was closed by this client', {}))
  }

  #dispatch(text: string): void {
    let message
    try {
      message = parseAgentMessage(text)
    } catch (error) {
      this.#fail(error as AgentError)
      return
    }
    if (message === undefined) return
    if (message.type === 'response') {
      const pending = message.id === null ? undefined : this.#pending.get(message.id)
      if (pending === undefined) {
        // A PROTOCOL_ERROR about a frame the agent could not attribute: fail everything, it is a bug.
        if (message.error !== undefined) this.#fail(AgentError.fromWire(message.error))
        return
      }
      this.#pending.delete(message.id as number)
      clearTimeout(pending.timer)
      if (message.error !== undefined) pending.reject(AgentError.fromWire(message.error))
      else pending.resolve(message.result ?? {})
      return
    }
    const pending = this.#pending.get(message.id)
    if (message.type === 'event') {
      pending?.options.onEvent?.(message)
      return
    }
    const ask = pending?.options.onQuery
    const answer: Promise<QueryAnswer> =
      ask === undefined
        ? Promise.resolve({
            error: { code: 'PIN_ENTRY_FAILED', message: 'this client cannot answer questions' },
          })
        : ask(message).catch((error: unknown) => ({
            error:
              error instanceof AgentError
                ? error.toWire()
                : { code: 'PIN_ENTRY_FAILED', message: String(error) },
          }))
    void answer.then((a) => {
      if (this.#closed !== undefined) return
      const frame: {
        v: 1
        type: 'answer'
        qid: number
        result?: Record<string, unknown>
        error?: WireError
      } = { v: 1, type: 'answer', qid: message.qid }
      if (a.result !== undefined) frame.result = a.result
      if (a.error !== undefined) frame.error = a.error
      this.#socket.write(encodeFrame(frame))
    })
  }

  #fail(error: AgentError): void {
    if (this.#closed !== undefined) return
    this.#closed = error
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer)
      this.#pending.delete(id)
      pending.reject(error)
    }
    this.#socket.destroy()
  }
}

/** One request on a fresh connection (the CLI's `status`, `lock`, `release`). */
export async function callAgent<M extends Method>(
  socketPath: string,
  method: M,
  ...args: RequestArgs<M, RequestOptions>
): Promise<Result<M>> {
  const connection = await AgentConnection.connect(socketPath)
  try {
    return await connection.request(method, ...args)
  } finally {
    connection.close()
  }
}
