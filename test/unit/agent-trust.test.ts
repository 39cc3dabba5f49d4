/**
 * The agent's trust helpers on their own: which reloads weaken protection (src/agent/reload.ts) and
 * what the kernel says about a requester (src/agent/requester.ts), checked against this process,
 * a real ssh client and a program that only calls itself ssh.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, readlinkSync } from 'node:fs'
import { describe, test } from 'node:test'

import { weakenings, type ResolvedConfirms } from '../../src/agent/reload.js'
import {
  forwarderKind,
  kernelRequester,
  parseClaim,
  terminalOf,
  withClaim,
} from '../../src/agent/requester.js'
import { describeIntent } from '../../src/policy/intent.js'
import { parseConfig } from '../../src/config/load.js'
import { effectiveConfirm, type Config, type EffectiveConfirm } from '../../src/config/schema.js'
import { LIMITS } from '../../src/lib/limits.js'

const ENV = { HOME: '/home/test' }
const INDEX = 'sparse+http://127.0.0.1:1/index/'
const OTHER = 'sparse+http://127.0.0.1:2/index/'

function config(registries: string, agent = ''): ReturnType<typeof parseConfig> {
  return parseConfig(
    `[agent]\n${agent}\n[tokens.t]\nmodule = "softhsm"\nlabel = "x"\npin-source = "none"\n${registries}`,
    'config.toml',
    ENV,
  )
}

const reg = (name: string, index: string, confirm: string, label = 'k', forwarded?: string): string =>
  `[registries.${name}]\nindex = "${index}"\nread-key = { token = "t", label = "${label}" }\nconfirm = "${confirm}"\n${forwarded === undefined ? '' : `forwarded = "${forwarded}"\n`}`

/** Each registry's `confirm` as the agent resolves it when every mutation key shows `touchPolicy`. */
function resolvedAs(c: Config, touchPolicy: string | undefined): Map<string, EffectiveConfirm> {
  return new Map(
    Object.values(c.registries).map((r) => [r.name, effectiveConfirm(r, { key: 'key 9c', touchPolicy })]),
  )
}

/** Both configurations on keys that attest touch always (a YubiKey generated with a touch policy). */
const attested = (current: Config, next: Config): ResolvedConfirms => ({
  current: resolvedAs(current, 'always'),
  next: resolvedAs(next, 'always'),
})

