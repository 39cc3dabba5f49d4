/**
 * The gateway's configuration: a small TOML file (`--config`), command-line flags over it
 * (docs/gateway.md, "Configuration"). The upstream's bearer token is read here, from a file or an
 * environment variable, straight into a `Secret`: it never appears in argv, a log line or an error.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs'

import { parseToml } from '../config/load.js'
import { closestKey } from '../config/schema.js'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { checkSecretFile } from '../lib/pin-file.js'
import { Secret } from '../lib/secret.js'

export interface GatewayConfig {
  readonly host: string
  /** 0 picks a free port (tests). */
  readonly port: number
  /** The origin (and optional base path) cargo reaches the gateway at; the index is `<publicUrl>/index/`.
   * Undefined: `http://<host>:<port>` once listening. */
  readonly publicUrl: string | undefined
  /** The bearer-token registry behind the gateway (`http://host:port[/base]`). */
  readonly upstream: URL
  readonly upstreamToken: Secret<string>
  readonly keysFile: string
  readonly maxAgeSeconds: number
  readonly clockSkewSeconds: number
  readonly strictLowS: boolean
  readonly maxUploadBytes: number
  readonly upstreamTimeoutMs: number
}

/** The flags of `cargo-pkcs11-agent gateway` (parser specs); each overrides the same key of the file. */
export const GATEWAY_FLAGS = {
  config: { type: 'string' },
  listen: { type: 'string' },
  'public-url': { type: 'string' },
  upstream: { type: 'string' },
  keys: { type: 'string' },
  'upstream-token-file': { type: 'string' },
  'upstream-token-env': { type: 'string' },
  'max-age': { type: 'string' },
} as const

export type GatewayFlags = { readonly [K in keyof typeof GATEWAY_FLAGS]?: string | undefined }

const FILE_KEYS = [
  'listen',
  'public-url',
  'upstream',
  'keys-file',
  'upstream-token-file',
  'upstream-token-env',
  'max-age-seconds',
  'clock-skew-seconds',
  'strict-low-s',
  'max-upload-bytes',
  'upstream-timeout-ms',
] as const

const REMEDY = 'See docs/gateway.md, "Configuration", for the keys and flags'

const invalid = (message: string): never => {
  throw new AgentError('CONFIG_INVALID', message, { remedy: REMEDY })
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    throw new AgentError(
      'CONFIG_MISSING',
      `cannot read the gateway config ${path}: ${(error as Error).message}`,
      {
        remedy: 'Pass --config with the path of a readable TOML file',
      },
    )
  }
  const table = parseToml(text, path, REMEDY)
  for (const key of Object.keys(table)) {
    if ((FILE_KEYS as readonly string[]).includes(key)) continue
    const hint = closestKey(key, FILE_KEYS)
    invalid(
      `${path}: unknown key \`${key}\`${hint === undefined ? `; the keys are ${FILE_KEYS.join(', ')}` : `; did you mean \`${hint}\`?`}`,
    )
  }
  return table
}

function text(table: Record<string, unknown>, key: string): string | undefined {
  const value = table[key]
  if (value === undefined) return undefined
  if (typeof value !== 'string' || value === '') return invalid(`\`${key}\` must be a non-empty string`)
  return value
}

function integer(value: unknown, key: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max)
    invalid(`\`${key}\` must be a whole number in ${min}..${max}, got ${JSON.stringify(value)}`)
  return n as number
}

function httpUrl(value: string, key: string): URL {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return invalid(`\`${key}\` is not a URL: ${JSON.stringify(value)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') invalid(`\`${key}\` must be an http(s) URL`)
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '')
    invalid(
      `\`${key}\` must not carry credentials, a query or a fragment; the upstream token has its own setting`,
    )
  return url
}

