/**
 * The shape of one socket method: untrusted params in (the handler parses them), the result the
 * method map (src/protocol/methods.ts) names out.
 */
import type { Method, Result } from '../../protocol/methods.js'
import type { AgentState, MethodContext } from '../state.js'

/** Params as they arrive: a JSON object nobody has checked yet. */
export type UntrustedParams = Readonly<Record<string, unknown>>

export type MethodHandler<M extends Method> = (
  agent: AgentState,
  params: UntrustedParams,
  context: MethodContext,
) => Promise<Result<M>>

export function stringParam(params: UntrustedParams, key: string): string | undefined {
  const value = params[key]
  return typeof value === 'string' && value !== '' ? value : undefined
}
