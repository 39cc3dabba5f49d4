/**
 * `cargo-pkcs11-agent doctor [--config FILE] [--socket PATH] [--json]`
 *
 * Explains what is wrong, one check per line, each failure with the fix. Checks run in pipeline order
 * (config → modules → tokens → agent → cargo) and never change anything: no login, no key generation.
 * Exit 0 when nothing failed (warnings allowed), 1 otherwise.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'

import { callAgent } from '../protocol/client.js'
import { loadConfig, parseToml } from '../config/load.js'
import { resolveConfigPath, resolveSocketPath } from '../config/paths.js'
import {
  effectiveConfirm,
  isPivToken,
  type Config,
  type RegistryConfig,
  type TokenConfig,
} from '../config/schema.js'
import { toAgentError } from '../lib/errors.js'
import { loadAddon } from '../lib/peercred.js'
import { DEFAULT_POLICY_CONFIG } from '../policy/config.js'
import { applyModuleEnvironment, resolveModulePath } from '../pkcs11/modules.js'
import {
  attestedKeyName,
  pivAttestationObjects,
  readAttestation,
  type AttestedKey,
} from '../verify/attestation.js'
import { parseCommandArgs, USAGE } from './args.js'
import { nativeBindingError, nativeBindingMissing } from './native.js'
import { cargoHome, findProgram, installedShimPath } from './setup/cargo-config.js'

type Level = 'ok' | 'warn' | 'fail'

interface Finding {
  readonly level: Level
  readonly check: string
  readonly detail: string
  readonly remedy?: string
}

/** cargo ≥ 1.74 speaks the credential-provider protocol (stabilised in 1.74, cargo's unstable.md). */
const MIN_CARGO = [1, 74] as const

function finding(level: Level, check: string, detail: string, remedy?: string): Finding {
  return remedy === undefined ? { level, check, detail } : { level, check, detail, remedy }
}

function fromError(check: string, error: unknown): Finding {
  const e = toAgentError(error)
  return finding('fail', check, `${e.code}: ${e.message}`, e.remedy)
}

function checkNode(): Finding {
  const major = Number(process.versions.node.split('.')[0])
  return major >= 20
    ? finding('ok', 'node', `Node.js ${process.versions.node}`)
    : finding('fail', 'node', `Node.js ${process.versions.node} is too old`, 'Install Node.js 20 or newer')
}

/** The agent asks the kernel who connects through this addon (docs/agent-protocol.md); without it, it cannot start. */
function checkPeercred(): Finding {
  try {
    loadAddon()
    return finding('ok', 'peercred addon', 'loaded (peer credentials of socket clients)')
  } catch (error) {
    return fromError('peercred addon', error)
  }
}

function checkConfig(path: string): { config?: Config; findings: Finding[] } {
  if (!existsSync(path)) {
    return {
      findings: [
        finding(
          'fail',
          'config',
          `no configuration at ${path}`,
          'Run `cargo-pkcs11-agent setup` to create one (see docs/configuration.md)',
        ),
      ],
    }
  }
  try {
    const config = loadConfig(path)
    const tokens = Object.keys(config.tokens).length
    const registries = Object.keys(config.registries).length
    const findings = [
      finding(
        'ok',
        'config',
        `${path}: ${tokens} token(s), ${registries} registr${registries === 1 ? 'y' : 'ies'}`,
      ),
    ]
    if (registries === 0) {
      findings.push(
        finding(
          'warn',
          'config',
          'no registry is bound, so the agent signs nothing',
          'Add a [registries.NAME] table',
        ),
      )
    }
    return { config, findings }
  } catch (error) {
    return { findings: [fromError('config', error)] }
  }
}

