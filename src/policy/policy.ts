/**
 * The policy stage's decisions, called in order by the agent's pipeline (src/agent/pipeline/run.ts):
 *
 *   const approval = await policy.approve(intent, prompter, registry, token)  // rate limit + confirmation
 *   await policy.ensureLoggedIn(device, token, prompter, intent)            // cache → source → one C_Login
 *   const token = await policy.withTouchNotice(sign(), { intent, prompter, tokenDescription })
 *
 * Decisions and process I/O only (pinentry, notify-send): no files, no sockets, no audit log
 * (test/unit/layering.test.ts).
 */
import { createHmac, randomBytes } from 'node:crypto'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { Pin } from '../lib/secret.js'
import {
  isInteractiveSource,
  policyConfig,
  type PolicyConfig,
  type RegistryPolicy,
  type TokenPolicy,
} from './config.js'
import { describeIntent, describeRegistry, type Notice, type Prompter } from './intent.js'
import type { Approval, Intent } from '../cargo/intent.js'
import { desktopNotifier, silentNotifier, type DesktopNotifier } from './notify.js'
import { PinCache, systemClock, type Clock } from './pin-cache.js'
import { childEnvironment, pinentryConfirm, pinentryGetPin, type PinentryOptions } from './pinentry.js'
import { MutationRateLimiter } from './rate-limit.js'
import { withTouchNotice as touchNotice } from './touch.js'

type MaybePromise<T> = T | Promise<T>

/** Token flags from C_GetTokenInfo (PKCS#11 v2.40 section 3.2, CK_TOKEN_INFO.flags). */
export interface PolicyDeviceStatus {
  readonly pinCountLow?: boolean
  readonly pinFinalTry?: boolean
  readonly pinLocked?: boolean
  readonly protectedAuthPath?: boolean
}

/** What policy needs from a device (src/pkcs11/device.ts satisfies it structurally). */
export interface PolicyDevice {
  status(): MaybePromise<PolicyDeviceStatus>
  needsLogin(): MaybePromise<boolean>
  /** Exactly one C_Login; `null` = protected authentication path. Throws PIN_INCORRECT / PIN_LOCKED. */
  login(pin: Pin | null): MaybePromise<void>
  /** C_Logout: used when a cached PIN expired while the device is still logged in. */
  logout?(): MaybePromise<void>
}

export interface PolicyDeps {
  readonly clock?: Clock
  /** Environment for `pin-env` lookups and for child processes; defaults to process.env. */
  readonly env?: NodeJS.ProcessEnv
  /** Reads a `pin-file` (refusing group/world-readable files): `readPinFile` from src/lib/pin-file.ts. */
  readonly readPinFile: (path: string) => Promise<Pin>
  /** Defaults to notify-send / osascript when `desktopNotifications` is on. */
  readonly notifier?: DesktopNotifier
  /** Every `pin-env` variable in the config: removed from the environment of pinentry and notify-send. */
  readonly secretEnvVariables?: readonly string[]
  /** Debug events (token ids, reasons, codes: never a PIN). */
  readonly log?: (event: string, data: Readonly<Record<string, string | number | boolean>>) => void
}

const UNBLOCK_REMEDY =
  'Check and unblock the PIN with the PUK or SO PIN: `ykman piv info` / `ykman piv access unblock-pin` (YubiKey), ' +
  '`pkcs11-tool --module <module> --login --login-type so --init-pin` (HSM, SoftHSM), `tpm2_ptool` (TPM); then run the command again'

export class Policy {
  readonly config: PolicyConfig
  readonly pinCache: PinCache
  readonly limiter: MutationRateLimiter
  readonly #deps: PolicyDeps
  readonly #env: NodeJS.ProcessEnv
  readonly #notifier: DesktopNotifier
  readonly #logins = new Map<string, Promise<void>>()
  /** Per token: fingerprint of the env/file PIN the token rejected (see #nonInteractivePin). */
  readonly #rejected = new Map<string, Buffer>()
  readonly #fingerprintKey = randomBytes(32)

  constructor(config: Partial<PolicyConfig>, deps: PolicyDeps) {
    this.config = policyConfig(config)
    this.#deps = deps
    this.#env = deps.env ?? process.env
    const clock = deps.clock ?? systemClock
    this.pinCache = new PinCache({
      idleSeconds: this.config.pinCacheIdleSeconds,
      maxSeconds: this.config.pinCacheMaxSeconds,
      clock,
      onForget: (tokenId, reason) => this.#log('pin-forgotten', { token: tokenId, reason }),
    })
    this.limiter = new MutationRateLimiter({ clock })
    this.#notifier =
      deps.notifier ??
      (this.config.desktopNotifications && !this.config.headless
        ? desktopNotifier({
            env: this.#childEnv(),
            onFailure: (reason) => this.#log('notify-failed', { reason }),
          })
        : silentNotifier)
  }

