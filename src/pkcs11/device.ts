/**
 * All device lifecycle in one object: token selection, a session pool, login, key lookup, key
 * generation, signing, recovery after removal, release. Every request has the same shape
 * (yubikey-agent main.go): acquire, health-check, reconnect if needed, work, maybe release.
 */
import { randomBytes } from 'node:crypto'
import { basename } from 'node:path'
import { AgentError, toAgentError, type ErrorCode } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Pin } from '../lib/secret.js'
import { isP384EcParams, publicKeyFromDevice } from '../keys/point.js'
import { Pkcs11Signer } from '../signer/pkcs11.js'
import type { Signer } from '../signer/signer.js'
import { Pkcs11Module, type Handle, type KeyAttributes, type TokenInfo } from './binding.js'
import { resolveModulePath } from './modules.js'

export { resolveModulePath } from './modules.js'

export interface TokenIdentity {
  label: string
  serial: string
  manufacturer: string
  model: string
}

/** Every token present on a module (for `list` and `setup`); selection then goes by label/serial. */
export async function listTokens(moduleNameOrPath: string): Promise<TokenIdentity[]> {
  const mod = Pkcs11Module.load(resolveModulePath(moduleNameOrPath))
  const found: TokenIdentity[] = []
  for (const slot of mod.slotsWithToken()) {
    try {
      const info = mod.tokenInfo(slot)
      if (!info.tokenInitialized) continue
      found.push({
        label: info.label,
        serial: info.serial,
        manufacturer: info.manufacturer,
        model: info.model,
      })
    } catch {
      // A token removed between the two calls is simply not listed.
    }
  }
  return found
}

export interface TokenSelector {
  /** Absolute path, or a known name from native-config/modules.json ("softhsm", "ykcs11", ...). */
  module: string
  label?: string | undefined
  serial?: string | undefined
  manufacturer?: string | undefined
  model?: string | undefined
}

export interface KeySelector {
  label?: string | undefined
  /** CKA_ID as hex. */
  id?: string | undefined
}

export interface DeviceKey {
  label: string
  /** CKA_ID as lowercase hex. */
  id: string
  /** SEC1 compressed P-384 point, 49 bytes. */
  publicKey: Uint8Array
  alwaysAuthenticate: boolean
  extractable: boolean
  sensitive: boolean
}

export interface TokenStatus {
  present: boolean
  label?: string
  serial?: string
  manufacturer?: string
  model?: string
  loginRequired: boolean
  loggedIn: boolean
  protectedAuthPath: boolean
  pinCountLow: boolean
  pinFinalTry: boolean
  pinLocked: boolean
  sessionsOpen: number
}

export type DeviceEvent =
  /** The token vanished (removal, session loss, device error); `code` says how it was noticed. */
  | { type: 'removed'; token: string; code: ErrorCode }
  /** The token was found again after a loss; sessions reopen lazily. */
  | { type: 'reconnected'; token: string }
  /** All sessions were closed on request so other programs can use the device. */
  | { type: 'released'; token: string }

