/**
 * Every PIN error of the agent's login and of the CLI's device commands, built in one place so one
 * failure reads the same wherever it happens (docs/policy.md, "Wrong PIN, few tries, final try,
 * locked"). What a device reported about the tries left is the typed `AgentError.triesLeft`
 * (src/lib/errors.ts), never parsed from a message or from `data`.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { PinPrompt } from './intent.js'
import type { PinSource } from './config.js'

export const UNBLOCK_REMEDY =
  'Check and unblock the PIN with the PUK or SO PIN: `ykman piv info` / `ykman piv access unblock-pin` (YubiKey), ' +
  '`pkcs11-tool --module <module> --login --login-type so --init-pin` (HSM, SoftHSM), `tpm2_ptool` (TPM); then run the command again'

/** Who asks for the PIN: a remedy names what that one lets the user change (config keys, or flags). */
export type PinAsker = 'agent' | 'command'

/** Token flags from C_GetTokenInfo (PKCS#11 v2.40 section 3.2, CK_TOKEN_INFO.flags). */
export interface PolicyDeviceStatus {
  readonly pinCountLow?: boolean
  readonly pinFinalTry?: boolean
  readonly pinLocked?: boolean
  readonly protectedAuthPath?: boolean
}

/** What a PIN prompt warns about, from the token flags before the login. */
export function promptTries(status: PolicyDeviceStatus): PinPrompt['triesLeft'] {
  return status.pinFinalTry === true ? 'final' : status.pinCountLow === true ? 'low' : undefined
}

/** pinentry's error line (SETERROR) for a prompt at few tries or the final try. */
export function triesWarning(triesLeft: PinPrompt['triesLeft']): string | undefined {
  return triesLeft === 'final'
    ? 'FINAL TRY: a wrong PIN blocks the token'
    : triesLeft === 'low'
      ? 'Few PIN tries left: check the PIN before you press OK'
      : undefined
}

/** PIN_LOCKED; `justNow`: this request's wrong PIN was the last try. */
export function pinLocked(
  tokenDescription: string,
  details: { cause?: unknown; justNow?: boolean } = {},
): AgentError {
  return new AgentError(
    'PIN_LOCKED',
    details.justNow === true
      ? `Wrong PIN for ${tokenDescription}; the PIN is now blocked`
      : `The PIN of ${tokenDescription} is blocked (too many wrong attempts)`,
    { remedy: UNBLOCK_REMEDY, cause: details.cause },
  )
}

/**
 * The device rejected the PIN (`failure`, PIN_INCORRECT from src/pkcs11/). `after` is the token
 * status read after the failed login, when it could be read: a count from the device
 * (`failure.triesLeft`) wins over the flags.
 */
export function wrongPin(
  token: { readonly description: string; readonly pin: PinSource },
  failure: AgentError,
  after: PolicyDeviceStatus | undefined,
  asker: PinAsker = 'agent',
): AgentError {
  const reported = failure.triesLeft
  if (after?.pinLocked === true || reported === 'locked')
    return pinLocked(token.description, { cause: failure, justNow: true })
  const finalTry = after?.pinFinalTry === true || reported === 'final'
  const low = after?.pinCountLow === true || reported === 'low'
  const tries =
    typeof reported === 'number'
      ? ` (${reported} ${reported === 1 ? 'try' : 'tries'} left)`
      : finalTry
        ? ' (one try left: the next wrong PIN blocks it)'
        : low
          ? ' (few tries left)'
          : ''
  const source = token.pin
  const fix =
    source.kind === 'env'
      ? asker === 'agent'
        ? restartWithFixedVariable(source.variable)
        : `Fix the PIN in the environment variable ${source.variable}`
      : source.kind === 'file'
        ? `Fix the PIN in ${source.path}`
        : 'Run the command again and enter the correct PIN'
  return new AgentError(
    'PIN_INCORRECT',
    `Wrong PIN for ${token.description}${tries}; ${asker === 'agent' ? 'the agent does not retry a wrong PIN' : 'it was not retried'}`,
    {
      remedy: finalTry ? `${fix}. If unsure, check it first: ${UNBLOCK_REMEDY}` : fix,
      cause: failure,
      data: { finalTry, countLow: low },
      ...(typeof reported === 'number' ? { triesLeft: reported } : {}),
    },
  )
}

