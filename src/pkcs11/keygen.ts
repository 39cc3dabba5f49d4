/**
 * Key generation on the token: a P-384 pair made by the device (CKM_EC_KEY_PAIR_GEN, PKCS#11 v2.40
 * section 2.3.3; the templates are in binding.ts `generateP384`), on its own read-write session
 * since it writes token objects (section 5.6). An existing key with the same label or id is kept
 * unless `force`, and then destroyed only after the new pair exists.
 */
import { randomBytes } from 'node:crypto'
import { AgentError } from '../lib/errors.js'
import type { Handle, Pkcs11Module } from './binding.js'
import { deviceKey, type DeviceKey } from './key-catalogue.js'
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
