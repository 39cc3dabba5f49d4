/**
 * UNIT test of Policy's decisions with a FAKE device: SoftHSM (the real device in
 * test/integration/policy-softhsm.test.ts) never raises CKF_USER_PIN_COUNT_LOW / FINAL_TRY /
 * LOCKED and has no PIN pad, so those token states are simulated here the way a PIV card reports
 * them (3 tries; low at 2, final at 1, locked at 0).
 */
import { approveLoginSignAudit } from '../../src/agent/pipeline/run.js'
import assert from 'node:assert/strict'
import { test } from 'node:test'

import type { AuditEntry, AuditSink } from '../../src/audit/entry.js'
import { AgentError } from '../../src/lib/errors.js'
import { Pin } from '../../src/lib/secret.js'
import { registryPolicy as registryPolicyOf } from '../../src/agent/policy-config.js'
import { parseConfig } from '../../src/config/load.js'
import { effectiveConfirm } from '../../src/config/schema.js'
import type { PolicyConfig, TokenPolicy } from '../../src/policy/config.js'
import type { PinPrompt } from '../../src/policy/intent.js'
import type { PolicyDevice } from '../../src/policy/login.js'
import type { PolicyDeviceStatus } from '../../src/policy/pin-errors.js'
import type { DesktopNotifier } from '../../src/policy/notify.js'
import { Policy } from '../../src/policy/policy.js'
import { RecordingPrompter, publishIntent, readIntent } from '../fixtures/pinentry/harness.js'
import { registryPolicy } from '../helpers/policy.js'

/** The agent's approve → login → sign → audit stages (src/agent/pipeline/run.ts) over this policy. */
async function run(
  p: Policy,
  request: Omit<Parameters<typeof approveLoginSignAudit>[2], 'sign'> & {
    audit: MemoryAudit
    sign: () => Promise<string | { token: string; kip: string }>
  },
): Promise<string> {
  const { audit, sign, ...stages } = request
  const signed = await approveLoginSignAudit(p, audit, {
    ...stages,
    sign: async () => {
      const result = await sign()
      return typeof result === 'string' ? { token: result } : result
    },
  })
  return signed.token
}

async function approval(p: Policy, ...args: Parameters<Policy['approve']>): Promise<string> {
  return (await p.approve(...args)).approval
}

class FakePivDevice implements PolicyDevice {
  tries = 3
  loggedIn = false
  logins: (string | null)[] = []
  readonly pin: string
  readonly pinPad: boolean

  constructor(pin = '123456', pinPad = false) {
    this.pin = pin
    this.pinPad = pinPad
  }

  status(): PolicyDeviceStatus {
    return {
      pinCountLow: this.tries === 2,
      pinFinalTry: this.tries === 1,
      pinLocked: this.tries === 0,
      protectedAuthPath: this.pinPad,
    }
  }

  needsLogin(): boolean {
    return !this.loggedIn
  }

  async login(pin: Pin | null): Promise<void> {
    const text = pin === null ? null : pin.expose().toString()
    this.logins.push(text)
    if (this.tries === 0) throw new AgentError('PIN_LOCKED', 'locked')
    if (text === this.pin || (pin === null && this.pinPad)) {
      this.tries = 3
      this.loggedIn = true
      return
    }
    this.tries -= 1
    if (this.tries === 0) throw new AgentError('PIN_LOCKED', 'the PIN is locked')
    throw new AgentError('PIN_INCORRECT', 'the PIN is incorrect')
  }

  logout(): void {
    this.loggedIn = false
  }
}

class MemoryAudit implements AuditSink {
  entries: AuditEntry[] = []
  fail = false
  async record(entry: AuditEntry): Promise<void> {
    if (this.fail) throw new AgentError('AUDIT_FAILED', 'disk full', { remedy: 'free space' })
    this.entries.push(entry)
  }
}

function make(
  config: Partial<PolicyConfig> = {},
  env: NodeJS.ProcessEnv = {},
  notifier?: DesktopNotifier,
): Policy {
  return new Policy(
    { notify: false, ...config },
    {
      env,
      readPinFile: async () => {
        throw new AgentError('PIN_REQUIRED', 'no file in unit tests', { remedy: '-' })
      },
      ...(notifier === undefined ? {} : { notifier }),
    },
  )
}

