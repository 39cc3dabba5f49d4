import { AgentError } from '../../lib/errors.js'
import { registryBinding } from '../pipeline/bind.js'
import { adminRequest, keyInfo } from './keys.js'
import { stringParam, type MethodHandler } from './method.js'

/** The keys a registry operator registers: k3.public and k3.pid of the read and mutation keys. */
export const pubkey: MethodHandler<'pubkey'> = async (agent, params, context) => {
  const indexUrl = stringParam(params, 'indexUrl')
  const name = stringParam(params, 'registry')
  const registries = Object.values(agent.config.registries).filter(
    (r) => (indexUrl === undefined || r.index === indexUrl) && (name === undefined || r.name === name),
  )
  if (registries.length === 0) {
    if (indexUrl !== undefined) registryBinding(agent.config, indexUrl)
    throw new AgentError('REGISTRY_NOT_CONFIGURED', `No registry ${name ?? ''} is configured`, {
      remedy: 'Add a [registries.NAME] table to the agent config',
    })
  }
  const out = []
  for (const registry of registries) {
    const request = adminRequest(context, params, registry.index, registry.name)
    const read = await keyInfo(agent, registry.readKey, request)
    const mutation =
      registry.mutationKey === registry.readKey ? read : await keyInfo(agent, registry.mutationKey, request)
    out.push({ registry: registry.name, index: registry.index, readKey: read, mutationKey: mutation })
  }
  return { registries: out }
}
