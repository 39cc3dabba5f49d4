/**
 * One token's lifecycle. Every request has the same shape (yubikey-agent main.go `ensureYK` /
 * `healthy`): acquire a session, health-check the token and reconnect if it went away, log in again
 * with the PIN the owner holds if needed, do the work, give the session back. The parts live beside
 * it: the session pool (session-pool.ts), the key catalogue (key-catalogue.ts), key generation
 * (keygen.ts), token and key selection (selector.ts), Cryptoki calls (binding.ts).
 */
import { basename } from 'node:path'
import { AgentError, toAgentError, type ErrorCode, type TriesLeft } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Pin } from '../lib/secret.js'
import { Pkcs11Module, type Handle, type TokenInfo } from './binding.js'
import { CKR, fromReturnValue } from './ckr.js'
import { KeyCatalogue, type DeviceKey, type OnSession } from './key-catalogue.js'
import { generateKeyPair, keygenRequest } from './keygen.js'
import { moduleEnvironmentHint } from './module-environment.js'
import { resolveModulePath } from './modules.js'
import {
  tokenMatches,
  tokenSelector,
  type KeySelector,
  type TokenIdentity,
  type TokenSelector,
} from './selector.js'
import { SessionPool, type PooledSession } from './session-pool.js'

/** Every token present on a module (for `list` and `setup`); selection then goes by label/serial. */
export async function listTokens(moduleNameOrPath: string): Promise<TokenIdentity[]> {
  const mod = Pkcs11Module.load(resolveModulePath(moduleNameOrPath))
  const found: TokenIdentity[] = []
  for (const slot of mod.slotsWithToken()) {
    try {
      const { label, serial, manufacturer, model, tokenInitialized } = mod.tokenInfo(slot)
      if (tokenInitialized) found.push({ label, serial, manufacturer, model })
    } catch {
      // A token removed between the two calls is simply not listed.
    }
  }
  return found
}

/** CK_TOKEN_INFO's identity and PIN flags (absent token: all false), and the agent's own view. */
export interface TokenStatus
  extends
    Partial<TokenIdentity>,
    Pick<TokenInfo, 'loginRequired' | 'protectedAuthPath' | 'pinCountLow' | 'pinFinalTry' | 'pinLocked'> {
  present: boolean
  loggedIn: boolean
  sessionsOpen: number
}

export type DeviceEvent =
  /** The token vanished (removal, session loss, device error); `code` says how it was noticed. */
  | { type: 'removed'; token: string; code: ErrorCode }
  /**
   * The p11-kit server (p11-kit-client) stopped answering. The token was not pulled: it is found
   * again by its identity when the server answers; that server is not authenticated, so the owner
   * of a typed PIN asks for it again (docs/remote-tokens.md, "When the server restarts").
   */
  | { type: 'disconnected'; token: string; server: string; code: ErrorCode }
  /** The token was found again after a loss; sessions reopen lazily. */
  | { type: 'reconnected'; token: string }
  /** All sessions were closed on request so other programs can use the device. */
  | { type: 'released'; token: string }
  /**
   * The token refused a PIN (CKR_PIN_INCORRECT / CKR_PIN_LOCKED). The device keeps no memory of
   * refused PINs: an owner that holds this PIN (`cachedPin`) must drop it, or the next re-login
   * would send it again and spend another of the token's few tries.
   */
  | { type: 'pin-rejected'; token: string }

export interface DeviceOptions {
  /**
   * The PIN the owner still holds (its cache), used to log in again after a reconnect and for the
   * context-specific login of CKA_ALWAYS_AUTHENTICATE keys (PKCS#11 v2.40 section 4.9).
   */
  cachedPin?: () => Pin | undefined
  onEvent?: (event: DeviceEvent) => void
}

/** Failures after which the sessions are useless and the token must be looked up again. */
const RECONNECT_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'DEVICE_REMOVED',
  'TOKEN_ABSENT',
  'SESSION_LOST',
  'DEVICE_ERROR',
])

type LoginNeed = 'required' | 'optional' | 'none'

interface Work {
  /** Set once the device has started something a retry would repeat (a touch, a key write). */
  committed: boolean
  /** Set once an operation (C_SignInit) may be left active on the session if a later step fails. */
  operationStarted: boolean
}

