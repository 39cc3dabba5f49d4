/**
 * Key generation on the token: a P-384 pair made by the device (CKM_EC_KEY_PAIR_GEN, PKCS#11 v2.40
 * section 2.3.3; the templates are in binding.ts `generateP384`), on its own read-write session
 * since it writes token objects (section 5.6). An existing key with the same label or id is kept
 * unless `force`, and then destroyed only after the new pair exists.
 *
 * On a YubiKey, ykcs11 from yubico-piv-tool 2.3.0 on also takes the slot's PIN and touch policy as
 * vendor attributes of the private-key template, after C_Login as CKU_SO with the management key
 * (`generateInPivSlot`); older ykcs11 rejects them, and `setup` then uses yubico-piv-tool
 * (src/cli/setup/yubikey.ts; docs/setup.md §5).
 */
import { randomBytes } from 'node:crypto'
import { AgentError, toAgentError } from '../lib/errors.js'
import { Secret } from '../lib/secret.js'
import { Pkcs11Module, type Handle, type LibraryInfo, type RawAttribute } from './binding.js'
import { deviceKey, type DeviceKey } from './key-catalogue.js'
import { resolveModulePath } from './modules.js'
import { hex, parseHexId } from './selector.js'

export interface KeygenRequest {
  label: string
  /** CKA_ID; undefined = keep the replaced key's id, else random. */
  id: Buffer | undefined
  force: boolean
}

/** Checks a keygen request before anything touches the device. */
export function keygenRequest(key: { label: string; id?: string }, force: boolean): KeygenRequest {
  if (key.label.trim() === '')
    throw new AgentError('USAGE', 'a key label is required', { remedy: 'Pass --label NAME' })
  return { label: key.label, id: key.id === undefined ? undefined : parseHexId(key.id), force }
}

/** `commit` runs once the device is about to write: from then on a retry would repeat the write. */
export function generateKeyPair(
  mod: Pkcs11Module,
  slot: Handle,
  where: string,
  request: KeygenRequest,
  commit: () => void,
): DeviceKey {
  const { label, id: givenId } = request
  const rw = mod.openSession(slot, true)
  try {
    const find = (query: { label: string } | { id: Buffer }): Handle[] =>
      (['private', 'public'] as const).flatMap((cls) => mod.findKeys(rw, { cls, ...query }, where))
    const byLabel = find({ label })
    const byId = givenId === undefined ? [] : find({ id: givenId })
    const existing = new Map<string, Handle>()
    for (const h of [...byLabel, ...byId]) existing.set(hex(h), h)
    if (existing.size > 0 && !request.force) {
      const what = [
        byLabel.length > 0 ? `a key labelled '${label}'` : '',
        byId.length > 0 && givenId !== undefined ? `a key with id ${hex(givenId)}` : '',
      ]
        .filter((t) => t !== '')
        .join(' and ')
      throw new AgentError('KEY_EXISTS', `${where} already has ${what}`, {
        remedy:
          'Choose another label/id, or pass --force to destroy the old key (registries that know its public key will then reject your tokens)',
        data: { label, ...(givenId === undefined ? {} : { id: hex(givenId) }) },
      })
    }
    // Replacing a key without a new id keeps its CKA_ID (on PIV tokens the id is the slot).
    const previousId = byLabel
      .map((h) => mod.keyAttributes(rw, h, 'private', where).id)
      .find((b) => b.length > 0)
    commit()
    const pair = mod.generateP384(rw, label, givenId ?? previousId ?? randomBytes(8), where)
    for (const h of existing.values()) mod.destroy(rw, h, where)
    const key = deviceKey(
      mod.keyAttributes(rw, pair.privateKey, 'private', where),
      mod.keyAttributes(rw, pair.publicKey, 'public', where),
    )
    if (key === undefined) {
      throw new AgentError('KEY_INVALID', `${where} generated a key that is not a readable P-384 key`, {
        remedy: 'See native-config/devices.md for this device',
      })
    }
    return key
  } finally {
    mod.closeSession(rw)
  }
}

// ---------------------------------------------------------------------------------------------
// PIV slots through ykcs11's vendor attributes

export type PivPinPolicy = 'default' | 'never' | 'once' | 'always'
export type PivTouchPolicy = 'default' | 'never' | 'always' | 'cached'

