/**
 * `setup` edits the user's files in place (src/cli/setup/tables.ts): a cargo config with comments,
 * blank lines, odd spacing, CRLF line endings and other tables keeps every byte outside the table
 * setup adds or completes; a file that does not parse is refused and left as it was; a changed file
 * keeps a backup; a symlinked config stays a symlink. The provider is `cargo-credential-pkcs11` when
 * PATH finds this package's shim under that name (the real cargo then runs it by name), else the
 * absolute path.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmod, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises'
import { homedir, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parse } from 'smol-toml'

import { parseConfig } from '../../src/config/load.js'
import { packageShimPath, runAgentCli, type CliResult } from '../helpers/agent.js'

const CARGO_BIN_DIR = join(homedir(), '.cargo', 'bin')

/** A cargo config a person wrote: comments, odd spacing, blank lines, other tables, CRLF, no final newline. */
const USER_CARGO_CONFIG = [
  '# my cargo config, kept by hand',
  '',
  '[build]',
  'jobs   =  4      # cores',
  "rustflags = [ '-C',  'target-cpu=native' ]",
  '',
  '',
  '# the work registry: index only so far',
  '[registries.work]',
  'index = "sparse+http://127.0.0.1:38660/index/"   # from the wiki',
  '',
  '[net]',
  '  retry = 2',
  '[alias]',
  'b = "build"   # short',
].join('\r\n')

const WORK_INDEX = 'sparse+http://127.0.0.1:38660/index/'
const LOCAL_INDEX = 'sparse+http://127.0.0.1:38661/index/'