describe('weakenings of a reloaded configuration', () => {
  test('stronger or equal changes pass', () => {
    const now = config(reg('a', INDEX, 'prompt'))
    assert.deepEqual(weakenings(now, now), [])
    const touch = config(reg('a', INDEX, 'touch'))
    assert.deepEqual(weakenings(now, touch, attested(now, touch)), [], 'prompt → a touch the key attests')
    assert.deepEqual(weakenings(now, config(reg('a', INDEX, 'prompt') + reg('b', OTHER, 'prompt'))), [])
    assert.deepEqual(weakenings(config(reg('a', INDEX, 'none')), now), [])
    assert.deepEqual(weakenings(now, config('')), [], 'removing a registry protects more')
  })

  test('forwarded loosened (refuse → read → confirm) is a weakening; tightened is not', () => {
    const read = config(reg('a', INDEX, 'prompt'))
    const confirm = config(reg('a', INDEX, 'prompt', 'k', 'confirm'))
    const refuse = config(reg('a', INDEX, 'prompt', 'k', 'refuse'))
    assert.deepEqual(weakenings(read, confirm), ['registry a: forwarded "read" → "confirm"'])
    assert.deepEqual(weakenings(refuse, read), ['registry a: forwarded "refuse" → "read"'])
    assert.deepEqual(weakenings(confirm, read), [])
    assert.deepEqual(weakenings(read, refuse), [])
    assert.deepEqual(
      weakenings(read, config(reg('a', INDEX, 'prompt') + reg('b', OTHER, 'prompt', 'k', 'confirm'))),
      [],
      'a new binding still confirms each forwarded mutation',
    )
  })

  test('a raised mutations-per-hour is a weakening; a lowered one is not', () => {
    const two = config(reg('a', INDEX, 'none') + 'mutations-per-hour = 2\n')
    const ten = config(reg('a', INDEX, 'none') + 'mutations-per-hour = 10\n')
    assert.deepEqual(weakenings(two, ten), ['registry a: mutations-per-hour 2 → 10'])
    assert.deepEqual(weakenings(two, config(reg('a', INDEX, 'none'))), [
      'registry a: mutations-per-hour 2 → 30',
    ])
    assert.deepEqual(weakenings(ten, two), [])
    assert.deepEqual(weakenings(two, two), [])
  })

  test('an index bound earlier is held against that binding, not taken as new', () => {
    const strict = config(reg('a', INDEX, 'prompt') + 'mutations-per-hour = 0\n')
    const dropped = config(reg('b', OTHER, 'prompt'))
    const rebound = config(reg('a', INDEX, 'prompt', 'k', 'confirm') + 'mutations-per-hour = 5\n')
    const a = strict.registries['a']!
    const earlier = new Map([[INDEX, { registry: a, confirm: effectiveConfirm(a) }]])
    assert.deepEqual(weakenings(dropped, rebound), [], 'without the memory the index looks new')
    assert.deepEqual(weakenings(dropped, rebound, undefined, earlier), [
      'registry a (its index was bound before): mutations-per-hour 0 → 5',
      'registry a (its index was bound before): forwarded "read" → "confirm"',
    ])
    assert.deepEqual(weakenings(dropped, strict, undefined, earlier), [])
  })

  test('lower confirm, headless on, an unconfirmed new binding, a changed mutation key', () => {
    const now = config(reg('a', INDEX, 'touch'))
    const lowered = config(reg('a', INDEX, 'prompt'))
    assert.deepEqual(weakenings(now, lowered, attested(now, lowered)), [
      'registry a: confirm "touch" → "prompt"',
    ])
    const headless = config(reg('a', INDEX, 'touch'), 'headless = true')
    assert.deepEqual(weakenings(now, headless, attested(now, headless)), ['headless turned on'])
    const added = config(reg('a', INDEX, 'touch') + reg('b', OTHER, 'none'))
    assert.match(weakenings(now, added, attested(now, added))[0] ?? '', /new registry b/)
    const prompt = config(reg('a', INDEX, 'prompt'))
    assert.match(
      weakenings(prompt, config(reg('a', INDEX, 'prompt', 'other')))[0] ?? '',
      /mutation key changed to t\/other/,
    )
    const moved = config(reg('a', INDEX, 'touch', 'other'))
    assert.deepEqual(weakenings(now, moved, attested(now, moved)), [], 'a touch key still needs a finger')
  })

  test('a touch the key does not attest (SoftHSM, TPM, HSM, PIV without attestation) counts as none', () => {
    const prompt = config(reg('a', INDEX, 'prompt'))
    const touch = config(reg('a', INDEX, 'touch'))
    // Not PIV: nothing attests, so nothing is in the resolved map but the config's own word.
    for (const next of [new Map<string, EffectiveConfirm>(), resolvedAs(touch, undefined)])
      assert.deepEqual(weakenings(prompt, touch, { current: resolvedAs(prompt, undefined), next }), [
        'registry a: confirm "prompt" → "touch" (not attested by the key)',
      ])
    const unread = new Map([
      ['a', effectiveConfirm(touch.registries['a']!, { key: 'key 9c', unread: 'no YubiKey is inserted' })],
    ])
    assert.deepEqual(weakenings(prompt, touch, { current: new Map(), next: unread }), [
      'registry a: confirm "prompt" → "touch" (not attested by the key)',
    ])
    assert.deepEqual(
      weakenings(touch, touch, { current: resolvedAs(touch, 'always'), next: resolvedAs(touch, undefined) }),
      ['registry a: confirm "touch" → "touch" (not attested by the key)'],
      'the same file, but the key no longer attests its touch',
    )
    assert.deepEqual(weakenings(touch, prompt), [], 'unattested touch → prompt asks more')
    assert.deepEqual(weakenings(touch, touch), [], 'unchanged')
    // A key swapped under it would sign on nobody's word.
    assert.deepEqual(weakenings(touch, config(reg('a', INDEX, 'touch', 'other'))), [
      'registry a: mutation key changed to t/other',
    ])
    assert.match(
      weakenings(prompt, config(reg('a', INDEX, 'prompt') + reg('b', OTHER, 'touch'))).join(),
      /^new registry b would sign mutations with t\/k unconfirmed \(confirm = "touch" \(not attested by the key\)\)$/,
    )
  })
})