/** Module-specific environment that the modules themselves only report as CKR_GENERAL_ERROR. */
function checkModuleEnvironment(token: TokenConfig, modulePath: string): Finding[] {
  const problems: (readonly [detail: string, remedy: string])[] = []
  if (modulePath.includes('softhsm')) {
    const conf = process.env['SOFTHSM2_CONF'] ?? '/etc/softhsm/softhsm2.conf'
    const dir = existsSync(conf)
      ? /^\s*directories\.tokendir\s*=\s*(.+?)\s*$/m.exec(readFileSync(conf, 'utf8'))?.[1]
      : undefined
    if (!existsSync(conf))
      problems.push([
        `SoftHSM configuration ${conf} does not exist`,
        'Set SOFTHSM2_CONF to your softhsm2.conf, or run `cargo-pkcs11-agent setup`',
      ])
    else if (dir !== undefined && !existsSync(dir))
      problems.push([
        `SoftHSM token directory ${dir} (from ${conf}) does not exist`,
        `Create it (mkdir -p ${dir}) or fix directories.tokendir`,
      ])
  }
  const socket = process.env['PCSCLITE_CSOCK_NAME'] ?? '/run/pcscd/pcscd.comm'
  if ((modulePath.includes('ykcs11') || modulePath.includes('opensc')) && !existsSync(socket))
    problems.push([
      `the PC/SC daemon is not running (no ${socket})`,
      'Start it: `systemctl start pcscd.socket` (Debian package pcscd)',
    ])
  if (
    modulePath.includes('tpm2') &&
    process.env['TPM2_PKCS11_TCTI'] === undefined &&
    !existsSync('/dev/tpmrm0')
  )
    problems.push([
      'no TPM: /dev/tpmrm0 is missing and TPM2_PKCS11_TCTI is not set',
      'Enable the TPM in firmware, or point TPM2_PKCS11_TCTI at a TPM (e.g. swtpm)',
    ])
  return problems.map(([detail, remedy]) => finding('fail', `token ${token.name}`, detail, remedy))
}

/** What the agent refuses at request time but a config file cannot show: PIN files, pinentry, headless prompts. */
function checkSettings(config: Config): Finding[] {
  const findings: Finding[] = []
  const fail = (check: string, detail: string, remedy: string): void =>
    void findings.push(finding('fail', check, detail, remedy))
  for (const token of Object.values(config.tokens)) {
    const check = `token ${token.name}`
    if (token.pinSource === 'file' && token.pinFile !== undefined) {
      let mode: number | undefined
      try {
        mode = statSync(token.pinFile).mode & 0o777
      } catch (error) {
        fail(
          check,
          `PIN file ${token.pinFile} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`,
          `Create ${token.pinFile} containing only the PIN, readable by you only (chmod 600 ${token.pinFile})`,
        )
      }
      // The agent refuses a PIN file others can read (src/lib/pin-file.ts), so every request would fail.
      if (mode !== undefined && (mode & 0o077) !== 0)
        fail(
          check,
          `PIN file ${token.pinFile} has mode ${mode.toString(8)}: other users can read it, and the agent refuses it`,
          `chmod 600 ${token.pinFile}`,
        )
    }
    if (token.pinSource === 'pinentry') {
      const program = token.pinentryProgram ?? DEFAULT_POLICY_CONFIG.pinentryProgram
      const found = findProgram(program)
      if (found !== undefined) findings.push(finding('ok', check, `pinentry: ${found}`))
      else
        fail(
          check,
          `pin-source = "pinentry" but ${program} is not ${program.includes('/') ? 'an executable' : 'on PATH'}`,
          'Install a pinentry (Debian: pinentry-gnome3 or pinentry-tty; macOS: brew install pinentry-mac) or set pinentry-program',
        )
    }
  }
  if (config.agent.headless) {
    for (const [name, registry] of Object.entries(config.registries)) {
      // An unset confirm on a PIV key depends on its touch policy: checkTokens judges it once read.
      const token = config.tokens[registry.mutationKey.token]
      const mode =
        registry.confirm ??
        (token !== undefined && isPivToken(token) ? undefined : effectiveConfirm(registry).mode)
      if (mode === 'prompt')
        fail(
          `registry ${name}`,
          `confirm = "prompt"${registry.confirm === undefined ? ' (the default)' : ''} on a headless agent: nobody can confirm, so every publish, yank and owner change is refused`,
          `Set confirm = "none" (CI) for [registries.${name}], use a mutation key with a touch policy and confirm = "touch", or headless = false`,
        )
    }
  }
  return findings
}

