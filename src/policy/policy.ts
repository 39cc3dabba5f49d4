/**
 * The policy stage's decisions, called in order by the agent's pipeline (src/agent/pipeline/run.ts):
 *
 *   const approval = await policy.approve(intent, prompter, registry, token)  // rate limit + confirmation
 *   await policy.ensureLoggedIn(device, token, prompter, intent)            // cache → source → one C_Login
 *   const token = await policy.withTouchNotice(sign(), { intent, prompter, tokenDescription })
 *
 * `Policy` wires the parts: src/policy/confirm.ts, login.ts, pin-source.ts, touch.ts. Decisions and
 * process I/O only (pinentry, notify-send): no files, no sockets, no audit log
 * (test/unit/layering.test.ts).
 */
import type { Intent } from '../cargo/intent.js'
import type { Pin } from '../lib/secret.js'
import { DEFAULT_POLICY_CONFIG, type PolicyConfig } from './config.js'
import { Confirmer } from './confirm.js'
import { tell, type Prompter } from './intent.js'
import { Login, RejectedPins } from './login.js'
import { desktopNotifier, silentNotifier, type DesktopNotifier } from './notify.js'
import { PinCache, systemClock, type Clock } from './pin-cache.js'
import type { PinSources } from './pin-source.js'
import { childEnvironment, type PinentryOptions } from './pinentry.js'
import { MutationRateLimiter } from './rate-limit.js'
import { withTouchNotice as touchNotice } from './touch.js'

export interface PolicyDeps {
  readonly clock?: Clock
  /** Environment for `pin-env` lookups and for child processes; defaults to process.env. */
  readonly env?: NodeJS.ProcessEnv
  /** Reads a `pin-file` (refusing group/world-readable files): `readPinFile` from src/lib/pin-file.ts. */
  readonly readPinFile: (path: string) => Promise<Pin>
  /** Defaults to notify-send / osascript when `notify` is on. */
  readonly notifier?: DesktopNotifier
  /** The running limiter, kept across a reload: a SIGHUP must not empty the sliding hour. */
  readonly limiter?: MutationRateLimiter
  /** Every `pin-env` variable in the config: removed from the environment of pinentry and notify-send. */
  readonly secretEnvVariables?: readonly string[]
  /** The previous policy's memory of rejected PINs, on a reload (src/policy/login.ts `RejectedPins`). */
  readonly rejectedPins?: RejectedPins
  /** Debug events (token ids, reasons, codes: never a PIN). */
  readonly log?: (event: string, data: Readonly<Record<string, string | number | boolean>>) => void
}

export class Policy {
  readonly config: PolicyConfig
  readonly pinCache: PinCache
  readonly limiter: MutationRateLimiter
  readonly rejectedPins: RejectedPins
  readonly #deps: PolicyDeps
  readonly #env: NodeJS.ProcessEnv
  readonly #notifier: DesktopNotifier
  readonly #login: Login
  /** Rate limit and confirmation (src/policy/confirm.ts). */
  readonly approve: Confirmer['approve']
  /** One yes/no on a channel the requester does not hold (keygen --force over the socket). */
  readonly confirm: Confirmer['ask']
  /** Cached PIN → the token's PIN source → at most one C_Login (src/policy/login.ts). */
  readonly ensureLoggedIn: Login['ensureLoggedIn']

  /** `config` comes validated from the agent (src/agent/policy-config.ts); unset fields take the defaults. */
  constructor(config: Partial<PolicyConfig>, deps: PolicyDeps) {
    this.config = Object.freeze({ ...DEFAULT_POLICY_CONFIG, ...config })
    this.#deps = deps
    this.#env = deps.env ?? process.env
    const clock = deps.clock ?? systemClock
    const log = (event: string, data: Readonly<Record<string, string | number | boolean>>): void =>
      deps.log?.(event, data)
    this.pinCache = new PinCache({
      idleSeconds: this.config.pinCacheIdleSeconds,
      maxSeconds: this.config.pinCacheMaxSeconds,
      clock,
      onForget: (tokenId, reason) => log('pin-forgotten', { token: tokenId, reason }),
    })
    this.limiter = deps.limiter ?? new MutationRateLimiter({ clock })
    this.rejectedPins = deps.rejectedPins ?? new RejectedPins()
    this.#notifier =
      deps.notifier ??
      (this.config.notify && !this.config.headless
        ? desktopNotifier({ env: this.#childEnv(), onFailure: (reason) => log('notify-failed', { reason }) })
        : silentNotifier)
    const confirmer = new Confirmer({
      config: this.config,
      limiter: this.limiter,
      pinentry: (intent, program) => this.#pinentry(intent, program),
    })
    this.#login = new Login({
      headless: this.config.headless,
      pinCache: this.pinCache,
      confirmer,
      pinSources: (prompter, intent) => this.#pinSources(prompter, intent),
      log,
      rejected: this.rejectedPins,
    })
    this.approve = confirmer.approve.bind(confirmer)
    this.confirm = confirmer.ask.bind(confirmer)
    this.ensureLoggedIn = this.#login.ensureLoggedIn.bind(this.#login)
  }

