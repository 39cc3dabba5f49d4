/**
 * `cargo-pkcs11-agent install-service [--config FILE] [--dry-run] [--no-start] [--force]`
 *
 * Installs the agent as a per-user service: a hardened systemd user unit on Linux, a launchd agent on
 * macOS (templates in native-config/service/). A service-managed agent starts at login, so the shim
 * never has to spawn one, and SIGHUP (`systemctl --user reload`) wipes cached PINs.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { agentLogPath, configHome, resolveConfigPath } from '../config/paths.js'
import { AgentError } from '../lib/errors.js'
import { packageFile, packageRoot } from '../lib/package-files.js'
import { parseCommandArgs, USAGE } from './args.js'

interface ServicePlan {
  readonly template: string
  readonly target: string
  readonly start: readonly (readonly string[])[]
  readonly manager: string
}

function plan(platform: NodeJS.Platform): ServicePlan {
  if (platform === 'linux') {
    return {
      template: 'native-config/service/cargo-pkcs11-agent.service',
      target: join(configHome(), 'systemd', 'user', 'cargo-pkcs11-agent.service'),
      start: [
        ['systemctl', '--user', 'daemon-reload'],
        ['systemctl', '--user', 'enable', '--now', 'cargo-pkcs11-agent.service'],
      ],
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
      manager: 'launchd',
    }
  }
  throw new AgentError(
    'OPERATION_UNSUPPORTED',
    `install-service does not know how to install a service on ${platform}`,
    {
      remedy:
        'Start `cargo-pkcs11-agent run` from your session start-up instead; the shim also starts it on demand',
    },
  )
}

/** Fills the template's @PLACEHOLDERS@; every value is an absolute path we control. */
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

export async function installService(argv: readonly string[]): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    {
      config: { type: 'string' },
      'dry-run': { type: 'boolean' },
      'no-start': { type: 'boolean' },
      force: { type: 'boolean' },
    },
    USAGE['install-service'],
  )
  const target = plan(process.platform)
  const agentBin = fileURLToPath(new URL('../bin/cargo-pkcs11-agent.js', import.meta.url))
  const rendered = renderService(readFileSync(packageFile(target.template), 'utf8'), {
    NODE: process.execPath,
    AGENT: agentBin,
    CONFIG: resolveConfigPath(values.config).path,
    LOG: agentLogPath(),
    DOCS: join(packageRoot(), 'README.md'),
  })
  if (values['dry-run'] === true) {
    process.stdout.write(rendered)
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
    process.stderr.write(`Start it with: ${target.start.map((c) => c.join(' ')).join(' && ')}\n`)
    return 0
  }
  for (const command of target.start) {
    const [program, ...args] = command as [string, ...string[]]
    const result = spawnSync(program, args, { stdio: ['ignore', 'inherit', 'inherit'], timeout: 15_000 })
    if (result.status !== 0) {
      throw new AgentError(
        'INTERNAL',
        `\`${command.join(' ')}\` failed (${result.error?.message ?? `exit ${String(result.status)}`})`,
        {
          remedy:
            'The unit file is installed; start it yourself once a user session manager is available ' +
            '(e.g. `loginctl enable-linger $USER`, then the same command), or run `cargo-pkcs11-agent run`',
        },
      )
    }
  }
  process.stderr.write('The agent service is enabled and running.\n')
  return 0
}
