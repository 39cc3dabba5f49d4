/**
 * The one PIN reader (src/policy/pin-source.ts) and the one builder of PIN errors
 * (src/policy/pin-errors.ts), with injected askers: the agent's and the CLI's remedies, nobody asked
 * when nobody may be, typed PINs checked and wiped, tries left read from `AgentError.triesLeft`.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'
import { Pin } from '../../src/lib/secret.js'
import type { PinPrompt } from '../../src/policy/intent.js'
import { UNBLOCK_REMEDY, wrongPin, type PinAsker } from '../../src/policy/pin-errors.js'
import { readPin, type PinSources } from '../../src/policy/pin-source.js'

const PROMPT: PinPrompt = { tokenDescription: "SoftHSM token 'ci'", reason: 'publish foo 1.2.3' }

function sources(asker: PinAsker, overrides: Partial<PinSources> = {}): PinSources & { asked: PinPrompt[] } {
  const asked: PinPrompt[] = []
  return {
    asked,
    asker,
    env: {},
    readPinFile: async (path) => Pin.fromString(`from ${path}`),
    terminal: async (prompt) => {
      asked.push(prompt)
      return Pin.fromString('123456')
    },
    pinentry: { unavailable: 'pinentry is not wanted in this test' },
    notify: () => undefined,
    ...overrides,
  }
}

test('env: the value is the PIN; unset, the error names the variable with the asker’s remedy', async () => {
  const pin = await readPin(
    { kind: 'env', variable: 'CI_PIN' },
    PROMPT,
    sources('agent', { env: { CI_PIN: '2468' } }),
  )
  assert.equal(pin.expose().toString(), '2468')
  for (const [asker, remedy] of [
    ['agent', /^Set CI_PIN for the agent \(in CI: from a secret\), or use pin-source = "file"$/],
    ['command', /^Export CI_PIN with the token PIN and run the command again$/],
  ] as const) {
    await assert.rejects(
      readPin({ kind: 'env', variable: 'CI_PIN' }, PROMPT, sources(asker, { env: { CI_PIN: '' } })),
      (e: unknown) => {
        assert.ok(e instanceof AgentError)
        assert.equal(e.code, 'PIN_REQUIRED')
        assert.match(
          e.message,
          /SoftHSM token 'ci' should come from the environment variable CI_PIN, which is not set/,
        )
        assert.match(e.remedy ?? '', remedy)
        return true
      },
    )
  }
  await assert.rejects(
    readPin(
      { kind: 'env', variable: 'P' },
      PROMPT,
      sources('agent', { env: { P: 'x'.repeat(LIMITS.pinMaxBytes + 1) } }),
    ),
    { code: 'PIN_INVALID' },
  )
})

test('file: read through the injected reader, with the configured path', async () => {
  const pin = await readPin({ kind: 'file', path: '/run/secrets/pin' }, PROMPT, sources('command'))
  assert.equal(pin.expose().toString(), 'from /run/secrets/pin')
})

test('tty: the prompt goes to the injected asker; when no terminal may be asked it is PIN_REQUIRED and nobody is asked', async () => {
  const ok = sources('agent')
  await readPin({ kind: 'tty' }, { ...PROMPT, triesLeft: 'low' }, ok)
  assert.deepEqual(ok.asked, [{ ...PROMPT, triesLeft: 'low' }])
  for (const [asker, remedy] of [
    ['agent', /pin-source = "env" with pin-env = "VAR"/],
    ['command', /pass --pin-env VAR or --pin-file FILE/],
  ] as const) {
    const none = sources(asker, { terminal: { unavailable: 'there is no terminal' } })
    await assert.rejects(readPin({ kind: 'tty' }, PROMPT, none), (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'PIN_REQUIRED')
      assert.equal(
        e.message,
        "SoftHSM token 'ci' needs the PIN and there is no terminal, so nobody can be asked",
      )
      assert.match(e.remedy ?? '', remedy)
      return true
    })
  }
})

test('tty: an empty or over-long typed PIN is PIN_ENTRY_FAILED, and its bytes are wiped', async () => {
  for (const typed of ['', 'y'.repeat(LIMITS.pinMaxBytes + 1)]) {
    const pin = Pin.fromString(typed)
    await assert.rejects(
      readPin({ kind: 'tty' }, PROMPT, sources('command', { terminal: async () => pin })),
      {
        code: 'PIN_ENTRY_FAILED',
      },
    )
    assert.ok(pin.expose().every((byte) => byte === 0))
  }
})

test('pinentry: headless (unavailable) is PIN_REQUIRED before any program starts', async () => {
  const notices: string[] = []
  await assert.rejects(
    readPin(
      { kind: 'pinentry', program: '/nonexistent/pinentry' },
      PROMPT,
      sources('agent', {
        pinentry: { unavailable: 'the agent runs headless' },
        notify: (n) => void notices.push(n.text),
      }),
    ),
    (e: unknown) =>
      e instanceof AgentError &&
      e.code === 'PIN_REQUIRED' &&
      /needs the PIN and the agent runs headless/.test(e.message),
  )
  assert.deepEqual(notices, [])
})

test('a wrong PIN: the typed tries left from the device decide the text and the code', () => {
  const token = { description: "YubiKey 'PIV'", pin: { kind: 'env', variable: 'PIV_PIN' } } as const
  const counted = wrongPin(token, new AgentError('PIN_INCORRECT', 'x', { triesLeft: 2 }), undefined)
  assert.equal(counted.code, 'PIN_INCORRECT')
  assert.match(counted.message, /^Wrong PIN for YubiKey 'PIV' \(2 tries left\)/)
  assert.equal(counted.triesLeft, 2)
  // The agent's environment is fixed at its start: the fix is a restart with the variable set.
  assert.match(
    counted.remedy ?? '',
    /^Set PIV_PIN to the right PIN where the agent is started, then restart it: `cargo-pkcs11-agent stop`.*reads PIV_PIN only at its start$/,
  )
  const command = wrongPin(
    token,
    new AgentError('PIN_INCORRECT', 'x', { triesLeft: 2 }),
    undefined,
    'command',
  )
  assert.equal(command.remedy, 'Fix the PIN in the environment variable PIV_PIN')
  const final = wrongPin(token, new AgentError('PIN_INCORRECT', 'x', { triesLeft: 'final' }), undefined)
  assert.match(final.message, /one try left: the next wrong PIN blocks it/)
  assert.equal(final.data['finalTry'], true)
  assert.ok(final.remedy?.endsWith(UNBLOCK_REMEDY))
  const locked = wrongPin(token, new AgentError('PIN_INCORRECT', 'x', { triesLeft: 'locked' }), undefined)
  assert.equal(locked.code, 'PIN_LOCKED')
  assert.equal(locked.message, "Wrong PIN for YubiKey 'PIV'; the PIN is now blocked")
  assert.equal(locked.remedy, UNBLOCK_REMEDY)
  // Token flags read after the failed login count as well when the device gave no number.
  const low = wrongPin(token, new AgentError('PIN_INCORRECT', 'x'), { pinCountLow: true })
  assert.match(low.message, /\(few tries left\)/)
  assert.equal(low.data['countLow'], true)
})
