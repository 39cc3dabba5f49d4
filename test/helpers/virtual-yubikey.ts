import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  X509Certificate,
  type KeyObject,
} from 'node:crypto'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

import { createAttestationCa, createAttestationKey, type CertifiedKey } from '../fixtures/vpiv/attestation.js'
import type { ControlRequest, StartMessage } from '../fixtures/vpiv/main.js'
import {
  DEFAULT_MANAGEMENT_KEY,
  DEFAULT_PIN,
  DEFAULT_PUK,
  TOUCH_CACHE_MS,
  defaultManagementAlgorithm,
  type KeyOrigin,
  type ManagementAlgorithm,
  type SlotState,
} from '../fixtures/vpiv/piv-card.js'
import { readLog, watchChild } from './daemon.js'
import { startPcscd, type Pcscd } from './pcscd.js'

/**
 * A virtual YubiKey for tests: the REAL ykcs11 → a private pcscd → the vsmartcard vpcd reader
 * driver → TCP → our PIV card emulator (test/fixtures/vpiv) in a child process.
 *
 * The process that loads ykcs11 must have `env` (PCSCLITE_CSOCK_NAME) in its environment before
 * libpcsclite first connects (it caches the socket name): `Object.assign(process.env, yk.env)`
 * before the first C_Initialize / C_GetSlotList in that process, or pass `env` to a child.
 */

export const YKCS11_MODULE = '/usr/lib/x86_64-linux-gnu/libykcs11.so'
/** ykcs11 ignores readers whose name does not start with "Yubico". */
const READER_NAME = 'Yubico YubiKey OTP+FIDO+CCID'
const EMULATOR = fileURLToPath(new URL('../fixtures/vpiv/main.js', import.meta.url))
const READY_TIMEOUT_MS = 20_000

export { createAttestationCa, YUBICO_OID, type CertifiedKey } from '../fixtures/vpiv/attestation.js'
export { DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, DEFAULT_PUK, TOUCH_CACHE_MS, type SlotState }

export type PivSlot = '9a' | '9c'
/** ykcs11 2.2 object ids (CKA_ID) of the PIV key slots (yubico-piv-tool `ykcs11/objects.c`, sub_id). */
export const YKCS11_KEY_IDS: Readonly<Record<string, number>> = {
  '9a': 1,
  '9c': 2,
  '9d': 3,
  '9e': 4,
  ...Object.fromEntries(Array.from({ length: 20 }, (_, i) => [(0x82 + i).toString(16), 5 + i])),
  f9: 25,
}

export interface VirtualKeyOptions {
  /** PEM (PKCS#8 or SEC1) or a KeyObject of a P-384 private key; generated when absent. */
  readonly privateKey?: string | KeyObject
  readonly pinPolicy?: 'never' | 'once' | 'always'
  readonly touchPolicy?: 'never' | 'always' | 'cached'
  /** What GET METADATA reports; only "generated" keys can be attested. Default "generated". */
  readonly origin?: KeyOrigin
  /**
   * Store a self-signed certificate for the key in the slot (as `ykman piv keys generate` +
   * `certificates generate` leave it). OpenSC finds PIV keys only through certificates.
   */
  readonly certificate?: boolean
}

