/**
 * The private SoftHSM store of `setup` (src/cli/setup/softhsm-store.ts): made through PKCS#11 with
 * no pkcs11-tool on PATH; a run that fails part-way (a file system out of inodes, at every point it
 * can run out) removes what it created and the next run works; a missing SoftHSM is named with its
 * packages and leaves nothing; an incomplete store is refused untouched; a store an older setup left
 * without its token gets the token.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { distPath, runAgentCli } from '../helpers/agent.js'

const isRoot = process.getuid?.() === 0
const INDEX = 'sparse+http://127.0.0.1:38670/index/'
const SOFTHSM_DIRS = [
  '/usr/lib/softhsm',
  '/usr/lib/x86_64-linux-gnu/softhsm',
  '/usr/lib/aarch64-linux-gnu/softhsm',
]

/** Every path under `dir`, relative, sorted ([] when it does not exist). */
async function tree(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return []
  return (await readdir(dir, { recursive: true })).sort()
}

function mount(args: string[]): void {
  const r = spawnSync(args[0] ?? 'mount', args.slice(1), { encoding: 'utf8' })
  assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`)
}

describe('setup: the private SoftHSM store', () => {
  let dir: string
  let bin: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'setup-store-'))
    // A PATH with node and nothing else: no pkcs11-tool, no softhsm2-util.
    bin = join(dir, 'bin')
    await mkdir(bin)
    await symlink(process.execPath, join(bin, 'node'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  /** An environment of its own under `dir/name`, with the node-only PATH. */
  function envFor(name: string): NodeJS.ProcessEnv {
    const home = join(dir, name)
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PATH: bin,
      XDG_CONFIG_HOME: join(home, 'config'),
      XDG_DATA_HOME: join(home, 'data'),
      XDG_STATE_HOME: join(home, 'state'),
      XDG_RUNTIME_DIR: join(home, 'run'),
      CARGO_HOME: join(home, 'cargo-home'),
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    delete env['CI']
    return env
  }

  test('without pkcs11-tool on PATH, setup makes the token and a key on it', async () => {
    const env = envFor('no-opensc')
    assert.ok(!existsSync(join(bin, 'pkcs11-tool')))
    const r = await runAgentCli(['setup', '--registry', 'local', '--index', INDEX], { env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /created a SoftHSM token 'cargo-pkcs11-agent'/)
    assert.match(r.stdout, /on token softhsm: generated/)
    const again = await runAgentCli(['setup', '--registry', 'local', '--index', INDEX], { env })
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, /on token softhsm: reused/)
  })

  test('a store left without its token (as an older setup did when pkcs11-tool was missing) gets it', async () => {
    const env = envFor('half-made')
    const store = join(String(env['XDG_DATA_HOME']), 'cargo-pkcs11-agent', 'softhsm')
    await mkdir(join(store, 'tokens'), { recursive: true, mode: 0o700 })
    await writeFile(
      join(store, 'softhsm2.conf'),
      `directories.tokendir = ${join(store, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`,
      { mode: 0o600 },
    )
    await writeFile(join(store, 'user.pin'), '24681357\n', { mode: 0o600 })
    await writeFile(join(store, 'so.pin'), '1357924613579246\n', { mode: 0o600 })
    const r = await runAgentCli(['setup'], { env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /set up the missing SoftHSM token 'cargo-pkcs11-agent'/)
    assert.match(r.stdout, /on token softhsm: generated/)
    // The key is behind the PIN the store already had.
    assert.equal(await readFile(join(store, 'user.pin'), 'utf8'), '24681357\n')
  })

  test('an incomplete store is refused and left as it is', async () => {
    const env = envFor('incomplete')
    const store = join(String(env['XDG_DATA_HOME']), 'cargo-pkcs11-agent', 'softhsm')
    await mkdir(store, { recursive: true })
    await writeFile(join(store, 'softhsm2.conf'), '# mine\n')
    const r = await runAgentCli(['setup'], { env })
    assert.equal(r.code, 1)
    assert.match(r.stderr, /The SoftHSM store .* is incomplete: it has only .*softhsm2\.conf\. Move .* aside/)
    assert.deepEqual(await tree(store), ['softhsm2.conf'])
    assert.equal(await readFile(join(store, 'softhsm2.conf'), 'utf8'), '# mine\n')
  })

  test(
    'without SoftHSM, setup names it and its packages and creates nothing',
    { skip: !isRoot && 'hiding the installed SoftHSM needs a mount namespace (root)' },
    async () => {
      const env = envFor('no-softhsm')
      // A private mount namespace where SoftHSM's library directories are empty.
      const hide = SOFTHSM_DIRS.filter((d) => existsSync(d))
        .map((d) => `mount -t tmpfs tmpfs ${d}`)
        .join(' && ')
      const cli = distPath('src', 'bin', 'cargo-pkcs11-agent.cjs')
      const r = spawnSync(
        'unshare',
        [
          '-m',
          '--propagation',
          'private',
          'sh',
          '-c',
          `${hide} && exec "$0" "$1" setup`,
          process.execPath,
          cli,
        ],
        // unshare, sh and mount come from the system PATH here; the CLI itself runs by absolute path.
        { env: { ...env, PATH: process.env['PATH'] }, encoding: 'utf8' },
      )
      assert.equal(r.status, 1, r.stderr)
      assert.match(r.stderr, /SoftHSM is not installed; setup uses it for a software token/)
      assert.match(r.stderr, /sudo apt install softhsm2/)
      assert.match(r.stderr, /brew install softhsm/)
      assert.deepEqual(await tree(String(env['XDG_DATA_HOME'])), [])
      assert.deepEqual(await tree(String(env['XDG_CONFIG_HOME'])), [])
    },
  )

  test(
    'a run that fails part-way leaves nothing it created, and the next run works',
    { skip: !isRoot && 'mounting a tmpfs needs root' },
    async () => {
      const env = envFor('out-of-inodes')
      const data = String(env['XDG_DATA_HOME'])
      await mkdir(data, { recursive: true })
      let storeFailures = 0
      let pkcs11Failures = 0
      let lastFailing: number | undefined
      // Fewer inodes than setup needs fail it at every step in turn: mkdir, each file, C_InitToken,
      // C_InitPIN, the key. Go up until a run succeeds.
      let n = 2
      for (; n < 60; n += 1) {
        mount(['mount', '-t', 'tmpfs', '-o', `nr_inodes=${n},mode=0700`, 'tmpfs', data])
        try {
          await rm(String(env['XDG_CONFIG_HOME']), { recursive: true, force: true })
          const r = await runAgentCli(['setup'], { env })
          if (r.code === 0) break
          assert.equal(r.code, 1, r.stderr)
          lastFailing = n
          if (/Creating the SoftHSM token in .* failed/.test(r.stderr)) {
            storeFailures += 1
            assert.match(r.stderr, /what this run had created there was removed/)
            assert.match(r.stderr, /Check that .* is writable and has free space, then run setup again/)
            assert.deepEqual(await tree(data), [], `nr_inodes=${n}: ${r.stderr}`)
            if (!r.stderr.includes('ENOSPC')) pkcs11Failures += 1
          } else {
            // The store was complete; what failed came after it (the key): the store stays for the next run.
            assert.ok(
              (await tree(data)).includes(join('cargo-pkcs11-agent', 'softhsm', 'user.pin')),
              r.stderr,
            )
          }
        } finally {
          mount(['umount', data])
        }
      }
      assert.ok(n < 60, 'setup succeeds once there are enough inodes')
      assert.ok(storeFailures >= 4, `store creation failed at ${storeFailures} points`)
      assert.ok(
        pkcs11Failures >= 1,
        'at least one failure came from SoftHSM itself (C_InitToken / C_InitPIN)',
      )

      // The run after a failure, with room again, works.
      assert.ok(lastFailing !== undefined)
      mount(['mount', '-t', 'tmpfs', '-o', `nr_inodes=${lastFailing},mode=0700`, 'tmpfs', data])
      try {
        await rm(String(env['XDG_CONFIG_HOME']), { recursive: true, force: true })
        const failed = await runAgentCli(['setup'], { env })
        assert.equal(failed.code, 1, failed.stderr)
        mount(['mount', '-o', 'remount,nr_inodes=1000', data])
        const r = await runAgentCli(['setup'], { env })
        assert.equal(r.code, 0, r.stderr)
        assert.match(r.stdout, /on token softhsm: generated/)
      } finally {
        mount(['umount', data])
      }
    },
  )
})
