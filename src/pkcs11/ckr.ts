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
  | 'init-token'
  | 'init-pin'
  | 'info'

interface Translation {
  code: ErrorCode
  message: string
  remedy: string
}

const REINSERT = 'Insert the token (or check its reader/USB connection); the agent reconnects by itself'
const RETRY = 'Try again; the agent reopens its sessions by itself'

/**
 * THE table: `CKR_<name>` with its value (`rv`, from pkcs11t.h: PKCS#11 v2.40, and v3.0 section
 * 5.1.4 for CURVE_NOT_SUPPORTED and ACTION_PROHIBITED; test/unit/pkcs11-ckr.test.ts checks them
 * against pkcs11js) → project error. Operation-specific meanings come first, from `contextual`
 * (e.g. CKR_FUNCTION_CANCELED during a sign is a missed touch).
 */
export const CKR = {
  PIN_INCORRECT: {
    rv: 0xa0,
    code: 'PIN_INCORRECT',
    message: 'the PIN is incorrect',
    remedy: 'Enter the correct PIN; the agent never retries a wrong PIN by itself',
  },
  PIN_LOCKED: {
    rv: 0xa4,
    code: 'PIN_LOCKED',
    message: 'the PIN is locked (too many wrong attempts)',
    remedy: 'Unlock it with the PUK / SO PIN using the device vendor tool, then try again',
  },
  PIN_INVALID: {
    rv: 0xa1,
    code: 'PIN_INVALID',
    message: 'the token rejected the PIN format',
    remedy: 'Check the PIN characters',
  },
  PIN_LEN_RANGE: {
    rv: 0xa2,
    code: 'PIN_INVALID',
    message: 'the PIN has a length the token does not accept',
    remedy: 'Check the PIN length',
  },
  PIN_EXPIRED: {
    rv: 0xa3,
    code: 'PIN_INVALID',
    message: 'the PIN has expired',
    remedy: 'Change the PIN with the device vendor tool',
  },
  PIN_TOO_WEAK: {
    rv: 0x1b8,
    code: 'PIN_INVALID',
    message: 'the token considers the PIN too weak',
    remedy: 'Choose a stronger PIN',
  },
  USER_NOT_LOGGED_IN: {
    rv: 0x101,
    code: 'PIN_REQUIRED',
    message: 'the token requires a PIN login first',
    remedy: 'Provide the PIN (unlock the agent) and retry',
  },
  USER_PIN_NOT_INITIALIZED: {
    rv: 0x102,
    code: 'PIN_REQUIRED',
    message: 'the token has no user PIN set',
    remedy: 'Initialise the user PIN with the device vendor tool',
  },
  USER_ANOTHER_ALREADY_LOGGED_IN: {
    rv: 0x104,
    code: 'DEVICE_ERROR',
    message: 'another user type (SO) is logged in to the token',
    remedy: 'Log the SO out (or release the token in other programs) and retry',
  },
  USER_TYPE_INVALID: {
    rv: 0x103,
    code: 'INTERNAL',
    message: 'the token rejected the login user type',
    remedy: 'Report this with the module name',
  },
  DEVICE_REMOVED: {
    rv: 0x32,
    code: 'DEVICE_REMOVED',
    message: 'the token was removed during the operation',
    remedy: REINSERT,
  },
  TOKEN_NOT_PRESENT: {
    rv: 0xe0,
    code: 'TOKEN_ABSENT',
    message: 'the token is not present',
    remedy: REINSERT,
  },
  SLOT_ID_INVALID: {
    rv: 0x03,
    code: 'TOKEN_ABSENT',
    message: 'the token slot disappeared',
    remedy: REINSERT,
  },
  TOKEN_NOT_RECOGNIZED: {
    rv: 0xe1,
    code: 'DEVICE_ERROR',
    message: 'the module does not recognise the inserted token',
    remedy: 'Check that the configured module matches the device',
  },
  SESSION_HANDLE_INVALID: {
    rv: 0xb3,
    code: 'SESSION_LOST',
    message: 'the PKCS#11 session became invalid',
    remedy: RETRY,
  },
  SESSION_CLOSED: {
    rv: 0xb0,
    code: 'SESSION_LOST',
    message: 'the PKCS#11 session was closed',
    remedy: RETRY,
  },
  SESSION_COUNT: {
    rv: 0xb1,
    code: 'DEVICE_ERROR',
    message: 'the token has no free sessions',
    remedy: 'Close other programs using the token, then retry',
  },
  DEVICE_ERROR: {
    rv: 0x30,
    code: 'DEVICE_ERROR',
    message: 'the device reported an error',
    remedy: 'Reinsert the token; if it persists run `cargo-pkcs11-agent doctor`',
  },
  DEVICE_MEMORY: {
    rv: 0x31,
    code: 'DEVICE_ERROR',
    message: 'the device ran out of memory',
    remedy: 'Free space on the token (delete unused objects)',
  },
  GENERAL_ERROR: {
    rv: 0x05,
    code: 'DEVICE_ERROR',
    message: 'the PKCS#11 module reported a general error',
    remedy: 'Run `cargo-pkcs11-agent doctor`; check the module configuration',
  },
  HOST_MEMORY: {
    rv: 0x02,
    code: 'DEVICE_ERROR',
    message: 'the PKCS#11 module ran out of host memory',
    remedy: 'Restart the agent',
  },
  CRYPTOKI_NOT_INITIALIZED: {
    rv: 0x190,
    code: 'MODULE_LOAD_FAILED',
    message: 'the PKCS#11 module is not initialised (another component finalised it)',
    remedy: 'Restart the agent',
  },
  MECHANISM_INVALID: {
    rv: 0x70,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token does not support the mechanism (ECDSA P-384 needed)',
    remedy: 'Use a token that supports CKM_ECDSA on P-384',
  },
  MECHANISM_PARAM_INVALID: {
    rv: 0x71,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token rejected the mechanism parameters',
    remedy: 'Use a token that supports CKM_ECDSA on P-384',
  },
  CURVE_NOT_SUPPORTED: {
    rv: 0x140,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token does not support the P-384 curve',
    remedy: 'Use a token that supports NIST P-384 (secp384r1)',
  },
  DOMAIN_PARAMS_INVALID: {
    rv: 0x130,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token rejected the P-384 domain parameters',
    remedy: 'Use a token that supports NIST P-384 (secp384r1)',
  },
  KEY_TYPE_INCONSISTENT: {
    rv: 0x63,
    code: 'KEY_INVALID',
    message: 'the key is not an EC key usable with ECDSA',
    remedy: 'Select a P-384 EC key',
  },
  KEY_FUNCTION_NOT_PERMITTED: {
    rv: 0x68,
    code: 'KEY_INVALID',
    message: 'the key is not allowed to sign (CKA_SIGN is false)',
    remedy: 'Select or generate a key with signing allowed',
  },
  // A stale object handle (the token logged out, or the key was replaced): the sessions are fine.
  KEY_HANDLE_INVALID: {
    rv: 0x60,
    code: 'KEY_NOT_FOUND',
    message: 'the key object is no longer valid',
    remedy: 'Check the key still exists with `cargo-pkcs11-agent list --login`, then retry',
  },
  OBJECT_HANDLE_INVALID: {
    rv: 0x82,
    code: 'KEY_NOT_FOUND',
    message: 'the key object is no longer valid',
    remedy: 'Check the key still exists with `cargo-pkcs11-agent list --login`, then retry',
  },
  ATTRIBUTE_SENSITIVE: {
    rv: 0x11,
    code: 'OPERATION_UNSUPPORTED',
    message: 'the token refuses to reveal a sensitive attribute',
    remedy: 'This is expected for private key material; nothing to do',
  },
  ATTRIBUTE_TYPE_INVALID: {
    rv: 0x12,
    code: 'OPERATION_UNSUPPORTED',
    message: 'the object has no such attribute',
    remedy: 'Nothing to do',
  },
  TEMPLATE_INCONSISTENT: {
    rv: 0xd1,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token rejected the key template',
    remedy: 'The token cannot create a non-extractable P-384 signing key; see native-config/devices.md',
  },
  TEMPLATE_INCOMPLETE: {
    rv: 0xd0,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token wants more attributes for the key',
    remedy: 'See native-config/devices.md for this device',
  },
  ATTRIBUTE_VALUE_INVALID: {
    rv: 0x13,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token rejected a key attribute value',
    remedy: 'See native-config/devices.md for this device',
  },
  ATTRIBUTE_READ_ONLY: {
    rv: 0x10,
    code: 'MECHANISM_UNSUPPORTED',
    message: 'the token does not let the agent set a key attribute',
    remedy: 'See native-config/devices.md for this device',
  },
  TOKEN_WRITE_PROTECTED: {
    rv: 0xe2,
    code: 'OPERATION_UNSUPPORTED',
    message: 'the token is write-protected',
    remedy: 'Generate the key with the device vendor tool instead',
  },
  FUNCTION_NOT_SUPPORTED: {
    rv: 0x54,
    code: 'OPERATION_UNSUPPORTED',
    message: 'the PKCS#11 module does not implement this function',
    remedy: 'See native-config/devices.md for this device',
  },
  FUNCTION_CANCELED: {
    rv: 0x50,
    code: 'TIMEOUT',
    message: 'the token cancelled the operation',
    remedy: 'Try again',
  },
  FUNCTION_REJECTED: {
    rv: 0x200,
    code: 'DENIED',
    message: 'the operation was rejected on the device',
    remedy: 'Approve the operation on the device, or cancel',
  },
  ACTION_PROHIBITED: {
    rv: 0x1b,
    code: 'OPERATION_UNSUPPORTED',
    message: 'the token prohibits this action',
    remedy: 'See native-config/devices.md for this device',
  },
  OPERATION_ACTIVE: {
    rv: 0x90,
    code: 'INTERNAL',
    message: 'a PKCS#11 operation was already active on the session',
    remedy: 'Report this; the agent uses one operation per session',
  },
  OPERATION_NOT_INITIALIZED: {
    rv: 0x91,
    code: 'INTERNAL',
    message: 'the PKCS#11 sign operation was not initialised',
    remedy: 'Report this',
  },
  DATA_LEN_RANGE: {
    rv: 0x21,
    code: 'INTERNAL',
    message: 'the token rejected the digest length',
    remedy: 'Report this with the module name',
  },
  BUFFER_TOO_SMALL: {
    rv: 0x150,
    code: 'SIGNATURE_MALFORMED',
    message: 'the device signature did not fit the buffer',
    remedy: 'Report this with the module name',
  },
  ARGUMENTS_BAD: {
    rv: 0x07,
    code: 'INTERNAL',
    message: 'the PKCS#11 module rejected the call arguments',
    remedy: 'Report this with the module name',
  },
} as const satisfies Record<string, Translation & { rv: number }>

