import { signPipeline } from '../pipeline/run.js'
import type { MethodHandler } from './method.js'

/** One RFC 3231 token for cargo's request line: src/agent/pipeline/run.ts. */
export const sign: MethodHandler<'sign'> = signPipeline
