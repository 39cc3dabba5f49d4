/**
 * `cargo-pkcs11-agent pubkey [target] (--label K | --id HEX) [--json | --format k3|pid|hex|json]`: the public
 * key to register with a registry (RFC 3231: the registry stores only the `k3.public` PASERK).
 * Reads CKA_EC_POINT only: no PIN unless the token hides public objects. `--json` is `--format json`,
 * the flag every data command takes. `--attest` prints the key's PIV attestation instead: the slot's
 * attestation certificate and the card's f9 certificate (PEM, attestation first; or JSON with the
 * key), read through PKCS#11 from the objects ykcs11 exposes, for `verify --attestation` and a
 * registry's key registration (src/verify/attestation.ts).
 */
import { AgentError } from '../lib/errors.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import { Device } from '../pkcs11/device.js'
import { pem, pivAttestationObjects, readAttestation } from '../verify/attestation.js'
import { oneOf, USAGE, usageError } from './args.js'
import { keyJson, parseTargetCommand } from './device-target.js'

const FORMATS = ['k3', 'pid', 'hex', 'json'] as const

export async function pubkey(argv: readonly string[]): Promise<number> {
  const { target, values } = parseTargetCommand(
    argv,
    {
      label: { type: 'string' },
      id: { type: 'string' },
      format: { type: 'string' },
      json: { type: 'boolean' },
      attest: { type: 'boolean' },
    },
    USAGE.pubkey,
  )
  const label = typeof values['label'] === 'string' ? values['label'] : undefined
  const id = typeof values['id'] === 'string' ? values['id'] : undefined
  const json = values['json'] === true
  const given = typeof values['format'] === 'string' ? values['format'] : undefined
  if (json && given !== undefined && given !== 'json')
    throw usageError(`--json and --format ${given} ask for different outputs`, USAGE.pubkey)
  if (label === undefined && id === undefined) {
    throw usageError('pubkey needs --label or --id', USAGE.pubkey)
  }
  const format = oneOf(json ? 'json' : (given ?? 'k3'), FORMATS, '--format', USAGE.pubkey)
  const device = new Device(target.selector)
  try {
    const key = await device.findKey({ label, id })
    const k3 = k3Public(key.publicKey)
    if (values['attest'] === true) {
      const objects = pivAttestationObjects(await device.certificates(), key.id)
      if (objects === undefined)
        throw new AgentError('KEY_NOT_FOUND', `${device.describe()} shows no attestation for key ${key.id}`, {
          remedy:
            'Attestation exists for keys generated on a YubiKey (not imported ones), read through ykcs11 (--module ykcs11)',
        })
      const attested = readAttestation(objects.attestation)
      const chain = pem(objects.attestation) + pem(objects.intermediate)
      process.stdout.write(
        format === 'json'
          ? `${JSON.stringify(
              {
                k3Public: k3,
                k3Pid: k3Pid(key.publicKey),
                attestation: pem(objects.attestation),
                intermediate: pem(objects.intermediate),
                serial: attested.serial,
                firmware: attested.firmware,
                pinPolicy: attested.pinPolicy,
                touchPolicy: attested.touchPolicy,
              },
              null,
              2,
            )}\n`
          : chain,
      )
      return 0
    }
    const text =
      format === 'k3'
        ? k3
        : format === 'pid'
          ? k3Pid(key.publicKey)
          : format === 'hex'
            ? Buffer.from(key.publicKey).toString('hex')
            : keyJson(device, key)
    process.stdout.write(`${text}\n`)
    return 0
  } finally {
    await device.release()
  }
}
