/** Reads cargo's one request line from stdin, bounded in size (builtins only). */
import { LIMITS } from '../lib/limits.js'

export type LineResult =
  { kind: 'line'; line: string } | { kind: 'too-large' } | { kind: 'eof'; partialBytes: number }

export function readRequestLine(
  input: NodeJS.ReadableStream = process.stdin,
  maxBytes: number = LIMITS.cargoLineMaxBytes,
): Promise<LineResult> {
  return new Promise((resolve) => {
    const parts: Buffer[] = []
    let length = 0
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