/** PKCS#11 v2.40 pkcs11t.h: the first vendor attribute type. */
const CKA_VENDOR_DEFINED = 0x80000000
/** yubico-piv-tool `ykcs11/pkcs11y.h`: `YUBICO_BASE_VENDOR`, `CKA_YUBICO` = CKA_VENDOR_DEFINED + it. */
const CKA_YUBICO = CKA_VENDOR_DEFINED + 0x59554200
/** `ykcs11/pkcs11y.h`: CKA_YUBICO_TOUCH_POLICY (CKA_YUBICO + 1), CKA_YUBICO_PIN_POLICY (CKA_YUBICO + 2). */
export const CKA_YUBICO_TOUCH_POLICY = CKA_YUBICO + 1
export const CKA_YUBICO_PIN_POLICY = CKA_YUBICO + 2
/**
 * Their values, one CK_BYTE each (`ykcs11/pkcs11y.h` YKPIV_TOUCHPOLICY_* / YKPIV_PINPOLICY_*, read
 * as `*(CK_BYTE *)pValue` by `ykcs11/mechanisms.c` check_pvtkey_template).
 */
const TOUCH_VALUES: Readonly<Record<PivTouchPolicy, number>> = { default: 0, never: 1, always: 2, cached: 3 }
const PIN_VALUES: Readonly<Record<PivPinPolicy, number>> = { default: 0, never: 1, once: 2, always: 3 }

/**
 * The first ykcs11 that sends the policies on GENERATE: yubico-piv-tool 2.3.0 (its NEWS: "ykcs11:
 * Support touch and PIN policy when generating keys"). ykcs11's C_GetInfo reports the library
 * version as major.(minor × 10 + patch) (`ykcs11/ykcs11.c` C_GetInfo), so 2.3.0 is 2.30 and
 * Debian bookworm's 2.2.0 is 2.20.
 */
export const YKCS11_POLICY_ATTRIBUTES_SINCE = { major: 2, minor: 30 } as const

/** "2.2.0" from ykcs11's CK_INFO library version. */
export function ykcs11Version(info: LibraryInfo): string {
  const { major, minor } = info.version
  return `${major}.${Math.floor(minor / 10)}.${minor % 10}`
}

/** How a PIV key with policies can be generated with this module: through PKCS#11, or not. */
export function pivKeygenRoute(info: LibraryInfo): 'pkcs11' | 'tool' {
  const since = YKCS11_POLICY_ATTRIBUTES_SINCE
  const { major, minor } = info.version
  const yubico = /^Yubico/i.test(info.manufacturer)
  return yubico && (major > since.major || (major === since.major && minor >= since.minor))
    ? 'pkcs11'
    : 'tool'
}

/** The private-key template's policy attributes; `default` ones are left out (the slot's default applies). */
export function pivPolicyAttributes(pin: PivPinPolicy, touch: PivTouchPolicy): RawAttribute[] {
  return [
    ...(touch === 'default'
      ? []
      : [{ type: CKA_YUBICO_TOUCH_POLICY, value: Buffer.from([TOUCH_VALUES[touch]]) }]),
    ...(pin === 'default' ? [] : [{ type: CKA_YUBICO_PIN_POLICY, value: Buffer.from([PIN_VALUES[pin]]) }]),
  ]
}

/** The CK_INFO of a module by name or path (loads it; nothing else is touched). */
export function moduleInfo(moduleNameOrPath: string): LibraryInfo {
  return Pkcs11Module.load(resolveModulePath(moduleNameOrPath)).libraryInfo()
}

/**
 * Whether `managementKey` authenticates as SO through the module (C_Login CKU_SO, then C_Logout).
 * ykcs11 ≥ 2.3 reads the key's algorithm from GET METADATA first (`lib/ykpiv.c`
 * _ykpiv_authenticate2), so this works for the AES keys of firmware 5.7 too.
 */
export function managementKeyWorks(
  moduleNameOrPath: string,
  serial: string,
  managementKey: Secret<Buffer>,
): boolean {
  const { mod, slot, where } = pivSlot(moduleNameOrPath, serial)
  const hexKey = new Secret(Buffer.from(managementKey.expose().toString('hex'), 'ascii'))
  const rw = mod.openSession(slot, true)
  try {
    mod.loginSecurityOfficer(rw, hexKey, where)
    mod.logout(rw, where)
    return true
  } catch (error) {
    if (toAgentError(error).code === 'PIN_INCORRECT') return false
    throw error
  } finally {
    mod.closeSession(rw)
    hexKey.expose().fill(0)
  }
}

