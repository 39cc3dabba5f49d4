/**
 * Stage "sign": build the RFC 3231 token with the device's signer (the touch notice around it is
 * the policy's, see run.ts).
 */
import type { Intent } from '../../cargo/intent.js'
import type { Signer } from '../../signer/signer.js'
import { buildToken } from '../../token/build.js'
import type { Binding } from './bind.js'

export interface Signed {
  readonly token: string
  readonly iatSeconds: number
  readonly kip: string
}

export async function signIntent(
  intent: Intent,
  binding: Binding,
  signer: Signer,
  now: Date = new Date(),
): Promise<Signed> {
  const options = {
    indexUrl: intent.indexUrl,
    operation: intent.operation,
    crate: intent.crate,
    ...(binding.registry.subject === undefined ? {} : { subject: binding.registry.subject }),
  }
  const built = await buildToken(signer, options, now)
  return { token: built.token, iatSeconds: Math.floor(built.iat.getTime() / 1000), kip: built.kip }
}
