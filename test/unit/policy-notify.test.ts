/**
 * Desktop notifications through real child processes: a stand-in notify-send (a shell script that
 * records its argv) on PATH, the real notify-send against an unreachable session bus, and a helper
 * that hangs.
 */
import assert from 'node:assert/strict'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { desktopNotifier, silentNotifier } from '../../src/policy/notify.js'

const dir = mkdtempSync(join(tmpdir(), 'notify-'))
after(() => rmSync(dir, { recursive: true, force: true }))

test('notify-send gets the title and the intent text after "--", only when a session exists', async () => {
  const bin = join(dir, 'bin1')
  mkdirSync(bin)
  const record = join(dir, 'args.txt')
  writeFileSync(
    join(bin, 'notify-send'),
    `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a"; done > "${record}"\n`,
  )
  chmodSync(join(bin, 'notify-send'), 0o755)
  const env = { PATH: `${bin}:/usr/bin:/bin`, DBUS_SESSION_BUS_ADDRESS: 'unix:path=/nonexistent' }
  await desktopNotifier({ env, platform: 'linux' }).notify(
    'Touch your security key',
    '-publish foo 1.2.3 to my-registry',
  )
  assert.deepEqual(readFileSync(record, 'utf8').split('\n').slice(0, -1), [
    '--app-name=cargo-pkcs11-agent',
    '--urgency=critical',
    '--',
    'Touch your security key',
    '-publish foo 1.2.3 to my-registry',
  ])
  // No DISPLAY, WAYLAND_DISPLAY or session bus (a server, a CI runner): nothing is spawned.
  assert.equal(desktopNotifier({ env: { PATH: `${bin}:/usr/bin:/bin` }, platform: 'linux' }), silentNotifier)
})

test('the real notify-send failing (no session bus) and a hanging helper never fail or block a request', async () => {
  const failures: string[] = []
  if (existsSync('/usr/bin/notify-send')) {
    await desktopNotifier({
      env: { PATH: '/usr/bin:/bin', DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(dir, 'no-bus')}` },
      platform: 'linux',
      onFailure: (r) => failures.push(r),
    }).notify('t', 'b')
    assert.equal(failures.length, 1)
    assert.match(failures[0] ?? '', /notify-send exited/)
  }
  const bin = join(dir, 'bin2')
  mkdirSync(bin)
  writeFileSync(join(bin, 'notify-send'), '#!/bin/sh\nexec sleep 30\n')
  chmodSync(join(bin, 'notify-send'), 0o755)
  await desktopNotifier({
    env: { PATH: `${bin}:/usr/bin:/bin`, DISPLAY: ':99' },
    platform: 'linux',
    timeoutMs: 200,
    onFailure: (r) => failures.push(r),
  }).notify('t', 'b')
  assert.match(failures.at(-1) ?? '', /did not exit within 200 ms/)
  await desktopNotifier({
    env: { PATH: join(dir, 'empty'), DISPLAY: ':99' },
    platform: 'linux',
    onFailure: (r) => failures.push(r),
  }).notify('t', 'b')
  assert.match(failures.at(-1) ?? '', /ENOENT/)
})

test('macOS uses osascript with an AppleScript string that cannot be broken out of', async () => {
  const bin = join(dir, 'bin3')
  mkdirSync(bin)
  const record = join(dir, 'osascript.txt')
  writeFileSync(
    join(bin, 'osascript'),
    `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a"; done > "${record}"\n`,
  )
  chmodSync(join(bin, 'osascript'), 0o755)
  await desktopNotifier({ env: { PATH: `${bin}:/usr/bin:/bin` }, platform: 'darwin' }).notify(
    'Touch',
    'publish "evil" \\ crate',
  )
  assert.deepEqual(readFileSync(record, 'utf8').split('\n').slice(0, -1), [
    '-e',
    'display notification "publish \\"evil\\" \\\\ crate" with title "Touch"',
  ])
})
