import type { KeyRef } from '../../config/schema.js'
import { toAgentError } from '../../lib/errors.js'
import { isDumpable } from '../../lib/peercred.js'
import type { KeyPolicies, StatusResult } from '../../protocol/methods.js'
import type { MethodHandler } from './method.js'

/** What `cargo-pkcs11-agent status` shows: tokens, PIN cache, registries and their mutation counts. */
export const status: MethodHandler<'status'> = async (agent) => {
  const cached = new Set(agent.policy.pinCache.tokenIds())
  const tokens: StatusResult['tokens'] = []
  for (const token of Object.values(agent.config.tokens)) {
    const entry = {
      name: token.name,
      module: token.module,
      pinSource: token.pinSource,
      pinCached: cached.has(token.name),
    }
    try {
      tokens.push({ ...entry, status: await agent.devices.get(token).status() })
    } catch (error) {
      tokens.push({ ...entry, error: toAgentError(error).toWire() })
    }
  }
  // The PIN/touch policy each bound key's card attests (null: the module shows none, or the device is absent).
  const policies = async (ref: KeyRef): Promise<KeyPolicies | null> => {
    const token = agent.config.tokens[ref.token]
    if (token === undefined) return null
    try {
      const attested = await agent.devices.keyPolicies(token, ref)
      return attested === undefined
        ? null
        : { pinPolicy: attested.pinPolicy, touchPolicy: attested.touchPolicy }
    } catch {
      return null
    }
  }
  const registries: StatusResult['registries'] = []
  for (const r of Object.values(agent.config.registries)) {
    const warning = agent.confirmOf(r).warning
    registries.push({
      keyPolicies: { read: await policies(r.readKey), mutation: await policies(r.mutationKey) },
      name: r.name,
      index: r.index,
      readKey: r.readKey,
      mutationKey: r.mutationKey,
      confirm: agent.confirmOf(r).mode,
      confirmReason: agent.confirmOf(r).reason,
      ...(warning === undefined ? {} : { confirmWarning: warning }),
      tokenMaxAgeSeconds: r.tokenMaxAgeSeconds,
      mutationsLastHour: agent.policy.limiter.count(r.index),
      mutationsPerHour: r.mutationsPerHour,
    })
  }
  let dumpable: boolean | undefined
  try {
    dumpable = isDumpable()
  } catch {
    dumpable = undefined // not Linux: PR_GET_DUMPABLE does not exist
  }
  return {
    pid: process.pid,
    socket: agent.socketPath,
    config: agent.configPath ?? null,
    headless: agent.config.agent.headless,
    ...(dumpable === undefined ? {} : { dumpable }),
    tokens,
    registries,
  }
}
