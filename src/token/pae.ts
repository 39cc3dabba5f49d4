/**
 * The bytes a v3.public signature covers (PASETO Version3.md §Sign step 4):
 * PAE(pk, "v3.public.", message, footer, implicit), pk being the 49-byte compressed point.
 * PAE itself comes from the `paseto` package; cargo's implicit assertion is always empty.
 */
import { PAE } from 'paseto'

export const V3_PUBLIC_HEADER = 'v3.public.'
const HEADER_BYTES = new TextEncoder().encode(V3_PUBLIC_HEADER)
const EMPTY = new Uint8Array(0)

/** Copies into a fresh ArrayBuffer-backed array: `paseto` rejects views over SharedArrayBuffer. */
const own = (bytes: Uint8Array): Uint8Array => new Uint8Array(bytes)

export function v3PublicPae(
  publicKey49: Uint8Array,
  message: Uint8Array,
  footer: Uint8Array,
  implicitAssertion: Uint8Array = EMPTY,
): Uint8Array {
  return PAE([own(publicKey49), HEADER_BYTES, own(message), own(footer), own(implicitAssertion)])
}
