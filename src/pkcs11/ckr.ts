/**
 * Cryptoki return values (`CKR_*`, PKCS#11 v2.40 section 3.6 / pkcs11t.h) and what each one means for
 * the agent: THE table from return value to our ErrorCode, message and remedy. Translation goes by
 * number, never by a module's message text. src/pkcs11/binding.ts (the only file that sees pkcs11js)
 * hands every failed call's value to `fromReturnValue`.
 */
import { AgentError, type ErrorCode } from '../lib/errors.js'

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

/**
 * The values the table below names, from pkcs11t.h (PKCS#11 v2.40; CURVE_NOT_SUPPORTED and
 * ACTION_PROHIBITED are v3.0 section 5.1.4). test/unit/pkcs11-ckr.test.ts checks them against pkcs11js.
 */
export const CKR = {
  HOST_MEMORY: 0x02,
  SLOT_ID_INVALID: 0x03,
  GENERAL_ERROR: 0x05,
  ARGUMENTS_BAD: 0x07,
  ATTRIBUTE_READ_ONLY: 0x10,
  ATTRIBUTE_SENSITIVE: 0x11,
  ATTRIBUTE_TYPE_INVALID: 0x12,
  ATTRIBUTE_VALUE_INVALID: 0x13,
  ACTION_PROHIBITED: 0x1b,
  DATA_LEN_RANGE: 0x21,
  DEVICE_ERROR: 0x30,
  DEVICE_MEMORY: 0x31,
  DEVICE_REMOVED: 0x32,
  FUNCTION_CANCELED: 0x50,
  FUNCTION_NOT_SUPPORTED: 0x54,
  KEY_HANDLE_INVALID: 0x60,
  KEY_TYPE_INCONSISTENT: 0x63,
  KEY_FUNCTION_NOT_PERMITTED: 0x68,
  MECHANISM_INVALID: 0x70,
  MECHANISM_PARAM_INVALID: 0x71,
  OBJECT_HANDLE_INVALID: 0x82,
  OPERATION_ACTIVE: 0x90,
  OPERATION_NOT_INITIALIZED: 0x91,
  PIN_INCORRECT: 0xa0,
  PIN_INVALID: 0xa1,
  PIN_LEN_RANGE: 0xa2,
  PIN_EXPIRED: 0xa3,
  PIN_LOCKED: 0xa4,
  SESSION_CLOSED: 0xb0,
  SESSION_COUNT: 0xb1,
  SESSION_HANDLE_INVALID: 0xb3,
  TEMPLATE_INCOMPLETE: 0xd0,
  TEMPLATE_INCONSISTENT: 0xd1,
  TOKEN_NOT_PRESENT: 0xe0,
  TOKEN_NOT_RECOGNIZED: 0xe1,
  TOKEN_WRITE_PROTECTED: 0xe2,
  USER_NOT_LOGGED_IN: 0x101,
  USER_PIN_NOT_INITIALIZED: 0x102,
  USER_TYPE_INVALID: 0x103,
  USER_ANOTHER_ALREADY_LOGGED_IN: 0x104,
  DOMAIN_PARAMS_INVALID: 0x130,
  CURVE_NOT_SUPPORTED: 0x140,
  BUFFER_TOO_SMALL: 0x150,
  CRYPTOKI_NOT_INITIALIZED: 0x190,
  PIN_TOO_WEAK: 0x1b8,
  FUNCTION_REJECTED: 0x200,
} as const

interface Translation {
  code: ErrorCode
  message: string
  remedy: string
}

const REINSERT = 'Insert the token (or check its reader/USB connection); the agent reconnects by itself'
const RETRY = 'Try again; the agent reopens its sessions by itself'

/**
 * THE table: Cryptoki return value → project error. Operation-specific meanings come first, from
 * `contextual` (e.g. CKR_FUNCTION_CANCELED during a sign is a missed touch).
 */
