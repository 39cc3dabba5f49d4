/** Reads cargo's one request line from stdin, bounded in size (builtins only). */
import { LIMITS } from '../lib/limits.js'

export type LineResult =
  { kind: 'line'; line: string } | { kind: 'too-large' } | { kind: 'eof'; partialBytes: number }

/**
 * Blocking reads on fd 0: cargo's stdin is a pipe and the shim has nothing else to do until the
 * request line arrives, and not touching `process.stdin` spares its stream set-up (~5 ms of the
 * start-up budget). A non-blocking fd 0 (EAGAIN) hands over to the stream reader with what was read.
 */
export async function readRequestLineFast(maxBytes: number = LIMITS.cargoLineMaxBytes): Promise<LineResult> {
  const { readSync } = await import('node:fs')
  const chunk = Buffer.alloc(16 * 1024)
  const parts: Buffer[] = []
  let length = 0
  for (;;) {
    let n: number
    try {
      n = readSync(0, chunk, 0, chunk.length, null)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'EAGAIN') return readRequestLine(process.stdin, maxBytes, Buffer.concat(parts, length))
      if (code !== 'EOF') return { kind: 'eof', partialBytes: length }
      n = 0
    }
    if (n === 0) return { kind: 'eof', partialBytes: length }
    const newline = chunk.subarray(0, n).indexOf(0x0a)
    const take = newline === -1 ? n : newline
    if (length + take > maxBytes) return { kind: 'too-large' }
    parts.push(Buffer.from(chunk.subarray(0, take)))
    length += take
    if (newline !== -1)
      return { kind: 'line', line: Buffer.concat(parts, length).toString('utf8').replace(/\r$/, '') }
  }
}

export function readRequestLine(
  input: NodeJS.ReadableStream = process.stdin,
  maxBytes: number = LIMITS.cargoLineMaxBytes,
  prefix: Buffer = Buffer.alloc(0),
): Promise<LineResult> {
  return new Promise((resolve) => {
    const parts: Buffer[] = prefix.length > 0 ? [prefix] : []
    let length = prefix.length
    let done = false
    const finish = (result: LineResult): void => {
      if (done) return
      done = true
      input.removeListener('data', onData)
      input.removeListener('end', onEnd)
      input.removeListener('error', onEnd)
      input.pause()
      resolve(result)
    }
    const onData = (chunk: Buffer | string): void => {
      const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
      const newline = buffer.indexOf(0x0a)
      const take = newline === -1 ? buffer : buffer.subarray(0, newline)
      if (length + take.length > maxBytes) {
        finish({ kind: 'too-large' })
        return
      }
      parts.push(take)
      length += take.length
      if (newline !== -1)
        finish({ kind: 'line', line: Buffer.concat(parts, length).toString('utf8').replace(/\r$/, '') })
    }
    const onEnd = (): void => finish({ kind: 'eof', partialBytes: length })
    input.on('data', onData)
    input.once('end', onEnd)
    input.once('error', onEnd)
  })
}
