/**
 * TOML files as `setup` edits them: read whole, change one [section.NAME] table, write whole.
 * A different existing table is only replaced with --force.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'

import { parse } from 'smol-toml'

import { isTable } from '../../config/schema.js'
import { AgentError } from '../../lib/errors.js'

export type Table = Record<string, unknown>

export function readToml(path: string, what: string): Table {
  if (!existsSync(path)) return {}
  try {
    return parse(readFileSync(path, 'utf8')) as Table
  } catch (error) {
    throw new AgentError('CONFIG_INVALID', `${what} ${path} is not valid TOML`, {
      cause: error,
      remedy: 'Fix it by hand first; setup does not overwrite a file it cannot read',
    })
  }
}

/** Order-insensitive comparison of TOML values (smol-toml tables may have a null prototype). */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    isTable(v)
      ? Object.fromEntries(
          Object.keys(v)
            .sort()
            .map((k) => [k, v[k]]),
        )
      : v,
  )
}

/** doc[section][name], if that is a table. */
export function tableAt(doc: Table, section: string, name: string): Table | undefined {
  const tables = doc[section]
  const value = isTable(tables) ? tables[name] : undefined
  return isTable(value) ? value : undefined
}

/** Puts `value` at doc[section][name]; a different existing value needs --force. */
export function place(
  doc: Table,
  section: string,
  name: string,
  value: Table,
  force: boolean,
  file: string,
): 'added' | 'unchanged' | 'replaced' {
  const tables = isTable(doc[section]) ? (doc[section] as Table) : {}
  doc[section] = tables
  const existing = tables[name]
  if (existing !== undefined && canonical(existing) === canonical(value)) return 'unchanged'
  if (existing !== undefined && !force) {
    throw new AgentError('KEY_EXISTS', `${file} already has a different [${section}.${name}]`, {
      remedy: `Pass --force to replace it, or choose another name`,
      data: { section, name },
    })
  }
  tables[name] = value
  return existing === undefined ? 'added' : 'replaced'
}

export function writePrivate(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  writeFileSync(path, text, { mode: 0o600 })
}
