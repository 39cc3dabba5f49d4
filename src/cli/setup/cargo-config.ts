/**
 * The cargo side of `setup`: the [registries.NAME] table naming this package's shim as the
 * credential provider (docs/configuration.md, "Cargo side"), printed or written to
 * $CARGO_HOME/config.toml in place (docs/setup.md §2, §3).
 */
import {
  accessSync,
  constants as fsConstants,
  existsSync,
  readFileSync,
  realpathSync,
  statSync,
} from 'node:fs'
import { homedir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { stringify } from 'smol-toml'

import { packageRoot } from '../../lib/package-files.js'
import { place, readToml, saveToml, tableAt } from './tables.js'

const SHIM_NAME = 'cargo-credential-pkcs11'

/** The shim as this package installs it (package.json `bin`). */
export function installedShimPath(): string {
  try {
    const root = packageRoot()
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      bin?: Record<string, string>
    }
    const bin = pkg.bin?.[SHIM_NAME]
    if (bin !== undefined) return join(root, bin)
  } catch {
    // fall back to the sibling entry
  }
  return fileURLToPath(new URL('../../bin/cargo-credential-pkcs11.js', import.meta.url))
}

/**
 * `program` as cargo (and the agent) would run it: a path as given, a bare name from the first
 * directory on $PATH holding an executable file of that name.
 */
export function findProgram(program: string): string | undefined {
  const candidates = program.includes('/')
    ? [program]
    : (process.env['PATH'] ?? '')
        .split(delimiter)
        .filter((dir) => dir !== '')
        .map((dir) => join(dir, program))
  return candidates.find((candidate) => {
    try {
      accessSync(candidate, fsConstants.X_OK)
      return statSync(candidate).isFile()
    } catch {
      return false
    }
  })
}

/** cargo's home: $CARGO_HOME, else ~/.cargo (cargo's `home` crate). */
export function cargoHome(): string {
  return process.env['CARGO_HOME'] ?? join(homedir(), '.cargo')
}

function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b)
  } catch {
    return false
  }
}

/**
 * The provider for cargo's config: the bare name when $PATH finds this package's shim under it (cargo
 * runs a name without a slash from PATH, and the name survives a reinstall or a Node upgrade that
 * moves lib/node_modules), else the shim's absolute path, with a note saying why.
 */
function provider(): { command: string; shim: string; note?: string } {
  const shim = installedShimPath()
  const found = findProgram(SHIM_NAME)
  if (found !== undefined && sameFile(found, shim)) return { command: SHIM_NAME, shim }
  return {
    command: shim,
    shim,
    note:
      found === undefined
        ? `${SHIM_NAME} is not on PATH, so the provider is its absolute path; once it is (npm install -g), run setup again to name it instead`
        : `${found} on PATH is not this installation's shim, so the provider is the absolute path ${shim}`,
  }
}

/**
 * The file cargo reads: `config` when it exists (cargo prefers it to `config.toml`, see cargo's
 * `src/doc/src/reference/config.md`, "Hierarchical structure"), else `config.toml`.
 */
function cargoConfigPath(): string {
  const legacy = join(cargoHome(), 'config')
  return existsSync(legacy) && statSync(legacy).isFile() ? legacy : join(cargoHome(), 'config.toml')
}

/**
 * The cargo registry table setup prints or (with `write`) writes. Reading and checking the file
 * happens now, before any key is touched; the returned function writes it and gives the user's lines.
 */
export function planCargoConfig(
  registryName: string,
  index: string,
  write: boolean,
  force: boolean,
): () => string[] {
  const { command, shim, note } = provider()
  const notes = note === undefined ? [] : [`note: ${note}`]
  const cargoConfig = cargoConfigPath()
  const wanted = { index, 'credential-provider': [command] }
  const snippet = stringify({ registries: { [registryName]: wanted } })
  if (!write) {
    return () => [`cargo config: add to ${cargoConfig} (or pass --write-cargo-config):`, snippet, ...notes]
  }
  const cargoDoc = readToml(cargoConfig, 'The cargo config')
  const existing = tableAt(cargoDoc, 'registries', registryName)
  // The user's own spelling of the same provider (a string, docs/configuration.md) is kept as is.
  const current = existing?.['credential-provider']
  const only =
    typeof current === 'string'
      ? current
      : Array.isArray(current) && current.length === 1
        ? current[0]
        : undefined
  const sameProvider = only === command
  // This shim by its absolute path becomes its name once PATH finds it: the same program, spelled
  // so that it survives a reinstall (docs/setup.md §3).
  const renamed = !sameProvider && command === SHIM_NAME && typeof only === 'string' && sameFile(only, shim)
  const table = {
    ...(existing ?? {}),
    index,
    'credential-provider': sameProvider ? current : [command],
  }
  // Filling in what the table lacks, or naming the same shim, is not replacing a setting: no --force.
  const noForce =
    existing !== undefined &&
    (existing['index'] === undefined || existing['index'] === index) &&
    (current === undefined || sameProvider || renamed)
  const outcome = place(cargoDoc, 'registries', registryName, table, force || noForce, cargoConfig)
  return () => {
    if (outcome === 'unchanged') return [`cargo config: ${cargoConfig} (unchanged)`, ...notes]
    const backup = saveToml(cargoConfig, cargoDoc, { what: 'The cargo config', header: '', snippet })
    const kept = backup === undefined ? '' : `; the previous file is ${backup}`
    const what =
      outcome === 'replaced' && noForce ? (current === undefined ? 'completed' : 'updated') : outcome
    return [`cargo config: ${cargoConfig} (${what}${kept})`, ...notes]
  }
}
