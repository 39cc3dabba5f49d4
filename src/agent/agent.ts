/**
 * The agent: configuration, devices, PIN cache, rate limiter and the socket server, with the
 * lifecycle: signals (SIGHUP reload, SIGTERM/SIGINT graceful stop) and the watch on its socket path.
 */
import { lstat } from 'node:fs/promises'

import { loadConfig } from '../config/load.js'
import {
  effectiveConfirm,
  type Config,
  type EffectiveConfirm,
  type RegistryConfig,
} from '../config/schema.js'
import type { Intent, Requester } from '../cargo/intent.js'
import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { setNonDumpable, type PeerCredentials } from '../lib/peercred.js'
import { describeRequester } from '../policy/intent.js'
import type { Policy } from '../policy/policy.js'
import { Devices } from './devices.js'
import { auditEntry, type AuditEntry } from '../audit/entry.js'
import { AuditLog } from '../audit/log.js'
import type { RequestMessage } from '../protocol/frames.js'
import type { Method } from '../protocol/methods.js'
import { parseCargoLine, parseSignRequest } from './pipeline/parse.js'
import { createPolicy } from './policy-config.js'
import { METHOD_HANDLERS } from './methods/index.js'
import { SocketPrompter } from './prompter.js'
import { weakenings, type EarlierBinding } from './reload.js'
import { kernelRequester, withClaim } from './requester.js'
import type { AgentState } from './state.js'
import { AgentServer } from './server.js'
import { sameSocket } from './socket.js'

export interface AgentOptions {
  readonly config: Config
  readonly socketPath: string
  /** Where to reload the config from on SIGHUP; undefined = keep the in-memory config. */
  readonly configPath?: string
  readonly log?: (line: string) => void
}

/**
 * What a forwarded peer may not call, with the command to run on the agent's host instead
 * (docs/ssh-forwarding.md, "What forwarded requests may do"): keygen, cargo login and pubkey make
 * or show keys for registration (and may ask for the PIN on the agent's host), lock, release,
 * reload and cargo logout would let the remote host end the PINs and sessions held for this one,
 * and status would show it every registry bound here, the tokens and when a PIN is cached.
 */
const LOCAL_ONLY: Partial<Record<Method, string>> = {
  status: '`cargo-pkcs11-agent status`',
  keygen: '`cargo-pkcs11-agent keygen`',
  login: '`cargo login`',
  pubkey: '`cargo-pkcs11-agent pubkey`',
  lock: '`cargo-pkcs11-agent lock`',
  release: '`cargo-pkcs11-agent release`',
  reload: '`cargo-pkcs11-agent reload`',
  logout: '`cargo logout`',
}

/** The audit line of a refused forwarded keygen or cargo login; undefined for the other methods. */
function forwardedKeyAudit(
  config: Config,
  method: Method,
  params: Readonly<Record<string, unknown>>,
  requester: Requester,
  error: AgentError,
): AuditEntry | undefined {
  if (method !== 'keygen' && method !== 'login') return undefined
  const intent: Intent = {
    indexUrl: '',
    operation: 'read',
    crate: {},
    requester: withClaim(requester, params['requester']),
  }
  const denied = { result: 'denied', code: error.code, reason: error.message } as const
  if (method === 'keygen') {
    const token = typeof params['token'] === 'string' ? params['token'] : '?'
    const label = typeof params['label'] === 'string' ? params['label'] : '?'
    // The same subject as keygen's own audit lines (src/agent/methods/keygen.ts).
    intent.indexUrl = `token ${token}`
    const replaced = params['force'] === true
    return auditEntry(intent, { ...denied, operation: 'keygen', key: `${token}/${label}`, replaced })
  }
  try {
    const cargo = parseCargoLine(params)
    intent.indexUrl = cargo.registry.indexUrl
    // Named as the config binds the index, never as the client calls it (like every other line).
    const bound = Object.values(config.registries).find((r) => r.index === intent.indexUrl)
    if (bound !== undefined) intent.registryName = bound.name
  } catch {
    // Not a line cargo could have sent: recorded without a registry.
  }
  return auditEntry(intent, { ...denied, operation: 'login' })
}

