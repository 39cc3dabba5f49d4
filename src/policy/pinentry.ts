/**
 * A pinentry client, the way gpg-agent drives one: start the program the user configured, speak
 * Assuan on its stdin/stdout, ask one question, say BYE. The PIN arrives in `D` lines and is decoded
 * into a Buffer that becomes a `Pin`; it never passes through argv, the environment or a JS string.
 */
import { spawn } from 'node:child_process'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { Pin } from '../lib/secret.js'
import { ASSUAN_ERR, LineSplitter, commandLine, decodeData, parseServerLine } from './assuan.js'

export interface PinentryOptions {
  /** Program name on PATH or absolute path. Started with no arguments. */
  readonly program: string
  /** Passed to pinentry as SETTIMEOUT; our own kill timer fires shortly after. */
  readonly timeoutMs: number
  /** The requesting terminal (`OPTION ttyname`, only a /dev/ path), so curses/tty pinentries open there. */
  readonly ttyname?: string | undefined
  /** Environment for the child, already stripped of PIN variables (see `childEnvironment`); its TERM
   * and locale become `OPTION ttytype` / `lc-ctype`. */
  readonly env: NodeJS.ProcessEnv
}

export interface PinDialog {
  readonly title: string
  readonly description: string
  readonly prompt: string
  /** Shown as pinentry's error line: used for the tries-left warning. */
  readonly warning?: string
}

export interface ConfirmDialog {
  readonly title: string
  readonly description: string
  readonly ok: string
  readonly cancel: string
}

/** Grace after pinentry's own timeout before we kill it. */
const KILL_GRACE_MS = 2_000
/** How long pinentry gets to exit after BYE before it is killed. */
const EXIT_WAIT_MS = 1_000
const STDERR_KEEP_BYTES = 2_048

function entryFailed(message: string, remedy: string, cause?: unknown): AgentError {
  return new AgentError('PIN_ENTRY_FAILED', message, { remedy, cause })
}

interface Reply {
  readonly data: Buffer[]
}

class AssuanError extends Error {
  constructor(
    readonly code: number,
    readonly text: string,
  ) {
    super(`ERR ${code} ${text}`)
  }
}

/** One pinentry process, one request/response at a time. */
class PinentrySession {
  readonly #child
  readonly #splitter = new LineSplitter()
  readonly #program: string
  #stderr = ''
  #exited = false
  #failure: AgentError | undefined
  #waiter: { resolve: (r: Reply) => void; reject: (e: unknown) => void; data: Buffer[] } | undefined
  #timer: NodeJS.Timeout

  readonly pid: number | undefined

