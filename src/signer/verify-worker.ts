/**
 * One thread of the self-verify pool (verify-pool.ts): answers each `{ id, publicKey, message,
 * signature }` with `{ id, ok }`, verifying with the same function the main thread would use.
 */
import { parentPort } from 'node:worker_threads'

import { verifySignature } from '../keys/signature.js'

interface Job {
  id: number
  publicKey: Uint8Array
  message: Uint8Array
  signature: Uint8Array
}

parentPort?.on('message', (job: Job) => {
  let ok = false
  try {
    ok = verifySignature(job.publicKey, job.message, job.signature)
  } catch {
    // A key or signature node:crypto cannot parse does not verify.
  }
  parentPort?.postMessage({ id: job.id, ok })
})