describe('weakenings compare confirm as it applies', () => {
  const unset = (name: string, index: string, label = 'k'): string =>
    `[registries.${name}]\nindex = "${index}"\nread-key = { token = "t", label = "${label}" }\n`
  const touchDefault = (name: string): Map<string, EffectiveConfirm> =>
    new Map([
      [
        name,
        effectiveConfirm(config(unset(name, INDEX)).registries[name]!, {
          key: 'key 9c',
          touchPolicy: 'always',
        }),
      ],
    ])
  const neverDefault = (name: string): Map<string, EffectiveConfirm> =>
    new Map([
      [
        name,
        effectiveConfirm(config(unset(name, INDEX)).registries[name]!, {
          key: 'key 9c',
          touchPolicy: 'never',
        }),
      ],
    ])

  test('an unset confirm resolved to touch counts as touch', () => {
    const now = config(unset('a', INDEX))
    assert.deepEqual(
      weakenings(now, config(reg('a', INDEX, 'prompt')), { current: touchDefault('a'), next: new Map() }),
      ['registry a: confirm "touch" → "prompt"'],
    )
    assert.deepEqual(
      weakenings(now, now, { current: touchDefault('a'), next: neverDefault('a') }),
      ['registry a: confirm "touch" → "prompt"'],
      'the same file, but the key no longer attests touch',
    )
    assert.deepEqual(weakenings(now, now, { current: touchDefault('a'), next: touchDefault('a') }), [])
    assert.deepEqual(
      weakenings(now, config(reg('a', INDEX, 'touch')), {
        current: touchDefault('a'),
        next: resolvedAs(config(reg('a', INDEX, 'touch')), 'always'),
      }),
      [],
      'writing down the default changes nothing',
    )
    assert.deepEqual(
      weakenings(now, config(unset('a', INDEX, 'other')), {
        current: touchDefault('a'),
        next: touchDefault('a'),
      }),
      [],
      'another key that attests touch still needs a finger',
    )
    assert.match(
      weakenings(now, config(unset('a', INDEX, 'other')), {
        current: touchDefault('a'),
        next: neverDefault('a'),
      }).join(),
      /confirm "touch" → "prompt".*mutation key changed to t\/other/,
    )
  })
})

