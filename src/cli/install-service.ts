/**
 * `cargo-pkcs11-agent install-service [--config FILE] [--allow-network] [--dry-run] [--no-start] [--force]`
 * `cargo-pkcs11-agent uninstall-service [--dry-run] [--no-stop]`
 *
 * Installs the agent as a per-user service: a hardened systemd user unit on Linux, a launchd agent on
 * macOS (templates in native-config/service/). A service-managed agent starts at login, so the shim
 * never has to spawn one; `reload` (or `systemctl --user reload`) re-reads the config and wipes cached PINs.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

import { loadConfig } from '../config/load.js'
import { agentLogPath, configHome, dataDir, resolveConfigPath, stateDir } from '../config/paths.js'
import type { Config } from '../config/schema.js'
import { AgentError } from '../lib/errors.js'
import { packageFile, packageRoot } from '../lib/package-files.js'
import { parseCommandArgs, USAGE } from './args.js'

export type ServicePlatform = 'linux' | 'darwin'

interface ServicePlan {
  readonly template: string
  readonly target: string
  readonly start: readonly (readonly string[])[]
  readonly stop: readonly (readonly string[])[]
  readonly manager: string
}

const UNIT = 'cargo-pkcs11-agent.service'

function plan(platform: NodeJS.Platform): ServicePlan {
  if (platform === 'linux') {
    return {
      template: 'native-config/service/cargo-pkcs11-agent.service',
      target: join(configHome(), 'systemd', 'user', UNIT),
      start: [
        ['systemctl', '--user', 'daemon-reload'],
        ['systemctl', '--user', 'enable', '--now', UNIT],
      ],
      stop: [['systemctl', '--user', 'disable', '--now', UNIT]],
      manager: 'systemd (user)',
    }
  }
  if (platform === 'darwin') {
    const target = join(homedir(), 'Library', 'LaunchAgents', 'dev.cargo-pkcs11-agent.plist')
    const uid = typeof process.getuid === 'function' ? process.getuid() : 0
    return {
      template: 'native-config/service/dev.cargo-pkcs11-agent.plist',
      target,
      start: [['launchctl', 'bootstrap', `gui/${uid}`, target]],
      stop: [['launchctl', 'bootout', `gui/${uid}`, target]],
      manager: 'launchd',
    }
  }
  throw new AgentError('OPERATION_UNSUPPORTED', `There is no service manager support for ${platform}`, {
    remedy:
      'Start `cargo-pkcs11-agent run` from your session start-up instead; the shim also starts it on demand',
  })
}

/** Fills the template's @PLACEHOLDERS@ with values already escaped for the template's format. */
export function renderService(template: string, values: Readonly<Record<string, string>>): string {
  return template.replace(/@([A-Z]+)@/g, (whole, name: string) => {
    const value = values[name]
    if (value === undefined)
      throw new AgentError('INTERNAL', `service template placeholder ${whole} has no value`, {
        remedy:
          'The installed native-config/service template does not match this version; reinstall cargo-pkcs11-agent',
      })
    return value
  })
}

function noNewline(value: string): string {
  if (/[\n\r\0]/.test(value))
    throw new AgentError(
      'USAGE',
      `A path for the service contains a line break or NUL: ${JSON.stringify(value)}`,
      {
        remedy: 'Install cargo-pkcs11-agent, Node.js and the config under paths without control characters',
      },
    )
  return value
}

/**
 * One word of a systemd setting, double-quoted (systemd.syntax(7) "Quoting"): `\` and `"` escaped,
 * `%` doubled (systemd.unit(5) "Specifiers"); in command-line arguments also `$` doubled, or systemd
 * would substitute an environment variable (systemd.service(5) "Command lines").
 */
export function systemdWord(value: string, options: { command?: boolean } = {}): string {
  let text = noNewline(value).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%')
  if (options.command === true) text = text.replace(/\$/g, '$$$$')
  return `"${text}"`
}

const XML_ESCAPES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&apos;',
}

