/**
 * The append-only audit log: one JSON line per signing decision. `record` resolves only after the
 * line is on disk (write + fdatasync), and the agent awaits it before it releases a token
 * (src/agent/pipeline/run.ts), so a token a registry has seen always has its line. File 0600 in a
 * 0700 directory, opened O_APPEND: each batch is one write(2), so concurrent agents (or a
 * `log --follow`) never see torn lines.
 *
 * Group commit: lines recorded while a write is in flight wait for it, then the next flush takes all
 * of them (up to LIMITS.auditBatchMaxLines) in one write and one fdatasync and resolves them
 * together, so concurrent requests share the cost of the sync instead of queueing one sync each.
 * The file stays open between flushes; each flush stats the path and reopens when it names another
 * inode (the log was rotated, moved away or its directory removed).
 *
 * A failed append (ENOSPC, EIO, a failed fsync) is undone: the file is truncated back to its size
 * before the write, so no fragment is left for the next line to be glued onto, and every line of
 * that batch fails. Should a fragment remain anyway (a crash mid-write, another writer in between),
 * the next line starts on a fresh line, so only the fragment is unreadable, never a released token's
 * line.
 */
import { constants, type Stats } from 'node:fs'
import { chmod, lstat, mkdir, open, rename, type FileHandle } from 'node:fs/promises'
import { dirname } from 'node:path'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { AuditEntry, AuditSink } from './entry.js'
import { rotatedName } from './rotation.js'

export const AUDIT_FILE_MODE = 0o600
export const AUDIT_DIR_MODE = 0o700

function auditFailed(message: string, remedy: string, cause?: unknown): AgentError {
  return new AgentError('AUDIT_FAILED', message, cause === undefined ? { remedy } : { remedy, cause })
}

interface Pending {
  readonly line: Buffer
  readonly resolve: () => void
  readonly reject: (error: unknown) => void
}

interface Open {
  readonly handle: FileHandle
  readonly dev: number
  readonly ino: number
  /** Where our last write ended: a file still this long ends with our newline. */
  end: number
}

/** The open file, its size, and whether its directory entry is new (to be synced). */
interface Current {
  readonly file: Open
  readonly size: number
  readonly created: boolean
}

export class AuditLog implements AuditSink {
  readonly path: string
  #pending: Pending[] = []
  #flushing = false
  #closeWhenDone = false
  #file: Open | undefined
  #dirChecked = false

  readonly #rotateBytes: number

  /** `rotateBytes` (tests) overrides LIMITS.auditLogRotateBytes. */
  constructor(path: string, options: { rotateBytes?: number } = {}) {
    this.path = path
    this.#rotateBytes = options.rotateBytes ?? LIMITS.auditLogRotateBytes
  }

