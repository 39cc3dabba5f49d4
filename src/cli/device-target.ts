/**
 * Which token a device command (`keygen`, `list`, `pubkey`) works on, and where its PIN comes from.
 * These commands open the device directly (not through the agent): they must work before an agent
 * or a config exists (`setup`, CI provisioning). A token comes either from the config
 * (`--token NAME`, or the only configured token) or from flags (`--module M --token-label L`).
 */
import { loadConfig } from '../config/load.js'
import { resolveConfigPath } from '../config/paths.js'
import type { TokenConfig } from '../config/schema.js'
import { AgentError } from '../lib/errors.js'
import { readPinFile } from '../lib/pin-file.js'
import { Pin } from '../lib/secret.js'
import { applyModuleEnvironment } from '../pkcs11/modules.js'
import { tokenSelector, type TokenSelector } from '../pkcs11/selector.js'
import { askPinOnTty, hasTerminal } from '../shim/tty.js'
import { parseCommandArgs, usageError, type OptionSpecs } from './args.js'

const TARGET_OPTIONS = {
  config: { type: 'string' },
  token: { type: 'string' },
  module: { type: 'string' },
  'token-label': { type: 'string' },
  serial: { type: 'string' },
  'pin-env': { type: 'string' },
  'pin-file': { type: 'string' },
} as const

export interface Target {
  selector: TokenSelector
  /** Config token name, or the selector text when given by flags. */
  name: string
  pinEnv: string | undefined
  pinFile: string | undefined
}

export interface ParsedCommand {
  target: Target
  values: Record<string, string | boolean | undefined>
}

export function parseTargetCommand(
  argv: readonly string[],
  extra: OptionSpecs,
  usageText: string,
  options: { anyToken?: boolean } = {},
): ParsedCommand {
  const values = parseCommandArgs(argv, { ...TARGET_OPTIONS, ...extra }, usageText).values as Record<
    string,
    string | boolean | undefined
  >
  const str = (key: string): string | undefined =>
    typeof values[key] === 'string' ? (values[key] as string) : undefined
  const module = str('module')
  if (module !== undefined) {
    if (str('token') !== undefined) throw usageError('--token and --module exclude each other', usageText)
    const selector: TokenSelector = { module }
    const label = str('token-label')
    const serial = str('serial')
    if (label !== undefined) selector.label = label
    if (serial !== undefined) selector.serial = serial
    if (label === undefined && serial === undefined && options.anyToken !== true)
      throw usageError('--module needs --token-label or --serial (slot ids are not stable)', usageText)
    return {
      target: {
        selector,
        name: label ?? (serial === undefined ? '*' : `serial ${serial}`),
        pinEnv: str('pin-env'),
        pinFile: str('pin-file'),
      },
      values,
    }
  }
  const config = loadConfig(resolveConfigPath(str('config')).path)
  const names = Object.keys(config.tokens)
  const wanted = str('token') ?? (names.length === 1 ? names[0] : undefined)
  if (wanted === undefined) {
    throw usageError(
      names.length === 0
        ? 'the config names no token'
        : `several tokens are configured (${names.join(', ')}): choose one with --token`,
      usageText,
    )
  }
  const token: TokenConfig | undefined = config.tokens[wanted]
  if (token === undefined) {
    throw new AgentError('CONFIG_INVALID', `no token named '${wanted}' in ${config.path ?? 'the config'}`, {
      remedy: `Configured tokens: ${names.join(', ') || 'none'}`,
    })
  }
  applyModuleEnvironment(token.moduleEnv)
  return {
    target: {
      selector: tokenSelector(token),
      name: token.name,
      pinEnv: str('pin-env') ?? (token.pinSource === 'env' ? token.pinEnv : undefined),
      pinFile: str('pin-file') ?? (token.pinSource === 'file' ? token.pinFile : undefined),
    },
    values,
  }
}

/** The PIN for a direct device command: flag/config env var, PIN file, else the terminal. */
export async function obtainPin(target: Target, what: string): Promise<Pin> {
  if (target.pinEnv !== undefined) {
    const value = process.env[target.pinEnv]
    if (value === undefined || value === '') {
      throw new AgentError('PIN_REQUIRED', `the PIN variable ${target.pinEnv} is not set`, {
        remedy: `Export ${target.pinEnv} with the token PIN`,
      })
    }
    return Pin.fromString(value)
  }
  if (target.pinFile !== undefined) return await readPinFile(target.pinFile)
  if (!hasTerminal()) {
    throw new AgentError('PIN_REQUIRED', `${what} needs the PIN and there is no terminal to ask on`, {
      remedy: 'Pass --pin-env VAR or --pin-file FILE',
    })
  }
  const text = await askPinOnTty(`PIN for ${what}: `)
  return Pin.fromString(text)
}
