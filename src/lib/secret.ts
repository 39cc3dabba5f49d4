import { inspect } from 'node:util'

const REDACTED = '[REDACTED]'

/**
 * A value that must never reach a log, an error message, argv or a file: PINs, and issued tokens
 * in diagnostics. Every way Node turns an object into text (`String()`, template literals,
 * `JSON.stringify`, `util.inspect`/`console.log`) prints `[REDACTED]`; the value comes out only
 * through an explicit `expose()`, which is easy to grep for in review.
 * (Modelled on cargo's `credential/cargo-credential/src/secret.rs`.)
 */
export class Secret<T> {
  readonly #value: T

  constructor(value: T) {
    this.#value = value
  }

  expose(): T {
    return this.#value
  }

  toString(): string {
    return REDACTED
  }

  toJSON(): string {
    return REDACTED
  }

  [inspect.custom](): string {
    return REDACTED
  }

  get [Symbol.toStringTag](): string {
    return 'Secret'
  }
}

/** A PIN held in memory. The bytes are wiped when the PIN is forgotten (see `wipe`). */
export class Pin extends Secret<Buffer> {
  static fromString(text: string): Pin {
    return new Pin(Buffer.from(text, 'utf8'))
  }

  get length(): number {
    return this.expose().length
  }

  /** Overwrites the PIN bytes. Strings handed to us earlier cannot be wiped; buffers can. */
  wipe(): void {
    this.expose().fill(0)
  }
}
