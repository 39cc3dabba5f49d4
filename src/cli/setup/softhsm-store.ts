/**
 * The private SoftHSM store `setup` makes when no hardware token is configured
 * (docs/setup.md §4): keys in software, for trying things out and for CI. The token is
 * initialised through PKCS#11 (src/pkcs11/token-init.ts), so SoftHSM itself is the only thing to
 * install. A run that fails part-way removes what it created, so the next run starts clean.
 */
import { randomInt } from 'node:crypto'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'

import { dataDir } from '../../config/paths.js'
import { AgentError, toAgentError } from '../../lib/errors.js'
import { readPinFile } from '../../lib/pin-file.js'
import { Pin } from '../../lib/secret.js'
import { applyModuleEnvironment, resolveModulePath } from '../../pkcs11/modules.js'
import { initializeToken, tokenState } from '../../pkcs11/token-init.js'

export interface DefaultSoftHsm {
  confPath: string
  pinFile: string
  label: string
}

/** Where SoftHSM comes from, for the message when it is missing. */
const SOFTHSM_PACKAGES = 'Debian/Ubuntu: `sudo apt install softhsm2`; Homebrew: `brew install softhsm`'

/** The SoftHSM module, or an error that names the package to install. */
function softHsmModule(): string {
  try {
    return resolveModulePath('softhsm')
  } catch (error) {
    const cause = toAgentError(error)
    throw new AgentError(
      'MODULE_LOAD_FAILED',
      `SoftHSM is not installed; setup uses it for a software token when no hardware token is configured (${cause.message})`,
      {
        cause,
        remedy: `Install SoftHSM (${SOFTHSM_PACKAGES}) and run setup again, or describe a hardware token with --module`,
      },
    )
  }
}

/** Files and directories this run created, removed again (newest first) if the run fails. */
class Created {
  readonly #paths: string[] = []

  dir(path: string): void {
    if (existsSync(path)) return
    this.dir(dirname(path))
    mkdirSync(path, { mode: 0o700 })
    this.#paths.push(path)
  }

  /** A file only its owner can read (the PINs), in a directory made by `dir`. */
  file(path: string, text: string): void {
    writeFileSync(path, text, { mode: 0o600 })
    this.#paths.push(path)
  }

  /** Best effort; returns what could not be removed. */
  undo(): string[] {
    const left: string[] = []
    for (const path of this.#paths.reverse()) {
      try {
        rmSync(path, { recursive: true, force: true })
      } catch {
        left.push(path)
      }
    }
    return left
  }
}

function randomDigits(n: number): string {
  return Array.from({ length: n }, () => String(randomInt(10))).join('')
}

/** Runs `fn` with the two PINs, wiping them after. */
async function withPins<T>(soPinFile: string, pinFile: string, fn: (so: Pin, pin: Pin) => T): Promise<T> {
  const soPin = await readPinFile(soPinFile)
  try {
    const pin = await readPinFile(pinFile)
    try {
      return fn(soPin, pin)
    } finally {
      pin.wipe()
    }
  } finally {
    soPin.wipe()
  }
}

/**
 * A private SoftHSM store under $XDG_DATA_HOME with one token, its PINs random and kept in 0600
 * files (the SO PIN too, for resetting the user PIN). A store made by an earlier run is reused; one
 * an older setup left without its token gets the token now.
 */
export async function ensureDefaultSoftHsm(log: (line: string) => void): Promise<DefaultSoftHsm> {
  const base = join(dataDir(), 'softhsm')
  const confPath = join(base, 'softhsm2.conf')
  const pinFile = join(base, 'user.pin')
  const soPinFile = join(base, 'so.pin')
  const tokens = join(base, 'tokens')
  const label = 'cargo-pkcs11-agent'
  const store = { confPath, pinFile, label }
  const module = softHsmModule()

  const present = [confPath, pinFile, soPinFile].filter((path) => existsSync(path))
  if (present.length === 3) {
    applyModuleEnvironment({ SOFTHSM2_CONF: confPath })
    if (tokenState(module, label) !== 'ready') {
      await withPins(soPinFile, pinFile, (so, pin) => initializeToken(module, label, so, pin))
      log(`set up the missing SoftHSM token '${label}' in ${base}`)
    }
    return store
  }
  if (present.length > 0) {
    throw new AgentError(
      'CONFIG_INVALID',
      `The SoftHSM store ${base} is incomplete: it has only ${present.join(', ')}`,
      {
        remedy: `Move ${base} aside (it was not made by a complete setup run) and run setup again`,
        data: { store: base },
      },
    )
  }

  const created = new Created()
  const pin = Pin.fromString(randomDigits(8))
  const soPin = Pin.fromString(randomDigits(16))
  try {
    created.dir(tokens)
    created.file(
      confPath,
      `# Private SoftHSM store created by cargo-pkcs11-agent setup.\ndirectories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
    )
    created.file(pinFile, `${pin.expose().toString('utf8')}\n`)
    created.file(soPinFile, `${soPin.expose().toString('utf8')}\n`)
    applyModuleEnvironment({ SOFTHSM2_CONF: confPath })
    initializeToken(module, label, soPin, pin)
  } catch (error) {
    const cause = toAgentError(error, 'DEVICE_ERROR')
    const left = created.undo()
    const cleaned =
      left.length === 0
        ? 'what this run had created there was removed'
        : `remove ${left.join(', ')} by hand (setup could not)`
    throw new AgentError(
      cause.code,
      `Creating the SoftHSM token in ${base} failed: ${cause.message}; ${cleaned}`,
      {
        cause,
        remedy: `Check that ${dataDir()} is writable and has free space, then run setup again (\`cargo-pkcs11-agent doctor\` checks the SoftHSM module)`,
        data: { store: base },
      },
    )
  } finally {
    pin.wipe()
    soPin.wipe()
  }
  log(`created a SoftHSM token '${label}' in ${base} (PIN in ${pinFile}, mode 0600)`)
  return store
}
