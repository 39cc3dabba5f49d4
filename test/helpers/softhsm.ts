/**
 * Private SoftHSM token stores for tests and the demo. Each store lives in its own temp dir with its
 * own softhsm2.conf (from softhsm/softhsm2.conf.template). Tokens are set up with the real
 * `pkcs11-tool` (OpenSC); PINs reach it as `env:VAR`, never on the command line.
 *
 * SoftHSM reads SOFTHSM2_CONF once per process (at C_Initialize): a test that loads SoftHSM in its
 * own process must set `process.env.SOFTHSM2_CONF = store.confPath` before the first Device call,
 * and create every token it needs in that one store first (`addToken`).
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so'

/** Repository root: the nearest directory above this file with a package.json (src or dist). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('repository root not found above test/helpers')
    dir = parent
  }
  return dir
}

/**
 * A fixed P-384 test key (generated once with `openssl ecparam -name secp384r1 -genkey`); it is
 * public test data, never a user's key. Its expected public forms let tests check the device's
 * CKA_EC_POINT path end to end.
 */
export const KNOWN_KEY = Object.freeze({
  label: 'known',
  id: '02',
  pkcs8Pem: `-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDD2BZv25NYoHu368T/e
pzWNMrow+GaahknRNcl8E5QylpLZbTSVc6zvUQ3lsSH4im+hZANiAARvpqk5CrNx
71jeWTSPyo/b2oXZHVlE6pCzmvSh6/nR6t8vv6w/toD2uJgHn26CEWe8itQe+A/+
C3aFgIjnNk3JXAr2ZqNkXpI9MWJlsTM1koYdT7piOFarE6vp0ZK6VQg=
-----END PRIVATE KEY-----
`,
  /** SEC1 compressed point, hex (49 bytes). */
  publicKeyHex:
    '026fa6a9390ab371ef58de59348fca8fdbda85d91d5944ea90b39af4a1ebf9d1eadf2fbfac3fb680f6b898079f6e821167',
  k3Public: 'k3.public.Am-mqTkKs3HvWN5ZNI_Kj9vahdkdWUTqkLOa9KHr-dHq3y-_rD-2gPa4mAefboIRZw',
})

/** The P-384 key generated on the token by `createSoftHsmToken`. */
export const GENERATED_KEY = Object.freeze({ label: 'gen', id: '01' })

export interface TokenSpec {
  label: string
  pin: string
  soPin: string
}

export interface SoftHsmStore {
  /** Temp dir holding the config and tokens/ (mode 0700). */
  dir: string
  confPath: string
  module: string
  /** Environment for child processes (agent, pkcs11-tool): SOFTHSM2_CONF set. */
  env: NodeJS.ProcessEnv
  cleanup(): Promise<void>
}

export interface SoftHsmToken extends SoftHsmStore, TokenSpec {
  generatedKey: { label: string; id: string }
  knownKey: typeof KNOWN_KEY
}

async function pkcs11Tool(
  store: SoftHsmStore,
  args: string[],
  secrets: Record<string, string> = {},
): Promise<string> {
  try {
    const { stdout } = await run('pkcs11-tool', ['--module', store.module, ...args], {
      env: { ...store.env, ...secrets },
    })
    return stdout
  } catch (error) {
    const e = error as { stderr?: string; message: string }
    throw new Error(
      `pkcs11-tool ${args.filter((a) => !a.startsWith('env:')).join(' ')} failed: ${e.stderr ?? e.message}`,
    )
  }
}

/** An empty private token store (no token yet). */
export async function createSoftHsmStore(): Promise<SoftHsmStore> {
  const dir = await mkdtemp(join(tmpdir(), 'softhsm-'))
  try {
    const tokendir = join(dir, 'tokens')
    await mkdir(tokendir, { mode: 0o700 })
    const template = await readFile(join(repoRoot(), 'softhsm', 'softhsm2.conf.template'), 'utf8')
    const confPath = join(dir, 'softhsm2.conf')
    await writeFile(confPath, template.replaceAll('@TOKENDIR@', tokendir), { mode: 0o600 })
    return {
      dir,
      confPath,
      module: SOFTHSM_MODULE,
      env: { ...process.env, SOFTHSM2_CONF: confPath },
      cleanup: () => rm(dir, { recursive: true, force: true }),
    }
  } catch (error) {
    await rm(dir, { recursive: true, force: true })
    throw error
  }
}

