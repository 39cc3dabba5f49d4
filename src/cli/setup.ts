/**
 * `cargo-pkcs11-agent setup`: first run in one command. Finds a token (the configured one, one given
 * by flags, or a private SoftHSM store under $XDG_DATA_HOME when no hardware is configured),
 * generates or reuses a P-384 key on it, prints the k3.public / k3.pid to register, writes the agent
 * config and prints (or writes) the cargo config snippet. `--force` rewrites differing config
 * settings; it never destroys a key: that takes `--regenerate-key` and a confirmation naming the
 * k3.pid that stops working. On a YubiKey (`--module ykcs11`) it generates a mutation key (9c, touch
 * always) and a read key (9a, touch never) on the card (src/cli/setup/yubikey.ts). The steps live in
 * src/cli/setup/.
 */
import { resolveConfigPath } from '../config/paths.js'
import { effectiveConfirm, type TokenConfig } from '../config/schema.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import { AgentError } from '../lib/errors.js'
import type { Pin } from '../lib/secret.js'
import { pinSource, tokenDescription } from '../agent/policy-config.js'
import { Device } from '../pkcs11/device.js'
import type { DeviceKey } from '../pkcs11/key-catalogue.js'
import {
  generateInPivSlot,
  moduleInfo,
  pivKeygenRoute,
  YKCS11_POLICY_ATTRIBUTES_SINCE,
  ykcs11Version,
} from '../pkcs11/keygen.js'
import { applyModuleEnvironment } from '../pkcs11/modules.js'
import { pem, PIN_POLICIES, TOUCH_POLICIES, type PinPolicy, type TouchPolicy } from '../verify/attestation.js'
import { oneOf, parseCommandArgs, USAGE, usageError, usageOptionSpecs } from './args.js'
import { obtainPin } from './device-target.js'
import { planAgentConfig, writeAgentConfig, type KeyBinding } from './setup/agent-config.js'
import { planCargoConfig } from './setup/cargo-config.js'
import { selfSignedCertificate } from './setup/certificate.js'
import { checkTokenPresent } from './setup/token-check.js'
import {
  attestSlot,
  chooseCard,
  confirmRegeneration,
  describeKey,
  generateInSlot,
  importCertificate,
  managementKey,
  YKCS11_SLOT_IDS,
  type Card,
  type SlotKey,
  type SlotPlan,
} from './setup/yubikey.js'

/** Finds the key on the device, or generates it (again, with --regenerate-key and a confirmation). */
async function ensureKey(
  token: TokenConfig,
  pin: Pin | null,
  keyLabel: string,
  keyId: string | undefined,
  regenerate: { wanted: boolean; confirm: string | undefined },
): Promise<{ key: DeviceKey; action: string }> {
  const device = new Device(token, { cachedPin: () => pin ?? undefined })
  try {
    if (await device.needsLogin()) await device.login(pin)
    const wanted = keyId === undefined ? { label: keyLabel } : { label: keyLabel, id: keyId }
    let found: DeviceKey | undefined
    try {
      found = await device.findKey(wanted)
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== 'KEY_NOT_FOUND') throw error
    }
    if (found !== undefined && !regenerate.wanted) return { key: found, action: 'reused' }
    if (found !== undefined)
      await confirmRegeneration(
        `key '${found.label}' on ${device.describe()}`,
        found.publicKey,
        regenerate.confirm,
      )
    const key = await device.generateKey(wanted, { force: found !== undefined })
    return { key, action: found === undefined ? 'generated' : 'regenerated (the old key was destroyed)' }
  } finally {
    await device.release()
    pin?.wipe()
  }
}

const isYubiKey = (module: string | undefined, kind: string | undefined): boolean =>
  kind === 'yubikey' || (module !== undefined && /ykcs11/i.test(module))

function policyFlag<T extends string>(
  value: string | undefined,
  allowed: readonly T[],
  flag: string,
  fallback: T,
): T {
  // `default` is the card's own default: only ever a fallback, never asked for by name.
  if (value === undefined) return fallback
  return oneOf(
    value,
    allowed.filter((a) => a !== 'default'),
    flag,
    USAGE.setup,
  )
}

