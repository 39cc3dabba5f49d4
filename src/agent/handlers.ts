/**
 * What each socket method does. `sign` runs the pipeline, one stage per file under pipeline/:
 * parse → bind → authorize → sign → audit → respond.
 */
import type { KeyRef, TokenConfig } from '../config/schema.js'
import { AgentError } from '../lib/errors.js'
import { k3Pid, k3Public } from '../keys/paserk.js'
import type { Intent } from '../cargo/intent.js'
import type { DeviceKey } from '../pkcs11/key-catalogue.js'
import type { AgentState } from './state.js'
import { describeKey } from './devices.js'
import { tokenPolicy } from './policy-config.js'
import { registryBinding } from './pipeline/bind.js'
import { parseCargoLine, parseRequester } from './pipeline/parse.js'
import { signPipeline } from './pipeline/run.js'
import { SocketPrompter } from './prompter.js'
import { PROTOCOL_VERSION, type Method } from './protocol.js'
import type { RequestContext } from './server.js'

type Result = Record<string, unknown>
type Params = Record<string, unknown>
/** A socket method that may ask the requesting terminal (PIN, confirmation) through `context`. */
type Handler = (agent: AgentState, params: Params, context: RequestContext) => Promise<Result>

export async function handle(
  agent: AgentState,
  method: Method,
  params: Params,
  context: RequestContext,
): Promise<Result> {
  switch (method) {
    case 'ping':
      return { pong: true, v: PROTOCOL_VERSION, pid: process.pid }
    case 'status':
      return await status(agent)
    case 'lock':
      return await lock(agent)
    case 'release':
      return { released: await agent.devices.releaseAll() }
    case 'sign':
      return await sign(agent, params, context)
    case 'pubkey':
      return await pubkey(agent, params, context)
    case 'login':
      return await login(agent, params, context)
    case 'logout':
      return logout(agent, params)
    case 'keygen':
      return await keygen(agent, params, context)
  }
}

const sign: Handler = async (agent, params, context) =>
  await signPipeline(agent, params, {
    prompter: (interactive) => contextPrompter(agent, interactive, context),
  })

/** The shim's terminal answers only when the client declared itself interactive and the agent is not headless. */
function contextPrompter(agent: AgentState, interactive: unknown, context: RequestContext): SocketPrompter {
  return new SocketPrompter(context, interactive === true && !agent.config.agent.headless)
}

/** Non-signing requests (login, pubkey, keygen) log in through the same policy, described as this intent. */
function adminIntent(params: Params, indexUrl: string, registryName?: string): Intent {
  const intent: Intent = {
    indexUrl,
    operation: 'read',
    crate: {},
    requester: parseRequester(params['requester']),
  }
  if (registryName !== undefined) intent.registryName = registryName
  return intent
}

async function loginToken(
  agent: AgentState,
  token: TokenConfig,
  params: Params,
  context: RequestContext,
  intent: Intent,
): Promise<void> {
  await agent.policy.ensureLoggedIn(
    agent.devices.get(token),
    tokenPolicy(token),
    contextPrompter(agent, params['interactive'], context),
    intent,
  )
}

interface KeyInfo {
  token: string
  label: string
  id: string
  k3Public: string
  k3Pid: string
}

/** What a registry operator registers for a device key (RFC 3231 key registration: k3.public, k3.pid). */
function keyInfoOf(token: TokenConfig, key: Pick<DeviceKey, 'label' | 'id' | 'publicKey'>): KeyInfo {
  return {
    token: token.name,
    label: key.label,
    id: key.id,
    k3Public: k3Public(key.publicKey),
    k3Pid: k3Pid(key.publicKey),
  }
}

/** Key generation parameters: the label, and CKA_ID only when one was given (else the device picks it). */
function keySpec(label: string, id: string | undefined): { label: string; id?: string } {
  return id === undefined ? { label } : { label, id }
}

async function keyInfo(
  agent: AgentState,
  ref: KeyRef,
  params: Params,
  context: RequestContext,
  intent: Intent,
): Promise<KeyInfo> {
  const { token, device } = agent.devices.byName(ref.token)
  // Private objects (and on some tokens the public ones) are hidden until login.
  await loginToken(agent, token, params, context, intent)
  return keyInfoOf(token, await device.findKey(ref))
}

function stringParam(params: Params, key: string): string | undefined {
  const value = params[key]
  return typeof value === 'string' && value !== '' ? value : undefined
}

/** The keys a registry operator registers: k3.public and k3.pid of the read and mutation keys. */
const pubkey: Handler = async (agent, params, context) => {
  const indexUrl = stringParam(params, 'indexUrl')
  const name = stringParam(params, 'registry')
  const registries = Object.values(agent.config.registries).filter(
    (r) => (indexUrl === undefined || r.index === indexUrl) && (name === undefined || r.name === name),
  )
  if (registries.length === 0) {
    if (indexUrl !== undefined) registryBinding(agent.config, indexUrl)
    throw new AgentError('REGISTRY_NOT_CONFIGURED', `No registry ${name ?? ''} is configured`, {
      remedy: 'Add a [registries.NAME] table to the agent config',
    })
  }
  const out = []
  for (const registry of registries) {
    const intent = adminIntent(params, registry.index, registry.name)
    const read = await keyInfo(agent, registry.readKey, params, context, intent)
    const mutation =
      registry.mutationKey === registry.readKey
        ? read
        : await keyInfo(agent, registry.mutationKey, params, context, intent)
    out.push({ registry: registry.name, index: registry.index, readKey: read, mutationKey: mutation })
  }
  return { registries: out }
}

