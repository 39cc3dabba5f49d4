/** Who is asking: the shim's parent (normally cargo), for the intent shown to the human and the audit log. */
import { readFileSync, readlinkSync } from 'node:fs'
import { isatty } from 'node:tty'

import { LIMITS } from '../lib/limits.js'

export interface RequesterContext {
  pid: number
  ppid: number
  command?: string
  tty?: string
}

export function requesterContext(): RequesterContext {
  const context: RequesterContext = { pid: process.pid, ppid: process.ppid }
  try {
    // NUL-separated argv of the parent; unreadable on non-Linux or under hidepid, which is fine.
    const raw = readFileSync(`/proc/${process.ppid}/cmdline`)
    const command = raw.toString('utf8').split('\0').filter((a) => a !== '').join(' ')
    if (command !== '') context.command = command.slice(0, LIMITS.auditFieldMaxChars)
  } catch {
    // best effort
  }
  for (const fd of [2, 0, 1]) {
    if (!isatty(fd)) continue
    try {
      context.tty = readlinkSync(`/proc/self/fd/${fd}`)
      break
    } catch {
      // best effort
    }
  }
  return context
}
