/**
 * `cargo-pkcs11-agent list [target] [--login] [--json]`: the P-384 keys on a token, with their
 * `k3.public`. With `--module M` alone: every token on that module and its keys. Without `--login`
 * only what the token shows before a PIN (public key objects); `--login` asks for the PIN first.
 */
import { k3Pid, k3Public } from '../keys/paserk.js'
import { Device, listTokens } from '../pkcs11/device.js'
import type { DeviceKey } from '../pkcs11/key-catalogue.js'
import type { TokenSelector } from '../pkcs11/selector.js'
import { USAGE } from './args.js'
import { loginForCommand, parseTargetCommand } from './device-target.js'

interface KeyView {
  label: string
  id: string
  k3Public: string
  k3Pid: string
  alwaysAuthenticate: boolean
  extractable: boolean
  sensitive: boolean
}

function view(key: DeviceKey): KeyView {
  return {
    label: key.label,
    id: key.id,
    k3Public: k3Public(key.publicKey),
    k3Pid: k3Pid(key.publicKey),
    alwaysAuthenticate: key.alwaysAuthenticate,
    extractable: key.extractable,
    sensitive: key.sensitive,
  }
}

export async function list(argv: readonly string[]): Promise<number> {
  const { target, values } = parseTargetCommand(
    argv,
    { login: { type: 'boolean' }, json: { type: 'boolean' } },
    USAGE.list,
    { anyToken: true },
  )
  const { module, label, serial, manufacturer, model } = target.selector
  // `--module` alone: every token on that module.
  const selectors: TokenSelector[] = [label, serial, manufacturer, model].every((v) => v === undefined)
    ? (await listTokens(module)).map((t) => ({ module, label: t.label, serial: t.serial }))
    : [target.selector]
  // Before a login a token may hide its private objects (CKA_PRIVATE): their attributes are then unknown.
  const out: Array<{ token: string; privateObjectsVisible: boolean; keys: KeyView[] }> = []
  for (const selector of selectors) {
    const device = new Device(selector)
    try {
      if (values['login'] === true && (await device.needsLogin()))
        await loginForCommand(device, target, 'list its private keys')
      const hidden = await device.needsLogin()
      out.push({
        token: device.describe(),
        privateObjectsVisible: !hidden,
        keys: (await device.listKeys()).map(view),
      })
    } finally {
      await device.release()
    }
  }
  if (values['json'] === true) {
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
    return 0
  }
  const lines: string[] = []
  if (out.length === 0) lines.push(`no initialised token on ${module}`)
  for (const token of out) {
    lines.push(`${token.token}:`)
    if (token.keys.length === 0)
      lines.push('  no P-384 keys visible (try --login, or create one with `cargo-pkcs11-agent keygen`)')
    for (const k of token.keys) {
      const flags = token.privateObjectsVisible
        ? [k.extractable ? 'EXTRACTABLE' : 'not extractable', k.alwaysAuthenticate ? 'PIN per signature' : '']
            .filter((f) => f !== '')
            .join(', ')
        : 'private key attributes shown with --login'
      lines.push(`  '${k.label}' id ${k.id === '' ? '(none)' : k.id} (${flags})`, `    ${k.k3Public}`)
    }
  }
  process.stdout.write(`${lines.join('\n')}\n`)
  return 0
}
