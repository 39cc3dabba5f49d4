const ALPHABET = /^[A-Za-z0-9_-]*$/

export function encodeBase64url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url')
}

/**
 * Strict RFC 4648 §5 base64url without padding, as PASETO (Common.md §Base64) and PASERK require:
 * decoders MUST reject `=` padding and non-zero trailing bits. Node's own `base64url` decoder is
 * lenient (it skips padding and invalid characters), so the input is checked first and the
 * canonical re-encoding must give the same text back. `invalid` builds the caller's error.
 */
export function decodeBase64url(text: string, what: string, invalid: (message: string) => Error): Uint8Array {
  if (!ALPHABET.test(text) || text.length % 4 === 1) throw invalid(`${what} is not unpadded base64url`)
  const bytes = Buffer.from(text, 'base64url')
  if (bytes.toString('base64url') !== text) {
    throw invalid(`${what} is not canonical base64url (non-zero trailing bits)`)
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}
