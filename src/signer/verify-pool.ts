/**
 * The self-verify of every device signature, off the event loop. A P-384 verify costs about as much
 * CPU as the device's sign (~0.8 ms on the benchmark machine, BENCHMARKS.md); on the main thread
 * it stalls every other request. A few worker threads (one per core, LIMITS.verifyWorkersMax
 * at most) each verify one signature at a time; the inputs are a 49-byte key, a PAE of a few
 * hundred bytes and a 96-byte signature, copied by structured clone. The caller still awaits the
 * answer before the signature leaves the Signer (src/signer/pkcs11.ts), exactly as inline.
 *
 * A worker that dies or cannot start never weakens the check: its pending jobs, and every later
 * one while no worker runs, are verified inline on the main thread.
 */
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'

import { verifySignature } from '../keys/signature.js'
import { LIMITS } from '../lib/limits.js'

interface Job {
  publicKey: Uint8Array
  message: Uint8Array
  signature: Uint8Array
  resolve: (ok: boolean) => void
}

interface Thread {
  worker: Worker
  pending: Map<number, Job>
}

let threads: Thread[] | undefined
let nextId = 0

function inline(job: Job): void {
  job.resolve(verifySignature(job.publicKey, job.message, job.signature))
}

function spawn(): Thread | undefined {
  let worker: Worker
  try {
    worker = new Worker(new URL('./verify-worker.js', import.meta.url))
  } catch {
    return undefined
  }
  const thread: Thread = { worker, pending: new Map() }
  worker.on('message', ({ id, ok }: { id: number; ok: boolean }) => {
    const job = thread.pending.get(id)
    if (job === undefined) return
    thread.pending.delete(id)
    if (thread.pending.size === 0) worker.unref()
    job.resolve(ok)
  })
  const fail = (): void => {
    threads = threads?.filter((t) => t !== thread)
    for (const job of thread.pending.values()) inline(job)
    thread.pending.clear()
  }
  worker.on('error', fail)
  worker.on('exit', fail)
  // An idle pool must not keep a CLI command or test process alive. After the listeners: adding a
  // 'message' listener refs the worker's port again.
  worker.unref()
  return thread
}

function pool(): Thread[] {
  if (threads === undefined) {
    const size = Math.max(1, Math.min(availableParallelism(), LIMITS.verifyWorkersMax))
    threads = Array.from({ length: size }, spawn).filter((t) => t !== undefined)
  }
  return threads
}

/** verifySignature (src/keys/signature.ts) on the least busy worker thread. */
export function verifyOffThread(
  publicKey: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const job: Job = { publicKey, message, signature, resolve }
    const all = pool()
    const thread = all.reduce<Thread | undefined>(
      (best, t) => (best === undefined || t.pending.size < best.pending.size ? t : best),
      undefined,
    )
    if (thread === undefined) return inline(job)
    const id = nextId++
    thread.pending.set(id, job)
    thread.worker.ref()
    thread.worker.postMessage({ id, publicKey, message, signature })
  })
}
