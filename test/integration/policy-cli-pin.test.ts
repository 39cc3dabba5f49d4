/**
 * The CLI's device commands read their PIN with the agent's reader (src/policy/pin-source.ts): real
 * `cargo-pkcs11-agent keygen` / `pubkey` processes against SoftHSM, with no terminal, the PIN from the
 * scripted pinentry (a config token with pin-source = "pinentry"), from the environment, or from a
 * flag that overrides the config; the errors are the reader's, with the CLI's remedies.
 */
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'

import { parseK3Public } from '../../src/keys/paserk.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'
import { runAgentCli, type CliResult } from '../helpers/agent.js'
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm.js'

const PIN = '135790'
/** A `pin-env` of another configured token: kept out of pinentry's environment. */
const OTHER_PIN_VARIABLE = 'CLI_PIN_OTHER_TOKEN'

describe('CLI PIN sources, through the agent reader', () => {
  let token: SoftHsmToken
  let pinentry: ScriptedPinentry
  let configPath: string

  // detached: a new session without a controlling terminal, so nothing can prompt on /dev/tty.
  const cli = (args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<CliResult> =>
    runAgentCli([...args.slice(0, 1), '--config', configPath, ...args.slice(1)], {
      env: { ...pinentry.env(token.env), ...extraEnv },
      detached: true,
      timeoutMs: 30_000,
    })

  before(async () => {
    token = await createSoftHsmToken({ label: 'clipin', pin: PIN })
    pinentry = new ScriptedPinentry()
    configPath = join(token.dir, 'config.toml')
    await writeFile(
      configPath,
      [
        '[tokens.pe]',
        'module = "softhsm"',
        'label = "clipin"',
        'pin-source = "pinentry"',
        `pinentry-program = "${PINENTRY_PROGRAM}"`,
        '[tokens.ev]',
        'module = "softhsm"',
        'label = "clipin"',
        'pin-source = "env"',
        `pin-env = "${OTHER_PIN_VARIABLE}"`,
        '',
      ].join('\n'),
    )
  })

  after(async () => {
    pinentry.cleanup()
    await token.cleanup()
  })

  it('pin-source = "pinentry": keygen asks pinentry for the PIN, says why, and keeps pin-env variables out of its environment', async () => {
    pinentry.script([`pin:${PIN}`])
    const made = await cli(['keygen', '--token', 'pe', '--label', 'via-pinentry', '--json'], {
      [OTHER_PIN_VARIABLE]: 'not-for-pinentry',
    })
    assert.equal(made.code, 0, made.stderr)
    const { k3Public } = JSON.parse(made.stdout) as { k3Public: string }
    assert.equal(parseK3Public(k3Public).length, 49)
    assert.equal(pinentry.remaining().length, 0, 'the PIN came from pinentry')
    assert.match(
      pinentry.commands('SETDESC').at(-1)?.arg ?? '',
      /^Enter the PIN of token 'clipin' \(serial \w+\)[^\n]*\n\nto generate the key 'via-pinentry' on it$/,
    )
    assert.match(
      made.stderr,
      /Waiting for the PIN of token 'clipin' [^\n]* in pinentry, to generate the key 'via-pinentry' on it/,
    )
    const start = pinentry
      .log()
      .filter((r) => r.event === 'start')
      .at(-1)
    assert.ok(start?.environ?.includes('PINENTRY_SCRIPT='), 'the environment was captured')
    assert.equal(start?.environ?.includes(OTHER_PIN_VARIABLE), false)
    const shown = await cli(['pubkey', '--token', 'pe', '--label', 'via-pinentry'])
    assert.equal(shown.stdout.trim(), k3Public, 'the key exists on the token')
  })

  it('a wrong PIN from pinentry fails with PIN_INCORRECT after one login, and the PIN is not printed', async () => {
    pinentry.script(['pin:000000'])
    const r = await cli(['keygen', '--token', 'pe', '--label', 'wrong-pin'])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /incorrect|wrong/i)
    assert.equal(
      pinentry.commands('GETPIN').length,
      2,
      'asked once per command, never again after the wrong PIN',
    )
    assert.equal(r.stderr.includes('000000'), false)
    const listed = await cli(['list', '--token', 'ev', '--login'], { [OTHER_PIN_VARIABLE]: PIN })
    assert.equal(listed.code, 0, listed.stderr)
    assert.doesNotMatch(listed.stdout, /wrong-pin/, 'no key was made')
  })

  it('pin-source = "env" with the variable unset: PIN_REQUIRED naming it, remedy for a command, no pinentry', async () => {
    const starts = pinentry.starts()
    const r = await cli(['keygen', '--token', 'ev', '--label', 'unset'])
    assert.equal(r.code, 1)
    assert.match(
      r.stderr,
      /The PIN for token 'clipin' [^\n]* should come from the environment variable CLI_PIN_OTHER_TOKEN, which is not set\. Export CLI_PIN_OTHER_TOKEN with the token PIN and run the command again/,
    )
    assert.equal(pinentry.starts(), starts)
  })

  it('--pin-env overrides the configured pinentry source: no pinentry is started', async () => {
    const starts = pinentry.starts()
    const r = await cli(['keygen', '--token', 'pe', '--pin-env', 'CLI_FLAG_PIN', '--label', 'via-flag'], {
      CLI_FLAG_PIN: PIN,
    })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(pinentry.starts(), starts)
  })

  it('--pin-file a group-readable file is refused before any login', async () => {
    const file = join(token.dir, 'loose.pin')
    await writeFile(file, `${PIN}\n`, { mode: 0o640 })
    const r = await cli(['keygen', '--token', 'pe', '--pin-file', file, '--label', 'loose'])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /accessible by group or others/)
  })
})
