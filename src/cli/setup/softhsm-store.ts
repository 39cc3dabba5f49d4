/**
 * The private SoftHSM store `setup` makes when no hardware token is configured
 * (docs/configuration.md): keys in software, for trying things out and for CI.
 */
import { execFile } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { dataDir } from '../../config/paths.js'
import { AgentError } from '../../lib/errors.js'
import { resolveModulePath } from '../../pkcs11/modules.js'
import { writePrivate } from './tables.js'

const run = promisify(execFile)

export interface DefaultSoftHsm {
  confPath: string
  pinFile: string
  label: string
}

/** A private SoftHSM store under $XDG_DATA_HOME, made once with a random PIN kept in a 0600 file. */
export async function ensureDefaultSoftHsm(log: (line: string) => void): Promise<DefaultSoftHsm> {
  const base = join(dataDir(), 'softhsm')
  const confPath = join(base, 'softhsm2.conf')
  const pinFile = join(base, 'user.pin')
  const label = 'cargo-pkcs11-agent'
  if (existsSync(confPath) && existsSync(pinFile)) return { confPath, pinFile, label }
  const tokens = join(base, 'tokens')
  mkdirSync(tokens, { recursive: true, mode: 0o700 })
  writePrivate(
    confPath,
    `# Private SoftHSM store created by cargo-pkcs11-agent setup.\ndirectories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
  )
  const digits = (n: number): string => Array.from({ length: n }, () => String(randomInt(10))).join('')
  const pin = digits(8)
  const soPin = digits(16)
  writePrivate(pinFile, `${pin}\n`)
  writePrivate(join(base, 'so.pin'), `${soPin}\n`)
  const module = resolveModulePath('softhsm')
  // PINs reach pkcs11-tool as env:VAR, never in argv.
  const env = { ...process.env, SOFTHSM2_CONF: confPath, SETUP_SO_PIN: soPin, SETUP_PIN: pin }
  try {
    await run(
      'pkcs11-tool',
      ['--module', module, '--init-token', '--label', label, '--so-pin', 'env:SETUP_SO_PIN'],
      { env },
    )
    await run(
      'pkcs11-tool',
      [
        '--module',
        module,
        '--token-label',
        label,
        '--login',
        '--login-type',
        'so',
        '--so-pin',
        'env:SETUP_SO_PIN',
        '--init-pin',
        '--pin',
        'env:SETUP_PIN',
      ],
      { env },
    )
  } catch (error) {
    throw new AgentError(
      'DEVICE_ERROR',
      `Creating the SoftHSM token in ${base} failed: ${(error as { stderr?: string }).stderr ?? String(error)}`,
      {
        cause: error,
        remedy:
          'Install softhsm2 and opensc (scripts/setup.sh), remove the half-made store, and run setup again',
      },
    )
  }
  log(`created a SoftHSM token '${label}' in ${base} (PIN in ${pinFile}, mode 0600)`)
  return { confPath, pinFile, label }
}
