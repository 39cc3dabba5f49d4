/**
 * cargo-credential-pkcs11: cargo's credential provider (protocol v1, docs/cargo-protocol.md §1), a thin client of the
 * agent. stdout carries only the protocol (hello, then one response line); everything for humans
 * goes to stderr or the terminal. Imports builtins and the small protocol modules only: the shim
 * must start within 1.2x a bare `node -e 0`.
 */
import { writeSync } from 'node:fs'

import type { AgentConnection, QueryAnswer } from '../protocol/client.js'
import type { EventMessage, QueryMessage } from '../protocol/frames.js'
import type { SignResult } from '../protocol/methods.js'
import {
  cargoErrorFor,
  err,
  errOther,
  HELLO,
  okGet,
  okLogin,
  okLogout,
  parseCargoRequest,
  type CacheControl,
  type CargoRequest,
} from '../cargo/protocol.js'
import { resolveSocketPath } from '../config/paths.js'
import { AgentError, toAgentError } from '../lib/errors.js'
import { LIMITS } from '../lib/limits.js'
import { connectOrStart } from './connect.js'
import { hasTerminal, requesterContext } from './context.js'
import { Notices } from './notices.js'
import { readRequestLineFast } from './stdin.js'

const NAME = 'cargo-credential-pkcs11'
const notices = new Notices(NAME)

function say(text: string): void {
  notices.say(text)
}

function respond(line: string): void {
  writeSync(1, line + '\n')
}

function onEvent(event: EventMessage): void {
  notices.event(event)
}

async function onQuery(query: QueryMessage): Promise<QueryAnswer> {
  notices.stop()
  try {
    if (query.query === 'pin') {
      const reason = typeof query.data['reason'] === 'string' ? query.data['reason'] : ''
      if (reason !== '') say(`PIN needed to ${reason}`)
      if (query.data['triesLeft'] === 'final') say('WARNING: final PIN try; a wrong PIN locks the token')
      const prompt = typeof query.data['prompt'] === 'string' ? query.data['prompt'] : 'PIN: '
      // Loaded only when a question comes: node:tty is not needed on the common path.
      const { askPinOnTty } = await import('./tty.js')
      return { result: { pin: await askPinOnTty(prompt) } }
    }
    // A yes/no is the agent's to ask on the terminal itself (docs/design.md §4, rule 2); the
    // protocol has no other query, so this is an agent speaking a newer protocol.
    throw new AgentError('PROTOCOL_ERROR', `The agent asked an unknown question (${String(query.query)})`, {
      remedy: 'Use the shim and the agent from the same release',
    })
  } catch (error) {
    return { error: toAgentError(error, 'PIN_ENTRY_FAILED').toWire() }
  }
}

/** What reaches cargo is rebuilt from checked fields: anything unexpected means "do not cache". */
function cacheOf(result: SignResult): CacheControl {
  if (result.cache === 'expires' && Number.isSafeInteger(result.expiration))
    return { cache: 'expires', expiration: result.expiration }
  if (result.cache === 'session') return { cache: 'session' }
  return { cache: 'never' }
}

/**
 * Provider arguments from cargo's config (`credential-provider = ["cargo-credential-pkcs11",
 * "--socket=/path", "--no-autostart"]`) arrive in the request's `args` (docs/cargo-protocol.md §1.1): the way to
 * configure the shim without it reading the agent's TOML.
 */
export function shimOptions(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): { socket: string; env: NodeJS.ProcessEnv } {
  let socket: string | undefined
  let noAutostart = false
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? ''
    if (arg === '--no-autostart') noAutostart = true
    else if (arg.startsWith('--socket=')) socket = arg.slice('--socket='.length)
    else if (arg === '--socket' && args[i + 1] !== undefined) socket = args[++i]
  }
  return {
    socket: resolveSocketPath(socket, undefined, env).path,
    env: noAutostart ? { ...env, CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' } : env,
  }
}

