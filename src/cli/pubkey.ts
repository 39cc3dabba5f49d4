/**
 * `cargo-pkcs11-agent pubkey [target] (--label K | --id HEX) [--json | --format k3|pid|hex|json]`: the public
 * key to register with a registry (RFC 3231: the registry stores only the `k3.public` PASERK).
 * Reads CKA_EC_POINT only: no PIN unless the token hides public objects. `--json` is `--format json`,
 * the flag every data command takes.
 */
import { AgentError } from '../lib/errors.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import { Device } from '../pkcs11/device.js'
import { USAGE, usageError } from './args.js'
import { parseTargetCommand } from './device-target.js'

const FORMATS = ['k3', 'pid', 'hex', 'json'] as const

export async function pubkey(argv: readonly string[]): Promise<number> {
  const { target, values } = parseTargetCommand(
    argv,
    {
      label: { type: 'string' },
      id: { type: 'string' },
      format: { type: 'string' },
      json: { type: 'boolean' },
    },
    USAGE.pubkey,
  )
  const label = typeof values['label'] === 'string' ? values['label'] : undefined
  const id = typeof values['id'] === 'string' ? values['id'] : undefined
  const json = values['json'] === true
  const given = typeof values['format'] === 'string' ? values['format'] : undefined
  if (json && given !== undefined && given !== 'json')
    throw usageError(`--json and --format ${given} ask for different outputs`, USAGE.pubkey)
  const format = json ? 'json' : (given ?? 'k3')
  if (label === undefined && id === undefined) {
    throw usageError('pubkey needs --label or --id', USAGE.pubkey)
  }
  if (!(FORMATS as readonly string[]).includes(format)) {
    throw new AgentError('USAGE', `unknown --format '${format}'`, {
      remedy: `Use one of ${FORMATS.join(', ')}`,
    })
  }
  const device = new Device(target.selector)
  try {
    const key = await device.findKey({ label, id })
    const k3 = k3Public(key.publicKey)
    const text =
      format === 'k3'
        ? k3
        : format === 'pid'
          ? k3Pid(key.publicKey)
          : format === 'hex'
            ? Buffer.from(key.publicKey).toString('hex')
            : JSON.stringify(
                {
                  token: device.describe(),
                  label: key.label,
                  id: key.id,
                  k3Public: k3,
                  k3Pid: k3Pid(key.publicKey),
                },
                null,
                2,
              )
    process.stdout.write(`${text}\n`)
    return 0
  } finally {
    await device.release()
  }
}
