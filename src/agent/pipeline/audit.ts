/**
 * Stage 5: one JSON line per signature, appended before the token is released (design: "audit log:
 * written before the token is released"). The token itself is never logged.
 */
import { appendFileSync, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'

import { AgentError } from '../../lib/errors.js'
import { LIMITS } from '../../lib/limits.js'
import type { Intent } from '../../policy/intent.js'
import type { Binding } from './bind.js'

function cut(text: string | undefined): string | undefined {
  return text === undefined ? undefined : text.length > LIMITS.auditFieldMaxChars ? `${text.slice(0, LIMITS.auditFieldMaxChars)}…` : text
}

export function auditLine(intent: Intent, binding: Binding, kip: string, iatSeconds: number, at: Date = new Date()): string {
  return JSON.stringify({
    time: at.toISOString(),
    event: 'sign',
    registry: binding.registry.name,
    indexUrl: cut(intent.indexUrl),
    operation: intent.operation,
    name: cut(intent.name),
    vers: cut(intent.vers),
    cksum: intent.cksum,
    token: binding.token.name,
    kip,
    iat: iatSeconds,
    requester: { pid: intent.requester.pid, ppid: intent.requester.ppid, command: cut(intent.requester.command), tty: cut(intent.requester.tty) },
  })
}

export function recordAudit(path: string, line: string): void {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    // One write() per line with O_APPEND keeps concurrent lines whole.
    appendFileSync(path, line + '\n', { mode: 0o600 })
  } catch (error) {
    throw new AgentError('AUDIT_FAILED', `The audit log ${path} cannot be written (${(error as NodeJS.ErrnoException).code ?? String(error)}); the token was not released`, {
      cause: error,
      remedy: 'Fix the path or permissions of audit-log in the agent config',
    })
  }
}
