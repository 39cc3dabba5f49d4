/**
 * Which changes of a reloaded configuration lower the protection of mutations (docs/design.md §4):
 * the agent refuses to apply those on SIGHUP (src/agent/agent.ts). A signal carries no requester
 * and no terminal, so there is nobody to approve it on a trusted channel; a restart needs the PIN
 * again, which a process that merely edited the config file and sent a signal does not have.
 */
import {
  effectiveConfirm,
  type Config,
  type ConfirmMode,
  type EffectiveConfirm,
  type KeyRef,
  type RegistryConfig,
} from '../config/schema.js'

/** touch (the device) > prompt (a human on a channel the requester does not hold) > none. */
const STRENGTH: Readonly<Record<ConfirmMode, number>> = { none: 0, prompt: 1, touch: 2 }

/**
 * A `touch` the mutation key does not attest (SoftHSM, a TPM, a PIV key without attestation) ranks
 * as `none`: the agent cannot tell that anything asks, so only the operator's word stands for it
 * (docs/policy.md, "Touch the agent cannot check"), and a signal carries no operator.
 */
function strength(confirm: EffectiveConfirm): number {
  return confirm.mode === 'touch' && !confirm.touchAttested ? STRENGTH.none : STRENGTH[confirm.mode]
}

/** `"prompt"`, or `"touch" (not attested by the key)` for a touch ranked as `none`. */
function shown(confirm: EffectiveConfirm): string {
  return confirm.mode === 'touch' && !confirm.touchAttested
    ? '"touch" (not attested by the key)'
    : `"${confirm.mode}"`
}

/** Each registry's `confirm` as the agent applies it, by registry name (`Devices.resolveConfirms`). */
export interface ResolvedConfirms {
  readonly current: ReadonlyMap<string, EffectiveConfirm>
  readonly next: ReadonlyMap<string, EffectiveConfirm>
}

/** refuse > read (no forwarded mutation) > confirm (forwarded mutations, each confirmed). */
const FORWARDED_STRENGTH: Readonly<Record<RegistryConfig['forwarded'], number>> = {
  confirm: 0,
  read: 1,
  refuse: 2,
}

function sameKey(a: KeyRef, b: KeyRef): boolean {
  return a.token === b.token && a.label === b.label && a.id === b.id
}

/** An index's last applied binding in this agent's life, with its `confirm` as it applied. */
export interface EarlierBinding {
  readonly registry: RegistryConfig
  readonly confirm: EffectiveConfirm
}

/**
 * Human-readable reasons `next` is weaker than `current`; empty when it is not. `confirm` is
 * compared as it applies: an unset one resolved to `touch` from the key's touch policy counts as
 * `touch`, a `touch` the key does not attest as `none` (registries missing from `confirms` count
 * as the file or the default says, unattested). An index `current` does not bind is held against
 * its `earlier` binding in this agent's life: otherwise one reload dropping a registry and the next
 * binding its index again could lift what a single reload would have been refused.
 */
export function weakenings(
  current: Config,
  next: Config,
  confirms: ResolvedConfirms = { current: new Map(), next: new Map() },
  earlier: ReadonlyMap<string, EarlierBinding> = new Map(),
): string[] {
  const resolved = (
    which: ReadonlyMap<string, EffectiveConfirm>,
    registry: RegistryConfig,
  ): EffectiveConfirm => which.get(registry.name) ?? effectiveConfirm(registry)
  const out: string[] = []
  if (!current.agent.headless && next.agent.headless) out.push('headless turned on')
  const byIndex = new Map(Object.values(current.registries).map((r) => [r.index, r]))
  for (const registry of Object.values(next.registries)) {
    const after = resolved(confirms.next, registry)
    const bound = byIndex.get(registry.index)
    const remembered = bound === undefined ? earlier.get(registry.index) : undefined
    const before = bound ?? remembered?.registry ?? registry
    const was = bound !== undefined ? resolved(confirms.current, bound) : (remembered?.confirm ?? after)
    const label =
      bound !== undefined
        ? `registry ${registry.name}`
        : remembered !== undefined
          ? `registry ${registry.name} (its index was bound before)`
          : `new registry ${registry.name}`
    // A new binding whose mutations are still approved per request (prompt, attested touch) adds
    // no silent path; one with confirm = "none", or a touch nothing attests, may sign unasked.
    if (bound === undefined && strength(after) === STRENGTH.none)
      out.push(
        `new registry ${registry.name} would sign mutations with ${describe(registry.mutationKey)} unconfirmed (confirm = ${shown(after)})`,
      )
    else if (strength(after) < strength(was)) out.push(`${label}: confirm ${shown(was)} → ${shown(after)}`)
    // The sliding hour is kept (src/agent/agent.ts), so a raised limit is the only way a reload
    // could let more mutations through: on a confirm = "none" registry the only control left.
    if (registry.mutationsPerHour > before.mutationsPerHour)
      out.push(`${label}: mutations-per-hour ${before.mutationsPerHour} → ${registry.mutationsPerHour}`)
    if (FORWARDED_STRENGTH[registry.forwarded] < FORWARDED_STRENGTH[before.forwarded])
      out.push(`${label}: forwarded "${before.forwarded}" → "${registry.forwarded}"`)
    // An attested touch still needs a finger on the new key's device; an approval shows no key.
    if (
      !sameKey(before.mutationKey, registry.mutationKey) &&
      !(after.mode === 'touch' && after.touchAttested)
    )
      out.push(`${label}: mutation key changed to ${describe(registry.mutationKey)}`)
  }
  return out
}

function describe(key: KeyRef): string {
  return [key.token, key.label, key.id].filter((v) => v !== undefined).join('/')
}
