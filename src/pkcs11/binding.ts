/**
 * The only module that imports pkcs11js. It loads PKCS#11 libraries, wraps the few Cryptoki calls the
 * agent needs, and translates every `CKR_*` return value (by number, never by message text) into an
 * `AgentError` through ONE table below. Nothing above this file sees a CKR name or a pkcs11js type.
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
import { AgentError, type ErrorCode } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Pin } from '../lib/secret.js'

export { ensureThreadpoolSize, relaunchWithThreadpoolSize, withThreadpoolSize } from '../lib/threadpool.js'

/** An opaque slot, session or object handle (pkcs11js encodes CK_ULONG handles as Buffers). */
export type Handle = Buffer

/** What the caller was doing when Cryptoki failed: some return values mean different things. */
export type Operation =
  | 'load'
  | 'initialize'
  | 'slots'
  | 'token-info'
  | 'open-session'
  | 'close-session'
  | 'session-info'
  | 'login'
  | 'context-login'
  | 'logout'
  | 'find'
  | 'attributes'
  | 'sign-init'
  | 'sign'
  | 'generate'
  | 'destroy'
  | 'init-token'
  | 'init-pin'

interface Translation {
  code: ErrorCode
  message: string
  remedy: string
}

const k = pkcs11js

// CKR values pkcs11js 2.1 does not export (PKCS#11 v3.0 §5.1.4 / pkcs11t.h).
const CKR_CURVE_NOT_SUPPORTED = 0x140
const CKR_ACTION_PROHIBITED = 0x1b
// Session states (PKCS#11 v2.40 §5.7 CK_STATE), not exported by pkcs11js.
const CKS_RO_USER_FUNCTIONS = 1
const CKS_RW_USER_FUNCTIONS = 3

const REINSERT = 'Insert the token (or check its reader/USB connection); the agent reconnects by itself'
const RETRY = 'Try again; the agent reopens its sessions by itself'

/**
 * THE table: Cryptoki return value → project error. Operation-specific meanings are handled in
 * `translate` (e.g. CKR_FUNCTION_CANCELED during a sign is a missed touch).
 */
