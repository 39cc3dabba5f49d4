/**
 * Stage 4: build the RFC 3231 token with the device's signer, announcing a pending touch when the
 * signature has not come back after `touch-notice-after-ms` (design point 4).
 */
import type { TokenConfig } from '../../config/schema.js'
import type { Intent, Prompter } from '../../policy/intent.js'
import type { Signer } from '../../signer/signer.js'
import { buildToken } from '../../token/build.js'
import type { Binding } from './bind.js'
import { tokenDescription } from './pin.js'

export interface SignInput {
  readonly intent: Intent
  readonly binding: Binding
  readonly signer: Signer
  readonly prompter: Prompter
  readonly touchNoticeAfterMs: number
  readonly touchTimeoutMs: number
  readonly now?: Date
}

export interface Signed {
  readonly token: string
  readonly iatSeconds: number
  readonly kip: string
}

function touchText(token: TokenConfig, intent: Intent, registryName: string, seconds: number): string {
  const crate = [intent.name, intent.vers].filter((v) => v !== undefined).join(' ')
  const what = `${intent.operation}${crate === '' ? '' : ` ${crate}`} ${intent.operation === 'read' ? 'from' : 'to'} ${registryName}`
  const device = token.kind === 'yubikey' ? 'your YubiKey' : token.kind === 'tpm' ? 'the TPM' : tokenDescription(token)
  return token.kind === 'yubikey' ? `Touch ${device} to ${what} (${seconds} s left)` : `Waiting for ${device} to sign ${what} (${seconds} s left)`
}

function withTouchNotice(input: SignInput): Signer {
  const { signer, prompter, intent, binding } = input
  return {
    publicKey: signer.publicKey,
    description: signer.description,
    sign: async (message) => {
      const deadline = Date.now() + input.touchTimeoutMs
      const timer = setTimeout(() => {
        const seconds = Math.max(0, Math.round((deadline - Date.now()) / 1000))
        prompter.notify({
          kind: 'touch-pending',
          text: touchText(binding.token, intent, binding.registry.name, seconds),
          intent,
          tokenDescription: tokenDescription(binding.token),
          deadline,
        })
      }, input.touchNoticeAfterMs)
      try {
        return await signer.sign(message)
      } finally {
        clearTimeout(timer)
      }
    },
  }
}

export async function signIntent(input: SignInput): Promise<Signed> {
  const { intent, binding } = input
  const now = input.now ?? new Date()
  const options: { indexUrl: string; operation: Intent['operation']; name?: string; vers?: string; cksum?: string; subject?: string } = {
    indexUrl: intent.indexUrl,
    operation: intent.operation,
  }
  if (intent.name !== undefined) options.name = intent.name
  if (intent.vers !== undefined) options.vers = intent.vers
  if (intent.cksum !== undefined) options.cksum = intent.cksum
  if (binding.registry.subject !== undefined) options.subject = binding.registry.subject
  const built = await buildToken(withTouchNotice(input), options, now)
  return { token: built.token, iatSeconds: Math.floor(now.getTime() / 1000), kip: built.kip }
}
