/**
 * Who asks, as the kernel knows it (docs/design.md §4, rule 1). The socket's peer credentials give
 * the connecting process (the shim); /proc gives its parent (cargo), their executables, their
 * command lines and the controlling terminal. A command line is the process's own argv memory,
 * which it may overwrite (Node's `process.title` does; `man 5 proc`, cmdline), so it is shown only
 * as what the process says about itself (src/policy/intent.ts); the executable is the kernel's.
 * What the client sends about itself is kept apart, as `claimed`, and never shown as fact. A peer that is an SSH forwarder, or that cannot be
 * identified at all, is a forwarded connection (docs/ssh-forwarding.md, "How the agent knows").
 *
 * References: `man 5 proc` (/proc/<pid>/stat fields 4 ppid and 7 tty_nr, cmdline, exe), Linux
 * `include/linux/kdev_t.h` (new_encode_dev: how tty_nr packs major and minor),
 * Documentation/admin-guide/devices.txt (136-143: Unix98 pty slaves).
 */
import { readFileSync, readlinkSync, statSync } from 'node:fs'
import { basename } from 'node:path'

import type { Forwarder, Requester, RequesterClaim } from '../cargo/intent.js'
import { LIMITS } from '../lib/limits.js'
import { isRecord } from '../lib/json.js'
import type { PeerCredentials } from '../lib/peercred.js'

interface Stat {
  readonly ppid: number
  readonly ttyNr: number
}

/** Fields after the parenthesised command name (which may itself hold spaces and parentheses). */
function readStat(pid: number): Stat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
    // fields[0] is state (field 3), so ppid (field 4) is fields[1] and tty_nr (field 7) fields[4].
    const ppid = Number(fields[1])
    const ttyNr = Number(fields[4])
    if (!Number.isSafeInteger(ppid) || !Number.isSafeInteger(ttyNr)) return undefined
    return { ppid, ttyNr }
  } catch {
    return undefined
  }
}

function readCommand(pid: number): string | undefined {
  try {
    const command = readFileSync(`/proc/${pid}/cmdline`)
      .toString('utf8')
      .split('\0')
      .filter((a) => a !== '')
      .join(' ')
    return command === '' ? undefined : command.slice(0, LIMITS.auditFieldMaxChars)
  } catch {
    return undefined
  }
}

