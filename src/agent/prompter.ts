/**
 * The policy `Prompter` for one request, over the requesting shim's socket: notices become events
 * (printed on the shim's stderr), PIN and yes/no questions become queries the shim answers from the
 * user's terminal.
 */
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { Pin } from '../lib/secret.js'
import type { Notice, PinPrompt, Prompter } from '../policy/intent.js'
import type { Intent } from '../cargo/intent.js'
import type { EventName } from '../protocol/methods.js'
import type { RequestContext } from './server.js'

const EVENT_FOR: Record<Notice['kind'], EventName> = {
  'touch-pending': 'touch-pending',
  'waiting-for-pin': 'pin-needed',
  'waiting-for-confirmation': 'confirm-waiting',
  'pin-final-try': 'progress',
  info: 'progress',
}

export class SocketPrompter implements Prompter {
  readonly interactive: boolean
  readonly #context: RequestContext
  readonly #onNotice: ((notice: Notice) => void) | undefined

  constructor(context: RequestContext, interactive: boolean, onNotice?: (notice: Notice) => void) {
    this.#context = context
    this.interactive = interactive
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
    return Pin.fromString(pin)
  }

  async confirm(intent: Intent, text: string): Promise<boolean> {
    if (!this.interactive) throw noTerminal()
    const answer = await this.#context.ask('confirm', { text, intent: intentData(intent) })
    return answer['confirmed'] === true
  }

  notify(notice: Notice): void {
    const { kind, ...rest } = notice
    const data: Record<string, unknown> = { ...rest, kind }
    if ('intent' in notice) data['intent'] = intentData(notice.intent)
    this.#context.emit(EVENT_FOR[kind] ?? 'progress', data)
    this.#onNotice?.(notice)
  }
}

function intentData(intent: Intent): Record<string, unknown> {
  return { ...intent, requester: { ...intent.requester } }
}

function noTerminal(): AgentError {
  return new AgentError(
    'PIN_REQUIRED',
    'A PIN or confirmation is needed but the request came from a program without a terminal (a script or an IDE)',
    {
      remedy:
        'Run cargo from a terminal; or, for this registry, use a key with a touch policy (confirm = "touch"), ' +
        'or give the agent a pinentry it can show (pin-source = "pinentry", the agent in your desktop session); ' +
        'for CI set confirm = "none" and pin-source = "env" or "file"',
    },
  )
}