function cargoRegistries(text: string): Record<string, { index?: string; 'credential-provider'?: unknown }> {
  return JSON.parse(JSON.stringify((parse(text) as { registries: unknown }).registries)) as Record<
    string,
    { index?: string; 'credential-provider'?: unknown }
  >
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

describe('setup edits the cargo config and the agent config in place', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  let cargoConfig: string
  /** PATH entries: one with only `node`, one with the shim under its installed name. */
  let plainBin: string
  let shimBin: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'setup-files-'))
    plainBin = join(dir, 'bin')
    shimBin = join(dir, 'shim-bin')
    await mkdir(plainBin)
    await mkdir(shimBin)
    await symlink(process.execPath, join(plainBin, 'node'))
    await symlink(packageShimPath(), join(shimBin, 'cargo-credential-pkcs11'))
    env = {
      ...process.env,
      PATH: plainBin,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_HOME: join(dir, 'cargo-home'),
      CARGO_PKCS11_AGENT_SOCK: join(dir, 'run', 'agent.sock'),
    }
    delete env['SOFTHSM2_CONF']
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    delete env['CI']
    cargoConfig = join(dir, 'cargo-home', 'config.toml')
    await mkdir(dirname(cargoConfig))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('a cargo config that does not parse is refused and left untouched', async () => {
    const broken = USER_CARGO_CONFIG + '\r\n[registries.oops\r\nindex = 1\r\n'
    await writeFile(cargoConfig, broken)
    const r = await runAgentCli(
      ['setup', '--registry', 'local', '--index', LOCAL_INDEX, '--write-cargo-config'],
      {
        env,
      },
    )
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /The cargo config .*config\.toml is not valid TOML \(line 16, column 17\)/)
    assert.match(r.stderr, /Fix it by hand first \(setup does not touch a file it cannot read\)/)
    assert.equal(await readFile(cargoConfig, 'utf8'), broken)
    await assert.rejects(lstat(`${cargoConfig}.bak`), /ENOENT/)
    // Refused before anything else: no SoftHSM store, no key, no agent config.
    await assert.rejects(lstat(join(dir, 'data')), /ENOENT/)
    await assert.rejects(lstat(join(dir, 'config')), /ENOENT/)
  })

  test('a new registry is appended: every byte before it is the user file, and a backup is kept', async () => {
    await writeFile(cargoConfig, USER_CARGO_CONFIG)
    const r = await runAgentCli(
      ['setup', '--registry', 'local', '--index', LOCAL_INDEX, '--write-cargo-config'],
      {
        env,
      },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /cargo config: .*config\.toml \(added; the previous file is .*config\.toml\.bak\)/)
    const text = await readFile(cargoConfig, 'utf8')
    assert.ok(text.startsWith(USER_CARGO_CONFIG), text)
    const added = text.slice(USER_CARGO_CONFIG.length)
    assert.ok(!/[^\r]\n/.test(added), `the appended lines use the file's CRLF: ${JSON.stringify(added)}`)
    assert.deepEqual(JSON.parse(JSON.stringify(parse(added))), {
      registries: { local: { index: LOCAL_INDEX, 'credential-provider': [packageShimPath()] } },
    })
    assert.equal(await readFile(`${cargoConfig}.bak`, 'utf8'), USER_CARGO_CONFIG)
    // PATH has no cargo-credential-pkcs11: the absolute path, and the user is told why.
    assert.match(
      r.stdout,
      /note: cargo-credential-pkcs11 is not on PATH, so the provider is its absolute path/,
    )
  })

  test('completing an existing registry changes only the line it adds; a second backup does not replace the first', async () => {
    const before = await readFile(cargoConfig, 'utf8')
    const r = await runAgentCli(
      ['setup', '--registry', 'work', '--index', WORK_INDEX, '--write-cargo-config'],
      {
        env,
      },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /\(completed; the previous file is .*config\.toml\.bak\.1\)/)
    const text = await readFile(cargoConfig, 'utf8')
    const line = `credential-provider = [ ${JSON.stringify(packageShimPath())} ]\r\n`
    assert.equal(text.split(line).length, 3, 'work and local each have the line once')
    const at = text.indexOf(line)
    assert.ok(
      at > 0 && at < USER_CARGO_CONFIG.length,
      'inside the user part of the file, in [registries.work]',
    )
    assert.equal(text.slice(0, at) + text.slice(at + line.length), before, 'nothing else changed')
    assert.deepEqual(cargoRegistries(text)['work'], {
      index: WORK_INDEX,
      'credential-provider': [packageShimPath()],
    })
    assert.equal(await readFile(`${cargoConfig}.bak`, 'utf8'), USER_CARGO_CONFIG)
    assert.equal(await readFile(`${cargoConfig}.bak.1`, 'utf8'), before)

    const again = await runAgentCli(
      ['setup', '--registry', 'work', '--index', WORK_INDEX, '--write-cargo-config'],
      {
        env,
      },
    )
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, /cargo config: .*config\.toml \(unchanged\)/)
    assert.equal(await readFile(cargoConfig, 'utf8'), text)
    await assert.rejects(lstat(`${cargoConfig}.bak.2`), /ENOENT/)
  })

  test('a registry that has another provider is not changed without --force, and the file is untouched', async () => {
    const before = await readFile(cargoConfig, 'utf8')
    const withToken = `${before}\r\n[registries.tokened]\r\nindex = "sparse+http://127.0.0.1:38665/index/"\r\ncredential-provider = "cargo:token"\r\n`
    await writeFile(cargoConfig, withToken)
    const r = await runAgentCli(
      [
        'setup',
        '--registry',
        'tokened',
        '--index',
        'sparse+http://127.0.0.1:38665/index/',
        '--write-cargo-config',
      ],
      { env },
    )
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /already has a different \[registries\.tokened\]\. Pass --force/)
    assert.equal(await readFile(cargoConfig, 'utf8'), withToken)
  })

  test('with the shim on PATH the provider is its name, and the real cargo runs it by that name', async () => {
    const named = { ...env, PATH: `${shimBin}:${plainBin}` }
    const index = 'sparse+http://127.0.0.1:38662/index/'
    const r = await runAgentCli(['setup', '--registry', 'named', '--index', index, '--write-cargo-config'], {
      env: named,
    })
    assert.equal(r.code, 0, r.stderr)
    assert.doesNotMatch(r.stdout, /note:/)
    const registries = cargoRegistries(await readFile(cargoConfig, 'utf8'))
    assert.deepEqual(registries['named'], { index, 'credential-provider': ['cargo-credential-pkcs11'] })
    assert.deepEqual(registries['local']?.['credential-provider'], [packageShimPath()], 'local untouched')

    // The absolute path setup wrote for local earlier becomes the name, with no --force: same program.
    const renamed = await runAgentCli(
      ['setup', '--registry', 'local', '--index', LOCAL_INDEX, '--write-cargo-config'],
      { env: named },
    )
    assert.equal(renamed.code, 0, renamed.stderr)
    assert.match(renamed.stdout, /cargo config: .*config\.toml \(updated; the previous file is /)
    assert.deepEqual(cargoRegistries(await readFile(cargoConfig, 'utf8'))['local'], {
      index: LOCAL_INDEX,
      'credential-provider': ['cargo-credential-pkcs11'],
    })

    // cargo logout runs the provider (docs/cargo-protocol.md §1); with no agent running the shim has
    // nothing to forget and succeeds. Without the name on PATH cargo cannot start it.
    const cargoEnv = (path: string): NodeJS.ProcessEnv => ({
      ...named,
      PATH: `${path}:${CARGO_BIN_DIR}`,
      RUSTUP_HOME: process.env['RUSTUP_HOME'] ?? join(homedir(), '.rustup'),
      CARGO_PKCS11_AGENT_NO_AUTOSTART: '1',
    })
    const cargo = join(CARGO_BIN_DIR, 'cargo')
    const found = await run(cargo, ['logout', '--registry', 'named'], cargoEnv(`${shimBin}:${plainBin}`), dir)
    assert.equal(found.code, 0, found.stderr)
    const missing = await run(cargo, ['logout', '--registry', 'named'], cargoEnv(plainBin), dir)
    assert.notEqual(missing.code, 0)
    assert.match(missing.stderr, /credential provider `cargo-credential-pkcs11` failed action `logout`/)
    assert.match(missing.stderr, /failed to spawn credential process/)
  })

  test('a different program called cargo-credential-pkcs11 on PATH is not named: the absolute path is', async () => {
    const other = join(dir, 'other-bin')
    await mkdir(other)
    await writeFile(join(other, 'cargo-credential-pkcs11'), '#!/bin/sh\nexit 1\n')
    await chmod(join(other, 'cargo-credential-pkcs11'), 0o755)
    const r = await runAgentCli(
      ['setup', '--registry', 'elsewhere', '--index', 'sparse+http://127.0.0.1:38663/index/'],
      { env: { ...env, PATH: `${other}:${shimBin}:${plainBin}` } },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.includes(`credential-provider = [ ${JSON.stringify(packageShimPath())} ]`), r.stdout)
    assert.match(
      r.stdout,
      /note: .*other-bin\/cargo-credential-pkcs11 on PATH is not this installation's shim/,
    )
  })

  test('a symlinked cargo config stays a symlink; its target is edited', async () => {
    const dotfiles = join(dir, 'dotfiles', 'cargo.toml')
    await mkdir(dirname(dotfiles))
    await writeFile(dotfiles, '# from my dotfiles\n[net]\nretry = 3\n')
    await rm(cargoConfig)
    await symlink(dotfiles, cargoConfig)
    const r = await runAgentCli(
      ['setup', '--registry', 'local', '--index', LOCAL_INDEX, '--write-cargo-config'],
      {
        env,
      },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.ok((await lstat(cargoConfig)).isSymbolicLink())
    assert.equal(await readlink(cargoConfig), dotfiles)
    const text = await readFile(dotfiles, 'utf8')
    assert.ok(text.startsWith('# from my dotfiles\n[net]\nretry = 3\n\n[registries.local]\n'), text)
    assert.equal(await readFile(`${dotfiles}.bak`, 'utf8'), '# from my dotfiles\n[net]\nretry = 3\n')
  })

  test("the agent config keeps the user's comments and tables when setup adds a registry", async () => {
    const configPath = join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')
    const before = await readFile(configPath, 'utf8')
    const mine = `${before}\n# my own note, keep me\n[agent]\nnotify   =   false   # quiet\n`
    await writeFile(configPath, mine)
    const r = await runAgentCli(
      ['setup', '--registry', 'extra', '--index', 'sparse+http://127.0.0.1:38664/index/'],
      {
        env,
      },
    )
    assert.equal(r.code, 0, r.stderr)
    const backup = /agent config: .*config\.toml \(the previous file is (.*config\.toml\.bak[.\d]*)\)/.exec(
      r.stdout,
    )?.[1]
    assert.ok(backup !== undefined, r.stdout)
    const text = await readFile(configPath, 'utf8')
    assert.ok(text.startsWith(mine), text)
    assert.match(text.slice(mine.length), /^\n\[registries\.extra\]\n/)
    assert.equal((await lstat(configPath)).mode & 0o777, 0o600)
    assert.equal(await readFile(backup, 'utf8'), mine)
    assert.equal((await lstat(backup)).mode & 0o777, 0o600, 'the backup is as private as the file')
  })

  test('key references are written inline, so a key appended after them stays in the registry; an older layout is patched in place', async () => {
    const configPath = join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')
    const appended = await readFile(configPath, 'utf8')
    assert.ok(
      appended.endsWith(
        '[registries.extra]\nindex = "sparse+http://127.0.0.1:38664/index/"\nread-key = { token = "softhsm", label = "cargo" }\n',
      ),
      appended,
    )
    const withConfirm = parseConfig(`${appended}confirm = "none"\n`, configPath, env)
    assert.equal(withConfirm.registries['extra']?.confirm, 'none')
    // The layout earlier versions of setup wrote: the key reference as a sub-table.
    const index = 'sparse+http://127.0.0.1:38665/index/'
    const older = `${appended}\n[registries.older]   # bound last year\nindex = "${index}"\n\n[registries.older.read-key]\ntoken = "softhsm"\nlabel = "cargo"   # keep me\n`
    await writeFile(configPath, older)
    const r = await runAgentCli(['setup', '--registry', 'older', '--index', index, '--confirm', 'none'], {
      env,
    })
    assert.equal(r.code, 0, r.stderr)
    const text = await readFile(configPath, 'utf8')
    assert.ok(text.startsWith(`${appended}\n[registries.older]   # bound last year\n`), text)
    assert.ok(
      text.endsWith('[registries.older.read-key]\ntoken = "softhsm"\nlabel = "cargo"   # keep me\n'),
      text,
    )
    assert.equal(parseConfig(text, configPath, env).registries['older']?.confirm, 'none')
  })
})
