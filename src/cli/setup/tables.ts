/**
 * TOML files as `setup` edits them (docs/setup.md §2): read and checked whole, one [section.NAME] table changed, and
 * written back in place: a new table is appended, a changed one is patched by a comment-preserving
 * editor (@decimalturn/toml-patch), so the user's comments, order and formatting outside that table
 * stay byte for byte. Tables inside a [section.NAME] are written inline (`read-key = { ... }`), as
 * docs/configuration.md shows them, so a key added at the end of that table stays in it. The result must parse to exactly the intended document or nothing is
 * written. A different existing table is only replaced with --force; a changed file keeps a backup.
 */
import {
  constants as fsConstants,
  copyFileSync,
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { dirname } from 'node:path'

import { patch, stringify } from '@decimalturn/toml-patch'
import { parse } from 'smol-toml'

import { isTable } from '../../config/schema.js'
import { AgentError } from '../../lib/errors.js'

export type Table = Record<string, unknown>

function parseText(text: string, path: string, what: string): Table {
  try {
    return parse(text) as Table
  } catch (error) {
    const { line, column } = error as { line?: number; column?: number }
    const where =
      line === undefined ? '' : ` (line ${line}${column === undefined ? '' : `, column ${column}`})`
    const reason = (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? ''
    throw new AgentError('CONFIG_INVALID', `${what} ${path} is not valid TOML${where}: ${reason}`, {
      cause: error,
      remedy: 'Fix it by hand first (setup does not touch a file it cannot read), then run setup again',
      data: { file: path },
    })
  }
}

export function readToml(path: string, what: string): Table {
  if (!existsSync(path)) return {}
  return parseText(readFileSync(path, 'utf8'), path, what)
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

/**
 * Puts `value` at doc[section][name]. Changing or dropping a key of an existing table needs --force;
 * filling in keys it lacks does not (docs/setup.md §1).
 */
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
  const fillsIn =
    isTable(existing) && Object.entries(existing).every(([k, v]) => canonical(v) === canonical(value[k]))
  if (existing !== undefined && !force && !fillsIn) {
    throw new AgentError('KEY_EXISTS', `${file} already has a different [${section}.${name}]`, {
      remedy: `Pass --force to replace it, or choose another name`,
      data: { section, name },
    })
  }
  tables[name] = value
  return existing === undefined ? 'added' : 'replaced'
}

/** Plain objects all the way down (smol-toml tables have a null prototype), for the patcher. */
function plain(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(plain)
  if (isTable(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]))
  return value
}

const tomlKey = (key: string): string => (/^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key))

/** `doc` as top-level keys, [section] key/values and [section.NAME] tables with the tables inside them inline. */
function render(doc: Table): string {
  const top = Object.entries(doc).filter(([, v]) => !isTable(v))
  const parts = top.length > 0 ? [stringify(plain(Object.fromEntries(top)))] : []
  for (const [section, tables] of Object.entries(doc)) {
    if (!isTable(tables)) continue
    const own = Object.entries(tables).filter(([, v]) => !isTable(v))
    if (own.length > 0) parts.push(stringify(plain({ [section]: Object.fromEntries(own) })))
    for (const [name, table] of Object.entries(tables)) {
      if (!isTable(table)) continue
      const body = stringify({ t: plain(table) }).replace(/^\[t\]\n/, '')
      parts.push(`[${tomlKey(section)}.${tomlKey(name)}]\n${body}`)
    }
  }
  return parts.join('\n')
}

/** [section.NAME] tables of `doc` that `old` has no trace of: these can simply be appended. */
function newTables(old: Table, doc: Table): Table {
  const added: Table = {}
  for (const [section, tables] of Object.entries(doc)) {
    if (!isTable(tables)) continue
    const before = old[section]
    if (before !== undefined && !isTable(before)) continue
    for (const [name, value] of Object.entries(tables)) {
      if (!isTable(value) || (isTable(before) && before[name] !== undefined)) continue
      const into = (added[section] ??= {}) as Table
      into[name] = value
    }
  }
  return added
}

/**
 * The file's text changed only as far as needed to parse to `doc`: new tables appended at the end
 * (in the file's line ending), then anything else patched in place. Undefined if no text does it.
 */
function editedText(text: string, old: Table, doc: Table, path: string, what: string): string | undefined {
  const same = (candidate: string): boolean => {
    try {
      return canonical(parse(candidate)) === canonical(doc)
    } catch {
      return false
    }
  }
  let base = text
  const eol = text.includes('\r\n') ? '\r\n' : '\n'
  const added = newTables(old, doc)
  if (Object.keys(added).length > 0) {
    const gap = text === '' ? '' : text.endsWith('\n') ? eol : eol + eol
    const appended = text + gap + render(added).replace(/\n/g, eol)
    try {
      parse(appended)
      base = appended
    } catch {
      // e.g. the section is an inline table (`registries = { ... }`): leave it to the patcher.
    }
  }
  if (same(base)) return base
  let patched: string
  try {
    patched = patch(base, plain(doc), { newLine: eol })
  } catch (error) {
    throw new AgentError('CONFIG_INVALID', `${what} ${path} cannot be edited in place: ${String(error)}`, {
      cause: error,
      remedy: 'Make the change by hand (the file was not touched), then run setup again',
      data: { file: path },
    })
  }
  return same(patched) ? patched : undefined
}

/** `file.bak`, else `file.bak.1`, `file.bak.2`, ...: an earlier backup is never overwritten. */
function backup(path: string, mode: number): string {
  for (let n = 0; ; n += 1) {
    const target = n === 0 ? `${path}.bak` : `${path}.bak.${n}`
    if (existsSync(target)) continue
    copyFileSync(path, target, fsConstants.COPYFILE_EXCL)
    chmodSync(target, mode)
    return target
  }
}

/**
 * Saves `doc` to `path`. A new file is `header` + the document. An existing one (through a symlink,
 * as dotfile managers keep it) is edited in place, backed up first, replaced by rename so a crash
 * leaves the old or the new file, and keeps its mode. Returns the backup's path, if one was made.
 */
export function saveToml(
  path: string,
  doc: Table,
  options: { what: string; header: string; mode?: number; snippet?: string },
): string | undefined {
  if (!existsSync(path)) {
    mkdirSync(dirname(path), { recursive: true, mode: options.mode === 0o600 ? 0o700 : 0o777 })
    writeFileSync(path, options.header + render(doc), { mode: options.mode ?? 0o666 })
    return undefined
  }
  const real = realpathSync(path)
  const text = readFileSync(real, 'utf8')
  const old = parseText(text, path, options.what)
  if (canonical(old) === canonical(doc)) return undefined
  const next = editedText(text, old, doc, path, options.what)
  if (next === undefined) {
    throw new AgentError('CONFIG_INVALID', `${options.what} ${path} cannot be edited in place`, {
      remedy: `Make the change by hand (the file was not touched), then run setup again${options.snippet === undefined ? '' : `:\n${options.snippet}`}`,
      data: { file: path },
    })
  }
  const mode = statSync(real).mode & 0o777
  const saved = backup(real, mode)
  const temporary = `${real}.setup-${process.pid}`
  try {
    writeFileSync(temporary, next, { mode, flag: 'wx' })
    chmodSync(temporary, mode)
    renameSync(temporary, real)
  } catch (error) {
    rmSync(temporary, { force: true })
    throw error
  }
  return saved
}