/** The token flags after a refused login (CK_TOKEN_INFO, PKCS#11 v2.40 section 3.2). */
function triesLeft(info: TokenInfo): TriesLeft | undefined {
  if (info.pinLocked) return 'locked'
  if (info.pinFinalTry) return 'final'
  if (info.pinCountLow) return 'low'
  return undefined
}

export class Device {
  readonly #selector: Readonly<TokenSelector>
  readonly #cachedPin: () => Pin | undefined
  readonly #onEvent: (event: DeviceEvent) => void
  #modulePath: string | undefined
  #module: Pkcs11Module | undefined
  #slot: Handle | undefined
  /** The module generation `#slot` and the pooled sessions belong to (Pkcs11Module.reconnect). */
  #generation = 0
  /** Identity last seen on the device (label/serial), used to find it again after removal. */
  #seen: TokenIdentity | undefined
  #lost = false
  /** The last health check's CK_TOKEN_INFO and when it was read (performance.now()). */
  #checked: { info: TokenInfo; at: number } | undefined
  /**
   * The pool generation in which this application is known to be logged in (our C_Login succeeded
   * or C_GetSessionInfo said so). Login state belongs to the application and ends only with its
   * last session (PKCS#11 v2.40 section 5.6): by our logout, a dropped pool (new generation) or
   * the token going away; any failed request forgets it, so the next one asks the token again.
   */
  #loggedInGeneration: number | undefined
  readonly #pool = new SessionPool((session) => this.#module?.closeSession(session))
  readonly #keys = new KeyCatalogue()

  /** Only the selecting fields of `selector` are kept (a whole config token entry may be passed). */
  constructor(selector: Readonly<TokenSelector>, options: DeviceOptions = {}) {
    this.#selector = Object.freeze(tokenSelector(selector))
    this.#cachedPin = options.cachedPin ?? (() => undefined)
    this.#onEvent = options.onEvent ?? (() => {})
  }

  /** What to do about a token not found: the agent's TOKEN_ABSENT and doctor say the same. */
  absentRemedy(): string {
    const token = this.describe().replace(/ via .*$/, '')
    return `Check its label/serial in the config (\`cargo-pkcs11-agent list --module ${this.#selector.module}\` shows the tokens there), or insert ${token}; the agent picks it up without a restart${moduleEnvironmentHint(this.#selector.module)}`
  }

  describe(): string {
    const label = this.#seen?.label ?? this.#selector.label
    const serial = this.#seen?.serial ?? this.#selector.serial
    const name =
      label !== undefined && label !== ''
        ? `token '${label}'`
        : this.#selector.model !== undefined
          ? `${this.#selector.model} token`
          : 'token'
    const serialText = serial !== undefined && serial !== '' ? ` (serial ${serial})` : ''
    return `${name}${serialText} via ${basename(this.#resolvedPath())}`
  }

