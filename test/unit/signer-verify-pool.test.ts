import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { P384, bigIntToBytes, bytesToBigInt } from '../../src/keys/point.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { verifyOffThread } from '../../src/signer/verify-pool.js'

const run = promisify(execFile)

function flip(signature: Uint8Array, index: number): Uint8Array {
  const copy = Uint8Array.from(signature)
  copy[index] = (copy[index] ?? 0) ^ 0x01
  return copy
}

test('the worker verify agrees with the key: valid yes, any flipped bit or other message or key no', async () => {
  const signer = MemorySigner.generate()
  const other = MemorySigner.generate()
  const message = new TextEncoder().encode('v3.public. PAE stand-in')
  const signature = await signer.sign(message)
  assert.equal(await verifyOffThread(signer.publicKey, message, signature), true)
  assert.equal(await verifyOffThread(signer.publicKey, message, flip(signature, 3)), false)
  assert.equal(await verifyOffThread(signer.publicKey, message, flip(signature, 90)), false)
  assert.equal(await verifyOffThread(signer.publicKey, flip(message, 0), signature), false)
  assert.equal(await verifyOffThread(other.publicKey, message, signature), false)
  assert.equal(await verifyOffThread(signer.publicKey, message, signature.subarray(0, 95)), false)
  // The high-S twin is valid ECDSA: the pool verifies like verifySignature (the caller normalises).
  const s = bytesToBigInt(signature.subarray(48))
  const highS = Uint8Array.from(signature)
  highS.set(bigIntToBytes(P384.n - s, 48), 48)
  assert.equal(await verifyOffThread(signer.publicKey, message, highS), true)
})

test('many concurrent verifies each get their own answer', async () => {
  const signer = MemorySigner.generate()
  const jobs = await Promise.all(
    Array.from({ length: 40 }, async (_, i) => {
      const message = new TextEncoder().encode(`message ${i}`)
      const signature = await signer.sign(message)
      const bad = i % 3 === 0
      return {
        bad,
        ok: await verifyOffThread(signer.publicKey, message, bad ? flip(signature, i) : signature),
      }
    }),
  )
  for (const [i, job] of jobs.entries()) assert.equal(job.ok, !job.bad, `job ${i}`)
})

test('an idle pool does not keep a process alive', async () => {
  // Workers that stayed referenced kept every CLI command and test file from exiting.
  const script = `
    const { MemorySigner } = await import(${JSON.stringify(new URL('../../src/signer/memory.js', import.meta.url).href)})
    const { verifyOffThread } = await import(${JSON.stringify(new URL('../../src/signer/verify-pool.js', import.meta.url).href)})
    const s = MemorySigner.generate()
    const m = new Uint8Array(8)
    console.log(await verifyOffThread(s.publicKey, m, await s.sign(m)))
  `
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { timeout: 15_000 })
  assert.equal(stdout.trim(), 'true')
})
