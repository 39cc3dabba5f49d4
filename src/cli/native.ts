/** The native PKCS#11 binding, as `main` and `doctor` report it when it cannot load. */
import { AgentError } from '../lib/errors.js'

/**
 * pkcs11js is a native addon: installed with scripts disabled (`npm install --ignore-scripts`, or an
 * npm that asks before running install scripts) it has no build, and loading it fails with a bare
 * "Cannot find module …/build/Release/pkcs11.node".
 */
export function nativeBindingError(error: unknown): AgentError | undefined {
  if (error instanceof AgentError || !(error instanceof Error)) return undefined
  if (!/pkcs11\.node|'pkcs11js'/.test(error.message)) return undefined
  return new AgentError('MODULE_LOAD_FAILED', 'The native PKCS#11 binding (pkcs11js) is not built', {
    cause: error,
    remedy:
      'Run `npm rebuild pkcs11js` in the directory cargo-pkcs11-agent is installed in (with `-g` for a global install); it needs a C++ compiler and the Node.js headers',
  })
}