const tty: TokenPolicy = {
  id: 'piv',
  description: "YubiKey 'PIV' (serial 1234)",
  pin: { kind: 'tty' },
  confirmFinalTry: true,
}

test('at the final try the human must say yes before the PIN is asked, and then it is used once', async () => {
  const device = new FakePivDevice()
  device.tries = 1
  const p = make()
  const prompter = new RecordingPrompter()
  prompter.answers = [true]
  prompter.pins = ['123456']
  await p.ensureLoggedIn(device, tty, prompter, readIntent())
  assert.deepEqual(device.logins, ['123456'])
  assert.match(prompter.confirmations[0]?.text ?? '', /^FINAL PIN TRY for YubiKey 'PIV' \(serial 1234\)/)
  assert.equal(prompter.pinRequests[0]?.triesLeft, 'final')
  const notice = prompter.notices.find((n) => n.kind === 'pin-final-try')
  assert.match(
    notice?.text ?? '',
    /final PIN try .*, for: read from my-registry \(sparse\+http:\/\/127\.0\.0\.1:8080\/index\/\), requested by pid 4242/,
  )
})

test('at the final try: refusing, confirm-final-try off, or a PIN from env are POLICY_DENIED with an unblock remedy, and no login', async () => {
  const cases: [TokenPolicy, boolean[], NodeJS.ProcessEnv][] = [
    [tty, [false], {}],
    [{ ...tty, confirmFinalTry: false }, [], {}],
    [{ ...tty, pin: { kind: 'env', variable: 'PIV_PIN' } }, [], { PIV_PIN: '123456' }],
  ]
  for (const [token, answers, env] of cases) {
    const device = new FakePivDevice()
    device.tries = 1
    const prompter = new RecordingPrompter()
    prompter.answers = answers
    prompter.pins = ['123456']
    await assert.rejects(
      make({}, env).ensureLoggedIn(device, token, prompter, readIntent()),
      (e: unknown) => {
        assert.ok(e instanceof AgentError)
        assert.equal(e.code, 'POLICY_DENIED')
        assert.match(e.remedy ?? '', /ykman piv/)
        assert.match(e.remedy ?? '', /pkcs11-tool/)
        return true
      },
    )
    assert.deepEqual(device.logins, [])
    assert.equal(prompter.pinRequests.length, 0)
  }
})

test('a cached PIN is not silently reused at the final try', async () => {
  const device = new FakePivDevice()
  const p = make()
  const prompter = new RecordingPrompter()
  prompter.pins = ['123456', '123456']
  prompter.answers = [true]
  await p.ensureLoggedIn(device, tty, prompter, readIntent())
  device.logout()
  device.tries = 1 // someone else typed wrong PINs meanwhile
  await p.ensureLoggedIn(device, tty, prompter, readIntent())
  assert.equal(prompter.confirmations.length, 1)
  assert.equal(prompter.pinRequests.length, 2)
})

