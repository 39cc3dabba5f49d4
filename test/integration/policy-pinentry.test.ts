/**
 * The pinentry client against real processes: the scripted Assuan pinentry (test/fixtures/pinentry)
 * for every protocol path, and the real Debian pinentry-tty on a pseudo-terminal for the whole
 * human round trip.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { after, test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import {
  childEnvironment,
  pinentryConfirm,
  pinentryGetPin,
  type PinentryOptions,
} from '../../src/policy/pinentry.js'
import { PINENTRY_PROGRAM, ScriptedPinentry } from '../fixtures/pinentry/harness.js'

const scripted = new ScriptedPinentry()
const scratch = mkdtempSync(join(tmpdir(), 'pinentry-it-'))
const children: ChildProcess[] = []
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  scripted.cleanup()
  rmSync(scratch, { recursive: true, force: true })
})

function options(overrides: Partial<PinentryOptions> = {}): PinentryOptions {
  return { program: PINENTRY_PROGRAM, timeoutMs: 10_000, env: scripted.env(), ...overrides }
}

const dialog = {
  title: 'cargo-pkcs11-agent',
  description: "Enter the PIN of token 'ci'\n\nto publish foo 1.2.3 (cksum 6dee75a8…) 100%",
  prompt: 'PIN:',
}

test('GETPIN: options, dialog texts and the PIN round-trip exactly (escapes, UTF-8, several D lines)', async () => {
  const secret = 'p%1n\nwith ünïcode and spaces %25 end'
  scripted.script([`pin:${secret}`])
  const pin = await pinentryGetPin(
    options({ ttyname: '/dev/pts/7', env: scripted.env({ TERM: 'xterm-256color', LC_ALL: 'C.UTF-8' }) }),
    { ...dialog, warning: 'FINAL TRY' },
  )
  assert.equal(pin.expose().toString('utf8'), secret)
  const sent = scripted
    .log()
    .filter((r) => r.event === 'command')
    .map((r) => [r.command, r.arg])
  assert.deepEqual(sent, [
    ['OPTION', 'ttyname=/dev/pts/7'],
    ['OPTION', 'ttytype=xterm-256color'],
    ['OPTION', 'lc-ctype=C.UTF-8'],
    ['SETTIMEOUT', '10'],
    ['SETTITLE', 'cargo-pkcs11-agent'],
    ['SETDESC', dialog.description],
    ['SETPROMPT', 'PIN:'],
    ['SETERROR', 'FINAL TRY'],
    ['GETPIN', undefined],
    ['BYE', undefined],
  ])
  // The description's newlines and % travelled escaped, on one line.
  assert.ok(scripted.commands('SETDESC')[0]?.raw?.includes('%0A%0Ato publish'))
  assert.ok(scripted.commands('SETDESC')[0]?.raw?.endsWith('100%25'))
})

test('Cancel in pinentry is PIN_ENTRY_FAILED "cancelled"; an empty PIN too', async () => {
  scripted.script(['cancel', 'pin:'])
  await assert.rejects(
    pinentryGetPin(options(), dialog),
    (e: unknown) => e instanceof AgentError && e.code === 'PIN_ENTRY_FAILED' && /cancelled/.test(e.message),
  )
  await assert.rejects(
    pinentryGetPin(options(), dialog),
    (e: unknown) => e instanceof AgentError && e.code === 'PIN_ENTRY_FAILED' && /empty/.test(e.message),
  )
})

test('CONFIRM: OK is yes, "not confirmed" and cancel are no, other errors fail', async () => {
  const confirm = { title: 't', description: 'Allow publish foo?', ok: 'Approve', cancel: 'Refuse' }
  scripted.script(['yes', 'no', 'cancel', 'err:83918950 Inappropriate ioctl for device'])
  assert.equal(await pinentryConfirm(options(), confirm), true)
  assert.equal(await pinentryConfirm(options(), confirm), false)
  assert.equal(await pinentryConfirm(options(), confirm), false)
  await assert.rejects(
    pinentryConfirm(options(), confirm),
    (e: unknown) =>
      e instanceof AgentError && e.code === 'PIN_ENTRY_FAILED' && /Inappropriate ioctl/.test(e.message),
  )
  const labels = scripted
    .log()
    .filter((r) => r.command === 'SETOK' || r.command === 'SETCANCEL')
    .slice(0, 2)
    .map((r) => r.arg)
  assert.deepEqual(labels, ['Approve', 'Refuse'])
})

test('a pinentry that never answers is killed and reported, not waited for', async () => {
  scripted.script(['hang'])
  const before = scripted.starts()
  await assert.rejects(
    pinentryGetPin(options({ timeoutMs: 200 }), dialog),
    (e: unknown) => e instanceof AgentError && e.code === 'PIN_ENTRY_FAILED' && /No answer/.test(e.message),
  )
  const start = scripted.log().filter((r) => r.event === 'start')[before]
  assert.ok(start !== undefined)
  assert.equal(existsSync(`/proc/${start.pid}`), false, 'the hung pinentry was killed')
})

test('a pinentry that exits, a missing program: PIN_ENTRY_FAILED with a remedy', async () => {
  scripted.script(['exit'])
  await assert.rejects(
    pinentryGetPin(options(), dialog),
    (e: unknown) => e instanceof AgentError && e.code === 'PIN_ENTRY_FAILED' && /exited/.test(e.message),
  )
  await assert.rejects(
    pinentryGetPin(options({ program: join(scratch, 'no-such-pinentry') }), dialog),
    (e: unknown) =>
      e instanceof AgentError &&
      e.code === 'PIN_ENTRY_FAILED' &&
      /not found/.test(e.message) &&
      /pinentry/.test(e.remedy ?? ''),
  )
})

test('a pinentry that does not know SETTIMEOUT still works', async () => {
  scripted.script(['pin:2468'])
  const pin = await pinentryGetPin(options({ env: scripted.env({ PINENTRY_NO_SETTIMEOUT: '1' }) }), dialog)
  assert.equal(pin.expose().toString(), '2468')
})

test('PIN variables are removed from the environment pinentry gets', async () => {
  scripted.script(['yes'])
  const env = childEnvironment({ ...scripted.env(), MY_TOKEN_PIN: '55443322' }, ['MY_TOKEN_PIN'])
  await pinentryConfirm(options({ env }), { title: 't', description: 'd', ok: 'y', cancel: 'n' })
  const start = scripted
    .log()
    .filter((r) => r.event === 'start')
    .at(-1)
  assert.equal(start?.environ?.includes('55443322'), false)
  assert.equal(start?.environ?.includes('MY_TOKEN_PIN'), false)
})

const ptyHelper = fileURLToPath(new URL('../../../test/fixtures/pinentry/pty-answer.py', import.meta.url))
const havePinentryTty =
  existsSync('/usr/bin/pinentry-tty') &&
  spawnSync('python3', ['-c', 'import pty'], { stdio: 'ignore' }).status === 0

test(
  'the real pinentry-tty on a terminal: shows the intent, reads the PIN without echo',
  { skip: havePinentryTty ? false : 'pinentry-tty or python3 missing' },
  async () => {
    const transcript = join(scratch, 'tty.txt')
    const human = spawn('python3', [ptyHelper, '7531', 'PIN:', transcript], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    children.push(human)
    const ttyname = await new Promise<string>((resolve, reject) => {
      createInterface({ input: human.stdout! }).once('line', resolve)
      human.once('exit', () => reject(new Error('pty helper exited early')))
    })
    const pin = await pinentryGetPin(
      options({
        program: '/usr/bin/pinentry-tty',
        ttyname,
        env: { PATH: process.env['PATH'] ?? '', TERM: 'xterm' },
      }),
      dialog,
    )
    assert.equal(pin.expose().toString(), '7531')
    await new Promise((resolve) => human.once('exit', resolve))
    const shown = readFileSync(transcript, 'utf8')
    assert.ok(shown.includes('publish foo 1.2.3 (cksum 6dee75a8'), shown)
    assert.equal(shown.includes('7531'), false, 'the PIN is not echoed')
  },
)