export class Agent implements AgentState {
  config: Config
  readonly socketPath: string
  readonly configPath: string | undefined
  readonly devices: Devices
  readonly log: (line: string) => void
  policy: Policy
  audit: AuditLog
  /** Each registry's `confirm` as resolved at start or reload (`Devices.resolveConfirms`). */
  #confirms = new Map<string, EffectiveConfirm>()
  /** Every index bound since start, as last applied: a reload is held against it (src/agent/reload.ts). */
  readonly #bound = new Map<string, EarlierBinding>()
  readonly #server: AgentServer
  #idleTimer: NodeJS.Timeout | undefined
  #socketWatch: NodeJS.Timeout | undefined
  #stopping: Promise<void> | undefined
  #reloading: Promise<void> = Promise.resolve()
  #markStopped: () => void = () => undefined
  readonly #stopped = new Promise<void>((resolve) => (this.#markStopped = resolve))

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
        // Nothing authenticates the server that answers at the address next (its token's label and
        // serial are not secret): the PIN is not sent there unless typed or read from its source
        // again (docs/remote-tokens.md, "When the server restarts").
        if (event.type === 'disconnected') {
          const forgot = this.policy.onRemoved(token.name, 'disconnected')
          this.log(
            `token ${token.name} lost its p11-kit server ${event.server}${forgot ? '; its PIN was forgotten' : ''}; reconnecting at the next request`,
          )
        }
        if (event.type === 'reconnected') this.log(`token ${token.name} reconnected`)
        // The device keeps no memory of refused PINs: the held one goes, and policy remembers its
        // value, so an env/file source holding it is not sent again until it changes.
        if (event.type === 'pin-rejected' && this.policy.onPinRejected(token.name))
          this.log(`token ${token.name} refused the held PIN; it was forgotten`)
      },
    )
    this.#server = new AgentServer({
      socketPath: this.socketPath,
      log: this.log,
      onRefused: (request, error, peer) => this.#auditRefusal(request, error, peer),
      handler: async (method, params, context) => {
        this.#touchIdle()
        try {
          let requester: Requester | undefined
          const who = (): Requester => (requester ??= kernelRequester(context.peer))
          // A PIN comes through the shim only when the client declared a terminal; a yes/no only
          // on the terminal the kernel names for the requester. Headless: neither. Forwarded: no
          // PIN question goes to the far side, and a forwarder has no terminal of the requester.
          const headless = this.config.agent.headless
          const prompter = (interactive: boolean): SocketPrompter =>
            new SocketPrompter(
              context,
              interactive && !headless && who().forwarded === undefined,
              headless ? undefined : who().tty,
            )
          const localCommand = LOCAL_ONLY[method]
          if (localCommand !== undefined && who().forwarded !== undefined)
            throw await this.#forwardedRefusal(method, localCommand, params, who())
          return await METHOD_HANDLERS[method](this, params, {
            get requester() {
              return who()
            },
            prompter,
          })
        } finally {
          this.#touchIdle()
        }
      },
    })
  }

  async start(): Promise<void> {
    // Before any PIN exists in memory: no core dump, no ptrace or /proc/<pid>/mem by other
    // processes of the user (the same hardening as ssh-agent; src/lib/peercred.ts).
    setNonDumpable()
    const { confirms, errors, unread, warnings } = await this.devices.resolveConfirms()
    if (errors[0] !== undefined) throw errors[0]
    for (const line of unread) this.log(`key policy not checked: ${line}`)
    for (const line of warnings) this.log(`warning: ${line}`)
    this.#applied(this.config, confirms)
    // The check opened sessions before any client asked: leave the devices as an idle agent would.
    await this.devices.releaseAll()
    await this.#server.listen()
    this.log(`listening on ${this.socketPath} (pid ${process.pid})`)
    this.#watchSocket()
  }

  #applied(config: Config, confirms: Map<string, EffectiveConfirm>): void {
    this.#confirms = confirms
    for (const registry of Object.values(config.registries))
      this.#bound.set(registry.index, { registry, confirm: this.confirmOf(registry) })
  }

  /** The registry's `confirm` as it applies; a registry not resolved yet gets the config's or the default. */
  confirmOf(registry: RegistryConfig): EffectiveConfirm {
    return this.#confirms.get(registry.name) ?? effectiveConfirm(registry)
  }

  /**
   * A sign the server refused before it ran (AGENT_BUSY past the connection's queue) still gets its
   * `failed` line: the audit log has one line per signing request that reached the agent whole.
   */
  #auditRefusal(request: RequestMessage, error: AgentError, peer: PeerCredentials): void {
    if (request.method !== 'sign') return
    let intent
    try {
      intent = parseSignRequest(request.params ?? {}, kernelRequester(peer)).intent
    } catch {
      return // not a signing request cargo could have sent: the refusal's log line is its record
    }
    this.audit
      .record(auditEntry(intent, { result: 'failed', code: error.code, reason: error.message }))
      .catch((auditError: unknown) => this.log(`audit-failed ${toAgentError(auditError).code}`))
  }

  /**
   * A method only the agent's own host may call (`LOCAL_ONLY`), asked through a forwarded socket:
   * logged, and for keygen and cargo login (which make or show keys to register) audited as
   * `denied` like every other keygen (src/agent/methods/keygen.ts).
   */
  async #forwardedRefusal(
    method: Method,
    localCommand: string,
    params: Readonly<Record<string, unknown>>,
    requester: Requester,
  ): Promise<AgentError> {
    const from = describeRequester(requester)
    const error = new AgentError(
      'FORWARDED_REFUSED',
      `${method === 'login' || method === 'logout' ? `cargo ${method}` : method} is not available through a forwarded socket (${from})`,
      {
        remedy: `Run ${localCommand} on the agent's host; a forwarded connection may only sign, as the registry's \`forwarded\` allows (docs/ssh-forwarding.md)`,
      },
    )
    this.log(`${method} refused: ${from}`)
    const entry = forwardedKeyAudit(this.config, method, params, requester, error)
    if (entry !== undefined)
      await this.audit
        .record(entry)
        .catch((auditError: unknown) => this.log(`audit-failed ${toAgentError(auditError).code}`))
    return error
  }

  /**
   * Stops when the socket path no longer holds our socket (deleted, or replaced by another agent's).
   * Unreachable, the agent would hold PINs for nobody while the next shim starts a second agent.
   * Stopping rather than re-binding: a replaced path belongs to the agent that replaced it, and a
   * deleted one usually means the login session's runtime directory was cleaned up.
   */
  #watchSocket(): void {
    const ours = this.#server.identity
    if (ours === undefined) return
    this.#socketWatch = setInterval(() => {
      void lstat(this.socketPath).then(
        (stat) =>
          stat.isSocket() && sameSocket(ours, { dev: stat.dev, ino: stat.ino })
            ? undefined
            : this.#socketLost('was replaced by another file'),
        () => this.#socketLost('was removed'),
      )
    }, LIMITS.socketWatchIntervalMs)
    this.#socketWatch.unref()
  }

  #socketLost(what: string): void {
    if (this.#stopping !== undefined) return
    this.log(`the socket ${this.socketPath} ${what}; no client can reach this agent, stopping`)
    void this.stop()
  }

  /** Releases sessions after `release-after-idle-seconds` without requests (docs/design.md §5, point 5). */
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

  /**
   * SIGHUP or the `reload` method: re-read the config; forget PINs and release devices either way
   * (docs/design.md §5, point 3). Resolves to why the new config was not applied, or undefined
   * when it was. One reload at a time: a signal during a reload waits for it.
   */
  reload(): Promise<AgentError | undefined> {
    const next = this.#reloading.then(() => this.#reload())
    this.#reloading = next.then(
      () => undefined,
      () => undefined,
    )
    return next
  }

  async #reload(): Promise<AgentError | undefined> {
    this.policy.onSighup()
    let next: Config
    try {
      next = this.configPath === undefined ? this.config : loadConfig(this.configPath)
    } catch (error) {
      const refusal = toAgentError(error)
      await this.devices.releaseAll()
      this.log(
        `reload failed, keeping the previous configuration: ${refusal.describe()}; PINs forgotten, devices released`,
      )
      return refusal
    }
    // The next config's confirms are resolved from its own devices (a token may now name another
    // card). A signal has no requester and no terminal to approve on, so a reload that lowers
    // protection is not applied: it takes effect on a restart, which needs the PIN again
    // (docs/configuration.md, "Reloading").
    await this.devices.reset(next)
    const resolved = await this.devices.resolveConfirms()
    const weaker = [
      ...resolved.errors.map((e) => e.message),
      ...weakenings(this.config, next, { current: this.#confirms, next: resolved.confirms }, this.#bound),
    ]
    if (weaker.length > 0) {
      await this.devices.reset(this.config)
      const why = `it would weaken protection (${weaker.join('; ')})`
      const remedy = 'restart the agent to apply it (`cargo-pkcs11-agent stop`, then run it again)'
      this.log(`reload refused, keeping the previous configuration: ${why}; ${remedy}`)
      return new AgentError(
        'POLICY_DENIED',
        `The agent refused the reload and keeps its previous configuration: ${why}; cached PINs were forgotten, devices released`,
        {
          remedy: `To apply it, ${remedy}: a restart needs the PIN again (docs/configuration.md, "Reloading")`,
        },
      )
    }
    for (const line of resolved.unread) this.log(`key policy not checked: ${line}`)
    for (const line of resolved.warnings) this.log(`warning: ${line}`)
    this.#applied(next, resolved.confirms)
    // The check opened sessions before any client asked, as at start.
    await this.devices.releaseAll()
    this.policy.close()
    this.config = next
    // Which env/file PINs the tokens rejected outlives the reload: the agent's environment has not changed.
    this.policy = createPolicy(next, this.log, this.policy)
    void this.audit.close()
    this.audit = new AuditLog(next.agent.auditLog)
    this.log(`configuration reloaded from ${this.configPath ?? '(memory)'}; PINs forgotten, devices released`)
    return undefined
  }

  /** Stop accepting, let in-flight requests finish (bounded), close sessions, remove the socket. */
  stop(graceMs: number = LIMITS.shutdownGraceMs): Promise<void> {
    this.#stopping ??= (async () => {
      if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer)
      if (this.#socketWatch !== undefined) clearInterval(this.#socketWatch)
      await this.#server.close(graceMs)
      this.policy.close()
      await this.devices.releaseAll()
      this.log('stopped')
      this.#markStopped()
    })()
    return this.#stopping
  }

  /**
   * Installs SIGHUP/SIGTERM/SIGINT handlers; resolves when the agent has stopped, for a signal or
   * because its socket was lost. The handlers stay installed: a second SIGTERM is logged and
   * ignored instead of killing the agent mid-stop with Node's default action.
   */
  runUntilSignalled(): Promise<void> {
    const onSignal = (signal: NodeJS.Signals): void => {
      if (signal === 'SIGHUP') {
        if (this.#stopping === undefined) void this.reload()
        return
      }
      if (this.#stopping !== undefined) {
        this.log(`${signal}: already shutting down`)
        return
      }
      this.log(`${signal}: shutting down`)
      void this.stop()
    }
    for (const signal of ['SIGHUP', 'SIGTERM', 'SIGINT'] as const) process.on(signal, onSignal)
    return this.#stopped
  }
}