export interface VirtualYubiKeyOptions {
  /** Default 123456 (the factory PIN). */
  readonly pin?: string
  readonly serial: number
  /** Default 12345678 (the factory PUK). */
  readonly puk?: string
  readonly touchDelayMs?: number
  readonly pinTries?: number
  /**
   * Firmware version the card reports (default 5.4.3); ykcs11 reads key metadata only from 5.3 on,
   * and from 5.7 the factory management key is AES-192.
   */
  readonly version?: [number, number, number]
  /**
   * A card as it leaves the factory: no keys, no certificates, default PIN, PUK and management
   * key (unless given). Only its f9 attestation key and certificate are there.
   */
  readonly blank?: boolean
  /**
   * Keys per slot (9a, 9c, 9d, 9e, 82-95). Default (not blank): 9C (signature: PIN policy always,
   * touch always) and 9A (authentication: PIN once, no touch), both freshly generated. `false`
   * leaves 9a/9c empty.
   */
  readonly keys?: {
    readonly '9c'?: VirtualKeyOptions | false
    readonly '9a'?: VirtualKeyOptions | false
    readonly [slot: string]: VirtualKeyOptions | false | undefined
  }
  /** Default: the factory key (DEFAULT_MANAGEMENT_KEY) with the firmware's default algorithm. */
  readonly managementKey?: {
    readonly algorithm?: ManagementAlgorithm
    readonly key?: Uint8Array
    /** Authentication needs a touch (SET MANAGEMENT KEY P2 FE). */
    readonly touch?: boolean
  }
  /**
   * A random 3DES management key stored PIN-protected on the card, as `yubico-piv-tool -a
   * set-mgm-key` with protection, ykman and yubikey-agent leave it: printed-information object
   * 5FC109 = `88 { 89 key }`, admin data 5FFF00 = `80 { 81 02 }` (yubico-piv-tool `lib/util.c`).
   */
  readonly protectedManagementKey?: boolean
  /** The root issuing this card's f9 attestation certificate; several cards may share one. Default: a fresh CA. */
  readonly attestationCa?: CertifiedKey
  /** Form factor byte in attestations (default 3, USB-C keychain). */
  readonly formFactor?: number
  /** How long a touch satisfies touch policy "cached" (default 15000 ms, as on a YubiKey). */
  readonly touchCacheMs?: number
  /** Emulator APDU trace (PIN bytes never shown) and pcscd debug log on stderr of the children. */
  readonly trace?: boolean
}

export interface CardCounters {
  /** VERIFY commands that carried a PIN: each wrong one costs a try. */
  readonly verify: number
  /** VERIFY without data (the tries-left query, free). */
  readonly verifyStatus: number
  /** GENERAL AUTHENTICATE signature requests for a key the card holds (refused ones included). */
  readonly sign: number
  /** Touches the card waited for and got; "cached" signatures inside the window cost none. */
  readonly touches: number
  /** Completed management-key authentications. */
  readonly managementAuth: number
  /** Keys generated on the card. */
  readonly generate: number
  /** Objects written with PUT DATA (certificates, printed information, admin data). */
  readonly putData: number
  readonly apdus: number
}

export interface VirtualYubiKeyControl {
  setTouchDelay(ms: number): Promise<void>
  /** When on, a signature with a touch-policy key answers SW 6982 after the touch delay. */
  missTouch(on: boolean): Promise<void>
  setPinTries(left: number, total?: number): Promise<void>
  /** Pulls the card: the vpcd connection closes (an answer being computed is dropped); resolves
   * once pcscd has noticed. */
  remove(): Promise<void>
  /** Puts the card back and waits until ykcs11 lists the token again. */
  insert(): Promise<void>
  counters(): Promise<CardCounters>
  /**
   * Resolves when the next touch-policy signature starts waiting for its touch (a real key would
   * blink now). Call it before triggering the signature.
   */
  touchRequested(): Promise<{ slot: string }>
  state(): Promise<{ connected: boolean; power: string; pinTriesLeft: number }>
  /** The next "cached" signature needs a touch again, as if 15 s had passed. */
  expireTouchCache(): Promise<void>
  setTouchCacheMs(ms: number): Promise<void>
  /** Every key the card holds now (pre-provisioned and generated), with its policies. */
  slots(): Promise<SlotState[]>
  /** The current management key as the test may know it (the card never discloses it over APDUs). */
  managementKey(): Promise<{
    algorithm: ManagementAlgorithm
    hex: string
    isDefault: boolean
    touch: boolean
  }>
  credentials(): Promise<{ pinIsDefault: boolean; pukIsDefault: boolean; pukTriesLeft: number }>
  /** A data object's stored contents (inside its 53 template), hex; null when absent. */
  object(id: string): Promise<string | null>
}

export interface VirtualYubiKey {
  readonly module: string
  /** Environment for the process that loads `module`. */
  readonly env: Readonly<Record<string, string>>
  readonly serial: number
  /** Token label as ykcs11 builds it. */
  readonly label: string
  /** SEC1 compressed (49-byte) public keys per pre-provisioned slot. */
  readonly publicKeys: {
    readonly '9c'?: Uint8Array
    readonly '9a'?: Uint8Array
    readonly [slot: string]: Uint8Array | undefined
  }
  /** node:crypto public keys per pre-provisioned slot, for verifying signatures. */
  readonly publicKeyObjects: {
    readonly '9c'?: KeyObject
    readonly '9a'?: KeyObject
    readonly [slot: string]: KeyObject | undefined
  }
  /** The root CA of this card's attestation chain (give it to the verifier as the trusted root). */
  readonly attestationCa: { readonly certificate: Buffer; readonly pem: string; readonly key: CertifiedKey }
  /** The card's f9 attestation certificate (DER), also readable as object 5FFF01. */
  readonly attestationCertificate: Buffer
  /** The management key the card started with. */
  readonly initialManagementKey: { readonly algorithm: ManagementAlgorithm; readonly key: Buffer }
  readonly control: VirtualYubiKeyControl
  /** Polls `pkcs11-tool -L` in a child until ykcs11 lists this card's serial. */
  waitForToken(): Promise<void>
  /** Logs of pcscd and the emulator, for failure messages. */
  logs(): string
  stop(): Promise<void>
}

