/**
 * How policy shows a request to a human, and the seam through which it talks to the human of that
 * one request. The agent fills an `Intent` (src/cargo/intent.ts) from cargo's request and implements
 * `Prompter` over the shim's socket; policy code only sees these shapes. Every prompt and notice
 * shows *what* is being approved (docs/policy.md).
 */
import type { Pin } from '../lib/secret.js'
import { LIMITS } from '../lib/limits.js'
import type { Intent, Requester } from '../cargo/intent.js'

/** How many hex digits of the checksum a human is shown (enough to compare with `sha256sum`). */
export const CKSUM_PREFIX_CHARS = 8

/**
 * Text that came from another process (crate names, command lines) is shown on the user's terminal
 * and in pinentry: control characters could move the cursor or recolour the prompt to fake an
 * approval text, bidirectional controls (Unicode UAX #9: U+061C, U+200E/F, U+202A–E, U+2066–9)
 * could reorder it, and invisible characters (U+180E, U+200B–D, U+2060–4, U+FEFF) could make two
 * names look the same, so all are replaced, and very long values are cut.
 */
export function displaySafe(text: string, maxChars: number = LIMITS.intentFieldMaxChars): string {
  const clean = text.replace(
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u001f\u007f-\u009f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g,
    '\uFFFD',
  )
  return clean.length > maxChars ? `${clean.slice(0, maxChars - 1)}…` : clean
}

export function cksumPrefix(cksum: string | undefined): string | undefined {
  if (cksum === undefined) return undefined
  return displaySafe(cksum.slice(0, CKSUM_PREFIX_CHARS), CKSUM_PREFIX_CHARS)
}

/** "my-registry (sparse+https://registry.example/index/)", or just the URL when there is no name. */
export function describeRegistry(intent: { registryName?: string | undefined; indexUrl: string }): string {
  const url = displaySafe(intent.indexUrl)
  return intent.registryName === undefined ? url : `${displaySafe(intent.registryName)} (${url})`
}

/**
 * "a forwarded connection via ssh pid 77 `ssh -R …`": what a human is told about a request whose
 * program is on the far side of a forward (docs/ssh-forwarding.md). An ssh or sshd that is not a
 * root-owned binary is named as unverified, with its path.
 */
function describeForwarded(requester: Requester): string {
  const f = requester.forwarded
  if (f === undefined) return ''
  if (f.via === 'unidentified')
    return `an unidentified process${f.pid > 0 ? ` (pid ${f.pid})` : ''}, treated as forwarded`
  const binary = f.verified === true ? '' : ` (unverified binary ${displaySafe(f.exe ?? '?')})`
  const command = requester.client?.command
  return `a forwarded connection via ${f.via} pid ${f.pid}${binary}${command === undefined ? '' : ` \`${displaySafe(command, LIMITS.intentFieldMaxChars / 2)}\``}`
}

/**
 * "requested by pid 123 /usr/bin/cargo (calls itself `cargo publish`)", or "requested from a
 * forwarded connection via ssh pid 77".
 */
export function requestedBy(requester: Requester): string {
  return `requested ${requester.forwarded === undefined ? 'by' : 'from'} ${describeRequester(requester)}`
}

/**
 * "pid 123 /usr/bin/cargo (calls itself `cargo publish`)": the executable is the kernel's
 * (/proc/<pid>/exe); the command line is the process's own argv, which it can rewrite (a build
 * script can set its `process.title` to `cargo publish`), so it is labelled as its own word.
 */
function describeProcess(
  pid: number | undefined,
  who: { exe?: string | undefined; command?: string | undefined },
  maxChars: number,
): string[] {
  const parts = pid === undefined ? [] : [`pid ${pid}`]
  if (who.exe !== undefined && who.exe !== '') parts.push(displaySafe(who.exe, maxChars))
  if (who.command !== undefined && who.command !== '')
    parts.push(`(calls itself \`${displaySafe(who.command, maxChars)}\`)`)
  return parts
}

