/**
 * Announces a pending touch. SoftHSM and TPMs sign in milliseconds; a signature that has not come
 * back after `afterMs` means the device is waiting for a human (YubiKey touch policy), so the human
 * is told what they are approving, on the terminal (through the shim) and on the desktop. A touch
 * that never comes ends in TOUCH_TIMEOUT at the deadline.
 */
import { AgentError } from '../lib/errors.js'
import { describeIntent, tell, type Prompter } from './intent.js'
import type { Intent } from '../cargo/intent.js'
import type { DesktopNotifier } from './notify.js'
import { systemClock, type Clock } from './pin-cache.js'

export interface TouchNoticeOptions {
  readonly afterMs: number
  /** Total wait, counted from the call, before TOUCH_TIMEOUT. */
  readonly deadlineMs: number
  readonly intent: Intent
  readonly tokenDescription: string
  readonly prompter: Prompter
  readonly notifier?: DesktopNotifier
  readonly clock?: Clock
}

/**
 * Resolves or rejects like `signing`; raises the touch notice when it is still pending after
 * `afterMs`; rejects with TOUCH_TIMEOUT when it is still pending at the deadline. The device call
 * itself cannot be cancelled from JS (its libuv worker keeps waiting), so a late result is dropped.
 */
export async function withTouchNotice<T>(signing: Promise<T>, options: TouchNoticeOptions): Promise<T> {
  const clock = options.clock ?? systemClock
  const deadline = clock() + options.deadlineMs
  let noticeTimer: NodeJS.Timeout | undefined
  let deadlineTimer: NodeJS.Timeout | undefined
  let noticed = false
  const timeout = new Promise<never>((_, reject) => {
    noticeTimer = setTimeout(() => {
      noticed = true
      const { intent, tokenDescription } = options
      const text = `Touch ${tokenDescription} to ${describeIntent(intent)}`
      tell(options.prompter, { kind: 'touch-pending', text, intent, tokenDescription, deadline })
      void options.notifier?.notify('Touch your security key', text)
    }, options.afterMs)
    deadlineTimer = setTimeout(() => {
      reject(
        new AgentError(
          'TOUCH_TIMEOUT',
          `No touch received on ${options.tokenDescription} within ${seconds(options.deadlineMs)} s, so nothing was signed`,
          {
            remedy:
              'Run the command again and touch the key when it blinks (or set confirm = "prompt" for keys without a touch policy)',
            data: { waitedMs: options.deadlineMs, noticeShown: noticed },
          },
        ),
      )
    }, options.deadlineMs)
  })
  signing.catch(() => undefined) // a rejection after the deadline must not become unhandled
  try {
    return await Promise.race([signing, timeout])
  } finally {
    clearTimeout(noticeTimer)
    clearTimeout(deadlineTimer)
  }
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? String(ms / 1000) : (ms / 1000).toFixed(1)
}
