/**
 * Initialising a token through PKCS#11 itself (C_InitToken, then C_InitPIN as the security
 * officer; PKCS#11 v2.40 §5.6), so that `setup` needs no vendor tool such as pkcs11-tool for its
 * private SoftHSM store. Tokens are found by label after each step: SoftHSM moves an initialised
 * token to a new slot id (docs/configuration.md, `[tokens.NAME]`).
 */
import { AgentError } from '../lib/errors.js'
import type { Pin } from '../lib/secret.js'
import { Pkcs11Module, type Handle, type TokenInfo } from './binding.js'
import { resolveModulePath } from './modules.js'

export type TokenState = 'absent' | 'no-user-pin' | 'ready'

function find(mod: Pkcs11Module, test: (info: TokenInfo) => boolean): Handle | undefined {
  return mod.slotsWithToken().find((slot) => test(mod.tokenInfo(slot)))
}

function labelled(label: string): (info: TokenInfo) => boolean {
  return (info) => info.tokenInitialized && info.label === label
}

/** Whether the module has an initialised token with this label, and whether its user PIN is set. */
export function tokenState(moduleNameOrPath: string, label: string): TokenState {
  const mod = Pkcs11Module.load(resolveModulePath(moduleNameOrPath))
  const slot = find(mod, labelled(label))
  if (slot === undefined) return 'absent'
  return mod.tokenInfo(slot).userPinInitialized ? 'ready' : 'no-user-pin'
}

/**
 * Brings the token labelled `label` to 'ready': initialises a free (uninitialised) token with that
 * label and SO PIN if there is none, then sets the user PIN if it is not set.
 */
export function initializeToken(moduleNameOrPath: string, label: string, soPin: Pin, pin: Pin): void {
  const mod = Pkcs11Module.load(resolveModulePath(moduleNameOrPath))
  const where = `${mod.name}, token '${label}'`
  if (find(mod, labelled(label)) === undefined) {
    const free = find(mod, (info) => !info.tokenInitialized)
    if (free === undefined)
      throw new AgentError('DEVICE_ERROR', `${mod.name} has no uninitialised token to set up as '${label}'`, {
        remedy: 'Check the module configuration (for SoftHSM: its token directory), then run setup again',
        data: { module: mod.path },
      })
    mod.initToken(free, soPin, label, where)
  }
  const slot = find(mod, labelled(label))
  if (slot === undefined)
    throw new AgentError('DEVICE_ERROR', `${where}: the token is not listed after C_InitToken`, {
      remedy: 'Run `cargo-pkcs11-agent doctor`, then run setup again',
      data: { module: mod.path },
    })
  if (!mod.tokenInfo(slot).userPinInitialized) mod.initUserPin(slot, soPin, pin, where)
}
