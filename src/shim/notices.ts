/**
 * The agent's events, shown on stderr (cargo's terminal; stdout is the protocol). A pending touch
 * gets a countdown to its deadline, refreshed in place when stderr is a terminal.
 */
import type { EventMessage } from '../protocol/frames.js'

export class Notices {
  readonly #name: string
  #countdown: NodeJS.Timeout | undefined
  #lineOpen = false

  constructor(name: string) {
    this.#name = name
  }

  say(text: string): void {
    this.#closeLine()
    this.#write(`${this.#name}: ${text}\n`)
  }

  event(event: EventMessage): void {
    const text = event.data['text']
    if (typeof text !== 'string' || text === '') return
    const deadline = event.data['deadline']
    if (event.event !== 'touch-pending' || typeof deadline !== 'number') {
      this.say(text)
      return
    }
    const line = (): string =>
      `${this.#name}: ${text} (${Math.max(0, Math.round((deadline - Date.now()) / 1000))} s left)`
    this.stop()
    if (process.stderr.isTTY !== true) {
      this.say(line())
      return
    }
    this.#write(`\r${line()}\u001b[K`)
    this.#lineOpen = true
    this.#countdown = setInterval(() => this.#write(`\r${line()}\u001b[K`), 1_000)
    this.#countdown.unref()
  }

  /** Ends a countdown (the signature came back, or the request ended). */
  stop(): void {
    if (this.#countdown !== undefined) clearInterval(this.#countdown)
    this.#countdown = undefined
    this.#closeLine()
  }

  #closeLine(): void {
    if (this.#lineOpen) this.#write('\n')
    this.#lineOpen = false
  }

  #write(text: string): void {
    try {
      process.stderr.write(text)
    } catch {
      // stderr closed: nobody to tell
    }
  }
}
