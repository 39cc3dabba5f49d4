/**
 * The native PKCS#11 binding, checked before anything loads it. pkcs11js is a native addon: installed
 * with its install script blocked (`npm install --ignore-scripts`, or an npm that asks before running
 * install scripts) it has no build, and loading it from ESM then ends the process with an uncaught
 * "Cannot find module './build/Release/pkcs11.node'" that no catch sees. So the build is looked for
 * first, where `pkcs11js/index.js` requires it, without loading it.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

import { AgentError } from '../lib/errors.js'

const REMEDY =
  'Run `npm rebuild pkcs11js` in the directory cargo-pkcs11-agent is installed in ' +
  '(`npm root -g`/cargo-pkcs11-agent for a global install); it needs a C++ compiler and the Node.js headers'

/** Resolves to the problem, or undefined when the binding is installed and built. */
export function nativeBindingMissing(): AgentError | undefined {
  let entry: string
  try {
    entry = createRequire(import.meta.url).resolve('pkcs11js')
  } catch (error) {
    return new AgentError('MODULE_LOAD_FAILED', 'The native PKCS#11 binding (pkcs11js) is not installed', {
      cause: error,
      remedy: 'Reinstall cargo-pkcs11-agent with its dependencies (npm install -g cargo-pkcs11-agent)',
    })
  }
  const built = join(dirname(entry), 'build', 'Release', 'pkcs11.node')
  if (existsSync(built)) return undefined
  return new AgentError(
    'MODULE_LOAD_FAILED',
    `The native PKCS#11 binding (pkcs11js) is not built: ${built} is missing`,
    {
      remedy: REMEDY,
    },
  )
}

/** A load failure of the binding that got past the check (a build for another Node.js ABI). */
export function nativeBindingError(error: unknown): AgentError | undefined {
  if (error instanceof AgentError || !(error instanceof Error)) return undefined
  if (!/pkcs11\.node|'pkcs11js'|NODE_MODULE_VERSION/.test(error.message)) return undefined
  return new AgentError(
    'MODULE_LOAD_FAILED',
    `The native PKCS#11 binding (pkcs11js) cannot load: ${error.message.split('\n')[0] ?? ''}`,
    {
      cause: error,
      remedy: REMEDY,
    },
  )
}
