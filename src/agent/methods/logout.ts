import { registryBinding } from '../pipeline/bind.js'
import { parseCargoLine } from '../pipeline/parse.js'
import type { MethodHandler } from './method.js'

/** `cargo logout`: forget the cached PINs of the registry's tokens; no key is touched. */
export const logout: MethodHandler<'logout'> = async (agent, params) => {
  const cargo = parseCargoLine(params)
  const registry = registryBinding(agent.config, cargo.registry.indexUrl)
  const tokens = new Set([registry.readKey.token, registry.mutationKey.token])
  let forgotten = 0
  for (const token of tokens) if (agent.policy.pinCache.forget(token, 'lock')) forgotten += 1
  return await Promise.resolve({ registry: registry.name, forgotten })
}
