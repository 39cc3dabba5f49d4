/**
 * What a signing request is for and who asked: the one shape the agent builds from cargo's request
 * and hands to policy (to decide and to show a human) and to the audit log (to record). A leaf, so
 * both may import it without either importing the other.
 */
import type { CrateRef, Operation } from './operation.js'

/** The program that asked cargo to ask us (as the shim saw it). All fields are best effort. */
export interface Requester {
  pid?: number
  ppid?: number
  /** Command line of the requesting program (the shim's parent, usually `cargo publish`). */
  command?: string
  tty?: string
}

export interface Intent {
  /** Registry name from cargo's config; absent for `--index` style URLs. */
  registryName?: string
  /** Index URL exactly as cargo sends it (`sparse+` prefix kept). */
  indexUrl: string
  operation: Operation
  /** The crate claims of a mutation (empty for reads). */
  crate: CrateRef
  requester: Requester
}

/**
 * How a request was approved: `not-required` (reads), a device `touch`, a yes on the requester's
 * `terminal` or in `pinentry`, or `none` (confirm = "none"). Policy decides it; the audit line records it.
 */
export type Approval = 'not-required' | 'touch' | 'terminal' | 'pinentry' | 'none'