export interface DeviceOptions {
  /** The PIN the owner still holds (its cache); used only to log in again after reconnecting. */
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

interface PooledSession {
  handle: Handle
  generation: number
  busy: boolean
}

interface KeyEntry {
  key: DeviceKey
}

type LoginNeed = 'required' | 'optional' | 'none'

interface Work {
  /** Set once the device has started something a retry would repeat (a touch, a key write). */
  committed: boolean
  /** Set once an operation (C_SignInit) may be left active on the session if a later step fails. */
  operationStarted: boolean
}

function triesLeft(info: TokenInfo): 'low' | 'final' | 'locked' | undefined {
  if (info.pinLocked) return 'locked'
  if (info.pinFinalTry) return 'final'
  if (info.pinCountLow) return 'low'
  return undefined
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex')
}

function parseHexId(id: string): Buffer {
  const clean = id.replace(/[:\s]/g, '').toLowerCase()
  if (clean.length === 0 || clean.length % 2 !== 0 || !/^[0-9a-f]+$/.test(clean)) {
    throw new AgentError('USAGE', `key id '${id}' is not hex`, {
      remedy: 'Give the CKA_ID as hex digits, e.g. 01 or 0a1b',
    })
  }
  return Buffer.from(clean, 'hex')
}

export class Device {
  readonly #selector: Readonly<TokenSelector>
  readonly #cachedPin: () => Pin | undefined
  readonly #onEvent: (event: DeviceEvent) => void
  #modulePath: string | undefined
  #module: Pkcs11Module | undefined
  #slot: Handle | undefined
  /** Identity last seen on the device (label/serial), used to find it again after removal. */
  #seen: { label: string; serial: string; manufacturer: string; model: string } | undefined
  #sessions: PooledSession[] = []
  #generation = 0
  #waiters: Array<() => void> = []
  #lost = false
  /** Private key handles by CKA_ID/label, valid for this session generation (token object handles
   * hold across the application's sessions, PKCS#11 v2.40 §2.4; a reconnect may renumber them). */
  #keyCache = new Map<string, { handle: Handle; alwaysAuthenticate: boolean; generation: number }>()
  /**
   * The token's key list (public points and attributes) for this session generation. Reading it costs
   * a C_FindObjects plus several C_GetAttributeValue per key — about 3 ms on SoftHSM, most of an agent
   * request — and it only changes with keygen, login state, reconnection or another program.
   */
  #keyList: { entries: KeyEntry[]; generation: number } | undefined

  #forgetKeys(): void {
    this.#keyCache.clear()
    this.#keyList = undefined
  }

  #keys(session: PooledSession): KeyEntry[] {
    if (this.#keyList !== undefined && this.#keyList.generation === this.#generation)
      return this.#keyList.entries
    const entries = this.#collectKeys(session)
    this.#keyList = { entries, generation: this.#generation }
    return entries
  }
  /** PINs the token rejected: never sent again automatically. */
  readonly #rejectedPins = new WeakSet<Pin>()