  constructor(options: PinentryOptions) {
    this.#program = options.program
    this.#child = spawn(options.program, [], { stdio: ['pipe', 'pipe', 'pipe'], env: options.env })
    this.pid = this.#child.pid
    this.#child.stdout.on('data', (chunk: Buffer) => this.#onData(chunk))
    this.#child.stderr.on('data', (chunk: Buffer) => {
      this.#stderr = (this.#stderr + chunk.toString('utf8')).slice(-STDERR_KEEP_BYTES)
    })
    this.#child.stdin.on('error', () => {
      // EPIPE when pinentry died: reported through 'exit'.
    })
    this.#child.on('error', (error: NodeJS.ErrnoException) => {
      this.#fail(
        error.code === 'ENOENT'
          ? entryFailed(
              `The pinentry program "${this.#program}" was not found`,
              'Install pinentry (e.g. the pinentry-curses or pinentry-gnome3 package) or set pinentry-program for the token in the agent config to its path',
              error,
            )
          : entryFailed(
              `The pinentry program "${this.#program}" could not be started: ${error.message}`,
              'Check pinentry-program for the token in the agent config',
              error,
            ),
      )
    })
    // 'close', not 'exit': a last ERR line may still be in the pipe when the process has exited.
    this.#child.on('close', (code, signal) => {
      this.#exited = true
      this.#fail(
        entryFailed(
          `pinentry "${this.#program}" exited (${signal ?? `status ${String(code)}`}) before answering${this.#stderrHint()}`,
          'Check that pinentry works in this session (a graphical pinentry needs DISPLAY or WAYLAND_DISPLAY, a terminal one a tty), or use another PIN source',
        ),
      )
    })
    this.#timer = setTimeout(() => {
      this.#fail(
        entryFailed(
          `No answer from pinentry within ${(options.timeoutMs / 1000).toFixed(options.timeoutMs % 1000 === 0 ? 0 : 1)} s`,
          'Run the command again and answer the PIN dialog',
        ),
      )
      this.#kill()
    }, options.timeoutMs + KILL_GRACE_MS)
  }

  /** Resolves after the greeting `OK`. */
  async greeting(): Promise<void> {
    await new Promise<Reply>((resolve, reject) => {
      this.#waiter = { resolve, reject, data: [] }
      if (this.#failure !== undefined) reject(this.#failure)
    })
  }

  async command(command: string, argument?: string): Promise<Reply> {
    if (this.#failure !== undefined) throw this.#failure
    return new Promise<Reply>((resolve, reject) => {
      this.#waiter = { resolve, reject, data: [] }
      this.#child.stdin.write(commandLine(command, argument))
    })
  }

  /** Sends an OPTION and ignores "unknown option" refusals: not every pinentry knows every option. */
  async option(name: string, value: string | undefined): Promise<void> {
    if (value === undefined || value === '') return
    await this.optional('OPTION', `${name}=${value}`)
  }

  /** A command some pinentries refuse (old or minimal ones): their ERR is not a failure. */
  async optional(command: string, argument: string): Promise<void> {
    try {
      await this.command(command, argument)
    } catch (error) {
      if (!(error instanceof AssuanError)) throw error
    }
  }

  async close(): Promise<void> {
    clearTimeout(this.#timer)
    this.#splitter.wipe()
    if (this.#exited) return
    const exited = new Promise<void>((resolve) => this.#child.once('close', () => resolve()))
    if (this.#failure === undefined)
      this.#failure = entryFailed('pinentry session closed', 'Internal: the session was used after close')
    try {
      this.#child.stdin.end('BYE\n')
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => this.#kill(), EXIT_WAIT_MS)
    await exited
    clearTimeout(timer)
  }

  #onData(chunk: Buffer): void {
    for (const line of this.#splitter.push(chunk)) {
      const parsed = parseServerLine(line)
      const waiter = this.#waiter
      if (parsed.type === 'data') waiter?.data.push(decodeData(parsed.payload))
      line.fill(0)
      if (parsed.type === 'data') continue
      if (parsed.type === 'inquire') {
        // pinentry never inquires; cancel rather than hang (Assuan: CAN ends an inquiry).
        this.#child.stdin.write('CAN\n')
        continue
      }
      if (parsed.type === 'ok' || parsed.type === 'err') {
        this.#waiter = undefined
        if (waiter === undefined) continue
        if (parsed.type === 'ok') waiter.resolve({ data: waiter.data })
        else {
          for (const d of waiter.data) d.fill(0)
          waiter.reject(new AssuanError(parsed.code, parsed.text))
        }
      }
    }
    if (this.#splitter.pendingBytes > LIMITS.assuanLineMaxBytes) {
      this.#fail(
        entryFailed(
          `pinentry "${this.#program}" sent a line longer than the Assuan limit`,
          'Check that the `pinentry` setting names a pinentry program',
        ),
      )
      this.#kill()
    }
  }

  #fail(error: AgentError): void {
    this.#failure ??= error
    const waiter = this.#waiter
    this.#waiter = undefined
    if (waiter !== undefined) {
      for (const d of waiter.data) d.fill(0)
      waiter.reject(this.#failure)
    }
  }

  #kill(): void {
    if (!this.#exited) this.#child.kill('SIGKILL')
  }

  #stderrHint(): string {
    const text = this.#stderr.trim().split('\n').slice(-3).join(' / ')
    return text === '' ? '' : `: ${text}`
  }
}

/** One pinentry run: the session options, the dialog's title and description, then `work`. */
async function withSession<T>(
  options: PinentryOptions,
  dialog: { readonly title: string; readonly description: string },
  work: (session: PinentrySession) => Promise<T>,
): Promise<T> {
  const session = new PinentrySession(options)
  try {
    await session.greeting()
    const { env, ttyname } = options
    if (ttyname?.startsWith('/dev/') === true) await session.option('ttyname', ttyname)
    await session.option('ttytype', env['TERM'])
    await session.option('lc-ctype', env['LC_ALL'] ?? env['LC_CTYPE'] ?? env['LANG'])
    // Our kill timer still bounds a pinentry that ignores SETTIMEOUT.
    await session.optional('SETTIMEOUT', String(Math.max(1, Math.ceil(options.timeoutMs / 1000))))
    await session.command('SETTITLE', dialog.title)
    await session.command('SETDESC', dialog.description)
    return await work(session)
  } catch (error) {
    throw answerError(error, options.program)
  } finally {
    await session.close()
  }
}

/** Asks for a PIN. Cancel → PIN_ENTRY_FAILED "cancelled"; an empty answer is treated as cancel. */
export async function pinentryGetPin(options: PinentryOptions, dialog: PinDialog): Promise<Pin> {
  return withSession(options, dialog, async (session) => {
    await session.command('SETPROMPT', dialog.prompt)
    if (dialog.warning !== undefined) await session.command('SETERROR', dialog.warning)
    const reply = await session.command('GETPIN')
    const pin = Buffer.concat(reply.data)
    for (const d of reply.data) d.fill(0)
    if (pin.length === 0) {
      throw entryFailed('PIN entry was cancelled (empty PIN)', 'Run the command again and enter the PIN')
    }
    if (pin.length > LIMITS.pinMaxBytes) {
      pin.fill(0)
      throw new AgentError('PIN_INVALID', `The PIN entered is longer than ${LIMITS.pinMaxBytes} bytes`, {
        remedy: 'Enter the token PIN',
      })
    }
    return new Pin(pin)
  })
}

/** Asks yes/no. OK → true; the "no" button or Cancel → false; anything else → PIN_ENTRY_FAILED. */
export async function pinentryConfirm(options: PinentryOptions, dialog: ConfirmDialog): Promise<boolean> {
  return withSession(options, dialog, async (session) => {
    await session.command('SETOK', dialog.ok)
    await session.command('SETCANCEL', dialog.cancel)
    try {
      await session.command('CONFIRM')
      return true
    } catch (error) {
      if (
        error instanceof AssuanError &&
        (error.code === ASSUAN_ERR.cancelled || error.code === ASSUAN_ERR.notConfirmed)
      )
        return false
      throw error
    }
  })
}

/** An Assuan ERR from any command of the session as the PIN_ENTRY_FAILED the human sees. */
function answerError(error: unknown, program: string): unknown {
  if (!(error instanceof AssuanError)) return error
  if (error.code === ASSUAN_ERR.cancelled) {
    return entryFailed(
      'PIN entry was cancelled',
      'Run the command again and enter the PIN, or press Cancel only to refuse',
      error,
    )
  }
  if (error.code === ASSUAN_ERR.timeout) {
    return entryFailed('PIN entry timed out', 'Run the command again and answer the PIN dialog', error)
  }
  return entryFailed(
    `pinentry "${program}" failed: ${error.text} (${error.code})`,
    'Check that pinentry works in this session (DISPLAY or a tty), or use another PIN source',
    error,
  )
}

/**
 * The environment a helper program (pinentry, notify-send) gets: the agent's own, minus every
 * variable a token reads its PIN from (`pin-env`), so a CI secret never reaches a child process.
 */
export function childEnvironment(
  base: NodeJS.ProcessEnv,
  secretVariables: Iterable<string>,
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base }
  for (const name of secretVariables) delete env[name]
  return env
}