/**
 * The agent reads `pin-env` from the environment it was started with, which no later shell changes:
 * neither `lock` nor a reload makes it read a fixed variable, only a new agent process does.
 */
function restartWithFixedVariable(variable: string): string {
  return `Set ${variable} to the right PIN where the agent is started, then restart it: \`cargo-pkcs11-agent stop\`, and the next cargo command (or \`cargo-pkcs11-agent run\`) starts it with that environment; the agent reads ${variable} only at its start`
}

/**
 * An env/file PIN the token already rejected, refused before it costs another try. This memory is the
 * policy's (src/policy/login.ts `RejectedPins`); the device layer keeps none.
 */
export function pinAlreadyRejected(
  tokenDescription: string,
  source: Extract<PinSource, { kind: 'env' | 'file' }>,
): AgentError {
  return new AgentError(
    'PIN_INCORRECT',
    `${tokenDescription} already rejected the PIN from ${source.kind === 'env' ? `its environment variable ${source.variable}` : `its PIN file ${source.path}`}; it is not tried again, so the token's remaining tries are kept`,
    {
      remedy:
        source.kind === 'env'
          ? restartWithFixedVariable(source.variable)
          : `Fix the PIN in ${source.path}: the agent tries a changed value on the next request`,
    },
  )
}

/** At the final try the PIN is not used: `why` says which rule refused it. */
export function finalTryRefused(tokenDescription: string, why: string): AgentError {
  return new AgentError('POLICY_DENIED', `${tokenDescription} is at its final PIN try; ${why}`, {
    remedy: `A wrong PIN now blocks the token. ${UNBLOCK_REMEDY}`,
    data: { finalTry: true },
  })
}

/** Texts that name what the asker lets the user change: config keys (agent), flags (command). */
const REMEDIES: Readonly<Record<PinAsker, { unattended: string; setVariable: (name: string) => string }>> = {
  agent: {
    unattended:
      'For unattended use set pin-source = "env" with pin-env = "VAR", or pin-source = "file" with pin-file = "/path" (mode 0600), for this token in the agent config',
    setVariable: (name) => `Set ${name} for the agent (in CI: from a secret), or use pin-source = "file"`,
  },
  command: {
    unattended: 'Run the command in a terminal, or pass --pin-env VAR or --pin-file FILE',
    setVariable: (name) => `Export ${name} with the token PIN and run the command again`,
  },
}

/** A PIN only a human can give, and `why` nobody can be asked ("the agent runs headless"). */
export function pinRequired(tokenDescription: string, why: string, asker: PinAsker): AgentError {
  return new AgentError(
    'PIN_REQUIRED',
    `${tokenDescription} needs the PIN and ${why}, so nobody can be asked`,
    {
      remedy: REMEDIES[asker].unattended,
    },
  )
}

export function pinVariableUnset(tokenDescription: string, variable: string, asker: PinAsker): AgentError {
  return new AgentError(
    'PIN_REQUIRED',
    `The PIN for ${tokenDescription} should come from the environment variable ${variable}, which is not set${asker === 'agent' ? " in the agent's environment" : ''}`,
    { remedy: REMEDIES[asker].setVariable(variable) },
  )
}

/** A PIN typed on a terminal that is empty or longer than any token accepts. */
export function typedPinUnusable(length: number): AgentError {
  return new AgentError(
    'PIN_ENTRY_FAILED',
    length === 0 ? 'No PIN was entered' : `The PIN entered is longer than ${LIMITS.pinMaxBytes} bytes`,
    { remedy: 'Run the command again and enter the token PIN' },
  )
}

export function configuredPinTooLong(): AgentError {
  return new AgentError('PIN_INVALID', `The configured PIN is longer than ${LIMITS.pinMaxBytes} bytes`, {
    remedy: 'Check the PIN source',
  })
}