const CKR_TABLE: ReadonlyMap<number, Translation> = new Map<number, Translation>([
  [
    CKR.PIN_INCORRECT,
    {
      code: 'PIN_INCORRECT',
      message: 'the PIN is incorrect',
      remedy: 'Enter the correct PIN; the agent never retries a wrong PIN by itself',
    },
  ],
  [
    CKR.PIN_LOCKED,
    {
      code: 'PIN_LOCKED',
      message: 'the PIN is locked (too many wrong attempts)',
      remedy: 'Unlock it with the PUK / SO PIN using the device vendor tool, then try again',
    },
  ],
  [
    CKR.PIN_INVALID,
    { code: 'PIN_INVALID', message: 'the token rejected the PIN format', remedy: 'Check the PIN characters' },
  ],
  [
    CKR.PIN_LEN_RANGE,
    {
      code: 'PIN_INVALID',
      message: 'the PIN has a length the token does not accept',
      remedy: 'Check the PIN length',
    },
  ],
  [
    CKR.PIN_EXPIRED,
    {
      code: 'PIN_INVALID',
      message: 'the PIN has expired',
      remedy: 'Change the PIN with the device vendor tool',
    },
  ],
  [
    CKR.PIN_TOO_WEAK,
    { code: 'PIN_INVALID', message: 'the token considers the PIN too weak', remedy: 'Choose a stronger PIN' },
  ],
  [
    CKR.USER_NOT_LOGGED_IN,
    {
      code: 'PIN_REQUIRED',
      message: 'the token requires a PIN login first',
      remedy: 'Provide the PIN (unlock the agent) and retry',
    },
  ],
  [
    CKR.USER_PIN_NOT_INITIALIZED,
    {
      code: 'PIN_REQUIRED',
      message: 'the token has no user PIN set',
      remedy: 'Initialise the user PIN with the device vendor tool',
    },
  ],
  [
    CKR.USER_ANOTHER_ALREADY_LOGGED_IN,
    {
      code: 'DEVICE_ERROR',
      message: 'another user type (SO) is logged in to the token',
      remedy: 'Log the SO out (or release the token in other programs) and retry',
    },
  ],
  [
    CKR.USER_TYPE_INVALID,
    {
      code: 'INTERNAL',
      message: 'the token rejected the login user type',
      remedy: 'Report this with the module name',
    },
  ],
  [
    CKR.DEVICE_REMOVED,
    { code: 'DEVICE_REMOVED', message: 'the token was removed during the operation', remedy: REINSERT },
  ],
  [CKR.TOKEN_NOT_PRESENT, { code: 'TOKEN_ABSENT', message: 'the token is not present', remedy: REINSERT }],
  [CKR.SLOT_ID_INVALID, { code: 'TOKEN_ABSENT', message: 'the token slot disappeared', remedy: REINSERT }],
  [
    CKR.TOKEN_NOT_RECOGNIZED,
    {
      code: 'DEVICE_ERROR',
      message: 'the module does not recognise the inserted token',
      remedy: 'Check that the configured module matches the device',
    },
  ],
  [
    CKR.SESSION_HANDLE_INVALID,
    { code: 'SESSION_LOST', message: 'the PKCS#11 session became invalid', remedy: RETRY },
  ],
  [CKR.SESSION_CLOSED, { code: 'SESSION_LOST', message: 'the PKCS#11 session was closed', remedy: RETRY }],
  [
    CKR.SESSION_COUNT,
    {
      code: 'DEVICE_ERROR',
      message: 'the token has no free sessions',
      remedy: 'Close other programs using the token, then retry',
    },
  ],
  [
    CKR.DEVICE_ERROR,
    {
      code: 'DEVICE_ERROR',
      message: 'the device reported an error',
      remedy: 'Reinsert the token; if it persists run `cargo-pkcs11-agent doctor`',
    },
  ],
  [
    CKR.DEVICE_MEMORY,
    {
      code: 'DEVICE_ERROR',
      message: 'the device ran out of memory',
      remedy: 'Free space on the token (delete unused objects)',
    },
  ],
  [
    CKR.GENERAL_ERROR,
    {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module reported a general error',
      remedy: 'Run `cargo-pkcs11-agent doctor`; check the module configuration',
    },
  ],
  [
    CKR.HOST_MEMORY,
    {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module ran out of host memory',
      remedy: 'Restart the agent',
    },
  ],
  [
    CKR.CRYPTOKI_NOT_INITIALIZED,
    {
      code: 'MODULE_LOAD_FAILED',
      message: 'the PKCS#11 module is not initialised (another component finalised it)',
      remedy: 'Restart the agent',
    },
  ],
  [
    CKR.MECHANISM_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token does not support the mechanism (ECDSA P-384 needed)',
      remedy: 'Use a token that supports CKM_ECDSA on P-384',
    },
  ],
  [
    CKR.MECHANISM_PARAM_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected the mechanism parameters',
      remedy: 'Use a token that supports CKM_ECDSA on P-384',
    },
  ],
  [
    CKR.CURVE_NOT_SUPPORTED,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token does not support the P-384 curve',
      remedy: 'Use a token that supports NIST P-384 (secp384r1)',
    },
  ],
  [
    CKR.DOMAIN_PARAMS_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected the P-384 domain parameters',
      remedy: 'Use a token that supports NIST P-384 (secp384r1)',
    },
  ],
  [
    CKR.KEY_TYPE_INCONSISTENT,
    {
      code: 'KEY_INVALID',
      message: 'the key is not an EC key usable with ECDSA',
      remedy: 'Select a P-384 EC key',
    },
  ],
  [
    CKR.KEY_FUNCTION_NOT_PERMITTED,
    {
      code: 'KEY_INVALID',
      message: 'the key is not allowed to sign (CKA_SIGN is false)',
      remedy: 'Select or generate a key with signing allowed',
    },
  ],
  // A stale object handle (the token logged out, or the key was replaced): the sessions are fine.
  [
    CKR.KEY_HANDLE_INVALID,
    {
      code: 'KEY_NOT_FOUND',
      message: 'the key object is no longer valid',
      remedy: 'Check the key still exists with `cargo-pkcs11-agent list --login`, then retry',
    },
  ],
  [
    CKR.OBJECT_HANDLE_INVALID,
    {
      code: 'KEY_NOT_FOUND',
      message: 'the key object is no longer valid',
      remedy: 'Check the key still exists with `cargo-pkcs11-agent list --login`, then retry',
    },
  ],
  [
    CKR.ATTRIBUTE_SENSITIVE,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the token refuses to reveal a sensitive attribute',
      remedy: 'This is expected for private key material; nothing to do',
    },
  ],
  [
    CKR.ATTRIBUTE_TYPE_INVALID,
    { code: 'OPERATION_UNSUPPORTED', message: 'the object has no such attribute', remedy: 'Nothing to do' },
  ],
  [
    CKR.TEMPLATE_INCONSISTENT,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected the key template',
      remedy: 'The token cannot create a non-extractable P-384 signing key; see native-config/devices.md',
    },
  ],
  [
    CKR.TEMPLATE_INCOMPLETE,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token wants more attributes for the key',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    CKR.ATTRIBUTE_VALUE_INVALID,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token rejected a key attribute value',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    CKR.ATTRIBUTE_READ_ONLY,
    {
      code: 'MECHANISM_UNSUPPORTED',
      message: 'the token does not let the agent set a key attribute',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    CKR.TOKEN_WRITE_PROTECTED,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the token is write-protected',
      remedy: 'Generate the key with the device vendor tool instead',
    },
  ],
  [
    CKR.FUNCTION_NOT_SUPPORTED,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the PKCS#11 module does not implement this function',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    CKR.FUNCTION_CANCELED,
    { code: 'TIMEOUT', message: 'the token cancelled the operation', remedy: 'Try again' },
  ],
  [
    CKR.FUNCTION_REJECTED,
    {
      code: 'DENIED',
      message: 'the operation was rejected on the device',
      remedy: 'Approve the operation on the device, or cancel',
    },
  ],
  [
    CKR.ACTION_PROHIBITED,
    {
      code: 'OPERATION_UNSUPPORTED',
      message: 'the token prohibits this action',
      remedy: 'See native-config/devices.md for this device',
    },
  ],
  [
    CKR.OPERATION_ACTIVE,
    {
      code: 'INTERNAL',
      message: 'a PKCS#11 operation was already active on the session',
      remedy: 'Report this; the agent uses one operation per session',
    },
  ],
  [
    CKR.OPERATION_NOT_INITIALIZED,
    { code: 'INTERNAL', message: 'the PKCS#11 sign operation was not initialised', remedy: 'Report this' },
  ],
  [
    CKR.DATA_LEN_RANGE,
    {
      code: 'INTERNAL',
      message: 'the token rejected the digest length',
      remedy: 'Report this with the module name',
    },
  ],
  [
    CKR.BUFFER_TOO_SMALL,
    {
      code: 'SIGNATURE_MALFORMED',
      message: 'the device signature did not fit the buffer',
      remedy: 'Report this with the module name',
    },
  ],
  [
    CKR.ARGUMENTS_BAD,
    {
      code: 'INTERNAL',
      message: 'the PKCS#11 module rejected the call arguments',
      remedy: 'Report this with the module name',
    },
  ],
])

