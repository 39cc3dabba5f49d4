/**
 * YubiKey PIV attestation, as a registry checks it when a key is registered: the slot's attestation
 * certificate (made by the card's ATTEST command, INS F9) is issued by the card's f9 certificate,
 * which is issued by a configured root (Yubico's PIV root for real cards; where to get it:
 * docs/verifying-tokens.md, "Key attestation"). The attested public key must be exactly the
 * `k3.public` being registered, and the card's serial, firmware and the key's PIN and touch policy
 * are read from Yubico's extensions under 1.3.6.1.4.1.41482.3 (developers.yubico.com
 * PIV/Introduction/PIV_attestation.html; go-piv/piv-go `piv/key.go` parses the same ones).
 * Real chains are RSA, test cards' are P-384: node:crypto verifies either.
 */
import { X509Certificate } from 'node:crypto'

import { AgentError } from '../lib/errors.js'
import { compressPoint, readSequence, readTlv, UNCOMPRESSED_POINT_BYTES } from '../keys/point.js'
import { k3Pid } from '../keys/paserk.js'

export const PIN_POLICIES = ['default', 'never', 'once', 'always'] as const
export const TOUCH_POLICIES = ['default', 'never', 'always', 'cached'] as const
export type PinPolicy = (typeof PIN_POLICIES)[number]
export type TouchPolicy = (typeof TOUCH_POLICIES)[number]

/** Yubico's attestation extensions (1.3.6.1.4.1.41482.3.x), DER-encoded OIDs as hex. */
const OID = {
  firmware: '060a2b0601040182c40a0303',
  serial: '060a2b0601040182c40a0307',
  policy: '060a2b0601040182c40a0308',
  formFactor: '060a2b0601040182c40a0309',
} as const

export interface AttestedKey {
  /** Compressed P-384 point (49 bytes), as `k3.public` carries it. */
  readonly publicKey: Uint8Array
  readonly serial?: number
  /** "5.4.3" */
  readonly firmware?: string
  readonly pinPolicy?: PinPolicy
  readonly touchPolicy?: TouchPolicy
  readonly formFactor?: number
  /** The attestation certificate's subject, e.g. "CN=YubiKey PIV Attestation 9c". */
  readonly subject: string
}

/** "key 9c" from the attestation's subject (the card names the slot there), for status and doctor. */
export function attestedKeyName(attested: AttestedKey): string | undefined {
  const slot = /Attestation (\S+)$/.exec(attested.subject)?.[1]
  return slot === undefined ? undefined : `key ${slot}`
}

export interface AttestationRequirement {
  /** Accepted touch policies, e.g. ['always'] for a mutation key. */
  readonly touchPolicies?: readonly TouchPolicy[]
  readonly pinPolicies?: readonly PinPolicy[]
}

function invalid(message: string, cause?: unknown): never {
  throw new AgentError('ATTESTATION_INVALID', message, {
    remedy:
      'Export the attestation again with `cargo-pkcs11-agent pubkey --attest` on the card that holds the key, and check the configured attestation roots',
    cause,
  })
}

/** The extensions of a DER certificate: OID (DER hex) -> extnValue contents. */
function extensions(der: Uint8Array): Map<string, Uint8Array> {
  const cert = readTlv(der, 0)
  const tbs = cert === undefined ? undefined : readTlv(cert.value, 0)
  const fields = tbs === undefined ? undefined : readSequence(tbs.value)
  if (fields === undefined) invalid('the attestation certificate is not DER')
  const wrapper = fields.find((f) => f.tag === 0xa3)
  const out = new Map<string, Uint8Array>()
  if (wrapper === undefined) return out
  const list = readTlv(wrapper.value, 0)
  for (const ext of (list === undefined ? undefined : readSequence(list.value)) ?? []) {
    const parts = readSequence(ext.value)
    const oid = parts?.[0]
    const value = parts?.[parts.length - 1]
    if (oid?.tag !== 0x06 || value?.tag !== 0x04) continue
    out.set(tlvHex(oid), value.value)
  }
  return out
}

function tlvHex(tlv: { tag: number; value: Uint8Array }): string {
  return Buffer.concat([Buffer.from([tlv.tag, tlv.value.length]), tlv.value]).toString('hex')
}

function publicPoint(cert: X509Certificate): Uint8Array {
  const key = cert.publicKey
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'secp384r1')
    throw new AgentError('KEY_INVALID', `the attested key is not a P-384 key (${key.asymmetricKeyType})`, {
      remedy: 'Generate the key on the card as ECCP384 (cargo-pkcs11-agent setup does)',
    })
  const spki = key.export({ type: 'spki', format: 'der' })
  return compressPoint(new Uint8Array(spki.subarray(spki.length - UNCOMPRESSED_POINT_BYTES)))
}