/** The two slots and their policies from the flags (defaults: native-config/devices.md, "YubiKey: setup"). */
function slotPlans(str: (key: string) => string | undefined): SlotPlan[] {
  const read = str('read-slot') ?? '9a'
  const mutation = str('mutation-slot') ?? '9c'
  for (const slot of [read, mutation])
    if (YKCS11_SLOT_IDS[slot] === undefined)
      throw usageError(`unknown PIV slot '${slot}' (9a, 9c, 9d, 9e, 82-95)`, USAGE.setup)
  if (read === mutation) throw usageError('--read-slot and --mutation-slot must differ', USAGE.setup)
  return [
    { role: 'read', slot: read, pinPolicy: 'once', touchPolicy: 'never' },
    {
      role: 'mutation',
      slot: mutation,
      pinPolicy: policyFlag<PinPolicy>(str('pin-policy'), PIN_POLICIES, '--pin-policy', 'default'),
      touchPolicy: policyFlag<TouchPolicy>(str('touch-policy'), TOUCH_POLICIES, '--touch-policy', 'always'),
    },
  ]
}

/** The slot's self-signed certificate, signed on the card through ykcs11 (which sees keys without one). */
async function cardSelfSigned(
  card: Card,
  publicKey: Uint8Array,
  slot: string,
  pin: Pin | null,
): Promise<Buffer> {
  const device = new Device(
    { module: 'ykcs11', serial: String(card.serial) },
    { cachedPin: () => pin ?? undefined },
  )
  try {
    if (await device.needsLogin()) await device.login(pin)
    const key = await device.findKey({ id: YKCS11_SLOT_IDS[slot] })
    if (Buffer.compare(Buffer.from(key.publicKey), Buffer.from(publicKey)) !== 0)
      throw new AgentError('KEY_INVALID', `ykcs11 shows another key in slot ${slot} than the one generated`, {
        remedy: 'Run setup again; if it repeats, check for a second YubiKey with the same serial',
      })
    return await selfSignedCertificate(publicKey, `cargo-pkcs11-agent ${slot}`, (digest) =>
      device.signDigest(key, digest),
    )
  } finally {
    await device.release()
  }
}

/** Each planned slot: reused when it holds a key, else (or with a confirmed --regenerate-key) generated. */
async function ensureCardKeys(
  token: TokenConfig,
  card: Card,
  plans: readonly SlotPlan[],
  pin: Pin | null,
  options: {
    regenerate: boolean
    confirm: string | undefined
    keepDefault: boolean
    certificates: boolean
    env: string[]
    say: (l: string) => void
  },
): Promise<{ key: SlotKey; role: string; action: string }[]> {
  const device = new Device(token)
  let present: DeviceKey[]
  try {
    present = await device.listKeys()
  } finally {
    await device.release()
  }
  let mgmt: Awaited<ReturnType<typeof managementKey>> | undefined
  // ykcs11 ≥ 2.3 generates with the policies itself; older ones only through yubico-piv-tool.
  const info = moduleInfo(token.module)
  const route = pivKeygenRoute(info)
  const through =
    route === 'pkcs11'
      ? `through PKCS#11 (ykcs11 ${ykcs11Version(info)}: C_GenerateKeyPair with CKA_YUBICO_PIN_POLICY / CKA_YUBICO_TOUCH_POLICY)`
      : `through yubico-piv-tool (ykcs11 ${ykcs11Version(info)} takes no PIN/touch policy attributes; ${ykcs11Version({ ...info, version: YKCS11_POLICY_ATTRIBUTES_SINCE })} and later do)`
  const out: { key: SlotKey; role: string; action: string }[] = []
  for (const plan of plans) {
    const onCard = present.find((k) => k.id === YKCS11_SLOT_IDS[plan.slot])
    const attested = await attestSlot(card, plan.slot, options.env)
    const existing =
      attested ?? (onCard === undefined ? undefined : { slot: plan.slot, publicKey: onCard.publicKey })
    if (existing !== undefined && !options.regenerate) {
      out.push({ key: existing, role: plan.role, action: 'reused' })
      continue
    }
    if (existing !== undefined)
      await confirmRegeneration(
        `slot ${plan.slot} of YubiKey ${card.serial}`,
        existing.publicKey,
        options.confirm,
      )
    mgmt ??= await managementKey(card, pin, {
      keepDefault: options.keepDefault,
      env: options.env,
      say: options.say,
      keygen: { module: token.module, route, ykcs11: ykcs11Version(info) },
    })
    options.say(`slot ${plan.slot}: generating a P-384 key ${through}`)
    if (route === 'pkcs11')
      generateInPivSlot(token.module, String(card.serial), {
        id: Buffer.from(YKCS11_SLOT_IDS[plan.slot] as string, 'hex'),
        pinPolicy: plan.pinPolicy,
        touchPolicy: plan.touchPolicy,
        managementKey: mgmt,
      })
    else await generateInSlot(card, mgmt, plan, options.env)
    const made = await attestSlot(card, plan.slot, options.env)
    if (made === undefined)
      throw new AgentError(
        'DEVICE_ERROR',
        `YubiKey ${card.serial} generated a key in slot ${plan.slot} but cannot attest it`,
        {
          remedy: 'Check the firmware (attestation needs a YubiKey 4.3 or later)',
        },
      )
    if (options.certificates) {
      options.say(
        `slot ${plan.slot}: the card signs a self-signed certificate for PIV clients that need one${plan.touchPolicy === 'never' ? '' : ' (touch the YubiKey when it blinks)'}`,
      )
      const der = await cardSelfSigned(card, made.publicKey, plan.slot, pin)
      await importCertificate(card, mgmt, plan.slot, pem(der), options.env)
    }
    out.push({
      key: made,
      role: plan.role,
      action: existing === undefined ? 'generated' : 'regenerated (the old key was destroyed)',
    })
  }
  return out
}

