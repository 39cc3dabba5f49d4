/**
 * The agent socket protocol's framing, version 1: newline-delimited JSON over a per-user Unix
 * socket. Specified for other implementers in docs/agent-protocol.md; what each method carries is
 * methods.ts. Shared by the agent, the CLI and the shim, so it imports only builtins and lib/.
 *
 * Why not WebSocket: `import('ws')` alone costs 20-27 ms on a 75-105 ms node start (docs/pkcs11-platforms.md
 * §4) and the shim must start within 1.2x a bare node; a Unix socket is already a reliable ordered
 * stream, so a newline is all the framing needed.
 */
import { AgentError, type WireError } from '../lib/errors.js'
import { isRecord } from '../lib/json.js'
import { LIMITS } from '../lib/limits.js'
import { isMethod, METHODS, type EventName, type Method, type QueryName } from './methods.js'

export const PROTOCOL_VERSION = 1

export interface RequestMessage {
  v: 1
  type: 'request'
  id: number
  method: Method
  params?: Record<string, unknown>
}

export interface ResponseMessage {
  v: 1
  type: 'response'
  /** `null` only when the agent could not read an id from the offending frame. */
  id: number | null
  /** One of the method map's results (methods.ts). */
  result?: object
  error?: WireError
}

export interface EventMessage {
  v: 1
  type: 'event'
  /** The request this event belongs to. */
  id: number
  event: EventName
  data: Record<string, unknown>
}

export interface QueryMessage {
  v: 1
  type: 'query'
  id: number
  /** Query id, unique per connection; the answer carries it back. */
  qid: number
  query: QueryName
  data: Record<string, unknown>
}

export interface AnswerMessage {
  v: 1
  type: 'answer'
  qid: number
  result?: Record<string, unknown>
  error?: WireError
}

export type ClientMessage = RequestMessage | AnswerMessage
export type AgentMessage = ResponseMessage | EventMessage | QueryMessage

/** One frame: compact JSON (JSON.stringify never emits a raw newline) plus `\n`. */
export function encodeFrame(message: ClientMessage | AgentMessage): Buffer {
  const frame = Buffer.from(JSON.stringify(message) + '\n', 'utf8')
  if (frame.length > LIMITS.socketFrameMaxBytes) {
    throw new AgentError(
      'PROTOCOL_ERROR',
      `A ${frame.length}-byte message exceeds the ${LIMITS.socketFrameMaxBytes}-byte frame limit`,
      {
        remedy: 'This is a bug in the sender; report it',
      },
    )
  }
  return frame
}

export type Frame =
  { readonly kind: 'line'; readonly text: string } | { readonly kind: 'oversize'; readonly bytes: number }

/**
 * Splits a byte stream into lines, never holding more than `maxBytes` of one line. An oversize line
 * is reported once and then skipped up to its newline, so the connection stays usable.
 */
export class LineDecoder {
  readonly #max: number
  #parts: Buffer[] = []
  #length = 0
  #discarding = false
  #discarded = 0

  constructor(maxBytes: number = LIMITS.socketFrameMaxBytes) {
    this.#max = maxBytes
  }

  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = []
    let start = 0
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start)
      const end = newline === -1 ? chunk.length : newline
      const piece = chunk.subarray(start, end)
      if (this.#discarding) {
        this.#discarded += piece.length
      } else if (this.#length + piece.length + (newline === -1 ? 0 : 1) > this.#max) {
        this.#discarding = true
        this.#discarded = this.#length + piece.length
        this.#parts = []
        this.#length = 0
      } else {
        this.#parts.push(piece)
        this.#length += piece.length
      }
      if (newline === -1) break
      if (this.#discarding) {
        frames.push({ kind: 'oversize', bytes: this.#discarded + 1 })
        this.#discarding = false
        this.#discarded = 0
      } else {
        const text = Buffer.concat(this.#parts, this.#length).toString('utf8')
        this.#parts = []
        this.#length = 0
        frames.push({ kind: 'line', text })
      }
      start = newline + 1
    }
    return frames
  }

  /** Bytes of an unfinished line (used to tell "closed mid-message" from "closed cleanly"). */
  get pending(): number {
    return this.#discarding ? this.#discarded : this.#length
  }
}

function protocolError(message: string, remedy: string): AgentError {
  return new AgentError('PROTOCOL_ERROR', message, { remedy })
}

