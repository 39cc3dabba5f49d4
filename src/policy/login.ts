/**
 * The login stage: cached PIN → the token's PIN source (src/policy/pin-source.ts) → exactly one
 * C_Login → cache or wipe (docs/policy.md, "Wrong PIN, few tries, final try, locked").
 */
import { createHmac, randomBytes } from 'node:crypto'

import { toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Pin } from '../lib/secret.js'
import type { Intent } from '../cargo/intent.js'
import type { PinSource, TokenPolicy } from './config.js'
import type { Confirmer } from './confirm.js'
import { describeIntent, tell, type PinPrompt, type Prompter } from './intent.js'
import type { PinCache } from './pin-cache.js'
import {
  finalTryRefused,
  pinAlreadyRejected,
  pinLocked,
  promptTries,
  wrongPin,
  type PolicyDeviceStatus,
} from './pin-errors.js'
import { isInteractiveSource, readPin, type PinSources } from './pin-source.js'

type MaybePromise<T> = T | Promise<T>

/** The token flags, and (when the device knows them) its login state. */
export interface PolicyDeviceLoginStatus extends PolicyDeviceStatus {
  readonly loginRequired?: boolean
  readonly loggedIn?: boolean
}

/** What policy needs from a device (src/pkcs11/device.ts satisfies it structurally). */
export interface PolicyDevice {
  status(): MaybePromise<PolicyDeviceLoginStatus>
  needsLogin(): MaybePromise<boolean>
  /** Exactly one C_Login; `null` = protected authentication path. Throws PIN_INCORRECT / PIN_LOCKED. */
  login(pin: Pin | null): MaybePromise<void>
  /** C_Logout: used when a cached PIN expired while the device is still logged in. */
  logout?(): MaybePromise<void>
}

export interface LoginDeps {
  readonly headless: boolean
  readonly pinCache: PinCache
  /** Asks the final-try question. */
  readonly confirmer: Confirmer
  /** Where this request's PIN can come from (the agent's terminal asker, pinentry, env, files). */
  readonly pinSources: (prompter: Prompter, intent: Intent) => PinSources
  readonly log: (event: string, data: Readonly<Record<string, string | number | boolean>>) => void
  /** The env/file PINs tokens rejected; a reload hands the previous policy's on (src/agent/agent.ts). */
  readonly rejected: RejectedPins
}

/**
 * Per token: fingerprint of the env/file PIN the token rejected. The only memory of rejected PINs
 * (the device layer keeps none): such a source hands out the same wrong PIN on every request and
 * each try costs one of the token's few tries, so that value is not sent again until it changes.
 * `lock` and a reload keep it: a fixed PIN file holds another value and is tried at once, and the
 * agent's environment is fixed at its start, so only a restart changes an env PIN. A PIN a human
 * typed is never retried anyway: it is not cached.
 */
export class RejectedPins {
  readonly #byToken = new Map<string, Buffer>()
  readonly #key = randomBytes(32)

  add(tokenId: string, pin: Pin): void {
    this.#byToken.set(tokenId, this.#fingerprint(pin))
  }

  has(tokenId: string, pin: Pin): boolean {
    return this.#byToken.get(tokenId)?.equals(this.#fingerprint(pin)) === true
  }

  /** HMAC with a per-process random key: comparable, but not a guessable hash of a short PIN. */
  #fingerprint(pin: Pin): Buffer {
    return createHmac('sha256', this.#key).update(pin.expose()).digest()
  }
}

/**
 * A typed PIN still to come (undefined when its question became moot), and whether a final try was
 * approved before it was asked.
 */
interface Asked {
  readonly pin: Promise<Pin | undefined>
  readonly finalTryApproved: boolean
}

export class Login {
  readonly #deps: LoginDeps
  readonly #inFlight = new Map<string, Promise<void>>()
  /** Per token: the typed-PIN questions open on their requesters' terminals, each with its `moot`. */
  readonly #asking = new Map<string, Map<Promise<Pin | undefined>, () => void>>()

  constructor(deps: LoginDeps) {
    this.#deps = deps
  }

