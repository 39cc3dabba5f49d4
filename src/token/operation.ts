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

/** The claims that identify a mutation, in cargo's serialisation order after `iat` and `sub`. */
export const MUTATION_CLAIMS = ['mutation', 'name', 'vers', 'cksum'] as const
export type MutationClaim = (typeof MUTATION_CLAIMS)[number]

/** Which request fields each operation requires; all others must be absent. */
export const OPERATION_FIELDS: Readonly<Record<Operation, readonly ('name' | 'vers' | 'cksum')[]>> =
  Object.freeze({
    read: [],
    publish: ['name', 'vers', 'cksum'],
    yank: ['name', 'vers'],
    unyank: ['name', 'vers'],
    owners: ['name'],
  })