/**
 * Validates one client frame. Throws PROTOCOL_ERROR (with `data.id` when an id could be read) so the
 * agent can answer the right request and keep serving the connection.
 */
export function parseClientMessage(text: string): ClientMessage {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw protocolError(
      'The agent received a frame that is not JSON',
      'Send one compact JSON object per line (docs/agent-protocol.md)',
    )
  }
  if (!isRecord(value))
    throw protocolError(
      'The agent received a frame that is not a JSON object',
      'Send one JSON object per line',
    )
  const id = value['id']
  const idData = typeof id === 'number' && Number.isSafeInteger(id) ? { id } : undefined
  const fail = (message: string, remedy: string): AgentError =>
    new AgentError('PROTOCOL_ERROR', message, idData === undefined ? { remedy } : { remedy, data: idData })
  if (value['v'] !== PROTOCOL_VERSION) {
    throw fail(
      `Protocol version ${JSON.stringify(value['v'])} is not supported (this agent speaks v${PROTOCOL_VERSION})`,
      'Use a client of the same release as the agent, or restart the agent after upgrading',
    )
  }
  const type = value['type']
  if (type === 'request') {
    if (idData === undefined)
      throw fail('A request needs an integer `id`', 'Number requests 1, 2, 3, ... per connection')
    if (!isMethod(value['method'])) {
      throw fail(`Unknown method ${JSON.stringify(value['method'])}`, `Use one of: ${METHODS.join(', ')}`)
    }
    const params = value['params']
    if (params !== undefined && !isRecord(params))
      throw fail('`params` must be a JSON object', 'Send `params` as an object or leave it out')
    const message: RequestMessage = { v: 1, type: 'request', id: idData.id, method: value['method'] }
    if (params !== undefined) message.params = params
    return message
  }
  if (type === 'answer') {
    const qid = value['qid']
    if (typeof qid !== 'number' || !Number.isSafeInteger(qid))
      throw fail('An answer needs the integer `qid` of its query', 'Copy `qid` from the query')
    const message: AnswerMessage = { v: 1, type: 'answer', qid }
    if (isRecord(value['result'])) message.result = value['result']
    const error = value['error']
    if (isRecord(error) && typeof error['code'] === 'string' && typeof error['message'] === 'string') {
      message.error = { code: error['code'], message: error['message'] }
      if (typeof error['remedy'] === 'string') message.error.remedy = error['remedy']
    }
    return message
  }
  throw fail(
    `Unknown message type ${JSON.stringify(type)}`,
    'Clients send `request` and `answer` messages only',
  )
}

/** Validates one agent frame on the client side. Unknown types are returned as `undefined` (ignored). */
export function parseAgentMessage(text: string): AgentMessage | undefined {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw protocolError(
      'The agent sent a frame that is not JSON',
      'Check that the socket belongs to cargo-pkcs11-agent',
    )
  }
  if (!isRecord(value) || value['v'] !== PROTOCOL_VERSION) {
    throw protocolError(
      'The agent sent a message this client does not understand',
      'Use the shim and the agent from the same release',
    )
  }
  const type = value['type']
  const id = value['id']
  const data = isRecord(value['data']) ? value['data'] : {}
  if (type === 'response') {
    const message: ResponseMessage = { v: 1, type, id: typeof id === 'number' ? id : null }
    if (isRecord(value['result'])) message.result = value['result']
    const error = value['error']
    if (isRecord(error)) {
      message.error = {
        code: typeof error['code'] === 'string' ? error['code'] : 'INTERNAL',
        message:
          typeof error['message'] === 'string'
            ? error['message']
            : 'The agent reported an error without a message',
      }
      if (typeof error['remedy'] === 'string') message.error.remedy = error['remedy']
      if (isRecord(error['data'])) {
        const safe: Record<string, string | number | boolean> = {}
        for (const [k, v] of Object.entries(error['data'])) {
          if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') safe[k] = v
        }
        message.error.data = safe
      }
    }
    return message
  }
  if (typeof id !== 'number') return undefined
  if (type === 'event' && typeof value['event'] === 'string') {
    return { v: 1, type, id, event: value['event'] as EventName, data }
  }
  if (type === 'query' && typeof value['qid'] === 'number' && value['query'] === 'pin') {
    return { v: 1, type, id, qid: value['qid'], query: value['query'], data }
  }
  return undefined
}
