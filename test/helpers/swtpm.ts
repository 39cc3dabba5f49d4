import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { freePortPair, readLog, watchChild } from './daemon.js'

/**
 * A software TPM 2.0 (swtpm, libtpms) with a tpm2-pkcs11 token on it, for tests.
 *
 * tpm2-pkcs11 needs no resource manager when it is the only TPM user: it talks to swtpm's TCP
 * command port directly (TCTI "swtpm:"), and keeps its object store (a SQLite file) in
 * TPM2_PKCS11_STORE. The module reads both at C_Initialize, and pkcs11js loads it into the calling
 * process: a test must `Object.assign(process.env, tpm.env)` before its first Device call (each test
 * file runs in its own process, so one TPM per test file), or pass `env` to a child process.
 *
 * The token is set up with the real `pkcs11-tool` (OpenSC): `--init-token` on the empty slot,
 * `--init-pin` as SO, then an on-TPM P-384 key pair. PINs reach it as `env:VAR`, never in argv.
 */

export const TPM2_MODULE = '/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so'
const SWTPM = '/usr/bin/swtpm'
const START_TIMEOUT_MS = 10_000

export interface SoftwareTpmOptions {
  readonly label: string
  readonly pin: string
  readonly soPin: string
  /** Key generated on the TPM by pkcs11-tool; `false` for an empty token. Default label "cargo", id "01". */
  readonly key?: { readonly label: string; readonly id: string } | false
}

export interface SoftwareTpm {
  readonly module: string
  /** Environment for the process that loads `module`. */
  readonly env: Readonly<Record<string, string>>
  readonly label: string
  /** The generated key, if any. */
  readonly key: { readonly label: string; readonly id: string } | undefined
  /** swtpm's TCP command port on 127.0.0.1. */
  readonly port: number
  /** Runs pkcs11-tool against this token (`pins` become env vars for `env:NAME` arguments). */
  pkcs11Tool(args: readonly string[], pins?: Readonly<Record<string, string>>): Promise<string>
  /** swtpm's log so far. */
  log(): string
  stop(): Promise<void>
}

// swtpm stops when our stdin closes (stop(), or the test process died): no daemon left behind.
const SUPERVISE_SCRIPT = `
"$@" </dev/null &
pid=$!
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid"
`

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

export async function startSoftwareTpm(options: SoftwareTpmOptions): Promise<SoftwareTpm> {
  for (const path of [SWTPM, TPM2_MODULE]) {
    if (!existsSync(path))
      throw new Error(`${path} is missing: install the Debian packages swtpm and libtpm2-pkcs11-1`)
  }
  const dir = await mkdtemp(join(tmpdir(), 'swtpm-'))
  const stateDir = join(dir, 'state')
  const storeDir = join(dir, 'store')
  await mkdir(stateDir)
  await mkdir(storeDir)
  // The TSS "swtpm" TCTI always finds the control channel at the command port + 1.
  const port = await freePortPair('127.0.0.1', 'swtpm')
  const ctrlPort = port + 1

  const logPath = join(dir, 'swtpm.log')
  const logFd = openSync(logPath, 'w')
  const child: ChildProcess = spawn(
    'sh',
    [
      '-c',
      SUPERVISE_SCRIPT,
      'swtpm-supervise',
      SWTPM,
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${stateDir}`,
      '--server',
      `type=tcp,port=${port},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${ctrlPort},bindaddr=127.0.0.1`,
      // Powered on and TPM2_Startup(CLEAR) done by swtpm itself: no tpm2_startup step needed.
      '--flags',
      'not-need-init,startup-clear',
      '--log',
      `file=${logPath},level=1`,
    ],
    { stdio: ['pipe', logFd, logFd] },
  )
  closeSync(logFd)
  const watched = watchChild(child)
  const log = (): string => readLog(logPath)
  const stop = async (): Promise<void> => {
    await watched.stop()
    await rm(dir, { recursive: true, force: true })
  }

  const env: Record<string, string> = {
    TPM2_PKCS11_TCTI: `swtpm:host=127.0.0.1,port=${port}`,
    TPM2_PKCS11_STORE: storeDir,
    // The TSS and tpm2-pkcs11 both print to stderr by default; tests read errors from CKR values.
    TSS2_LOG: 'all+NONE',
    TPM2_PKCS11_LOG_LEVEL: '0',
  }
  const pkcs11Tool = async (
    args: readonly string[],
    pins: Readonly<Record<string, string>> = {},
  ): Promise<string> =>
    new Promise((resolve, reject) => {
      execFile(
        'pkcs11-tool',
        ['--module', TPM2_MODULE, ...args],
        { env: { ...process.env, ...env, ...pins }, timeout: 60_000 },
        (error, stdout, stderr) => {
          if (error !== null)
            reject(
              new Error(
                `pkcs11-tool ${args.join(' ')} failed: ${stderr}${stdout}\nswtpm: ${log().slice(-2000)}`,
              ),
            )
          else resolve(stdout)
        },
      )
    })

  try {
    const deadline = Date.now() + START_TIMEOUT_MS
    while (!(await accepts(ctrlPort))) {
      if (!watched.running() || Date.now() > deadline) {
        throw new Error(
          `swtpm did not start (${watched.running() ? 'timeout' : 'exited'}): ${log().slice(-2000)}`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    const pins = { TPM_TEST_PIN: options.pin, TPM_TEST_SO_PIN: options.soPin }
    // tpm2-pkcs11 offers one uninitialised slot; initialising it adds a new empty one.
    await pkcs11Tool(
      ['--init-token', '--slot-index', '0', '--label', options.label, '--so-pin', 'env:TPM_TEST_SO_PIN'],
      pins,
    )
    await pkcs11Tool(
      [
        '--token-label',
        options.label,
        '--login',
        '--login-type',
        'so',
        '--so-pin',
        'env:TPM_TEST_SO_PIN',
        '--init-pin',
        '--pin',
        'env:TPM_TEST_PIN',
      ],
      pins,
    )
    const key = options.key === false ? undefined : (options.key ?? { label: 'cargo', id: '01' })
    if (key !== undefined) {
      await pkcs11Tool(
        [
          '--token-label',
          options.label,
          '--login',
          '--pin',
          'env:TPM_TEST_PIN',
          '--keypairgen',
          '--key-type',
          'EC:secp384r1',
          '--label',
          key.label,
          '--id',
          key.id,
        ],
        pins,
      )
    }
    return { module: TPM2_MODULE, env, label: options.label, key, port, pkcs11Tool, log, stop }
  } catch (error) {
    await stop()
    throw error
  }
}
