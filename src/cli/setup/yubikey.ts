/**
 * The YubiKey half of `setup`: from a card as it leaves the factory to a mutation key (9c, touch
 * always) and a read key (9a, touch never, PIN once) generated on the card, with the policies the
 * card attests. With ykcs11 2.3.0 or later the keys are generated through PKCS#11 alone
 * (src/pkcs11/keygen.ts `generateInPivSlot`); this file keeps the `yubico-piv-tool` route for
 * Debian's ykcs11 2.2, which sends no PIN/touch-policy tags on C_GenerateKeyPair and rejects
 * CKA_YUBICO_TOUCH_POLICY / CKA_YUBICO_PIN_POLICY, while `yubico-piv-tool -a generate
 * --touch-policy` sends them (docs/setup.md §5), and the management-key steps. Every secret reaches the
 * tool on its stdin: it asks with OpenSSL's EVP_read_pw_string, which reads /dev/tty when the process
 * has one, so the tool runs in its own session (detached: no controlling terminal) and reads stdin.
 * Nothing secret is in argv, in the child's environment or in a file.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'

import { k3Pid, k3Public } from '../../keys/paserk.js'
import { AgentError } from '../../lib/errors.js'
import { managementKeyWorks } from '../../pkcs11/keygen.js'
import { LIMITS } from '../../lib/limits.js'
import { Pin, Secret } from '../../lib/secret.js'
import { childEnvironment } from '../../policy/pinentry.js'
import { confirmOnTerminal } from '../../agent/terminal.js'
import { hasTerminal } from '../../shim/context.js'
import { askPinOnTty } from '../../shim/tty.js'

/** A yes/no on the terminal of the person running setup (the same reader the agent uses). */
async function confirmOnTty(question: string): Promise<boolean> {
  return await confirmOnTerminal('/dev/tty', question, new AbortController().signal)
}
import { readAttestation, type PinPolicy, type TouchPolicy } from '../../verify/attestation.js'

/** The factory management key of every YubiKey before 5.7 (3DES; yubico-piv-tool `lib/ykpiv.h`). */
const DEFAULT_MANAGEMENT_KEY = Buffer.from('010203040506070801020304050607080102030405060708', 'hex')
/** PIV objects (yubico-piv-tool `lib/ykpiv.h`): printed information, YubiKey admin data. */
const PRINTED_OBJECT = 0x5fc109
const ADMIN_OBJECT = 0x5fff00
/** Admin data `80 { 81 01 02 }`: flags-1 bit 0x02 = management key stored PIN-protected (`lib/util.c`). */
const ADMIN_PROTECTED = Buffer.from('8003810102', 'hex')

/** ykcs11's CKA_ID for each PIV key slot (yubico-piv-tool `ykcs11/objects.c`). */
export const YKCS11_SLOT_IDS: Readonly<Record<string, string>> = {
  '9a': '01',
  '9c': '02',
  '9d': '03',
  '9e': '04',
  ...Object.fromEntries(
    Array.from({ length: 20 }, (_, i) => [(0x82 + i).toString(16), (5 + i).toString(16).padStart(2, '0')]),
  ),
}

export interface Card {
  readonly reader: string
  readonly serial: number
  readonly firmware: string
}

export interface SlotPlan {
  readonly role: 'read' | 'mutation'
  readonly slot: string
  readonly pinPolicy: PinPolicy
  readonly touchPolicy: TouchPolicy
}

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

type Say = (line: string) => void