const CKR_TABLE: ReadonlyMap<number, Translation> = new Map<number, Translation>([
  [
    k.CKR_PIN_INCORRECT,
    {
      code: 'PIN_INCORRECT',
      message: 'the PIN is incorrect',
      remedy: 'Enter the correct PIN; the agent never retries a wrong PIN by itself',
    },
  ],
  [
    k.CKR_PIN_LOCKED,
    {
      code: 'PIN_LOCKED',
      message: 'the PIN is locked (too many wrong attempts)',
      remedy: 'Unlock it with the PUK / SO PIN using the device vendor tool, then try again',
    },
  ],
  [
    k.CKR_PIN_INVALID,
    { code: 'PIN_INVALID', message: 'the token rejected the PIN format', remedy: 'Check the PIN characters' },
  ],
  [
    k.CKR_PIN_LEN_RANGE,
    {
      code: 'PIN_INVALID',
      message: 'the PIN has a length the token does not accept',
      remedy: 'Check the PIN length',
    },
  ],
  [
    k.CKR_PIN_EXPIRED,
    {
      code: 'PIN_INVALID',
      message: 'the PIN has expired',
      remedy: 'Change the PIN with the device vendor tool',
    },
  ],
  [
    k.CKR_PIN_TOO_WEAK,
    { code: 'PIN_INVALID', message: 'the token considers the PIN too weak', remedy: 'Choose a stronger PIN' },
  ],
  [
    k.CKR_USER_NOT_LOGGED_IN,
    {
      code: 'PIN_REQUIRED',
      message: 'the token requires a PIN login first',
      remedy: 'Provide the PIN (unlock the agent) and retry',
    },
  ],
  [
    k.CKR_USER_PIN_NOT_INITIALIZED,
    {
      code: 'PIN_REQUIRED',
      message: 'the token has no user PIN set',
      remedy: 'Initialise the user PIN with the device vendor tool',
    },
  ],
  [
    k.CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    {
      code: 'DEVICE_ERROR',
      message: 'another user type (SO) is logged in to the token',
      remedy: 'Log the SO out (or release the token in other programs) and retry',
    },
  ],
  [
    k.CKR_USER_TYPE_INVALID,
    {
      code: 'INTERNAL',
      message: 'the token rejected the login user type',
      remedy: 'Report this with the module name',
    },
  ],
  [
    k.CKR_DEVICE_REMOVED,
    { code: 'DEVICE_REMOVED', message: 'the token was removed during the operation', remedy: REINSERT },
  ],
  [k.CKR_TOKEN_NOT_PRESENT, { code: 'TOKEN_ABSENT', message: 'the token is not present', remedy: REINSERT }],
  [k.CKR_SLOT_ID_INVALID, { code: 'TOKEN_ABSENT', message: 'the token slot disappeared', remedy: REINSERT }],
  [
    k.CKR_TOKEN_NOT_RECOGNIZED,
    {
      code: 'DEVICE_ERROR',
      message: 'the module does not recognise the inserted token',
      remedy: 'Check that the configured module matches the device',
    },
  ],
  [
    k.CKR_SESSION_HANDLE_INVALID,
    { code: 'SESSION_LOST', message: 'the PKCS#11 session became invalid', remedy: RETRY },
  ],
  [k.CKR_SESSION_CLOSED, { code: 'SESSION_LOST', message: 'the PKCS#11 session was closed', remedy: RETRY }],
  [
    k.CKR_SESSION_COUNT,
    {
      code: 'DEVICE_ERROR',
      message: 'the token has no free sessions',
      remedy: 'Close other programs using the token, then retry',
    },
  ],
  [
    k.CKR_DEVICE_ERROR,
    {
      code: 'DEVICE_ERROR',
      message: 'the device reported an error',
      remedy: 'Reinsert the token; if it persists run `cargo-pkcs11-agent doctor`',
    },
  ],
  [
    k.CKR_DEVICE_MEMORY,
    {
      code: 'DEVICE_ERROR',
      message: 'the device ran out of memory',
      remedy: 'Free space on the token (delete unused objects)',
    },
  ],
  [
    k.CKR_GENERAL_ERROR,
    {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module reported a general error',
      remedy: 'Run `cargo-pkcs11-agent doctor`; check the module configuration',
    },
  ],
  [
    k.CKR_HOST_MEMORY,
    {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module ran out of host memory',
      remedy: 'Restart the agent',
    },
  ],
  [
    k.CKR_CRYPTOKI_NOT_INITIALIZED,
    {
      code: 'MODULE_LOAD_FAILED',
      message: 'the PKCS#11 module is not initialised (another component finalised it)',
      remedy: 'Restart the agent',
    },
  ],
  [
    k.CKR_MECHANISM_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token does not support the mechanism (ECDSA P-384 needed)',
      remedy: 'Use a token that supports CKM_ECDSA on P-384',
    },
  ],
  [
    k.CKR_MECHANISM_PARAM_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected the mechanism parameters',
      remedy: 'Use a token that supports CKM_ECDSA on P-384',
    },
  ],
  [
    CKR_CURVE_NOT_SUPPORTED,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token does not support the P-384 curve',
      remedy: 'Use a token that supports NIST P-384 (secp384r1)',
    },
  ],
  [
    k.CKR_DOMAIN_PARAMS_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected the P-384 domain parameters',
      remedy: 'Use a token that supports NIST P-384 (secp384r1)',
    },
  ],
  [
    k.CKR_KEY_TYPE_INCONSISTENT,
    {
      code: 'KEY_INVALID',
      message: 'the key is not an EC key usable with ECDSA',
      remedy: 'Select a P-384 EC key',
    },
  ],
  [
    k.CKR_KEY_FUNCTION_NOT_PERMITTED,
    {
      code: 'KEY_INVALID',
      message: 'the key is not allowed to sign (CKA_SIGN is false)',
      remedy: 'Select or generate a key with signing allowed',
    },
  ],
  // A stale object handle (the token logged out, or the key was replaced): the sessions are fine.
  [
    k.CKR_KEY_HANDLE_INVALID,
    {
      code: 'KEY_NOT_FOUND',
      message: 'the key object is no longer valid',
      remedy: 'Check the key still exists with `cargo-pkcs11-agent list --login`, then retry',
    },
  ],
  [
    k.CKR_OBJECT_HANDLE_INVALID,
    {
      code: 'KEY_NOT_FOUND',
      message: 'the key object is no longer valid',
      remedy: 'Check the key still exists with `cargo-pkcs11-agent list --login`, then retry',
    },
  ],
  [
    k.CKR_ATTRIBUTE_SENSITIVE,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the token refuses to reveal a sensitive attribute',
      remedy: 'This is expected for private key material; nothing to do',
    },
  ],
  [
    k.CKR_ATTRIBUTE_TYPE_INVALID,
    { code: 'OPERATION_UNSUPPORTED', message: 'the object has no such attribute', remedy: 'Nothing to do' },
  ],
  [
    k.CKR_TEMPLATE_INCONSISTENT,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected the key template',
      remedy: 'The token cannot create a non-extractable P-384 signing key; see native-config/devices.md',
    },
  ],
  [
    k.CKR_TEMPLATE_INCOMPLETE,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token wants more attributes for the key',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    k.CKR_ATTRIBUTE_VALUE_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected a key attribute value',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    k.CKR_ATTRIBUTE_READ_ONLY,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token does not let the agent set a key attribute',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    k.CKR_TOKEN_WRITE_PROTECTED,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the token is write-protected',
      remedy: 'Generate the key with the device vendor tool instead',
    },
  ],
  [
    k.CKR_FUNCTION_NOT_SUPPORTED,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the PKCS#11 module does not implement this function',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    k.CKR_FUNCTION_CANCELED,
    { code: 'TIMEOUT', message: 'the token cancelled the operation', remedy: 'Try again' },
  ],
  [
    k.CKR_FUNCTION_REJECTED,
    {
      code: 'DENIED',
      message: 'the operation was rejected on the device',
      remedy: 'Approve the operation on the device, or cancel',
    },
  ],
  [
    CKR_ACTION_PROHIBITED,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the token prohibits this action',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    k.CKR_OPERATION_ACTIVE,
    {
      code: 'INTERNAL',
      message: 'a PKCS#11 operation was already active on the session',
      remedy: 'Report this; the agent uses one operation per session',
    },
  ],
  [
    k.CKR_OPERATION_NOT_INITIALIZED,
    { code: 'INTERNAL', message: 'the PKCS#11 sign operation was not initialised', remedy: 'Report this' },
  ],
  [
    k.CKR_DATA_LEN_RANGE,
    {
      code: 'INTERNAL',
      message: 'the token rejected the digest length',
      remedy: 'Report this with the module name',
    },
  ],
  [
    k.CKR_BUFFER_TOO_SMALL,
    {
      code: 'SIGNATURE_MALFORMED',
      message: 'the device signature did not fit the buffer',
      remedy: 'Report this with the module name',
    },
  ],
  [
    k.CKR_ARGUMENTS_BAD,
    {
      code: 'INTERNAL',
      message: 'the PKCS#11 module rejected the call arguments',
      remedy: 'Report this with the module name',
    },
  ],
])

