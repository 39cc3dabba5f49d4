/**
 * Which token a device command (`keygen`, `list`, `pubkey`) works on, and where its PIN comes from.
 * These commands open the device directly (not through the agent): they must work before an agent
 * or a config exists (`setup`, CI provisioning). A token comes either from the config
 * (`--token NAME`, or the only configured token) or from flags (`--module M --token-label L`).
 */
import { pinEnvVariables, pinSource } from '../agent/policy-config.js'
import { loadConfig } from '../config/load.js'
import { resolveConfigPath } from '../config/paths.js'
import type { Config, TokenConfig } from '../config/schema.js'
import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { readPinFile } from '../lib/pin-file.js'
import { Pin } from '../lib/secret.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import { applyModuleEnvironment } from '../pkcs11/modules.js'
import { tokenSelector, type TokenSelector } from '../pkcs11/selector.js'
import type { Device } from '../pkcs11/device.js'
import type { DeviceKey } from '../pkcs11/key-catalogue.js'
import type { PinSource } from '../policy/config.js'
import { pinLocked, wrongPin, type PolicyDeviceStatus } from '../policy/pin-errors.js'
import { readPin } from '../policy/pin-source.js'
import { childEnvironment } from '../policy/pinentry.js'
import { hasTerminal } from '../shim/context.js'
import { askPinOnTty } from '../shim/tty.js'
import { parseCommandArgs, TARGET_USAGE, usageError, usageOptionSpecs, type OptionSpecs } from './args.js'

export interface Target {
  selector: TokenSelector
  /** Config token name, or the selector text when given by flags. */
  name: string
  /** `--pin-env` / `--pin-file`, else the configured token's `pin-source`, else the terminal. */
  pin: PinSource
  /** Every `pin-env` variable in play: kept out of pinentry's environment. */
  secretEnvVariables: string[]
}

/**
 * The configured token `--token` names, else the only one; undefined when the config has none.
 * Several tokens and no `--token`, or a name the config does not have, is an error.
 */
export function configuredToken(
  config: Config,
  name: string | undefined,
  usage: string,
  otherwise = '',
): TokenConfig | undefined {
  const names = Object.keys(config.tokens)
  const wanted = name ?? (names.length === 1 ? names[0] : undefined)
  if (wanted === undefined && names.length > 1)
    throw usageError(`several tokens are configured (${names.join(', ')}): choose one with --token`, usage)
  const token = wanted === undefined ? undefined : config.tokens[wanted]
  if (wanted !== undefined && token === undefined)
    throw new AgentError('CONFIG_INVALID', `No token named '${wanted}' in ${config.path ?? 'the config'}`, {
      remedy: `Configured tokens: ${names.join(', ') || 'none'}${otherwise}`,
    })
  return token
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
  const { values } = parseCommandArgs(argv, { ...usageOptionSpecs(TARGET_USAGE), ...extra }, usageText)
  const str = (key: string): string | undefined =>
    typeof values[key] === 'string' ? (values[key] as string) : undefined
  const pinEnv = str('pin-env')
  const pinFile = str('pin-file')
  const pinFromFlags = (otherwise: PinSource): PinSource =>
    pinEnv !== undefined
      ? { kind: 'env', variable: pinEnv }
      : pinFile !== undefined
        ? { kind: 'file', path: pinFile }
        : otherwise
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
        pin: pinFromFlags({ kind: 'tty' }),
        secretEnvVariables: pinEnv === undefined ? [] : [pinEnv],
      },
      values,
    }
  }
  const config = loadConfig(resolveConfigPath(str('config')).path)
  const token = configuredToken(config, str('token'), usageText)
  if (token === undefined) throw usageError('the config names no token', usageText)
  applyModuleEnvironment(token.moduleEnv)
  return {
    target: {
      selector: tokenSelector(token),
      name: token.name,
      pin: pinFromFlags(pinSource(token)),
      secretEnvVariables: [...pinEnvVariables(config), ...(pinEnv === undefined ? [] : [pinEnv])],
    },
    values,
  }
}

/**
 * Logs a device command in with the target's PIN, exactly one C_Login. A refusal reads as the
 * agent's does (src/policy/pin-errors.ts): tries left from the device's report or the token flags.
 */
export async function loginForCommand(
  device: Device,
  target: Pick<Target, 'pin' | 'secretEnvVariables'>,
  reason: string,
): Promise<void> {
  const pin = await obtainPin(target, device.describe(), reason)
  try {
    await device.login(pin)
  } catch (error) {
    const failure = toAgentError(error)
    if (failure.code === 'PIN_LOCKED') throw pinLocked(device.describe(), { cause: failure })
    if (failure.code !== 'PIN_INCORRECT') throw failure
    let after: PolicyDeviceStatus | undefined
    try {
      after = await device.status()
    } catch {
      // The flags are a courtesy; the refusal stands without them.
    }
    throw wrongPin({ description: device.describe(), pin: target.pin }, failure, after, 'command')
  } finally {
    pin?.wipe()
  }
}

/**
 * The PIN for a direct device command, through the agent's own reader (src/policy/pin-source.ts),
 * asking on this process's terminal or in pinentry; `null`: the token has a PIN pad.
 */
export async function obtainPin(
  target: Pick<Target, 'pin' | 'secretEnvVariables'>,
  tokenDescription: string,
  reason: string,
): Promise<Pin | null> {
  const source = target.pin
  if (source.kind === 'none') return null
  const terminal = hasTerminal()
  return await readPin(
    source,
    { tokenDescription, reason },
    {
      asker: 'command',
      env: process.env,
      readPinFile,
      terminal: terminal
        ? async (p) => Pin.fromString(await askPinOnTty(`PIN for ${p.tokenDescription}: `))
        : { unavailable: 'there is no terminal' },
      pinentry: {
        program: LIMITS.defaultPinentryProgram,
        timeoutMs: LIMITS.pinentryTimeoutMs,
        env: childEnvironment(process.env, target.secretEnvVariables),
        // The child shares this controlling terminal, where a curses pinentry then asks.
        ttyname: terminal ? '/dev/tty' : undefined,
      },
      notify: (notice) => void process.stderr.write(`${notice.text}\n`),
    },
  )
}

/** A device key as `keygen --json` and `pubkey --json` print it. */
export function keyJson(device: Device, key: DeviceKey): string {
  const view = { token: device.describe(), label: key.label, id: key.id }
  return JSON.stringify({ ...view, k3Public: k3Public(key.publicKey), k3Pid: k3Pid(key.publicKey) }, null, 2)
}