/**
 * `cargo login`: show the bound key(s) for registration. Generates a missing key only with explicit
 * consent (`generate-on-login = true` or `cargo login -- --generate`): generating replaces nothing,
 * but a key the registry does not know is useless until registered.
 */
const login: Handler = async (agent, params, context) => {
  const cargo = parseCargoLine(params)
  if (cargo.kind !== 'login')
    throw new AgentError('REQUEST_INVALID', 'login expects a cargo login request', {
      remedy: 'Send the login line cargo wrote',
    })
  const registry = registryBinding(agent.config, cargo.registry.indexUrl)
  const consent = registry.generateOnLogin || cargo.args.includes('--generate')
  const generated: string[] = []
  const keys: KeyInfo[] = []
  const refs =
    registry.mutationKey === registry.readKey ? [registry.readKey] : [registry.readKey, registry.mutationKey]
  for (const ref of refs) {
    try {
      keys.push(
        await keyInfo(agent, ref, params, context, adminIntent(params, registry.index, registry.name)),
      )
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== 'KEY_NOT_FOUND') throw error
      const { token, device } = agent.devices.byName(ref.token)
      if (!consent) {
        throw new AgentError('KEY_NOT_FOUND', `There is no ${describeKey(token, ref)} yet`, {
          remedy: `Generate it on the device with \`cargo login --registry ${registry.name} -- --generate\` (or set generate-on-login = true), or with \`cargo-pkcs11-agent setup\``,
        })
      }
      if (ref.label === undefined)
        throw new AgentError(
          'CONFIG_INVALID',
          `The key for ${registry.name} has no label to generate it with`,
          { remedy: 'Add label = "…" to the key reference' },
        )
      // Device closes a session after any failed request (KEY_NOT_FOUND included), and closing the
      // last session ends the login (PKCS#11 v2.40 §5.6): log in again before writing the key.
      await loginToken(agent, token, params, context, adminIntent(params, registry.index, registry.name))
      const key = await device.generateKey(keySpec(ref.label, ref.id))
      generated.push(`${token.name}/${key.label}`)
      agent.log(
        `generated key ${key.label} (id ${key.id}) on token ${token.name} for cargo login on ${registry.name}`,
      )
      keys.push(keyInfoOf(token, key))
    }
  }
  return { registry: registry.name, keys, generated }
}

/** `cargo logout`: forget the cached PINs of the registry's tokens; no key is touched. */
function logout(agent: AgentState, params: Params): Result {
  const cargo = parseCargoLine(params)
  const registry = registryBinding(agent.config, cargo.registry.indexUrl)
  const tokens = new Set([registry.readKey.token, registry.mutationKey.token])
  let forgotten = 0
  for (const token of tokens) if (agent.policy.pinCache.forget(token, 'lock')) forgotten += 1
  return { registry: registry.name, forgotten }
}

/** Forget every PIN and close the sessions, which logs the tokens out (login state is per application). */
async function lock(agent: AgentState): Promise<Result> {
  const forgotten = agent.policy.lock()
  const released = await agent.devices.releaseAll()
  return { forgotten, released }
}

const keygen: Handler = async (agent, params, context) => {
  const tokenName = stringParam(params, 'token')
  const label = stringParam(params, 'label')
  if (tokenName === undefined || label === undefined)
    throw new AgentError('USAGE', 'keygen needs `token` and `label`', {
      remedy: 'Pass the token name from the config and a key label',
    })
  const { token, device } = agent.devices.byName(tokenName)
  await loginToken(agent, token, params, context, adminIntent(params, `token ${token.name}`))
  const key = await device.generateKey(keySpec(label, stringParam(params, 'id')), {
    force: params['force'] === true,
  })
  return { ...keyInfoOf(token, key) }
}

async function status(agent: AgentState): Promise<Result> {
  const cached = new Set(agent.policy.pinCache.tokenIds())
  const tokens = []
  for (const token of Object.values(agent.config.tokens)) {
    const entry: Record<string, unknown> = {
      name: token.name,
      module: token.module,
      pinSource: token.pinSource,
      pinCached: cached.has(token.name),
    }
    try {
      entry['status'] = await agent.devices.get(token).status()
    } catch (error) {
      entry['error'] =
        error instanceof AgentError ? error.toWire() : { code: 'INTERNAL', message: String(error) }
    }
    tokens.push(entry)
  }
  const registries = Object.values(agent.config.registries).map((r) => ({
    name: r.name,
    index: r.index,
    readKey: r.readKey,
    mutationKey: r.mutationKey,
    confirm: r.confirm,
    tokenMaxAgeSeconds: r.tokenMaxAgeSeconds,
    mutationsLastHour: agent.policy.limiter.count(r.index),
    mutationsPerHour: r.mutationsPerHour,
  }))
  return {
    pid: process.pid,
    socket: agent.socketPath,
    config: agent.configPath ?? null,
    headless: agent.config.agent.headless,
    tokens,
    registries,
  }
}
