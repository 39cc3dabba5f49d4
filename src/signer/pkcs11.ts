/**
 * A Signer whose P-384 key lives on a PKCS#11 device. The device signs only a digest (CKM_ECDSA):
 * SHA-384 is computed here, on the host, because SoftHSM offers no CKM_ECDSA_SHA384 and PASETO v3
 * fixes the hash to SHA-384 (Version3.md §Sign). Whatever the device returns (r||s or DER, high
 * or low S) is normalised to low-S r||s and verified against the public key read from the device
 * before it leaves this object.
 */
import { createHash } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { normalizeSignature, verifySignature } from '../keys/signature.js'
import type { Signer } from './signer.js'

/** What the device layer provides (src/pkcs11/device.ts): one digest signature, already async. */
export interface DigestSigner {
  readonly description: string
  signDigest(digest: Uint8Array): Promise<Uint8Array>
}

export class Pkcs11Signer implements Signer {
  readonly publicKey: Uint8Array
  readonly description: string
  readonly #device: DigestSigner

  constructor(device: DigestSigner, key: { publicKey: Uint8Array }) {
    this.#device = device
    this.publicKey = Uint8Array.from(key.publicKey)
    this.description = device.description
  }

  async sign(message: Uint8Array): Promise<Uint8Array> {
    const digest = new Uint8Array(createHash('sha384').update(message).digest())
    const raw = await this.#device.signDigest(digest)
    const signature = normalizeSignature(raw)
    if (!verifySignature(this.publicKey, message, signature)) {
      throw new AgentError(
        'SELF_CHECK_FAILED',
        `${this.description}: the device signature does not verify with the key's public point`,
        {
          remedy:
            'The token may hold a different key under this label/id than when the agent started; run `cargo-pkcs11-agent pubkey` and compare with the registry',
        },
      )
    }
    return signature
  }
}
