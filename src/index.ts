/**
 * The library surface for registry operators and tools: everything the verifier exports
 * (src/verify/index.ts, also published alone as `cargo-pkcs11-verify`), plus building tokens with any
 * Signer. The agent, the shim and the PKCS#11 layer are programs, not API.
 */
export * from './verify/index.js'

export { buildToken } from './token/build.js'
export type { TokenRequest, BuiltToken } from './token/build.js'

/**
 * `Signer` is the seam buildToken signs through; `MemorySigner` holds a P-384 key in memory, for
 * tests and for registries that mint tokens in their own test suites.
 *
 * @example
 * ```ts
 * const signer = MemorySigner.generate() // or MemorySigner.fromK3Secret('k3.secret.…')
 * const { token } = await buildToken(signer, { indexUrl, operation: 'yank', crate: { name: 'foo', vers: '1.2.3' } })
 * await verifyToken(token, { publicKey: k3Public(signer.publicKey), url: indexUrl, operation: 'yank', crate: { name: 'foo', vers: '1.2.3' } })
 * ```
 */
export { MemorySigner } from './signer/memory.js'
export type { Signer } from './signer/signer.js'
