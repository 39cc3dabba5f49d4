/**
 * One `Device` per configured token, created on first use and kept (its sessions are the agent's
 * whole point: the PIN is entered once, not once per cargo process).
 */
import {
  effectiveConfirm,
  isPivToken,
  type Config,
  type EffectiveConfirm,
  type KeyRef,
  type MutationKeyTouch,
  type TokenConfig,
} from '../config/schema.js'
import { AgentError, toAgentError } from '../lib/errors.js'
import type { Pin } from '../lib/secret.js'
import { pkcs11Signer } from '../signer/pkcs11.js'
import type { Signer } from '../signer/signer.js'
import { Device, type DeviceEvent } from '../pkcs11/device.js'
import { applyModuleEnvironment, resolveModulePath } from '../pkcs11/modules.js'
import {
  attestedKeyName,
  pivAttestationObjects,
  readAttestation,
  type AttestedKey,
} from '../verify/attestation.js'

export function describeKey(token: TokenConfig, ref: KeyRef): string {
  const parts = [
    ref.label === undefined ? undefined : `label "${ref.label}"`,
    ref.id === undefined ? undefined : `id ${ref.id}`,
  ].filter((p) => p !== undefined)
  return `key ${parts.join(' ')} on token "${token.name}"`
}

export class Devices {
  readonly #devices = new Map<string, Device>()
  readonly #cachedPin: (token: TokenConfig) => Pin | undefined
  readonly #onEvent: (token: TokenConfig, event: DeviceEvent) => void
  #config: Config

  constructor(
    config: Config,
    cachedPin: (token: TokenConfig) => Pin | undefined,
    onEvent: (token: TokenConfig, event: DeviceEvent) => void = () => {},
  ) {
    this.#config = config
    this.#cachedPin = cachedPin
    this.#onEvent = onEvent
  }

  get(token: TokenConfig): Device {
    let device = this.#devices.get(token.name)
    if (device === undefined) {
      applyModuleEnvironment(token.moduleEnv)
      // Device resolves known module names itself; resolving here surfaces a bad name before any session.
      try {
        resolveModulePath(token.module)
      } catch (error) {
        throw toAgentError(error, 'MODULE_LOAD_FAILED')
      }
      device = new Device(token, {
        cachedPin: () => this.#cachedPin(token),
        onEvent: (event) => this.#onEvent(token, event),
      })
      this.#devices.set(token.name, device)
    }
    return device
  }

  /** The device of an existing token name (status, login, keygen). */
  byName(name: string): { token: TokenConfig; device: Device } {
    const token = this.#config.tokens[name]
    if (token === undefined) {
      throw new AgentError('CONFIG_INVALID', `No token named "${name}" is configured`, {
        remedy: `Add [tokens.${name}] to ${this.#config.path ?? 'the agent config'}`,
      })
    }
    return { token, device: this.get(token) }
  }

  async signer(token: TokenConfig, ref: KeyRef): Promise<Signer> {
    return await pkcs11Signer(this.get(token), ref)
  }

  /**
   * The PIN and touch policy the card attests for a bound key (ykcs11 exposes each slot's
   * attestation as a certificate object with the key's CKA_ID); undefined when the module shows
   * no attestation for it. Needs no PIN.
   */
  async keyPolicies(token: TokenConfig, ref: KeyRef): Promise<AttestedKey | undefined> {
    const device = this.get(token)
    const key = await device.findKey(ref)
    const objects = pivAttestationObjects(await device.certificates(), key.id)
    return objects === undefined ? undefined : readAttestation(objects.attestation)
  }

  /**
   * Each registry's `confirm` as it will apply (src/config/schema.ts `effectiveConfirm`), from the
   * touch policy its mutation key attests: an unset `confirm` on a touch always/cached key is
   * `touch`. `confirm = "touch"` on a touch-never key would confirm nothing: a configuration error
   * with the fix (docs/configuration.md, `confirm`). Only PIV tokens are opened; `unread` lists
   * the keys whose policy could not be read (device absent, no such key); `warnings`, each
   * `confirm = "touch"` on a key that attests no touch (the agent cannot check it, so it is
   * honoured with a warning, not refused: docs/policy.md, "Touch the agent cannot check").
   */
  async resolveConfirms(): Promise<{
    confirms: Map<string, EffectiveConfirm>
    errors: AgentError[]
    unread: string[]
    warnings: string[]
  }> {
    const confirms = new Map<string, EffectiveConfirm>()
    const errors: AgentError[] = []
    const unread: string[] = []
    for (const registry of Object.values(this.#config.registries)) {
      const token = this.#config.tokens[registry.mutationKey.token]
      // Only PIV cards attest policies; other tokens are not opened before a client asks.
      if (token === undefined || !isPivToken(token)) {
        confirms.set(registry.name, effectiveConfirm(registry))
        continue
      }
      let touch: MutationKeyTouch
      try {
        const attested = await this.keyPolicies(token, registry.mutationKey)
        touch = {
          key:
            (attested === undefined ? undefined : attestedKeyName(attested)) ??
            describeKey(token, registry.mutationKey),
          touchPolicy: attested?.touchPolicy,
        }
      } catch (error) {
        const message = toAgentError(error).message
        unread.push(`${describeKey(token, registry.mutationKey)}: ${message}`)
        touch = { key: describeKey(token, registry.mutationKey), unread: message }
      }
      confirms.set(registry.name, effectiveConfirm(registry, touch))
      if (registry.confirm === 'touch' && 'touchPolicy' in touch && touch.touchPolicy === 'never') {
        errors.push(
          new AgentError(
            'KEY_POLICY_MISMATCH',
            `registry "${registry.name}" has confirm = "touch" but its mutation ${describeKey(token, registry.mutationKey)} has touch policy "never": a touch would confirm nothing`,
            {
              remedy: `Generate the key with a touch policy (cargo-pkcs11-agent setup --regenerate-key --touch-policy always), or set confirm = "prompt" in [registries.${registry.name}] of ${this.#config.path ?? 'the agent config'}`,
              data: { registry: registry.name, touchPolicy: 'never' },
            },
          ),
        )
      }
    }
    const warnings = [...confirms.values()].flatMap((c) => (c.warning === undefined ? [] : [c.warning]))
    return { confirms, errors, unread, warnings }
  }

  /** Closes every session (`release`, SIGHUP, shutdown) so other programs can use the devices. */
  async releaseAll(): Promise<number> {
    let n = 0
    for (const device of this.#devices.values()) {
      try {
        await device.release()
        n += 1
      } catch {
        // a device that fails to release is dropped anyway
      }
    }
    return n
  }

  /** SIGHUP: devices are rebuilt from the new config on next use. */
  async reset(config: Config): Promise<void> {
    await this.releaseAll()
    this.#devices.clear()
    this.#config = config
  }
}