/** Reads the upstream token (file or environment variable) into a Secret, checking it fits in a header. */
function upstreamToken(file: string | undefined, env: string | undefined): Secret<string> {
  if ((file === undefined) === (env === undefined))
    invalid(
      'give exactly one of `upstream-token-file` and `upstream-token-env` (the upstream registry token)',
    )
  let value: string | undefined
  if (file !== undefined) {
    let fd: number
    try {
      fd = openSync(file, constants.O_RDONLY | constants.O_NOCTTY)
    } catch (error) {
      throw new AgentError(
        'CONFIG_MISSING',
        `cannot read the upstream token file ${file}: ${(error as Error).message}`,
        {
          remedy: 'Write the upstream registry token to that file (mode 0600), the whole Authorization value',
        },
      )
    }
    try {
      // fstat of the opened file, as for a PIN file: it opens the whole upstream.
      checkSecretFile(fstatSync(fd), file, 'upstream token', 'gateway')
      value = readFileSync(fd, 'utf8').replace(/\r?\n$/, '')
    } finally {
      closeSync(fd)
    }
  } else {
    value = process.env[env!]
    if (value === undefined || value === '')
      invalid(`the environment variable ${env!} (upstream-token-env) is not set`)
  }
  // The value becomes an HTTP header: no control characters (they would split the request).
  if (value === '' || /[\u0000-\u001f\u007f]/.test(value!))
    invalid('the upstream token is empty or contains control characters')
  return new Secret(value!)
}

export function loadGatewayConfig(flags: GatewayFlags): GatewayConfig {
  const file = flags.config === undefined ? {} : readConfigFile(flags.config)
  const listen = flags.listen ?? text(file, 'listen') ?? '127.0.0.1:0'
  const match = /^(.+):(\d+)$/.exec(listen)
  if (match === null) invalid(`\`listen\` must be HOST:PORT, got ${JSON.stringify(listen)}`)
  const host = match![1]!.replace(/^\[(.*)\]$/, '$1')
  const port = integer(match![2], 'listen', 0, 65535, 0)
  const upstreamText = flags.upstream ?? text(file, 'upstream')
  if (upstreamText === undefined)
    invalid('`upstream` (the bearer-token registry behind the gateway) is required')
  const keysFile = flags.keys ?? text(file, 'keys-file')
  if (keysFile === undefined) invalid('`keys-file` (registered k3.public keys, one per line) is required')
  const publicUrl = flags['public-url'] ?? text(file, 'public-url')
  // The gateway serves the kit's layout at the root of its origin: /index/, /dl/, /api/v1/crates.
  if (publicUrl !== undefined && httpUrl(publicUrl, 'public-url').pathname !== '/')
    invalid('`public-url` is an origin (scheme, host, port) without a path')
  const strict = file['strict-low-s']
  if (strict !== undefined && typeof strict !== 'boolean') invalid('`strict-low-s` must be true or false')
  // A token flag replaces the file's token setting as a whole: the two places are never mixed.
  const tokenFlags = flags['upstream-token-file'] !== undefined || flags['upstream-token-env'] !== undefined
  const tokenFile = flags['upstream-token-file'] ?? text(file, 'upstream-token-file')
  const tokenEnv = flags['upstream-token-env'] ?? text(file, 'upstream-token-env')
  return Object.freeze({
    host,
    port,
    publicUrl: publicUrl?.replace(/\/+$/, ''),
    upstream: httpUrl(upstreamText!, 'upstream'),
    upstreamToken: tokenFlags
      ? upstreamToken(flags['upstream-token-file'], flags['upstream-token-env'])
      : upstreamToken(tokenFile, tokenEnv),
    keysFile: keysFile!,
    maxAgeSeconds: integer(
      flags['max-age'] ?? file['max-age-seconds'],
      'max-age-seconds',
      1,
      LIMITS.maxTokenMaxAgeSeconds,
      LIMITS.defaultTokenMaxAgeSeconds,
    ),
    clockSkewSeconds: integer(
      file['clock-skew-seconds'],
      'clock-skew-seconds',
      0,
      LIMITS.maxTokenMaxAgeSeconds,
      LIMITS.defaultClockSkewSeconds,
    ),
    strictLowS: strict === true,
    maxUploadBytes: integer(
      file['max-upload-bytes'],
      'max-upload-bytes',
      1,
      1024 * 1024 * 1024,
      LIMITS.registryMaxUploadBytes,
    ),
    upstreamTimeoutMs: integer(
      file['upstream-timeout-ms'],
      'upstream-timeout-ms',
      100,
      600_000,
      LIMITS.gatewayUpstreamTimeoutMs,
    ),
  })
}
