import type { MethodHandler } from './method.js'

/**
 * `cargo-pkcs11-agent reload`: SIGHUP's reload, with its verdict as the answer. A config that does
 * not load, or that weakens protection, is refused with the reason (src/agent/agent.ts `reload`).
 */
export const reload: MethodHandler<'reload'> = async (agent) => {
  const refusal = await agent.reload()
  if (refusal !== undefined) throw refusal
  return { config: agent.configPath ?? null }
}
