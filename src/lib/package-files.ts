import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { AgentError } from './errors.js'

/**
 * Finds a data file shipped at the package root (`native-config/…`, `softhsm/…`). The compiled code
 * runs from `dist/src/<dir>/`, the sources from `src/<dir>/`, so walk up instead of hard-coding a depth.
 */
export function packageFile(
  relative: string,
  remedy = 'Reinstall cargo-pkcs11-agent (the package ships native-config/ and softhsm/ beside dist/)',
): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5; i += 1) {
    const candidate = join(dir, relative)
    if (existsSync(candidate)) return candidate
    dir = dirname(dir)
  }
  throw new AgentError('INTERNAL', `${relative} is missing from the installation`, { remedy })
}

/** The package root directory (where package.json sits). */
export function packageRoot(): string {
  return dirname(packageFile('package.json'))
}

/** The `version` field of the installed package.json (`--version`, the man page). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(packageFile('package.json'), 'utf8')) as { version?: string }
  return pkg.version ?? 'unknown'
}

/** Known module names → candidate paths per `${platform}-${arch}` (native-config/modules.json). */
export type ModuleTable = Readonly<Record<string, Readonly<Record<string, readonly string[]>>>>

let cached: { modules: ModuleTable; environment: Readonly<Record<string, readonly string[]>> } | undefined

function modulesFile(): NonNullable<typeof cached> {
  if (cached === undefined) {
    const raw = JSON.parse(
      readFileSync(
        packageFile(
          'native-config/modules.json',
          'Reinstall cargo-pkcs11-agent, or configure the module by absolute path',
        ),
        'utf8',
      ),
    ) as Record<string, unknown>
    const modules: Record<string, Record<string, string[]>> = {}
    for (const [name, value] of Object.entries(raw)) {
      if (name.startsWith('$') || typeof value !== 'object' || value === null) continue
      modules[name] = value as Record<string, string[]>
    }
    const environment = (raw['$environment'] ?? {}) as Record<string, string[]>
    cached = { modules: Object.freeze(modules), environment: Object.freeze(environment) }
  }
  return cached
}

export const knownModules = (): ModuleTable => modulesFile().modules

/** Known module name → the variables it reads at C_Initialize to find its tokens (`$environment`). */
export const moduleEnvironment = (): Readonly<Record<string, readonly string[]>> => modulesFile().environment
