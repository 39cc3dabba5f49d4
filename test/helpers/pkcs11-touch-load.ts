/**
 * Child process for the "8 signs wait for a touch" test. It runs in its own process because the
 * libuv threadpool size is fixed when the process starts (see src/bin/cargo-pkcs11-agent.cts): the parent
 * test starts it with and without UV_THREADPOOL_SIZE to show the difference.
 *
 * Input (env LOAD_INPUT, JSON): { faultyModule, softhsmModule, control, touchLabel, otherLabel, pin, delayMs }
 * Output (stdout, one JSON line): { maxLoopDelayMs, loopP99Ms, resolutionMs, otherSigns, ninthMs,
 * touchMs: number[], allVerified, poolThreads }
 *
 * While the 8 touches wait, another client keeps signing on the other token. The loop delay is
 * sampled every 1 ms; Node 20's monitorEventLoopDelay counts its own timer interval into every
 * sample, so `loopP99Ms` is the 99th percentile less that resolution (the delay beyond the timer).
 */
import { writeFileSync } from 'node:fs'
import { performance, monitorEventLoopDelay } from 'node:perf_hooks'

import { Pin } from '../../src/lib/secret.js'
import { verifySignature } from '../../src/keys/signature.js'
import { Device } from '../../src/pkcs11/device.js'
import { pkcs11Signer } from '../../src/signer/pkcs11.js'

interface Input {
  faultyModule: string
  softhsmModule: string
  control: string
  touchLabel: string
  otherLabel: string
  pin: string
  delayMs: number
}

const input = JSON.parse(process.env['LOAD_INPUT'] ?? '{}') as Input
const pin = Pin.fromString(input.pin)

const touchDevice = new Device(
  { module: input.faultyModule, label: input.touchLabel },
  { cachedPin: () => pin },
)
const otherDevice = new Device(
  { module: input.softhsmModule, label: input.otherLabel },
  { cachedPin: () => pin },
)
await touchDevice.login(pin)
await otherDevice.login(pin)
const touchSigner = await pkcs11Signer(touchDevice, { label: 'gen' })
const otherSigner = await pkcs11Signer(otherDevice, { label: 'gen' })
// Warm up: sessions exist and the key lookup path has run once on each device.
await touchSigner.sign(Buffer.from('warm-up'))
await otherSigner.sign(Buffer.from('warm-up'))

writeFileSync(input.control, `sign_delay_ms=${input.delayMs}\n`)
const resolutionMs = 1
const histogram = monitorEventLoopDelay({ resolution: resolutionMs })
histogram.enable()
const start = performance.now()
const messages = Array.from({ length: 8 }, (_, i) => Buffer.from(`touch ${i}`))
const touchMs: number[] = []
const touches = messages.map(async (m) => {
  const sig = await touchSigner.sign(m)
  touchMs.push(performance.now() - start)
  return verifySignature(touchSigner.publicKey, m, sig)
})
await new Promise((resolve) => setTimeout(resolve, 100))
const ninthMessage = Buffer.from('ninth, another token')
const ninthSig = await otherSigner.sign(ninthMessage)
const ninthMs = performance.now() - start
let touchesDone = false
let otherSigns = 0
const keepSigning = (async () => {
  let ok = true
  while (!touchesDone) {
    const m = Buffer.from(`other ${otherSigns}`)
    ok = verifySignature(otherSigner.publicKey, m, await otherSigner.sign(m)) && ok
    otherSigns += 1
  }
  return ok
})()
const verified = await Promise.all(touches)
touchesDone = true
const othersVerified = await keepSigning
histogram.disable()
writeFileSync(input.control, '')

const allVerified =
  verified.every(Boolean) && othersVerified && verifySignature(otherSigner.publicKey, ninthMessage, ninthSig)
process.stdout.write(
  `${JSON.stringify({
    maxLoopDelayMs: histogram.max / 1e6,
    loopP99Ms: histogram.percentile(99) / 1e6 - resolutionMs,
    resolutionMs,
    otherSigns,
    ninthMs,
    touchMs,
    allVerified,
    poolThreads: process.env['UV_THREADPOOL_SIZE'] ?? 'default',
  })}\n`,
)
await touchDevice.release()
await otherDevice.release()