/** Reads an attestation certificate (DER or PEM) without checking who issued it. */
export function readAttestation(certificate: Uint8Array | string): AttestedKey {
  let cert: X509Certificate
  try {
    cert = new X509Certificate(certificate)
  } catch (error) {
    invalid('the attestation is not an X.509 certificate', error)
  }
  const ext = extensions(new Uint8Array(cert.raw))
  const firmware = ext.get(OID.firmware)
  const serial = ext.get(OID.serial)
  const policy = ext.get(OID.policy)
  const formFactor = ext.get(OID.formFactor)
  // The serial is a DER INTEGER inside the extension value (piv-go `piv/key.go` parseSerial).
  const serialInt = serial === undefined ? undefined : readTlv(serial, 0)
  return {
    publicKey: publicPoint(cert),
    subject: cert.subject.replace(/\n/g, ', '),
    ...(firmware?.length === 3 ? { firmware: [...firmware].join('.') } : {}),
    ...(serialInt?.tag === 0x02
      ? { serial: Number(BigInt(`0x${Buffer.from(serialInt.value).toString('hex')}`)) }
      : {}),
    ...(policy?.length === 2
      ? {
          pinPolicy: PIN_POLICIES[policy[0]!] ?? 'default',
          touchPolicy: TOUCH_POLICIES[policy[1]!] ?? 'default',
        }
      : {}),
    ...(formFactor?.length === 1 ? { formFactor: formFactor[0]! } : {}),
  }
}

function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey)
}

function current(cert: X509Certificate, now: Date): boolean {
  return new Date(cert.validFrom) <= now && now <= new Date(cert.validTo)
}

/**
 * Checks `attestation` ← `intermediate` (the card's f9 certificate) ← one of `roots`, that the
 * attested key is `expectedKey` (compressed point) and that its policies meet `require`.
 * Codes: ATTESTATION_INVALID (chain), ATTESTATION_KEY_MISMATCH, ATTESTATION_POLICY_WEAK.
 */
export function verifyAttestation(options: {
  attestation: Uint8Array | string
  intermediate: Uint8Array | string
  roots: readonly (Uint8Array | string)[]
  expectedKey: Uint8Array
  require?: AttestationRequirement
  now?: Date
}): AttestedKey {
  const now = options.now ?? new Date()
  let leaf: X509Certificate
  let f9: X509Certificate
  let roots: X509Certificate[]
  try {
    leaf = new X509Certificate(options.attestation)
    f9 = new X509Certificate(options.intermediate)
    roots = options.roots.map((r) => new X509Certificate(r))
  } catch (error) {
    invalid('the attestation chain holds something that is not an X.509 certificate', error)
  }
  if (roots.length === 0) invalid('no attestation roots are configured')
  const root = roots.find((r) => issuedBy(f9, r))
  if (root === undefined || !f9.ca)
    invalid(
      `the card's attestation certificate (${f9.subject.replace(/\n/g, ', ')}) is not issued by a configured root`,
    )
  if (!issuedBy(leaf, f9))
    invalid("the key's attestation certificate does not verify under the card's attestation certificate")
  for (const cert of [leaf, f9, root])
    if (!current(cert, now)) invalid(`the certificate ${cert.subject.replace(/\n/g, ', ')} is not valid now`)
  const attested = readAttestation(options.attestation)
  if (Buffer.compare(Buffer.from(attested.publicKey), Buffer.from(options.expectedKey)) !== 0) {
    throw new AgentError(
      'ATTESTATION_KEY_MISMATCH',
      `the attestation is for ${k3Pid(attested.publicKey)}, not for the key being registered (${k3Pid(options.expectedKey)})`,
      { remedy: 'Export the attestation of the slot that holds this key (pubkey --attest --id ...)' },
    )
  }
  const want = options.require
  const weak: string[] = []
  if (want?.touchPolicies !== undefined && !want.touchPolicies.includes(attested.touchPolicy ?? 'default'))
    weak.push(
      `touch policy ${attested.touchPolicy ?? 'unknown'} (required: ${want.touchPolicies.join(' or ')})`,
    )
  if (want?.pinPolicies !== undefined && !want.pinPolicies.includes(attested.pinPolicy ?? 'default'))
    weak.push(`PIN policy ${attested.pinPolicy ?? 'unknown'} (required: ${want.pinPolicies.join(' or ')})`)
  if (weak.length > 0) {
    throw new AgentError('ATTESTATION_POLICY_WEAK', `the attested key has ${weak.join(' and ')}`, {
      remedy:
        'Generate a new key with the required policy: cargo-pkcs11-agent setup --regenerate-key --touch-policy always',
    })
  }
  return attested
}

/** ykcs11's labels for the attestation objects it makes at C_OpenSession (`ykcs11/objects.c`). */
const SLOT_ATTESTATION_LABEL = /^X\.509 Certificate for PIV Attestation [0-9a-f]{2}$/
const F9_LABEL = 'X.509 Certificate for PIV Attestation'

/**
 * The attestation of the key with CKA_ID `id` and the card's f9 certificate among a token's
 * certificate objects, as ykcs11 exposes them (same CKA_ID as the key); undefined when the module
 * shows none (another module, an imported key, firmware before 4.3).
 */
export function pivAttestationObjects(
  certificates: readonly { label: string; id: string; der: Uint8Array }[],
  id: string,
): { attestation: Uint8Array; intermediate: Uint8Array } | undefined {
  const attestation = certificates.find((c) => c.id === id && SLOT_ATTESTATION_LABEL.test(c.label))
  const intermediate = certificates.find((c) => c.label === F9_LABEL)
  if (attestation === undefined || intermediate === undefined) return undefined
  return { attestation: attestation.der, intermediate: intermediate.der }
}

export function pem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '')
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`
}