  constructor(selector: TokenSelector, options: DeviceOptions = {}) {
    this.#selector = Object.freeze({ ...selector })
    this.#cachedPin = options.cachedPin ?? (() => undefined)
    this.#onEvent = options.onEvent ?? (() => {})
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

  async status(): Promise<TokenStatus> {
    const absent: TokenStatus = {
      present: false,
      loginRequired: false,
      loggedIn: false,
      protectedAuthPath: false,
      pinCountLow: false,
      pinFinalTry: false,
      pinLocked: false,
      sessionsOpen: this.#sessions.length,
    }
    let info: TokenInfo
    try {
      info = this.#connect().info
    } catch (error) {
      const err = toAgentError(error)
      if (RECONNECT_CODES.has(err.code)) return absent
      throw err
    }
    const any = this.#sessions.find((s) => s.generation === this.#generation)
    let loggedIn = false
    if (any !== undefined) {
      try {
        loggedIn = this.#mod().sessionLoggedIn(any.handle)
      } catch {
        loggedIn = false
      }
    }
    return {
      present: true,
      label: info.label,
      serial: info.serial,
      manufacturer: info.manufacturer,
      model: info.model,
      loginRequired: info.loginRequired,
      loggedIn,
      protectedAuthPath: info.protectedAuthPath,
      pinCountLow: info.pinCountLow,
      pinFinalTry: info.pinFinalTry,
      pinLocked: info.pinLocked,
      sessionsOpen: this.#sessions.length,
    }
  }

  async needsLogin(): Promise<boolean> {
    return this.#request('none', (session) => {
      const info = this.#mod().tokenInfo(this.#requireSlot())
      return info.loginRequired && !this.#mod().sessionLoggedIn(session.handle)
    })
  }

  async login(pin: Pin | null): Promise<void> {
    await this.#request('none', (session) => {
      this.#forgetKeys()
      this.#loginOnce(session, pin)
    })
  }

  async logout(): Promise<void> {
    await this.#request('none', (session) => {
      // Private object handles die with the login on some modules (SoftHSM: CKR_KEY_HANDLE_INVALID).
      this.#forgetKeys()
      this.#mod().logout(session.handle, this.describe())
    })
  }

  async listKeys(): Promise<DeviceKey[]> {
    return this.#request('optional', (session) => {
      this.#keyList = undefined
      return this.#keys(session).map((e) => e.key)
    })
  }

  async findKey(key: KeySelector): Promise<DeviceKey> {
    return this.#request('optional', (session) => {
      const fromCache = this.#keyList?.generation === this.#generation
      try {
        return this.#pick(this.#keys(session), key).key
      } catch (error) {
        // Not in the cached list: another program may have made the key since; read the token again.
        if (!fromCache) throw error
        this.#keyList = undefined
        return this.#pick(this.#keys(session), key).key
      }
    })
  }

  async signer(key: KeySelector): Promise<Signer> {
    const found = await this.findKey(key)
    const signer = new Pkcs11Signer(
      {
        description: `${this.describe()} key '${found.label}' (id ${found.id})`,
        signDigest: async (digest) => await this.#signDigest({ id: found.id, label: found.label }, digest),
      },
      found,
    )
    return {
      publicKey: signer.publicKey,
      description: signer.description,
      sign: async (message) => {
        try {
          return await signer.sign(message)
        } catch (error) {
          // The key was replaced behind our back (its public half no longer matches): the next
          // findKey must read the token again instead of trusting the cached list.
          if (error instanceof AgentError && error.code === 'SELF_CHECK_FAILED') this.#forgetKeys()
          throw error
        }
      },
    }
  }

  async generateKey(
    key: { label: string; id?: string },
    options: { force?: boolean } = {},
  ): Promise<DeviceKey> {
    if (key.label.trim() === '')
      throw new AgentError('USAGE', 'a key label is required', { remedy: 'Pass --label NAME' })
    const givenId = key.id === undefined ? undefined : parseHexId(key.id)
    return this.#request('required', (_session, work) => {
      const mod = this.#mod()
      const where = this.describe()
      // Keygen writes token objects: its own read-write session, not one of the signing pool's.
      const rw = mod.openSession(this.#requireSlot(), true)
      try {
        const byLabel = (['private', 'public'] as const).flatMap((cls) =>
          mod.findKeys(rw, { cls, label: key.label }, where),
        )
        const byId =
          givenId === undefined
            ? []
            : (['private', 'public'] as const).flatMap((cls) => mod.findKeys(rw, { cls, id: givenId }, where))
        const existing = new Map<string, Handle>()
        for (const h of [...byLabel, ...byId]) existing.set(hex(h), h)
        if (existing.size > 0 && options.force !== true) {
          const what = [
            byLabel.length > 0 ? `a key labelled '${key.label}'` : '',
            byId.length > 0 && givenId !== undefined ? `a key with id ${hex(givenId)}` : '',
          ]
            .filter((t) => t !== '')
            .join(' and ')
          throw new AgentError('KEY_EXISTS', `${where} already has ${what}`, {
            remedy:
              'Choose another label/id, or pass --force to destroy the old key (registries that know its public key will then reject your tokens)',
            data: { label: key.label, ...(givenId === undefined ? {} : { id: hex(givenId) }) },
          })
        }
        // Replacing a key without a new id keeps its CKA_ID (on PIV tokens the id is the slot).
        const previousId = byLabel
          .map((h) => mod.keyAttributes(rw, h, 'private', where).id)
          .find((b) => b.length > 0)
        const id = givenId ?? previousId ?? randomBytes(8)
        work.committed = true
        this.#forgetKeys()
        const pair = mod.generateP384(rw, key.label, id, where)
        // Old objects go only after the new pair exists, so a failed generation destroys nothing.
        for (const h of existing.values()) mod.destroy(rw, h, where)
        const priv = mod.keyAttributes(rw, pair.privateKey, 'private', where)
        const pub = mod.keyAttributes(rw, pair.publicKey, 'public', where)
        const entry = this.#entry(priv, pub)
        if (entry === undefined) {
          throw new AgentError('KEY_INVALID', `${where} generated a key that is not a readable P-384 key`, {
            remedy: 'See native-config/devices.md for this device',
          })
        }
        return entry.key
      } finally {
        mod.closeSession(rw)
      }
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
    fn: (session: PooledSession, work: Work) => T | Promise<T>,
  ): Promise<T> {
    for (let attempt = 0; ; attempt += 1) {
      const session = await this.#acquire()
      const work: Work = { committed: false, operationStarted: false }
      let healthy = true
      try {
        if (login !== 'none') this.#ensureLogin(session, login)
        return await fn(session, work)
      } catch (error) {
        const err = toAgentError(error)
        // A refused PIN, a missing key etc. leave the session as it was; only a possibly still
        // active operation (PKCS#11 §5.2: C_SignInit ... C_Sign) makes it unusable.
        healthy = !work.operationStarted && !RECONNECT_CODES.has(err.code)
        if (RECONNECT_CODES.has(err.code)) {
          this.#lose(err.code)
          if (attempt === 0 && !work.committed && err.code === 'SESSION_LOST') continue
        }
        throw err
      } finally {
        this.#giveBack(session, healthy)
      }
    }
  }

  async #acquire(): Promise<PooledSession> {
    for (;;) {
      this.#connect()
      const idle = this.#sessions.find((s) => !s.busy && s.generation === this.#generation)
      if (idle !== undefined) {
        idle.busy = true
        return idle
      }
      if (this.#sessions.length < LIMITS.sessionsPerToken) {
        let handle: Handle
        try {
          handle = this.#mod().openSession(this.#requireSlot(), false)
        } catch (error) {
          const err = toAgentError(error)
          if (RECONNECT_CODES.has(err.code)) this.#lose(err.code)
          throw err
        }
        const session: PooledSession = { handle, generation: this.#generation, busy: true }
        this.#sessions.push(session)
        return session
      }
      if (this.#waiters.length >= LIMITS.maxPendingSigns) {
        throw new AgentError(
          'AGENT_BUSY',
          `${this.describe()}: ${this.#waiters.length} requests are already waiting for the device`,
          {
            remedy: 'Wait for pending signatures (touches) to finish, then retry',
          },
        )
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve))
    }
  }

  /** Back to the pool; a session from before a reconnect/release, or one that failed, is closed. */
  #giveBack(session: PooledSession, healthy: boolean): void {
    session.busy = false
    if (!healthy || session.generation !== this.#generation) {
      this.#sessions = this.#sessions.filter((s) => s !== session)
      if (
        session.generation === this.#generation &&
        this.#slot !== undefined &&
        !this.#sessions.some((s) => s.generation === this.#generation)
      ) {
        // Closing the application's last session logs the token out (PKCS#11 §5.6): open the
        // replacement first so one failed signature does not cost the user a PIN entry.
        try {
          this.#sessions.push({
            handle: this.#mod().openSession(this.#slot, false),
            generation: this.#generation,
            busy: false,
          })
        } catch {
          // The device is going away; the next request reconnects.
        }
      }
      this.#module?.closeSession(session.handle)
    }
    this.#waiters.shift()?.()
  }

  /** Finds the token (health check when connected). Synchronous: no request interleaves with it. */
  #connect(): { slot: Handle; info: TokenInfo } {
    const mod = this.#mod()
    if (this.#slot !== undefined) {
      try {
        const info = mod.tokenInfo(this.#slot)
        if (
          this.#seen === undefined ||
          (info.label === this.#seen.label && info.serial === this.#seen.serial)
        ) {
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
    for (const slot of mod.slotsWithToken()) {
      let info: TokenInfo
      try {
        info = mod.tokenInfo(slot)
      } catch {
        continue // a token vanishing between the two calls is just not there
      }
      if (want.label !== undefined && info.label !== want.label) continue
      if (want.serial !== undefined && want.serial !== '' && info.serial !== want.serial) continue
      if (want.manufacturer !== undefined && info.manufacturer !== want.manufacturer) continue
      if (want.model !== undefined && info.model !== want.model) continue
      this.#slot = slot
      this.#seen = {
        label: info.label,
        serial: info.serial,
        manufacturer: info.manufacturer,
        model: info.model,
      }
      if (this.#lost) {
        this.#lost = false
        this.#onEvent({ type: 'reconnected', token: this.describe() })
      }
      return { slot, info }
    }
    throw new AgentError('TOKEN_ABSENT', `${this.describe()} is not present`, {
      remedy: `Insert ${this.describe().replace(/ via .*$/, '')}; the agent picks it up without a restart`,
      data: { token: this.describe() },
    })
  }

  /** Sessions are gone with the token: forget them (closing what can be closed) and the slot. */
  #lose(code: ErrorCode): void {
    const wasConnected = this.#slot !== undefined
    this.#slot = undefined
    this.#dropSessions()
    if (wasConnected && !this.#lost) {
      this.#lost = true
      this.#onEvent({ type: 'removed', token: this.describe(), code })
    }
  }

  /** Idle sessions close now; busy ones (a sign waiting for a touch) close when they come back. */
  #dropSessions(): void {
    this.#generation += 1
    this.#forgetKeys()
    for (const s of this.#sessions.filter((x) => !x.busy)) this.#module?.closeSession(s.handle)
    this.#sessions = this.#sessions.filter((s) => s.busy)
    for (const wake of this.#waiters.splice(0)) wake()
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
  #ensureLogin(session: PooledSession, need: LoginNeed): void {
    const mod = this.#mod()
    const info = mod.tokenInfo(this.#requireSlot())
    if (!info.loginRequired || mod.sessionLoggedIn(session.handle)) return
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
    if (this.#rejectedPins.has(pin)) {
      if (need === 'optional') return
      throw new AgentError(
        'PIN_INCORRECT',
        `${this.describe()}: the held PIN was already rejected; it is not tried again`,
        {
          remedy: 'Enter the correct PIN',
          data: { token: this.describe() },
        },
      )
    }
    this.#loginOnce(session, pin)
  }

  /** Exactly one C_Login. On a wrong PIN, the tries left (token flags) go into the error. */
  #loginOnce(session: PooledSession, pin: Pin | null, contextSpecific = false): void {
    const mod = this.#mod()
    try {
      mod.login(session.handle, pin, contextSpecific, this.describe())
    } catch (error) {
      const err = toAgentError(error)
      if (err.code !== 'PIN_INCORRECT' && err.code !== 'PIN_LOCKED') throw err
      if (pin !== null) this.#rejectedPins.add(pin)
      let left: 'low' | 'final' | 'locked' | undefined
      try {
        left = triesLeft(mod.tokenInfo(this.#requireSlot()))
      } catch {
        left = undefined
      }
      if (err.code === 'PIN_LOCKED') left = 'locked'
      const text =
        left === 'locked'
          ? 'the PIN is now locked'
          : left === 'final'
            ? 'one try left before the PIN locks'
            : left === 'low'
              ? 'few tries left'
              : undefined
      throw new AgentError(
        left === 'locked' ? 'PIN_LOCKED' : err.code,
        // A CKR_PIN_LOCKED message already says so; add the tries-left text only where it is news.
        text === undefined || err.code === 'PIN_LOCKED' ? err.message : `${err.message} (${text})`,
        {
          cause: err,
          remedy:
            left === 'locked'
              ? 'Unlock the PIN with the PUK / SO PIN using the device vendor tool'
              : left === 'final'
                ? 'The next wrong PIN locks the token: check the PIN carefully before trying again'
                : (err.remedy ?? 'Enter the correct PIN'),
          data: { ...err.data, ...(left === undefined ? {} : { triesLeft: left }), token: this.describe() },
        },
      )
    }
  }

  // -------------------------------------------------------------------------------------------
  // Keys

  #entry(priv: KeyAttributes | undefined, pub: KeyAttributes | undefined): KeyEntry | undefined {
    const main = priv ?? pub
    if (main === undefined || !main.isEc) return undefined
    // Some modules expose no public object: the private key's CKA_EC_POINT is the fallback.
    const point = pub?.ecPoint ?? priv?.ecPoint
    if (point === undefined) return undefined
    const params = pub?.ecParams ?? priv?.ecParams
    let publicKey: Uint8Array
    try {
      // P-384 by named OID / explicit parameters, or (params absent) by the point length check inside.
      if (params !== undefined && !isP384EcParams(params)) return undefined
      publicKey = publicKeyFromDevice(point)
    } catch {
      return undefined
    }
    return {
      key: {
        label: main.label,
        id: hex(main.id),
        publicKey,
        // Without a login the private object may be invisible (CKA_PRIVATE): these describe the
        // private key only when it was visible; otherwise they are the non-extractable defaults.
        alwaysAuthenticate: priv?.alwaysAuthenticate ?? false,
        extractable: priv?.extractable ?? false,
        sensitive: priv?.sensitive ?? true,
      },
    }
  }

  #collectKeys(session: PooledSession): KeyEntry[] {
    const mod = this.#mod()
    const where = this.describe()
    const pubs = mod
      .findKeys(session.handle, { cls: 'public' }, where)
      .map((h) => mod.keyAttributes(session.handle, h, 'public', where))
    const used = new Set<KeyAttributes>()
    const entries: KeyEntry[] = []
    for (const h of mod.findKeys(session.handle, { cls: 'private' }, where)) {
      const priv = mod.keyAttributes(session.handle, h, 'private', where)
      const pub =
        (priv.id.length > 0 ? pubs.find((p) => p.id.equals(priv.id)) : undefined) ??
        pubs.find((p) => p.id.length === 0 && priv.id.length === 0 && p.label === priv.label)
      if (pub !== undefined) used.add(pub)
      const entry = this.#entry(priv, pub)
      if (entry !== undefined) entries.push(entry)
    }
    for (const pub of pubs) {
      if (used.has(pub)) continue
      const entry = this.#entry(undefined, pub)
      if (entry !== undefined) entries.push(entry)
    }
    return entries
  }

  #pick(entries: KeyEntry[], selector: KeySelector): KeyEntry {
    if (selector.label === undefined && selector.id === undefined) {
      throw new AgentError('USAGE', 'a key needs a label or an id', {
        remedy: 'Configure `key_label` or `key_id` for this key',
      })
    }
    const id = selector.id === undefined ? undefined : hex(parseHexId(selector.id))
    const matches = entries.filter(
      (e) =>
        (selector.label === undefined || e.key.label === selector.label) &&
        (id === undefined || e.key.id === id),
    )
    const wanted = [
      selector.label === undefined ? '' : `label '${selector.label}'`,
      id === undefined ? '' : `id ${id}`,
    ]
      .filter((s) => s !== '')
      .join(', ')
    if (matches.length === 0) {
      const available = entries.map((e) => `'${e.key.label}' (id ${e.key.id})`).join(', ')
      throw new AgentError('KEY_NOT_FOUND', `${this.describe()} has no P-384 key with ${wanted}`, {
        remedy:
          entries.length === 0
            ? 'Generate one with `cargo-pkcs11-agent keygen` (or log in first: private keys may be hidden until then)'
            : `Available keys: ${available}`,
        data: { token: this.describe() },
      })
    }
    if (matches.length > 1) {
      throw new AgentError(
        'CONFIG_INVALID',
        `${this.describe()} has ${matches.length} P-384 keys with ${wanted}`,
        {
          remedy: `Select the key by id as well: ${matches.map((e) => e.key.id).join(', ')}`,
        },
      )
    }
    return matches[0] as KeyEntry
  }

  // -------------------------------------------------------------------------------------------
  // Signing

  /** The private key object for signing, looked up once per session generation. */
  #privateKey(
    session: PooledSession,
    key: { id: string; label: string },
  ): { handle: Handle; alwaysAuthenticate: boolean; cached: boolean } {
    const cacheKey = `${key.id}/${key.label}`
    const cached = this.#keyCache.get(cacheKey)
    if (cached !== undefined && cached.generation === this.#generation) return { ...cached, cached: true }
    const mod = this.#mod()
    const where = this.describe()
    const query =
      key.id === ''
        ? { cls: 'private' as const, label: key.label }
        : { cls: 'private' as const, id: Buffer.from(key.id, 'hex') }
    let handles = mod.findKeys(session.handle, query, where)
    // Same CKA_ID on several private objects (possible on SoftHSM): the label decides.
    if (handles.length > 1 && key.id !== '')
      handles = handles.filter(
        (h) => mod.keyAttributes(session.handle, h, 'private', where).label === key.label,
      )
    const [handle] = handles
    if (handle === undefined || handles.length > 1) {
      throw new AgentError(
        'KEY_NOT_FOUND',
        `${where}: the private key '${key.label}' (id ${key.id === '' ? 'none' : key.id}) is ${handle === undefined ? 'not visible' : 'ambiguous'}`,
        {
          remedy:
            handle === undefined
              ? 'Log in to the token (unlock the agent) and retry; check the key still exists with `cargo-pkcs11-agent list --login`'
              : 'Give each key a distinct CKA_ID',
        },
      )
    }
    const attrs = mod.keyAttributes(session.handle, handle, 'private', where)
    const entry = { handle, alwaysAuthenticate: attrs.alwaysAuthenticate, generation: this.#generation }
    this.#keyCache.set(cacheKey, entry)
    return { ...entry, cached: false }
  }

  /** C_SignInit (+ context-specific login) then C_Sign(CKM_ECDSA) on a pooled session, async. */
  async #signDigest(key: { id: string; label: string }, digest: Uint8Array): Promise<Uint8Array> {
    return this.#request('required', async (session, work) => {
      const mod = this.#mod()
      const where = this.describe()
      let entry = this.#privateKey(session, key)
      try {
        mod.signInit(session.handle, entry.handle, where)
      } catch (error) {
        // A cached handle can go stale (logout, key replaced by another program): look it up again.
        if (!(error instanceof AgentError && error.code === 'KEY_NOT_FOUND' && entry.cached)) throw error
        this.#forgetKeys()
        entry = this.#privateKey(session, key)
        mod.signInit(session.handle, entry.handle, where)
      }
      work.operationStarted = true
      if (entry.alwaysAuthenticate) {
        // CKA_ALWAYS_AUTHENTICATE (PKCS#11 v2.40 §4.9): C_Login(CKU_CONTEXT_SPECIFIC) after
        // C_SignInit, before each C_Sign, with the PIN the owner holds.
        const pin = this.#cachedPin()
        if (pin === undefined) {
          throw new AgentError(
            'PIN_REQUIRED',
            `${where}: key '${key.label}' needs the PIN for every signature`,
            {
              remedy: 'Unlock the agent with the PIN, then retry',
            },
          )
        }
        this.#loginOnce(session, pin, true)
      }
      work.committed = true
      // A missed YubiKey touch (ykcs11: CKR_USER_NOT_LOGGED_IN from C_Sign) is TOUCH_TIMEOUT in binding.ts.
      return new Uint8Array(await mod.signAsync(session.handle, Buffer.from(digest), where))
    })
  }
}