/** XML character data for the plist (XML 1.0 section 2.4). */
export function xmlText(value: string): string {
  return noNewline(value).replace(/[&<>"']/g, (c) => XML_ESCAPES[c] ?? c)
}

/** Module names (native-config/modules.json) and paths of modules that talk only to local devices. */
const LOCAL_MODULES = /(^|\/)(lib)?(softhsm2?|ykcs11|opensc-pkcs11|opensc|tpm2_pkcs11|tpm2)([._-]|$)/

/**
 * Whether a configured module needs IP sockets: any module we do not know to be local (network HSMs
 * reach their appliance over TCP), or tpm2-pkcs11 pointed at a TPM simulator over TCP. p11-kit-client
 * needs them only for an address that is not `unix:` (docs/remote-tokens.md §3).
 */
export function needsNetwork(config: Config | undefined): boolean {
  if (config === undefined) return false
  return Object.values(config.tokens).some((token) => {
    if (/(^|\/)p11-kit-client([._-]|$)/.test(token.module))
      return !(token.moduleEnv['P11_KIT_SERVER_ADDRESS'] ?? 'unix:').startsWith('unix:')
    if (!LOCAL_MODULES.test(token.module)) return true
    const tcti = token.moduleEnv['TPM2_PKCS11_TCTI'] ?? ''
    return /^(swtpm|mssim):/.test(tcti) || /host=|port=/.test(tcti)
  })
}

export interface ServiceValues {
  readonly node: string
  readonly agent: string
  readonly config: string
  readonly log: string
  readonly docs: string
  readonly stateDir: string
  readonly dataDir: string
  /** Directories the agent must write besides the state and data directories (a moved audit log). */
  readonly extraWritable: readonly string[]
  readonly network: boolean
  readonly path: string
}

/** The unit or plist for `platform`, every value escaped for its format. */
export function renderServiceFor(platform: ServicePlatform, template: string, v: ServiceValues): string {
  if (platform === 'linux') {
    const writable = [...new Set([v.stateDir, v.dataDir, ...v.extraWritable])]
    return renderService(template, {
      DOCS: pathToFileURL(noNewline(v.docs)).href.replace(/%/g, '%%'),
      // The program itself is taken literally; only its arguments undergo $VARIABLE substitution.
      EXECSTART: [
        systemdWord(v.node),
        ...[v.agent, 'run', '--foreground', '--config', v.config].map((word) =>
          systemdWord(word, { command: true }),
        ),
      ].join(' '),
      // `-`: a directory that does not exist yet is skipped instead of failing the start.
      READWRITE: writable.map((dir) => systemdWord(`-${dir}`)).join(' '),
      FAMILIES: v.network ? 'AF_UNIX AF_NETLINK AF_INET AF_INET6' : 'AF_UNIX AF_NETLINK',
    })
  }
  return renderService(template, {
    NODE: xmlText(v.node),
    AGENT: xmlText(v.agent),
    CONFIG: xmlText(v.config),
    LOG: xmlText(v.log),
    PATH: xmlText(v.path),
  })
}

/** The launchd agent's PATH after node's own directory: launchd starts agents with a minimal one. */
const SERVICE_PATH = ['/opt/homebrew/bin', '/usr/local/bin', '/usr/bin', '/bin', '/usr/sbin', '/sbin']

function serviceValues(configPath: string, allowNetwork: boolean): ServiceValues {
  let config: Config | undefined
  if (existsSync(configPath)) config = loadConfig(configPath)
  const audit = config?.agent.auditLog
  const state = stateDir()
  return {
    node: process.execPath,
    agent: fileURLToPath(new URL('../bin/cargo-pkcs11-agent.cjs', import.meta.url)),
    config: configPath,
    log: agentLogPath(),
    docs: join(packageRoot(), 'README.md'),
    stateDir: state,
    dataDir: dataDir(),
    extraWritable: audit === undefined || dirname(audit) === state ? [] : [dirname(audit)],
    network: allowNetwork || needsNetwork(config),
    path: [...new Set([dirname(process.execPath), ...SERVICE_PATH])].join(delimiter),
  }
}

/** Runs each command; the first failure with the reason its own stderr gave ("Failed to connect to bus: …"). */
function runAll(commands: readonly (readonly string[])[]): { command: string; failure: string } | undefined {
  for (const command of commands) {
    const [program, ...args] = command as [string, ...string[]]
    const result = spawnSync(program, args, {
      stdio: ['ignore', 'inherit', 'pipe'],
      encoding: 'utf8',
      timeout: 15_000,
    })
    const said = (result.stderr ?? '').trim()
    if (result.status !== 0)
      return {
        command: command.join(' '),
        failure: said.split('\n')[0] || (result.error?.message ?? `exit ${String(result.status)}`),
      }
    if (said !== '') process.stderr.write(`${said}\n`)
  }
  return undefined
}

const commandLine = (commands: readonly (readonly string[])[]): string =>
  commands.map((c) => c.join(' ')).join(' && ')

export async function installService(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    {
      config: { type: 'string' },
      'allow-network': { type: 'boolean' },
      'dry-run': { type: 'boolean' },
      'no-start': { type: 'boolean' },
      force: { type: 'boolean' },
    },
    USAGE['install-service'],
  )
  const target = plan(process.platform)
  const rendered = renderServiceFor(
    process.platform as ServicePlatform,
    readFileSync(packageFile(target.template), 'utf8'),
    serviceValues(resolveConfigPath(values.config).path, values['allow-network'] === true),
  )
  if (values['dry-run'] === true) {
    process.stdout.write(rendered)
    process.stderr.write(
      values['no-start'] === true
        ? `Would write ${target.target}; start it with: ${commandLine(target.start)}\n`
        : `Would write ${target.target}, then run: ${commandLine(target.start)}\n`,
    )
    return 0
  }
  if (
    existsSync(target.target) &&
    readFileSync(target.target, 'utf8') !== rendered &&
    values.force !== true
  ) {
    throw new AgentError('USAGE', `${target.target} already exists with different contents`, {
      remedy: 'Compare it with `install-service --dry-run`, then re-run with --force to replace it',
    })
  }
  mkdirSync(dirname(target.target), { recursive: true, mode: 0o700 })
  writeFileSync(target.target, rendered, { mode: 0o644 })
  process.stderr.write(`Installed the ${target.manager} service: ${target.target}\n`)
  if (values['no-start'] === true) {
    process.stderr.write(`Start it with: ${commandLine(target.start)}\n`)
    return 0
  }
  const failed = runAll(target.start)
  if (failed !== undefined) {
    throw new AgentError('INTERNAL', `\`${failed.command}\` failed (${failed.failure})`, {
      remedy:
        'The unit file is installed; start it yourself once a user session manager is available ' +
        '(e.g. `loginctl enable-linger $USER`, then the same command), or run `cargo-pkcs11-agent run`',
    })
  }
  process.stderr.write('The agent service is enabled and running.\n')
  return 0
}

export async function uninstallService(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    { 'dry-run': { type: 'boolean' }, 'no-stop': { type: 'boolean' } },
    USAGE['uninstall-service'],
  )
  const target = plan(process.platform)
  const stop = values['no-stop'] === true ? [] : target.stop
  const reload = process.platform === 'linux' ? [['systemctl', '--user', 'daemon-reload']] : []
  if (values['dry-run'] === true) {
    const steps = [...stop.map((c) => c.join(' ')), `rm ${target.target}`, ...reload.map((c) => c.join(' '))]
    process.stdout.write(`${steps.join('\n')}\n`)
    return 0
  }
  if (!existsSync(target.target)) {
    process.stderr.write(`No ${target.manager} service is installed (${target.target} does not exist)\n`)
    return 0
  }
  const failed = runAll(stop)
  if (failed !== undefined) {
    // No user session manager (ssh session, container): nothing runs under it, so removing the file
    // is the whole job. Say so rather than fail: the user asked for the unit to be gone.
    process.stderr.write(
      `\`${failed.command}\` failed (${failed.failure}); if the service was running, stop it with \`cargo-pkcs11-agent stop\`\n`,
    )
  }
  rmSync(target.target)
  process.stderr.write(`Removed the ${target.manager} service: ${target.target}\n`)
  const unreloaded = failed === undefined ? runAll(reload) : undefined
  if (unreloaded !== undefined)
    process.stderr.write(
      `The user session manager could not be told (\`${unreloaded.command}\`: ${unreloaded.failure}); if the service runs under one elsewhere, run that command there\n`,
    )
  return 0
}
