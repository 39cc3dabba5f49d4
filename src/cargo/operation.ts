/**
 * The operations cargo's credential protocol asks tokens for (`Operation` in cargo's
 * `credential/cargo-credential/src/lib.rs`) and the message claims each one carries
 * (RFC 3231 "The message"; cargo `src/cargo/util/credential/paseto.rs`: `owners` is a cargo
 * addition with `name` only).
 */
export const OPERATIONS = ['read', 'publish', 'yank', 'unyank', 'owners'] as const
export type Operation = (typeof OPERATIONS)[number]

export function isOperation(value: unknown): value is Operation {
  return typeof value === 'string' && (OPERATIONS as readonly string[]).includes(value)
}

/** Which request fields each operation requires; all others must be absent. */
export const OPERATION_FIELDS: Readonly<Record<Operation, readonly ('name' | 'vers' | 'cksum')[]>> =
  Object.freeze({
    read: [],
    publish: ['name', 'vers', 'cksum'],
    yank: ['name', 'vers'],
    unyank: ['name', 'vers'],
    owners: ['name'],
  })

/**
 * The crate a request is about: the claims that bind a mutation token to one crate, version and
 * .crate checksum (RFC 3231 "The message"). Parsed once from cargo's request line
 * (`cargo/protocol.ts`) and passed as this one object to the intent, the token builder, the audit
 * entry and the verifier; which fields an operation carries is `OPERATION_FIELDS`.
 */
export interface CrateRef {
  readonly name?: string
  readonly vers?: string
  /** Lowercase hex SHA-256 of the .crate file (publish only). */
  readonly cksum?: string
}

/** The fields of `crate` that `operation` carries, in claim order; the others are dropped. */
export function crateFor(operation: Operation, crate: CrateRef): CrateRef {
  const out: { -readonly [K in keyof CrateRef]: CrateRef[K] } = {}
  for (const field of OPERATION_FIELDS[operation]) {
    const value = crate[field]
    if (value !== undefined) out[field] = value
  }
  return out
}
