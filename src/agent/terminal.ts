/**
 * The agent's own yes/no on the requester's controlling terminal (docs/design.md §4, rule 2): the
 * agent opens the terminal device the kernel named for the requester, writes the question and reads
 * the answer itself, so the client that asked never sees or answers it.
 *
 * Limits, also in SECURITY.md: whoever holds the terminal's master side (the terminal emulator,
 * tmux `send-keys`, `TIOCSTI` where the kernel still allows it) can type the answer, and a
 * same-user process can give itself a fresh pseudo-terminal to be asked on. The terminal is put in
 * raw mode for the question and restored afterwards; other readers of the same terminal (a shell
 * waiting for its foreground job does not read) could take the keystroke first, which only turns
 * the answer into "no" (nothing typed for us before the timeout).
 *
 * References: `man 2 open` (O_NOCTTY: opening a terminal does not make it ours), `man 3 termios`.
 */
import { constants, closeSync, openSync, writeSync } from 'node:fs'
import { ReadStream } from 'node:tty'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'

/** One question at a time per terminal: two requests must not read each other's keystrokes. */
const busy = new Map<string, Promise<unknown>>()

function serialise<T>(path: string, run: () => Promise<T>): Promise<T> {
  const before = busy.get(path) ?? Promise.resolve()
  const next = before.then(run, run)
  const settled = next.catch(() => undefined)
  busy.set(path, settled)
  void settled.then(() => {
    if (busy.get(path) === settled) busy.delete(path)
  })
  return next
}

/**
 * Asks `question [y/N]` on `path`. True only for "y"/"Y"; any other key, Ctrl-C or the timeout is
 * false. Rejects (PIN_ENTRY_FAILED) only when the terminal cannot be opened or set to raw mode.
 */
export function confirmOnTerminal(
  path: string,
  question: string,
  signal: AbortSignal,
  timeoutMs: number = LIMITS.terminalConfirmTimeoutMs,
): Promise<boolean> {
  return serialise(path, () => ask(path, question, signal, timeoutMs))
}

function ask(path: string, question: string, signal: AbortSignal, timeoutMs: number): Promise<boolean> {
  if (signal.aborted) return Promise.reject(toAgentError(signal.reason))
  let fd: number
  let input: ReadStream
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_NOCTTY)
  } catch (error) {
    return Promise.reject(unusable(path, error))
  }
  try {
    input = new ReadStream(fd)
    input.setRawMode(true)
  } catch (error) {
    closeSync(fd)
    return Promise.reject(unusable(path, error))
  }
  return new Promise<boolean>((resolve) => {
    let finished = false
    const done = (answer: boolean, echo: string): void => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      input.removeAllListeners('data')
      try {
        input.setRawMode(false)
        writeSync(fd, `${echo}\r\n`)
      } catch {
        // the terminal went away
      }
      // libuv reopens a pty slave and dup2()s the new descriptor over ours (`uv_tty_init` in libuv
      // src/unix/tty.c); closing the handle closes only the new one, so ours is closed here.
      input.once('close', () => {
        try {
          closeSync(fd)
        } catch {
          // already closed
        }
      })
      input.destroy()
      resolve(answer)
    }
    const onAbort = (): void => done(false, ' (request ended)')
    const timer = setTimeout(() => done(false, ' (no answer: refused)'), timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    input.on('error', () => done(false, ''))
    input.on('data', (chunk: Buffer) => {
      const key = chunk[0]
      done(key === 0x79 || key === 0x59, key === 0x79 || key === 0x59 ? 'y' : 'n')
    })
    try {
      writeSync(fd, `\r\ncargo-pkcs11-agent: ${question} [y/N] `)
    } catch {
      done(false, '')
    }
  })
}

function unusable(path: string, cause: unknown): AgentError {
  return new AgentError(
    'PIN_ENTRY_FAILED',
    `The agent cannot ask on the terminal ${path}: ${(cause as Error).message}`,
    {
      cause,
      remedy:
        'Run cargo from a terminal the agent can open (same user), or set confirm = "touch" for this registry (a key with a touch policy)',
    },
  )
}
