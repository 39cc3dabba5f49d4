/**
 * What every socket method sees of the running agent, and of the request it serves.
 */
import type { AuditSink } from '../audit/entry.js'
import type { Requester } from '../cargo/intent.js'
import type { AgentError } from '../lib/errors.js'
import type { Config, EffectiveConfirm, RegistryConfig } from '../config/schema.js'
import type { Policy } from '../policy/policy.js'
import type { Prompter } from '../policy/intent.js'
import type { Devices } from './devices.js'

export interface AgentState {
  readonly config: Config
  readonly socketPath: string
  readonly configPath: string | undefined
  readonly devices: Devices
  readonly policy: Policy
  readonly audit: AuditSink
  readonly log: (line: string) => void
  /** The registry's `confirm` as it applies: set in the file, or resolved at start from its key's touch policy. */
  confirmOf(registry: RegistryConfig): EffectiveConfirm
  /** Re-reads the config file: undefined when the new one applies, else why not (src/agent/agent.ts). */
  reload(): Promise<AgentError | undefined>
}

/** The request's side of a method: the human behind the requesting client. */
export interface MethodContext {
  /** Who asks, read from the kernel (src/agent/requester.ts); claims are added by the parse stage. */
  readonly requester: Requester
  /** The requester's prompter; `interactive` is what the client declared about its terminal (for a
   * PIN), the yes/no goes to the kernel's terminal of the requester. */
  prompter(interactive: boolean): Prompter
}
