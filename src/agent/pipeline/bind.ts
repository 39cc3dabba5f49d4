/**
 * Stage "bind": registry binding. The agent signs only for index URLs bound in its config, compared byte
 * for byte (RFC 3231: the footer `url` is what the registry checks; a near-miss must not sign).
 */
import {
  registryFor,
  type Config,
  type KeyRef,
  type RegistryConfig,
  type TokenConfig,
} from '../../config/schema.js'
import type { Intent } from '../../cargo/intent.js'
import { AgentError } from '../../lib/errors.js'

export interface Binding {
  readonly registry: RegistryConfig
  readonly keyRef: KeyRef
  readonly token: TokenConfig
}

export function registryBinding(config: Config, indexUrl: string): RegistryConfig {
  const registry = registryFor(config, indexUrl)
  if (registry === undefined) {
    throw new AgentError(
      'REGISTRY_NOT_CONFIGURED',
      `The agent has no key bound to the registry ${indexUrl}`,
      {
        remedy: `Add a [registries.NAME] table with index = "${indexUrl}" to ${config.path ?? 'the agent config'} and reload the agent (SIGHUP)`,
        data: { indexUrl },
      },
    )
  }
  return registry
}

/**
 * The binding of `intent`'s index URL. It also names the intent's registry as the config does:
 * prompts and audit lines show that name, never the one in the client's request line, which a
 * build script can set to any registry it likes (SECURITY.md).
 */
export function bind(
  config: Config,
  intent: Pick<Intent, 'indexUrl' | 'operation' | 'registryName'>,
): Binding {
  const registry = registryBinding(config, intent.indexUrl)
  intent.registryName = registry.name
  const mutation = intent.operation !== 'read'
  // Reads and mutations may use different keys (docs/design.md §5, point 2).
  const keyRef = mutation ? registry.mutationKey : registry.readKey
  const token = config.tokens[keyRef.token]
  if (token === undefined) {
    // validateConfig rejects this; kept so a hand-built Config cannot sign with an undefined token.
    throw new AgentError(
      'CONFIG_INVALID',
      `Registry ${registry.name} names the undefined token ${keyRef.token}`,
      { remedy: `Add [tokens.${keyRef.token}]` },
    )
  }
  return { registry, keyRef, token }
}
