import { existsSync } from 'node:fs'
import { isAbsolute } from 'node:path'
import { AgentError } from '../lib/errors.js'
import { knownModules } from '../lib/package-files.js'

export function platformKey(): string {
  return `${process.platform}-${process.arch}`
}

/**
 * A path is returned as is (existence is checked when loading, with its own error); a known name
 * ("softhsm", "ykcs11", "opensc", "tpm2", "p11-kit") becomes the first existing path for this
 * platform. Unknown names and names with no installed candidate fail with the list to choose from.
 */
export function resolveModulePath(nameOrPath: string): string {
  if (isAbsolute(nameOrPath) || nameOrPath.includes('/') || nameOrPath.includes('\\')) return nameOrPath
  const table = knownModules()
  const entry = table[nameOrPath]
  if (entry === undefined) {
    throw new AgentError('CONFIG_INVALID', `unknown PKCS#11 module name '${nameOrPath}'`, {
      remedy: `Use one of ${Object.keys(table).join(', ')} or an absolute path to the module`,
      data: { module: nameOrPath },
    })
  }
  const candidates = entry[platformKey()] ?? []
  const found = candidates.find((p) => existsSync(p))
  if (found === undefined) {
    throw new AgentError(
      'MODULE_LOAD_FAILED',
      `PKCS#11 module '${nameOrPath}' is not installed here (${platformKey()})`,
      {
        remedy:
          candidates.length > 0
            ? `Install it (looked in ${candidates.join(', ')}) or configure its absolute path`
            : 'Configure the module by absolute path',
        data: { module: nameOrPath, platform: platformKey() },
      },
    )
  }
  return found
}

/**
 * Sets a token's `module-env` (SOFTHSM2_CONF, TPM2_PKCS11_TCTI, ...). Modules read their environment
 * at C_Initialize and Node's process.env setter calls setenv(3), so this must run before the first
 * Device call for that module in this process.
 */
export function applyModuleEnvironment(variables: Readonly<Record<string, string>>): void {
  for (const [name, value] of Object.entries(variables)) process.env[name] = value
}