/**
 * Flags the chosen path would not use are refused, never dropped: without --module the token is the
 * configured one or the private SoftHSM store (whose PIN is in its file), and the YubiKey path names
 * its keys by slot.
 */
function refuseIgnoredFlags(given: (flag: string) => boolean, yubikey: boolean): void {
  const groups: [flags: string[], ignored: boolean, why: string][] = [
    [
      ['token-label', 'pin-source', 'pin-env', 'pin-file', ...(yubikey ? [] : ['serial', 'kind'])],
      !given('module'),
      'a token described by --module; without it setup uses the configured token (change its [tokens.NAME] by hand) or its private SoftHSM store, whose PIN is in a file',
    ],
    [
      'read-slot mutation-slot touch-policy pin-policy keep-default-management-key certificate'.split(' '),
      !yubikey,
      'a YubiKey (--module ykcs11)',
    ],
    [['confirm'], !given('registry'), 'a registry: give --registry and --index too'],
    [
      ['label', 'id'],
      yubikey,
      "a key on a PKCS#11 token; a YubiKey's keys are named by --read-slot / --mutation-slot",
    ],
  ]
  for (const [flags, ignored, why] of groups) {
    const used = flags.filter(given)
    if (ignored && used.length > 0)
      throw usageError(
        `${used.map((f) => `--${f}`).join(', ')} ${used.length === 1 ? 'is' : 'are'} only for ${why}`,
        USAGE.setup,
      )
  }
}

