/**
 * The agent's config mapped onto the policy module's own shapes (policy never reads the config:
 * test/unit/layering.test.ts), and the one Policy per loaded config.
 */
import type { Config, EffectiveConfirm, RegistryConfig, TokenConfig } from '../config/schema.js'
import { readPinFile } from '../lib/pin-file.js'
import type { PinSource, RegistryPolicy, TokenPolicy } from '../policy/config.js'
import { Policy } from '../policy/policy.js'

const KIND_TEXT: Readonly<Record<NonNullable<TokenConfig['kind']>, string>> = {
  yubikey: 'your YubiKey',
  tpm: 'the TPM',
  softhsm: 'SoftHSM token',
  hsm: 'the HSM',
}

export function tokenDescription(token: TokenConfig): string {
  const which =
    token.serial !== undefined
      ? ` (serial ${token.serial})`
      : token.label !== undefined
        ? ` '${token.label}'`
        : ` "${token.name}"`
  return `${token.kind === undefined ? 'token' : KIND_TEXT[token.kind]}${which}`
}

/** The token's `pin-source` as the PIN reader takes it (src/policy/pin-source.ts), for the agent and the CLI. */
export function pinSource(token: TokenConfig): PinSource {
  switch (token.pinSource) {
    case 'env':
      return { kind: 'env', variable: token.pinEnv ?? '' }
    case 'file':
      return { kind: 'file', path: token.pinFile ?? '' }
    case 'pinentry':
      return token.pinentryProgram === undefined
        ? { kind: 'pinentry' }
        : { kind: 'pinentry', program: token.pinentryProgram }
    case 'tty':
      return { kind: 'tty' }
    case 'none':
      return { kind: 'none' }
  }
}

/** The PIN cache key is the config name: a token renamed in the config is a new token. */
export function tokenPolicy(token: TokenConfig): TokenPolicy {
  return Object.freeze({
    id: token.name,
    description: tokenDescription(token),
    pin: pinSource(token),
    confirmFinalTry: token.confirmFinalTry,
  })
}

/** `confirm` is the effective one (src/config/schema.ts `effectiveConfirm`): an unset one is resolved by then. */
export function registryPolicy(registry: RegistryConfig, confirm: EffectiveConfirm): RegistryPolicy {
  return Object.freeze({
    confirm: confirm.mode,
    touchAttested: confirm.touchAttested,
    mutationsPerHour: registry.mutationsPerHour,
    forwarded: registry.forwarded,
  })
}

export function pinEnvVariables(config: Config): string[] {
  return Object.values(config.tokens).flatMap((t) => (t.pinEnv === undefined ? [] : [t.pinEnv]))
}

/**
 * Every `pin-env` name of every config this process loaded: a reload that drops one leaves its
 * variable in the agent's environment, so children (pinentry, notify-send) never get it either
 * (docs/policy.md, "PIN sources"). Grows only.
 */
const seenPinEnv = new Set<string>()

/**
 * One Policy per loaded config (a reload starts with an empty PIN cache anyway). `previous`, the
 * policy a reload replaces, hands on which env/file PINs its tokens rejected, and its rate limiter:
 * the mutations of the sliding hour stay counted (docs/policy.md, "Mutations").
 */
export function createPolicy(config: Config, log: (line: string) => void, previous?: Policy): Policy {
  for (const name of pinEnvVariables(config)) seenPinEnv.add(name)
  const policy = new Policy(
    {
      headless: config.agent.headless,
      pinCacheIdleSeconds: config.agent.pinCacheIdleSeconds,
      pinCacheMaxSeconds: config.agent.pinCacheMaxSeconds,
      touchNoticeAfterMs: config.agent.touchNoticeAfterMs,
      notify: config.agent.notify,
    },
    {
      env: process.env,
      readPinFile,
      ...(previous === undefined ? {} : { rejectedPins: previous.rejectedPins, limiter: previous.limiter }),
      secretEnvVariables: [...seenPinEnv],
      log: (event, data) => log(`${event} ${JSON.stringify(data)}`),
    },
  )
  policy.pinCache.startSweeper()
  return policy
}