/** A requester whose PIN answer comes when the test says (`answer`/`fail`), or never. */
class HeldPrompter extends RecordingPrompter {
  answer: (pin: string) => void = () => undefined
  fail: (error: AgentError) => void = () => undefined
  late: Pin | undefined
  override askPin(request: PinPrompt): Promise<Pin> {
    this.pinRequests.push(request)
    return new Promise<Pin>((resolve, reject) => {
      this.answer = (pin) => resolve((this.late = Pin.fromString(pin)))
      this.fail = reject
    })
  }
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

test('a requester that never answers its PIN question holds only its own request: the others ask their own', async () => {
  const device = new FakePivDevice()
  const p = make()
  const holder = new HeldPrompter()
  const holding = p.ensureLoggedIn(device, tty, holder, readIntent())
  await settle()
  assert.equal(holder.pinRequests.length, 1)
  // Another requester is asked on its own terminal at once; its wrong PIN is its own failure,
  // tried once, and sent for nobody else.
  const wrong = new HeldPrompter()
  const wrongRequest = p.ensureLoggedIn(device, tty, wrong, readIntent())
  await settle()
  assert.equal(wrong.pinRequests.length, 1)
  wrong.answer('000000')
  await assert.rejects(wrongRequest, { code: 'PIN_INCORRECT' })
  assert.deepEqual(device.logins, ['000000'])
  // One that cannot be asked (no terminal) waits for the open questions, as before.
  const noTerminal = new RecordingPrompter(false)
  let waited = false
  const waiting = p.ensureLoggedIn(device, tty, noTerminal, readIntent()).then(() => (waited = true))
  const victim = new HeldPrompter()
  const served = p.ensureLoggedIn(device, tty, victim, readIntent())
  await settle()
  assert.equal(waited, false)
  assert.equal(victim.pinRequests.length, 1)
  assert.equal(victim.pinRequests[0]?.triesLeft, 'low', 'asked after the wrong PIN: shows what is left')
  victim.answer('123456')
  await served
  await waiting
  assert.deepEqual(device.logins, ['000000', '123456'], 'one C_Login each, in turn')
  assert.equal(p.cachedPin(tty.id)?.expose().toString(), '123456')
  // The holder's question is moot: its request goes on with the token logged in, it is told so,
  // and an answer that comes later is wiped, never sent to the device.
  await holding
  assert.match(holder.notices.at(-1)?.text ?? '', /another request; yours is not needed/)
  holder.answer('999999')
  await settle()
  assert.equal(
    holder.late?.expose().every((b) => b === 0),
    true,
    'the late answer is wiped',
  )
  assert.deepEqual(device.logins, ['000000', '123456'])
  assert.equal(noTerminal.pinRequests.length, 0)
})

test('a requester whose PIN question fails (timeout, gone) fails alone; the token is not left waiting', async () => {
  const device = new FakePivDevice()
  const p = make()
  const holder = new HeldPrompter()
  const holding = p.ensureLoggedIn(device, tty, holder, readIntent())
  await settle()
  holder.fail(new AgentError('TIMEOUT', 'The sign request did not finish within 120 s'))
  await assert.rejects(holding, { code: 'TIMEOUT' })
  const next = new RecordingPrompter()
  next.pins = ['123456']
  await p.ensureLoggedIn(device, tty, next, readIntent())
  assert.deepEqual(device.logins, ['123456'])
  // With no question open, a request that cannot ask is PIN_REQUIRED at once, as before.
  p.lock()
  device.logout()
  await assert.rejects(p.ensureLoggedIn(device, tty, new RecordingPrompter(false), readIntent()), {
    code: 'PIN_REQUIRED',
  })
})

test('few tries left is shown; a wrong PIN says what is left and is never retried', async () => {
  const device = new FakePivDevice()
  device.tries = 2
  const p = make()
  const prompter = new RecordingPrompter()
  prompter.pins = ['000000', '123456']
  await assert.rejects(p.ensureLoggedIn(device, tty, prompter, readIntent()), (e: unknown) => {
    assert.ok(e instanceof AgentError)
    assert.equal(e.code, 'PIN_INCORRECT')
    assert.match(e.message, /one try left/)
    assert.equal(e.data['finalTry'], true)
    return true
  })
  assert.equal(prompter.pinRequests[0]?.triesLeft, 'low')
  assert.deepEqual(device.logins, ['000000'])
  assert.equal(p.pinCache.size, 0)
})

test('a locked PIN is refused before anything is asked', async () => {
  const device = new FakePivDevice()
  device.tries = 0
  const prompter = new RecordingPrompter()
  await assert.rejects(
    make().ensureLoggedIn(device, tty, prompter, readIntent()),
    (e: unknown) => e instanceof AgentError && e.code === 'PIN_LOCKED' && /unblock-pin/.test(e.remedy ?? ''),
  )
  assert.equal(prompter.pinRequests.length + device.logins.length, 0)
})

test('a PIN pad token logs in with a NULL PIN and tells the human where to type', async () => {
  const device = new FakePivDevice('x', true)
  const prompter = new RecordingPrompter(false)
  await make({ headless: true }).ensureLoggedIn(
    device,
    { ...tty, pin: { kind: 'none' } },
    prompter,
    publishIntent(),
  )
  assert.deepEqual(device.logins, [null])
  assert.match(prompter.notices[0]?.text ?? '', /PIN pad.*publish foo 1\.2\.3/)
})

test('missing env PIN and a terminal-less tty source are PIN_REQUIRED without prompting', async () => {
  const device = new FakePivDevice()
  await assert.rejects(
    make().ensureLoggedIn(
      device,
      { ...tty, pin: { kind: 'env', variable: 'NOPE_PIN' } },
      new RecordingPrompter(),
      readIntent(),
    ),
    (e: unknown) => e instanceof AgentError && e.code === 'PIN_REQUIRED' && /NOPE_PIN/.test(e.message),
  )
  const noTerminal = new RecordingPrompter(false)
  noTerminal.pins = ['123456']
  await assert.rejects(make().ensureLoggedIn(device, tty, noTerminal, readIntent()), { code: 'PIN_REQUIRED' })
  assert.equal(noTerminal.pinRequests.length, 0)
  assert.deepEqual(device.logins, [])
})

test('an env PIN is used for the login and held for context-specific logins (YubiKey 9C)', async () => {
  const device = new FakePivDevice()
  const p = make({}, { PIV_PIN: '123456' })
  const token = { ...tty, pin: { kind: 'env' as const, variable: 'PIV_PIN' } }
  await p.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent())
  assert.deepEqual(device.logins, ['123456'])
  assert.equal(p.cachedPin(token.id)?.expose().toString(), '123456')
  // Cache expired (lock) while the device stays logged in: the PIN is read again, without a login.
  p.pinCache.clear('lock')
  await p.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent())
  assert.deepEqual(device.logins, ['123456'])
  assert.equal(p.cachedPin(token.id)?.expose().toString(), '123456')
})

