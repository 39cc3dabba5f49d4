/**
 * Loads the vector files copied into test/vectors/ (see its README for sources and licence).
 * Compiled to dist/test/helpers/, so the source tree's test/vectors is three levels up.
 */
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const VECTORS_DIR = fileURLToPath(new URL('../../../test/vectors/', import.meta.url))

export function loadVectors<T>(relativePath: string): { name: string; tests: T[] } {
  return JSON.parse(readFileSync(VECTORS_DIR + relativePath, 'utf8')) as { name: string; tests: T[] }
}

export interface PasetoVector {
  name: string
  'expect-fail': boolean
  'public-key'?: string
  'secret-key'?: string
  'public-key-pem'?: string
  'secret-key-pem'?: string
  token: string
  payload: string | null
  footer: string
  'implicit-assertion': string
}

export interface PaserkVector {
  name: string
  'expect-fail': boolean
  key: string
  'public-key'?: string | null
  paserk: string | null
  comment?: string
}

export interface CargoVector {
  name: string
  /** First word is the credential-protocol operation ("read (with secret-key-subject)"). */
  operation: string
  'http-request': string
  'expect-fail': boolean
  'secret-key': string
  'public-key': string
  kip: string
  token: string
  payload: string
  footer: string
  'implicit-assertion': string
  'sha384-of-pae-hex': string
  's-is-high': boolean
}

export const v3Vectors = (): PasetoVector[] => loadVectors<PasetoVector>('v3.json').tests
export const v4Vectors = (): PasetoVector[] => loadVectors<PasetoVector>('v4.json').tests
export const paserkVectors = (type: 'public' | 'secret' | 'pid'): PaserkVector[] =>
  loadVectors<PaserkVector>(`PASERK/k3.${type}.json`).tests
export const cargoVectors = (): CargoVector[] =>
  loadVectors<CargoVector>('cargo-1.95-paseto-tokens.json').tests

export const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text, 'hex'))
export const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex')
