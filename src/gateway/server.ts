/**
 * The verifying gateway (docs/gateway.md): a reverse proxy that puts RFC 3231 in front of a cargo
 * registry that only knows one bearer token. Every request is routed by the registry kit, its token
 * checked for exactly that operation (key by `kip` from the keys file, mutation tokens single-use),
 * and only then forwarded, with the upstream's own token in place of the user's. Requests that are
 * not cargo registry requests are refused, never forwarded: the gateway holds a credential that
 * opens the whole upstream.
 *
 * The upstream token never leaves the process: it is set on the upstream request only, upstream
 * 401/403 answers (which could echo it) are replaced by a 502, and config.json is rewritten so
 * cargo's downloads and API calls come back through the gateway.
 */
import {
  request as httpRequest,
  createServer,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { AddressInfo } from 'node:net'

import { AgentError, toAgentError } from '../lib/errors.js'
import { isRecord } from '../lib/json.js'
import { LIMITS } from '../lib/limits.js'
import {
  CargoAuth,
  errorReply,
  readBody,
  requestPath,
  sendReply,
  type CargoRequestAuth,
  type RouteMatch,
} from '../registry/index.js'
import type { GatewayConfig } from './config.js'
import { ReloadableKeys } from './keys.js'

/** One line of the gateway's log: what was asked, who asked, what happened. Never a token. */
export interface GatewayEvent {
  readonly at: string
  readonly method: string
  readonly path: string
  readonly operation?: string
  readonly user?: string
  readonly kip?: string
  /** `refused` at the gateway, `forwarded` to the upstream, `error` talking to it. */
  readonly outcome: 'refused' | 'forwarded' | 'error'
  readonly status: number
  readonly code?: string
}

export interface Gateway {
  /** `http://host:port` as cargo reaches it (the public URL when configured). */
  readonly url: string
  /** `sparse+<url>/index/`: what users put in `.cargo/config.toml` and tokens carry as footer `url`. */
  readonly indexUrl: string
  readonly port: number
  readonly keys: ReloadableKeys
  stop(): Promise<void>
}

export interface GatewayHooks {
  readonly onEvent?: (event: GatewayEvent) => void
  readonly onKeysReload?: (result: { keys: number } | { error: AgentError }) => void
}

/** Request headers worth passing on (cargo's index caching and content negotiation); all others stay here. */
const FORWARD_REQUEST_HEADERS = [
  'accept',
  'accept-encoding',
  'content-type',
  'if-none-match',
  'if-modified-since',
  'user-agent',
]
/** Response headers never passed back: hop-by-hop (RFC 9110 §7.6.1) and upstream auth state. */
const DROP_RESPONSE_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'www-authenticate',
  'set-cookie',
  'content-length',
])

const upstreamError = (message: string, status: number, remedy: string): AgentError =>
  new AgentError('UPSTREAM_ERROR', message, { remedy, data: { status } })

/** Why `listen` cannot be used (bind(2) errors), naming the setting to change. */
const LISTEN_PROBLEMS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'another process already listens there',
  EACCES: 'ports below 1024 need privileges this process does not have',
  EADDRNOTAVAIL: 'no interface of this machine has that address',
}

