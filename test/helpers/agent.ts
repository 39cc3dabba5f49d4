/**
 * A real agent process on a private SoftHSM token, for integration and end-to-end tests.
 *
 *   const agent = await startAgent({ registries: { local: { index: 'sparse+http://127.0.0.1:8080/index/' } } })
 *   // cargo / the shim: spawn with agent.env, credential-provider = agent.shimPath
 *   await agent.stop()
 *
 * Defaults: one SoftHSM token named "softhsm" (label "cargo", PIN from the agent's environment,
 * pin-source = "env"), holding GENERATED_KEY (label "gen", id 01) made on the token; every registry's
 * read and mutation key is that key unless given; confirm = "none" (tests have no terminal);
 * everything (config, state, audit log, socket) under one temp dir removed by `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { stringify } from 'smol-toml'

import { AgentConnection } from '../../src/protocol/client.js'
import { LIMITS } from '../../src/lib/limits.js'
import { createSoftHsmToken, repoRoot, type SoftHsmToken } from './softhsm.js'

export interface KeyRefFixture {
  token?: string
  label?: string
  id?: string
}

export interface RegistryFixture {
  /** Exactly as cargo sends it, e.g. "sparse+http://127.0.0.1:PORT/index/". */
  index: string
  readKey?: KeyRefFixture
  mutationKey?: KeyRefFixture
  subject?: string
  tokenMaxAgeSeconds?: number
  confirm?: 'touch' | 'prompt' | 'none'
  mutationsPerHour?: number
  generateOnLogin?: boolean
}

export interface TokenFixture {
  /** Default: SoftHSM. */
  module?: string
  label?: string
  serial?: string
  pinSource?: 'pinentry' | 'tty' | 'env' | 'file' | 'none'
  pinEnv?: string
  pinFile?: string
  kind?: 'yubikey' | 'tpm' | 'hsm' | 'softhsm'
  confirmFinalTry?: boolean
  /** `module-env`: e.g. P11_KIT_SERVER_ADDRESS for module = "p11-kit-client". */
  moduleEnv?: Record<string, string>
}

export interface StartAgentOptions {
  registries?: Record<string, RegistryFixture>
  /** Default: { softhsm: {} } on a fresh SoftHSM token. */
  tokens?: Record<string, TokenFixture>
  /** Extra environment for the agent process (e.g. a wrong PIN to test PIN_INCORRECT). */
  env?: NodeJS.ProcessEnv
  /** Extra [agent] keys, kebab-case as in the config file. */
  agent?: Record<string, string | number | boolean>
  /** Use this SoftHSM token instead of creating one (not cleaned up by stop()). */
  softhsm?: SoftHsmToken
  /** Write the config but do not start the agent (tests of start-up failures call `spawnAgent`). */
  start?: boolean
  /** Node flags for the agent process that NODE_OPTIONS refuses (the benchmark's `--cpu-prof`). */
  nodeArgs?: readonly string[]
}

export interface ShimResult {
  status: number | null
  signal: NodeJS.Signals | null
  /** stdout split into lines (the protocol: hello, response). */
  lines: string[]
  stdout: string
  stderr: string
}

export interface AgentFixture {
  dir: string
  socket: string
  configPath: string
  auditLog: string
  /** Environment for cargo or the shim: finds this agent, never autostarts another. */
  env: NodeJS.ProcessEnv
  /** Environment the agent runs with (SOFTHSM2_CONF, the PIN variable, XDG dirs). */
  agentEnv: NodeJS.ProcessEnv
  shimPath: string
  agentPath: string
  softhsm: SoftHsmToken
  /** The PIN variable name and value the default token reads. */
  pinEnv: string
  process: ChildProcess | undefined
  /** Everything the agent wrote to stderr so far. */
  log(): string
  /** Starts (again) an agent process with this fixture's config and socket. */
  spawnAgent(extraArgs?: string[]): Promise<ChildProcess>
  /** Sends SIGTERM and waits for the exit. Resolves to the exit code. */
  stopAgent(signal?: NodeJS.Signals): Promise<number | null>
  /** Runs the shim once with `input` on stdin (a request object is serialised as one line). */
  runShim(
    input: string | object,
    options?: { env?: NodeJS.ProcessEnv; args?: string[]; timeoutMs?: number; closeStdin?: boolean },
  ): Promise<ShimResult>
  /** Stops the agent and removes every temp file (and the SoftHSM store it created). */
  stop(): Promise<void>
}

const TEST_PIN_ENV = 'CARGO_PKCS11_TEST_PIN'

