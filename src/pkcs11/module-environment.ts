/**
 * The variables a module reads at C_Initialize to find its tokens (native-config/modules.json,
 * `$environment`): SoftHSM's SOFTHSM2_CONF, tpm2-pkcs11's TCTI and store. `setup` saves them in the
 * token's module-env (docs/setup.md §6); a token-absent remedy names them.
 */
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'

import { packageFile } from '../lib/package-files.js'

type Paths = Record<string, string[]>
let cached: { environment: Record<string, string[]>; modules: [name: string, paths: Paths][] } | undefined

function modulesJson(): NonNullable<typeof cached> {
  if (cached === undefined) {
    const raw = JSON.parse(readFileSync(packageFile('native-config/modules.json'), 'utf8')) as Record<
      string,
      unknown
    >
    const modules = Object.entries(raw).filter(([name]) => !name.startsWith('$')) as [string, Paths][]
    cached = { environment: (raw['$environment'] ?? {}) as Record<string, string[]>, modules }
  }
  return cached
}

/** The module names `module = "…"` and `--module` take. */
export const knownModuleNames = (): string[] => modulesJson().modules.map(([name]) => name)

/** For a known module name, or a path with the file name of one of that name's candidates. */
export function moduleEnvironmentNames(nameOrPath: string): readonly string[] {
  const { environment, modules } = modulesJson()
  const file = basename(nameOrPath)
  const known = modules.find(
    ([name, paths]) =>
      name === nameOrPath || Object.values(paths).some((list) => list.some((p) => basename(p) === file)),
  )
  return known === undefined ? [] : (environment[known[0]] ?? [])
}

/** The end of a token-absent remedy for a module that finds its tokens through its environment. */
export function moduleEnvironmentHint(nameOrPath: string): string {
  const names = moduleEnvironmentNames(nameOrPath)
  return names.length === 0
    ? ''
    : `; a token that exists but is not found: set the ${names.join(' and ')} it was made with in the token's module-env (docs/configuration.md)`
}
