import { AgentError, toAgentError } from '../../lib/errors.js'
import type { KeyInfo } from '../../protocol/methods.js'
import { describeKey } from '../devices.js'
import { registryBinding } from '../pipeline/bind.js'
import { parseCargoLine } from '../pipeline/parse.js'
import { adminRequest, keyInfo, keyInfoOf, keySpec, loginToken, recordKeygen } from './keys.js'
import type { MethodHandler } from './method.js'

/**
 * `cargo login`: show the bound key(s) for registration. Generates a missing key only with explicit
 * consent (`generate-on-login = true` or `cargo login -- --generate`): generating replaces nothing,
 * but a key the registry does not know is useless until registered.
 */
export const login: MethodHandler<'login'> = async (agent, params, context) => {
  const cargo = parseCargoLine(params)
  if (cargo.kind !== 'login')
    throw new AgentError('REQUEST_INVALID', 'login expects a cargo login request', {
      remedy: 'Send the login line cargo wrote',
    })
  const registry = registryBinding(agent.config, cargo.registry.indexUrl)
  const consent = registry.generateOnLogin || cargo.args.includes('--generate')
  const generated: string[] = []
  const keys: KeyInfo[] = []
  const refs =
    registry.mutationKey === registry.readKey ? [registry.readKey] : [registry.readKey, registry.mutationKey]
  const request = adminRequest(context, params, registry.index, registry.name)
  for (const ref of refs) {
    try {
      keys.push(await keyInfo(agent, ref, request))
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== 'KEY_NOT_FOUND') throw error
      const { token, device } = agent.devices.byName(ref.token)
      if (!consent) {
        throw new AgentError('KEY_NOT_FOUND', `There is no ${describeKey(token, ref)} yet`, {
          remedy: `Generate it on the device with \`cargo login --registry ${registry.name} -- --generate\` (or set generate-on-login = true), or with \`cargo-pkcs11-agent setup\``,
        })
      }
      if (ref.label === undefined)
        throw new AgentError(
          'CONFIG_INVALID',
          `The key for ${registry.name} has no label to generate it with`,
          { remedy: 'Add label = "…" to the key reference' },
        )
      // Device closes a session after any failed request (KEY_NOT_FOUND included), and closing the
      // last session ends the login (PKCS#11 v2.40 §5.6): log in again before writing the key.
      await loginToken(agent, token, request)
      const name = `${token.name}/${ref.label}`
      const key = await device.generateKey(keySpec(ref.label, ref.id)).catch(async (failure: unknown) => {
        const { code, message } = toAgentError(failure)
        await recordKeygen(agent, request.intent, token, {
          result: 'failed',
          code,
          reason: message,
          key: name,
        })
        throw failure
      })
      const info = keyInfoOf(token, key)
      await recordKeygen(agent, request.intent, token, { result: 'generated', kip: info.k3Pid, key: name })
      generated.push(name)
      agent.log(
        `generated key ${key.label} (id ${key.id}) on token ${token.name} for cargo login on ${registry.name}`,
      )
      keys.push(info)
    }
  }
  return { registry: registry.name, keys, generated }
}