test('a wrong env PIN is tried once, then refused without a login, after lock and in a reloaded policy too, until it changes', async () => {
  const device = new FakePivDevice()
  const env: NodeJS.ProcessEnv = { PIV_PIN: '000000' }
  const p = make({}, env)
  const token = { ...tty, pin: { kind: 'env' as const, variable: 'PIV_PIN' } }
  await assert.rejects(p.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent()), {
    code: 'PIN_INCORRECT',
  })
  await assert.rejects(
    p.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent()),
    (error: AgentError) => {
      assert.equal(error.code, 'PIN_INCORRECT')
      assert.match(error.message, /not tried again/)
      assert.match(String(error.remedy), /restart it: `cargo-pkcs11-agent stop`/)
      assert.doesNotMatch(error.message + String(error.remedy), /000000/)
      return true
    },
  )
  // `lock` forgets PINs, not which value was rejected: the agent's environment has not changed.
  p.lock()
  await assert.rejects(p.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent()), {
    code: 'PIN_INCORRECT',
    message: /not tried again/,
  })
  // Nor does a reload: the next policy takes the previous one's memory (src/agent/policy-config.ts).
  const reloaded = new Policy(
    { notify: false },
    { env, readPinFile: async () => Promise.reject(new Error('unused')), rejectedPins: p.rejectedPins },
  )
  await assert.rejects(reloaded.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent()), {
    code: 'PIN_INCORRECT',
    message: /not tried again/,
  })
  assert.deepEqual(device.logins, ['000000'])
  assert.equal(device.tries, 2)
  // A changed value is tried at once.
  env['PIV_PIN'] = '123456'
  await reloaded.ensureLoggedIn(device, token, new RecordingPrompter(false), readIntent())
  assert.deepEqual(device.logins, ['000000', '123456'])
})

