/**
 * The kit over node:http: cargo's error body, the 401 challenge, a bounded body reader and a
 * `(req, res, next)` middleware that express, connect and plain `http.createServer` can all use.
 *
 * cargo shows `errors[].detail` of a failed Web API response (cargo `crates/crates-io/lib.rs`,
 * `ResponseError::Api`), and on a 401 reads `WWW-Authenticate: Cargo login_url="…"` to tell the user
 * where to get a token (cargo `src/cargo/util/auth/mod.rs`); a 401 on `config.json` is how a sparse
 * registry says "auth-required" before cargo has any config (`http_remote.rs`).
 */
import type { IncomingMessage, ServerResponse } from 'node:http'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { VerifyError } from '../verify/errors.js'
import { CargoAuth, type CargoAuthOptions, type CargoRequestAuth } from './auth.js'

/** What to send back: status, headers and a JSON body (`{"errors":[{"detail":…}]}` for errors). */
export interface CargoReply {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
}

/** cargo's error JSON for one message. */
export function cargoErrorBody(detail: string): string {
  return JSON.stringify({ errors: [{ detail }] })
}

/** `Cargo login_url="…"`, the challenge cargo parses (quotes in the URL are percent-encoded). */
export function cargoChallenge(loginUrl: string | undefined): string {
  return loginUrl === undefined ? 'Cargo' : `Cargo login_url="${loginUrl.replace(/"/g, '%22')}"`
}

/**
 * The reply for a failure of `CargoAuth.check` (or any error): a refused token is 401 with the
 * challenge, a bad request its `data.status` (400 for REQUEST_INVALID), anything else 500. The
 * detail is `CODE: message. remedy`.
 */
export function errorReply(error: unknown, loginUrl?: string): CargoReply {
  const e = toAgentError(error)
  const declared = e.data['status']
  const status =
    e instanceof VerifyError
      ? 401
      : typeof declared === 'number'
        ? declared
        : e.code === 'REQUEST_INVALID'
          ? 400
          : 500
  const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8' }
  if (status === 401) headers['www-authenticate'] = cargoChallenge(loginUrl)
  return { status, headers, body: cargoErrorBody(`${e.code}: ${e.describe()}`) }
}

export function sendReply(res: ServerResponse, reply: CargoReply): void {
  res.writeHead(reply.status, { ...reply.headers, 'content-length': String(Buffer.byteLength(reply.body)) })
  res.end(reply.body)
}

/** Reads a whole request body, refusing more than `maxBytes` (413) or a client slower than the timeout. */
export function readBody(
  req: IncomingMessage,
  maxBytes: number,
  timeoutMs: number = LIMITS.registryBodyReadTimeoutMs,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? Number.NaN)
    const tooLarge = (): AgentError =>
      new AgentError('REQUEST_INVALID', `the request body is larger than ${maxBytes} bytes`, {
        remedy: 'Publish a smaller crate, or ask the registry operator to raise the upload limit',
        data: { status: 413 },
      })
    if (declared > maxBytes) {
      reject(tooLarge())
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    const timer = setTimeout(() => {
      reject(
        new AgentError('TIMEOUT', `the request body did not arrive within ${timeoutMs} ms`, {
          remedy: 'Retry on a better connection',
          data: { status: 408 },
        }),
      )
      req.destroy()
    }, timeoutMs)
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > maxBytes) {
        clearTimeout(timer)
        reject(tooLarge())
        req.destroy()
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks))
    })
    req.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
  })
}

/** The request path without the query string. */
export function requestPath(req: IncomingMessage): string {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

/** A request the middleware let through carries what was checked here. */
export interface CargoIncomingMessage extends IncomingMessage {
  cargo?: CargoRequestAuth
  /** Publish only: the raw body the middleware had to read (as express.raw() would set it). */
  body?: unknown
}

export type Middleware = (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void

/** What `req.cargo` holds after the middleware; throws if the middleware did not run for it. */
export function cargoAuthOf(req: IncomingMessage): CargoRequestAuth {
  const auth = (req as CargoIncomingMessage).cargo
  if (auth === undefined)
    throw new AgentError(
      'INTERNAL',
      `${req.method ?? ''} ${requestPath(req)} was not checked by the cargo middleware`,
      {
        remedy: 'Mount cargoAuthMiddleware before the registry routes',
      },
    )
  return auth
}

/**
 * `(req, res, next)` middleware: requests that are not cargo registry routes go to `next()`
 * untouched; cargo routes are checked and either refused here (cargo's error JSON, 401 with the
 * challenge) or passed on with `req.cargo` set. For publish it reads the body (bounded) and leaves
 * it in `req.body` as a Buffer, with the parsed metadata and `.crate` in `req.cargo.publish`.
 *
 * @example
 * ```ts
 * const app = express()
 * app.use(cargoAuthMiddleware({ url: 'sparse+https://registry.example/index/', resolveKey: (kip) => keys.get(kip) }))
 * app.put('/api/v1/crates/new', (req, res) => { const { publish } = cargoAuthOf(req); … })
 * ```
 */
export function cargoAuthMiddleware(options: CargoAuthOptions | CargoAuth): Middleware {
  const auth = options instanceof CargoAuth ? options : new CargoAuth(options)
  const maxUpload = auth.options.maxUploadBytes ?? LIMITS.registryMaxUploadBytes
  return (req, res, next) => {
    const route = auth.route(req.method ?? 'GET', requestPath(req))
    if (route === undefined) {
      next()
      return
    }
    const run = async (): Promise<void> => {
      let body: Buffer | undefined
      if (route.kind === 'publish') {
        body = await readBody(req, maxUpload)
        ;(req as CargoIncomingMessage).body = body
      }
      ;(req as CargoIncomingMessage).cargo = await auth.check(route, req.headers.authorization, body)
    }
    run().then(
      () => next(),
      (error: unknown) => sendReply(res, errorReply(error, auth.options.loginUrl)),
    )
  }
}