/** The mutation key's `confirm` as the agent will apply it, and why (src/config/schema.ts `effectiveConfirm`). */
function confirmFinding(
  config: Config,
  registry: RegistryConfig,
  label: string,
  attested: AttestedKey | undefined,
): Finding {
  const key = (attested === undefined ? undefined : attestedKeyName(attested)) ?? `key '${label}'`
  const effective = effectiveConfirm(registry, { key, touchPolicy: attested?.touchPolicy })
  if (
    config.agent.headless &&
    registry.confirm === undefined &&
    effective.mode === 'prompt' &&
    attested !== undefined
  )
    return finding(
      'fail',
      `registry ${registry.name}`,
      `confirm ${effective.reason}, on a headless agent: nobody can confirm, so every publish, yank and owner change is refused`,
      `Set confirm = "none" (CI) for [registries.${registry.name}], use a key with a touch policy, or headless = false`,
    )
  // touch never is a failure of its own (checkTokens); no attested touch at all is only a warning,
  // as at the agent's start: the device may well ask (docs/policy.md, "Touch the agent cannot check").
  if (effective.warning !== undefined && attested?.touchPolicy !== 'never')
    return finding(
      'warn',
      `registry ${registry.name}`,
      effective.warning,
      `Use a mutation key with a touch policy (cargo-pkcs11-agent setup --regenerate-key --touch-policy always on a YubiKey), or set confirm = "prompt" in [registries.${registry.name}]`,
    )
  return finding('ok', `registry ${registry.name}`, `confirm ${effective.reason}`)
}

async function checkTokens(config: Config): Promise<Finding[]> {
  // Loaded only here: the device layer pulls in the native pkcs11js binding.
  const missing = nativeBindingMissing()
  if (missing !== undefined) return [finding('fail', 'native binding', missing.message, missing.remedy)]
  let device: typeof import('../pkcs11/device.js')
  try {
    device = await import('../pkcs11/device.js')
  } catch (error) {
    const e = nativeBindingError(error) ?? toAgentError(error)
    return [finding('fail', 'native binding', e.message, e.remedy)]
  }
  const { Device } = device
  const findings: Finding[] = [finding('ok', 'native binding', 'pkcs11js loaded')]
  for (const token of Object.values(config.tokens)) {
    const check = `token ${token.name}`
    let modulePath: string
    try {
      modulePath = resolveModulePath(token.module)
    } catch (error) {
      findings.push(fromError(check, error))
      continue
    }
    // The agent sets the token's module-env before loading its module; check what it will see.
    applyModuleEnvironment(token.moduleEnv)
    const environment = checkModuleEnvironment(token, modulePath)
    findings.push(...environment)
    if (environment.some((f) => f.level === 'fail')) continue
    const device = new Device(token)
    try {
      const status = await device.status()
      if (!status.present) {
        findings.push(finding('fail', check, `${device.describe()} is not present`, device.absentRemedy()))
        continue
      }
      if (status.pinLocked) {
        findings.push(
          finding(
            'fail',
            check,
            `${device.describe()}: the user PIN is locked`,
            'Unblock it with the SO PIN / PUK (e.g. `ykman piv access unblock-pin`)',
          ),
        )
      } else if (status.pinFinalTry || status.pinCountLow) {
        findings.push(
          finding(
            'warn',
            check,
            `${device.describe()}: ${status.pinFinalTry ? 'one PIN try left' : 'PIN tries are running low'}`,
            'Enter the PIN carefully; the agent never retries a wrong PIN',
          ),
        )
      } else {
        findings.push(finding('ok', check, `${device.describe()} present`))
      }
      for (const [name, registry] of Object.entries(config.registries)) {
        for (const [role, ref] of [
          ['read', registry.readKey],
          ['mutation', registry.mutationKey],
        ] as const) {
          if (ref.token !== token.name) continue
          try {
            const key = await device.findKey(ref)
            const { k3Pid } = await import('../keys/paserk.js')
            const exportable = key.extractable || !key.sensitive
            const objects = pivAttestationObjects(await device.certificates(), key.id)
            const attested = objects === undefined ? undefined : readAttestation(objects.attestation)
            if (role === 'mutation') findings.push(confirmFinding(config, registry, key.label, attested))
            const policies =
              attested === undefined
                ? ''
                : ` (card reports PIN policy ${attested.pinPolicy ?? 'unknown'}, touch policy ${attested.touchPolicy ?? 'unknown'})`
            if (role === 'mutation' && registry.confirm === 'touch' && attested?.touchPolicy === 'never') {
              findings.push(
                finding(
                  'fail',
                  `registry ${name}`,
                  `KEY_POLICY_MISMATCH: confirm = "touch" but the mutation key ${k3Pid(key.publicKey)} has touch policy "never": a touch would confirm nothing, and the agent refuses to start`,
                  `Generate the key with a touch policy (cargo-pkcs11-agent setup --regenerate-key --touch-policy always), or set confirm = "prompt" in [registries.${name}]`,
                ),
              )
              continue
            }
            findings.push(
              finding(
                exportable ? 'warn' : 'ok',
                `registry ${name}`,
                `${role} key '${key.label}' ${k3Pid(key.publicKey)}${policies}${exportable ? ' is EXTRACTABLE or not sensitive' : ''}`,
                exportable
                  ? 'Generate a new key on the device with `cargo-pkcs11-agent keygen` (keys made there are non-extractable)'
                  : undefined,
              ),
            )
          } catch (error) {
            findings.push(fromError(`registry ${name}`, error))
          }
        }
      }
    } catch (error) {
      findings.push(fromError(check, error))
    } finally {
      await device.release().catch(() => undefined)
    }
  }
  return findings
}

