/**
 * Before setup asks for a PIN (docs/setup.md §1): the token's module loads and shows the token. The
 * errors name what to change on the command line (--module, --token-label / --serial) or in the
 * config, list the tokens the module does show, and say which variables tell the module where its
 * tokens are (native-config/modules.json `$environment`).
 */
import type { TokenConfig } from '../../config/schema.js'
import { AgentError, toAgentError } from '../../lib/errors.js'
import { listTokens } from '../../pkcs11/device.js'
import { knownModuleNames, moduleEnvironmentNames } from '../../pkcs11/module-environment.js'
import { tokenMatches, tokenSelector, type TokenIdentity } from '../../pkcs11/selector.js'

/** The initialised tokens on `module`; a module given by --module that does not load says so. */
export async function tokensOn(module: string, fromFlags: boolean): Promise<TokenIdentity[]> {
  try {
    return await listTokens(module)
  } catch (error) {
    const cause = toAgentError(error)
    // Errors about the module file itself carry `module`; SoftHSM's own config errors keep their remedy.
    if (!fromFlags || cause.data['module'] === undefined) throw cause
    throw new AgentError(cause.code, `--module ${module}: ${cause.message}`, {
      cause,
      remedy: `Give --module the path of an installed PKCS#11 library, or one of ${knownModuleNames().join(', ')}; \`cargo-pkcs11-agent doctor\` checks the configured modules`,
      data: cause.data,
    })
  }
}

/** "'ci' (serial 1a2b), 'other' (serial 3c4d)", for an error that lists what a module shows. */
export function describeTokens(module: string, found: readonly TokenIdentity[]): string {
  const where = moduleEnvironmentNames(module)
    .map((name) => `${name}=${process.env[name] ?? '(not set)'}`)
    .join(', ')
  const tokens =
    found.length === 0
      ? 'no initialised token'
      : found.map((t) => `'${t.label}'${t.serial === '' ? '' : ` (serial ${t.serial})`}`).join(', ')
  return `${module} shows ${tokens}${where === '' ? '' : ` (with ${where})`}`
}

/** Throws unless the token's module loads and shows the token; asks nothing of the token itself. */
export async function checkTokenPresent(
  token: TokenConfig,
  fromFlags: boolean,
  configPath: string,
): Promise<void> {
  const found = await tokensOn(token.module, fromFlags)
  const selector = tokenSelector(token)
  if (found.some((t) => tokenMatches(t, selector))) return
  const { module: _module, ...fields } = selector
  const wanted = Object.entries(fields).map(([field, value]) => `${field} '${value}'`)
  const change = fromFlags
    ? '--token-label / --serial'
    : `label / serial in [tokens.${token.name}] of ${configPath}`
  const names = moduleEnvironmentNames(token.module).join(' and ')
  const store = fromFlags
    ? `set ${names} as for the tool that made the token (setup saves it in the token's module-env)`
    : `check module-env in [tokens.${token.name}]`
  throw new AgentError(
    'TOKEN_ABSENT',
    `No token with ${wanted.join(' and ')}: ${describeTokens(token.module, found)}`,
    {
      remedy: `Check ${change} against \`cargo-pkcs11-agent list --module ${token.module}\`${names === '' ? '' : `; ${token.module} finds its tokens through ${names}: ${store}`}`,
      data: { module: token.module },
    },
  )
}