/** Runs yubico-piv-tool with `input` (secrets, one a line) on its stdin; the buffer is wiped after. */
async function pivTool(args: readonly string[], input: Buffer[], secretEnv: readonly string[]): Promise<Run> {
  const stdin = Buffer.concat(input)
  try {
    return await new Promise<Run>((resolve, reject) => {
      const child = spawn('yubico-piv-tool', args, {
        detached: true,
        stdio: ['pipe', 'pipe', 'pipe'],
        env: childEnvironment(process.env, secretEnv),
      })
      let stdout = ''
      let stderr = ''
      const timer = setTimeout(() => child.kill('SIGKILL'), LIMITS.pivToolTimeoutMs)
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')))
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')))
      child.on('error', (error) => {
        clearTimeout(timer)
        reject(
          new AgentError('DEVICE_ERROR', `cannot run yubico-piv-tool: ${error.message}`, {
            remedy:
              'Install it (Debian: apt install yubico-piv-tool); setup uses it to generate keys with a touch policy',
            cause: error,
          }),
        )
      })
      child.stdin.on('error', () => undefined)
      child.on('close', (code) => {
        clearTimeout(timer)
        resolve({ code, stdout, stderr })
      })
      child.stdin.end(stdin)
    })
  } finally {
    stdin.fill(0)
  }
}

const line = (b: Buffer): Buffer => Buffer.concat([b, Buffer.from('\n')])
const hexLine = (b: Buffer): Buffer => line(Buffer.from(b.toString('hex'), 'ascii'))

function toolFailed(what: string, run: Run): AgentError {
  const said = run.stderr
    .split('\n')
    .filter((l) => l.trim() !== '' && !/^(Verifying - )?Enter /.test(l))
    .join('; ')
  return new AgentError('DEVICE_ERROR', `yubico-piv-tool could not ${what}: ${said || `exit ${run.code}`}`, {
    remedy: 'Check that the YubiKey is inserted and pcscd runs (cargo-pkcs11-agent doctor)',
  })
}

/** The YubiKeys on this machine: one per PC/SC reader that yubico-piv-tool can talk to. */
export async function listCards(secretEnv: readonly string[]): Promise<Card[]> {
  const readers = await pivTool(['-a', 'list-readers'], [], secretEnv)
  if (readers.code !== 0) throw toolFailed('list the PC/SC readers', readers)
  const cards: Card[] = []
  for (const reader of readers.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')) {
    const status = await pivTool(['-r', reader, '-a', 'status'], [], secretEnv)
    const serial = /Serial Number:\s*(\d+)/.exec(status.stdout)?.[1]
    const firmware = /Version:\s*(\S+)/.exec(status.stdout)?.[1]
    if (status.code === 0 && serial !== undefined && firmware !== undefined)
      cards.push({ reader, serial: Number(serial), firmware })
  }
  return cards
}

/** The card to set up: `--serial`, the only one, or the user's choice on the terminal. */
export async function chooseCard(serial: string | undefined, secretEnv: readonly string[]): Promise<Card> {
  const cards = await listCards(secretEnv)
  const serials = cards.map((c) => c.serial).join(', ')
  if (serial !== undefined) {
    const card = cards.find((c) => String(c.serial) === serial)
    if (card === undefined)
      throw new AgentError('TOKEN_ABSENT', `no YubiKey with serial ${serial} is inserted`, {
        remedy: cards.length === 0 ? 'Insert the YubiKey' : `Inserted YubiKeys: ${serials}`,
      })
    return card
  }
  if (cards.length === 1) return cards[0] as Card
  if (cards.length === 0)
    throw new AgentError('TOKEN_ABSENT', 'no YubiKey is inserted', {
      remedy: 'Insert the YubiKey and check that pcscd runs (cargo-pkcs11-agent doctor)',
    })
  if (!hasTerminal())
    throw new AgentError('USAGE', `several YubiKeys are inserted (serials ${serials})`, {
      remedy: 'Choose one with --serial N',
    })
  for (const card of cards) {
    if (await confirmOnTty(`Set up the YubiKey with serial ${card.serial} (firmware ${card.firmware})?`))
      return card
  }
  throw new AgentError('DENIED', 'no YubiKey was chosen', { remedy: 'Run setup again with --serial N' })
}

async function readObject(
  card: Card,
  id: number,
  pin: Pin | null,
  env: readonly string[],
): Promise<Buffer | undefined> {
  const args = [
    '-r',
    card.reader,
    ...(pin === null ? [] : ['-a', 'verify-pin']),
    '-a',
    'read-object',
    `--id=${id}`,
    '-f',
    'hex',
  ]
  const run = await pivTool(args, pin === null ? [] : [line(pin.expose())], env)
  const hex = run.stdout.trim()
  return run.code === 0 && /^[0-9a-f]+$/i.test(hex) ? Buffer.from(hex, 'hex') : undefined
}