  /**
   * Which module signs, and for p11-kit-client which server it reaches (the audit line records
   * both, docs/remote-tokens.md). The module file as resolved, else what the config says.
   */
  origin(): { module: string; server?: string } {
    const server = this.#module?.server
    return server === undefined ? { module: this.#resolvedPath() } : { module: this.#resolvedPath(), server }
  }

  async status(): Promise<TokenStatus> {
    const absent: TokenStatus = {
      present: false,
      loginRequired: false,
      loggedIn: false,
      protectedAuthPath: false,
      pinCountLow: false,
      pinFinalTry: false,
      pinLocked: false,
      sessionsOpen: this.#pool.size,
    }
    let info: TokenInfo
    try {
      info = this.#connect().info
    } catch (error) {
      const err = toAgentError(error)
      if (RECONNECT_CODES.has(err.code)) return absent
      throw err
    }
    let loggedIn = this.#knownLoggedIn()
    try {
      const any = this.#pool.any()
      if (!loggedIn && any !== undefined) loggedIn = this.#noteLogin(this.#mod().sessionLoggedIn(any.handle))
    } catch {
      // That session died since: a request will notice and reconnect.
    }
    const { tokenInitialized: _initialized, ...shown } = info
    return { present: true, ...shown, loggedIn, sessionsOpen: this.#pool.size }
  }

  /**
   * Login state belongs to the application, not to one session (PKCS#11 v2.40 section 5.6), so any
   * open session of the current generation answers (C_GetSessionInfo) without waiting for an idle
   * one behind queued signatures; only with no session yet does this take one from the pool.
   */
  async needsLogin(): Promise<boolean> {
    if (this.#knownLoggedIn()) return false
    const { info } = this.#connect()
    if (!info.loginRequired) return false
    const open = this.#pool.any()
    if (open !== undefined) {
      try {
        return !this.#noteLogin(this.#mod().sessionLoggedIn(open.handle))
      } catch {
        // That session died since: ask on a fresh one below.
      }
    }
    return this.#request('none', (session, _work, fresh) => {
      return fresh.loginRequired && !this.#noteLogin(this.#mod().sessionLoggedIn(session.handle))
    })
  }

  async login(pin: Pin | null): Promise<void> {
    await this.#request('none', (session) => {
      this.#keys.forget()
      this.#loginOnce(session, pin)
    })
  }

  async logout(): Promise<void> {
    await this.#request('none', (session) => {
      // Private object handles die with the login on some modules (SoftHSM: CKR_KEY_HANDLE_INVALID).
      this.#keys.forget()
      this.#loggedInGeneration = undefined
      this.#mod().logout(session.handle, this.describe())
    })
  }

  async listKeys(): Promise<DeviceKey[]> {
    return this.#request('optional', (session) => this.#keys.list(this.#on(session)))
  }

  /** The token's certificate objects (id as lowercase hex, DER value). */
  async certificates(): Promise<{ label: string; id: string; der: Uint8Array }[]> {
    return this.#request('optional', (session) =>
      this.#mod()
        .certificates(session.handle, this.describe())
        .map((c) => ({ label: c.label, id: c.id.toString('hex'), der: new Uint8Array(c.value) })),
    )
  }

  /** From the cached key list when it names the key (no session, no device call); else read the token. */
  async findKey(key: KeySelector): Promise<DeviceKey> {
    return (
      this.#keys.cached(key) ??
      this.#request('optional', (session) => this.#keys.find(this.#on(session), key))
    )
  }

  /** The key under a label/id may have been replaced (its signature did not verify): read the token again. */
  forgetKeys(): void {
    this.#keys.forget()
  }

  async generateKey(
    key: { label: string; id?: string },
    options: { force?: boolean } = {},
  ): Promise<DeviceKey> {
    const request = keygenRequest(key, options.force === true)
    return this.#request('required', (_session, work) =>
      generateKeyPair(this.#mod(), this.#requireSlot(), this.describe(), request, () => {
        work.committed = true
        this.#keys.forget()
      }),
    )
  }

  /**
   * C_SignInit(CKM_ECDSA) (+ the context-specific login of a CKA_ALWAYS_AUTHENTICATE key) then
   * C_Sign over `digest` on a pooled session, off the event loop. The raw device output (r||s or DER);
   * src/signer/pkcs11.ts hashes, normalises and verifies.
   */
  async signDigest(key: Pick<DeviceKey, 'id' | 'label'>, digest: Uint8Array): Promise<Uint8Array> {
    return this.#request('required', async (session, work) => {
      const mod = this.#mod()
      const on = this.#on(session)
      let entry = this.#keys.privateKey(on, key)
      try {
        mod.signInit(session.handle, entry.handle, on.where)
      } catch (error) {
        // A cached handle can go stale (logout, key replaced by another program): look it up again.
        if (!(error instanceof AgentError && error.code === 'KEY_NOT_FOUND' && entry.cached)) throw error
        this.#keys.forget()
        entry = this.#keys.privateKey(on, key)
        mod.signInit(session.handle, entry.handle, on.where)
      }
      work.operationStarted = true
      if (entry.alwaysAuthenticate) {
        // CKA_ALWAYS_AUTHENTICATE (PKCS#11 v2.40 §4.9): C_Login(CKU_CONTEXT_SPECIFIC) after
        // C_SignInit, before each C_Sign, with the PIN the owner holds.
        const pin = this.#cachedPin()
        if (pin === undefined) {
          throw new AgentError(
            'PIN_REQUIRED',
            `${on.where}: key '${key.label}' needs the PIN for every signature`,
            { remedy: 'Unlock the agent with the PIN, then retry' },
          )
        }
        this.#loginOnce(session, pin, true)
      }
      work.committed = true
      // A missed YubiKey touch (ykcs11: CKR_USER_NOT_LOGGED_IN from C_Sign) is TOUCH_TIMEOUT in ckr.ts.
      return new Uint8Array(await mod.signAsync(session.handle, Buffer.from(digest), on.where))
    })
  }

  async release(): Promise<void> {
    this.#dropSessions()
    this.#onEvent({ type: 'released', token: this.describe() })
  }

  // -------------------------------------------------------------------------------------------
  // Request shape

  /**
   * acquire → health-check/reconnect → (log in with the held PIN if needed) → work → release the
   * session. A failure that means the token went away drops every session; if the device had not
   * yet started anything a retry would repeat, the request is tried once more on fresh sessions.
   */
  async #request<T>(
    login: LoginNeed,
    fn: (session: PooledSession, work: Work, info: TokenInfo) => T | Promise<T>,
  ): Promise<T> {
    for (let attempt = 0; ; attempt += 1) {
      // The health check's CK_TOKEN_INFO serves the whole request (C_GetTokenInfo is a synchronous
      // call on the event loop, ~70 µs on SoftHSM, more on a USB token), and one read for this
      // request's policy check (status) a moment ago serves the health check: LIMITS.tokenInfoReuseMs.
      let info: TokenInfo | undefined
      const session = await this.#pool.acquire(
        () => {
          info = this.#connect(LIMITS.tokenInfoReuseMs).info
        },
        () => this.#openSession(),
        () => this.describe(),
      )
      const work: Work = { committed: false, operationStarted: false }
      let healthy = true
      try {
        info ??= this.#connect().info
        if (login !== 'none') this.#ensureLogin(session, login, info)
        return await fn(session, work, info)
      } catch (error) {
        const err = toAgentError(error)
        this.#loggedInGeneration = undefined
        // A refused PIN, a missing key etc. leave the session as it was; only a possibly still
        // active operation (PKCS#11 §5.2: C_SignInit ... C_Sign) makes it unusable.
        healthy = !work.operationStarted && !RECONNECT_CODES.has(err.code)
        if (RECONNECT_CODES.has(err.code)) {
          this.#lose(err.code)
          if (attempt === 0 && !work.committed && err.code === 'SESSION_LOST') continue
          throw this.#viaServer(err)
        }
        throw err
      } finally {
        const slot = this.#slot
        this.#pool.giveBack(
          session,
          healthy,
          slot === undefined ? undefined : () => this.#mod().openSession(slot, false),
        )
      }
    }
  }

  #openSession(): Handle {
    try {
      return this.#mod().openSession(this.#requireSlot(), false)
    } catch (error) {
      const err = toAgentError(error)
      if (RECONNECT_CODES.has(err.code)) this.#lose(err.code)
      throw err
    }
  }

  #on(session: PooledSession): OnSession {
    return { mod: this.#mod(), session: session.handle, where: this.describe() }
  }

  /**
   * Finds the token (health check when connected; a check at most `reuseMs` old stands).
   * Synchronous: no request interleaves with it.
   */
  #connect(reuseMs = 0): { slot: Handle; info: TokenInfo } {
    const mod = this.#mod()
    // Another Device on this module reconnected it: this one's slot and sessions are from before.
    if (this.#slot !== undefined && mod.generation !== this.#generation) this.#lose('SESSION_LOST')
    if (this.#slot !== undefined) {
      const checked = this.#checked
      if (checked !== undefined && performance.now() - checked.at <= reuseMs) {
        return { slot: this.#slot, info: checked.info }
      }
      try {
        const info = mod.tokenInfo(this.#slot)
        if (
          this.#seen === undefined ||
          (info.label === this.#seen.label && info.serial === this.#seen.serial)
        ) {
          this.#checked = { info, at: performance.now() }
          return { slot: this.#slot, info }
        }
        // Another token now sits in that slot (slot ids are reused by some modules).
        this.#lose('TOKEN_ABSENT')
      } catch (error) {
        const err = toAgentError(error)
        if (!RECONNECT_CODES.has(err.code)) throw err
        this.#lose(err.code)
      }
    }
    const want = {
      label: this.#seen?.label ?? this.#selector.label,
      serial: this.#seen?.serial ?? this.#selector.serial,
      manufacturer: this.#selector.manufacturer,
      model: this.#selector.model,
    }
    let look = this.#lookUp(mod, want)
    // A p11-kit-client that shows no token at all has lost its server (or never reached it): only
    // C_Finalize + C_Initialize connects it again, and with no token listed no session is lost.
    if (look.found === undefined && look.slots === 0 && mod.reconnect()) look = this.#lookUp(mod, want)
    const { found } = look
    if (found !== undefined) {
      this.#slot = found.slot
      this.#checked = { info: found.info, at: performance.now() }
      this.#generation = mod.generation
      const { label, serial, manufacturer, model } = found.info
      this.#seen = { label, serial, manufacturer, model }
      if (this.#lost) {
        this.#lost = false
        this.#onEvent({ type: 'reconnected', token: this.describe() })
      }
      return found
    }
    const token = this.describe().replace(/ via .*$/, '')
    if (mod.server !== undefined) {
      const reached = mod.connected()
      throw new AgentError(
        'TOKEN_ABSENT',
        reached
          ? `${this.describe()}: the p11-kit server at ${mod.server} does not export ${token}`
          : `${this.describe()}: the p11-kit server at ${mod.server} is not reachable`,
        {
          remedy: reached
            ? `Check the token URI the server was started with (p11-kit server --provider <module> -n <socket> 'pkcs11:token=<label>') and that ${token} is present on its machine`
            : `Start (or restart) \`p11-kit server\` on that address, or fix P11_KIT_SERVER_ADDRESS in the token's module-env; the agent reconnects at the next request, without a restart`,
          data: { token: this.describe(), server: mod.server },
        },
      )
    }
    throw new AgentError('TOKEN_ABSENT', `${this.describe()} is not present`, {
      remedy: this.absentRemedy(),
      data: { token: this.describe() },
    })
  }

  /**
   * The slot holding the wanted token, and how many slots hold a token at all. A p11-kit-client
   * whose server went away fails C_GetSlotList (CKR_DEVICE_ERROR, docs/remote-tokens.md): for it
   * that counts as no token, so the caller reconnects it.
   */
  #lookUp(
    mod: Pkcs11Module,
    want: Omit<TokenSelector, 'module'>,
  ): { found?: { slot: Handle; info: TokenInfo }; slots: number } {
    let slots: Handle[]
    try {
      slots = mod.slotsWithToken()
    } catch (error) {
      if (mod.server === undefined || !RECONNECT_CODES.has(toAgentError(error).code)) throw error
      return { slots: 0 }
    }
    for (const slot of slots) {
      let info: TokenInfo
      try {
        info = mod.tokenInfo(slot)
      } catch {
        continue // a token vanishing between the two calls is just not there
      }
      if (tokenMatches(info, want)) return { found: { slot, info }, slots: slots.length }
    }
    return { slots: slots.length }
  }

  /**
   * A connection lost mid-request to a p11-kit server says which server (the module alone says
   * only CKR_DEVICE_ERROR); the next request reconnects. Other modules' errors pass unchanged.
   */
  #viaServer(err: AgentError): AgentError {
    const server = this.#module?.server
    if (server === undefined || err.code === 'TOKEN_ABSENT') return err
    return new AgentError(
      err.code,
      `${this.describe()}: the connection to the p11-kit server at ${server} failed (${err.message})`,
      {
        cause: err,
        remedy: `Check that \`p11-kit server\` is running on that address; the agent reconnects at the next request, without a restart`,
        data: { ...err.data, token: this.describe(), server },
      },
    )
  }

  /** Sessions are gone with the token: forget them (closing what can be closed) and the slot. */
  #lose(code: ErrorCode): void {
    const wasConnected = this.#slot !== undefined
    this.#slot = undefined
    this.#checked = undefined
    this.#dropSessions()
    if (wasConnected && !this.#lost) {
      this.#lost = true
      const server = this.#module?.server
      this.#onEvent(
        server === undefined
          ? { type: 'removed', token: this.describe(), code }
          : { type: 'disconnected', token: this.describe(), server, code },
      )
    }
  }

  /** Sessions and key handles are gone with the token, or on `release`. */
  #dropSessions(): void {
    this.#pool.drop()
    this.#keys.forget()
  }

  #mod(): Pkcs11Module {
    if (this.#module === undefined) {
      this.#modulePath = resolveModulePath(this.#selector.module)
      this.#module = Pkcs11Module.load(this.#modulePath)
    }
    return this.#module
  }

  /** For messages: the module file when the name resolves, else what the config said. */
  #resolvedPath(): string {
    if (this.#modulePath === undefined) {
      try {
        this.#modulePath = resolveModulePath(this.#selector.module)
      } catch {
        return this.#selector.module
      }
    }
    return this.#modulePath
  }

  #requireSlot(): Handle {
    if (this.#slot === undefined) return this.#connect().slot
    return this.#slot
  }

  // -------------------------------------------------------------------------------------------
  // Login

  /** Logs in with the held PIN if the token wants a login and the application is not logged in. */
  #ensureLogin(session: PooledSession, need: LoginNeed, info: TokenInfo): void {
    if (!info.loginRequired || this.#knownLoggedIn()) return
    if (this.#noteLogin(this.#mod().sessionLoggedIn(session.handle))) return
    const pin = this.#cachedPin()
    if (pin === undefined) {
      if (need === 'optional') return
      throw new AgentError('PIN_REQUIRED', `${this.describe()} needs its PIN`, {
        remedy: info.protectedAuthPath
          ? 'Unlock the agent (the PIN is entered on the device)'
          : 'Unlock the agent with the PIN, then retry',
        data: { token: this.describe() },
      })
    }
    this.#loginOnce(session, pin)
  }

  #knownLoggedIn(): boolean {
    return this.#loggedInGeneration === this.#pool.generation && this.#pool.any() !== undefined
  }

  /** Records what the token just said about the login (C_GetSessionInfo, C_Login); returns it. */
  #noteLogin(loggedIn: boolean): boolean {
    this.#loggedInGeneration = loggedIn ? this.#pool.generation : undefined
    return loggedIn
  }

  /**
   * Exactly one C_Login. A refused PIN is reported (`pin-rejected`) so its owner drops it; the error
   * keeps the CKR-level message and carries the tries left from the token flags, from which the
   * policy (src/policy/policy.ts) words what the user reads.
   */
  #loginOnce(session: PooledSession, pin: Pin | null, contextSpecific = false): void {
    const mod = this.#mod()
    try {
      mod.login(session.handle, pin, contextSpecific, this.describe())
      if (!contextSpecific) this.#noteLogin(true)
    } catch (error) {
      const err = toAgentError(error)
      if (err.code !== 'PIN_INCORRECT' && err.code !== 'PIN_LOCKED') throw err
      if (pin !== null) this.#onEvent({ type: 'pin-rejected', token: this.describe() })
      let left: TriesLeft | undefined = err.code === 'PIN_LOCKED' ? 'locked' : undefined
      try {
        left ??= triesLeft(mod.tokenInfo(this.#requireSlot()))
      } catch {
        // The flags are a courtesy; the refusal stands without them.
      }
      // The last try just went: the token says CKR_PIN_INCORRECT but its flags say locked.
      const locked =
        left === 'locked' && err.code !== 'PIN_LOCKED'
          ? fromReturnValue(
              CKR.PIN_LOCKED.rv,
              contextSpecific ? 'context-login' : 'login',
              this.describe(),
              err,
            )
          : undefined
      const remedy = (locked ?? err).remedy
      throw new AgentError(locked?.code ?? err.code, err.message, {
        cause: err,
        ...(remedy === undefined ? {} : { remedy }),
        triesLeft: left,
        data: { ...err.data, token: this.describe() },
      })
    }
  }
}
