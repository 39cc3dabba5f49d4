/** Reads cargo's one request line from stdin, bounded in size (builtins only). */
import { LIMITS } from '../lib/limits.js'

export type LineResult =
  { kind: 'line'; line: string } | { kind: 'too-large' } | { kind: 'eof'; partialBytes: number }

/** The bytes before the first newline, chunk by chunk: a result once the line is complete or too long. */
class LineCollector {
  readonly #parts: Buffer[] = []
  length = 0

  constructor(readonly maxBytes: number) {}

  push(chunk: Buffer): LineResult | undefined {
    const newline = chunk.indexOf(0x0a)
    const take = newline === -1 ? chunk : chunk.subarray(0, newline)
    if (this.length + take.length > this.maxBytes) return { kind: 'too-large' }
    this.#parts.push(Buffer.from(take))
    this.length += take.length
    if (newline === -1) return undefined
    return { kind: 'line', line: Buffer.concat(this.#parts, this.length).toString('utf8').replace(/\r$/, '') }
  }
}

/**
 * Blocking reads on fd 0: cargo's stdin is a pipe and the shim has nothing else to do until the
 * request line arrives, and not touching `process.stdin` spares its stream set-up (~5 ms of the
 * start-up budget). A non-blocking fd 0 (EAGAIN) hands over to the stream reader with what was read.
 */
export async function readRequestLineFast(maxBytes: number = LIMITS.cargoLineMaxBytes): Promise<LineResult> {
  const { readSync } = await import('node:fs')
  const chunk = Buffer.alloc(16 * 1024)
  const line = new LineCollector(maxBytes)
  for (;;) {
    let n: number
    try {
      n = readSync(0, chunk, 0, chunk.length, null)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'EAGAIN') return readRequestLine(process.stdin, line)
      if (code !== 'EOF') return { kind: 'eof', partialBytes: line.length }
      n = 0
    }
    if (n === 0) return { kind: 'eof', partialBytes: line.length }
    const result = line.push(chunk.subarray(0, n))
    if (result !== undefined) return result
  }
}

function readRequestLine(input: NodeJS.ReadableStream, line: LineCollector): Promise<LineResult> {
  return new Promise((resolve) => {
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
      const result = line.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)
      if (result !== undefined) finish(result)
    }
    const onEnd = (): void => finish({ kind: 'eof', partialBytes: line.length })
    input.on('data', onData)
    input.once('end', onEnd)
    input.once('error', onEnd)
  })
}