function kebabRegistry(r: RegistryFixture, defaultToken: string): Record<string, unknown> {
  const ref = (k: KeyRefFixture | undefined): Record<string, string> => {
    const out: Record<string, string> = { token: k?.token ?? defaultToken }
    if (k?.label !== undefined || k?.id === undefined) out['label'] = k?.label ?? 'gen'
    if (k?.id !== undefined) out['id'] = k.id
    return out
  }
  const t: Record<string, unknown> = {
    index: r.index,
    'read-key': ref(r.readKey),
    confirm: r.confirm ?? 'none',
  }
  if (r.mutationKey !== undefined) t['mutation-key'] = ref(r.mutationKey)
  if (r.subject !== undefined) t['subject'] = r.subject
  if (r.tokenMaxAgeSeconds !== undefined) t['token-max-age-seconds'] = r.tokenMaxAgeSeconds
  if (r.mutationsPerHour !== undefined) t['mutations-per-hour'] = r.mutationsPerHour
  if (r.generateOnLogin !== undefined) t['generate-on-login'] = r.generateOnLogin
  return t
}

export function distPath(...parts: string[]): string {
  return join(repoRoot(), 'dist', ...parts)
}

/**
 * The shim cargo runs: what package.json installs as `cargo-credential-pkcs11` (the ESM build in
 * dist/src/bin, or the CommonJS build in dist/cjs when the package ships that), overridable with
 * CARGO_PKCS11_TEST_SHIM to test the other build.
 */
export function shimBinPath(): string {
  const override = process.env['CARGO_PKCS11_TEST_SHIM']
  return override !== undefined && override !== '' ? override : packageShimPath()
}

/** The `cargo-credential-pkcs11` entry of package.json's `bin`, absolute. */
export function packageShimPath(): string {
  const pkg = JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')) as {
    bin?: Record<string, string>
  }
  return join(repoRoot(), pkg.bin?.['cargo-credential-pkcs11'] ?? 'dist/src/bin/cargo-credential-pkcs11.js')
}

export async function startAgent(options: StartAgentOptions = {}): Promise<AgentFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'agent-test-'))
  const ownSoftHsm = options.softhsm === undefined
  let softhsm: SoftHsmToken
  try {
    softhsm = options.softhsm ?? (await createSoftHsmToken())
  } catch (error) {
    await rm(dir, { recursive: true, force: true })
    throw error
  }
  const runDir = join(dir, 'run')
  await mkdir(runDir, { mode: 0o700 })
  const socket = join(runDir, 'cargo-pkcs11-agent', 'agent.sock')
  const configPath = join(dir, 'config', 'config.toml')
  const auditLog = join(dir, 'state', 'audit.jsonl')
  const tokens = options.tokens ?? { softhsm: {} }
  const defaultToken = Object.keys(tokens)[0] ?? 'softhsm'
  const doc: Record<string, unknown> = {
    agent: { 'audit-log': auditLog, notify: false, ...(options.agent ?? {}) },
    tokens: Object.fromEntries(
      Object.entries(tokens).map(([name, t]) => {
        const table: Record<string, unknown> = {
          module: t.module ?? softhsm.module,
          'pin-source': t.pinSource ?? 'env',
          kind: t.kind ?? 'softhsm',
        }
        if (t.serial !== undefined) table['serial'] = t.serial
        else table['label'] = t.label ?? softhsm.label
        if ((t.pinSource ?? 'env') === 'env') table['pin-env'] = t.pinEnv ?? TEST_PIN_ENV
        if (t.pinFile !== undefined) table['pin-file'] = t.pinFile
        if (t.confirmFinalTry !== undefined) table['confirm-final-try'] = t.confirmFinalTry
        if (t.moduleEnv !== undefined) table['module-env'] = t.moduleEnv
        return [name, table]
      }),
    ),
    registries: Object.fromEntries(
      Object.entries(options.registries ?? {}).map(([name, r]) => [name, kebabRegistry(r, defaultToken)]),
    ),
  }
  await mkdir(join(dir, 'config'), { recursive: true, mode: 0o700 })
  await writeFile(configPath, stringify(doc) + '\n', { mode: 0o600 })

  const xdg = {
    XDG_RUNTIME_DIR: runDir,
    XDG_CONFIG_HOME: join(dir, 'config-home'),
    XDG_STATE_HOME: join(dir, 'state-home'),
    XDG_DATA_HOME: join(dir, 'data-home'),
  }
  const agentEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...softhsm.env,
    ...xdg,
    CARGO_PKCS11_AGENT_CONFIG: configPath,
    CARGO_PKCS11_AGENT_SOCK: socket,
    [TEST_PIN_ENV]: softhsm.pin,
    ...(options.env ?? {}),
  }
  delete agentEnv['CI']
  if (options.env?.['CI'] !== undefined) agentEnv['CI'] = options.env['CI']
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...xdg,
    CARGO_PKCS11_AGENT_SOCK: socket,
    CARGO_PKCS11_AGENT_CONFIG: configPath,
    CARGO_PKCS11_AGENT_NO_AUTOSTART: '1',
  }
  const shimPath = shimBinPath()
  const agentPath = distPath('src', 'bin', 'cargo-pkcs11-agent.cjs')
  let stderr = ''
  const fixture: AgentFixture = {
    dir,
    socket,
    configPath,
    auditLog,
    env,
    agentEnv,
    shimPath,
    agentPath,
    softhsm,
    pinEnv: TEST_PIN_ENV,
    process: undefined,
    log: () => stderr,
    async spawnAgent(extraArgs = []) {
      const child = spawn(
        process.execPath,
        [
          ...(options.nodeArgs ?? []),
          agentPath,
          'run',
          '--foreground',
          '--config',
          configPath,
          '--socket',
          socket,
          ...extraArgs,
        ],
        {
          env: agentEnv,
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      )
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stderr += d))
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
      fixture.process = child
      return child
    },
    async stopAgent(signal = 'SIGTERM') {
      const child = fixture.process
      if (child === undefined || child.exitCode !== null || child.signalCode !== null)
        return child?.exitCode ?? null
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
      child.kill(signal)
      const timer = setTimeout(() => child.kill('SIGKILL'), LIMITS.shutdownGraceMs + 5_000)
      const code = await exited
      clearTimeout(timer)
      return code
    },
    runShim: (input, shimOptions = {}) => runShim(shimPath, input, { env: env, ...shimOptions }),
    async stop() {
      await fixture.stopAgent()
      if (ownSoftHsm) await softhsm.cleanup()
      await rm(dir, { recursive: true, force: true })
    },
  }
  if (options.start !== false) {
    try {
      await fixture.spawnAgent()
      await waitForSocket(socket, fixture.process as ChildProcess, () => stderr)
    } catch (error) {
      await fixture.stop()
      throw error
    }
  }
  return fixture
}