/** Operation-specific meanings that override the table (device quirks and context). */
function contextual(rv: number, op: Operation): Translation | undefined {
  if (op === 'sign' && (rv === CKR.FUNCTION_CANCELED || rv === CKR.FUNCTION_REJECTED)) {
    return {
      code: 'TOUCH_TIMEOUT',
      message: 'the device did not receive a touch (signature cancelled)',
      remedy: 'Touch the device when it blinks, then try again',
    }
  }
  // ykcs11 2.2 turns the card's SW 6982 at GENERAL AUTHENTICATE (the YubiKey's touch timer ran out)
  // into CKR_USER_NOT_LOGGED_IN. At C_Sign the device layer has just checked the login (and done the
  // context-specific login for CKA_ALWAYS_AUTHENTICATE keys), so this is the touch.
  if (op === 'sign' && rv === CKR.USER_NOT_LOGGED_IN) {
    return {
      code: 'TOUCH_TIMEOUT',
      message: 'the device refused the signature: no touch was received in time',
      remedy:
        'Touch the device when it blinks, then try again (if it has no touch policy, unlock the agent again)',
    }
  }
  if ((op === 'login' || op === 'context-login') && rv === CKR.FUNCTION_CANCELED) {
    return {
      code: 'PIN_ENTRY_FAILED',
      message: 'PIN entry on the device was cancelled',
      remedy: 'Enter the PIN on the device PIN pad, then try again',
    }
  }
  if (op === 'slots' && rv === CKR.DEVICE_ERROR) {
    // ykcs11 (and OpenSC) answer C_GetSlotList with CKR_DEVICE_ERROR when pcscd is not running.
    return {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module cannot list its readers',
      remedy:
        'For smart cards and YubiKeys: check that pcscd is running (systemctl status pcscd.socket), then retry',
    }
  }
  if (op === 'initialize' && rv === CKR.GENERAL_ERROR) {
    return {
      code: 'MODULE_LOAD_FAILED',
      message: 'the PKCS#11 module failed to initialise',
      remedy:
        'Check the module configuration (for SoftHSM: SOFTHSM2_CONF and its tokendir; for tpm2: the TCTI); run `cargo-pkcs11-agent doctor`',
    }
  }
  return undefined
}

/** A failed call's return value → AgentError. `where` names the module/token for the message. */
export function fromReturnValue(rv: number, op: Operation, where: string, cause: unknown): AgentError {
  const hex = `0x${rv.toString(16).padStart(8, '0')}`
  const found = contextual(rv, op) ?? CKR_TABLE.get(rv)
  if (found === undefined) {
    return new AgentError('DEVICE_ERROR', `${where}: PKCS#11 ${op} failed with return value ${hex}`, {
      cause,
      remedy: 'Run `cargo-pkcs11-agent doctor`; look the value up in the PKCS#11 specification',
      data: { operation: op, rv: hex },
    })
  }
  return new AgentError(found.code, `${where}: ${found.message}`, {
    cause,
    remedy: found.remedy,
    data: { operation: op, rv: hex },
  })
}
