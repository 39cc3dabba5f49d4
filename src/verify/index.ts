/**
 * The verifier's public surface: what the dependency-light `cargo-pkcs11-verify` package exports
 * (packages/verify/README.md) and what `cargo-pkcs11-agent/verify` exports. Nothing reachable from
 * here loads native code.
 */
export { verifyToken, inspectToken } from './verify.js'
export type { VerifyOptions, VerifiedToken, UntrustedTokenContents } from './verify.js'
export { verifyV3Public } from './paseto.js'
export type { VerifiedV3Public, V3PublicVerifyOptions } from './paseto.js'
export { VerifyError } from './errors.js'
export { verifyAttestation, readAttestation } from './attestation.js'
export type { AttestedKey, AttestationRequirement, PinPolicy, TouchPolicy } from './attestation.js'
export { k3Public, k3Pid, parseK3Public } from '../keys/paserk.js'
export type { Operation, CrateRef } from '../cargo/operation.js'

/**
 * `VERIFY_CODES` lists every reason a token is refused (the values of `VerifyError.code`);
 * `AgentError` is the base class, also thrown for a bad call (`USAGE`, `KEY_INVALID`).
 *
 * @example
 * ```ts
 * const refusals = new Map(VERIFY_CODES.map((code) => [code, 0])) // a metric per reason
 * if (error instanceof AgentError && !(error instanceof VerifyError)) throw error
 * ```
 */
export { AgentError, VERIFY_CODES } from '../lib/errors.js'
export type { ErrorCode, VerifyCode } from '../lib/errors.js'
