/**
 * Rotation by renaming: when the live audit log passes LIMITS.auditLogRotateBytes the agent renames
 * it to `<path>.<UTC timestamp>` and starts a new one. Nothing is ever deleted (a line the agent
 * promised before releasing a token stays readable); archiving or removing old generations is the
 * user's decision. `cargo-pkcs11-agent log` reads across the generations, oldest first.
 */
import { readdir } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

const STAMP = /^\d{8}T\d{9}Z$/

/** `audit.log` → `audit.log.20261201T114500123Z` (sorts by time as text). */
export function rotatedName(path: string, now: Date): string {
  const stamp = now.toISOString().replace(/[-:.]/g, '')
  return `${path}.${stamp}`
}

/** The rotated generations of `path`, oldest first (the live file is not included). */
export async function rotatedFiles(path: string): Promise<string[]> {
  const prefix = `${basename(path)}.`
  let names: string[]
  try {
    names = await readdir(dirname(path))
  } catch {
    return []
  }
  return names
    .filter((name) => name.startsWith(prefix) && STAMP.test(name.slice(prefix.length)))
    .sort()
    .map((name) => join(dirname(path), name))
}
