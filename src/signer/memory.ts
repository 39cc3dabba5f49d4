/**
 * A Signer whose P-384 key lives in process memory (node:crypto). For tests, dry runs and
 * registry-side tooling; never for a user's real key, which belongs on a device.
 */
import {
  createECDH,
  createPrivateKey,
  generateKeyPairSync,
  sign as cryptoSign,
  type KeyObject,
} from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { compressPoint } from '../keys/point.js'
import { k3Public, k3Secret, parseK3Secret } from '../keys/paserk.js'
import { normalizeSignature, verifySignature } from '../keys/signature.js'
import type { Signer } from './signer.js'

export class MemorySigner implements Signer {
  readonly publicKey: Uint8Array
  readonly description: string
  readonly #privateKey: KeyObject
  readonly #scalar: Uint8Array

  private constructor(scalar: Uint8Array) {
    // node:crypto derives a public point from a raw scalar only through ECDH.
    const ecdh = createECDH('secp384r1')
    ecdh.setPrivateKey(Buffer.from(scalar))
    const uncompressed = new Uint8Array(ecdh.getPublicKey())
    const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url')
    this.#privateKey = createPrivateKey({
      key: {
        kty: 'EC',
        crv: 'P-384',
        d: b64(scalar),
        x: b64(uncompressed.subarray(1, 49)),
        y: b64(uncompressed.subarray(49, 97)),
      },
      format: 'jwk',
    })
    this.#scalar = Uint8Array.from(scalar)
    this.publicKey = compressPoint(uncompressed)
    this.description = `in-memory P-384 key ${k3Public(this.publicKey).slice(0, 24)}…`
  }

  static generate(): MemorySigner {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
    const d = privateKey.export({ format: 'jwk' }).d
    if (d === undefined)
      throw new AgentError('INTERNAL', 'node:crypto generated an EC key without a private scalar', {
        remedy:
          'The Node.js OpenSSL build cannot export P-384 keys; use Node.js 20 or newer from the usual builds',
      })
    const scalar = new Uint8Array(48)
    const raw = Buffer.from(d, 'base64url')
    scalar.set(raw, 48 - raw.length)
    return new MemorySigner(scalar)
  }

  /** Imports a software key from its PASERK (what `cargo:paseto` stores as `secret-key`). */
  static fromK3Secret(s: string): MemorySigner {
    return new MemorySigner(parseK3Secret(s))
  }

  /** The private scalar as `k3.secret.…`: software test keys only. */
  exportK3Secret(): string {
    return k3Secret(this.#scalar)
  }

  async sign(message: Uint8Array): Promise<Uint8Array> {
    const raw = cryptoSign('sha384', message, { key: this.#privateKey, dsaEncoding: 'ieee-p1363' })
    const signature = normalizeSignature(new Uint8Array(raw))
    // Same contract as the device signer: never hand out a signature that does not verify.
    if (!verifySignature(this.publicKey, message, signature)) {
      throw new AgentError(
        'SELF_CHECK_FAILED',
        'the in-memory signature did not verify with its own public key',
        {
          remedy:
            'This is a bug; report it with the Node.js and OpenSSL versions (`node -p process.versions`)',
        },
      )
    }
    return signature
  }
}