  /**
   * Rate limit and confirmation. Reads pass silently (design: reads never confirmed). Mutations:
   * `prompt` asks yes/no showing the intent (DENIED when refused), `touch` relies on the key's touch
   * policy (the notice comes with the signature), `none` asks nothing. Throws RATE_LIMITED first, so
   * nobody is asked to approve a request that would be refused anyway. `token` (the signing token)
   * picks its `pinentry-program` for a pinentry CONFIRM.
   * `release` gives the rate-limit slot back when the request ends without a released token.
   */
  async approve(
    intent: Intent,
    prompter: Prompter,
    registry: RegistryPolicy,
    token?: TokenPolicy,
  ): Promise<{ approval: Approval; release: () => void }> {
    if (intent.operation === 'read') return { approval: 'not-required', release: () => undefined }
    const release = this.limiter.take(intent.indexUrl, registry.mutationsPerHour, describeRegistry(intent))
    try {
      if (registry.confirm === 'none') return { approval: 'none', release }
      if (registry.confirm === 'touch') return { approval: 'touch', release }
      const text = `Allow ${describeIntent(intent)}?`
      const { approved, via } = await this.#confirm(intent, prompter, text, 'Approve', token)
      if (!approved) {
        throw new AgentError('DENIED', `Refused: ${describeIntent(intent)}`, {
          remedy: 'Nothing was signed. Run the command again and approve it if you meant to',
        })
      }
      return { approval: via, release }
    } catch (error) {
      release()
      throw error
    }
  }

  /**
   * Makes sure `device` is logged in for this request, with at most one C_Login:
   * cached PIN (if still within its lifetimes) → the token's PIN source → login → cache or wipe.
   * A wrong PIN is wiped and reported, never retried. At the final try the PIN is used only after
   * an explicit yes. Headless: a PIN only a human could give is an immediate PIN_REQUIRED.
   */
  async ensureLoggedIn(
    device: PolicyDevice,
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
  ): Promise<void> {
    // One login flow per token at a time: concurrent requests (parallel cargo runs) wait for the
    // first human answer and then use the cached PIN, instead of opening one PIN dialog each.
    const previous = this.#logins.get(token.id) ?? Promise.resolve()
    const mine = previous.then(() => this.#ensureLoggedIn(device, token, prompter, intent))
    const settled = mine.then(
      () => undefined,
      () => undefined,
    )
    this.#logins.set(token.id, settled)
    try {
      await mine
    } finally {
      if (this.#logins.get(token.id) === settled) this.#logins.delete(token.id)
    }
  }

  async #ensureLoggedIn(
    device: PolicyDevice,
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
  ): Promise<void> {
    const status = await device.status()
    if (status.pinLocked === true) {
      this.pinCache.forget(token.id, 'wrong-pin')
      throw new AgentError(
        'PIN_LOCKED',
        `The PIN of ${token.description} is blocked (too many wrong attempts)`,
        { remedy: UNBLOCK_REMEDY },
      )
    }
    const interactive = isInteractiveSource(token.pin)
    let cached = this.pinCache.get(token.id)
    if (!(await device.needsLogin())) {
      if (!interactive) {
        // An env/file PIN costs nobody a prompt to read again. Keep it cached while the token is
        // logged in: keys with CKA_ALWAYS_AUTHENTICATE (YubiKey PIV slot 9C) need it for the
        // context-specific login before every signature, and a reinserted token for its re-login.
        if (cached === undefined && token.pin.kind !== 'none') {
          this.pinCache.set(token.id, await this.#nonInteractivePin(token, prompter, intent, status))
        }
        return
      }
      // The device stays logged in after the PIN cache entry ended; log out so the PIN lifetimes mean
      // what they say (PKCS#11: login state belongs to the application, not to a session).
      if (cached !== undefined || device.logout === undefined) return
      await device.logout()
      this.#log('logged-out-expired-pin', { token: token.id })
    }
    if (token.pin.kind === 'none') {
      this.#notify(prompter, {
        kind: 'waiting-for-pin',
        via: 'terminal',
        tokenDescription: token.description,
        text: `Enter the PIN on the PIN pad of ${token.description} to ${describeIntent(intent)}`,
      })
      await this.#login(device, token, null)
      return
    }
    if (status.pinFinalTry === true) {
      await this.#approveFinalTry(token, prompter, intent)
      if (cached !== undefined) {
        // Confirmed for a PIN the human is about to type, not for one typed earlier.
        this.pinCache.forget(token.id, 'replaced')
        cached = undefined
      }
    }
    if (cached !== undefined) {
      await this.#login(device, token, cached)
      return
    }
    const pin = interactive
      ? await this.#obtainPin(token, prompter, intent, status)
      : await this.#nonInteractivePin(token, prompter, intent, status)
    try {
      await this.#login(device, token, pin)
    } catch (error) {
      if (!interactive && toAgentError(error).code === 'PIN_INCORRECT') {
        this.#rejected.set(token.id, this.#fingerprint(pin))
      }
      pin.wipe()
      throw error
    }
    this.pinCache.set(token.id, pin)
  }

