/**
 * The parts of the Assuan protocol (libassuan, "Assuan" chapter of the GnuPG manual) that a
 * pinentry client needs: percent-escaping of arguments, splitting the server's output into lines,
 * decoding `D` lines straight into a Buffer (so a PIN never becomes a JS string, which could not be
 * wiped), and the error codes pinentry uses.
 */
import { LIMITS } from '../lib/limits.js'

/** gpg-error codes pinentry answers with (source 5 = GPG_ERR_SOURCE_PINENTRY, shifted by 24). */
export const ASSUAN_ERR = Object.freeze({
  /** GPG_ERR_CANCELED: the user pressed Cancel or closed the dialog. */
  cancelled: 83886179,
  /** GPG_ERR_NOT_CONFIRMED: CONFIRM answered with the "no" button. */
  notConfirmed: 83886194,
  /** GPG_ERR_TIMEOUT: SETTIMEOUT elapsed. */
  timeout: 83886142,
})

/**
 * Escapes an argument for a command line: `%`, CR and LF must be escaped (Assuan); other control
 * characters are escaped too so a crate name cannot smuggle a second command into the line.
 */
export function escapeArgument(text: string): string {
  let out = ''
  for (const ch of text) {
    const code = ch.codePointAt(0) ?? 0
    if (ch === '%' || code < 0x20 || code === 0x7f)
      out += `%${code.toString(16).toUpperCase().padStart(2, '0')}`
    else out += ch
  }
  return out
}

/**
 * One command line, `COMMAND escaped-argument\n`, cut to the Assuan line limit without splitting a
 * UTF-8 sequence or a `%XX` escape (a cut description is better than a protocol error).
 */
export function commandLine(command: string, argument?: string): Buffer {
  const max = LIMITS.assuanLineMaxBytes - 1
  let text = argument === undefined ? command : `${command} ${escapeArgument(argument)}`
  if (Buffer.byteLength(text, 'utf8') > max) {
    const ellipsis = '…'
    while (Buffer.byteLength(text + ellipsis, 'utf8') > max) text = text.slice(0, -1)
    text = text.replace(/%[0-9A-F]?$/, '')
    // A lone high surrogate left by slice() would be encoded as U+FFFD: drop it.
    if (/[\uD800-\uDBFF]$/.test(text)) text = text.slice(0, -1)
    text += ellipsis
  }
  return Buffer.from(`${text}\n`, 'utf8')
}

/** Decodes the payload of a `D` line (`%25`, `%0A`, `%0D`, any `%XX`) into a new Buffer. */
export function decodeData(escaped: Buffer): Buffer {
  const out = Buffer.alloc(escaped.length)
  let n = 0
  for (let i = 0; i < escaped.length; i++) {
    const byte = escaped[i] ?? 0
    const high = hexValue(escaped[i + 1])
    const low = hexValue(escaped[i + 2])
    if (byte === 0x25 && high >= 0 && low >= 0) {
      out[n++] = (high << 4) | low
      i += 2
    } else {
      out[n++] = byte
    }
  }
  const result = Buffer.from(out.subarray(0, n))
  out.fill(0)
  return result
}

/** The value of an ASCII hex digit, or -1 for any other byte (and past the end). */
function hexValue(byte: number | undefined): number {
  const digit = byte === undefined ? '' : String.fromCharCode(byte)
  return /^[0-9A-Fa-f]$/.test(digit) ? Number.parseInt(digit, 16) : -1
}

export type ServerLine =
  | { readonly type: 'ok'; readonly text: string }
  | { readonly type: 'err'; readonly code: number; readonly text: string }
  /** Raw escaped payload; the receiver decodes and wipes it. */
  | { readonly type: 'data'; readonly payload: Buffer }
  | { readonly type: 'status'; readonly text: string }
  | { readonly type: 'inquire'; readonly text: string }
  | { readonly type: 'comment' }
  | { readonly type: 'unknown'; readonly text: string }

/** Classifies one server line (without its `\n`). */
export function parseServerLine(line: Buffer): ServerLine {
  const startsWith = (prefix: string): boolean =>
    line.length >= prefix.length &&
    line.subarray(0, prefix.length).toString('latin1') === prefix &&
    (line.length === prefix.length || line[prefix.length] === 0x20)
  if (startsWith('D')) return { type: 'data', payload: line.subarray(2) }
  const text = line.toString('utf8')
  if (startsWith('OK')) return { type: 'ok', text: text.slice(3) }
  if (startsWith('ERR')) {
    const match = /^ERR (\d+) ?(.*)$/.exec(text)
    return { type: 'err', code: match === null ? 0 : Number(match[1]), text: match?.[2] ?? text }
  }
  if (startsWith('S')) return { type: 'status', text: text.slice(2) }
  if (startsWith('INQUIRE')) return { type: 'inquire', text: text.slice(8) }
  if (line[0] === 0x23) return { type: 'comment' }
  return { type: 'unknown', text }
}

/**
 * Splits a byte stream into lines. Consumed bytes are overwritten: the stream may carry a PIN.
 * Lines longer than the Assuan limit are a protocol violation and reported as such.
 */
export class LineSplitter {
  #pending: Buffer = Buffer.alloc(0)

  push(chunk: Buffer): Buffer[] {
    const joined = Buffer.concat([this.#pending, chunk])
    this.#pending.fill(0)
    chunk.fill(0)
    const lines: Buffer[] = []
    let start = 0
    for (let i = 0; i < joined.length; i++) {
      if (joined[i] === 0x0a) {
        lines.push(Buffer.from(joined.subarray(start, i)))
        start = i + 1
      }
    }
    this.#pending = Buffer.from(joined.subarray(start))
    joined.fill(0)
    return lines
  }

  get pendingBytes(): number {
    return this.#pending.length
  }

  wipe(): void {
    this.#pending.fill(0)
    this.#pending = Buffer.alloc(0)
  }
}
