/**
 * The one seam between token building and hardware.
 *
 * A Signer holds a P-384 key and signs bytes with ECDSA over SHA-384 (PASETO v3.public, RFC 3231).
 * Implementations: `memory.ts` (node:crypto, tests and dry runs) and `pkcs11.ts` (on the device).
 * Token code depends only on this file and on `src/keys/`, never on an implementation.
 */
export interface Signer {
  /** SEC1 compressed public point, 49 bytes: what goes into the PAE, `k3.public` and `k3.pid`. */
  readonly publicKey: Uint8Array
  /** A short human description ("SoftHSM token 'ci' key 'cargo'"), used in notices and logs. */
  readonly description: string
  /**
   * Signs `message` (the PASETO pre-authentication encoding): ECDSA P-384 over SHA-384(message).
   * Resolves to the 96-byte `r || s` with s normalised to the low half, already verified against
   * `publicKey`. May wait for a touch; rejects with an `AgentError`.
   */
  sign(message: Uint8Array): Promise<Uint8Array>
}
