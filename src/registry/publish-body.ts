/**
 * The body of `PUT /api/v1/crates/new` (cargo `crates/crates-io/lib.rs` `publish`; the registry Web
 * API, "Publish"): a u32 little-endian length, that many bytes of JSON metadata, a u32 LE length,
 * that many bytes of `.crate`. A publish token's `cksum` must be the SHA-256 of exactly those
 * `.crate` bytes (RFC 3231 "The message"), so the parser hashes them.
 */
import { createHash } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { isRecord } from '../lib/json.js'
import type { CrateRef } from '../cargo/operation.js'

export interface PublishBody {
  /** The JSON metadata, untouched (`name`, `vers`, `deps`, `features`, …). */
  readonly metadata: Readonly<Record<string, unknown>>
  /** The `.crate` bytes (a view into the body). */
  readonly crateFile: Uint8Array
  /** `name`, `vers` from the metadata and `cksum`, the lowercase hex SHA-256 of `crateFile`. */
  readonly crate: Required<CrateRef>
}

const REMEDY =
  'The body must be what `cargo publish` sends: u32 LE JSON length, JSON, u32 LE .crate length, .crate'

const invalid = (message: string): never => {
  throw new AgentError('REQUEST_INVALID', `publish body: ${message}`, {
    remedy: REMEDY,
    data: { status: 400 },
  })
}

/**
 * @example
 * ```ts
 * const { metadata, crateFile, crate } = parsePublishBody(body)
 * await verifyToken(authorization, { ...options, operation: 'publish', crate })
 * ```
 */
export function parsePublishBody(body: Uint8Array): PublishBody {
  const bytes = Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  if (bytes.length < 4) invalid('shorter than its length prefix')
  const jsonLength = bytes.readUInt32LE(0)
  if (4 + jsonLength + 4 > bytes.length) invalid('the metadata length runs past the end of the body')
  let metadata: unknown
  try {
    metadata = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(4, 4 + jsonLength)))
  } catch (cause) {
    invalid(`the metadata is not UTF-8 JSON (${(cause as Error).message})`)
  }
  if (!isRecord(metadata)) return invalid('the metadata is not a JSON object')
  const record = metadata
  const crateLength = bytes.readUInt32LE(4 + jsonLength)
  const start = 8 + jsonLength
  if (start + crateLength !== bytes.length)
    invalid(`the .crate length ${crateLength} does not match the ${bytes.length - start} bytes sent`)
  const text = (field: string): string => {
    const value = record[field]
    if (typeof value !== 'string' || value === '')
      invalid(`metadata field \`${field}\` must be a non-empty string`)
    return value as string
  }
  const crateFile = bytes.subarray(start)
  return {
    metadata: record,
    crateFile,
    crate: {
      name: text('name'),
      vers: text('vers'),
      cksum: createHash('sha256').update(crateFile).digest('hex'),
    },
  }
}

/** The inverse, for tests and tools that publish without cargo. */
export function encodePublishBody(metadata: Record<string, unknown>, crateFile: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(metadata), 'utf8')
  const head = Buffer.alloc(4)
  head.writeUInt32LE(json.length)
  const mid = Buffer.alloc(4)
  mid.writeUInt32LE(crateFile.length)
  return Buffer.concat([head, json, mid, crateFile])
}