function readExe(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/exe`).slice(0, LIMITS.auditFieldMaxChars)
  } catch {
    return undefined
  }
}

/** The owner of /proc/<pid>: the process's uid, so a reused pid of another user is not taken for ours. */
function ownerOf(pid: number): number | undefined {
  try {
    return statSync(`/proc/${pid}`).uid
  } catch {
    return undefined
  }
}

/**
 * The device file of a controlling terminal given as tty_nr, checked against the file itself: it
 * must be a character device with exactly that device number, owned by `uid` (a terminal the user
 * logged in on, or a pty the user opened). Undefined when there is none or it does not check out.
 */
export function terminalOf(ttyNr: number, uid: number): string | undefined {
  if (ttyNr === 0) return undefined
  const major = (ttyNr >> 8) & 0xfff
  const minor = (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00)
  let path: string | undefined
  if (major >= 136 && major <= 143) path = `/dev/pts/${(major - 136) * 256 + minor}`
  else {
    try {
      const uevent = readFileSync(`/sys/dev/char/${major}:${minor}/uevent`, 'utf8')
      const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1]
      if (name !== undefined && !name.includes('..')) path = `/dev/${name}`
    } catch {
      return undefined
    }
  }
  if (path === undefined) return undefined
  try {
    const stat = statSync(path)
    return stat.isCharacterDevice() && stat.rdev === ttyNr && stat.uid === uid ? path : undefined
  } catch {
    return undefined
  }
}

/**
 * The executables through which OpenSSH forwards a Unix socket: the client for `ssh -R` started on
 * this host, the server for a forward it terminates here (`ssh -L` from elsewhere; since OpenSSH
 * 9.8 the per-connection server is `sshd-session`). A binary replaced on disk while running reads
 * as "<path> (deleted)" (`man 5 proc`, /proc/<pid>/exe) and still counts.
 */
const FORWARDERS: Readonly<Record<string, Forwarder['via']>> = {
  ssh: 'ssh',
  sshd: 'sshd',
  'sshd-session': 'sshd',
}

/** Which forwarder an executable path is, by its file name (never by argv or comm). */
export function forwarderKind(exe: string): Forwarder['via'] | undefined {
  const path = exe.endsWith(' (deleted)') ? exe.slice(0, -' (deleted)'.length) : exe
  return Object.hasOwn(FORWARDERS, basename(path)) ? FORWARDERS[basename(path)] : undefined
}

/**
 * The forwarder behind a connecting process: its /proc/<pid>/exe names ssh or sshd. `verified`
 * when the running image (stat of the exe link: the inode, not the path) is root-owned and
 * writable by nobody else, so not a program of the user's own that merely calls itself ssh.
 */
function forwarderOf(pid: number, exe: string | undefined): Forwarder | undefined {
  if (exe === undefined) return { via: 'unidentified', pid }
  const via = forwarderKind(exe)
  if (via === undefined) return undefined
  let verified = false
  try {
    const image = statSync(`/proc/${pid}/exe`)
    verified = image.isFile() && image.uid === 0 && (image.mode & 0o022) === 0
  } catch {
    // gone: unverified
  }
  return { via, pid, exe, verified }
}

/**
 * The requester of a connection: `pid`/`command`/`exe` are the connecting process's parent (cargo,
 * for the shim), `client` the connecting process itself (its pid, command and exe), `tty` its controlling terminal. Every
 * field is read from the kernel; each is left out when it cannot be read.
 *
 * A connecting process that is an SSH forwarder, or whose executable cannot be read (it is gone,
 * non-dumpable, or in a PID namespace we cannot see), makes the request `forwarded`: the program
 * that asked is on the far side, so no local parent, command or terminal is recorded for it, and
 * nothing is asked on the forwarder's terminal (fail closed: an unknown peer gets the forwarded rules).
 */
export function kernelRequester(peer: PeerCredentials): Requester {
  const requester: Requester = { uid: peer.uid }
  if (peer.pid <= 0) {
    requester.forwarded = { via: 'unidentified', pid: 0 }
    return requester
  }
  const readable = ownerOf(peer.pid) === peer.uid
  const clientExe = readable ? readExe(peer.pid) : undefined
  const forwarded = forwarderOf(peer.pid, clientExe)
  if (forwarded !== undefined) requester.forwarded = forwarded
  if (!readable) return requester
  const client: NonNullable<Requester['client']> = { pid: peer.pid }
  const clientCommand = readCommand(peer.pid)
  if (clientCommand !== undefined) client.command = clientCommand
  if (clientExe !== undefined) client.exe = clientExe
  requester.client = client
  if (forwarded !== undefined) return requester
  const stat = readStat(peer.pid)
  if (stat === undefined) return requester
  const tty = terminalOf(stat.ttyNr, peer.uid)
  if (tty !== undefined) requester.tty = tty
  if (stat.ppid <= 0) return requester
  requester.pid = stat.ppid
  const parent = readStat(stat.ppid)
  if (parent !== undefined && parent.ppid > 0) requester.ppid = parent.ppid
  const command = readCommand(stat.ppid)
  if (command !== undefined) requester.command = command
  const exe = readExe(stat.ppid)
  if (exe !== undefined) requester.exe = exe
  return requester
}

/** What the client said about itself, cut to size; undefined when it said nothing usable. */
export function parseClaim(value: unknown): RequesterClaim | undefined {
  if (!isRecord(value)) return undefined
  const claim: RequesterClaim = {}
  const { pid, ppid, command, tty, forwarded } = value
  if (typeof pid === 'number' && Number.isSafeInteger(pid) && pid > 0) claim.pid = pid
  if (typeof forwarded === 'boolean') claim.forwarded = forwarded
  else if (forwarded !== undefined && forwarded !== null) claim.forwarded = true
  if (typeof ppid === 'number' && Number.isSafeInteger(ppid) && ppid > 0) claim.ppid = ppid
  if (typeof command === 'string') claim.command = command.slice(0, LIMITS.auditFieldMaxChars)
  if (typeof tty === 'string') claim.tty = tty.slice(0, LIMITS.auditFieldMaxChars)
  return Object.keys(claim).length === 0 ? undefined : claim
}

/** The kernel's requester with the client's claim attached (as a claim). */
export function withClaim(kernel: Requester, claim: unknown): Requester {
  const claimed = parseClaim(claim)
  return claimed === undefined ? { ...kernel } : { ...kernel, claimed }
}
