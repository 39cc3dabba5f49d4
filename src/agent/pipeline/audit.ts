/**
 * Stage 5: the audit log, one JSON line per signing decision, durable before a token is released
 * (design.md). The line format and the fsync'd append are the audit module's; `Policy.run` writes it.
 */
import { AuditLog } from '../../audit/log.js'

export function auditSink(path: string): AuditLog {
  return new AuditLog(path)
}
