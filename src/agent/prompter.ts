/**
 * The policy `Prompter` for one request. Notices become events (printed on the shim's stderr) and a
 * PIN question a query the shim answers from the user's terminal. A yes/no never goes to the client:
 * the agent asks it on the requester's controlling terminal as the kernel reports it
 * (src/agent/terminal.ts; docs/design.md §4, rule 2).
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { lockMemory } from '../lib/peercred.js'
import { Pin } from '../lib/secret.js'
import type { Notice, PinPrompt, Prompter } from '../policy/intent.js'
import type { Intent } from '../cargo/intent.js'
import type { EventName } from '../protocol/methods.js'
import type { RequestContext } from './server.js'
import { confirmOnTerminal } from './terminal.js'

const EVENT_FOR: Record<Notice['kind'], EventName> = {
  'touch-pending': 'touch-pending',
  'waiting-for-pin': 'pin-needed',
  'waiting-for-confirmation': 'confirm-waiting',
  'pin-final-try': 'progress',
  info: 'progress',
}

export class SocketPrompter implements Prompter {
  readonly interactive: boolean
  readonly terminal: string | undefined
  readonly #context: RequestContext
  readonly #onNotice: ((notice: Notice) => void) | undefined

  /**
   * `interactive`: the client declared a terminal for PINs. `terminal`: the requester's controlling
   * terminal from the kernel (src/agent/requester.ts), undefined when headless or there is none.
   */
  constructor(
    context: RequestContext,
    interactive: boolean,
    terminal: string | undefined,
    onNotice?: (notice: Notice) => void,
  ) {
    this.#context = context
    this.interactive = interactive
    this.terminal = terminal
    this.#onNotice = onNotice
  }

  async askPin(request: PinPrompt): Promise<Pin> {
    if (!this.interactive) throw noTerminal()
    const answer = await this.#context.ask('pin', {
      tokenDescription: request.tokenDescription,
      reason: request.reason,
      prompt: `PIN for ${request.tokenDescription}: `,
      ...(request.triesLeft === undefined ? {} : { triesLeft: request.triesLeft }),
    })
    const pin = answer['pin']
    if (typeof pin !== 'string' || pin === '')
      throw new AgentError('PIN_ENTRY_FAILED', 'No PIN was entered', {
        remedy: 'Type the PIN when asked, or configure pin-source = "env"/"file" for unattended use',
      })
    if (Buffer.byteLength(pin, 'utf8') > LIMITS.pinMaxBytes)
      throw new AgentError('PIN_INVALID', 'The PIN entered is too long', { remedy: 'Type the token PIN' })
    const held = Pin.fromString(pin)
    // Best effort: keep the cached PIN's pages out of swap (RLIMIT_MEMLOCK may refuse).
    lockMemory(held.expose())
    return held
  }

  async confirm(_intent: Intent, text: string): Promise<boolean> {
    if (this.terminal === undefined)
      throw new AgentError('PIN_ENTRY_FAILED', 'The requester has no terminal to ask on', {
        remedy: 'Run cargo from a terminal, or set confirm = "touch" for this registry',
      })
    return confirmOnTerminal(this.terminal, text, this.#context.signal)
  }

  notify(notice: Notice): void {
    const { kind, ...rest } = notice
    const data: Record<string, unknown> = { ...rest, kind }
    if ('intent' in notice) data['intent'] = { ...notice.intent, requester: { ...notice.intent.requester } }
    this.#context.emit(EVENT_FOR[kind] ?? 'progress', data)
    this.#onNotice?.(notice)
  }
}

function noTerminal(): AgentError {
  return new AgentError(
    'PIN_REQUIRED',
    'A PIN is needed but the request came from a program without a terminal (a script or an IDE)',
    {
      remedy:
        'Run cargo from a terminal; or, for this registry, use a key with a touch policy (confirm = "touch"), ' +
        'or give the agent a pinentry it can show (pin-source = "pinentry", the agent in your desktop session); ' +
        'for CI set confirm = "none" and pin-source = "env" or "file"',
    },
  )
}