async function writeObject(
  card: Card,
  key: Secret<Buffer>,
  id: number,
  data: Buffer,
  env: readonly string[],
): Promise<void> {
  const run = await pivTool(
    ['-r', card.reader, '-k', '-a', 'write-object', `--id=${id}`, '-f', 'hex', '-i', '-'],
    [hexLine(key.expose()), Buffer.from(data.toString('hex'), 'ascii')],
    env,
  )
  if (run.code !== 0) throw toolFailed(`write PIV object ${id.toString(16)}`, run)
}

/** `88 { 89 key }` (yubico-piv-tool `lib/util.c` ykpiv_util_get_protected_mgm). */
function protectedKey(printed: Buffer | undefined): Secret<Buffer> | undefined {
  if (printed === undefined || printed[0] !== 0x88 || printed[2] !== 0x89) return undefined
  const length = printed[3] ?? 0
  const key = printed.subarray(4, 4 + length)
  return key.length === 24 ? new Secret(Buffer.from(key)) : undefined
}

/**
 * SET MANAGEMENT KEY from `from` to `to`; `false` when `from` does not authenticate. With `to` ==
 * `from` this is the probe for "is it still the factory key": nothing on the card changes.
 */
async function setManagementKey(
  card: Card,
  from: Secret<Buffer>,
  to: Secret<Buffer>,
  env: readonly string[],
): Promise<boolean> {
  const run = await pivTool(
    ['-r', card.reader, '-k', '-a', 'set-mgm-key'],
    [hexLine(from.expose()), hexLine(to.expose()), hexLine(to.expose())],
    env,
  )
  if (run.code === 0) return true
  if (/authenticat/i.test(run.stderr)) return false
  throw toolFailed('set the management key', run)
}

/** How setup reaches the card's management key: ykcs11's route (src/pkcs11/keygen.ts `pivKeygenRoute`). */
export interface KeygenModule {
  readonly module: string
  readonly route: 'pkcs11' | 'tool'
  /** e.g. "2.2.0", from the module's CK_INFO. */
  readonly ykcs11: string
}

/** From firmware 5.7 a YubiKey leaves the factory with an AES-192 management key (same bytes). */
function aesByDefault(card: Card): boolean {
  const [major = 0, minor = 0] = card.firmware.split('.').map(Number)
  return major > 5 || (major === 5 && minor >= 7)
}

/**
 * Firmware 5.7's AES-192 key and the 3DES-only tools: yubico-piv-tool 2.2 and ykcs11 2.2 cannot
 * authenticate with it (AES management keys arrived in 2.3.0, its NEWS), and yubico-piv-tool 2.2
 * reports a 3DES attempt on an AES key exactly as a wrong key, so the error names both remedies.
 */
function aesUnsupported(card: Card, keygen: KeygenModule): AgentError {
  return new AgentError(
    'MANAGEMENT_KEY_UNSUPPORTED',
    `YubiKey ${card.serial} has firmware ${card.firmware}, whose management key is AES-192 unless it was changed, and the installed ykcs11 ${keygen.ykcs11} and yubico-piv-tool speak 3DES only: the factory key did not authenticate as 3DES`,
    {
      remedy:
        'Install yubico-piv-tool and ykcs11 2.3.0 or later and run setup with --module pointing at that libykcs11.so (setup then authenticates with AES-192 and generates through PKCS#11); or change the management key to 3DES with ykman: ykman piv access change-management-key --algorithm TDES --generate --protect (setup then uses it from the card); a custom 3DES key: run setup in a terminal to type it',
      data: { firmware: card.firmware, ykcs11: keygen.ykcs11, algorithm: 'AES-192' },
    },
  )
}

/**
 * The management key to generate with: PIN-protected on the card (used without asking), the
 * factory key (warned about; replaced by a random key stored PIN-protected, as ykman and
 * yubikey-agent do, unless `keepDefault`), or a custom key asked on the terminal. Through ykcs11
 * ≥ 2.3 the key is checked by a C_Login as SO, which speaks AES too; through 2.2, by
 * yubico-piv-tool (3DES only).
 */
