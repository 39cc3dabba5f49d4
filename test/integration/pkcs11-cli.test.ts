/**
 * `cargo-pkcs11-agent keygen | list | pubkey` as real processes against a SoftHSM token, with the
 * token given by flags and by a config file, and the PIN from an environment variable.
 */
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'

import { parseK3Public } from '../../src/keys/paserk.js'
import { runAgentCli, type CliResult } from '../helpers/agent.js'
import { createSoftHsmToken, KNOWN_KEY, type SoftHsmToken } from '../helpers/softhsm.js'

describe('device CLI commands on SoftHSM', () => {
  let token: SoftHsmToken
  let configPath: string

  // detached: a new session without a controlling terminal, so nothing can prompt on /dev/tty.
  const cli = (args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<CliResult> =>
    runAgentCli(args, { env: { ...token.env, ...extraEnv }, detached: true, timeoutMs: 30_000 })

  before(async () => {
    token = await createSoftHsmToken({ label: 'cli', pin: '246810' })
    configPath = join(token.dir, 'config.toml')
    await writeFile(
      configPath,
      [
        '[tokens.ci]',
        'module = "softhsm"',
        'label = "cli"',
        'pin-source = "env"',
        'pin-env = "CLI_TEST_PIN"',
        '',
      ].join('\n'),
    )
  })

  after(async () => {
    await token.cleanup()
  })

  it('pubkey prints the k3.public of the imported key (no PIN needed)', async () => {
    const r = await cli(['pubkey', '--module', 'softhsm', '--token-label', 'cli', '--label', KNOWN_KEY.label])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim(), KNOWN_KEY.k3Public)
    const hex = await cli([
      'pubkey',
      '--module',
      'softhsm',
      '--token-label',
      'cli',
      '--id',
      KNOWN_KEY.id,
      '--format',
      'hex',
    ])
    assert.equal(hex.stdout.trim(), KNOWN_KEY.publicKeyHex)
  })

  it('keygen makes a key on the device, refuses to overwrite it without --force, replaces it with --force', async () => {
    const env = { CLI_TEST_PIN: '246810' }
    const first = await cli(
      ['keygen', '--config', configPath, '--label', 'publish', '--id', '10', '--json'],
      env,
    )
    assert.equal(first.code, 0, first.stderr)
    const made = JSON.parse(first.stdout) as { k3Public: string; id: string; label: string }
    assert.equal(made.id, '10')
    assert.equal(parseK3Public(made.k3Public).length, 49)

    const again = await cli(['keygen', '--config', configPath, '--label', 'publish'], env)
    assert.equal(again.code, 1)
    assert.match(again.stderr, /already has a key labelled 'publish'/)
    assert.match(again.stderr, /--force/)
    const still = await cli(['pubkey', '--config', configPath, '--label', 'publish'])
    assert.equal(still.stdout.trim(), made.k3Public, 'the refused keygen changed nothing')

    const forced = await cli(
      ['keygen', '--config', configPath, '--label', 'publish', '--id', '10', '--force', '--json'],
      env,
    )
    assert.equal(forced.code, 0, forced.stderr)
    const replaced = JSON.parse(forced.stdout) as { k3Public: string }
    assert.notEqual(replaced.k3Public, made.k3Public)
  })

  it('keygen without a PIN source or terminal fails with PIN_REQUIRED, not a hang', async () => {
    const r = await cli(['keygen', '--module', 'softhsm', '--token-label', 'cli', '--label', 'nopin'], {
      CLI_TEST_PIN: '',
    })
    assert.equal(r.code, 1)
    assert.match(r.stderr, /needs the PIN and there is no terminal/)
    assert.equal(r.stderr.includes('246810'), false)
  })

  it('list shows every key with its k3.public; --login also shows keys with only a private object', async () => {
    const r = await cli(['list', '--module', 'softhsm', '--json'])
    assert.equal(r.code, 0, r.stderr)
    const tokens = JSON.parse(r.stdout) as Array<{
      token: string
      keys: Array<{ label: string; k3Public: string; extractable: boolean }>
    }>
    assert.equal(tokens.length, 1)
    const labels = (tokens[0]?.keys ?? []).map((k) => k.label).sort()
    assert.deepEqual(labels, ['gen', 'known', 'publish'])
    assert.equal(tokens[0]?.keys.find((k) => k.label === 'known')?.k3Public, KNOWN_KEY.k3Public)
    const logged = await cli(['list', '--config', configPath, '--login'], { CLI_TEST_PIN: '246810' })
    assert.equal(logged.code, 0, logged.stderr)
    assert.match(logged.stdout, /'publish' id 10 \(not extractable\)/)
  })

  it('keygen and list --login word a wrong PIN as the agent does: the tries left, no retry, the fix', async () => {
    const env = { CLI_TEST_PIN: '999999' }
    // SoftHSM raises CKF_USER_PIN_COUNT_LOW after a refused login: the message says so.
    const made = await cli(['keygen', '--config', configPath, '--label', 'never-made'], env)
    assert.equal(made.code, 1)
    assert.match(
      made.stderr,
      /Wrong PIN for token 'cli' \(serial \w+\) via libsofthsm2\.so \(few tries left\); it was not retried\. Fix the PIN in the environment variable CLI_TEST_PIN/,
    )
    const listed = await cli(['list', '--config', configPath, '--login'], env)
    assert.equal(listed.code, 1)
    assert.match(listed.stderr, /Wrong PIN for token 'cli' .*\(few tries left\); it was not retried/)
    for (const r of [made, listed]) assert.equal(r.stderr.includes('999999'), false)
    // The right PIN still works (and resets SoftHSM's count).
    const ok = await cli(['list', '--config', configPath, '--login'], { CLI_TEST_PIN: '246810' })
    assert.equal(ok.code, 0, ok.stderr)
  })

  it('SoftHSM config problems are named (SoftHSM itself only says CKR_GENERAL_ERROR)', async () => {
    const missingConf = await cli(['list', '--module', 'softhsm'], {
      SOFTHSM2_CONF: join(token.dir, 'nope.conf'),
    })
    assert.equal(missingConf.code, 1)
    assert.match(missingConf.stderr, /SOFTHSM2_CONF \(.*nope\.conf\) cannot be read/)
    const badDir = join(token.dir, 'bad.conf')
    await writeFile(
      badDir,
      `directories.tokendir = ${join(token.dir, 'no-such-dir')}\nobjectstore.backend = file\n`,
    )
    const missingDir = await cli(['list', '--module', 'softhsm'], { SOFTHSM2_CONF: badDir })
    assert.equal(missingDir.code, 1)
    assert.match(missingDir.stderr, /token directory .*no-such-dir .* is missing or not writable/)
    const unknown = await cli(['list', '--module', 'nosuchmodule'])
    assert.equal(unknown.code, 1)
    assert.match(unknown.stderr, /unknown PKCS#11 module name 'nosuchmodule'.*softhsm, ykcs11/)
  })

  it('usage errors exit 2 with a hint', async () => {
    const r = await cli(['pubkey', '--module', 'softhsm'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /--token-label or --serial/)
  })
})
