import type { MethodHandler } from './method.js'

/** Forget every PIN and close the sessions, which logs the tokens out (login state is per application). */
export const lock: MethodHandler<'lock'> = async (agent) => {
  const forgotten = agent.policy.lock()
  const released = await agent.devices.releaseAll()
  return { forgotten, released }
}
