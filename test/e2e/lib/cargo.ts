/**
 * Runs the real cargo (rustup's `~/.cargo/bin/cargo`) in an isolated CARGO_HOME that knows one
 * sparse registry named `local`, and copies the sample crates where cargo may write next to them.
 */
import { spawn } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** Repository root, from `dist/test/e2e/lib/cargo.js`. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..')
export const CRATES_DIR = join(REPO_ROOT, 'test/fixtures/crates')
export const CARGO_BIN_DIR = join(homedir(), '.cargo/bin')

export interface CargoResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

export interface CargoSandbox {
  readonly dir: string
  readonly cargoHome: string
  readonly env: NodeJS.ProcessEnv
  /** Copies `test/fixtures/crates/<name>` into the sandbox and returns its path. */
  crate(name: string): string
  cargo(
    args: readonly string[],
    opts?: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
  ): Promise<CargoResult>
  cleanup(): void
}

export interface SandboxOptions {
  /** `sparse+http://127.0.0.1:PORT/index/` */
  readonly indexUrl: string
  /** The `credential-provider` value for `[registries.local]`: a TOML string or array. */
  readonly credentialProvider: string | readonly string[]
  /** Extra environment for every cargo run. */
  readonly env?: NodeJS.ProcessEnv
  /** Parent directory; default a fresh dir under os.tmpdir(). */
  readonly dir?: string
}

const toml = (value: string): string => JSON.stringify(value)

/** The usual e2e wiring: cargo in `<dir>/cargo`, the registry's index, the agent fixture's shim and env. */
export function cargoThroughAgent(
  dir: string,
  registry: { readonly indexUrl: string },
  agent: { readonly shimPath: string; readonly env: NodeJS.ProcessEnv },
): CargoSandbox {
  return createCargoSandbox({
    dir: join(dir, 'cargo'),
    indexUrl: registry.indexUrl,
    credentialProvider: agent.shimPath,
    env: agent.env,
  })
}

export function createCargoSandbox(options: SandboxOptions): CargoSandbox {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'hwtok-cargo-'))
  const cargoHome = join(dir, 'cargo-home')
  mkdirSync(cargoHome, { recursive: true })
  const provider = Array.isArray(options.credentialProvider)
    ? `[${options.credentialProvider.map(toml).join(', ')}]`
    : toml(options.credentialProvider as string)
  // `[registry] global-credential-providers` stays untouched: the shim is bound to this registry only.
  writeFileSync(
    join(cargoHome, 'config.toml'),
    [
      '[registries.local]',
      `index = ${toml(options.indexUrl)}`,
      `credential-provider = ${provider}`,
      '',
      '[net]',
      'git-fetch-with-cli = false',
      '',
      '[term]',
      'color = "never"',
      '',
    ].join('\n'),
  )
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...options.env,
    PATH: `${CARGO_BIN_DIR}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
    CARGO_HOME: cargoHome,
    // rustup proxies find the toolchain here; keep it even though CARGO_HOME moved.
    RUSTUP_HOME: process.env['RUSTUP_HOME'] ?? join(homedir(), '.rustup'),
    CARGO_TARGET_DIR: join(dir, 'target'),
    CARGO_TERM_COLOR: 'never',
    CARGO_TERM_PROGRESS_WHEN: 'never',
  }
  delete env['CARGO_NET_OFFLINE']
  delete env['CARGO_REGISTRY_TOKEN']
  delete env['NODE_TEST_CONTEXT']

  return {
    dir,
    cargoHome,
    env,
    crate(name) {
      const dest = join(dir, 'crates', name)
      cpSync(join(CRATES_DIR, name), dest, { recursive: true })
      return dest
    },
    cargo(args, opts = {}) {
      return new Promise((resolvePromise, reject) => {
        const child = spawn('cargo', args, {
          cwd: opts.cwd ?? dir,
          env: { ...env, ...opts.env },
          stdio: ['ignore', 'pipe', 'pipe'],
        })
        let stdout = ''
        let stderr = ''
        child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
        const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 180_000)
        child.on('error', (e) => {
          clearTimeout(timer)
          reject(e)
        })
        child.on('close', (code) => {
          clearTimeout(timer)
          resolvePromise({ code, stdout, stderr })
        })
      })
    },
    cleanup() {
      if (options.dir === undefined) rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** A readable dump for assertion messages. */
export function show(r: CargoResult): string {
  return `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`
}
