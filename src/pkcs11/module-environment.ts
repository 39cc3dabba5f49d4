/**
 * The variables a module reads at C_Initialize to find its tokens (native-config/modules.json,
 * `$environment`): SoftHSM's SOFTHSM2_CONF, tpm2-pkcs11's TCTI and store. `setup` saves them in the
 * token's module-env (docs/setup.md §6); a token-absent remedy names them.
 */
import { basename } from 'node:path'

import { knownModules, moduleEnvironment } from '../lib/package-files.js'

/** The module names `module = "…"` and `--module` take. */
export const knownModuleNames = (): string[] => Object.keys(knownModules())

/** For a known module name, or a path with the file name of one of that name's candidates. */
export function moduleEnvironmentNames(nameOrPath: string): readonly string[] {
  const file = basename(nameOrPath)
  const known = Object.entries(knownModules()).find(
    ([name, paths]) =>
      name === nameOrPath || Object.values(paths).some((list) => list.some((p) => basename(p) === file)),
  )
  return known === undefined ? [] : (moduleEnvironment()[known[0]] ?? [])
}

/** The end of a token-absent remedy for a module that finds its tokens through its environment. */
export function moduleEnvironmentHint(nameOrPath: string): string {
  const names = moduleEnvironmentNames(nameOrPath)
  return names.length === 0
    ? ''
    : `; a token that exists but is not found: set the ${names.join(' and ')} it was made with in the token's module-env (docs/configuration.md)`
}
