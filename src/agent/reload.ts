/**
 * Which changes of a reloaded configuration lower the protection of mutations (docs/design.md §4):
 * the agent refuses to apply those on SIGHUP (src/agent/agent.ts). A signal carries no requester
 * and no terminal, so there is nobody to approve it on a trusted channel; a restart needs the PIN
 * again, which a process that merely edited the config file and sent a signal does not have.
 */
import type { Config, KeyRef, RegistryConfig } from '../config/schema.js'

/** touch (the device) > prompt (a human on a channel the requester does not hold) > none. */
const STRENGTH: Readonly<Record<RegistryConfig['confirm'], number>> = { none: 0, prompt: 1, touch: 2 }

/** refuse > read (no forwarded mutation) > confirm (forwarded mutations, each confirmed). */
const FORWARDED_STRENGTH: Readonly<Record<RegistryConfig['forwarded'], number>> = {
  confirm: 0,
  read: 1,
  refuse: 2,
}

function sameKey(a: KeyRef, b: KeyRef): boolean {
  return a.token === b.token && a.label === b.label && a.id === b.id
}

/** Human-readable reasons `next` is weaker than `current`; empty when it is not. */
export function weakenings(current: Config, next: Config): string[] {
  const out: string[] = []
  if (!current.agent.headless && next.agent.headless) out.push('headless turned on')
  const byIndex = new Map(Object.values(current.registries).map((r) => [r.index, r]))
  for (const registry of Object.values(next.registries)) {
    const before = byIndex.get(registry.index)
    if (before === undefined) {
      // A new binding whose mutations are still approved per request (prompt, touch) adds no
      // silent path; one with confirm = "none" lets the key sign mutations unasked.
      if (registry.confirm === 'none')
        out.push(
          `new registry ${registry.name} would sign mutations with ${describe(registry.mutationKey)} unconfirmed (confirm = "none")`,
        )
      continue
    }
    if (STRENGTH[registry.confirm] < STRENGTH[before.confirm])
      out.push(`registry ${registry.name}: confirm "${before.confirm}" → "${registry.confirm}"`)
    if (FORWARDED_STRENGTH[registry.forwarded] < FORWARDED_STRENGTH[before.forwarded])
      out.push(`registry ${registry.name}: forwarded "${before.forwarded}" → "${registry.forwarded}"`)
    if (!sameKey(before.mutationKey, registry.mutationKey) && registry.confirm !== 'touch')
      out.push(`registry ${registry.name}: mutation key changed to ${describe(registry.mutationKey)}`)
  }
  return out
}

function describe(key: KeyRef): string {
  return [key.token, key.label, key.id].filter((v) => v !== undefined).join('/')
}
