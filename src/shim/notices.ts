/**
 * The agent's events, shown on stderr (cargo's terminal; stdout is the protocol). A pending touch is
 * announced once, in full (what is being approved); on a terminal a short countdown line follows,
 * redrawn in place with `\r` and cut to the terminal's width so a redraw never wraps (a wrapped line
 * cannot be redrawn: each `\r` returns only to the start of its last row), and erased when the touch
 * comes. Output that is not a terminal (a log, an IDE) gets one line per event and no redraws.
 */
import type { EventMessage } from '../protocol/frames.js'

/** Width used when stderr is a terminal that does not report one. */
const FALLBACK_COLUMNS = 80

export class Notices {
  readonly #name: string
  #countdown: NodeJS.Timeout | undefined
  #lineOpen = false

  constructor(name: string) {
    this.#name = name
  }

  say(text: string): void {
    this.#clearLine()
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
    this.stop()
    const left = (): number => Math.max(0, Math.round((deadline - Date.now()) / 1000))
    if (process.stderr.isTTY !== true) {
      this.say(`${text} (${left()} s to touch)`)
      return
    }
    this.say(text)
    const draw = (): void => {
      const columns = process.stderr.columns > 0 ? process.stderr.columns : FALLBACK_COLUMNS
      // One column short of the width: writing the last column makes some terminals wrap early.
      const line = `${this.#name}: touch the device, ${left()} s left`.slice(0, Math.max(1, columns - 1))
      this.#write(`\r${line}\u001b[K`)
      this.#lineOpen = true
    }
    draw()
    this.#countdown = setInterval(draw, 1_000)
    this.#countdown.unref()
  }

  /** Ends a countdown and erases its line (the signature came back, a question comes, or the request ended). */
  stop(): void {
    if (this.#countdown !== undefined) clearInterval(this.#countdown)
    this.#countdown = undefined
    this.#clearLine()
  }

  #clearLine(): void {
    if (this.#lineOpen) this.#write('\r\u001b[K')
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
