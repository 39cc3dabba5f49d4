/**
 * `cargo-pkcs11-agent keygen [target] --label K [--id HEX] [--force] [--json]`: a P-384 key pair
 * generated ON the device (private, sensitive, never extractable, sign only); prints the
 * `k3.public` to register. An existing key with that label or id is kept unless `--force`
 * (destroying a registered key locks its owner out of the registry until the new key is registered).
 */
import { k3Public } from '../keys/paserk.js'
import { Device } from '../pkcs11/device.js'
import { USAGE, usageError } from './args.js'
import { keyJson, loginForCommand, parseTargetCommand } from './device-target.js'

export async function keygen(argv: readonly string[]): Promise<number> {
  const { target, values } = parseTargetCommand(
    argv,
    {
      label: { type: 'string' },
      id: { type: 'string' },
      force: { type: 'boolean' },
      json: { type: 'boolean' },
    },
    USAGE.keygen,
  )
  const label = typeof values['label'] === 'string' ? values['label'] : undefined
  const id = typeof values['id'] === 'string' ? values['id'] : undefined
  if (label === undefined) throw usageError('keygen needs --label', USAGE.keygen)
  const device = new Device(target.selector)
  try {
    if (await device.needsLogin()) await loginForCommand(device, target, `generate the key '${label}' on it`)
    const key = await device.generateKey(id === undefined ? { label } : { label, id }, {
      force: values['force'] === true,
    })
    const k3 = k3Public(key.publicKey)
    if (values['json'] === true) {
      process.stdout.write(`${keyJson(device, key)}\n`)
    } else {
      process.stdout.write(
        `generated P-384 key '${key.label}' (id ${key.id}) on ${device.describe()}; it cannot leave the device.\n` +
          `public key (register it with your registry):\n${k3}\n`,
      )
    }
    return 0
  } finally {
    await device.release()
  }
}
