/**
 * The only module that imports pkcs11js. It loads PKCS#11 libraries, wraps the few Cryptoki calls the
 * agent needs, and hands every failed call's `CKR_*` return value (by number, never by message text)
 * to the one table in ckr.ts. Nothing above src/pkcs11/ sees a CKR value or a pkcs11js type.
 *
 * graphene-pk11 is not used: it is plain JS over pkcs11js and adds only an object model, a
 * callback-only sign with 1024-byte buffers and error detection by message text; pkcs11js already
 * gives `C_SignAsync` and a numeric `Pkcs11Error.code`.
 */
import {
  accessSync,
  constants as fsConstants,
  existsSync,
  readFileSync,
  realpathSync,
  statSync,
} from 'node:fs'
import { basename } from 'node:path'
import pkcs11js from 'pkcs11js'
import { AgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Pin } from '../lib/secret.js'
import { CKR, fromReturnValue, type Operation } from './ckr.js'

/** An opaque slot, session or object handle (pkcs11js encodes CK_ULONG handles as Buffers). */
export type Handle = Buffer

const k = pkcs11js

// Session states (PKCS#11 v2.40 §5.7 CK_STATE), not exported by pkcs11js.
const CKS_RO_USER_FUNCTIONS = 1
const CKS_RW_USER_FUNCTIONS = 3

function errorValue(error: unknown): number | undefined {
  if (error instanceof k.Pkcs11Error && typeof error.code === 'number' && error.code !== 0) return error.code
  return undefined
}

/** Cryptoki failure → AgentError, through the one table in ckr.ts. `where` names the module/token. */
function translate(error: unknown, op: Operation, where: string): AgentError {
  if (error instanceof AgentError) return error
  const rv = errorValue(error)
  if (rv !== undefined) return fromReturnValue(rv, op, where, error)
  const text = error instanceof Error ? error.message : String(error)
  return new AgentError('DEVICE_ERROR', `${where}: PKCS#11 ${op} failed: ${text}`, {
    cause: error,
    remedy: 'Run `cargo-pkcs11-agent doctor`',
    data: { operation: op },
  })
}

function call<T>(op: Operation, where: string, fn: () => T): T {
  try {
    return fn()
  } catch (error) {
    throw translate(error, op, where)
  }
}

// ---------------------------------------------------------------------------------------------
// Module loading

/** SoftHSM reports a missing config or token directory only as CKR_GENERAL_ERROR: check ourselves. */
function checkSoftHsmConfig(path: string): void {
  if (!basename(path).includes('softhsm')) return
  const conf = process.env['SOFTHSM2_CONF'] ?? '/etc/softhsm/softhsm2.conf'
  const fromEnv = process.env['SOFTHSM2_CONF'] !== undefined
  const source = fromEnv ? `SOFTHSM2_CONF (${conf})` : `the default SoftHSM config ${conf}`
  let text: string
  try {
    text = readFileSync(conf, 'utf8')
  } catch (cause) {
    throw new AgentError('MODULE_LOAD_FAILED', `SoftHSM cannot start: ${source} cannot be read`, {
      cause,
      remedy: fromEnv
        ? 'Point SOFTHSM2_CONF at an existing softhsm2.conf'
        : 'Create it or set SOFTHSM2_CONF to your softhsm2.conf',
      data: { config: conf },
    })
  }
  const line = text.split('\n').find((l) => /^\s*directories\.tokendir\s*=/.test(l))
  if (line === undefined) {
    throw new AgentError('MODULE_LOAD_FAILED', `SoftHSM cannot start: ${conf} has no directories.tokendir`, {
      remedy: 'Add `directories.tokendir = <dir>` to the SoftHSM config',
      data: { config: conf },
    })
  }
  const tokendir = line.slice(line.indexOf('=') + 1).trim()
  try {
    if (!statSync(tokendir).isDirectory()) throw new Error('not a directory')
    accessSync(tokendir, fsConstants.R_OK | fsConstants.W_OK | fsConstants.X_OK)
  } catch (cause) {
    throw new AgentError(
      'MODULE_LOAD_FAILED',
      `SoftHSM cannot start: token directory ${tokendir} (from ${conf}) is missing or not writable`,
      {
        cause,
        remedy: `Create ${tokendir} (mode 0700, owned by you) or fix directories.tokendir`,
        data: { config: conf, tokendir },
      },
    )
  }
}

