/**
 * A Signer whose P-384 key lives on a PKCS#11 device. The device signs only a digest (CKM_ECDSA):
 * SHA-384 is computed here, on the host, because SoftHSM offers no CKM_ECDSA_SHA384 and PASETO v3
 * fixes the hash to SHA-384 (Version3.md §Sign). Whatever the device returns (r||s or DER, high
 * or low S) is normalised to low-S r||s and verified against the public key read from the device
 * before it leaves this object: inline when it is the process's only signature in flight (the verify
 * then delays nobody, and a worker hop would only add its latency), else on a worker thread
 * (verify-pool.ts) so that concurrent requests are not stalled behind it on the event loop.
 */
import { createHash } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { normalizeSignature, verifySignature } from '../keys/signature.js'
import type { Device } from '../pkcs11/device.js'
import type { KeySelector } from '../pkcs11/selector.js'
import type { Signer } from './signer.js'
import { verifyOffThread } from './verify-pool.js'

/** Signatures between their digest and their verify, over every device key of this process. */
let inFlight = 0

/** The device key `selector` names, as the one Signer seam (src/signer/signer.ts). */
export async function pkcs11Signer(device: Device, selector: KeySelector): Promise<Signer> {
  const key = await device.findKey(selector)
  const publicKey = Uint8Array.from(key.publicKey)
  const description = `${device.describe()} key '${key.label}' (id ${key.id})`
  return {
    publicKey,
    description,
    async sign(message: Uint8Array): Promise<Uint8Array> {
      const digest = new Uint8Array(createHash('sha384').update(message).digest())
      let signature: Uint8Array
      let alone: boolean
      inFlight += 1
      try {
        signature = normalizeSignature(await device.signDigest(key, digest))
        alone = inFlight === 1
      } finally {
        inFlight -= 1
      }
      const verified = alone
        ? verifySignature(publicKey, message, signature)
        : await verifyOffThread(publicKey, message, signature)
      if (!verified) {
        // The key was replaced behind our back (its public half no longer matches): the next
        // lookup must read the token again instead of trusting the cached list.
        device.forgetKeys()
        throw new AgentError(
          'SELF_CHECK_FAILED',
          `${description}: the device signature does not verify with the key's public point`,
          {
            remedy:
              'The token may hold a different key under this label/id than when the agent started; run `cargo-pkcs11-agent pubkey` and compare with the registry',
          },
        )
      }
      return signature
    },
  }
}