  /** Appends one line and syncs it (with whatever else is pending). Lines land in call order. */
  record(entry: AuditEntry): Promise<void> {
    const line = Buffer.from(`${JSON.stringify(entry)}\n`, 'utf8')
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ line, resolve, reject })
      if (!this.#flushing) void this.#flush()
    })
  }

  /**
   * Closes the kept file descriptor once the lines already recorded are written (a reload replaces
   * this log); a later record opens the file again.
   */
  async close(): Promise<void> {
    if (this.#flushing) this.#closeWhenDone = true
    else await this.#closeFile()
  }

  async #closeFile(): Promise<void> {
    const file = this.#file
    this.#file = undefined
    await file?.handle.close().catch(() => undefined)
  }

  async #flush(): Promise<void> {
    this.#flushing = true
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending.splice(0, LIMITS.auditBatchMaxLines)
        try {
          await this.#append(Buffer.concat(batch.map((p) => p.line)))
          for (const p of batch) p.resolve()
        } catch (error) {
          for (const p of batch) p.reject(error)
        }
      }
    } finally {
      this.#flushing = false
      if (this.#closeWhenDone) {
        this.#closeWhenDone = false
        await this.#closeFile()
      }
    }
  }

  async #append(lines: Buffer): Promise<void> {
    try {
      await this.#appendOnce(lines)
    } catch (error) {
      // The state directory was removed while the agent ran: create it again once.
      if (
        !(error instanceof AgentError) ||
        (error.cause as NodeJS.ErrnoException | undefined)?.code !== 'ENOENT'
      )
        throw error
      this.#dirChecked = false
      await this.#appendOnce(lines)
    }
  }

  async #appendOnce(lines: Buffer): Promise<void> {
    const { file, size, created } = await this.#rotateIfFull(await this.#current())
    try {
      const before = size
      const bytes =
        before > 0 && before !== file.end && !(await endsWithNewline(file.handle, before))
          ? Buffer.concat([NEWLINE, lines])
          : lines
      try {
        let written = 0
        while (written < bytes.length) {
          const { bytesWritten } = await file.handle.write(bytes, written, bytes.length - written)
          written += bytesWritten
        }
        await file.handle.datasync()
        file.end = before + bytes.length
      } catch (error) {
        await undoAppend(file.handle, before, before + bytes.length)
        throw error
      }
    } catch (error) {
      if (error instanceof AgentError) throw error
      throw auditFailed(
        `Writing the audit log ${this.path} failed: ${(error as Error).message}`,
        'Check free space and permissions of the audit log directory',
        error,
      )
    }
    if (created) await syncDir(dirname(this.path))
  }

  /**
   * Past LIMITS.auditLogRotateBytes the live file is renamed to its timestamped generation
   * (src/audit/rotation.ts) before the next batch: the lines already promised stay in it, whole,
   * and `cargo-pkcs11-agent log` reads across the generations. The new file is opened by
   * `#current()` (the path now names another inode).
   */
  async #rotateIfFull(current: Current): Promise<Current> {
    if (current.size < this.#rotateBytes) return current
    // Never onto an existing generation (two rotations in one millisecond): that would lose lines.
    let when = Date.now()
    while (
      await lstat(rotatedName(this.path, new Date(when))).then(
        () => true,
        () => false,
      )
    )
      when += 1
    try {
      await rename(this.path, rotatedName(this.path, new Date(when)))
    } catch (error) {
      throw auditFailed(
        `Rotating the audit log ${this.path} failed: ${(error as Error).message}`,
        'Check free space and permissions of the audit log directory',
        error,
      )
    }
    await syncDir(dirname(this.path))
    return await this.#current()
  }

  /**
   * The open log file and its size, reopened when the path no longer names the inode we hold.
   * `created`: a new file (or directory) whose entry must be synced into its directory.
   */
  async #current(): Promise<Current> {
    if (this.#file !== undefined) {
      let info: Stats | undefined
      try {
        info = await lstat(this.path)
      } catch {
        // Gone (moved away, directory removed): opened again below.
      }
      if (info !== undefined && info.ino === this.#file.ino && info.dev === this.#file.dev) {
        if ((info.mode & 0o777) !== AUDIT_FILE_MODE)
          await this.#file.handle.chmod(AUDIT_FILE_MODE).catch(() => undefined)
        return { file: this.#file, size: info.size, created: false }
      }
      await this.#closeFile()
    }
    const dirCreated = await this.#ensureDir(dirname(this.path))
    let handle: FileHandle
    try {
      handle = await open(
        this.path,
        constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW,
        AUDIT_FILE_MODE,
      )
    } catch (error) {
      throw auditFailed(
        `The audit log ${this.path} cannot be opened: ${(error as Error).message}`,
        `Check that ${this.path} is a regular file owned by you (not a symlink) and that its directory is writable`,
        error,
      )
    }
    try {
      const info = await handle.stat()
      const uid = process.getuid?.()
      if (!info.isFile() || (uid !== undefined && info.uid !== uid)) {
        throw auditFailed(
          `The audit log ${this.path} is not a regular file owned by this user`,
          `Move it away; the agent creates a new one`,
        )
      }
      // A log someone loosened (or created with a wide umask elsewhere) is tightened, not refused:
      // refusing would stop every signature for a fixable mode.
      if ((info.mode & 0o777) !== AUDIT_FILE_MODE) await handle.chmod(AUDIT_FILE_MODE)
      this.#file = { handle, dev: info.dev, ino: info.ino, end: -1 }
      return { file: this.#file, size: info.size, created: dirCreated || info.size === 0 }
    } catch (error) {
      await handle.close().catch(() => undefined)
      if (error instanceof AgentError) throw error
      throw auditFailed(
        `Reading the audit log ${this.path} failed: ${(error as Error).message}`,
        'Check permissions of the audit log directory',
        error,
      )
    }
  }

  /** Creates the directory 0700 on first use; tightens it when it is ours and too open. */
  async #ensureDir(dir: string): Promise<boolean> {
    if (this.#dirChecked) return false
    let created = false
    try {
      const made = await mkdir(dir, { recursive: true, mode: AUDIT_DIR_MODE })
      created = made !== undefined
      const info = await lstat(dir)
      const uid = process.getuid?.()
      if (!info.isDirectory() || (uid !== undefined && info.uid !== uid)) {
        throw auditFailed(
          `The audit log directory ${dir} is not a directory owned by this user`,
          'Set audit-log in the agent config to a path in a directory you own',
        )
      }
      if ((info.mode & 0o077) !== 0) await chmod(dir, AUDIT_DIR_MODE)
    } catch (error) {
      if (error instanceof AgentError) throw error
      throw auditFailed(
        `The audit log directory ${dir} cannot be created: ${(error as Error).message}`,
        'Set audit-log in the agent config to a writable path',
        error,
      )
    }
    this.#dirChecked = true
    return created
  }
}

const NEWLINE = Buffer.from('\n')

async function endsWithNewline(handle: FileHandle, size: number): Promise<boolean> {
  const last = Buffer.alloc(1)
  const { bytesRead } = await handle.read(last, 0, 1, size - 1)
  return bytesRead === 1 && last[0] === 0x0a
}

/**
 * Truncates back to `before` what a failed append left, when the file grew by at most our own
 * bytes: had another writer appended meanwhile (size past `most`), its lines stay, and the next
 * line's fresh start keeps them readable.
 */
async function undoAppend(handle: FileHandle, before: number, most: number): Promise<void> {
  try {
    const { size } = await handle.stat()
    if (size > before && size <= most) await handle.truncate(before)
    await handle.sync()
  } catch {
    // Nothing more can be done here; the next append starts on a fresh line.
  }
}

/** After creating a file, fsync its directory so the new entry itself survives a crash. */
async function syncDir(dir: string): Promise<void> {
  try {
    const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  } catch {
    // Some filesystems refuse fsync on directories; the line itself is already synced.
  }
}

/** One stored line as an audit entry; undefined for a line that is none (a torn last line, garbage). */
export function parseAuditLine(line: string): AuditEntry | undefined {
  try {
    const value: unknown = JSON.parse(line)
    if (typeof value === 'object' && value !== null && (value as { v?: unknown }).v === 1)
      return value as AuditEntry
  } catch {
    // not JSON
  }
  return undefined
}

/** Parses audit lines; lines that are not audit entries are skipped. */
export function parseAuditLines(text: string): AuditEntry[] {
  return text.split('\n').flatMap((line) => parseAuditLine(line) ?? [])
}
