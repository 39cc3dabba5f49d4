/** Who is asking: the shim's parent (normally cargo), for the intent shown to the human and the audit log. */
import { closeSync, openSync, readFileSync, readlinkSync } from 'node:fs'

import type { RequesterClaim } from '../cargo/intent.js'
import { LIMITS } from '../lib/limits.js'

/** The parent of `pid` from /proc/<pid>/stat (field 4, after the parenthesised command name). */
function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    return Number.isSafeInteger(ppid) && ppid > 0 ? ppid : undefined
  } catch {
    return undefined
  }
}

/**
 * The requester is the program that started this shim (cargo): `pid` is cargo's, `ppid` its parent's
 * (the shell or build tool), `command` cargo's command line. The shim's own pid says nothing to a human.
 */
export function requesterContext(): RequesterClaim {
  const context: RequesterClaim = { pid: process.ppid }
  const grandparent = parentOf(process.ppid)
  if (grandparent !== undefined) context.ppid = grandparent
  try {
    // NUL-separated argv of the parent; unreadable on non-Linux or under hidepid, which is fine.
    const raw = readFileSync(`/proc/${process.ppid}/cmdline`)
    const command = raw
      .toString('utf8')
      .split('\0')
      .filter((a) => a !== '')
      .join(' ')
    if (command !== '') context.command = command.slice(0, LIMITS.auditFieldMaxChars)
  } catch {
    // best effort
  }
  // The terminal name, from the first standard stream that is one (readlink avoids loading node:tty).
  for (const fd of [2, 0, 1]) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`)
      if (target.startsWith('/dev/pts/') || target.startsWith('/dev/tty')) {
        context.tty = target
        break
      }
    } catch {
      // best effort
    }
  }
  return context
}

/** Whether this process has a controlling terminal to ask on (cargo gives the shim none on stdio). */
export function hasTerminal(): boolean {
  try {
    closeSync(openSync('/dev/tty', 'r+'))
    return true
  } catch {
    return false
  }
}
