import { AgentError } from '../../lib/errors.js'
import { adminIntent, keyInfoOf, keySpec, loginToken } from './keys.js'
import { stringParam, type MethodHandler } from './method.js'

/** Generate a P-384 key on a configured token (`cargo-pkcs11-agent keygen` through the agent). */
export const keygen: MethodHandler<'keygen'> = async (agent, params, context) => {
  const tokenName = stringParam(params, 'token')
  const label = stringParam(params, 'label')
  if (tokenName === undefined || label === undefined)
    throw new AgentError('USAGE', 'keygen needs `token` and `label`', {
      remedy: 'Pass the token name from the config and a key label',
    })
  const { token, device } = agent.devices.byName(tokenName)
  await loginToken(agent, token, params, context, adminIntent(params, `token ${token.name}`))
  const key = await device.generateKey(keySpec(label, stringParam(params, 'id')), {
    force: params['force'] === true,
  })
  return keyInfoOf(token, key)
}