export interface TokenInfo {
  label: string
  serial: string
  manufacturer: string
  model: string
  loginRequired: boolean
  protectedAuthPath: boolean
  pinCountLow: boolean
  pinFinalTry: boolean
  pinLocked: boolean
  tokenInitialized: boolean
  /** CKF_USER_PIN_INITIALIZED: a token set up by C_InitToken but not yet C_InitPIN (setup's SoftHSM store). */
  userPinInitialized: boolean
}

export type KeyClass = 'private' | 'public'

export interface KeyQuery {
  cls: KeyClass
  label?: string
  id?: Buffer
}

export interface KeyAttributes {
  label: string
  id: Buffer
  /** CKA_EC_PARAMS as stored (named OID or explicit parameters); undefined if unreadable. */
  ecParams: Buffer | undefined
  /** CKA_EC_POINT as stored (usually DER OCTET STRING around the SEC1 point); undefined if absent. */
  ecPoint: Buffer | undefined
  isEc: boolean
  alwaysAuthenticate: boolean
  extractable: boolean
  sensitive: boolean
}

/**
 * The p11-kit server a p11-kit-client module talks to (docs/remote-tokens.md). The client reads
 * P11_KIT_SERVER_ADDRESS once, in C_GetFunctionList, and falls back to the runtime directory
 * (p11-kit `p11-kit/client.c` get_server_address); undefined for every other module.
 */
function p11KitServerAddress(path: string): string | undefined {
  if (!/^p11-kit-client\./.test(basename(path))) return undefined
  const set = process.env['P11_KIT_SERVER_ADDRESS']
  if (set !== undefined && set !== '') return set
  const runtime = process.env['XDG_RUNTIME_DIR']
  return runtime !== undefined && runtime !== ''
    ? `unix:path=${runtime}/p11-kit/pkcs11`
    : 'the default address ($XDG_RUNTIME_DIR/p11-kit/pkcs11)'
}

/** CK_INFO.libraryDescription of a p11-kit-client that has no server (p11-kit `p11-kit/rpc-client.c` fill_stand_in_info). */
const P11_KIT_NO_CONNECTION = 'p11-kit (no connection)'

// DER of OID 1.3.132.0.34 (secp384r1), the named-curve form of CKA_EC_PARAMS (X9.62 ECParameters).
const P384_OID_DER = Buffer.from('06052b81040022', 'hex')

/**
 * CK_TOKEN_INFO strings are fixed-width and blank padded (PKCS#11 v2.40 §3.2), but tpm2-pkcs11 pads
 * with NUL bytes ("SW   TPM\0\0…"), which `trim()` keeps: strip both.
 */
function blankPadded(text: string): string {
  return text.replace(/[\s\0]+$/u, '').replace(/^\s+/u, '')
}

/** A loaded, initialised PKCS#11 library. One instance per real path, shared by all Devices. */
export class Pkcs11Module {
  static readonly #registry = new Map<string, Pkcs11Module>()
  static #inFlightSigns = 0
  static readonly #signWaiters: Array<() => void> = []

  readonly path: string
  readonly name: string
  /** p11-kit-client only: the server address the module connects to (docs/remote-tokens.md). */
  readonly server: string | undefined
  readonly #p11: InstanceType<typeof pkcs11js.PKCS11>
  /** Counts `reconnect()`s: handles from an earlier generation mean nothing any more. */
  #generation = 0
  /**
   * Sessions opened since the last (re)initialisation, by object identity: after C_Finalize +
   * C_Initialize the module hands out the same handle numbers again (p11-kit-client: 0x11 before and
   * after, measured), so a stale handle would act on another Device's new session.
   */
  #live = new WeakSet<Handle>()
  /** Signs of this module running on the threadpool; C_Finalize must not pull the module from under them. */
  #inFlight = 0

  private constructor(path: string, p11: InstanceType<typeof pkcs11js.PKCS11>, server: string | undefined) {
    this.path = path
    this.name = basename(path)
    this.server = server
    this.#p11 = p11
  }

  get generation(): number {
    return this.#generation
  }

