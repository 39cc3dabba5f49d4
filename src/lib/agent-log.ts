/**
 * agent.log: where a background agent's stderr goes (started by the shim or `run`). Capped by renaming
 * to `agent.log.1` (one previous file kept), so it never grows without bound. Node builtins only: the
 * shim uses it on its start-an-agent path.
 */
import { closeSync, fstatSync, mkdirSync, openSync, renameSync, statSync, writeSync } from 'node:fs'
import { dirname } from 'node:path'

import { LIMITS } from './limits.js'

/** Renames `path` to `path.1` when it has reached `maxBytes`. Resolves to whether it did. */
export function rotateIfLarge(path: string, maxBytes: number = LIMITS.agentLogMaxBytes): boolean {
  try {
    if (statSync(path).size < maxBytes) return false
    renameSync(path, `${path}.1`)
    return true
  } catch {
    // Missing (nothing to rotate) or not renameable (keep appending: a log is never worth a failure).
    return false
  }
}

/** Opens the log for appending (after rotating it); the caller closes the fd once a child holds it. */
export function openAgentLog(path: string): { fd: number; offset: number } {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  rotateIfLarge(path)
  const fd = openSync(path, 'a', 0o600)
  let offset = 0
  try {
    offset = statSync(path).size
  } catch {
    // raced with a rotation: read from the start
  }
  return { fd, offset }
}

/**
 * Characters that would end a log line or act on the terminal it is read on: C0 controls but tab,
 * DEL, C1 (ESC sequences, CSI), the Unicode line separators and the bidirectional controls
 * (Unicode UAX #9), which could reorder what a reader sees.
 */
// eslint-disable-next-line no-control-regex
const LOG_UNSAFE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g

/** `line` with every LOG_UNSAFE character written as `\xHH` or `\uHHHH`, so it stays one line. */
function logSafe(line: string): string {
  return line.replace(LOG_UNSAFE, (c) => {
    const code = c.charCodeAt(0)
    return code < 0x100
      ? `\\x${code.toString(16).padStart(2, '0')}`
      : `\\u${code.toString(16).padStart(4, '0')}`
  })
}

/**
 * The running agent's own log lines, one line per call whatever the message holds (client-chosen
 * labels and names reach it: logSafe). When its stderr is the agent log (a background agent), each
 * line starts with its UTC time, and a line that takes the file past the cap renames it and
 * continues in a fresh agent.log; otherwise (a terminal, journald under systemd) lines go to stderr
 * as they are. Every line ends with a newline.
 */
export function agentLogWriter(path: string, prefix: string): (line: string) => void {
  let fd = 2
  let rotating = false
  try {
    const err = fstatSync(2)
    const file = statSync(path)
    rotating = err.isFile() && err.ino === file.ino && err.dev === file.dev
  } catch {
    rotating = false
  }
  return (line: string): void => {
    // A file gets the time; a terminal needs none, and journald stamps each line itself.
    const time = rotating ? `${new Date().toISOString()} ` : ''
    const text = `${time}${prefix}${logSafe(line.replace(/\n+$/, ''))}\n`
    try {
      writeSync(fd, text)
      if (rotating && fstatSync(fd).size >= LIMITS.agentLogMaxBytes && rotateIfLarge(path)) {
        const previous = fd
        fd = openSync(path, 'a', 0o600)
        if (previous !== 2) closeSync(previous)
      }
    } catch {
      // stderr closed or the disk is full: the agent keeps serving
    }
  }
}
