/**
 * The P-384 keys on one token: the list (public points and attributes) for `list`, `pubkey` and key
 * selection, and the private key object handles signatures use. Both are cached until `forget`: the
 * device forgets on keygen, login, logout and whenever its sessions are dropped, because object
 * handles are only valid within the application's sessions (PKCS#11 v2.40 section 2.4) and a
 * reconnect may renumber them. Reading the list costs a C_FindObjects plus several
 * C_GetAttributeValue per key, about 3 ms on SoftHSM: most of an agent request.
 */
import { AgentError } from '../lib/errors.js'
import { isP384EcParams, publicKeyFromDevice } from '../keys/point.js'
import type { Handle, KeyAttributes, Pkcs11Module } from './binding.js'
import { hex, parseHexId, type KeySelector } from './selector.js'

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

/** One session of the token, and the token's name for messages. */
export interface OnSession {
  readonly mod: Pkcs11Module
  readonly session: Handle
  readonly where: string
}

/** A private key (with its public object, if any) as a P-384 key, or undefined if it is not one. */
export function deviceKey(
  priv: KeyAttributes | undefined,
  pub: KeyAttributes | undefined,
): DeviceKey | undefined {
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
    label: main.label,
    id: hex(main.id),
    publicKey,
    // Without a login the private object may be invisible (CKA_PRIVATE): these describe the
    // private key only when it was visible; otherwise they are the non-extractable defaults.
    alwaysAuthenticate: priv?.alwaysAuthenticate ?? false,
    extractable: priv?.extractable ?? false,
    sensitive: priv?.sensitive ?? true,
  }
}

function collect({ mod, session, where }: OnSession): DeviceKey[] {
  const pubs = mod
    .findKeys(session, { cls: 'public' }, where)
    .map((h) => mod.keyAttributes(session, h, 'public', where))
  const used = new Set<KeyAttributes>()
  const keys: DeviceKey[] = []
  for (const h of mod.findKeys(session, { cls: 'private' }, where)) {
    const priv = mod.keyAttributes(session, h, 'private', where)
    const pub =
      (priv.id.length > 0 ? pubs.find((p) => p.id.equals(priv.id)) : undefined) ??
      pubs.find((p) => p.id.length === 0 && priv.id.length === 0 && p.label === priv.label)
    if (pub !== undefined) used.add(pub)
    const key = deviceKey(priv, pub)
    if (key !== undefined) keys.push(key)
  }
  for (const pub of pubs) {
    if (used.has(pub)) continue
    const key = deviceKey(undefined, pub)
    if (key !== undefined) keys.push(key)
  }
  return keys
}

function pick(keys: DeviceKey[], selector: KeySelector, where: string): DeviceKey {
  if (selector.label === undefined && selector.id === undefined) {
    throw new AgentError('USAGE', 'a key needs a label or an id', {
      remedy: 'Configure `key_label` or `key_id` for this key',
    })
  }
  const id = selector.id === undefined ? undefined : hex(parseHexId(selector.id))
  const matches = keys.filter(
    (k) => (selector.label === undefined || k.label === selector.label) && (id === undefined || k.id === id),
  )
  const wanted = [
    selector.label === undefined ? '' : `label '${selector.label}'`,
    id === undefined ? '' : `id ${id}`,
  ]
    .filter((s) => s !== '')
    .join(', ')
  if (matches.length === 0) {
    const available = keys.map((k) => `'${k.label}' (id ${k.id})`).join(', ')
    throw new AgentError('KEY_NOT_FOUND', `${where} has no P-384 key with ${wanted}`, {
      remedy:
        keys.length === 0
          ? 'Generate one with `cargo-pkcs11-agent keygen` (or log in first: private keys may be hidden until then)'
          : `Available keys: ${available}`,
      data: { token: where },
    })
  }
  if (matches.length > 1) {
    throw new AgentError('CONFIG_INVALID', `${where} has ${matches.length} P-384 keys with ${wanted}`, {
      remedy: `Select the key by id as well: ${matches.map((k) => k.id).join(', ')}`,
    })
  }
  return matches[0] as DeviceKey
}

export class KeyCatalogue {
  #list: DeviceKey[] | undefined
  /** Private key handles by CKA_ID/label. */
  readonly #handles = new Map<string, { handle: Handle; alwaysAuthenticate: boolean }>()

  forget(): void {
    this.#handles.clear()
    this.#list = undefined
  }

  /** The token's keys, read afresh. */
  list(on: OnSession): DeviceKey[] {
    this.#list = collect(on)
    return this.#list
  }

  /** The one key the selector names from the cached list, or undefined (no list, no single match). */
  cached(selector: KeySelector): DeviceKey | undefined {
    if (this.#list === undefined) return undefined
    try {
      return pick(this.#list, selector, '')
    } catch {
      return undefined
    }
  }

  /** The one key the selector names; a miss in the cached list reads the token again (another
   * program may have made the key since). */
  find(on: OnSession, selector: KeySelector): DeviceKey {
    if (this.#list !== undefined) {
      try {
        return pick(this.#list, selector, on.where)
      } catch {
        this.#list = undefined
      }
    }
    return pick(this.list(on), selector, on.where)
  }

  /** The private key object for signing. `cached` says whether it came from the cache (and may be stale). */
  privateKey(
    { mod, session, where }: OnSession,
    key: Pick<DeviceKey, 'id' | 'label'>,
  ): { handle: Handle; alwaysAuthenticate: boolean; cached: boolean } {
    const cacheKey = `${key.id}/${key.label}`
    const cached = this.#handles.get(cacheKey)
    if (cached !== undefined) return { ...cached, cached: true }
    const query =
      key.id === ''
        ? { cls: 'private' as const, label: key.label }
        : { cls: 'private' as const, id: Buffer.from(key.id, 'hex') }
    let handles = mod.findKeys(session, query, where)
    // Same CKA_ID on several private objects (possible on SoftHSM): the label decides.
    if (handles.length > 1 && key.id !== '')
      handles = handles.filter((h) => mod.keyAttributes(session, h, 'private', where).label === key.label)
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
    const entry = {
      handle,
      alwaysAuthenticate: mod.keyAttributes(session, handle, 'private', where).alwaysAuthenticate,
    }
    this.#handles.set(cacheKey, entry)
    return { ...entry, cached: false }
  }
}
