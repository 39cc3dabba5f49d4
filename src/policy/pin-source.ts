/**
 * Reads a PIN from where the token's config says it comes from: the one reader for the agent's login
 * (src/policy/login.ts) and the CLI's device commands (src/cli/device-target.ts). What differs between
 * the two is handed in as `PinSources`: the terminal asker (the shim's over the agent socket, or the
 * CLI's own /dev/tty), the pinentry settings, and who asks (for the remedies, src/policy/pin-errors.ts).
 * Policy itself opens no terminal and reads no file.
 */
import { LIMITS } from '../lib/limits.js'
import { Pin } from '../lib/secret.js'
import type { PinSource } from './config.js'
import type { Notice, PinPrompt } from './intent.js'
import {
  configuredPinTooLong,
  pinRequired,
  pinVariableUnset,
  triesWarning,
  typedPinUnusable,
  type PinAsker,
} from './pin-errors.js'
import { pinentryGetPin, type PinentryOptions } from './pinentry.js'

/** Sources a human answers: when such a cached PIN ends it is asked again (env and file are read again). */
export function isInteractiveSource(source: PinSource): boolean {
  return source.kind === 'pinentry' || source.kind === 'tty'
}

/** Why nobody may be asked on a channel ("the agent runs headless"): PIN_REQUIRED, no prompt. */
export interface Unavailable {
  readonly unavailable: string
}

export interface PinSources {
  readonly asker: PinAsker
  /** For `pin-env` lookups. */
  readonly env: NodeJS.ProcessEnv
  /** Reads a `pin-file`, refusing group/world-readable files: `readPinFile` (src/lib/pin-file.ts). */
  readonly readPinFile: (path: string) => Promise<Pin>
  /** Asks on the requester's terminal, without echo. */
  readonly terminal: ((prompt: PinPrompt) => Promise<Pin>) | Unavailable
  /** pinentry with the default program; a `pinentry` source may name its own. */
  readonly pinentry: PinentryOptions | Unavailable
  /** Tells the requester that a PIN dialog is open elsewhere; never throws. */
  readonly notify: (notice: Notice) => void
}

/** The PIN from `source`, for the login `prompt` describes. Throws PIN_REQUIRED when nobody can give it. */
export async function readPin(
  source: Exclude<PinSource, { kind: 'none' }>,
  prompt: PinPrompt,
  from: PinSources,
): Promise<Pin> {
  const token = prompt.tokenDescription
  switch (source.kind) {
    case 'env': {
      const value = from.env[source.variable]
      if (value === undefined || value === '') throw pinVariableUnset(token, source.variable, from.asker)
      const bytes = Buffer.from(value, 'utf8')
      if (bytes.length > LIMITS.pinMaxBytes) {
        bytes.fill(0)
        throw configuredPinTooLong()
      }
      return new Pin(bytes)
    }
    case 'file':
      return await from.readPinFile(source.path)
    case 'tty': {
      if ('unavailable' in from.terminal) throw pinRequired(token, from.terminal.unavailable, from.asker)
      const pin = await from.terminal(prompt)
      if (pin.length === 0 || pin.length > LIMITS.pinMaxBytes) {
        const length = pin.length
        pin.wipe()
        throw typedPinUnusable(length)
      }
      return pin
    }
    case 'pinentry': {
      if ('unavailable' in from.pinentry) throw pinRequired(token, from.pinentry.unavailable, from.asker)
      from.notify({
        kind: 'waiting-for-pin',
        via: 'pinentry',
        tokenDescription: token,
        text: `Waiting for the PIN of ${token} in pinentry, to ${prompt.reason}`,
      })
      const warning = triesWarning(prompt.triesLeft)
      return await pinentryGetPin(
        source.program === undefined ? from.pinentry : { ...from.pinentry, program: source.program },
        {
          title: 'cargo-pkcs11-agent',
          description: `Enter the PIN of ${token}\n\nto ${prompt.reason}`,
          prompt: 'PIN:',
          ...(warning === undefined ? {} : { warning }),
        },
      )
    }
  }
}
