/**
 * Which token and which key a command means. A token is named by what it says about itself in
 * CK_TOKEN_INFO (label, serial, manufacturer, model; PKCS#11 v2.40 section 3.2), never by a slot id,
 * which modules renumber when devices come and go. A key is named by CKA_LABEL and/or CKA_ID
 * (section 4.4). Pure data: nothing here loads a module.
 */
import { AgentError } from '../lib/errors.js'

export interface TokenSelector {
  /** Absolute path, or a known name from native-config/modules.json ("softhsm", "ykcs11", ...). */
  module: string
  label?: string | undefined
  serial?: string | undefined
  manufacturer?: string | undefined
  model?: string | undefined
}

/** What a token says about itself in CK_TOKEN_INFO, blank padding removed. */
export interface TokenIdentity {
  label: string
  serial: string
  manufacturer: string
  model: string
}

export interface KeySelector {
  label?: string | undefined
  /** CKA_ID as hex. */
  id?: string | undefined
}

/** Just the selecting fields of anything shaped like one (a config token entry, command flags). */
export function tokenSelector(token: Readonly<TokenSelector>): TokenSelector {
  const s: TokenSelector = { module: token.module }
  if (token.label !== undefined) s.label = token.label
  if (token.serial !== undefined) s.serial = token.serial
  if (token.manufacturer !== undefined) s.manufacturer = token.manufacturer
  if (token.model !== undefined) s.model = token.model
  return s
}

/** Whether a token's CK_TOKEN_INFO fits the selector (an empty serial selects any). */
export function tokenMatches(info: TokenIdentity, want: Omit<TokenSelector, 'module'>): boolean {
  return (
    (want.label === undefined || info.label === want.label) &&
    (want.serial === undefined || want.serial === '' || info.serial === want.serial) &&
    (want.manufacturer === undefined || info.manufacturer === want.manufacturer) &&
    (want.model === undefined || info.model === want.model)
  )
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex')
}

export function parseHexId(id: string): Buffer {
  const clean = id.replace(/[:\s]/g, '').toLowerCase()
  if (clean.length === 0 || clean.length % 2 !== 0 || !/^[0-9a-f]+$/.test(clean)) {
    throw new AgentError('USAGE', `key id '${id}' is not hex`, {
      remedy: 'Give the CKA_ID as hex digits, e.g. 01 or 0a1b',
    })
  }
  return Buffer.from(clean, 'hex')
}
