import { PROTOCOL_VERSION } from '../../protocol/frames.js'
import type { MethodHandler } from './method.js'

/** Liveness and version: the shim's "is an agent of my release listening?". */
export const ping: MethodHandler<'ping'> = async () =>
  await Promise.resolve({ pong: true, v: PROTOCOL_VERSION, pid: process.pid })
