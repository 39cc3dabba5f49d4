/**
 * The agent: configuration, devices, PIN cache, rate limiter and the socket server, with the
 * lifecycle signals (SIGHUP reload, SIGTERM/SIGINT graceful stop).
 */
import { loadConfig } from '../config/load.js'
import type { Config } from '../config/schema.js'
import { toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import type { Policy } from '../policy/policy.js'
import { Devices } from './devices.js'
import { AuditLog } from '../audit/log.js'
import { createPolicy } from './policy-config.js'
import { METHOD_HANDLERS } from './methods/index.js'
import { SocketPrompter } from './prompter.js'
import type { AgentState } from './state.js'
import { AgentServer } from './server.js'

export interface AgentOptions {
  readonly config: Config
  readonly socketPath: string
  /** Where to reload the config from on SIGHUP; undefined = keep the in-memory config. */
  readonly configPath?: string
  readonly log?: (line: string) => void
}

export class Agent implements AgentState {
  config: Config
  readonly socketPath: string
  readonly configPath: string | undefined
  readonly devices: Devices
  readonly log: (line: string) => void
  policy: Policy
  audit: AuditLog
  readonly #server: AgentServer
  #idleTimer: NodeJS.Timeout | undefined
  #stopping: Promise<void> | undefined

  constructor(options: AgentOptions) {
    this.config = options.config
    this.socketPath = options.socketPath
    this.configPath = options.configPath
    this.log = options.log ?? ((line) => process.stderr.write(`cargo-pkcs11-agent: ${line}\n`))
    this.policy = createPolicy(this.config, this.log)
    this.audit = new AuditLog(this.config.agent.auditLog)
    this.devices = new Devices(
      this.config,
      (token) => this.policy.cachedPin(token.name),
      (token, event) => {
        if (event.type === 'removed') {
          this.policy.onRemoved(token.name)
          this.log(`token ${token.name} removed; its PIN was forgotten`)
        }
        // The device keeps no memory of refused PINs: the held one goes, so it is never sent again.
        if (event.type === 'pin-rejected' && this.policy.pinCache.forget(token.name, 'wrong-pin'))
          this.log(`token ${token.name} refused the held PIN; it was forgotten`)
      },
    )
    this.#server = new AgentServer({
      socketPath: this.socketPath,
      log: this.log,
      handler: async (method, params, context) => {
        this.#touchIdle()
        try {
          // The shim's terminal answers only when the client declared one and the agent is not headless.
          const prompter = (interactive: boolean): SocketPrompter =>
            new SocketPrompter(context, interactive && !this.config.agent.headless)
          return await METHOD_HANDLERS[method](this, params, { prompter })
        } finally {
          this.#touchIdle()
        }
      },
    })
  }

  async start(): Promise<void> {
    await this.#server.listen()
    this.log(`listening on ${this.socketPath} (pid ${process.pid})`)
  }

  /** Releases sessions after `release-after-idle-seconds` without requests (design point 5). */
  #touchIdle(): void {
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer)
    const seconds = this.config.agent.releaseAfterIdleSeconds
    if (seconds === undefined) return
    this.#idleTimer = setTimeout(() => {
      void this.devices
        .releaseAll()
        .then((n) => n > 0 && this.log(`released ${n} device(s) after ${seconds} s idle`))
    }, seconds * 1000)
    this.#idleTimer.unref()
  }

  /** SIGHUP: re-read the config; forget PINs and release devices either way (design point 3). */
  async reload(): Promise<void> {
    this.policy.onSighup()
    let next = this.config
    if (this.configPath !== undefined) {
      try {
        next = loadConfig(this.configPath)
      } catch (error) {
        this.log(`reload failed, keeping the previous configuration: ${toAgentError(error).describe()}`)
      }
    }
    await this.devices.reset(next)
    this.policy.close()
    this.config = next
    this.policy = createPolicy(next, this.log)
    this.audit = new AuditLog(next.agent.auditLog)
    this.log(`configuration reloaded from ${this.configPath ?? '(memory)'}; PINs forgotten, devices released`)
  }

  /** Stop accepting, let in-flight requests finish (bounded), close sessions, remove the socket. */
  stop(graceMs: number = LIMITS.shutdownGraceMs): Promise<void> {
    this.#stopping ??= (async () => {
      if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer)
      await this.#server.close(graceMs)
      this.policy.close()
      await this.devices.releaseAll()
      this.log('stopped')
    })()
    return this.#stopping
  }

  /** Installs SIGHUP/SIGTERM/SIGINT handlers; resolves when the agent has stopped. */
  runUntilSignalled(): Promise<void> {
    return new Promise((resolve) => {
      process.on('SIGHUP', () => {
        void this.reload()
      })
      const stop = (signal: string): void => {
        this.log(`${signal}: shutting down`)
        void this.stop().then(resolve)
      }
      process.once('SIGTERM', () => stop('SIGTERM'))
      process.once('SIGINT', () => stop('SIGINT'))
    })
  }
}
