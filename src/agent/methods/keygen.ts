/**
 * `keygen` over the socket. Replacing a key (`force`) destroys it for every registry that knows its
 * public key, so it is approved like a mutation, on a channel the requester does not hold (the
 * agent's prompt on the requester's terminal, or pinentry; docs/design.md §4, rule 4). Every keygen,
 * generated or not, leaves an audit line and a log line naming the kernel's requester.
 */
import type { AuditOutcome } from '../../audit/entry.js'
import { AgentError, toAgentError } from '../../lib/errors.js'
import { describeRequester, displaySafe } from '../../policy/intent.js'
import { tokenPolicy } from '../policy-config.js'
import { adminRequest, keyInfoOf, keySpec, loginToken, recordKeygen } from './keys.js'
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
  const force = params['force'] === true
  const request = adminRequest(context, params, `token ${token.name}`)
  const { intent } = request
  const key = `${token.name}/${label}`
  // The label is the client's: shown to a human (prompt, error, log) only through displaySafe.
  const what = `keygen ${token.name}/${displaySafe(label)}${force ? ' (force: replaces an existing key)' : ''}`
  const record = (outcome: Omit<AuditOutcome, 'operation' | 'device' | 'key' | 'replaced'>) =>
    recordKeygen(agent, intent, token, { ...outcome, key, replaced: force })
  try {
    if (force) {
      const text = `Replace the key "${displaySafe(label)}" on ${tokenPolicy(token).description}, requested by ${describeRequester(intent.requester)}? Registries that know the old public key will reject your tokens`
      const { approved } = await agent.policy.confirm(
        intent,
        request.prompter,
        text,
        'Replace',
        tokenPolicy(token),
      )
      if (!approved)
        throw new AgentError('DENIED', `Refused: ${what}`, {
          remedy: 'Nothing was changed. Run keygen again and approve it if you meant to replace the key',
        })
    }
    await loginToken(agent, token, request)
    const made = keyInfoOf(
      token,
      await device.generateKey(keySpec(label, stringParam(params, 'id')), { force }),
    )
    await record({ result: 'generated', kip: made.k3Pid })
    agent.log(`${what} by ${describeRequester(intent.requester)}: generated ${made.k3Pid}`)
    return made
  } catch (error) {
    const failure = toAgentError(error)
    const denied = failure.code === 'DENIED' || failure.code === 'POLICY_DENIED'
    await record({ result: denied ? 'denied' : 'failed', code: failure.code, reason: failure.message })
    agent.log(`${what} by ${describeRequester(intent.requester)}: ${failure.code}`)
    throw failure
  }
}
