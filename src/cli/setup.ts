/**
 * `cargo-pkcs11-agent setup`: first run in one command. Finds a token (the configured one, one given
 * by flags, or a private SoftHSM store under $XDG_DATA_HOME when no hardware is configured),
 * generates or reuses a P-384 key on it, prints the k3.public / k3.pid to register, writes the agent
 * config and prints (or writes) the cargo config snippet. Anything that would replace a key or a
 * different existing setting needs --force. The steps live in src/cli/setup/.
 */
import { resolveConfigPath } from '../config/paths.js'
import type { TokenConfig } from '../config/schema.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import { AgentError } from '../lib/errors.js'
import type { Pin } from '../lib/secret.js'
import { pinSource, tokenDescription } from '../agent/policy-config.js'
import { Device } from '../pkcs11/device.js'
import type { DeviceKey } from '../pkcs11/key-catalogue.js'
import { applyModuleEnvironment } from '../pkcs11/modules.js'
import { parseCommandArgs, USAGE } from './args.js'
import { obtainPin } from './device-target.js'
import { planAgentConfig, writeAgentConfig } from './setup/agent-config.js'
import { planCargoConfig } from './setup/cargo-config.js'

async function pinFor(token: TokenConfig): Promise<Pin | null> {
  const target = {
    pin: pinSource(token),
    secretEnvVariables: token.pinEnv === undefined ? [] : [token.pinEnv],
  }
  return await obtainPin(target, tokenDescription(token), 'set up its key for cargo')
}

/** Finds the key on the device, or generates it (again, with --force); the PIN is wiped after. */
async function ensureKey(
  token: TokenConfig,
  pin: Pin | null,
  keyLabel: string,
  keyId: string | undefined,
  force: boolean,
): Promise<{ key: DeviceKey; action: string }> {
  const device = new Device(token, { cachedPin: () => pin ?? undefined })
  try {
    if (await device.needsLogin()) await device.login(pin)
    const wanted = keyId === undefined ? { label: keyLabel } : { label: keyLabel, id: keyId }
    let found: DeviceKey | undefined
    try {
      found = await device.findKey(wanted)
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== 'KEY_NOT_FOUND') throw error
    }
    if (found !== undefined && !force) return { key: found, action: 'reused' }
    const key = await device.generateKey(wanted, { force })
    return { key, action: found === undefined ? 'generated' : 'regenerated (the old key was destroyed)' }
  } finally {
    await device.release()
    pin?.wipe()
  }
}

export async function setup(argv: readonly string[]): Promise<number> {
  const values = parseCommandArgs(
    argv,
    {
      config: { type: 'string' },
      token: { type: 'string' },
      module: { type: 'string' },
      'token-label': { type: 'string' },
      serial: { type: 'string' },
      kind: { type: 'string' },
      'pin-source': { type: 'string' },
      'pin-env': { type: 'string' },
      'pin-file': { type: 'string' },
      label: { type: 'string' },
      id: { type: 'string' },
      registry: { type: 'string' },
      index: { type: 'string' },
      'write-cargo-config': { type: 'boolean' },
      force: { type: 'boolean' },
    },
    USAGE.setup,
  ).values as Record<string, string | boolean | undefined>
  const str = (key: string): string | undefined =>
    typeof values[key] === 'string' ? (values[key] as string) : undefined
  const force = values['force'] === true
  const say = (line: string): void => {
    process.stderr.write(`cargo-pkcs11-agent setup: ${line}\n`)
  }
  const configPath = resolveConfigPath(str('config')).path
  const registryName = str('registry')
  const index = str('index')
  const cargoConfig =
    registryName === undefined || index === undefined
      ? undefined
      : planCargoConfig(registryName, index, values['write-cargo-config'] === true, force)
  const { doc, tokenName, token } = await planAgentConfig(configPath, str, force, say)

  applyModuleEnvironment(token.moduleEnv)
  const pin = await pinFor(token)
  const { key, action } = await ensureKey(token, pin, str('label') ?? 'cargo', str('id'), force)
  const agentBackup = writeAgentConfig(configPath, doc)

  const out: string[] = [
    `key '${key.label}' (id ${key.id}) on token ${tokenName}: ${action}`,
    'register this public key with the registry:',
    k3Public(key.publicKey),
    k3Pid(key.publicKey),
    `agent config: ${configPath}${agentBackup === undefined ? '' : ` (the previous file is ${agentBackup})`}`,
  ]
  if (cargoConfig !== undefined) {
    out.push(
      ...cargoConfig(),
      `then: cargo login --registry ${registryName}   (shows the same key), cargo publish --registry ${registryName}`,
    )
  } else {
    out.push(
      'bind a registry with: cargo-pkcs11-agent setup --registry NAME --index "sparse+https://registry.example/index/"',
    )
  }
  process.stdout.write(out.join('\n') + '\n')
  return 0
}