async function checkAgent(socket: string): Promise<Finding> {
  try {
    const status = await callAgent(socket, 'status')
    return finding('ok', 'agent', `running (pid ${String(status['pid'])}) on ${socket}`)
  } catch (error) {
    const e = toAgentError(error)
    const mode = existsSync(socket) ? ` (socket mode ${(statSync(socket).mode & 0o777).toString(8)})` : ''
    return finding(
      'warn',
      'agent',
      `not reachable on ${socket}${mode}: ${e.message}`,
      'It starts on demand from the shim; or run `cargo-pkcs11-agent run` / `install-service`',
    )
  }
}

/** A credential provider in cargo's config: where it is named and, for a registry's table, its index. */
interface Provider {
  readonly where: string
  readonly program: string
  readonly index?: unknown
}

/** credential-provider values in cargo's config: a string (split on spaces) or an array, program first. */
function providerProgram(value: unknown): string | undefined {
  const words =
    typeof value === 'string' ? value.split(' ').filter((w) => w !== '') : Array.isArray(value) ? value : []
  const program = words[0]
  return typeof program === 'string' ? program : undefined
}

/**
 * The providers of ours (found by program name) in $CARGO_HOME/config.toml: parsed once, for the
 * binding and the provider checks.
 */
function readCargoConfig(path: string): Provider[] | Finding {
  if (!existsSync(path)) return []
  let doc: Record<string, unknown>
  try {
    doc = parseToml(
      readFileSync(path, 'utf8'),
      path,
      'Fix the TOML syntax (cargo itself will refuse this file)',
    )
  } catch (error) {
    return fromError('cargo config', error)
  }
  const providers: Provider[] = []
  const registries = (doc['registries'] ?? {}) as Record<string, Record<string, unknown>>
  for (const [name, table] of Object.entries(registries)) {
    const program = providerProgram(table['credential-provider'])
    if (program !== undefined) providers.push({ where: `registries.${name}`, program, index: table['index'] })
  }
  const globals = ((doc['registry'] ?? {}) as Record<string, unknown>)['global-credential-providers']
  if (Array.isArray(globals))
    for (const entry of globals) {
      const program = providerProgram(entry)
      if (program !== undefined) providers.push({ where: 'registry.global-credential-providers', program })
    }
  return providers.filter((p) => /cargo-credential-pkcs11(\.js)?$/.test(p.program))
}

function checkCargo(): Finding {
  const result = spawnSync('cargo', ['--version'], { encoding: 'utf8', timeout: 10_000 })
  if (result.status !== 0) {
    return finding(
      'warn',
      'cargo',
      'cargo is not on PATH',
      'Install Rust with rustup (cargo ≥ 1.74 is needed for credential providers)',
    )
  }
  // No version in the output counts as too old.
  const [major = 0, minor = 0] = /cargo (\d+)\.(\d+)/.exec(result.stdout)?.slice(1).map(Number) ?? []
  if (major < MIN_CARGO[0] || (major === MIN_CARGO[0] && minor < MIN_CARGO[1])) {
    return finding(
      'fail',
      'cargo',
      `${result.stdout.trim()} is older than 1.74 and has no credential providers`,
      'Update with `rustup update stable`',
    )
  }
  return finding('ok', 'cargo', result.stdout.trim())
}

/** Each configured registry's binding to our shim in cargo's config. */
function checkBindings(config: Config, cargoConfig: string, ours: readonly Provider[]): Finding[] {
  return Object.entries(config.registries).map(([name, registry]) =>
    // cargo merges configs from several places (cwd/.cargo too), so a miss is a warning; a global
    // provider of ours serves every registry.
    ours.some((p) => p.index === undefined || p.index === registry.index)
      ? finding('ok', `registry ${name}`, `${cargoConfig} uses cargo-credential-pkcs11 for ${registry.index}`)
      : finding(
          'warn',
          `registry ${name}`,
          `${cargoConfig} does not bind ${registry.index} to cargo-credential-pkcs11`,
          `Add to ${cargoConfig}: [registries.${name}] index = "${registry.index}" credential-provider = ["cargo-credential-pkcs11"]`,
        ),
  )
}