export function describeRequester(requester: Requester): string {
  if (requester.forwarded !== undefined) return describeForwarded(requester)
  const parts = describeProcess(requester.pid, requester, LIMITS.intentFieldMaxChars)
  if (parts.length === 0 && requester.ppid !== undefined) parts.push(`parent pid ${requester.ppid}`)
  if (requester.tty !== undefined && requester.tty !== '') parts.push(`on ${displaySafe(requester.tty)}`)
  const client = requester.client
  if (client !== undefined)
    parts.push('through', ...describeProcess(client.pid, client, LIMITS.intentFieldMaxChars / 2))
  return parts.length === 0 ? 'an unknown program' : parts.join(' ')
}

/**
 * One line a human can approve or refuse, e.g.
 * "publish foo 1.2.3 (cksum 6dee75a8…) to my-registry (sparse+https://registry.example/index/),
 *  requested by pid 123 /usr/bin/cargo (calls itself `cargo publish`)". The registry name is the
 * agent config's (set by src/agent/pipeline/bind.ts), never the one the client sent.
 */
export function describeIntent(intent: Intent): string {
  const registry = describeRegistry(intent)
  const crate = [intent.crate.name, intent.crate.vers]
    .filter((v): v is string => v !== undefined && v !== '')
    .map((v) => displaySafe(v))
    .join(' ')
  const cksum = cksumPrefix(intent.crate.cksum)
  const what = [intent.operation as string, crate, cksum === undefined ? '' : `(cksum ${cksum}…)`]
    .filter((s) => s !== '')
    .join(' ')
  const where =
    intent.operation === 'read'
      ? `from ${registry}`
      : intent.operation === 'publish'
        ? `to ${registry}`
        : `on ${registry}`
  return `${what} ${where}, ${requestedBy(intent.requester)}`
}

/** Why a PIN is being asked, shown by pinentry or the shim's terminal prompt. */
export interface PinPrompt {
  /** "YubiKey PIV token 'PIV_II' (serial 12345678)". */
  tokenDescription: string
  /** Present when the token reports CKF_USER_PIN_COUNT_LOW ('low') or CKF_USER_PIN_FINAL_TRY ('final'). */
  triesLeft?: 'low' | 'final'
  /** The request the PIN unlocks, usually `describeIntent(intent)`. */
  reason: string
}

/**
 * Events for the human while a request waits. Every notice carries `text`, a complete line the shim
 * can print as is, so a shim that does not know a newer `kind` still shows something useful.
 */
export type Notice =
  | {
      kind: 'touch-pending'
      text: string
      intent: Intent
      tokenDescription: string
      /** Epoch milliseconds at which the wait for the touch gives up (for a countdown). */
      deadline: number
    }
  | { kind: 'waiting-for-pin'; text: string; tokenDescription: string; via: 'pinentry' | 'terminal' }
  | { kind: 'waiting-for-confirmation'; text: string; intent: Intent; via: 'pinentry' | 'terminal' }
  | { kind: 'pin-final-try'; text: string; tokenDescription: string }
  | { kind: 'info'; text: string }

/**
 * The human of one request. The agent implements it (src/agent/prompter.ts); tests implement it
 * directly. Two channels with different trust (docs/design.md §4, rule 2):
 * - `askPin` may go through the requesting client (the shim prompts on /dev/tty): a PIN is a secret
 *   an attacker lacks. `interactive` is false in headless mode and when the client has no terminal.
 * - `confirm` never goes through the client: the agent asks on `terminal`, the requester's
 *   controlling terminal as the kernel reports it, itself. Undefined when there is none (or the
 *   agent is headless): policy then never calls `confirm`.
 */
export interface Prompter {
  readonly interactive: boolean
  readonly terminal: string | undefined
  /** Resolves to the PIN typed by the user; rejects with PIN_ENTRY_FAILED when cancelled or unavailable. */
  askPin(request: PinPrompt): Promise<Pin>
  /** Resolves true when the user approved `intent` after being shown `text` on `terminal`, false when refused. */
  confirm(intent: Intent, text: string): Promise<boolean>
  /** Fire and forget: a notice that cannot be delivered never fails the request. */
  notify(notice: Notice): void
}

/** Fire and forget: a notice that cannot be delivered never fails the request. */
export function tell(prompter: Prompter, notice: Notice): void {
  try {
    prompter.notify(notice)
  } catch {
    // The shim went away; the request itself goes on.
  }
}