  /**
   * Loads and initialises the library at `path` once per process; later calls (any Device, any
   * token) share it. C_Initialize gets CKF_OS_LOCKING_OK because the agent calls in from the libuv
   * threadpool (PKCS#11 v2.40 §5.4: without it a module may assume single-threaded use), and
   * CKR_CRYPTOKI_ALREADY_INITIALIZED is success (another component in the process initialised it).
   * C_Finalize is called only by `reconnect()`, for p11-kit-client: it ends every session of the
   * module in the process.
   */
  static load(path: string): Pkcs11Module {
    if (!existsSync(path)) {
      throw new AgentError('MODULE_LOAD_FAILED', `PKCS#11 module ${path} does not exist`, {
        remedy:
          'Install the module package or fix `module` in the config (known names: see native-config/modules.json)',
        data: { module: path },
      })
    }
    const real = realpathSync(path)
    const known = Pkcs11Module.#registry.get(real)
    if (known !== undefined) return known
    checkSoftHsmConfig(real)
    // Read before `load`: p11-kit-client takes the address in C_GetFunctionList.
    const server = p11KitServerAddress(real)
    const p11 = new pkcs11js.PKCS11()
    try {
      p11.load(real)
    } catch (cause) {
      throw new AgentError(
        'MODULE_LOAD_FAILED',
        `PKCS#11 module ${path} cannot be loaded: ${cause instanceof Error ? cause.message : String(cause)}`,
        {
          cause,
          remedy: 'Check that the file is a PKCS#11 library for this platform and architecture',
          data: { module: path },
        },
      )
    }
    try {
      p11.C_Initialize({ flags: k.CKF_OS_LOCKING_OK })
    } catch (error) {
      if (errorValue(error) !== k.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        try {
          p11.close()
        } catch {
          // The library failed to initialise; unloading is best effort.
        }
        throw translate(error, 'initialize', basename(path))
      }
    }
    const module = new Pkcs11Module(real, p11, server)
    Pkcs11Module.#registry.set(real, module)
    return module
  }