export async function managementKey(
  card: Card,
  pin: Pin | null,
  options: { keepDefault: boolean; env: readonly string[]; say: Say; keygen: KeygenModule },
): Promise<Secret<Buffer>> {
  const { env, say, keygen } = options
  const works = async (key: Secret<Buffer>): Promise<boolean> =>
    keygen.route === 'pkcs11'
      ? managementKeyWorks(keygen.module, String(card.serial), key)
      : await setManagementKey(card, key, key, env)
  const admin = await readObject(card, ADMIN_OBJECT, null, env)
  const flags = admin === undefined ? -1 : admin.indexOf(Buffer.from([0x81, 0x01]))
  if (admin !== undefined && flags >= 0 && ((admin[flags + 2] ?? 0) & 0x02) !== 0) {
    const stored = protectedKey(pin === null ? undefined : await readObject(card, PRINTED_OBJECT, pin, env))
    if (stored !== undefined) {
      say('using the PIN-protected management key stored on the card')
      return stored
    }
  }
  const factory = new Secret(Buffer.from(DEFAULT_MANAGEMENT_KEY))
  const aes = aesByDefault(card)
  if (await works(factory)) {
    say('WARNING: the card still has the factory management key: anyone holding it can replace its keys')
    // yubico-piv-tool 2.2 sets and stores 3DES keys only (SET MANAGEMENT KEY, PUT DATA after 3DES auth).
    if (aes) {
      say(
        `the factory key is AES-192 (firmware ${card.firmware}); yubico-piv-tool 2.2 cannot replace it: afterwards run ykman piv access change-management-key --generate --protect`,
      )
      return factory
    }
    const replace =
      !options.keepDefault &&
      (!hasTerminal() ||
        (await confirmOnTty(
          'Replace it with a random key stored PIN-protected on the card (as ykman does)?',
        )))
    if (!replace) return factory
    const fresh = new Secret(randomBytes(24))
    if (!(await setManagementKey(card, factory, fresh, env)))
      throw toolFailed('replace the management key', { code: 1, stdout: '', stderr: '' })
    await writeObject(
      card,
      fresh,
      PRINTED_OBJECT,
      Buffer.concat([Buffer.from([0x88, 26, 0x89, 24]), fresh.expose()]),
      env,
    )
    await writeObject(card, fresh, ADMIN_OBJECT, ADMIN_PROTECTED, env)
    say(
      'replaced the management key with a random one, stored PIN-protected on the card (your PIN unlocks it)',
    )
    return fresh
  }
  const tdesOnly = keygen.route === 'tool'
  if (!hasTerminal()) {
    if (aes && tdesOnly) throw aesUnsupported(card, keygen)
    throw new AgentError(
      'MANAGEMENT_KEY_INCORRECT',
      `the YubiKey ${card.serial} has a custom management key and there is no terminal to ask for it`,
      {
        remedy:
          'Run setup in a terminal, or store the key PIN-protected on the card (ykman piv access change-management-key --protect)',
      },
    )
  }
  const digits = tdesOnly ? '48 hex digits' : '32, 48 or 64 hex digits'
  const typed = await askPinOnTty(`PIV management key of YubiKey ${card.serial} (${digits}): `)
  if (!(tdesOnly ? /^[0-9a-fA-F]{48}$/ : /^([0-9a-fA-F]{16}){2,4}$/).test(typed))
    throw new AgentError('MANAGEMENT_KEY_INCORRECT', `the management key must be ${digits}`, {
      remedy: tdesOnly
        ? `Type the key as ykman or yubico-piv-tool set it; ykcs11 ${keygen.ykcs11} speaks 3DES only (AES needs ykcs11 2.3.0 or later)`
        : 'Type the key as ykman or yubico-piv-tool set it (3DES 48, AES-128 32, AES-192 48, AES-256 64 hex digits)',
    })
  const given = new Secret(Buffer.from(typed, 'hex'))
  if (!(await works(given))) {
    if (aes && tdesOnly) throw aesUnsupported(card, keygen)
    throw new AgentError(
      'MANAGEMENT_KEY_INCORRECT',
      `the management key does not authenticate to YubiKey ${card.serial}`,
      { remedy: 'Check the key (ykman piv info says whether the factory key is still set)' },
    )
  }
  return given
}

