/**
 * What a signing request is for and who asked: the one shape the agent builds from cargo's request
 * and hands to policy (to decide and to show a human) and to the audit log (to record). A leaf, so
 * both may import it without either importing the other.
 */
import type { CrateRef, Operation } from './operation.js'

/** What a client says about the program behind it: recorded as a claim, never shown as fact. */
export interface RequesterClaim {
  pid?: number
  ppid?: number
  command?: string
  tty?: string
  /** Whether the client said it came through a forwarded socket: recorded, never believed. */
  forwarded?: boolean
}

/**
 * The forwarder a connection came through, from the kernel's peer (docs/ssh-forwarding.md): the
 * local `ssh` client for `ssh -R` from this host, `sshd` for a forward that sshd terminates here, or
 * `unidentified` for a peer whose executable the kernel would not show (treated the same way).
 */
export interface Forwarder {
  readonly via: 'ssh' | 'sshd' | 'unidentified'
  /** The connecting process (the forwarder itself); 0 when the kernel gave no pid. */
  readonly pid: number
  /** Its /proc/<pid>/exe (ssh, sshd). */
  readonly exe?: string
  /** ssh, sshd: whether that running executable is root-owned and writable by nobody else. */
  readonly verified?: boolean
}

/**
 * The program that asked, as the agent read it from the kernel (src/agent/requester.ts). All
 * fields are best effort; none comes from the client except `claimed`.
 */
export interface Requester {
  /** The connecting process's parent: cargo, when the client is the shim. */
  pid?: number
  ppid?: number
  /** Command line of `pid` (usually `cargo publish`): its own argv, which it can rewrite. */
  command?: string
  /** Executable of `pid` (/proc/<pid>/exe). */
  exe?: string
  /** Controlling terminal of the connecting process, checked against the device file. */
  tty?: string
  /** Kernel uid of the connecting process. */
  uid?: number
  /** The connecting process itself (normally the shim). */
  client?: { pid: number; command?: string; exe?: string }
  /** Set when the connecting process is an SSH forwarder; then no local program is the requester. */
  forwarded?: Forwarder
  /** What the client said about itself. */
  claimed?: RequesterClaim
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
 * How a request was approved: `not-required` (reads), a device `touch` the key's attestation vouches
 * for, `touch-unattested` (confirm = "touch" on a key that attests no touch policy: only the
 * operator's word, docs/policy.md), a yes on the requester's `terminal` or in `pinentry`, or `none`
 * (confirm = "none"). Policy decides it; the audit line records it.
 */
export type Approval = 'not-required' | 'touch' | 'touch-unattested' | 'terminal' | 'pinentry' | 'none'
