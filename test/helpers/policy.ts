/**
 * The policy stage on a real device (test/integration/policy-*.test.ts): a Policy whose prompts
 * all go to the scripted pinentry, and tokens built for, and verified against, one Intent.
 */
import { LIMITS } from '../../src/lib/limits.js'
import { readPinFile } from '../../src/lib/pin-file.js'
import type { PolicyConfig, RegistryPolicy } from '../../src/policy/config.js'
import type { Intent } from '../../src/cargo/intent.js'
import { Policy, type PolicyDeps } from '../../src/policy/policy.js'
import type { Signer } from '../../src/signer/signer.js'
import { buildToken, type BuiltToken } from '../../src/token/build.js'
import { verifyToken, type VerifiedToken } from '../../src/verify/verify.js'
import { PINENTRY_PROGRAM } from '../fixtures/pinentry/harness.js'

/**
 * PINs and confirmations through the scripted pinentry, PIN files read as the agent reads them, no
 * desktop notifications from a test run.
 */
export function scriptedPolicy(overrides: Partial<PolicyConfig>, deps: Partial<PolicyDeps> = {}): Policy {
  return new Policy(
    { pinentryProgram: PINENTRY_PROGRAM, notify: false, confirmVia: 'pinentry', ...overrides },
    { readPinFile, ...deps },
  )
}

/** A registry's policy as the agent passes it: the config's defaults (LIMITS), with `overrides`. */
export function registryPolicy(overrides: Partial<RegistryPolicy> = {}): RegistryPolicy {
  return Object.freeze({
    confirm: LIMITS.defaultConfirm,
    touchAttested: false,
    mutationsPerHour: LIMITS.defaultMutationsPerHour,
    forwarded: LIMITS.defaultForwarded,
    ...overrides,
  })
}

/** A real token for what the intent asks (the device signs it). */
export async function buildIntentToken(signer: Signer, intent: Intent): Promise<BuiltToken> {
  return await buildToken(signer, {
    indexUrl: intent.indexUrl,
    operation: intent.operation,
    crate: intent.crate,
  })
}

/** Verifies as a registry would: signature, and claims bound to exactly this intent. */
export async function verifyIntentToken(
  token: string,
  publicKey: Uint8Array,
  intent: Intent,
): Promise<VerifiedToken> {
  return await verifyToken(token, {
    publicKey,
    url: intent.indexUrl,
    operation: intent.operation,
    crate: intent.crate,
  })
}