export interface SlotKey {
  readonly slot: string
  readonly publicKey: Uint8Array
  readonly pinPolicy?: PinPolicy
  readonly touchPolicy?: TouchPolicy
}

/** The key a slot holds as its attestation shows it, or undefined when the card cannot attest one. */
export async function attestSlot(
  card: Card,
  slot: string,
  env: readonly string[],
): Promise<SlotKey | undefined> {
  const run = await pivTool(['-r', card.reader, '-a', 'attest', '-s', slot], [], env)
  if (run.code !== 0 || !run.stdout.includes('BEGIN CERTIFICATE')) return undefined
  const attested = readAttestation(run.stdout)
  return {
    slot,
    publicKey: attested.publicKey,
    ...(attested.pinPolicy === undefined ? {} : { pinPolicy: attested.pinPolicy }),
    ...(attested.touchPolicy === undefined ? {} : { touchPolicy: attested.touchPolicy }),
  }
}

/** Stores a certificate (PEM) in the slot's certificate object (PUT DATA, needs the management key). */
export async function importCertificate(
  card: Card,
  key: Secret<Buffer>,
  slot: string,
  certificatePem: string,
  env: readonly string[],
): Promise<void> {
  const run = await pivTool(
    ['-r', card.reader, '-k', '-a', 'import-certificate', '-s', slot, '-i', '-'],
    [hexLine(key.expose()), Buffer.from(certificatePem, 'ascii')],
    env,
  )
  if (run.code !== 0) throw toolFailed(`store the certificate of slot ${slot}`, run)
}

/** GENERATE ASYMMETRIC (INS 47) for P-384 with the PIN and touch policy tags. */
export async function generateInSlot(
  card: Card,
  key: Secret<Buffer>,
  plan: SlotPlan,
  env: readonly string[],
): Promise<void> {
  const policies = [
    ...(plan.pinPolicy === 'default' ? [] : [`--pin-policy=${plan.pinPolicy}`]),
    ...(plan.touchPolicy === 'default' ? [] : [`--touch-policy=${plan.touchPolicy}`]),
  ]
  const run = await pivTool(
    ['-r', card.reader, '-k', '-a', 'generate', '-s', plan.slot, '-A', 'ECCP384', ...policies],
    [hexLine(key.expose())],
    env,
  )
  if (run.code !== 0) throw toolFailed(`generate a key in slot ${plan.slot}`, run)
}

/**
 * An occupied slot (or a software key) is replaced only with `--regenerate-key` and a confirmation
 * naming where it is and the k3.pid that stops working: typed on the terminal, or given as
 * `--confirm-destroy K3PID`.
 */
export async function confirmRegeneration(
  where: string,
  publicKey: Uint8Array,
  confirmFlag: string | undefined,
): Promise<void> {
  const pid = k3Pid(publicKey)
  if (confirmFlag === pid) return
  const what = `${where} holds ${pid}; registries that know it will refuse its tokens after regeneration`
  if (confirmFlag === undefined && hasTerminal()) {
    if (await confirmOnTty(`${what}. Destroy it and generate a new key?`)) return
  }
  throw new AgentError('DENIED', `not regenerating: ${what}`, {
    remedy: `Confirm with --confirm-destroy ${pid} (or answer the prompt in a terminal); nothing was changed`,
    data: { k3Pid: pid },
  })
}

export function describeKey(key: SlotKey, role: string, action: string): string[] {
  return [
    `${role} key in slot ${key.slot} (ykcs11 id ${YKCS11_SLOT_IDS[key.slot] ?? '?'}): ${action}; the card reports PIN policy ${key.pinPolicy ?? 'unknown'}, touch policy ${key.touchPolicy ?? 'unknown'}`,
    k3Public(key.publicKey),
    k3Pid(key.publicKey),
  ]
}
