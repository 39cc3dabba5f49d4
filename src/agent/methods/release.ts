import type { MethodHandler } from './method.js'

/** Close every session so other programs can use the devices (yubikey-agent's SIGHUP); PINs stay cached. */
export const release: MethodHandler<'release'> = async (agent) => ({
  released: await agent.devices.releaseAll(),
})
