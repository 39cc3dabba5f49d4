/**
 * The registry kit: what a Node registry needs around the verifier to accept RFC 3231 tokens from
 * cargo (docs/registry-kit.md). Exported as `cargo-pkcs11-agent/registry` and by the native-free
 * `cargo-pkcs11-verify/registry`; it uses node:http types and node:crypto only.
 */
export { ROUTES, matchRoute, resolveLayout, sparseIndexPath } from './routes.js'
export type { RouteKind, RouteLayout, RouteMatch, RouteSpec } from './routes.js'
export { encodePublishBody, parsePublishBody } from './publish-body.js'
export type { PublishBody } from './publish-body.js'
export { replayKey, SingleUseStore } from './replay.js'
export type { SingleUseStoreOptions } from './replay.js'
export { parseKeysFile } from './keys-file.js'
export type { KeyRing, RegisteredKey } from './keys-file.js'
export { CargoAuth } from './auth.js'
export type { CargoAuthOptions, CargoRequestAuth } from './auth.js'
export {
  cargoAuthMiddleware,
  cargoAuthOf,
  cargoChallenge,
  cargoErrorBody,
  errorReply,
  readBody,
  requestPath,
  sendReply,
} from './http.js'
export type { CargoIncomingMessage, CargoReply, Middleware } from './http.js'
export type { CrateRef, Operation } from '../cargo/operation.js'
