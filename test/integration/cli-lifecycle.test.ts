/**
 * What users of ssh-agent and gpg-agent expect, against a real agent process: `stop`, `reload` (a
 * broken config is reported and not sent), `uninstall-service`; the shim noticing that the agent it
 * started exited, at once and with the agent's own words; agent.log capped by renaming; completions
 * and the man page generated from the command table, run by the real shells and groff.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { COMMANDS } from '../../src/cli/commands.js'
import { LIMITS } from '../../src/lib/limits.js'
import {
  cargoGet,
  runAgentCli,
  runShim,
  shimBinPath,
  startAgent,
  type AgentFixture,
} from '../helpers/agent.js'
import { repoRoot } from '../helpers/softhsm.js'

describe('stop and reload', () => {
  let fixture: AgentFixture
  before(async () => {
    fixture = await startAgent({
      registries: { local: { index: 'sparse+http://127.0.0.1:38720/index/' } },
    })
  })
  after(async () => {
    await fixture.stop()
  })

  test('reload: a broken config is reported to the user and not sent; a good one is re-read', async () => {
    const good = await readFile(fixture.configPath, 'utf8')
    await writeFile(
      fixture.configPath,
      good.replace('[registries.local]', '[registries.local]\nconfrim = "none"'),
    )
    const refused = await runAgentCli(['reload'], { env: fixture.env })
    assert.equal(refused.code, 1, refused.stdout + refused.stderr)
    assert.match(refused.stderr, /confrim: unknown key; did you mean `confirm`\?/)
    assert.doesNotMatch(fixture.log(), /SIGHUP|reload/)
    await writeFile(fixture.configPath, good)
    const r = await runAgentCli(['reload'], { env: fixture.env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`reloaded the agent \\(pid ${String(fixture.process?.pid)}\\)`))
    const deadline = Date.now() + 5_000
    while (!/configuration reloaded/.test(fixture.log()) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50))
    assert.match(fixture.log(), /configuration reloaded from .*PINs forgotten/)
  })

  test('stop: the agent exits cleanly and its socket is gone; a second stop says nothing runs', async () => {
    const child = fixture.process
    assert.ok(child !== undefined)
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    const r = await runAgentCli(['stop'], { env: fixture.env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`stopped the agent \\(pid ${String(child.pid)}\\)`))
    assert.equal(await exited, 0, fixture.log())
    assert.equal(existsSync(fixture.socket), false)
    const again = await runAgentCli(['stop'], { env: fixture.env })
    assert.equal(again.code, 1)
    assert.match(again.stderr, /No agent is running on .*: nothing to stop/)
  })
})

describe('the shim and the agent it starts', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shim-start-'))
    await mkdir(join(dir, 'run'), { mode: 0o700 })
    env = {
      ...process.env,
      XDG_RUNTIME_DIR: join(dir, 'run'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_CONFIG_HOME: join(dir, 'config'),
      CARGO_PKCS11_AGENT_CONFIG: join(dir, 'agent.toml'),
    }
    delete env['CARGO_PKCS11_AGENT_SOCK']
    delete env['CARGO_PKCS11_AGENT_NO_AUTOSTART']
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('a typo in the agent config: the agent exits, the shim says why at once (did you mean), not after a timeout', async () => {
    await writeFile(join(dir, 'agent.toml'), '[tokens.soft]\nmodule = "softhsm"\nlabell = "x"\n')
    const started = Date.now()
    const r = await runShim(shimBinPath(), cargoGet('sparse+http://127.0.0.1:38721/index/', 'read'), { env })
    const took = Date.now() - started
    const err = (JSON.parse(r.lines[1] ?? '{}') as { Err?: { message?: string } }).Err
    assert.ok(err !== undefined, r.stdout + r.stderr)
    assert.match(err.message ?? '', /exited \(status 1\) before listening/)
    assert.match(err.message ?? '', /tokens\.soft\.labell: unknown key; did you mean `label`\?/)
    assert.ok(took < LIMITS.agentStartWaitMs, `the shim took ${took} ms`)
    const log = readFileSync(join(dir, 'state', 'cargo-pkcs11-agent', 'agent.log'), 'utf8')
    assert.match(log, /did you mean `label`/)
    assert.ok(log.endsWith('\n'), JSON.stringify(log.slice(-80)))
  })

  test('agent.log past its cap is renamed to agent.log.1 when an agent starts', async () => {
    const logPath = join(dir, 'state', 'cargo-pkcs11-agent', 'agent.log')
    const old = 'old line\n'.repeat(Math.ceil(LIMITS.agentLogMaxBytes / 9))
    await writeFile(logPath, old)
    await runShim(shimBinPath(), cargoGet('sparse+http://127.0.0.1:38721/index/', 'read'), { env })
    assert.equal(readFileSync(`${logPath}.1`, 'utf8'), old)
    const fresh = readFileSync(logPath, 'utf8')
    assert.ok(fresh.length < 4_096, `agent.log kept ${fresh.length} bytes`)
    assert.match(fresh, /did you mean `label`/)
  })

  test('a mistyped module name or a module that is not there: the agent exits before listening, the shim says why', async () => {
    const registry = (module: string): string =>
      `[tokens.soft]\nmodule = ${JSON.stringify(module)}\nlabel = "x"\npin-source = "env"\npin-env = "NO_PIN"\n` +
      '[registries.r]\nindex = "sparse+http://127.0.0.1:38721/index/"\nread-key = { token = "soft", label = "k" }\n'
    const missing = join(dir, 'no-such-lib', 'libpkcs11.so')
    for (const [module, expected] of [
      [
        'sofhsm',
        /tokens\.soft\.module: unknown PKCS#11 module name "sofhsm" \(known: softhsm, .*; did you mean "softhsm"\?/,
      ],
      [
        missing,
        new RegExp(`\\[tokens\\.soft\\] module ${missing} does not exist. Install the module's package`),
      ],
    ] as const) {
      await writeFile(join(dir, 'agent.toml'), registry(module))
      const started = Date.now()
      const r = await runShim(shimBinPath(), cargoGet('sparse+http://127.0.0.1:38721/index/', 'read'), {
        env,
      })
      const err = (JSON.parse(r.lines[1] ?? '{}') as { Err?: { message?: string } }).Err
      assert.ok(err !== undefined, r.stdout + r.stderr)
      assert.match(err.message ?? '', /exited \(status 1\) before listening/)
      assert.match(err.message ?? '', expected)
      assert.ok(Date.now() - started < LIMITS.agentStartWaitMs, 'the shim did not wait for a timeout')
      // `run` in a terminal says the same before detaching, and nothing listens.
      const run = await runAgentCli(['run'], { env })
      assert.equal(run.code, 1)
      assert.match(run.stderr, expected)
      assert.equal(existsSync(join(dir, 'run', 'cargo-pkcs11-agent', 'agent.sock')), false)
    }
  })
})

describe('uninstall-service', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'uninstall-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('removes the unit install-service wrote; a second run finds nothing to remove', async () => {
    const env = { ...process.env, XDG_CONFIG_HOME: join(dir, 'xdg') }
    const unit = join(dir, 'xdg', 'systemd', 'user', 'cargo-pkcs11-agent.service')
    assert.equal((await runAgentCli(['install-service', '--no-start'], { env })).code, 0)
    assert.ok(existsSync(unit))
    const dry = await runAgentCli(['uninstall-service', '--dry-run'], { env })
    assert.equal(dry.code, 0)
    assert.match(dry.stdout, /systemctl --user disable --now cargo-pkcs11-agent\.service/)
    assert.ok(existsSync(unit), '--dry-run removed the unit')
    // No user systemd manager here: the disable step fails, is reported, and the unit is still removed.
    const r = await runAgentCli(['uninstall-service'], { env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, new RegExp(`Removed the systemd \\(user\\) service: ${unit}`))
    assert.equal(existsSync(unit), false)
    const again = await runAgentCli(['uninstall-service'], { env })
    assert.equal(again.code, 0)
    assert.match(again.stderr, /No systemd \(user\) service is installed/)
  })

  test('install-service --dry-run names the file and the commands; uninstall --no-stop without a bus says so in its own words', async () => {
    // No user bus for certain: systemctl --user has nothing to connect to.
    const env = {
      ...process.env,
      XDG_CONFIG_HOME: join(dir, 'xdg2'),
      XDG_RUNTIME_DIR: join(dir, 'no-runtime'),
      DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(dir, 'no-bus')}`,
    }
    const unit = join(dir, 'xdg2', 'systemd', 'user', 'cargo-pkcs11-agent.service')
    const dry = await runAgentCli(['install-service', '--dry-run'], { env })
    assert.equal(dry.code, 0, dry.stderr)
    assert.match(dry.stdout, /^\[Unit\]/m)
    assert.equal(
      dry.stderr,
      `Would write ${unit}, then run: systemctl --user daemon-reload && systemctl --user enable --now cargo-pkcs11-agent.service\n`,
    )
    assert.equal(existsSync(unit), false, '--dry-run wrote the unit')
    const noStart = await runAgentCli(['install-service', '--dry-run', '--no-start'], { env })
    assert.match(
      noStart.stderr,
      new RegExp(`^Would write ${unit}; start it with: systemctl --user daemon-reload`),
    )

    assert.equal((await runAgentCli(['install-service', '--no-start'], { env })).code, 0)
    const r = await runAgentCli(['uninstall-service', '--no-stop'], { env })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(existsSync(unit), false)
    const lines = r.stderr.trimEnd().split('\n')
    assert.deepEqual(lines.slice(0, 1), [`Removed the systemd (user) service: ${unit}`])
    assert.equal(lines.length, 2, r.stderr)
    assert.match(
      lines[1] ?? '',
      /^The user session manager could not be told \(`systemctl --user daemon-reload`: Failed to connect to bus[^)]*\); if the service runs under one elsewhere, run that command there$/,
    )
  })
})

describe('--help, completions and the man page come from one command table', () => {
  const names = Object.keys(COMMANDS)

  test('--help lists every command, the --json commands and the exit codes', async () => {
    const r = await runAgentCli(['--help'])
    assert.equal(r.code, 0)
    for (const name of names) assert.match(r.stdout, new RegExp(`^  ${name} `, 'm'), name)
    assert.match(r.stdout, /--json on every command whose output is data: .*pubkey/)
    assert.match(r.stdout, /exit status:\n  0  success.*\n  1  failure.*\n  2  usage error/)
  })

  test('help --help and help -h print the help, exit 0', async () => {
    const help = (await runAgentCli(['--help'])).stdout
    for (const flag of ['--help', '-h']) {
      const r = await runAgentCli(['help', flag])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout, help)
    }
  })

  test('bash: valid syntax, every command completes, option values complete', async () => {
    const script = (await runAgentCli(['completions', 'bash'])).stdout
    const complete = (words: string[]): string[] => {
      const r = spawnSync(
        'bash',
        [
          '-c',
          'eval "$(cat)"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _cargo_pkcs11_agent; printf "%s\\n" "${COMPREPLY[@]}"',
          'bash',
          ...words,
        ],
        { input: script, encoding: 'utf8' },
      )
      assert.equal(r.status, 0, r.stderr)
      return r.stdout.split('\n').filter((l) => l !== '')
    }
    assert.deepEqual(complete(['cargo-pkcs11-agent', '']).sort(), [...names, 'help'].sort())
    assert.deepEqual(complete(['cargo-pkcs11-agent', 'pubkey', '--format', '']), ['k3', 'pid', 'hex', 'json'])
    assert.ok(complete(['cargo-pkcs11-agent', 'pubkey', '--j']).includes('--json'))
  })

  test('zsh and fish: valid syntax, every command in the script; fish completes them', async () => {
    const zsh = (await runAgentCli(['completions', 'zsh'])).stdout
    const z = spawnSync('zsh', ['-n'], { input: zsh, encoding: 'utf8' })
    assert.equal(z.status, 0, z.stderr)
    for (const name of names) assert.match(zsh, new RegExp(`^    '${name}:`, 'm'), name)
    const fish = (await runAgentCli(['completions', 'fish'])).stdout
    const dir = await mkdtemp(join(tmpdir(), 'fish-'))
    await writeFile(join(dir, 'cargo-pkcs11-agent.fish'), fish)
    const f = spawnSync(
      'fish',
      ['-c', `source ${join(dir, 'cargo-pkcs11-agent.fish')}; complete -C "cargo-pkcs11-agent "`],
      {
        encoding: 'utf8',
      },
    )
    await rm(dir, { recursive: true, force: true })
    assert.equal(f.status, 0, f.stderr)
    const offered = f.stdout.split('\n').map((l) => l.split('\t')[0])
    for (const name of [...names, 'help']) assert.ok(offered.includes(name), `fish does not offer ${name}`)
  })

  test('the man page renders without warnings and has every command and the exit status', async () => {
    const man = (await runAgentCli(['man'])).stdout
    const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-P-c', '-P-b', '-P-u'], {
      input: man,
      encoding: 'utf8',
    })
    assert.equal(r.status, 0)
    assert.equal(r.stderr, '', r.stderr)
    const text = r.stdout.replace(/\u2010\n\s+/g, '')
    for (const name of names) assert.match(text, new RegExp(`^ {7}${name}\\b`, 'm'), name)
    assert.match(text, /EXIT STATUS/)
  })

  test("the man page's ENVIRONMENT names every variable of docs/configuration.md's Environment table", async () => {
    const docs = readFileSync(join(repoRoot(), 'docs', 'configuration.md'), 'utf8')
    const table = /^## Environment\n([\s\S]*?)\n## /m.exec(docs)?.[1] ?? ''
    const documented = [...table.matchAll(/^\| ([^|]+)\|/gm)].flatMap(([, cell]) =>
      [...(cell ?? '').matchAll(/`([A-Z][A-Z0-9_]+)/g)].map(([, name]) => name ?? ''),
    )
    assert.ok(documented.includes('CI') && documented.includes('XDG_RUNTIME_DIR'), documented.join(' '))
    const man = (await runAgentCli(['man'])).stdout
    const section = /^\.SH ENVIRONMENT\n([\s\S]*?)^\.SH /m.exec(man)?.[1] ?? ''
    const inMan = [...section.matchAll(/^\.B (\S+)$/gm)].map(([, name]) => (name ?? '').replace(/\\-/g, '-'))
    assert.deepEqual(
      documented.filter((name) => !inMan.includes(name)),
      [],
    )
  })

  test('pubkey --json is --format json; asking for both different outputs is a usage error', async () => {
    const r = await runAgentCli([
      'pubkey',
      '--module',
      'softhsm',
      '--token-label',
      't',
      '--label',
      'x',
      '--json',
      '--format',
      'hex',
    ])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /--json and --format hex ask for different outputs/)
  })
})
