import assert from 'node:assert/strict'

import { AgentError, type ErrorCode } from '../../src/lib/errors.js'

/**
 * Awaits a failure that must be an AgentError with one of `codes` and a remedy (every error says
 * what to do next), and returns it for further checks.
 */
export async function rejectsWithCode(
  promise: Promise<unknown>,
  ...codes: readonly ErrorCode[]
): Promise<AgentError> {
  try {
    await promise
  } catch (error) {
    assert.ok(error instanceof AgentError, `expected an AgentError, got ${String(error)}`)
    assert.ok(
      codes.includes(error.code),
      `expected ${codes.join(' or ')}, got ${error.code}: ${error.describe()}`,
    )
    assert.ok(error.remedy !== undefined && error.remedy.length > 0, 'every error carries a remedy')
    return error
  }
  assert.fail(`expected ${codes.join(' or ')}, but it succeeded`)
}