function pivSlot(
  moduleNameOrPath: string,
  serial: string,
): { mod: Pkcs11Module; slot: Handle; where: string } {
  const mod = Pkcs11Module.load(resolveModulePath(moduleNameOrPath))
  const slot = mod.slotsWithToken().find((s) => mod.tokenInfo(s).serial === serial)
  if (slot === undefined)
    throw new AgentError('TOKEN_ABSENT', `${mod.name} shows no YubiKey with serial ${serial}`, {
      remedy: 'Insert the YubiKey and check that pcscd runs (cargo-pkcs11-agent doctor)',
    })
  return { mod, slot, where: `${mod.name}, YubiKey ${serial}` }
}

export interface PivKeygenRequest {
  /** ykcs11's CKA_ID of the slot, one byte (9a 01, 9c 02, ...; `ykcs11/objects.c`). */
  readonly id: Buffer
  readonly pinPolicy: PivPinPolicy
  readonly touchPolicy: PivTouchPolicy
  /** The PIV management key; C_Login(CKU_SO) takes it as hex (`ykcs11/token.c` token_login). */
  readonly managementKey: Secret<Buffer>
}

/**
 * GENERATE in a PIV slot through ykcs11 ≥ 2.3: C_Login as SO with the management key on a
 * read-write session (ykcs11 refuses SO login while a read-only session of the slot is open, and
 * C_GenerateKeyPair without it: `ykcs11/ykcs11.c` C_Login, C_GenerateKeyPair), the P-384 pair with
 * the policy attributes, C_Logout. The card overwrites whatever the slot held.
 */
export function generateInPivSlot(
  moduleNameOrPath: string,
  serial: string,
  request: PivKeygenRequest,
): { publicKey: Uint8Array } {
  const { mod, slot, where } = pivSlot(moduleNameOrPath, serial)
  const hexKey = new Secret(Buffer.from(request.managementKey.expose().toString('hex'), 'ascii'))
  const rw = mod.openSession(slot, true)
  try {
    try {
      mod.loginSecurityOfficer(rw, hexKey, where)
    } catch (error) {
      const e = toAgentError(error)
      if (e.code !== 'PIN_INCORRECT') throw e
      throw new AgentError(
        'MANAGEMENT_KEY_INCORRECT',
        `the management key does not authenticate to ${where}`,
        {
          remedy: 'Check the management key (ykman piv info shows whether it is the factory default)',
          cause: e,
        },
      )
    }
    try {
      const policies = pivPolicyAttributes(request.pinPolicy, request.touchPolicy)
      let pair: { publicKey: Handle; privateKey: Handle }
      try {
        pair = mod.generateP384(rw, 'cargo', request.id, where, { policies })
      } catch (error) {
        const e = toAgentError(error)
        if (e.code !== 'OPERATION_UNSUPPORTED' || policies.length === 0) throw e
        const version = ykcs11Version(mod.libraryInfo())
        throw new AgentError(
          'OPERATION_UNSUPPORTED',
          `${where}: ykcs11 ${version} refuses the PIN/touch policy attributes (CKA_YUBICO_PIN_POLICY, CKA_YUBICO_TOUCH_POLICY); nothing was generated`,
          {
            remedy: `Install ykcs11 ${ykcs11Version({ ...mod.libraryInfo(), version: YKCS11_POLICY_ATTRIBUTES_SINCE })} or later, or run cargo-pkcs11-agent setup, which generates through yubico-piv-tool with this module`,
            cause: e,
            data: { ykcs11: version },
          },
        )
      }
      const key = deviceKey(
        mod.keyAttributes(rw, pair.privateKey, 'private', where),
        mod.keyAttributes(rw, pair.publicKey, 'public', where),
      )
      if (key === undefined)
        throw new AgentError('KEY_INVALID', `${where} generated a key that is not a readable P-384 key`, {
          remedy: 'See native-config/devices.md for this device',
        })
      return { publicKey: key.publicKey }
    } finally {
      mod.logout(rw, where)
    }
  } finally {
    mod.closeSession(rw)
    hexKey.expose().fill(0)
  }
}
