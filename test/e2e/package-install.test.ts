/**
 * The package as a new user gets it: `npm pack` on a clean copy of the sources (no dist/: `prepack`
 * builds it), installed into a clean prefix with `npm install -g --prefix`, then the installed
 * commands: `--help`, `doctor`, the shim's hello as cargo starts it, the man page; and a native
 * binding whose build is missing, reported with `npm rebuild pkcs11js`, which then fixes it.
 */
import assert from 'node:assert/strict'
import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { repoRoot } from '../helpers/softhsm.js'

const run = (
  command: string,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {},
): SpawnSyncReturns<string> =>
  spawnSync(command, args, {
    encoding: 'utf8',
    timeout: 300_000,
    cwd: options.cwd,
    env: { ...process.env, npm_config_nodedir: process.env['npm_config_nodedir'] ?? '/usr', ...options.env },
    ...(options.input === undefined ? {} : { input: options.input }),
  })

describe('npm pack → npm install -g --prefix → the installed commands', () => {
  let dir: string
  let prefix: string
  let tarball: string
  let files: string[]
  const bin = (name: string): string => join(prefix, 'bin', name)
  const installed = (): string => join(prefix, 'lib', 'node_modules', 'cargo-pkcs11-agent')

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'package-'))
    const clone = join(dir, 'clone')
    mkdirSync(clone)
    // The tracked and new files, as a fresh clone has them: no dist/, no build output.
    const copy = run(
      'bash',
      [
        '-c',
        'set -o pipefail; git ls-files -co --exclude-standard -z | tar -c --null -T - -f - | tar -x -f - -C "$1"',
        'copy',
        clone,
      ],
      { cwd: repoRoot() },
    )
    assert.equal(copy.status, 0, copy.stderr)
    assert.equal(existsSync(join(clone, 'dist')), false)
    // The development dependencies the build needs (tsc), as `npm ci` would install them.
    symlinkSync(join(repoRoot(), 'node_modules'), join(clone, 'node_modules'))
    const pack = run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: clone })
    assert.equal(pack.status, 0, pack.stderr)
    const report = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as {
      filename: string
      files: { path: string }[]
    }[]
    tarball = join(dir, report[0]?.filename ?? '')
    files = (report[0]?.files ?? []).map((f) => f.path)
    prefix = join(dir, 'prefix')
    // As README.md says: a tarball's scripts are allowed by its absolute path (npm matches a file
    // dependency on its resolved path, not on its name), pkcs11js by name.
    const install = run(
      'npm',
      [
        'install',
        '-g',
        '--prefix',
        prefix,
        '--no-audit',
        '--no-fund',
        `--allow-scripts=${tarball},pkcs11js`,
        tarball,
      ],
      { cwd: dir },
    )
    assert.equal(install.status, 0, install.stderr)
    assert.doesNotMatch(install.stderr, /install-scripts/)
  })

  after(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('the tarball ships the build, the man page and both licences; no source maps without their sources', () => {
    for (const path of [
      'dist/src/bin/cargo-pkcs11-agent.cjs',
      'dist/cjs/src/bin/cargo-credential-pkcs11.js',
      'dist/src/index.d.ts',
      'dist/man/cargo-pkcs11-agent.1',
      'LICENSE-MIT',
      'LICENSE-APACHE',
      'native-config/service/cargo-pkcs11-agent.service',
    ])
      assert.ok(files.includes(path), `${path} is not in the tarball`)
    assert.deepEqual(
      files.filter((f) => f.endsWith('.map')),
      [],
    )
    assert.deepEqual(
      files.filter((f) => f.startsWith('dist/test/')),
      [],
    )
  })

  test('the installed cargo-pkcs11-agent: --help, the man page, doctor with the shim answering', () => {
    const help = run(bin('cargo-pkcs11-agent'), ['--help'])
    assert.equal(help.status, 0, help.stderr)
    assert.match(help.stdout, /^  uninstall-service /m)
    assert.ok(existsSync(join(prefix, 'share', 'man', 'man1', 'cargo-pkcs11-agent.1')))
    const config = join(dir, 'agent.toml')
    writeFileSync(
      config,
      '[tokens.soft]\nmodule = "softhsm"\nlabel = "none"\npin-source = "env"\npin-env = "NO_PIN"\n',
    )
    const doctor = run(bin('cargo-pkcs11-agent'), ['doctor', '--json', '--config', config], {
      env: { CARGO_PKCS11_AGENT_SOCK: join(dir, 'none.sock'), CARGO_HOME: join(dir, 'cargo-home') },
    })
    const findings = JSON.parse(doctor.stdout) as { level: string; check: string; detail: string }[]
    assert.ok(
      findings.some((f) => f.check === 'native binding' && f.level === 'ok'),
      doctor.stdout + doctor.stderr,
    )
    assert.ok(
      findings.some((f) => f.check === 'peercred addon' && f.level === 'ok'),
      doctor.stdout + doctor.stderr,
    )
    assert.ok(
      findings.some((f) => f.check === 'shim' && f.level === 'ok' && f.detail.startsWith(installed())),
      doctor.stdout,
    )
  })

  test('a missing peercred addon: doctor names it with the fix, and the fix works', () => {
    const addon = join(installed(), 'native', 'peercred', 'build', 'Release', 'peercred.node')
    assert.ok(existsSync(addon), 'the install did not build the peercred addon')
    renameSync(addon, `${addon}.gone`)
    const env = { CARGO_PKCS11_AGENT_SOCK: join(dir, 'none.sock'), CARGO_HOME: join(dir, 'cargo-home') }
    const doctor = run(bin('cargo-pkcs11-agent'), ['doctor'], { env })
    assert.equal(doctor.status, 1)
    assert.match(
      doctor.stdout,
      /fail  peercred addon: INTERNAL: .*peercred\.node is missing[^\n]*\n\s+→ Rebuild the native addon: `npm rebuild cargo-pkcs11-agent` in the directory it is installed in/,
    )
    const rebuild = run('npm', ['rebuild', 'cargo-pkcs11-agent'], { cwd: installed() })
    assert.equal(rebuild.status, 0, rebuild.stderr)
    const again = run(bin('cargo-pkcs11-agent'), ['doctor', '--json'], { env })
    const findings = JSON.parse(again.stdout) as { level: string; check: string }[]
    assert.ok(
      findings.some((f) => f.check === 'peercred addon' && f.level === 'ok'),
      again.stdout,
    )
  })

  test('the installed shim answers cargo with its hello', () => {
    const hello = run(bin('cargo-credential-pkcs11'), ['--cargo-plugin'], { input: '' })
    assert.equal(hello.stdout.split('\n')[0], '{"v":[1]}', hello.stderr)
  })

  test('a missing native build: the fix is named, no stack trace, and `npm rebuild pkcs11js` works', () => {
    const node = join(installed(), 'node_modules', 'pkcs11js', 'build', 'Release', 'pkcs11.node')
    assert.ok(existsSync(node), 'the install did not build pkcs11js')
    renameSync(node, `${node}.gone`)
    const list = run(bin('cargo-pkcs11-agent'), ['list', '--module', 'softhsm'])
    assert.equal(list.status, 1)
    assert.match(list.stderr, /pkcs11js\) is not built.*Run `npm rebuild pkcs11js`/)
    assert.doesNotMatch(list.stderr, /\n\s+at /)
    const config = join(dir, 'agent.toml')
    const doctor = run(bin('cargo-pkcs11-agent'), ['doctor', '--config', config], {
      env: { CARGO_PKCS11_AGENT_SOCK: join(dir, 'none.sock'), CARGO_HOME: join(dir, 'cargo-home') },
    })
    assert.equal(doctor.status, 1)
    assert.match(doctor.stdout, /fail  native binding: .*not built[^\n]*\n\s+→ Run `npm rebuild pkcs11js`/)
    const rebuild = run('npm', ['rebuild', 'pkcs11js'], { cwd: installed() })
    assert.equal(rebuild.status, 0, rebuild.stderr)
    const again = run(bin('cargo-pkcs11-agent'), ['list', '--module', 'softhsm'])
    assert.equal(again.status, 0, again.stderr)
  })
})
