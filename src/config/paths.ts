/**
 * Where the agent's files live. Shared by the agent, the CLI and the shim, so it may import only node
 * builtins: the shim must start fast and has no room for anything else (docs/configuration.md, "Socket").
 */
import { tmpdir, homedir } from 'node:os'
import { join } from 'node:path'

export const APP_DIR = 'cargo-pkcs11-agent'

/** An environment to read: `process.env` or a test's own. */
export type Env = Readonly<Record<string, string | undefined>>

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value
}

/** XDG Base Directory: `$XDG_CONFIG_HOME` (…) if set, else `fallback` under the home directory. */
function xdgHome(env: Env, variable: string, ...fallback: string[]): string {
  return nonEmpty(env[variable]) ?? join(nonEmpty(env['HOME']) ?? homedir(), ...fallback)
}

export function configHome(env: Env = process.env): string {
  return xdgHome(env, 'XDG_CONFIG_HOME', '.config')
}

export function stateDir(env: Env = process.env): string {
  return join(xdgHome(env, 'XDG_STATE_HOME', '.local', 'state'), APP_DIR)
}

export function dataDir(env: Env = process.env): string {
  return join(xdgHome(env, 'XDG_DATA_HOME', '.local', 'share'), APP_DIR)
}

export function defaultAuditLogPath(env: Env = process.env): string {
  return join(stateDir(env), 'audit.jsonl')
}

/** Log file of an agent started in the background (by the shim or `run` without --foreground). */
export function agentLogPath(env: Env = process.env): string {
  return join(stateDir(env), 'agent.log')
}

export interface Resolved {
  readonly path: string
  readonly source: 'flag' | 'env' | 'config' | 'default'
}

/** `--config` flag, then `$CARGO_PKCS11_AGENT_CONFIG`, then the XDG default. */
export function resolveConfigPath(flag: string | undefined, env: Env = process.env): Resolved {
  if (flag !== undefined) return { path: flag, source: 'flag' }
  const fromEnv = nonEmpty(env['CARGO_PKCS11_AGENT_CONFIG'])
  if (fromEnv !== undefined) return { path: fromEnv, source: 'env' }
  return { path: join(configHome(env), APP_DIR, 'config.toml'), source: 'default' }
}

/**
 * The per-user socket. `$XDG_RUNTIME_DIR` is already a 0700 per-user tmpfs on systemd machines;
 * the tmpdir fallback carries the uid so two users on one host never share a directory.
 * Precedence: `--socket`, `$CARGO_PKCS11_AGENT_SOCK`, the config's `[agent] socket`, the default.
 * The shim does not read the config file (start-up budget), so a socket moved in the config must also
 * be exported as `$CARGO_PKCS11_AGENT_SOCK` for the shim.
 */
export function resolveSocketPath(
  flag: string | undefined,
  configured: string | undefined,
  env: Env = process.env,
): Resolved {
  if (flag !== undefined) return { path: flag, source: 'flag' }
  const fromEnv = nonEmpty(env['CARGO_PKCS11_AGENT_SOCK'])
  if (fromEnv !== undefined) return { path: fromEnv, source: 'env' }
  if (configured !== undefined) return { path: configured, source: 'config' }
  const runtime = nonEmpty(env['XDG_RUNTIME_DIR'])
  if (runtime !== undefined) return { path: join(runtime, APP_DIR, 'agent.sock'), source: 'default' }
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0
  return { path: join(tmpdir(), `${APP_DIR}-${uid}`, 'agent.sock'), source: 'default' }
}