describe('the requester from the kernel', () => {
  const uid = process.getuid?.() ?? 0
  // Cut like every field that came from another process (a test runner's argv is long).
  const cmdline = (pid: number): string =>
    readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .filter((a) => a !== '')
      .join(' ')
      .slice(0, LIMITS.auditFieldMaxChars)

  test('this process as the client: its parent is the requester', () => {
    const requester = kernelRequester({ uid, gid: 0, pid: process.pid })
    assert.equal(requester.uid, uid)
    assert.deepEqual(requester.client, {
      pid: process.pid,
      command: cmdline(process.pid),
      exe: readlinkSync(`/proc/${process.pid}/exe`),
    })
    assert.equal(requester.pid, process.ppid)
    assert.equal(requester.command, cmdline(process.ppid))
    assert.equal(requester.exe, readlinkSync(`/proc/${process.ppid}/exe`))
  })

  test('a pid that is not of the peer’s uid, or unknown, yields nothing but the uid, and counts as forwarded', () => {
    // Fail closed: a peer the agent cannot identify gets the forwarded rules (docs/ssh-forwarding.md).
    assert.deepEqual(kernelRequester({ uid: uid + 1, gid: 0, pid: process.pid }), {
      uid: uid + 1,
      forwarded: { via: 'unidentified', pid: process.pid },
    })
    assert.deepEqual(kernelRequester({ uid, gid: 0, pid: 0 }), {
      uid,
      forwarded: { via: 'unidentified', pid: 0 },
    })
  })

  test('forwarders are told by the executable’s file name', () => {
    assert.equal(forwarderKind('/usr/bin/ssh'), 'ssh')
    assert.equal(forwarderKind('/usr/bin/ssh (deleted)'), 'ssh', 'replaced by an upgrade while running')
    assert.equal(forwarderKind('/usr/sbin/sshd'), 'sshd')
    assert.equal(forwarderKind('/usr/lib/openssh/sshd-session'), 'sshd')
    assert.equal(forwarderKind('/opt/homebrew/bin/ssh'), 'ssh')
    for (const other of [
      '/usr/bin/node',
      '/usr/bin/ssh-agent',
      '/home/u/ssh.sh',
      '/usr/bin/sshfs',
      '/x/constructor',
    ])
      assert.equal(forwarderKind(other), undefined, other)
  })

  /** Until the exec has happened, /proc/<pid>/exe is still the parent's. */
  async function execd(child: ChildProcess, exe: string): Promise<void> {
    for (let i = 0; i < 300 && readlinkSync(`/proc/${child.pid}/exe`) !== exe; i++)
      await new Promise((r) => setTimeout(r, 10))
    assert.equal(readlinkSync(`/proc/${child.pid}/exe`), exe)
  }

  test('the real ssh client as the peer: forwarded via ssh, verified, with no local requester', async () => {
    // An ssh that waits (its ProxyCommand never answers) is what `ssh -R` is while it forwards.
    const ssh = spawn(
      '/usr/bin/ssh',
      ['-o', 'BatchMode=yes', '-o', 'ProxyCommand=sleep 30', 'forward-test.invalid'],
      {
        stdio: 'ignore',
      },
    )
    try {
      await execd(ssh, '/usr/bin/ssh')
      const requester = kernelRequester({ uid, gid: 0, pid: ssh.pid ?? -1 })
      assert.deepEqual(requester.forwarded, {
        via: 'ssh',
        pid: ssh.pid,
        exe: readlinkSync(`/proc/${ssh.pid}/exe`),
        verified: true,
      })
      assert.equal(requester.client?.pid, ssh.pid)
      assert.match(requester.client?.command ?? '', /^\/usr\/bin\/ssh -o BatchMode=yes/)
      for (const local of ['pid', 'ppid', 'command', 'exe', 'tty'] as const)
        assert.equal(requester[local], undefined, `no local ${local} for a forwarded request`)
      const text = describeIntent({
        indexUrl: INDEX,
        operation: 'publish',
        crate: { name: 'foo', vers: '1.0.0' },
        requester,
      })
      assert.match(text, new RegExp(`, requested from a forwarded connection via ssh pid ${ssh.pid} \``))
    } finally {
      ssh.kill('SIGKILL')
    }
  })

  test('a program that calls itself ssh (argv[0] and comm) is not a forwarder', async () => {
    const fake = spawn(
      'bash',
      ['-c', `exec -a ssh "${process.execPath}" -e "process.title = 'ssh'; setTimeout(() => {}, 30000)"`],
      { stdio: 'ignore' },
    )
    try {
      for (let i = 0; i < 300; i++) {
        if (readFileSync(`/proc/${fake.pid}/comm`, 'utf8').trim() === 'ssh') break
        await new Promise((r) => setTimeout(r, 10))
      }
      assert.equal(readFileSync(`/proc/${fake.pid}/comm`, 'utf8').trim(), 'ssh', 'comm says ssh')
      assert.match(readFileSync(`/proc/${fake.pid}/cmdline`, 'utf8'), /^ssh/, 'argv[0] says ssh')
      const requester = kernelRequester({ uid, gid: 0, pid: fake.pid ?? -1 })
      assert.equal(requester.forwarded, undefined)
      assert.equal(requester.pid, process.pid)
    } finally {
      fake.kill('SIGKILL')
    }
  })

  test('a terminal number must name a character device with that number and owner', () => {
    assert.equal(terminalOf(0, uid), undefined)
    // major 136 minor 1_000_000: no such pty.
    assert.equal(terminalOf((136 << 8) | (1_000_000 & 0xff) | ((1_000_000 & ~0xff) << 12), uid), undefined)
  })

  test('claims are kept apart and cut to size', () => {
    assert.equal(parseClaim('nope'), undefined)
    assert.equal(parseClaim({ pid: -1, command: 7 }), undefined)
    const claimed = withClaim({ pid: 10 }, { pid: 4242, command: 'x'.repeat(5000), tty: '/dev/pts/9' })
    assert.equal(claimed.pid, 10)
    assert.equal(claimed.claimed?.pid, 4242)
    assert.ok((claimed.claimed?.command ?? '').length < 5000)
    // Saying "forwarded" (or not) is a claim like any other: it never sets `forwarded`.
    const local = withClaim({ pid: 10 }, { forwarded: { via: 'sshd', pid: 1 } })
    assert.equal(local.forwarded, undefined)
    assert.equal(local.claimed?.forwarded, true)
    const far = withClaim(
      { forwarded: { via: 'ssh', pid: 9, exe: '/usr/bin/ssh', verified: true } },
      { forwarded: false },
    )
    assert.deepEqual(far.forwarded, { via: 'ssh', pid: 9, exe: '/usr/bin/ssh', verified: true })
    assert.equal(far.claimed?.forwarded, false)
  })
})
