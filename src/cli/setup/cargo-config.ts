/**
 * The cargo side of `setup`: the [registries.NAME] table naming this package's shim as the
 * credential provider (docs/configuration.md, "Cargo side"), printed or written to
 * $CARGO_HOME/config.toml.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { stringify } from 'smol-toml'

import { packageRoot } from '../../lib/package-files.js'
import { place, readToml, tableAt } from './tables.js'

/** The shim as this package installs it (package.json `bin`): the path cargo's config should name. */
function installedShimPath(): string {
  try {
    const root = packageRoot()
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      bin?: Record<string, string>
    }
    const bin = pkg.bin?.['cargo-credential-pkcs11']
    if (bin !== undefined) return join(root, bin)
  } catch {
    // fall back to the sibling entry
  }
  return fileURLToPath(new URL('../../bin/cargo-credential-pkcs11.js', import.meta.url))
}

/** Writes (with `write`) or prints the cargo registry table; returns the lines for the user. */
export function cargoConfigLines(
  registryName: string,
  index: string,
  write: boolean,
  force: boolean,
): string[] {
  const shim = installedShimPath()
  const cargoHome = process.env['CARGO_HOME'] ?? join(homedir(), '.cargo')
  const cargoConfig = join(cargoHome, 'config.toml')
  if (!write) {
    const snippet = { registries: { [registryName]: { index, 'credential-provider': [shim] } } }
    return [`cargo config: add to ${cargoConfig} (or pass --write-cargo-config):`, stringify(snippet)]
  }
  const cargoDoc = readToml(cargoConfig, 'The cargo config')
  const table = {
    ...(tableAt(cargoDoc, 'registries', registryName) ?? {}),
    index,
    'credential-provider': [shim],
  }
  const outcome = place(cargoDoc, 'registries', registryName, table, force, cargoConfig)
  if (outcome !== 'unchanged') {
    mkdirSync(dirname(cargoConfig), { recursive: true })
    writeFileSync(cargoConfig, stringify(cargoDoc) + '\n')
  }
  return [`cargo config: ${cargoConfig} (${outcome})`]
}