/**
 * Starts a credential provider as cargo does (`PROGRAM --cargo-plugin`, credential protocol v1) and
 * reads its hello; closing stdin then makes it exit. Resolves to what went wrong, or undefined.
 */
export function helloCheck(program: string, timeoutMs = 10_000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const child = spawn(program, ['--cargo-plugin'], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    let done = false
    const finish = (problem: string | undefined): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      child.stdin.end()
      resolve(problem)
    }
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      finish(`no hello within ${timeoutMs} ms`)
    }, timeoutMs)
    child.on('error', (error) => finish(error.message))
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString('utf8')))
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8')
      const newline = out.indexOf('\n')
      if (newline === -1) return
      const line = out.slice(0, newline)
      try {
        const hello = JSON.parse(line) as { v?: unknown }
        finish(Array.isArray(hello.v) && hello.v.includes(1) ? undefined : `unexpected hello ${line}`)
      } catch {
        finish(`unexpected first line ${JSON.stringify(line.slice(0, 200))}`)
      }
    })
    child.on('exit', (code) =>
      finish(
        `exited (status ${String(code)}) before its hello${err.trim() === '' ? '' : `: ${err.trim().slice(0, 300)}`}`,
      ),
    )
  })
}

/** Every credential provider of ours in cargo's config starts as cargo runs it. */
async function checkProviders(cargoConfig: string, ours: readonly Provider[]): Promise<Finding[]> {
  const findings: Finding[] = []
  for (const { where, program } of ours) {
    const check = `cargo ${where}`
    const found = findProgram(program)
    if (found === undefined) {
      findings.push(
        finding(
          'fail',
          check,
          `credential-provider ${program} ${program.includes('/') ? 'does not exist or is not executable' : 'is not on PATH'}`,
          `Point credential-provider in ${cargoConfig} at the installed shim (\`cargo-credential-pkcs11\` when it is on PATH), or run \`cargo-pkcs11-agent setup --write-cargo-config\``,
        ),
      )
      continue
    }
    const problem = await helloCheck(found)
    findings.push(
      problem === undefined
        ? finding('ok', check, `${found} answers (credential protocol v1)`)
        : finding(
            'fail',
            check,
            `${found} cannot start as cargo runs it: ${problem}`,
            'Reinstall cargo-pkcs11-agent (the shim must be executable and find Node.js: `#!/usr/bin/env node`)',
          ),
    )
  }
  if (ours.length === 0) {
    // Not bound yet: still check that the shim this installation ships (as setup binds it) can start.
    const shim = installedShimPath()
    const problem = existsSync(shim) ? await helloCheck(shim) : `${shim} is missing`
    findings.push(
      problem === undefined
        ? finding('ok', 'shim', `${shim} answers (credential protocol v1)`)
        : finding('fail', 'shim', `${shim} cannot start: ${problem}`, 'Reinstall cargo-pkcs11-agent'),
    )
  }
  return findings
}

export async function doctor(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    { config: { type: 'string' }, socket: { type: 'string' }, json: { type: 'boolean' } },
    USAGE.doctor,
  )
  const configPath = resolveConfigPath(values.config).path
  const findings: Finding[] = [checkNode(), checkPeercred()]
  const { config, findings: configFindings } = checkConfig(configPath)
  findings.push(...configFindings)
  if (config !== undefined) findings.push(...checkSettings(config), ...(await checkTokens(config)))
  findings.push(await checkAgent(resolveSocketPath(values.socket, config?.agent.socket).path))
  findings.push(checkCargo())
  const cargoConfig = join(cargoHome(), 'config.toml')
  const ours = readCargoConfig(cargoConfig)
  if (!Array.isArray(ours)) findings.push(ours)
  else {
    if (config !== undefined) findings.push(...checkBindings(config, cargoConfig, ours))
    findings.push(...(await checkProviders(cargoConfig, ours)))
  }

  if (values.json === true) {
    process.stdout.write(JSON.stringify(findings, null, 2) + '\n')
  } else {
    for (const f of findings) {
      process.stdout.write(`${f.level.padEnd(4)}  ${f.check}: ${f.detail}\n`)
      if (f.remedy !== undefined && f.level !== 'ok') process.stdout.write(`      → ${f.remedy}\n`)
    }
  }
  return findings.some((f) => f.level === 'fail') ? 1 : 0
}