test('mutations: rate limited per registry before anyone is asked; a refusal gives its slot back; reads are not limited', async () => {
  const p = make()
  const registry = registryPolicy({ confirm: 'prompt', mutationsPerHour: 2 })
  const prompter = new RecordingPrompter()
  prompter.answers = [true, false, true]
  assert.equal(await approval(p, publishIntent(), prompter, registry), 'terminal')
  await assert.rejects(approval(p, publishIntent(), prompter, registry), { code: 'DENIED' })
  assert.equal(await approval(p, publishIntent(), prompter, registry), 'terminal')
  await assert.rejects(approval(p, publishIntent(), prompter, registry), { code: 'RATE_LIMITED' })
  assert.equal(prompter.confirmations.length, 3)
  for (let i = 0; i < 5; i++)
    assert.equal(await approval(p, readIntent(), prompter, registry), 'not-required')
  assert.equal(
    await approval(
      p,
      publishIntent({ indexUrl: 'sparse+http://127.0.0.1:9/index/' }),
      prompter,
      registryPolicy({ confirm: 'touch', touchAttested: true }),
    ),
    'touch',
  )
  assert.equal(
    await approval(
      p,
      publishIntent({ indexUrl: 'sparse+http://127.0.0.1:9/index/' }),
      prompter,
      registryPolicy({ confirm: 'touch' }),
    ),
    'touch-unattested',
  )
  assert.equal(
    await approval(
      p,
      publishIntent({ indexUrl: 'sparse+http://127.0.0.1:9/index/' }),
      prompter,
      registryPolicy({ confirm: 'none' }),
    ),
    'none',
  )
  assert.equal(prompter.confirmations.length, 3)
})

test('mutation defaults are prompt and 30 per hour, never none; forwarded requests may only read', () => {
  const config = parseConfig(
    '[tokens.t]\nmodule = "softhsm"\nlabel = "t"\n[registries.r]\nindex = "sparse+http://127.0.0.1:8080/index/"\nread-key = { token = "t", label = "k" }\n',
    'config.toml',
    {},
  )
  const registry = config.registries['r']
  assert.ok(registry !== undefined)
  assert.deepEqual(
    { ...registryPolicyOf(registry, effectiveConfirm(registry)) },
    {
      confirm: 'prompt',
      touchAttested: false,
      mutationsPerHour: 30,
      forwarded: 'read',
    },
  )
})

function runRequest(
  p: Policy,
  audit: MemoryAudit,
  sign: () => Promise<string>,
  prompter = new RecordingPrompter(),
) {
  const device = new FakePivDevice()
  device.loggedIn = true
  return run(p, {
    intent: publishIntent(),
    prompter,
    registry: registryPolicy({ confirm: 'touch', touchAttested: true }),
    token: { ...tty, pin: { kind: 'none' } },
    device,
    kip: 'k3.pid.x',
    audit,
    sign,
  })
}

test('a slow signature raises the touch notice with the intent, on the terminal and the desktop', async () => {
  const desktop: [string, string][] = []
  const p = make({ touchNoticeAfterMs: 20 }, {}, { notify: async (t, b) => void desktop.push([t, b]) })
  const audit = new MemoryAudit()
  const prompter = new RecordingPrompter()
  let release: (token: string) => void = () => {}
  const signing = new Promise<string>((resolve) => (release = resolve))
  const result = runRequest(p, audit, () => signing, prompter)
  while (prompter.notices.length === 0) await new Promise((r) => setTimeout(r, 10))
  const notice = prompter.notices[0]
  assert.equal(notice?.kind, 'touch-pending')
  assert.ok(notice?.kind === 'touch-pending' && notice.deadline > Date.now())
  assert.match(
    notice?.text ?? '',
    /^Touch YubiKey 'PIV' \(serial 1234\) to publish foo 1\.2\.3 \(cksum 6dee75a8…\) to my-registry/,
  )
  assert.equal(desktop[0]?.[1], notice?.text)
  release('v3.public.token')
  assert.equal(await result, 'v3.public.token')
  assert.equal(audit.entries[0]?.result, 'signed')
  assert.equal(audit.entries[0]?.approval, 'touch')
})

test('a fast signature raises no notice', async () => {
  const p = make({ touchNoticeAfterMs: 5_000 })
  const prompter = new RecordingPrompter()
  await runRequest(p, new MemoryAudit(), async () => 'tok', prompter)
  assert.equal(prompter.notices.length, 0)
})

