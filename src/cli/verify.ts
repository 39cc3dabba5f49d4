/**
 * `cargo-pkcs11-agent verify TOKEN|- (--public-key k3.public.… | --keys FILE) --url URL [--operation …] …`
 *
 * Checks a token exactly as a registry must (src/verify/verify.ts). Exit 0 valid, 1 invalid
 * (reason code and message printed), 2 usage error. Prefer `-` (token on stdin): argv is visible
 * to every user on the machine, and a token is a credential until its `iat` window closes.
 * `--keys` takes a keys file (src/registry/keys-file.ts) and picks the key by the token's `kip`, so
 * a registry in another language can call this as a sidecar (docs/verifying-tokens.md).
 */
import { readFileSync } from 'node:fs'

import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { parseK3Public } from '../keys/paserk.js'
import { OPERATIONS } from '../cargo/operation.js'

import { readKeysFile } from '../gateway/keys.js'
import { printableKip, type KeyRing } from '../registry/keys-file.js'
import { fail } from '../verify/errors.js'
import {
  PIN_POLICIES,
  TOUCH_POLICIES,
  verifyAttestation,
  type PinPolicy,
  type TouchPolicy,
} from '../verify/attestation.js'
import { inspectToken, verifyToken, type VerifyOptions } from '../verify/verify.js'
import { oneOf, parseCommandArgs, USAGE, usageError } from './args.js'

const OPTIONS = {
  'public-key': { type: 'string' },
  keys: { type: 'string' },
  url: { type: 'string' },
  operation: { type: 'string' },
  name: { type: 'string' },
  vers: { type: 'string' },
  cksum: { type: 'string' },
  subject: { type: 'string' },
  'max-age': { type: 'string' },
  'no-time-check': { type: 'boolean' },
  'strict-low-s': { type: 'boolean' },
  json: { type: 'boolean' },
  attestation: { type: 'string' },
  roots: { type: 'string' },
  'require-touch': { type: 'string' },
  'require-pin': { type: 'string' },
} as const

function usage(message: string): AgentError {
  return usageError(message, USAGE.verify)
}

function publicKeyFlag(value: string): Uint8Array {
  try {
    return parseK3Public(value)
  } catch (error) {
    throw usage(`--public-key: ${toAgentError(error).message}`)
  }
}

/** `options.publicKey` is empty when the key comes from `keysFile` (found by the token's kip). */
interface VerifyArgs {
  /** The token, or `-` for stdin. */
  tokenArg: string
  json: boolean
  options: VerifyOptions
  keysFile: string | undefined
}

/** Parse, then validate: a typed, frozen request before anything reads stdin or verifies. */
export function parseVerifyArgs(argv: readonly string[]): VerifyArgs {
  const parsed = parseCommandArgs(argv, OPTIONS, USAGE.verify, { positionals: true })
  const v = parsed.values
  if (parsed.positionals.length !== 1) {
    throw usage(
      parsed.positionals.length === 0
        ? 'give the token, or - to read it from stdin'
        : 'give exactly one token',
    )
  }
  if ((v['public-key'] === undefined) === (v.keys === undefined))
    throw usage(
      'give --public-key k3.public.… (the key registered for this user) or --keys FILE (registered keys, found by the token kip)',
    )
  if (v.url === undefined)
    throw usage('--url is required: the registry index URL exactly as cargo sends it (keep `sparse+`)')
  const publicKey = v['public-key'] === undefined ? new Uint8Array(0) : publicKeyFlag(v['public-key'])
  const operation = oneOf(v.operation ?? 'read', OPERATIONS, '--operation', USAGE.verify)
  const crate = {
    ...(v.name === undefined ? {} : { name: v.name }),
    ...(v.vers === undefined ? {} : { vers: v.vers }),
    ...(v.cksum === undefined ? {} : { cksum: v.cksum }),
  }
  const options: VerifyOptions = { publicKey, url: v.url, operation, crate }
  if (v.subject !== undefined) options.subject = v.subject
  if (v['max-age'] !== undefined) {
    const seconds = /^\d+$/.test(v['max-age']) ? Number(v['max-age']) : Number.NaN
    if (!(seconds >= 1 && seconds <= LIMITS.maxTokenMaxAgeSeconds)) {
      throw usage(
        `--max-age takes whole seconds, 1..${LIMITS.maxTokenMaxAgeSeconds} (RFC 3231 suggests at most 15 min); got '${v['max-age']}'`,
      )
    }
    options.maxAgeSeconds = seconds
  }
  if (v['no-time-check'] === true) options.checkTime = false
  if (v['strict-low-s'] === true) options.strictLowS = true
  return Object.freeze({
    tokenArg: parsed.positionals[0] ?? '',
    json: v.json === true,
    options: Object.freeze(options),
    keysFile: v.keys,
  })
}