  /**
   * p11-kit-client only: C_Finalize + C_Initialize, which is the only way it connects again. After
   * its server went away every call is CKR_DEVICE_ERROR (p11-kit `p11-kit/rpc-transport.c`
   * rpc_transport_buffer closes the socket for good), and a client initialised while the server was
   * down lists no slots until initialised again (`p11-kit/rpc-client.c` rpc_C_Initialize). Callers
   * do this only when the module shows no token at all, so no live session of any Device is lost.
   * Refused (false) while one of its signs runs on the threadpool; true once the server answers.
   */
  reconnect(): boolean {
    if (this.server === undefined || this.#inFlight > 0) return false
    this.#generation += 1
    this.#live = new WeakSet<Handle>()
    try {
      this.#p11.C_Finalize()
    } catch {
      // Not initialised (an earlier C_Initialize failed) or the transport is gone: initialise anyway.
    }
    try {
      this.#p11.C_Initialize({ flags: k.CKF_OS_LOCKING_OK })
    } catch (error) {
      if (errorValue(error) !== k.CKR_CRYPTOKI_ALREADY_INITIALIZED) return false
    }
    return this.connected()
  }

  /** False for a p11-kit-client initialised while its server was not there; true for every other module. */
  connected(): boolean {
    if (this.server === undefined) return true
    try {
      return blankPadded(this.#p11.C_GetInfo().libraryDescription) !== P11_KIT_NO_CONNECTION
    } catch {
      return false
    }
  }

  /** A session from before the last reconnect is gone, whatever its handle number now means. */
  #checkLive(session: Handle, op: Operation, where: string): void {
    if (!this.#live.has(session)) throw fromReturnValue(CKR.SESSION_HANDLE_INVALID.rv, op, where, undefined)
  }

  /** Slots that currently hold a token (C_GetSlotList(TRUE)). */
  slotsWithToken(): Handle[] {
    return call('slots', this.name, () => this.#p11.C_GetSlotList(true))
  }

  tokenInfo(slot: Handle): TokenInfo {
    const info = call('token-info', this.name, () => this.#p11.C_GetTokenInfo(slot))
    const f = info.flags
    return {
      label: blankPadded(info.label),
      serial: blankPadded(info.serialNumber),
      manufacturer: blankPadded(info.manufacturerID),
      model: blankPadded(info.model),
      loginRequired: (f & k.CKF_LOGIN_REQUIRED) !== 0,
      protectedAuthPath: (f & k.CKF_PROTECTED_AUTHENTICATION_PATH) !== 0,
      pinCountLow: (f & k.CKF_USER_PIN_COUNT_LOW) !== 0,
      pinFinalTry: (f & k.CKF_USER_PIN_FINAL_TRY) !== 0,
      pinLocked: (f & k.CKF_USER_PIN_LOCKED) !== 0,
      tokenInitialized: (f & k.CKF_TOKEN_INITIALIZED) !== 0,
      userPinInitialized: (f & k.CKF_USER_PIN_INITIALIZED) !== 0,
    }
  }

  /** A serial session; read-write only when creating or destroying objects (keygen). */
  openSession(slot: Handle, readWrite: boolean): Handle {
    const flags = k.CKF_SERIAL_SESSION | (readWrite ? k.CKF_RW_SESSION : 0)
    const session = call('open-session', this.name, () => this.#p11.C_OpenSession(slot, flags))
    this.#live.add(session)
    return session
  }

  /** Best effort: a removed token's sessions are gone anyway; one from before a reconnect is not closed. */
  closeSession(session: Handle): void {
    if (!this.#live.delete(session)) return
    try {
      this.#p11.C_CloseSession(session)
    } catch {
      // CKR_SESSION_HANDLE_INVALID / CKR_DEVICE_REMOVED: nothing left to close.
    }
  }

  /** True when the session (hence the application, PKCS#11 §5.6) is logged in as user. */
  sessionLoggedIn(session: Handle): boolean {
    this.#checkLive(session, 'session-info', this.name)
    const info = call('session-info', this.name, () => this.#p11.C_GetSessionInfo(session))
    return info.state === CKS_RO_USER_FUNCTIONS || info.state === CKS_RW_USER_FUNCTIONS
  }

  /**
   * One C_Login. `pin === null` uses the protected authentication path (PIN pad / biometrics):
   * pkcs11js cannot pass NULL_PTR, so it passes an empty PIN of length 0, which modules with
   * CKF_PROTECTED_AUTHENTICATION_PATH treat the same way. CKR_USER_ALREADY_LOGGED_IN is success.
   * pkcs11js takes the PIN only as a JS string: it is exposed here, at the call, and nowhere else.
   */
  login(session: Handle, pin: Pin | null, contextSpecific: boolean, where: string): void {
    const userType = contextSpecific ? k.CKU_CONTEXT_SPECIFIC : k.CKU_USER
    this.#checkLive(session, contextSpecific ? 'context-login' : 'login', where)
    try {
      this.#p11.C_Login(session, userType, pin === null ? '' : pin.expose().toString('utf8'))
    } catch (error) {
      if (!contextSpecific && errorValue(error) === k.CKR_USER_ALREADY_LOGGED_IN) return
      throw translate(error, contextSpecific ? 'context-login' : 'login', where)
    }
  }

  /**
   * C_InitToken: (re)initialises the token in `slot` with a new SO PIN and label, destroying its
   * objects (PKCS#11 v2.40 §5.6). The label is 32 bytes padded with blanks, never NUL-terminated
   * (§5.6, CK_TOKEN_INFO), so it is padded here rather than by pkcs11js.
   */
  initToken(slot: Handle, soPin: Pin, label: string, where: string): void {
    const padded = label.padEnd(32, ' ')
    if (Buffer.byteLength(padded, 'utf8') !== 32)
      throw new AgentError('INTERNAL', `${where}: the token label '${label}' is longer than 32 bytes`, {
        remedy: 'Choose a label of at most 32 bytes',
      })
    call('init-token', where, () => this.#p11.C_InitToken(slot, soPin.expose().toString('utf8'), padded))
  }

  /**
   * Sets the user PIN as the security officer (C_Login CKU_SO, C_InitPIN, C_Logout; PKCS#11 v2.40
   * §5.6) in a read-write session of its own, closed before returning.
   */
  initUserPin(slot: Handle, soPin: Pin, pin: Pin, where: string): void {
    const session = this.openSession(slot, true)
    try {
      call('login', where, () => this.#p11.C_Login(session, k.CKU_SO, soPin.expose().toString('utf8')))
      try {
        call('init-pin', where, () => this.#p11.C_InitPIN(session, pin.expose().toString('utf8')))
      } finally {
        this.logout(session, where)
      }
    } finally {
      this.closeSession(session)
    }
  }

  logout(session: Handle, where: string): void {
    this.#checkLive(session, 'logout', where)
    try {
      this.#p11.C_Logout(session)
    } catch (error) {
      if (errorValue(error) === k.CKR_USER_NOT_LOGGED_IN) return
      throw translate(error, 'logout', where)
    }
  }

  /** EC key objects of one class, optionally filtered by label and CKA_ID. */
  findKeys(session: Handle, query: KeyQuery, where: string): Handle[] {
    const template: pkcs11js.Template = [
      { type: k.CKA_CLASS, value: query.cls === 'private' ? k.CKO_PRIVATE_KEY : k.CKO_PUBLIC_KEY },
    ]
    if (query.label !== undefined) template.push({ type: k.CKA_LABEL, value: query.label })
    if (query.id !== undefined) template.push({ type: k.CKA_ID, value: query.id })
    this.#checkLive(session, 'find', where)
    return call('find', where, () => {
      this.#p11.C_FindObjectsInit(session, template)
      try {
        const found: Handle[] = []
        for (;;) {
          const batch = this.#p11.C_FindObjects(session, 64)
          if (batch.length === 0) return found
          found.push(...batch)
        }
      } finally {
        this.#p11.C_FindObjectsFinal(session)
      }
    })
  }

  /** Every X.509 certificate object (CKO_CERTIFICATE, PKCS#11 v2.40 section 4.6): label, id, DER. */
  certificates(session: Handle, where: string): { label: string; id: Buffer; value: Buffer }[] {
    this.#checkLive(session, 'find', where)
    return call('find', where, () => {
      this.#p11.C_FindObjectsInit(session, [{ type: k.CKA_CLASS, value: k.CKO_CERTIFICATE }])
      const found: Handle[] = []
      try {
        for (;;) {
          const batch = this.#p11.C_FindObjects(session, 64)
          if (batch.length === 0) break
          found.push(...batch)
        }
      } finally {
        this.#p11.C_FindObjectsFinal(session)
      }
      return found.map((h) => {
        const [label, id, value] = this.#p11.C_GetAttributeValue(session, h, [
          { type: k.CKA_LABEL },
          { type: k.CKA_ID },
          { type: k.CKA_VALUE },
        ])
        const buf = (a: pkcs11js.Attribute | undefined): Buffer =>
          a?.value instanceof Buffer ? a.value : Buffer.alloc(0)
        return { label: buf(label).toString('utf8'), id: buf(id), value: buf(value) }
      })
    })
  }

  keyAttributes(session: Handle, object: Handle, cls: KeyClass, where: string): KeyAttributes {
    this.#checkLive(session, 'attributes', where)
    const one = (type: number): Buffer | undefined => {
      try {
        const [attr] = this.#p11.C_GetAttributeValue(session, object, [{ type }])
        return attr?.value instanceof Buffer ? attr.value : undefined
      } catch (error) {
        const rv = errorValue(error)
        // Missing or unreadable attributes are normal (public objects have no CKA_SENSITIVE, ...).
        if (rv === k.CKR_ATTRIBUTE_TYPE_INVALID || rv === k.CKR_ATTRIBUTE_SENSITIVE) return undefined
        throw translate(error, 'attributes', where)
      }
    }
    const bool = (type: number, fallback: boolean): boolean => {
      const v = one(type)
      return v === undefined || v.length === 0 ? fallback : v[0] !== 0
    }
    const keyType = one(k.CKA_KEY_TYPE)
    const isEc =
      keyType !== undefined &&
      keyType.length > 0 &&
      keyType.readUIntLE(0, Math.min(keyType.length, 6)) === k.CKK_EC
    const priv = cls === 'private'
    return {
      label: (one(k.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8'),
      id: one(k.CKA_ID) ?? Buffer.alloc(0),
      ecParams: one(k.CKA_EC_PARAMS),
      ecPoint: one(k.CKA_EC_POINT),
      isEc,
      alwaysAuthenticate: priv && bool(k.CKA_ALWAYS_AUTHENTICATE, false),
      extractable: priv && bool(k.CKA_EXTRACTABLE, false),
      sensitive: priv ? bool(k.CKA_SENSITIVE, false) : false,
    }
  }

  /** Reads CKA_VALUE (the secret scalar for an EC private key). A compliant token refuses for keys
   * that are sensitive or not extractable (PKCS#11 §4.4.1 Table 15 footnote 7) → OPERATION_UNSUPPORTED. */
  readValue(session: Handle, object: Handle, where: string): Buffer {
    this.#checkLive(session, 'attributes', where)
    return call('attributes', where, () => {
      const [attr] = this.#p11.C_GetAttributeValue(session, object, [{ type: k.CKA_VALUE }])
      if (!(attr?.value instanceof Buffer))
        throw new AgentError('OPERATION_UNSUPPORTED', `${where}: CKA_VALUE not returned`, {
          remedy: 'Nothing to do',
        })
      return attr.value
    })
  }

  /**
   * On-device P-384 key pair (CKM_EC_KEY_PAIR_GEN): a private token object that is private,
   * sensitive, never extractable and can only sign (PKCS#11 v2.40 §2.3.3, §4.9).
   * CKA_DECRYPT / CKA_ENCRYPT are left unset: no PKCS#11 mechanism encrypts with an EC key, and
   * tpm2-pkcs11 1.9 fails the generation (CKR_GENERAL_ERROR, "User specified and TPM specified
   * attr mismatch") when they are set to false, because the TPM key it creates has both bits.
   */
  generateP384(
    session: Handle,
    label: string,
    id: Buffer,
    where: string,
  ): { publicKey: Handle; privateKey: Handle } {
    this.#checkLive(session, 'generate', where)
    const publicTemplate: pkcs11js.Template = [
      { type: k.CKA_CLASS, value: k.CKO_PUBLIC_KEY },
      { type: k.CKA_KEY_TYPE, value: k.CKK_EC },
      { type: k.CKA_TOKEN, value: true },
      { type: k.CKA_PRIVATE, value: false },
      { type: k.CKA_EC_PARAMS, value: P384_OID_DER },
      { type: k.CKA_VERIFY, value: true },
      { type: k.CKA_WRAP, value: false },
      { type: k.CKA_DERIVE, value: false },
      { type: k.CKA_LABEL, value: label },
      { type: k.CKA_ID, value: id },
    ]
    const privateTemplate: pkcs11js.Template = [
      { type: k.CKA_CLASS, value: k.CKO_PRIVATE_KEY },
      { type: k.CKA_KEY_TYPE, value: k.CKK_EC },
      { type: k.CKA_TOKEN, value: true },
      { type: k.CKA_PRIVATE, value: true },
      { type: k.CKA_SENSITIVE, value: true },
      { type: k.CKA_EXTRACTABLE, value: false },
      { type: k.CKA_SIGN, value: true },
      { type: k.CKA_UNWRAP, value: false },
      { type: k.CKA_DERIVE, value: false },
      { type: k.CKA_LABEL, value: label },
      { type: k.CKA_ID, value: id },
    ]
    return call('generate', where, () =>
      this.#p11.C_GenerateKeyPair(
        session,
        { mechanism: k.CKM_EC_KEY_PAIR_GEN },
        publicTemplate,
        privateTemplate,
      ),
    )
  }

  destroy(session: Handle, object: Handle, where: string): void {
    this.#checkLive(session, 'destroy', where)
    call('destroy', where, () => this.#p11.C_DestroyObject(session, object))
  }

  /** C_SignInit with CKM_ECDSA: raw ECDSA over a digest the host computed (SoftHSM offers no
   * CKM_ECDSA_SHA384; spec/pkcs11-platform-notes §2). */
  signInit(session: Handle, key: Handle, where: string): void {
    this.#checkLive(session, 'sign-init', where)
    call('sign-init', where, () => this.#p11.C_SignInit(session, { mechanism: k.CKM_ECDSA }, key))
  }

  /**
   * C_Sign on the libuv threadpool (pkcs11js `C_SignAsync`). The native worker keeps raw pointers to
   * `digest` and the output buffer, so both stay referenced here until the promise settles. At most
   * LIMITS.maxPendingSigns run at once process-wide, since each holds one worker thread while the
   * device waits (for a touch); further calls queue here.
   */
  async signAsync(session: Handle, digest: Buffer, where: string): Promise<Buffer> {
    await Pkcs11Module.#acquireSignSlot()
    try {
      this.#checkLive(session, 'sign', where)
    } catch (error) {
      Pkcs11Module.#releaseSignSlot()
      throw error
    }
    this.#inFlight += 1
    const input = digest
    // 96 bytes for r||s; DER-encoding modules need up to 104. 256 leaves room for odd modules.
    const output = Buffer.alloc(256)
    try {
      const result = await this.#p11.C_SignAsync(session, input, output)
      return Buffer.from(result)
    } catch (error) {
      throw translate(error, 'sign', where)
    } finally {
      // Keeps both buffers reachable until the native worker is done with them.
      void input.length
      void output.length
      this.#inFlight -= 1
      Pkcs11Module.#releaseSignSlot()
    }
  }

  static async #acquireSignSlot(): Promise<void> {
    if (Pkcs11Module.#inFlightSigns < LIMITS.maxPendingSigns) {
      Pkcs11Module.#inFlightSigns += 1
      return
    }
    await new Promise<void>((resolve) => Pkcs11Module.#signWaiters.push(resolve))
  }

  static #releaseSignSlot(): void {
    const next = Pkcs11Module.#signWaiters.shift()
    if (next !== undefined) next()
    else Pkcs11Module.#inFlightSigns -= 1
  }
}
