/**
 * Getting a token logged in: cached PIN, else the token's configured source. A wrong PIN is never
 * retried (design point 3): it is wiped from the cache and the error goes back to the human.
 */
import { readFileSync, statSync } from 'node:fs'

import type { TokenConfig } from '../../config/schema.js'
import { AgentError } from '../../lib/errors.js'
import { LIMITS } from '../../lib/limits.js'
import { Pin } from '../../lib/secret.js'
import type { PinPrompt, Prompter } from '../../policy/intent.js'
import type { PinCache } from '../../policy/pin-cache.js'
import { childEnvironment, pinentryGetPin } from '../../policy/pinentry.js'

export interface LoginTarget {
  needsLogin(): boolean | Promise<boolean>
  login(pin: Pin | null): unknown
}

export interface PinContext {
  readonly token: TokenConfig
  readonly prompter: Prompter
  readonly pinCache: PinCache
  readonly headless: boolean
  readonly reason: string
  /** Every pin-env variable of the config, stripped from pinentry's environment. */
  readonly secretVariables: readonly string[]
  readonly env?: NodeJS.ProcessEnv
}

export function tokenDescription(token: TokenConfig): string {
  const kind = token.kind === 'yubikey' ? 'YubiKey' : token.kind === 'tpm' ? 'TPM' : token.kind === 'softhsm' ? 'SoftHSM token' : token.kind === 'hsm' ? 'HSM' : 'token'
  return `${kind} "${token.name}"${token.label === undefined ? '' : ` (label ${token.label})`}${token.serial === undefined ? '' : ` (serial ${token.serial})`}`
}

function required(token: TokenConfig, why: string): AgentError {
  return new AgentError('PIN_REQUIRED', `The PIN for ${tokenDescription(token)} is needed: ${why}`, {
    remedy: 'For unattended use set pin-source = "env" (with pin-env) or "file" (with pin-file) for this token; otherwise run cargo from a terminal',
    data: { token: token.name },
  })
}

function pinFromFile(token: TokenConfig, path: string): Pin {
  let stat
  try {
    stat = statSync(path)
  } catch (error) {
    throw new AgentError('PIN_REQUIRED', `The PIN file ${path} for token "${token.name}" cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`, {
      remedy: 'Create it (mode 0600) or fix pin-file in the config',
    })
  }
  if ((stat.mode & 0o077) !== 0) {
    throw new AgentError('POLICY_DENIED', `The PIN file ${path} is readable by other users (mode ${(stat.mode & 0o777).toString(8)})`, {
      remedy: `chmod 600 ${path}`,
    })
  }
  if (stat.size > LIMITS.pinFileMaxBytes) {
    throw new AgentError('PIN_INVALID', `${path} is ${stat.size} bytes, too large for a PIN file`, { remedy: 'Point pin-file at a file that holds only the PIN' })
  }
  const bytes = readFileSync(path)
  let end = bytes.length
  while (end > 0 && (bytes[end - 1] === 0x0a || bytes[end - 1] === 0x0d)) end--
  const pin = new Pin(Buffer.from(bytes.subarray(0, end)))
  bytes.fill(0)
  return pin
}

/** Reads the PIN from the token's source. `null` = protected authentication path (PKCS#11 §5.6). */
export async function obtainPin(context: PinContext, prompt: PinPrompt): Promise<Pin | null> {
  const { token } = context
  const env = context.env ?? process.env
  switch (token.pinSource) {
    case 'none':
      return null
    case 'env': {
      const value = env[token.pinEnv ?? '']
      if (value === undefined || value === '') throw required(token, `the variable ${token.pinEnv ?? '(pin-env)'} is not set in the agent's environment`)
      return Pin.fromString(value)
    }
    case 'file':
      return pinFromFile(token, token.pinFile ?? '')
    case 'tty':
      if (context.headless) throw required(token, 'the agent runs headless and never prompts')
      if (!context.prompter.interactive) throw required(token, 'cargo runs without a terminal to ask on')
      context.prompter.notify({ kind: 'waiting-for-pin', text: `Enter the PIN for ${prompt.tokenDescription} (${prompt.reason})`, tokenDescription: prompt.tokenDescription, via: 'terminal' })
      return await context.prompter.askPin(prompt)
    case 'pinentry': {
      if (context.headless) throw required(token, 'the agent runs headless and never prompts')
      context.prompter.notify({ kind: 'waiting-for-pin', text: `Enter the PIN for ${prompt.tokenDescription} in the pinentry window`, tokenDescription: prompt.tokenDescription, via: 'pinentry' })
      const options: { program: string; timeoutMs: number; env: NodeJS.ProcessEnv } = {
        program: token.pinentryProgram ?? 'pinentry',
        timeoutMs: LIMITS.pinentryTimeoutMs,
        env: childEnvironment(env, context.secretVariables),
      }
      const dialog: { title: string; description: string; prompt: string; warning?: string } = {
        title: 'cargo-pkcs11-agent',
        description: `${prompt.reason}\n\nPIN for ${prompt.tokenDescription}`,
        prompt: 'PIN:',
      }
      if (prompt.triesLeft === 'final') dialog.warning = 'Final try: a wrong PIN locks the token'
      else if (prompt.triesLeft === 'low') dialog.warning = 'Few PIN tries left'
      return await pinentryGetPin(options, dialog)
    }
  }
}

/** Logs the token in if it needs it, caching a PIN that a human typed (env/file are re-read). */
export async function ensureLoggedIn(device: LoginTarget, context: PinContext): Promise<void> {
  if (!(await device.needsLogin())) return
  const { token, pinCache } = context
  const cached = pinCache.get(token.name)
  const prompt: PinPrompt = { tokenDescription: tokenDescription(token), reason: context.reason }
  const pin = cached ?? (await obtainPin(context, prompt))
  try {
    await device.login(pin)
  } catch (error) {
    if (error instanceof AgentError && (error.code === 'PIN_INCORRECT' || error.code === 'PIN_LOCKED' || error.code === 'PIN_INVALID')) {
      if (cached !== undefined) pinCache.forget(token.name, 'wrong-pin')
      else pin?.wipe()
    }
    throw error
  }
  if (cached === undefined && pin !== null) {
    if (token.pinSource === 'tty' || token.pinSource === 'pinentry') pinCache.set(token.name, pin)
    else pin.wipe()
  }
}