test('a touch that never comes is TOUCH_TIMEOUT, plainly, and audited as failed', async () => {
  const p = make({ touchNoticeAfterMs: 10, touchTimeoutMs: 150 })
  const audit = new MemoryAudit()
  await assert.rejects(
    runRequest(p, audit, () => new Promise<string>(() => {})),
    (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'TOUCH_TIMEOUT')
      assert.equal(
        e.message,
        "No touch received on YubiKey 'PIV' (serial 1234) within 0.1 s, so nothing was signed",
      )
      assert.equal(e.data['noticeShown'], true)
      return true
    },
  )
  assert.deepEqual([audit.entries[0]?.result, audit.entries[0]?.code], ['failed', 'TOUCH_TIMEOUT'])
})

test('a key found only after login: sign may return its k3.pid for the audit line', async () => {
  const audit = new MemoryAudit()
  const device = new FakePivDevice()
  device.loggedIn = true
  const token = await run(make(), {
    intent: readIntent(),
    prompter: new RecordingPrompter(),
    registry: registryPolicy(),
    token: { ...tty, pin: { kind: 'none' } },
    device,
    audit,
    sign: async () => ({ token: 'v3.public.t', kip: 'k3.pid.late' }),
  })
  assert.equal(token, 'v3.public.t')
  assert.equal(audit.entries[0]?.kip, 'k3.pid.late')
  assert.equal(audit.entries[0]?.approval, 'not-required')
})

test('a mutation that ends without a released token gives its rate-limit slot back', async () => {
  const p = make({ touchNoticeAfterMs: 5, touchTimeoutMs: 50 })
  const registry = registryPolicy({ confirm: 'touch', mutationsPerHour: 1 })
  const device = new FakePivDevice()
  device.loggedIn = true
  const base = {
    intent: publishIntent(),
    prompter: new RecordingPrompter(),
    registry,
    token: { ...tty, pin: { kind: 'none' as const } },
    device,
    audit: new MemoryAudit(),
  }
  await assert.rejects(run(p, { ...base, sign: () => new Promise<string>(() => {}) }), {
    code: 'TOUCH_TIMEOUT',
  })
  assert.equal(p.limiter.count(publishIntent().indexUrl), 0)
  assert.equal(await run(p, { ...base, sign: async () => 'v3.public.ok' }), 'v3.public.ok')
  await assert.rejects(run(p, { ...base, sign: async () => 'v3.public.again' }), { code: 'RATE_LIMITED' })
})

test('a token whose audit line cannot be written is not released (AUDIT_FAILED)', async () => {
  const audit = new MemoryAudit()
  audit.fail = true
  await assert.rejects(
    runRequest(make(), audit, async () => 'v3.public.secret-token'),
    (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'AUDIT_FAILED')
      assert.equal(JSON.stringify(e.toWire()).includes('secret-token'), false)
      return true
    },
  )
})

test('a notice the prompter cannot deliver never fails the request', async () => {
  const p = make({ touchNoticeAfterMs: 5 })
  const prompter = new RecordingPrompter()
  prompter.notify = () => {
    throw new Error('shim went away')
  }
  const token = await runRequest(
    p,
    new MemoryAudit(),
    () => new Promise((r) => setTimeout(() => r('tok'), 60)),
    prompter,
  )
  assert.equal(token, 'tok')
})

test('no terminal and a pinentry that cannot ask: the refusal names a confirmation mode, not a PIN source', async () => {
  const p = make({ pinentryProgram: '/nonexistent/pinentry' })
  await assert.rejects(
    p.approve(publishIntent(), new RecordingPrompter(false), registryPolicy({ confirm: 'prompt' })),
    (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'POLICY_DENIED')
      assert.match(e.message, /no terminal and pinentry could not ask/)
      assert.match(e.remedy ?? '', /confirm = "touch"/)
      assert.match(e.remedy ?? '', /confirm = "none"/)
      assert.doesNotMatch(e.remedy ?? '', /PIN source/)
      return true
    },
  )
})