  /** Wraps a device signature with the touch notice and the touch deadline from the config. */
  async withTouchNotice<T>(
    signing: Promise<T>,
    context: { intent: Intent; prompter: Prompter; tokenDescription: string },
  ): Promise<T> {
    return touchNotice(signing, {
      afterMs: this.config.touchNoticeAfterMs,
      deadlineMs: this.config.touchTimeoutMs,
      intent: context.intent,
      tokenDescription: context.tokenDescription,
      prompter: context.prompter,
      notifier: this.#notifier,
    })
  }

  /**
   * The PIN a human gave for `tokenId`, if still cached: for Device's `cachedPin` option (log in again
   * after the token was reinserted, without asking). Counts as a use for the idle lifetime.
   */
  cachedPin(tokenId: string): Pin | undefined {
    return this.pinCache.get(tokenId)
  }

  /**
   * `cargo-pkcs11-agent lock`: forget every PIN; the agent also logs its sessions out. Which env/file
   * PINs were rejected is kept (src/policy/login.ts `RejectedPins`).
   */
  lock(): number {
    return this.pinCache.clear('lock')
  }

  /** SIGHUP: forget every PIN (the agent also releases the devices). */
  onSighup(): number {
    return this.pinCache.clear('sighup')
  }

  /**
   * The device reports that the token refused the PIN held for `tokenId` (Device `pin-rejected`):
   * the value is recorded as rejected (src/policy/login.ts) and forgotten. True when one was held.
   */
  onPinRejected(tokenId: string): boolean {
    const held = this.pinCache.get(tokenId)
    if (held !== undefined) this.#login.rejected(tokenId, held)
    return this.pinCache.forget(tokenId, 'wrong-pin')
  }

  /**
   * The token was removed, or its p11-kit server went away (`disconnected`): its PIN goes with it.
   * Whatever answers at the server's address afterwards is not authenticated (docs/remote-tokens.md,
   * "When the server restarts"), so a typed PIN is not sent there without asking again.
   */
  onRemoved(tokenId: string, reason: 'removed' | 'disconnected' = 'removed'): boolean {
    return this.pinCache.forget(tokenId, reason)
  }

  close(): void {
    this.pinCache.stopSweeper()
    this.pinCache.clear('shutdown')
  }

  /** Where the agent gets a PIN for this request: nobody is asked when headless or without a terminal. */
  #pinSources(prompter: Prompter, intent: Intent): PinSources {
    const headless = this.config.headless ? { unavailable: 'the agent runs headless' } : undefined
    return {
      asker: 'agent',
      env: this.#env,
      readPinFile: this.#deps.readPinFile,
      // A PIN question never travels to the far side of a forward (docs/ssh-forwarding.md).
      terminal:
        headless ??
        (intent.requester.forwarded !== undefined
          ? { unavailable: 'the request came through a forwarded socket, and a PIN is never asked there' }
          : prompter.interactive
            ? (prompt) => prompter.askPin(prompt)
            : { unavailable: 'the requesting program has no terminal' }),
      pinentry: headless ?? this.#pinentry(intent, undefined),
      notify: (notice) => tell(prompter, notice),
    }
  }

  #pinentry(intent: Intent, program: string | undefined): PinentryOptions {
    return {
      program: program ?? this.config.pinentryProgram,
      timeoutMs: this.config.pinentryTimeoutMs,
      env: this.#childEnv(),
      ttyname: intent.requester.tty,
    }
  }

  #childEnv(): NodeJS.ProcessEnv {
    return childEnvironment(this.#env, this.#deps.secretEnvVariables ?? [])
  }
}