  /**
   * Makes sure `device` is logged in for this request, with at most one C_Login. A wrong PIN is wiped
   * and reported, never retried. At the final try the PIN is used only after an explicit yes.
   * Headless: a PIN only a human could give is an immediate PIN_REQUIRED.
   */
  async ensureLoggedIn(
    device: PolicyDevice,
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
  ): Promise<void> {
    // Fast path, what the full flow below would decide with no login to do: the PIN is cached and
    // the token is logged in (or wants no login), and no other request of this token is in the flow.
    if (!this.#inFlight.has(token.id) && this.#deps.pinCache.get(token.id) !== undefined) {
      const status = await device.status()
      if (status.pinLocked !== true && (status.loggedIn === true || status.loginRequired === false)) return
    }
    // One login flow per token at a time: concurrent requests (parallel cargo runs) wait for the
    // first human answer and then use the cached PIN, instead of opening one PIN dialog each. A PIN
    // typed on the requester's terminal is the exception: it is asked outside the turn (`#askOwn`).
    for (;;) {
      const asked = await this.#turn(token.id, () => this.#ensureLoggedIn(device, token, prompter, intent))
      if (asked === undefined) return
      const pin = await asked.pin
      if (pin !== undefined)
        return await this.#turn(token.id, () =>
          this.#loginTyped(device, token, prompter, intent, pin, asked.finalTryApproved),
        )
    }
  }

  /** Runs `work` once every earlier turn of `tokenId` has ended. */
  async #turn<T>(tokenId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#inFlight.get(tokenId) ?? Promise.resolve()
    const mine = previous.then(work)
    const settled = mine.then(
      () => undefined,
      () => undefined,
    )
    this.#inFlight.set(tokenId, settled)
    try {
      return await mine
    } finally {
      if (this.#inFlight.get(tokenId) === settled) this.#inFlight.delete(tokenId)
    }
  }

  /**
   * The token refused `pin` on a login the device made by itself (the context-specific login of a
   * CKA_ALWAYS_AUTHENTICATE key, YubiKey PIV 9c): remembered like a refusal here, so an env/file
   * source that still holds that value is not tried again.
   */
  rejected(tokenId: string, pin: Pin): void {
    this.#deps.rejected.add(tokenId, pin)
  }

  /** Undefined when done; a typed PIN still to come (`#askOwn`) otherwise. */
  async #ensureLoggedIn(
    device: PolicyDevice,
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
  ): Promise<Asked | undefined> {
    const { pinCache } = this.#deps
    const status = await device.status()
    if (status.pinLocked === true) {
      pinCache.forget(token.id, 'wrong-pin')
      throw pinLocked(token.description)
    }
    const interactive = isInteractiveSource(token.pin)
    let cached = pinCache.get(token.id)
    if (!(await device.needsLogin())) {
      if (!interactive) {
        // An env/file PIN costs nobody a prompt to read again. Keep it cached while the token is
        // logged in: keys with CKA_ALWAYS_AUTHENTICATE (YubiKey PIV slot 9C) need it for the
        // context-specific login before every signature, and a reinserted token for its re-login.
        if (cached === undefined && token.pin.kind !== 'none') {
          pinCache.set(token.id, await this.#readPin(token, token.pin, prompter, intent, status))
        }
        return undefined
      }
      // The device stays logged in after the PIN cache entry ended; log out so the PIN lifetimes mean
      // what they say (PKCS#11: login state belongs to the application, not to a session).
      if (cached !== undefined || device.logout === undefined) return undefined
      await device.logout()
      this.#deps.log('logged-out-expired-pin', { token: token.id })
    }
    if (token.pin.kind === 'none') {
      tell(prompter, {
        kind: 'waiting-for-pin',
        via: 'terminal',
        tokenDescription: token.description,
        text: `Enter the PIN on the PIN pad of ${token.description} to ${describeIntent(intent)}`,
      })
      await this.#login(device, token, null)
      return undefined
    }
    if (status.pinFinalTry === true) {
      await this.#approveFinalTry(token, prompter, intent)
      if (cached !== undefined) {
        // Confirmed for a PIN the human is about to type, not for one typed earlier.
        pinCache.forget(token.id, 'replaced')
        cached = undefined
      }
    }
    if (cached !== undefined) {
      await this.#login(device, token, cached)
      return undefined
    }
    if (token.pin.kind === 'tty') return this.#askOwn(token, prompter, intent, status)
    const pin = await this.#readPin(token, token.pin, prompter, intent, status)
    try {
      await this.#login(device, token, pin)
    } catch (error) {
      if (!interactive && toAgentError(error).code === 'PIN_INCORRECT') {
        this.#deps.rejected.add(token.id, pin)
      }
      pin.wipe()
      throw error
    }
    pinCache.set(token.id, pin)
    return undefined
  }

  /**
   * A PIN typed on this request's own terminal (its client answers the query), asked outside the
   * token's turn: a client that never answers holds only its own request, until the request
   * timeout, while the other requests of the token ask their own requesters. The first PIN back
   * logs in (`#loginTyped`); the questions still open then are moot, and an answer that comes
   * later is wiped unused. A request that cannot ask (no terminal, forwarded) waits for the open
   * questions instead, as it waited for the one dialog before.
   */
  #askOwn(token: TokenPolicy, prompter: Prompter, intent: Intent, status: PolicyDeviceStatus): Asked {
    const open = this.#asking.get(token.id) ?? new Map<Promise<Pin | undefined>, () => void>()
    if ('unavailable' in this.#deps.pinSources(prompter, intent).terminal && open.size > 0) {
      // Bounded: a question nobody answers must not hold the requests that cannot ask one.
      let timer: NodeJS.Timeout | undefined
      const waited = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), LIMITS.pinQueryWaitMs)
        void Promise.allSettled(open.keys()).then(() => resolve(true))
      })
      const pin = waited.then((answered) => {
        clearTimeout(timer)
        return answered ? undefined : this.#readPin(token, { kind: 'tty' }, prompter, intent, status)
      })
      return { pin, finalTryApproved: false }
    }
    const asked = this.#readPin(token, { kind: 'tty' }, prompter, intent, status)
    let moot = (): void => undefined
    const pin = Promise.race([asked, new Promise<undefined>((resolve) => (moot = () => resolve(undefined)))])
    open.set(pin, () => {
      moot()
      asked.then(
        (late) => late.wipe(),
        () => undefined,
      )
      tell(prompter, {
        kind: 'info',
        text: `${token.description} was unlocked with the PIN typed for another request; yours is not needed`,
      })
    })
    this.#asking.set(token.id, open)
    const closed = (): void => {
      open.delete(pin)
      if (open.size === 0 && this.#asking.get(token.id) === open) this.#asking.delete(token.id)
    }
    pin.then(closed, closed)
    return { pin, finalTryApproved: status.pinFinalTry === true }
  }

  /**
   * A typed PIN, in turn again: its one C_Login, unless another request's PIN logged the token in
   * meanwhile (then it is wiped unsent). The questions still open become moot.
   */
  async #loginTyped(
    device: PolicyDevice,
    token: TokenPolicy,
    prompter: Prompter,
    intent: Intent,
    pin: Pin,
    finalTryApproved: boolean,
  ): Promise<void> {
    const { pinCache } = this.#deps
    try {
      const status = await device.status()
      if (status.pinLocked === true) {
        pinCache.forget(token.id, 'wrong-pin')
        throw pinLocked(token.description)
      }
      if (!(await device.needsLogin())) {
        if (pinCache.get(token.id) !== undefined || device.logout === undefined) {
          pin.wipe()
          return
        }
        await device.logout()
      }
      // A wrong PIN typed for another request may have left the token at its final try since.
      if (status.pinFinalTry === true && !finalTryApproved)
        await this.#approveFinalTry(token, prompter, intent)
      await this.#login(device, token, pin)
    } catch (error) {
      pin.wipe()
      throw error
    }
    pinCache.set(token.id, pin)
    for (const moot of this.#asking.get(token.id)?.values() ?? []) moot()
  }

  /** The PIN from the token's source; an env/file value the token already rejected is refused here. */
  async #readPin(
    token: TokenPolicy,
    source: Exclude<PinSource, { kind: 'none' }>,
    prompter: Prompter,
    intent: Intent,
    status: PolicyDeviceStatus,
  ): Promise<Pin> {
    const triesLeft = promptTries(status)
    const prompt: PinPrompt = {
      tokenDescription: token.description,
      reason: describeIntent(intent),
      ...(triesLeft === undefined ? {} : { triesLeft }),
    }
    const pin = await readPin(source, prompt, this.#deps.pinSources(prompter, intent))
    if (source.kind !== 'env' && source.kind !== 'file') return pin
    if (this.#deps.rejected.has(token.id, pin)) {
      pin.wipe()
      throw pinAlreadyRejected(token.description, source)
    }
    return pin
  }

  async #login(device: PolicyDevice, token: TokenPolicy, pin: Pin | null): Promise<void> {
    try {
      await device.login(pin)
    } catch (error) {
      const failure = toAgentError(error, 'DEVICE_ERROR')
      if (failure.code !== 'PIN_INCORRECT' && failure.code !== 'PIN_LOCKED') throw failure
      this.#deps.pinCache.forget(token.id, 'wrong-pin')
      if (failure.code === 'PIN_LOCKED') throw pinLocked(token.description, { cause: failure })
      let after: PolicyDeviceStatus | undefined
      try {
        after = await device.status()
      } catch {
        // Status after a failed login is a courtesy; the error stays PIN_INCORRECT.
      }
      throw wrongPin(token, failure, after)
    }
  }

  async #approveFinalTry(token: TokenPolicy, prompter: Prompter, intent: Intent): Promise<void> {
    if (!token.confirmFinalTry)
      throw finalTryRefused(token.description, 'confirm-final-try is off, so the agent does not use a PIN')
    if (!isInteractiveSource(token.pin))
      throw finalTryRefused(
        token.description,
        `the PIN from ${token.pin.kind === 'env' ? 'the environment' : 'a file'} is not used without a human's confirmation`,
      )
    if (this.#deps.headless)
      throw finalTryRefused(token.description, 'the agent runs headless and cannot ask for confirmation')
    tell(prompter, {
      kind: 'pin-final-try',
      tokenDescription: token.description,
      text: `${token.description} is at its final PIN try (a wrong PIN blocks it), for: ${describeIntent(intent)}`,
    })
    const { approved } = await this.#deps.confirmer.ask(
      intent,
      prompter,
      `FINAL PIN TRY for ${token.description}: one more wrong PIN blocks it. Enter the PIN anyway, to ${describeIntent(intent)}?`,
      'Enter PIN',
      token,
    )
    if (!approved) throw finalTryRefused(token.description, 'you chose not to use it')
  }
}