test('nobody can confirm: confirm = "touch" is advised only for a key that attests a touch policy', async () => {
  const refusal = async (config: Partial<PolicyConfig>, touchAttested: boolean): Promise<string> => {
    const error = await make(config)
      .approve(
        publishIntent(),
        new RecordingPrompter(false),
        registryPolicy({ confirm: 'prompt', touchAttested }),
      )
      .then(
        () => assert.fail('approved'),
        (e: unknown) => e,
      )
    assert.ok(error instanceof AgentError)
    assert.equal(error.code, 'POLICY_DENIED')
    return error.remedy ?? ''
  }
  for (const config of [{ headless: true }, { pinentryProgram: '/nonexistent/pinentry' }]) {
    const label = JSON.stringify(config)
    // SoftHSM, a TPM: a touch the agent cannot check, counted as none by a reload.
    const unattested = await refusal(config, false)
    assert.doesNotMatch(unattested, /set confirm = "touch"/, label)
    assert.match(unattested, /set confirm = "none" for this registry .*attests no touch policy/, label)
    assert.match(unattested, /use a mutation key with a touch policy .* and confirm = "touch"/, label)
    const attested = await refusal(config, true)
    assert.match(
      attested,
      /set confirm = "touch" \(its mutation key attests a touch policy\) or confirm = "none"/,
      label,
    )
  }
  // Forwarded: confirm = "none" does not spare the question, so it is not offered.
  const far = publishIntent({ requester: { forwarded: { via: 'ssh', pid: 7, verified: true } } })
  const forwarded = await make({ pinentryProgram: '/nonexistent/pinentry' })
    .approve(far, new RecordingPrompter(false), registryPolicy({ confirm: 'prompt', forwarded: 'confirm' }))
    .catch((e: unknown) => e)
  assert.ok(forwarded instanceof AgentError)
  assert.doesNotMatch(forwarded.remedy ?? '', /set confirm = "none"/)
  assert.match(forwarded.remedy ?? '', /asked even with confirm = "none"/)
})

test('forwarded requests follow the registry’s `forwarded`; their confirmation is never asked on the terminal, even with confirm = "none"', async () => {
  const far = { forwarded: { via: 'ssh', pid: 77, exe: '/usr/bin/ssh', verified: true } } as const
  const p = make({ pinentryProgram: '/nonexistent/pinentry' })
  const prompter = new RecordingPrompter() // with a terminal, which must not be used
  prompter.answers = [true, true, true]
  assert.equal(await approval(p, readIntent({ requester: far }), prompter, registryPolicy()), 'not-required')
  await assert.rejects(
    approval(p, publishIntent({ requester: far }), prompter, registryPolicy({ mutationsPerHour: 1 })),
    (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'FORWARDED_REFUSED')
      assert.match(
        e.message,
        /requested from a forwarded connection via ssh pid 77; .*\(forwarded = "read"\)/,
      )
      assert.match(e.remedy ?? '', /forwarded = "confirm"/)
      return true
    },
  )
  await assert.rejects(
    approval(p, readIntent({ requester: far }), prompter, registryPolicy({ forwarded: 'refuse' })),
    { code: 'FORWARDED_REFUSED' },
  )
  const other = { indexUrl: 'sparse+http://127.0.0.1:9/index/', requester: far }
  assert.equal(
    await approval(
      p,
      publishIntent(other),
      prompter,
      registryPolicy({ forwarded: 'confirm', confirm: 'touch', touchAttested: true }),
    ),
    'touch',
  )
  // Asked even with confirm = "none", or "touch" the key does not attest, and only in the agent's
  // pinentry (missing here): fails closed.
  for (const confirm of ['none', 'prompt', 'touch'] as const)
    await assert.rejects(
      approval(
        p,
        publishIntent({ requester: far }),
        prompter,
        registryPolicy({ forwarded: 'confirm', confirm }),
      ),
      { code: 'POLICY_DENIED' },
      confirm,
    )
  assert.equal(prompter.confirmations.length, 0, 'nothing was asked on the terminal')
  // No refusal kept a rate-limit slot: the one local publish this hour still passes.
  assert.equal(
    await approval(p, publishIntent(), prompter, registryPolicy({ mutationsPerHour: 1 })),
    'terminal',
  )
})