export async function setup(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, usageOptionSpecs(USAGE.setup), USAGE.setup)
  const flags = new Map<string, string>()
  for (const [k, v] of Object.entries(values)) if (typeof v === 'string') flags.set(k, v)
  const str = (key: string): string | undefined => flags.get(key)
  const force = values['force'] === true
  const regenerate = { wanted: values['regenerate-key'] === true, confirm: str('confirm-destroy') }
  const say = (line: string): void => {
    process.stderr.write(`cargo-pkcs11-agent setup: ${line}\n`)
  }
  const configPath = resolveConfigPath(str('config')).path
  const registryName = str('registry')
  const index = str('index')
  // The cargo config is read and checked before any key is made: a file setup would refuse creates nothing.
  const cargoConfig =
    registryName === undefined || index === undefined
      ? undefined
      : planCargoConfig(registryName, index, values['write-cargo-config'] === true, force)
  const yubikey = isYubiKey(str('module'), str('kind'))
  refuseIgnoredFlags((flag) => values[flag] !== undefined, yubikey)
  const secretEnv = str('pin-env') === undefined ? [] : [str('pin-env') as string]
  let card: Card | undefined
  let plans: SlotPlan[] = []
  let binding: KeyBinding | undefined
  if (yubikey) {
    plans = slotPlans(str)
    card = await chooseCard(str('serial'), secretEnv)
    flags.set('serial', String(card.serial))
    if (str('kind') === undefined) flags.set('kind', 'yubikey')
    const mutation = plans.find((p) => p.role === 'mutation') as SlotPlan
    binding = {
      readId: YKCS11_SLOT_IDS[plans[0]!.slot] as string,
      mutationId: YKCS11_SLOT_IDS[mutation.slot] as string,
      confirm: mutation.touchPolicy === 'never' ? 'prompt' : 'touch',
    }
  }
  const { doc, tokenName, token, config, moduleEnv } = await planAgentConfig(
    configPath,
    str,
    force,
    say,
    binding,
  )
  const registry = registryName === undefined ? undefined : config.registries[registryName]
  if (registry !== undefined) {
    const mutation = plans.find((p) => p.role === 'mutation')
    const confirm = effectiveConfirm(
      registry,
      mutation === undefined
        ? undefined
        : { key: `slot ${mutation.slot}`, touchPolicy: mutation.touchPolicy },
    )
    if (confirm.warning !== undefined) say(`warning: ${confirm.warning}`)
    // The agent runs headless under CI=true too ([agent] headless, docs/configuration.md).
    if (config.agent.headless && confirm.mode === 'prompt')
      say(
        `warning: confirm = "prompt" on a headless agent: nobody can confirm, so every publish, yank and owner change to ${registryName} is refused; run setup again with --confirm none (unattended CI) or --confirm touch (a key with a touch policy)`,
      )
  }

  applyModuleEnvironment(token.moduleEnv)
  await checkTokenPresent(token, str('module') !== undefined, configPath)
  const pin = await obtainPin(
    { pin: pinSource(token), secretEnvVariables: token.pinEnv === undefined ? [] : [token.pinEnv] },
    tokenDescription(token),
    'set up its key for cargo',
  )
  const out: string[] = []
  let agentBackup: string | undefined
  if (card !== undefined) {
    let keys
    try {
      keys = await ensureCardKeys(token, card, plans, pin, {
        regenerate: regenerate.wanted,
        confirm: regenerate.confirm,
        keepDefault: values['keep-default-management-key'] === true,
        // OpenSC finds PIV keys only through the slot certificate (native-config/devices.md).
        certificates: values['certificate'] === true || /opensc/i.test(token.module),
        env: [...secretEnv, ...(token.pinEnv === undefined ? [] : [token.pinEnv])],
        say,
      })
    } finally {
      pin?.wipe()
    }
    agentBackup = writeAgentConfig(configPath, doc)
    out.push(`YubiKey ${card.serial} (firmware ${card.firmware}) as token ${tokenName}:`)
    for (const { key, role, action } of keys) out.push(...describeKey(key, role, action))
    out.push('register both public keys with the registry (pubkey --attest exports the attestations)')
  } else {
    const { key, action } = await ensureKey(token, pin, str('label') ?? 'cargo', str('id'), regenerate)
    agentBackup = writeAgentConfig(configPath, doc)
    out.push(
      `key '${key.label}' (id ${key.id}) on token ${tokenName}: ${action}`,
      'register this public key with the registry:',
      k3Public(key.publicKey),
      k3Pid(key.publicKey),
    )
  }
  out.push(
    `agent config: ${configPath}${agentBackup === undefined ? '' : ` (the previous file is ${agentBackup})`}`,
  )
  if (moduleEnv.length > 0)
    out.push(
      `module-env of [tokens.${tokenName}]: ${moduleEnv.join(', ')} (from this environment, so an agent started without it finds the token)`,
    )
  if (cargoConfig !== undefined) {
    out.push(
      ...cargoConfig(),
      `then: cargo login --registry ${registryName}   (shows the same key), cargo publish --registry ${registryName}`,
    )
  } else {
    out.push(
      'bind a registry with: cargo-pkcs11-agent setup --registry NAME --index "sparse+https://registry.example/index/"',
    )
  }
  process.stdout.write(out.join('\n') + '\n')
  return 0
}