async function readStdin(): Promise<string> {
  // A token is ~600 characters; stop reading long before an accidental pipe of a large file fills memory.
  const limit = LIMITS.tokenMaxChars * 2
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of process.stdin) {
    const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk))
    size += buffer.length
    if (size > limit) throw usage(`stdin holds more than ${limit} bytes; expected one token`)
    chunks.push(buffer)
  }
  return Buffer.concat(chunks).toString('utf8').trim()
}

function readKeys(path: string): KeyRing {
  try {
    return readKeysFile(path)
  } catch (error) {
    throw usage(`--keys: ${toAgentError(error).message}`)
  }
}

/** The options for this token: with --keys, the key (and its subject) registered under the token's kip. */
function optionsFor(
  token: string,
  args: VerifyArgs,
  keys: KeyRing | undefined,
): {
  options: VerifyOptions
  user: string | undefined
} {
  if (keys === undefined) return { options: args.options, user: undefined }
  const kip = inspectToken(token).footer.kip
  const key = keys.get(kip)
  if (key === undefined)
    fail(
      'KEY_ID_MISMATCH',
      `no key with id ${printableKip(kip)} is in ${args.keysFile ?? 'the keys file'}`,
      'Add the k3.public key that `cargo-pkcs11-agent pubkey` prints to the keys file',
    )
  const subject = args.options.subject ?? key.subject
  return {
    options: { ...args.options, publicKey: key.publicKey, ...(subject === undefined ? {} : { subject }) },
    user: key.user,
  }
}

const CERTIFICATE_PEM = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g

function policyList<T extends string>(
  value: string | undefined,
  allowed: readonly T[],
  flag: string,
): T[] | undefined {
  return value?.split(',').map((p) => oneOf(p.trim(), allowed, flag, USAGE.verify))
}

/**
 * `verify --attestation FILE|-`: the registry's check of a key registration. FILE is what
 * `pubkey --attest` prints (PEM: the slot's attestation, then the f9 certificate; or its JSON).
 */