const BY_VALUE: ReadonlyMap<number, Translation> = new Map(Object.values(CKR).map((t) => [t.rv, t]))

/** Operation-specific meanings that override the table (device quirks and context). */
function contextual(rv: number, op: Operation): Translation | undefined {
  if (op === 'sign' && (rv === CKR.FUNCTION_CANCELED.rv || rv === CKR.FUNCTION_REJECTED.rv)) {
    return {
      code: 'TOUCH_TIMEOUT',
      message: 'the device did not receive a touch (signature cancelled)',
      remedy: 'Touch the device when it blinks, then try again',
    }
  }
  // ykcs11 2.2 turns the card's SW 6982 at GENERAL AUTHENTICATE (the YubiKey's touch timer ran out)
  // into CKR_USER_NOT_LOGGED_IN. At C_Sign the device layer has just checked the login (and done the
  // context-specific login for CKA_ALWAYS_AUTHENTICATE keys), so this is the touch.
  if (op === 'sign' && rv === CKR.USER_NOT_LOGGED_IN.rv) {
    return {
      code: 'TOUCH_TIMEOUT',
      message: 'the device refused the signature: no touch was received in time',
      remedy:
        'Touch the device when it blinks, then try again (if it has no touch policy, unlock the agent again)',
    }
  }
  if ((op === 'login' || op === 'context-login') && rv === CKR.FUNCTION_CANCELED.rv) {
    return {
      code: 'PIN_ENTRY_FAILED',
      message: 'PIN entry on the device was cancelled',
      remedy: 'Enter the PIN on the device PIN pad, then try again',
    }
  }
  if (op === 'slots' && rv === CKR.DEVICE_ERROR.rv) {
    // ykcs11 (and OpenSC) answer C_GetSlotList with CKR_DEVICE_ERROR when pcscd is not running.
    return {
      code: 'DEVICE_ERROR',
      message: 'the PKCS#11 module cannot list its readers',
      remedy:
        'For smart cards and YubiKeys: check that pcscd is running (systemctl status pcscd.socket), then retry',
    }
  }
  if (op === 'initialize' && rv === CKR.GENERAL_ERROR.rv) {
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
  const found = contextual(rv, op) ?? BY_VALUE.get(rv)
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