async function perform(request: CargoRequest, line: string, baseEnv: NodeJS.ProcessEnv): Promise<string> {
  const { socket: socketPath, env } = shimOptions(request.args, baseEnv)
  let connection: AgentConnection
  if (request.kind === 'logout') {
    // No agent means no cached PIN: logging out is already done, do not start one for it.
    const { AgentConnection } = await import('../protocol/client.js')
    try {
      connection = await AgentConnection.connect(socketPath)
    } catch {
      return okLogout()
    }
  } else {
    connection = await connectOrStart(socketPath, env, say)
  }
  try {
    const params = { cargo: line, requester: requesterContext(), interactive: hasTerminal() }
    const options = { onEvent, onQuery, timeoutMs: LIMITS.requestTimeoutMs + 5_000 }
    switch (request.kind) {
      case 'get': {
        const result = await connection.request('sign', params, options)
        if (typeof result.token !== 'string' || !result.token.startsWith('v3.public.'))
          throw new AgentError('PROTOCOL_ERROR', 'The agent answered without a token', {
            remedy: 'Use the shim and the agent from the same release',
          })
        if (request.operation !== 'read') {
          // Mutations are rare and matter: say what was signed, with which key. Reads stay quiet.
          const what = [request.operation, request.crate.name, request.crate.vers]
            .filter((v) => v !== undefined)
            .join(' ')
          say(
            `signed ${what} for ${request.registry.name ?? request.registry.indexUrl} with ${result.key} (${result.kip})`,
          )
        }
        return okGet(result.token, cacheOf(result))
      }
      case 'login': {
        const result = await connection.request('login', params, options)
        const generated = new Set(result.generated)
        for (const key of result.keys) {
          const fresh = generated.has(`${key.token}/${key.label}`)
          say(
            `${fresh ? 'generated' : 'using'} key "${key.label}" (id ${key.id}) on token "${key.token}" for ${result.registry}`,
          )
          // stderr, as cargo:paseto prints its public key: the registry needs these to accept tokens.
          process.stderr.write(`${key.k3Public}\n${key.k3Pid}\n`)
        }
        if (request.hasToken) say('the token given to `cargo login` is ignored: the key lives on the device')
        say('register the k3.public key above with the registry')
        return okLogin()
      }
      case 'logout':
        await connection.request('logout', params, options)
        return okLogout()
    }
  } finally {
    notices.stop()
    connection.close()
  }
}

/** Runs the provider. Resolves to the exit status. */
export async function runShim(
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  if (!argv.includes('--cargo-plugin')) {
    process.stderr.write(
      `${NAME} is a cargo credential provider; cargo starts it. Configure it in .cargo/config.toml:\n` +
        `  [registries.NAME]\n  credential-provider = "${NAME}"\nSee docs/configuration.md.\n`,
    )
    return 2
  }
  // Hello first: cargo sends nothing until it has read it (docs/cargo-protocol.md §1.3).
  respond(HELLO)
  const input = await readRequestLineFast()
  if (input.kind === 'too-large') {
    respond(
      errOther(`The request from cargo is larger than ${LIMITS.cargoLineMaxBytes} bytes`, [
        'cargo requests are small JSON lines; this is not one',
        `${NAME} error code REQUEST_INVALID`,
      ]),
    )
    return 0
  }
  if (input.kind === 'eof') {
    respond(
      errOther(
        input.partialBytes > 0
          ? 'stdin closed in the middle of the request line'
          : 'stdin closed before cargo sent a request',
        [`${NAME} expects one JSON request line after the hello (cargo credential protocol v1)`],
      ),
    )
    return 1
  }
  let request: CargoRequest
  try {
    request = parseCargoRequest(input.line)
  } catch (error) {
    const e = toAgentError(error, 'REQUEST_INVALID')
    // An unknown kind/operation is operation-not-supported; unparseable input has no kind to reply with.
    respond(e.code === 'OPERATION_UNSUPPORTED' ? err('operation-not-supported') : cargoErrorFor(e, 'get'))
    return 0
  }
  try {
    respond(await perform(request, input.line, env))
  } catch (error) {
    const e = toAgentError(error)
    // url-not-supported makes cargo try its next provider and, if none is left, print only "no
    // credential providers could handle the request": say here which URL and what to bind.
    if (e.code === 'REGISTRY_NOT_CONFIGURED') say(e.describe())
    respond(cargoErrorFor(e, request.kind))
  }
  return 0
}