/** Initialises a new token in the store's free slot and sets its user PIN. */
export async function addToken(store: SoftHsmStore, spec: TokenSpec): Promise<void> {
  const secrets = { SOFTHSM_TEST_SO_PIN: spec.soPin, SOFTHSM_TEST_PIN: spec.pin }
  // SoftHSM always offers exactly one uninitialised slot: --init-token picks it.
  const slots = await pkcs11Tool(store, ['--list-slots'])
  const free = /Slot \d+ \((0x[0-9a-f]+)\):[^\n]*\n\s+token state:\s+uninitialized/i.exec(slots)
  if (free === null) throw new Error(`no uninitialised SoftHSM slot:\n${slots}`)
  await pkcs11Tool(
    store,
    [
      '--slot',
      free[1] as string,
      '--init-token',
      '--label',
      spec.label,
      '--so-pin',
      'env:SOFTHSM_TEST_SO_PIN',
    ],
    secrets,
  )
  await pkcs11Tool(
    store,
    [
      '--token-label',
      spec.label,
      '--login',
      '--login-type',
      'so',
      '--so-pin',
      'env:SOFTHSM_TEST_SO_PIN',
      '--init-pin',
      '--pin',
      'env:SOFTHSM_TEST_PIN',
    ],
    secrets,
  )
}

/** On-token P-384 key generation with pkcs11-tool (the key never exists off the token). */
export async function generateKey(
  store: SoftHsmStore,
  spec: TokenSpec,
  key: { label: string; id: string; curve?: 'secp384r1' | 'prime256v1'; alwaysAuthenticate?: boolean },
): Promise<void> {
  await pkcs11Tool(
    store,
    [
      '--token-label',
      spec.label,
      '--login',
      '--pin',
      'env:SOFTHSM_TEST_PIN',
      '--keypairgen',
      '--key-type',
      `EC:${key.curve ?? 'secp384r1'}`,
      '--label',
      key.label,
      '--id',
      key.id,
      ...(key.alwaysAuthenticate === true ? ['--always-auth'] : []),
    ],
    { SOFTHSM_TEST_PIN: spec.pin },
  )
}

/**
 * Imports a software P-384 key (PKCS#8 PEM) as a private + public object pair, via openssl (DER
 * conversion) and pkcs11-tool --write-object. Default: the KNOWN_KEY.
 */
export async function importKey(
  store: SoftHsmStore,
  spec: TokenSpec,
  key: { label: string; id: string; pkcs8Pem: string } = KNOWN_KEY,
): Promise<void> {
  const work = await mkdtemp(join(store.dir, 'import-'))
  try {
    const pem = join(work, 'key.pem')
    const der = join(work, 'key.der')
    const pub = join(work, 'pub.der')
    await writeFile(pem, key.pkcs8Pem, { mode: 0o600 })
    await run('openssl', ['pkcs8', '-nocrypt', '-in', pem, '-outform', 'DER', '-out', der])
    await run('openssl', ['pkey', '-in', pem, '-pubout', '-outform', 'DER', '-out', pub])
    const login = ['--token-label', spec.label, '--login', '--pin', 'env:SOFTHSM_TEST_PIN']
    const secrets = { SOFTHSM_TEST_PIN: spec.pin }
    await pkcs11Tool(
      store,
      [
        ...login,
        '--write-object',
        der,
        '--type',
        'privkey',
        '--label',
        key.label,
        '--id',
        key.id,
        '--usage-sign',
      ],
      secrets,
    )
    await pkcs11Tool(
      store,
      [...login, '--write-object', pub, '--type', 'pubkey', '--label', key.label, '--id', key.id],
      secrets,
    )
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

/**
 * A private store with one token holding GENERATED_KEY (made on the token) and KNOWN_KEY
 * (imported). Pass `store` to add the token to an existing store instead of a new one.
 */
export async function createSoftHsmToken(
  spec: Partial<TokenSpec> & { store?: SoftHsmStore; keys?: boolean } = {},
): Promise<SoftHsmToken> {
  const full: TokenSpec = {
    label: spec.label ?? 'cargo',
    pin: spec.pin ?? '123456',
    soPin: spec.soPin ?? '12345678',
  }
  const store = spec.store ?? (await createSoftHsmStore())
  try {
    await addToken(store, full)
    if (spec.keys !== false) {
      await generateKey(store, full, GENERATED_KEY)
      await importKey(store, full)
    }
  } catch (error) {
    if (spec.store === undefined) await store.cleanup()
    throw error
  }
  return { ...store, ...full, generatedKey: GENERATED_KEY, knownKey: KNOWN_KEY }
}