/** Operation-specific meanings that override the table (device quirks and context). */
function contextual(rv: number, op: Operation): Translation | undefined {
  if (op === 'sign' && (rv === k.CKR_FUNCTION_CANCELED || rv === k.CKR_FUNCTION_REJECTED)) {
    return {
      code: 'TOUCH_TIMEOUT',
      message: 'the device did not receive a touch (signature cancelled)',
      remedy: 'Touch the device when it blinks, then try again',
    }
  }
  // ykcs11 2.2 turns the card's SW 6982 at GENERAL AUTHENTICATE (the YubiKey's touch timer ran out)
  // into CKR_USER_NOT_LOGGED_IN. At C_Sign the device layer has just checked the login (and done the
  // context-specific login for CKA_ALWAYS_AUTHENTICATE keys), so this is the touch.
  if (op === 'sign' && rv === k.CKR_USER_NOT_LOGGED_IN) {
    return {
      code: 'TOUCH_TIMEOUT',
      message: 'the device refused the signature: no touch was received in time',
      remedy:
        'Touch the device when it blinks, then try again (if it has no touch policy, unlock the agent again)',
    }
  }
  if ((op === 'login' || op === 'context-login') && rv === k.CKR_FUNCTION_CANCELED) {
    return {
      code: 'PIN_ENTRY_FAILED',
      message: 'PIN entry on the device was cancelled',
      remedy: 'Enter the PIN on the device PIN pad, then try again',
    }
  }
  if (op === 'slots' && rv === k.CKR_DEVICE_ERROR) {
    // ykcs11 (and OpenSC) answer C_GetSlotList with CKR_DEVICE_ERROR when pcscd is not running.
    return {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module cannot list its readers',
      remedy:
        'For smart cards and YubiKeys: check that pcscd is running (systemctl status pcscd.socket), then retry',
    }
  }
  if (op === 'initialize' && rv === k.CKR_GENERAL_ERROR) {
    return {
      code: 'MODULE_LOAD_FAILED',
      message: 'the PKCS#11 module failed to initialise',
      remedy:
        'Check the module configuration (for SoftHSM: SOFTHSM2_CONF and its tokendir; for tpm2: the TCTI); run `cargo-pkcs11-agent doctor`',
    }
  }
  return undefined
}

