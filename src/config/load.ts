import { readFileSync } from 'node:fs'

import { parse, TomlError } from 'smol-toml'

import { AgentError } from '../lib/errors.js'
import type { Env } from './paths.js'
import { validateConfig, type Config } from './schema.js'

/** TOML text as a table; CONFIG_INVALID naming `file`, with the line and column, when it does not parse. */
export function parseToml(text: string, file: string, remedy: string): Record<string, unknown> {
  try {
    return parse(text)
  } catch (error) {
    const where = error instanceof TomlError ? ` at line ${error.line}, column ${error.column}` : ''
    const what = error instanceof Error ? error.message.split('\n')[0] : String(error)
    throw new AgentError('CONFIG_INVALID', `${file} is not valid TOML${where}: ${what}`, {
      cause: error,
      remedy,
    })
  }
}

/** Parses TOML text and validates it. `path` is only used in messages. */
export function parseConfig(text: string, path: string | undefined, env: Env = process.env): Config {
  const doc = parseToml(
    text,
    path ?? 'config',
    'Fix the TOML syntax; docs/configuration.md has a full example',
  )
  return validateConfig(doc, path, env)
}

export function loadConfig(path: string, env: Env = process.env): Config {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT') {
      throw new AgentError('CONFIG_MISSING', `No configuration at ${path}`, {
        cause: error,
        remedy:
          'Run `cargo-pkcs11-agent setup` to create one, or pass --config / set CARGO_PKCS11_AGENT_CONFIG',
        data: { path },
      })
    }
    throw new AgentError(
      'CONFIG_INVALID',
      `Cannot read the configuration at ${path} (${code ?? String(error)})`,
      { cause: error, remedy: 'Check the file permissions', data: { path } },
    )
  }
  return parseConfig(text, path, env)
}