function listenError(error: NodeJS.ErrnoException, config: GatewayConfig): AgentError {
  const problem = LISTEN_PROBLEMS[error.code ?? '']
  if (problem === undefined) return toAgentError(error)
  const address = `${config.host.includes(':') ? `[${config.host}]` : config.host}:${config.port}`
  return new AgentError('CONFIG_INVALID', `the gateway cannot listen on ${address}: ${problem}`, {
    cause: error,
    remedy: `Pick another \`listen\` (HOST:PORT, in the gateway config or --listen)${error.code === 'EADDRINUSE' ? `, or stop the process on port ${config.port} (\`ss -ltnp 'sport = :${config.port}'\` names it)` : ''}`,
  })
}

export async function startGateway(config: GatewayConfig, hooks: GatewayHooks = {}): Promise<Gateway> {
  const keys = new ReloadableKeys(config.keysFile, hooks.onKeysReload)
  const upstreamBase = config.upstream.href.replace(/\/+$/, '')
  const send = config.upstream.protocol === 'https:' ? httpsRequest : httpRequest
  let publicBase = config.publicUrl ?? ''
  let auth: CargoAuth | undefined

  const log = (event: Omit<GatewayEvent, 'at'>): void =>
    hooks.onEvent?.({ at: new Date().toISOString(), ...event })

  /** config.json with `dl` and `api` pointing back at the gateway, and auth-required on. */
  const rewriteConfig = (body: Buffer): Buffer => {
    let config: unknown
    try {
      config = JSON.parse(body.toString('utf8'))
      if (!isRecord(config)) throw new Error('not an object')
    } catch (error) {
      throw upstreamError(
        `the upstream config.json is not a JSON object (${(error as Error).message})`,
        502,
        'Check the upstream registry',
      )
    }
    for (const key of ['dl', 'api'] as const) {
      const value = config[key]
      if (value === undefined && key === 'api') continue
      if (typeof value !== 'string' || !(value === upstreamBase || value.startsWith(`${upstreamBase}/`)))
        throw upstreamError(
          `the upstream config.json \`${key}\` is not under the upstream URL, so the gateway cannot stand in front of it`,
          502,
          `Set \`upstream\` to the origin config.json names (${key} = ${JSON.stringify(String(value).slice(0, 100))})`,
        )
      config[key] = publicBase + value.slice(upstreamBase.length)
    }
    // The gateway needs a token for every request: without one it would read for anyone.
    config['auth-required'] = true
    return Buffer.from(JSON.stringify(config))
  }

  const forward = (
    req: IncomingMessage,
    res: ServerResponse,
    route: RouteMatch,
    body: Buffer,
  ): Promise<number> =>
    new Promise((resolve, reject) => {
      const headers: OutgoingHttpHeaders = {}
      for (const name of FORWARD_REQUEST_HEADERS) {
        const value = req.headers[name]
        if (value !== undefined) headers[name] = value
      }
      if (route.kind === 'config') delete headers['accept-encoding'] // it is parsed here
      headers['authorization'] = config.upstreamToken.expose()
      headers['content-length'] = String(body.length)
      const upstream = send(
        `${upstreamBase}${req.url ?? '/'}`,
        { method: req.method, headers, timeout: config.upstreamTimeoutMs },
        (up) => {
          const status = up.statusCode ?? 502
          if (status === 401 || status === 403) {
            up.resume()
            reject(
              upstreamError(
                `the upstream registry refused the gateway's own token (HTTP ${status})`,
                502,
                'The gateway operator should check the upstream token (upstream-token-file / upstream-token-env)',
              ),
            )
            return
          }
          const outHeaders: Record<string, string | string[]> = {}
          for (const [name, value] of Object.entries(up.headers))
            if (value !== undefined && !DROP_RESPONSE_HEADERS.has(name)) outHeaders[name] = value
          if (route.kind === 'config' && status === 200) {
            readBody(up, LIMITS.gatewayConfigJsonMaxBytes).then((raw) => {
              const rewritten = rewriteConfig(raw)
              delete outHeaders['etag'] // the body is not the upstream's any more
              res.writeHead(200, {
                ...outHeaders,
                'content-type': 'application/json',
                'content-length': String(rewritten.length),
              })
              res.end(rewritten)
              resolve(200)
            }, reject)
            return
          }
          const length = up.headers['content-length']
          if (length !== undefined) outHeaders['content-length'] = length
          res.writeHead(status, outHeaders)
          up.pipe(res)
          up.on('end', () => resolve(status))
          up.on('error', reject)
        },
      )
      upstream.on('timeout', () =>
        upstream.destroy(
          upstreamError(
            `the upstream registry did not answer within ${config.upstreamTimeoutMs} ms`,
            504,
            'Check that the upstream registry is up',
          ),
        ),
      )
      upstream.on('error', (error) =>
        reject(
          error instanceof AgentError
            ? error
            : upstreamError(
                `the upstream registry is unreachable: ${error.message}`,
                502,
                'Check that the upstream registry is up and `upstream` points at it',
              ),
        ),
      )
      upstream.end(body)
    })

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const method = req.method ?? 'GET'
    const path = requestPath(req)
    const route = auth!.route(method, path)
    const refuse = (error: unknown, extra: Partial<GatewayEvent> = {}): void => {
      const reply = errorReply(error, `${publicBase}/me`)
      if (!res.headersSent) sendReply(res, reply)
      else res.destroy()
      log({
        method,
        path,
        ...extra,
        outcome: toAgentError(error).code === 'UPSTREAM_ERROR' ? 'error' : 'refused',
        status: reply.status,
        code: toAgentError(error).code,
      })
    }
    if (method === 'GET' && path === '/me') {
      const text =
        'This registry accepts RFC 3231 asymmetric tokens (PASETO v3.public). Send your k3.public key (`cargo-pkcs11-agent pubkey`) to the registry operator.\n'
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(text)) })
      res.end(text)
      log({ method, path, outcome: 'refused', status: 200 })
      return
    }
    if (route === undefined) {
      refuse(
        new AgentError('REQUEST_INVALID', `${method} ${path.slice(0, 200)} is not a cargo registry request`, {
          remedy: 'The gateway forwards the sparse index, downloads and the cargo Web API only',
          data: { status: 404 },
        }),
      )
      return
    }
    let checked: CargoRequestAuth
    let body: Buffer
    try {
      body = await readBody(
        req,
        route.kind === 'publish' ? config.maxUploadBytes : LIMITS.registryMaxRequestBodyBytes,
      )
      checked = await auth!.check(route, req.headers.authorization, body)
    } catch (error) {
      refuse(error, { operation: route.operation })
      return
    }
    const who = {
      operation: route.operation,
      ...(checked.token?.user === undefined ? {} : { user: checked.token.user }),
      ...(checked.token === undefined ? {} : { kip: checked.token.kip }),
    }
    try {
      const status = await forward(req, res, route, body)
      log({ method, path, ...who, outcome: 'forwarded', status })
    } catch (error) {
      refuse(error, who)
    }
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      res.destroy(error instanceof Error ? error : undefined)
    })
  })
  server.requestTimeout = LIMITS.registryBodyReadTimeoutMs + config.upstreamTimeoutMs
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(listenError(error, config)))
    server.listen(config.port, config.host, () => resolve())
  })
  const port = (server.address() as AddressInfo).port
  if (config.publicUrl === undefined)
    publicBase = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`
  const indexUrl = `sparse+${publicBase}/index/`
  auth = new CargoAuth({
    url: indexUrl,
    resolveKey: (kip) => keys.get(kip),
    authRequired: true,
    maxAgeSeconds: config.maxAgeSeconds,
    clockSkewSeconds: config.clockSkewSeconds,
    strictLowS: config.strictLowS,
    loginUrl: `${publicBase}/me`,
    maxUploadBytes: config.maxUploadBytes,
  })
  keys.watch()
  return {
    url: publicBase,
    indexUrl,
    port,
    keys,
    stop: () =>
      new Promise<void>((resolve) => {
        keys.close()
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
