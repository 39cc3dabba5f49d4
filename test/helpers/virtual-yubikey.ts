import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

import type { ControlRequest, StartMessage } from '../fixtures/vpiv/main.js'
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

export type PivSlot = '9a' | '9c'

export interface VirtualKeyOptions {
  /** PEM (PKCS#8 or SEC1) or a KeyObject of a P-384 private key; generated when absent. */
  readonly privateKey?: string | KeyObject
  readonly pinPolicy?: 'never' | 'once' | 'always'
  readonly touchPolicy?: 'never' | 'always'
  /**
   * Store a self-signed certificate for the key in the slot (as `ykman piv keys generate` +
   * `certificates generate` leave it). OpenSC finds PIV keys only through certificates.
   */
  readonly certificate?: boolean
}

export interface VirtualYubiKeyOptions {
  readonly pin: string
  readonly serial: number
  readonly touchDelayMs?: number
  readonly pinTries?: number
  /** Firmware version the card reports; ykcs11 reads key metadata only from 5.3 on. */
  readonly version?: [number, number, number]
  /**
   * Keys per slot. Default: 9C (signature: PIN policy always, touch always) and 9A
   * (authentication: PIN once, no touch), both freshly generated. `false` leaves a slot empty.
   */
  readonly keys?: { readonly '9c'?: VirtualKeyOptions | false; readonly '9a'?: VirtualKeyOptions | false }
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
}

export interface VirtualYubiKey {
  readonly module: string
  /** Environment for the process that loads `module`. */
  readonly env: Readonly<Record<string, string>>
  readonly serial: number
  /** Token label as ykcs11 builds it. */
  readonly label: string
  /** SEC1 compressed (49-byte) public keys per populated slot. */
  readonly publicKeys: { readonly '9c'?: Uint8Array; readonly '9a'?: Uint8Array }
  /** node:crypto public keys per populated slot, for verifying signatures. */
  readonly publicKeyObjects: { readonly '9c'?: KeyObject; readonly '9a'?: KeyObject }
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
async function selfSignedCertificate(privateKey: KeyObject, slot: PivSlot): Promise<string> {
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
  const slotDefaults: Record<PivSlot, Required<Omit<VirtualKeyOptions, 'privateKey' | 'certificate'>>> = {
    '9c': { pinPolicy: 'always', touchPolicy: 'always' },
    '9a': { pinPolicy: 'once', touchPolicy: 'never' },
  }
  const keys: StartMessage['keys'] = {}
  const publicKeys: { '9c'?: Uint8Array; '9a'?: Uint8Array } = {}
  const publicKeyObjects: { '9c'?: KeyObject; '9a'?: KeyObject } = {}
  for (const slot of ['9c', '9a'] as const) {
    const wanted = options.keys?.[slot] ?? {}
    if (wanted === false) continue
    const { d, publicKey, privateKey } = resolveKey(wanted)
    keys[slot] = {
      d,
      pinPolicy: wanted.pinPolicy ?? slotDefaults[slot].pinPolicy,
      touchPolicy: wanted.touchPolicy ?? slotDefaults[slot].touchPolicy,
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

  const start: StartMessage = {
    host: '127.0.0.1',
    port: pcscd.cardPort,
    pin: options.pin,
    serial: options.serial,
    version: options.version ?? [5, 4, 3],
    pinTries: options.pinTries ?? 3,
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
  }

  return {
    module: YKCS11_MODULE,
    env,
    serial: options.serial,
    label: `YubiKey PIV #${options.serial}`,
    publicKeys,
    publicKeyObjects,
    control,
    waitForToken,
    logs: () => `${pcscd.log()}\n${emulatorLog}\n${trace()}`,
    stop,
  }
}