  /**
   * A PIN from `pin-env` / `pin-file`. Unlike a human, such a source hands out the same wrong PIN on
   * every request, and each try costs one of the token's few PIN tries: a value the token rejected is
   * refused here until it changes (or `lock` / SIGHUP), so a bad CI secret cannot lock the token.
   */
  async #nonInteractivePin(
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
    status: PolicyDeviceStatus,
  ): Promise<Pin> {
    const pin = await this.#obtainPin(token, prompter, intent, status)
    const rejected = this.#rejected.get(token.id)
    if (rejected !== undefined && rejected.equals(this.#fingerprint(pin))) {
      pin.wipe()
      throw new AgentError(
        'PIN_INCORRECT',
        `${token.description} already rejected the PIN from its ${token.pin.kind === 'env' ? 'environment variable' : 'PIN file'}; it is not tried again, so the token's remaining tries are kept`,
        {
          remedy:
            'Fix the PIN secret, then run `cargo-pkcs11-agent lock` (or restart the agent) to let it be tried',
        },
      )
    }
    return pin
  }

  /** HMAC with a per-process random key: comparable, but not a guessable hash of a short PIN. */
  #fingerprint(pin: Pin): Buffer {
    return createHmac('sha256', this.#fingerprintKey).update(pin.expose()).digest()
  }

  /** Wraps a device signature with the touch notice and the touch deadline from the config. */
  async withTouchNotice<T>(
    signing: Promise<T>,
    context: { intent: Intent; prompter: Prompter; tokenDescription: string },
  ): Promise<T> {
    return touchNotice(signing, {
      afterMs: this.config.touchNoticeDelayMs,
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

  /** `cargo-pkcs11-agent lock`: forget every PIN. The agent also logs its sessions out. */
  lock(): number {
    this.#rejected.clear()
    return this.pinCache.clear('lock')
  }

  /** SIGHUP: forget every PIN (the agent also releases the devices). */
  onSighup(): number {
    this.#rejected.clear()
    return this.pinCache.clear('sighup')
  }

  /** The token was removed: its PIN goes with it. */
  onRemoved(tokenId: string): void {
    this.pinCache.forget(tokenId, 'removed')
  }

  close(): void {
    this.pinCache.stopSweeper()
    this.pinCache.clear('shutdown')
  }

  async #login(device: PolicyDevice, token: TokenPolicy, pin: Pin | null): Promise<void> {
    try {
      await device.login(pin)
    } catch (error) {
      const failure = toAgentError(error, 'DEVICE_ERROR')
      if (failure.code === 'PIN_INCORRECT') {
        this.pinCache.forget(token.id, 'wrong-pin')
        throw await this.#wrongPin(device, token, failure)
      }
      if (failure.code === 'PIN_LOCKED') {
        this.pinCache.forget(token.id, 'wrong-pin')
        throw new AgentError(
          'PIN_LOCKED',
          `The PIN of ${token.description} is blocked (too many wrong attempts)`,
          { remedy: UNBLOCK_REMEDY, cause: failure },
        )
      }
      throw failure
    }
  }

  async #wrongPin(device: PolicyDevice, token: TokenPolicy, failure: AgentError): Promise<AgentError> {
    let finalTry = false
    let low = false
    try {
      const after = await device.status()
      finalTry = after.pinFinalTry === true
      low = after.pinCountLow === true
      if (after.pinLocked === true) {
        return new AgentError('PIN_LOCKED', `Wrong PIN for ${token.description}; the PIN is now blocked`, {
          remedy: UNBLOCK_REMEDY,
          cause: failure,
        })
      }
    } catch {
      // Status after a failed login is a courtesy; the error stays PIN_INCORRECT.
    }
    // src/pkcs11/device.ts reports the token flags as 'low' | 'final' | 'locked'; other devices may count.
    const triesLeft = failure.data['triesLeft']
    if (triesLeft === 'final') finalTry = true
    if (triesLeft === 'low') low = true
    if (triesLeft === 'locked') {
      return new AgentError('PIN_LOCKED', `Wrong PIN for ${token.description}; the PIN is now blocked`, {
        remedy: UNBLOCK_REMEDY,
        cause: failure,
      })
    }
    const tries =
      typeof triesLeft === 'number'
        ? ` (${triesLeft} ${triesLeft === 1 ? 'try' : 'tries'} left)`
        : finalTry
          ? ' (one try left: the next wrong PIN blocks it)'
          : low
            ? ' (few tries left)'
            : ''
    const source = token.pin
    const fix =
      source.kind === 'env'
        ? `Fix the PIN in the environment variable ${source.variable}`
        : source.kind === 'file'
          ? `Fix the PIN in ${source.path}`
          : 'Run the command again and enter the correct PIN'
    const data: Record<string, string | number | boolean> = { finalTry, countLow: low }
    if (typeof triesLeft === 'number') data['triesLeft'] = triesLeft
    return new AgentError(
      'PIN_INCORRECT',
      `Wrong PIN for ${token.description}${tries}; the agent does not retry a wrong PIN`,
      {
        remedy: finalTry ? `${fix}. If unsure, check it first: ${UNBLOCK_REMEDY}` : fix,
        cause: failure,
        data,
      },
    )
  }

  async #approveFinalTry(token: TokenPolicy, prompter: Prompter, intent: Intent): Promise<void> {
    const refuse = (why: string): AgentError =>
      new AgentError('POLICY_DENIED', `${token.description} is at its final PIN try; ${why}`, {
        remedy: `A wrong PIN now blocks the token. ${UNBLOCK_REMEDY}`,
        data: { finalTry: true },
      })
    if (!token.confirmFinalTry) throw refuse('confirm-final-try is off, so the agent does not use a PIN')
    if (!isInteractiveSource(token.pin))
      throw refuse(
        `the PIN from ${token.pin.kind === 'env' ? 'the environment' : 'a file'} is not used without a human's confirmation`,
      )
    if (this.config.headless) throw refuse('the agent is headless and cannot ask for confirmation')
    this.#notify(prompter, {
      kind: 'pin-final-try',
      tokenDescription: token.description,
      text: `${token.description} is at its final PIN try (a wrong PIN blocks it), for: ${describeIntent(intent)}`,
    })
    const { approved } = await this.#confirm(
      intent,
      prompter,
      `FINAL PIN TRY for ${token.description}: one more wrong PIN blocks it. Enter the PIN anyway, to ${describeIntent(intent)}?`,
      'Enter PIN',
      token,
    )
    if (!approved) throw refuse('you chose not to use it')
  }

  async #obtainPin(
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
    status: PolicyDeviceStatus,
  ): Promise<Pin> {
    const source = token.pin
    const triesLeft =
      status.pinFinalTry === true
        ? ('final' as const)
        : status.pinCountLow === true
          ? ('low' as const)
          : undefined
    switch (source.kind) {
      case 'env': {
        const value = this.#env[source.variable]
        if (value === undefined || value === '') {
          throw new AgentError(
            'PIN_REQUIRED',
            `The PIN for ${token.description} should come from the environment variable ${source.variable}, which is not set in the agent's environment`,
            {
              remedy: `Set ${source.variable} for the agent (in CI: from a secret), or use pin-source = "file"`,
            },
          )
        }
        return checkedPin(Buffer.from(value, 'utf8'))
      }
      case 'file':
        return this.#deps.readPinFile(source.path)
      case 'tty': {
        if (this.config.headless || !prompter.interactive)
          throw pinRequired(
            token,
            this.config.headless ? 'the agent runs headless' : 'the requesting program has no terminal',
          )
        const request = {
          tokenDescription: token.description,
          reason: describeIntent(intent),
          ...(triesLeft === undefined ? {} : { triesLeft }),
        }
        const pin = await prompter.askPin(request)
        if (pin.length === 0 || pin.length > LIMITS.pinMaxBytes) {
          pin.wipe()
          throw new AgentError(
            'PIN_ENTRY_FAILED',
            pin.length === 0
              ? 'No PIN was entered'
              : `The PIN entered is longer than ${LIMITS.pinMaxBytes} bytes`,
            {
              remedy: 'Run the command again and enter the token PIN',
            },
          )
        }
        return pin
      }
      case 'pinentry': {
        if (this.config.headless) throw pinRequired(token, 'the agent runs headless')
        this.#notify(prompter, {
          kind: 'waiting-for-pin',
          via: 'pinentry',
          tokenDescription: token.description,
          text: `Waiting for the PIN of ${token.description} in pinentry, to ${describeIntent(intent)}`,
        })
        const warning =
          triesLeft === 'final'
            ? 'FINAL TRY: a wrong PIN blocks the token'
            : triesLeft === 'low'
              ? 'Few PIN tries left: check the PIN before you press OK'
              : undefined
        return pinentryGetPin(this.#pinentryOptions(intent, source.program), {
          title: 'cargo-pkcs11-agent',
          description: `Enter the PIN of ${token.description}\n\nto ${describeIntent(intent)}`,
          prompt: 'PIN:',
          ...(warning === undefined ? {} : { warning }),
        })
      }
      case 'none':
        throw new AgentError('INTERNAL', 'A protected-authentication-path token has no PIN to obtain', {
          remedy: 'Report this bug',
        })
    }
  }

  async #confirm(
    intent: Intent,
    prompter: Prompter,
    text: string,
    okLabel: string,
    token: TokenPolicy | undefined,
  ): Promise<{ approved: boolean; via: 'terminal' | 'pinentry' }> {
    if (this.config.headless) {
      throw new AgentError(
        'POLICY_DENIED',
        `Confirmation is required to ${describeIntent(intent)}, but the agent runs headless`,
        {
          remedy:
            'For unattended use set confirm = "touch" (key with a touch policy) or confirm = "none" for this registry in the agent config',
        },
      )
    }
    const channel = this.config.confirmVia
    const useTerminal = channel === 'terminal' || (channel === 'auto' && prompter.interactive)
    if (useTerminal) {
      if (!prompter.interactive) {
        throw new AgentError(
          'POLICY_DENIED',
          `Confirmation is required to ${describeIntent(intent)}, but the requesting program has no terminal`,
          {
            remedy:
              'Run the command from a terminal, or set confirm = "touch" for this registry (a key with a touch policy)',
          },
        )
      }
      return { approved: await prompter.confirm(intent, text), via: 'terminal' }
    }
    this.#notify(prompter, {
      kind: 'waiting-for-confirmation',
      via: 'pinentry',
      intent,
      text: `Waiting for confirmation in pinentry: ${text}`,
    })
    // The pinentry the signing token's PIN comes from is the one the user set up for this device.
    const program = token?.pin.kind === 'pinentry' ? token.pin.program : undefined
    const approved = await pinentryConfirm(this.#pinentryOptions(intent, program), {
      title: 'cargo-pkcs11-agent',
      description: text,
      ok: okLabel,
      cancel: 'Refuse',
    })
    return { approved, via: 'pinentry' }
  }

  #pinentryOptions(intent: Intent, program: string | undefined): PinentryOptions {
    const env = this.#childEnv()
    const tty = intent.requester.tty
    const lcCtype = env['LC_ALL'] ?? env['LC_CTYPE'] ?? env['LANG']
    return {
      program: program ?? this.config.pinentryProgram,
      timeoutMs: this.config.pinentryTimeoutMs,
      env,
      ...(tty !== undefined && tty.startsWith('/dev/') ? { ttyname: tty } : {}),
      ...(env['TERM'] === undefined ? {} : { ttytype: env['TERM'] }),
      ...(lcCtype === undefined ? {} : { lcCtype }),
    }
  }

  #childEnv(): NodeJS.ProcessEnv {
    return childEnvironment(this.#env, this.#deps.secretEnvVariables ?? [])
  }

  #notify(prompter: Prompter, notice: Notice): void {
    try {
      prompter.notify(notice)
    } catch {
      // A notice that cannot be delivered never fails the request.
    }
  }

  #log(event: string, data: Readonly<Record<string, string | number | boolean>>): void {
    this.#deps.log?.(event, data)
  }
}

function pinRequired(token: TokenPolicy, why: string): AgentError {
  return new AgentError(
    'PIN_REQUIRED',
    `A PIN is needed for ${token.description} but ${why}, so nobody can be asked`,
    {
      remedy:
        'For unattended use set pin-source = "env" with pin-env = "VAR", or pin-source = "file" with pin-file = "/path" (mode 0600), for this token in the agent config',
    },
  )
}

function checkedPin(bytes: Buffer): Pin {
  if (bytes.length > LIMITS.pinMaxBytes) {
    bytes.fill(0)
    throw new AgentError('PIN_INVALID', `The configured PIN is longer than ${LIMITS.pinMaxBytes} bytes`, {
      remedy: 'Check the PIN source',
    })
  }
  return new Pin(bytes)
}
