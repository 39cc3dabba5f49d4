/**
 * The library surface for registry operators and tools: verify RFC 3231 asymmetric tokens exactly
 * as this project's own tests do, build them with any Signer, and handle PASERK k3 keys.
 */
export { verifyToken, inspectToken } from './verify/verify.js'
export type { VerifyOptions, VerifiedToken, UntrustedTokenContents } from './verify/verify.js'
export { verifyV3Public } from './verify/paseto.js'
export type { VerifiedV3Public, V3PublicVerifyOptions } from './verify/paseto.js'

export { buildToken, validateTokenRequest } from './token/build.js'
export type { TokenRequest, BuiltToken } from './token/build.js'
export { OPERATIONS, isOperation } from './cargo/operation.js'
export type { Operation } from './cargo/operation.js'
export { formatIat, parseIat } from './token/iat.js'
export { v3PublicPae } from './token/pae.js'

export { k3Public, k3Pid, parseK3Public, k3Secret, parseK3Secret } from './keys/paserk.js'
export { compressPoint, publicKeyFromDevice, isP384EcParams, publicKeyObject } from './keys/point.js'
export { normalizeSignature, isHighS, verifySignature } from './keys/signature.js'

export type { Signer } from './signer/signer.js'
export { MemorySigner } from './signer/memory.js'

export { AgentError, VERIFY_CODES, isErrorCode } from './lib/errors.js'
export type { ErrorCode, VerifyCode } from './lib/errors.js'