function compressedPoint(publicKey: KeyObject): Uint8Array {
  const jwk = publicKey.export({ format: 'jwk' })
  const x = Buffer.from(jwk.x ?? '', 'base64url')
  const y = Buffer.from(jwk.y ?? '', 'base64url')
  return new Uint8Array(Buffer.concat([Buffer.from([2 + ((y[y.length - 1] ?? 0) & 1)]), x]))
}

function resolveKey(options: VirtualKeyOptions): { d: string; publicKey: KeyObject; privateKey: KeyObject } {
  const privateKey =
    options.privateKey === undefined
      ? generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey
      : typeof options.privateKey === 'string'
        ? createPrivateKey(options.privateKey)
        : options.privateKey
  const jwk = privateKey.export({ format: 'jwk' })
  if (jwk.crv !== 'P-384' || jwk.d === undefined)
    throw new Error('virtual YubiKey keys must be P-384 private keys')
  return {
    d: Buffer.from(jwk.d, 'base64url').toString('hex'),
    publicKey: createPublicKey(privateKey),
    privateKey,
  }
}

/**
 * A self-signed X.509 certificate (DER, base64) for a test key, made by `openssl req -x509`: the key
 * sits in a 0600 file in a private temp dir for the duration of that one command.
 */
async function selfSignedCertificate(privateKey: KeyObject, slot: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vpiv-cert-'))
  try {
    const keyPath = join(dir, 'key.pem')
    await writeFile(keyPath, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 })
    const der = await new Promise<Buffer>((resolve, reject) => {
      execFile(
        'openssl',
        [
          'req',
          '-new',
          '-x509',
          '-key',
          keyPath,
          '-subj',
          `/CN=vpiv slot ${slot}`,
          '-days',
          '30',
          '-outform',
          'DER',
        ],
        { encoding: 'buffer', timeout: 10_000 },
        (error, stdout, stderr) =>
          error === null ? resolve(stdout) : reject(new Error(`openssl req failed: ${stderr.toString()}`)),
      )
    })
    return der.toString('base64')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function listTokens(env: Readonly<Record<string, string>>): Promise<string> {
  return new Promise((resolve) => {
    execFile(
      'pkcs11-tool',
      ['--module', YKCS11_MODULE, '--list-slots'],
      { env: { ...process.env, ...env }, timeout: 10_000 },
      (_error, stdout) => resolve(stdout),
    )
  })
}

export async function startVirtualYubiKey(options: VirtualYubiKeyOptions): Promise<VirtualYubiKey> {
  const slotDefaults: Record<PivSlot, Required<Pick<VirtualKeyOptions, 'pinPolicy' | 'touchPolicy'>>> = {
    '9c': { pinPolicy: 'always', touchPolicy: 'always' },
    '9a': { pinPolicy: 'once', touchPolicy: 'never' },
  }
  const keys: StartMessage['keys'] = {}
  const publicKeys: Record<string, Uint8Array> = {}
  const publicKeyObjects: Record<string, KeyObject> = {}
  const wantedSlots = new Set([
    ...(options.blank === true ? [] : ['9c', '9a']),
    ...Object.keys(options.keys ?? {}),
  ])
  for (const slot of wantedSlots) {
    const wanted = options.keys?.[slot] ?? {}
    if (wanted === false) continue
    const { d, publicKey, privateKey } = resolveKey(wanted)
    const defaults = slotDefaults[slot as PivSlot] ?? {
      pinPolicy: slot === '9e' ? 'never' : 'once',
      touchPolicy: 'never',
    }
    keys[slot] = {
      d,
      pinPolicy: wanted.pinPolicy ?? defaults.pinPolicy,
      touchPolicy: wanted.touchPolicy ?? defaults.touchPolicy,
      origin: wanted.origin ?? 'generated',
      ...(wanted.certificate === true ? { certificate: await selfSignedCertificate(privateKey, slot) } : {}),
    }
    publicKeys[slot] = compressedPoint(publicKey)
    publicKeyObjects[slot] = publicKey
  }

  const pcscd: Pcscd = await startPcscd({
    friendlyName: READER_NAME,
    ...(options.trace === true ? { debug: true } : {}),
  })
  // stderr (the APDU trace) goes to a file: a pipe nobody reads while the test process is inside
  // a synchronous ykcs11 call would fill up and stall the card.
  const logDir = await mkdtemp(join(tmpdir(), 'vpiv-'))
  const tracePath = join(logDir, 'emulator.log')
  const traceFd = openSync(tracePath, 'w')
  let emulatorLog = ''
  const [command, args] = pcscd.inNetwork([process.execPath, EMULATOR])
  const child: ChildProcess = spawn(command, args, {
    env: { ...process.env, VPIV_CHILD: '1' },
    stdio: ['pipe', 'pipe', traceFd],
  })
  closeSync(traceFd)
  const trace = (): string => readLog(tracePath)
  const watched = watchChild(child)

  const pending = new Map<number, { resolve: (result: unknown) => void; reject: (error: Error) => void }>()
  void watched.exited.then(() => {
    for (const { reject } of pending.values())
      reject(new Error(`virtual YubiKey emulator exited: ${trace().slice(-2000)}`))
    pending.clear()
  })
  let lastTouchSlot = ''
  const waiters: Array<{ event: string; resolve: () => void }> = []
  if (child.stdout === null || child.stdin === null) throw new Error('emulator pipes missing')
  createInterface({ input: child.stdout }).on('line', (line) => {
    const message = JSON.parse(line) as { id?: number; result?: unknown; event?: string; slot?: string }
    if (message.event === 'touch') lastTouchSlot = message.slot ?? ''
    if (message.id !== undefined) {
      pending.get(message.id)?.resolve(message.result)
      pending.delete(message.id)
      return
    }
    emulatorLog = `${emulatorLog}${line}\n`.slice(-64 * 1024)
    for (const waiter of waiters.splice(0)) {
      if (waiter.event === message.event) waiter.resolve()
      else waiters.push(waiter)
    }
  })
  const stdin = child.stdin
  let nextId = 1
  type Op = ControlRequest extends infer R ? (R extends { op: infer O } ? O : never) : never
  const request = async (op: Op, fields: Record<string, unknown> = {}): Promise<unknown> => {
    if (!watched.running())
      throw new Error(`virtual YubiKey emulator is not running: ${trace().slice(-2000)}`)
    const id = nextId++
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject })
      stdin.write(`${JSON.stringify({ id, op, ...fields })}\n`)
    })
  }
  const nextEvent = async (event: string): Promise<void> =>
    new Promise((resolve) => {
      waiters.push({ event, resolve })
    })

  const version = options.version ?? [5, 4, 3]
  const ca = options.attestationCa ?? createAttestationCa()
  const f9 = createAttestationKey(ca, options.serial)
  const objects: Record<string, string> = {}
  let managementKey = {
    algorithm: options.managementKey?.algorithm ?? defaultManagementAlgorithm(version),
    key: Buffer.from(options.managementKey?.key ?? DEFAULT_MANAGEMENT_KEY),
  }
  if (options.protectedManagementKey === true) {
    managementKey = { algorithm: '3des', key: randomBytes(24) }
    // yubico-piv-tool lib/internal.h: TAG_PROTECTED 88 { TAG_PROTECTED_MGM 89 }, TAG_ADMIN 80 { TAG_ADMIN_FLAGS_1 81 = PROTECTED_MGM 02 }.
    objects['5fc109'] = Buffer.concat([Buffer.from([0x88, 26, 0x89, 24]), managementKey.key]).toString('hex')
    objects['5fff00'] = '8003810102'
  }
  const start: StartMessage = {
    host: '127.0.0.1',
    port: pcscd.cardPort,
    pin: options.pin ?? DEFAULT_PIN,
    puk: options.puk ?? DEFAULT_PUK,
    serial: options.serial,
    version,
    pinTries: options.pinTries ?? 3,
    pukTries: 3,
    managementKey: {
      algorithm: managementKey.algorithm,
      key: managementKey.key.toString('hex'),
      touch: options.managementKey?.touch === true,
    },
    attestation: {
      privateKey: f9.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      certificate: f9.certificate.toString('base64'),
    },
    formFactor: options.formFactor ?? 3,
    touchCacheMs: options.touchCacheMs ?? TOUCH_CACHE_MS,
    objects,
    touchDelayMs: options.touchDelayMs ?? 0,
    missTouch: false,
    trace: options.trace === true,
    keys,
  }
  stdin.write(`${JSON.stringify(start)}\n`)

  const env = { ...pcscd.env }
  const waitForToken = async (): Promise<void> => {
    const deadline = Date.now() + READY_TIMEOUT_MS
    const wanted = new RegExp(`serial num\\s*:\\s*${options.serial}\\b`)
    for (;;) {
      if (wanted.test(await listTokens(env))) return
      if (Date.now() > deadline) {
        throw new Error(
          `ykcs11 did not list the virtual YubiKey:\n${pcscd.log().slice(-2000)}\n${emulatorLog}\n${trace().slice(-2000)}`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  const stop = async (): Promise<void> => {
    await watched.stop()
    await pcscd.stop()
    await rm(logDir, { recursive: true, force: true })
  }

  try {
    await waitForToken()
  } catch (error) {
    await stop()
    throw error
  }

  // pcscd notices a card change only when its presence poll (vpcd: every ~400 ms) sees it; a card
  // pulled and put back between two polls looks to pcscd as if it never left, while the failed
  // transmit already marked it absent, and it is then never powered up again. So remove() and
  // insert() wait until pcscd has logged the change (eventhandler.c, info level).
  const occurrences = (needle: string): number => pcscd.log().split(needle).length - 1
  const waitForLog = async (needle: string, count: number): Promise<void> => {
    const deadline = Date.now() + READY_TIMEOUT_MS
    while (occurrences(needle) < count) {
      if (Date.now() > deadline)
        throw new Error(`pcscd did not log "${needle}":\n${pcscd.log().slice(-2000)}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
  const removedLine = `Card Removed From ${pcscd.readerName}`
  const insertedLine = `Card inserted into ${pcscd.readerName}`

  const control: VirtualYubiKeyControl = {
    setTouchDelay: async (ms) => void (await request('setTouchDelay', { ms })),
    missTouch: async (on) => void (await request('missTouch', { on })),
    setPinTries: async (left, total) =>
      void (await request('setPinTries', total === undefined ? { left } : { left, total })),
    remove: async () => {
      const seen = occurrences(removedLine)
      await request('remove')
      await waitForLog(removedLine, seen + 1)
    },
    insert: async () => {
      const seen = occurrences(insertedLine)
      const connected = nextEvent('connected')
      await request('insert')
      await connected
      await waitForLog(insertedLine, seen + 1)
      await waitForToken()
    },
    counters: async () => (await request('counters')) as CardCounters,
    touchRequested: async () => {
      await nextEvent('touch')
      return { slot: lastTouchSlot }
    },
    state: async () =>
      (await request('state')) as { connected: boolean; power: string; pinTriesLeft: number },
    expireTouchCache: async () => void (await request('expireTouchCache')),
    setTouchCacheMs: async (ms) => void (await request('setTouchCacheMs', { ms })),
    slots: async () => (await request('slots')) as SlotState[],
    managementKey: async () =>
      (await request('managementKey')) as {
        algorithm: ManagementAlgorithm
        hex: string
        isDefault: boolean
        touch: boolean
      },
    credentials: async () =>
      (await request('credentials')) as {
        pinIsDefault: boolean
        pukIsDefault: boolean
        pukTriesLeft: number
      },
    object: async (id) => (await request('object', { objectId: id })) as string | null,
  }

  return {
    module: YKCS11_MODULE,
    env,
    serial: options.serial,
    label: `YubiKey PIV #${options.serial}`,
    publicKeys,
    publicKeyObjects,
    attestationCa: {
      certificate: ca.certificate,
      pem: new X509Certificate(ca.certificate).toString(),
      key: ca,
    },
    attestationCertificate: f9.certificate,
    initialManagementKey: managementKey,
    control,
    waitForToken,
    logs: () => `${pcscd.log()}\n${emulatorLog}\n${trace()}`,
    stop,
  }
}