function errorValue(error: unknown): number | undefined {
  if (error instanceof k.Pkcs11Error && typeof error.code === 'number' && error.code !== 0) return error.code
  return undefined
}

/** Cryptoki failure → AgentError. `where` names the module/token for the message. */
export function translate(error: unknown, op: Operation, where: string): AgentError {
  if (error instanceof AgentError) return error
  const rv = errorValue(error)
  if (rv === undefined) {
    const text = error instanceof Error ? error.message : String(error)
    return new AgentError('DEVICE_ERROR', `${where}: PKCS#11 ${op} failed: ${text}`, {
      cause: error,
      remedy: 'Run `cargo-pkcs11-agent doctor`',
      data: { operation: op },
    })
  }
  const hex = `0x${rv.toString(16).padStart(8, '0')}`
  const found = contextual(rv, op) ?? CKR_TABLE.get(rv)
  if (found === undefined) {
    return new AgentError('DEVICE_ERROR', `${where}: PKCS#11 ${op} failed with return value ${hex}`, {
      cause: error,
      remedy: 'Run `cargo-pkcs11-agent doctor`; look the value up in the PKCS#11 specification',
      data: { operation: op, rv: hex },
    })
  }
  return new AgentError(found.code, `${where}: ${found.message}`, {
    cause: error,
    remedy: found.remedy,
    data: { operation: op, rv: hex },
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
  canSign: boolean
}

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
  readonly #p11: InstanceType<typeof pkcs11js.PKCS11>

  private constructor(path: string, p11: InstanceType<typeof pkcs11js.PKCS11>) {
    this.path = path
    this.name = basename(path)
    this.#p11 = p11
  }

  /**
   * Loads and initialises the library at `path` once per process; later calls (any Device, any
   * token) share it. C_Initialize gets CKF_OS_LOCKING_OK because the agent calls in from the libuv
   * threadpool (PKCS#11 v2.40 §5.4: without it a module may assume single-threaded use), and
   * CKR_CRYPTOKI_ALREADY_INITIALIZED is success (another component in the process initialised it).
   * C_Finalize is never called: it would kill every session in the process.
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
    const module = new Pkcs11Module(real, p11)
    Pkcs11Module.#registry.set(real, module)
    return module
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
    return call('open-session', this.name, () => this.#p11.C_OpenSession(slot, flags))
  }

  /** Best effort: a removed token's sessions are gone anyway. */
  closeSession(session: Handle): void {
    try {
      this.#p11.C_CloseSession(session)
    } catch {
      // CKR_SESSION_HANDLE_INVALID / CKR_DEVICE_REMOVED: nothing left to close.
    }
  }

  /** True when the session (hence the application, PKCS#11 §5.6) is logged in as user. */
  sessionLoggedIn(session: Handle): boolean {
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

  keyAttributes(session: Handle, object: Handle, cls: KeyClass, where: string): KeyAttributes {
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
      canSign: priv ? bool(k.CKA_SIGN, false) : false,
    }
  }

  /** Reads CKA_VALUE (the secret scalar for an EC private key). A compliant token refuses for keys
   * that are sensitive or not extractable (PKCS#11 §4.4.1 Table 15 footnote 7) → OPERATION_UNSUPPORTED. */
  readValue(session: Handle, object: Handle, where: string): Buffer {
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
    call('destroy', where, () => this.#p11.C_DestroyObject(session, object))
  }

  /** C_SignInit with CKM_ECDSA: raw ECDSA over a digest the host computed (SoftHSM offers no
   * CKM_ECDSA_SHA384; spec/pkcs11-platform-notes §2). */
  signInit(session: Handle, key: Handle, where: string): void {
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
