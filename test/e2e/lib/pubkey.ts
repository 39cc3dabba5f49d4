/**
 * Reads a key's public half straight off a SoftHSM token with OpenSC's pkcs11-tool (no login: the
 * public object is public), independently of the agent, so the registry registers what the token
 * holds and not what the agent claims. (`--read-object --type pubkey` fails for P-384 with OpenSC
 * 0.23 on OpenSSL 3, "cannot create EVP_PKEY"; `--list-objects` prints CKA_EC_POINT as hex.)
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

import { k3Public } from '../../../src/keys/paserk.js'
import { publicKeyFromDevice } from '../../../src/keys/point.js'

const run = promisify(execFile)

export async function tokenK3Public(store: {
  module: string
  env: NodeJS.ProcessEnv
  label: string
  keyLabel: string
}): Promise<string> {
  const { stdout } = await run(
    'pkcs11-tool',
    ['--module', store.module, '--token-label', store.label, '--list-objects', '--type', 'pubkey'],
    {
      env: store.env,
    },
  )
  for (const object of stdout.split(/^(?=Public Key Object)/m)) {
    const label = /^\s+label:\s+(.*)$/m.exec(object)?.[1]?.trim()
    const point = /^\s+EC_POINT:\s+([0-9a-f]+)$/m.exec(object)?.[1]
    if (label === store.keyLabel && point !== undefined)
      return k3Public(publicKeyFromDevice(Buffer.from(point, 'hex')))
  }
  throw new Error(`no public key labelled ${store.keyLabel} on token ${store.label}:\n${stdout}`)
}