async function verifyAttestationCommand(argv: readonly string[]): Promise<number> {
  const v = parseCommandArgs(argv, OPTIONS, USAGE.verify).values
  if (v.roots === undefined)
    throw usage('--roots PEMFILE is required: the attestation roots you trust (Yubico PIV root CA)')
  if (v['public-key'] === undefined)
    throw usage('--public-key k3.public.… is required: the key being registered')
  const expectedKey = publicKeyFlag(v['public-key'])
  const input = v.attestation === '-' ? await readStdin() : readFileSync(String(v.attestation), 'utf8')
  const text = input.trimStart().startsWith('{')
    ? (() => {
        const j = JSON.parse(input) as { attestation?: unknown; intermediate?: unknown }
        return `${String(j.attestation)}${String(j.intermediate)}`
      })()
    : input
  const [attestation, intermediate] = text.match(CERTIFICATE_PEM) ?? []
  if (attestation === undefined || intermediate === undefined)
    throw usage(
      'the attestation file must hold two PEM certificates: the key attestation, then the f9 certificate',
    )
  const roots = readFileSync(v.roots, 'utf8').match(CERTIFICATE_PEM) ?? []
  const touchPolicies = policyList<TouchPolicy>(v['require-touch'], TOUCH_POLICIES, '--require-touch')
  const pinPolicies = policyList<PinPolicy>(v['require-pin'], PIN_POLICIES, '--require-pin')
  try {
    const attested = verifyAttestation({
      attestation,
      intermediate,
      roots,
      expectedKey,
      require: {
        ...(touchPolicies === undefined ? {} : { touchPolicies }),
        ...(pinPolicies === undefined ? {} : { pinPolicies }),
      },
    })
    const out = {
      valid: true,
      serial: attested.serial,
      firmware: attested.firmware,
      pinPolicy: attested.pinPolicy,
      touchPolicy: attested.touchPolicy,
    }
    process.stdout.write(
      v.json === true
        ? `${JSON.stringify(out)}\n`
        : `valid: attested on YubiKey ${attested.serial ?? '?'} (firmware ${attested.firmware ?? '?'}), PIN policy ${attested.pinPolicy ?? '?'}, touch policy ${attested.touchPolicy ?? '?'}\n`,
    )
    return 0
  } catch (error) {
    const e = toAgentError(error)
    if (v.json === true)
      process.stdout.write(`${JSON.stringify({ valid: false, code: e.code, message: e.message })}\n`)
    else process.stdout.write(`invalid: ${e.code}: ${e.message}\n${e.remedy ?? ''}\n`)
    return 1
  }
}

export async function verify(argv: readonly string[]): Promise<number> {
  if (argv.some((a) => a === '--attestation' || a.startsWith('--attestation=')))
    return await verifyAttestationCommand(argv)
  const args = parseVerifyArgs(argv)
  // The keys file is read before the token: a bad file is the operator's error (exit 2), not the token's.
  const keys = args.keysFile === undefined ? undefined : readKeys(args.keysFile)
  const token = args.tokenArg === '-' ? await readStdin() : args.tokenArg
  if (token === '') throw usage('the token is empty')
  try {
    const { options, user } = optionsFor(token, args, keys)
    const result = await verifyToken(token, options)
    const ageSeconds = Math.round((Date.now() - result.iat.valueOf()) / 1000)
    if (args.json) {
      process.stdout.write(
        JSON.stringify({
          valid: true,
          claims: result.claims,
          footer: result.footer,
          ...(user === undefined ? {} : { user }),
          iat: result.iat.toISOString(),
          highS: result.highS,
        }) + '\n',
      )
    } else {
      const c = result.claims
      const what = [args.options.operation, c['name'], c['vers']]
        .filter((x) => typeof x === 'string')
        .join(' ')
      process.stdout.write(
        [
          `valid: v3.public token for ${what}`,
          `  key  ${result.footer.kip}${user === undefined ? '' : ` (${user})`}`,
          `  url  ${result.footer.url}`,
          `  iat  ${result.iat.toISOString()} (${ageSeconds} s ago)`,
          ...(typeof c['sub'] === 'string' ? [`  sub  ${c['sub']}`] : []),
          `  s    ${result.highS ? 'high (accepted; cargo 1.95 emits high-S, --strict-low-s refuses it)' : 'low'}`,
        ].join('\n') + '\n',
      )
    }
    return 0
  } catch (error) {
    const e = toAgentError(error)
    // Options verifyToken itself refuses (e.g. --max-age 901, fields for the wrong operation) are usage errors.
    if (e.code === 'USAGE') throw usage(e.message)
    if (args.json) {
      process.stdout.write(JSON.stringify({ valid: false, ...e.toWire() }) + '\n')
    } else {
      process.stderr.write(`invalid: ${e.code}: ${e.describe()}\n`)
    }
    return 1
  }
}