/** Resolves once the agent answers a ping; rejects with its output if it exits first. */
export async function waitForSocket(
  socket: string,
  child: ChildProcess,
  output: () => string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`agent exited (${child.exitCode ?? child.signalCode}) before listening:\n${output()}`)
    if (existsSync(socket)) {
      try {
        const c = await AgentConnection.connect(socket, 1_000)
        try {
          await c.request('ping', {}, { timeoutMs: 2_000 })
          return
        } finally {
          c.close()
        }
      } catch {
        // not ready yet
      }
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`agent did not listen on ${socket} within ${timeoutMs} ms:\n${output()}`)
}

/** Spawns the shim with `--cargo-plugin`, writes `input` (plus a newline unless it is raw), collects output. */
export function runShim(
  shimPath: string,
  input: string | object,
  options: { env?: NodeJS.ProcessEnv; args?: string[]; timeoutMs?: number; closeStdin?: boolean } = {},
): Promise<ShimResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [shimPath, ...(options.args ?? ['--cargo-plugin'])], {
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.stdin.on('error', () => {}) // the shim may exit before reading a huge line
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(
        new Error(
          `shim did not exit within ${options.timeoutMs ?? 30_000} ms; stdout=${stdout} stderr=${stderr}`,
        ),
      )
    }, options.timeoutMs ?? 30_000)
    child.on('exit', (status, signal) => {
      clearTimeout(timer)
      child.stdout.once('end', () =>
        resolve({ status, signal, stdout, stderr, lines: stdout.split('\n').filter((l) => l !== '') }),
      )
      if (child.stdout.readableEnded)
        resolve({ status, signal, stdout, stderr, lines: stdout.split('\n').filter((l) => l !== '') })
    })
    const text = typeof input === 'string' ? input : JSON.stringify(input) + '\n'
    if (text !== '') child.stdin.write(text)
    if (options.closeStdin !== false) child.stdin.end()
  })
}

export interface CliResult {
  /** Exit status; null when the run was killed at its timeout. */
  code: number | null
  stdout: string
  stderr: string
}

/**
 * Runs `cargo-pkcs11-agent ARGS` (the built entry) as its own process. `detached` starts it in a new
 * session without a controlling terminal, so nothing can prompt on /dev/tty.
 */
export function runAgentCli(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; detached?: boolean; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [distPath('src', 'bin', 'cargo-pkcs11-agent.cjs'), ...args], {
      env: options.env ?? process.env,
      detached: options.detached === true,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** cargo's request line for `operation` on `index` (docs/cargo-protocol.md §1.4), as an object for `runShim`. */
export function cargoGet(
  index: string,
  operation: 'read' | 'publish' | 'yank' | 'unyank' | 'owners',
  fields: { name?: string; vers?: string; cksum?: string; registryName?: string } = {},
): object {
  const registry: Record<string, string> = { 'index-url': index }
  if (fields.registryName !== undefined) registry['name'] = fields.registryName
  const request: Record<string, unknown> = { v: 1, registry, kind: 'get', operation }
  if (fields.name !== undefined) request['name'] = fields.name
  if (fields.vers !== undefined) request['vers'] = fields.vers
  if (fields.cksum !== undefined) request['cksum'] = fields.cksum
  return request
}

/** The audit log lines written so far, parsed. */
export function readAudit(path: string): Record<string, unknown>[] {
  if (!existsSync(path)) return []
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}
