/**
 * Talking to the human on the controlling terminal. cargo gives the provider no tty on stdin/stdout
 * (docs/cargo-protocol.md §1.1), so the PIN prompt opens /dev/tty itself, as cargo's own helper crate does
 * (`credential/cargo-credential/src/stdio.rs`); raw mode, nothing echoed.
 */
import { closeSync, openSync, writeSync } from 'node:fs'
import { ReadStream } from 'node:tty'

import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'

function noTty(cause?: unknown): AgentError {
  return new AgentError('PIN_ENTRY_FAILED', 'no tty: cargo was started without a terminal to ask on', {
    remedy: 'Run cargo from a terminal, or configure a non-interactive pin-source (env, file) for this token',
    cause,
  })
}

/** Reads keys in raw mode until Enter, printing nothing for typed characters. */
function readRaw(prompt: string): Promise<Buffer> {
  let fd: number
  try {
    fd = openSync('/dev/tty', 'r+')
  } catch (error) {
    return Promise.reject(noTty(error))
  }
  let input: ReadStream
  try {
    input = new ReadStream(fd)
  } catch (error) {
    closeSync(fd)
    return Promise.reject(noTty(error))
  }
  return new Promise((resolve, reject) => {
    // One buffer for the longest PIN: a backspaced byte is wiped in place, no keystroke leaves a copy.
    const typed = Buffer.alloc(LIMITS.pinMaxBytes)
    let length = 0
    const done = (error: AgentError | undefined): void => {
      input.removeAllListeners('data')
      try {
        input.setRawMode(false)
        writeSync(fd, '\r\n')
      } catch {
        // terminal went away
      }
      // libuv reopens the terminal and dup2()s the new descriptor over ours (`uv_tty_init` in libuv
      // src/unix/tty.c); closing the stream closes only the new one, so ours is closed here.
      input.once('close', () => {
        try {
          closeSync(fd)
        } catch {
          // already closed
        }
      })
      input.destroy()
      if (error === undefined) resolve(typed.subarray(0, length))
      else {
        typed.fill(0)
        reject(error)
      }
    }
    input.on('data', (chunk: Buffer) => {
      for (const byte of chunk) {
        if (byte === 0x03 || (byte === 0x04 && length === 0) || byte === 0x1b) {
          done(
            new AgentError('PIN_ENTRY_FAILED', 'Entry cancelled on the terminal', {
              remedy: 'Run the cargo command again',
            }),
          )
          return
        }
        if (byte === 0x0d || byte === 0x0a) {
          done(undefined)
          return
        }
        if (byte === 0x7f || byte === 0x08) {
          length = Math.max(0, length - 1)
          typed[length] = 0
          continue
        }
        if (byte < 0x20 || length >= typed.length) continue
        typed[length++] = byte
      }
    })
    input.on('error', (error) => done(noTty(error)))
    try {
      // Raw (no echo) before the prompt appears: a fast typist must never see the PIN echoed.
      input.setRawMode(true)
      writeSync(fd, prompt)
    } catch (error) {
      done(noTty(error))
    }
  })
}

export async function askPinOnTty(prompt: string): Promise<string> {
  const bytes = await readRaw(prompt)
  const pin = bytes.toString('utf8')
  bytes.fill(0)
  return pin
}
