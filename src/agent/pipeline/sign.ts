/**
 * Stage 4: build the RFC 3231 token with the device's signer (the touch notice around it is the
 * policy's, see authorize.ts).
 */
import type { Intent } from '../../policy/intent.js'
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
  const options: {
    indexUrl: string
    operation: Intent['operation']
    name?: string
    vers?: string
    cksum?: string
    subject?: string
  } = {
    indexUrl: intent.indexUrl,
    operation: intent.operation,
  }
  if (intent.name !== undefined) options.name = intent.name
  if (intent.vers !== undefined) options.vers = intent.vers
  if (intent.cksum !== undefined) options.cksum = intent.cksum
  if (binding.registry.subject !== undefined) options.subject = binding.registry.subject
  const built = await buildToken(signer, options, now)
  return { token: built.token, iatSeconds: Math.floor(built.iat.getTime() / 1000), kip: built.kip }
}
