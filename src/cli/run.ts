/**
 * `cargo-pkcs11-agent run [--config F] [--socket S] [--foreground]`
 * Without --foreground the agent detaches (log under the state dir) and this command returns once
 * it answers on its socket.
 */
import { existsSync } from 'node:fs'

import { Agent } from '../agent/agent.js'
import { alreadyRunning, probeSocket } from '../agent/socket.js'
import { loadConfig } from '../config/load.js'
import type { Config } from '../config/schema.js'
import { AgentError } from '../lib/errors.js'
import { resolveModulePath } from '../pkcs11/modules.js'
import { agentLogPath, resolveConfigPath, resolveSocketPath } from '../config/paths.js'
import { agentLogWriter } from '../lib/agent-log.js'
import { startAgent, waitForStartedAgent } from '../shim/connect.js'
import { parseCommandArgs, USAGE } from './args.js'

/**
 * A module that is not there stops the agent before it listens (docs/cli.md), so the terminal or
 * cargo (through the shim) sees why at once. Not part of validation: doctor reports an absent module
 * per token beside its other checks, and `log` or install-service have no use for the module.
 */
function checkModulesInstalled(config: Config): void {
  for (const token of Object.values(config.tokens)) {
    const path = resolveModulePath(token.module)
    if (!existsSync(path))
      throw new AgentError('MODULE_LOAD_FAILED', `[tokens.${token.name}] module ${path} does not exist`, {
        remedy: `Install the module's package, or fix \`module\` in ${config.path ?? 'the config'}; \`cargo-pkcs11-agent doctor\` checks every token`,
        data: { module: path },
      })
  }
}

export async function run(argv: readonly string[]): Promise<number> {
  const { values: args } = parseCommandArgs(
    argv,
    { config: { type: 'string' }, socket: { type: 'string' }, foreground: { type: 'boolean' } },
    USAGE.run,
  )
  // Validated before detaching, so a config error reaches this terminal.
  const configPath = resolveConfigPath(args.config).path
  const config = loadConfig(configPath)
  checkModulesInstalled(config)
  const socketPath = resolveSocketPath(args.socket, config.agent.socket).path
  if (args.foreground !== true) {
    if ((await probeSocket(socketPath)) === 'alive') throw alreadyRunning(socketPath)
    const child = await startAgent(socketPath, process.env, ['--config', configPath])
    const connection = await waitForStartedAgent(socketPath, child)
    try {
      // Another agent that won the race for the path is not the one started here.
      if ((await connection.request('ping', {}, { timeoutMs: 1_000 })).pid !== child.pid)
        throw alreadyRunning(socketPath)
    } finally {
      connection.close()
    }
    process.stderr.write(
      `cargo-pkcs11-agent: started (pid ${child.pid}) on ${socketPath}; log: ${child.logPath}\n`,
    )
    return 0
  }
  const log = agentLogWriter(agentLogPath(), 'cargo-pkcs11-agent: ')
  const agent = new Agent({ config, socketPath, configPath, log })
  await agent.start()
  await agent.runUntilSignalled()
  return 0
}
