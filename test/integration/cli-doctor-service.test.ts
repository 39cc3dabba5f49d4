/**
 * `doctor` and `install-service` as real processes: doctor explains a missing config and a broken
 * SoftHSM store with the fix, and says "ok" for a working agent on SoftHSM (token, keys, agent);
 * install-service renders the hardened unit for this installation and never overwrites a changed
 * unit without --force. (Starting a systemd user manager is not possible here: --no-start.)
 */
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { k3Pid } from '../../src/keys/paserk.js'
import { distPath, runAgentCli, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const AGENT = distPath('src', 'bin', 'cargo-pkcs11-agent.cjs')

describe('doctor', () => {
  let fixture: AgentFixture
  let dir: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'doctor-'))
    fixture = await startAgent({
      registries: {
        local: { index: 'sparse+http://127.0.0.1:38700/index/', readKey: { label: KNOWN_KEY.label } },
      },
    })
  })

  after(async () => {
    await fixture.stop()
    await rm(dir, { recursive: true, force: true })
  })

  test('no configuration: a failure that names the file and the command that creates one', async () => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      XDG_CONFIG_HOME: join(dir, 'empty'),
      CARGO_PKCS11_AGENT_SOCK: join(dir, 'none.sock'),
    }
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    const r = await runAgentCli(['doctor'], { env })
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(r.stdout, new RegExp(`fail  config: no configuration at ${join(dir, 'empty')}`))
    assert.match(r.stdout, /→ Run `cargo-pkcs11-agent setup`/)
  })

  test('a working agent on SoftHSM: token present, the bound key by its k3.pid, agent running', async () => {
    const r = await runAgentCli(['doctor', '--config', fixture.configPath, '--json'], {
      env: {
        ...fixture.agentEnv,
        ...fixture.env,
      },
    })
    const findings = JSON.parse(r.stdout) as { level: string; check: string; detail: string }[]
    const failed = findings.filter((f) => f.level === 'fail')
    assert.deepEqual(failed, [], r.stdout + r.stderr)
    assert.equal(r.code, 0)
    const find = (check: string, pattern: RegExp): boolean =>
      findings.some((f) => f.check === check && f.level === 'ok' && pattern.test(f.detail))
    assert.ok(find('token softhsm', /present/), r.stdout)
    assert.ok(
      find('registry local', new RegExp(`read key '${KNOWN_KEY.label}' ${k3Pid(KNOWN_KEY.k3Public)}`)),
      r.stdout,
    )
    assert.ok(find('agent', new RegExp(`running \\(pid ${String(fixture.process?.pid)}\\)`)), r.stdout)
  })

  test('a SoftHSM token directory that is gone: the failure says which and how to fix it', async () => {
    const conf = join(dir, 'softhsm2.conf')
    await writeFile(
      conf,
      `directories.tokendir = ${join(dir, 'no-such-tokens')}\nobjectstore.backend = file\n`,
    )
    const config = join(dir, 'broken.toml')
    await writeFile(
      config,
      [
        '[tokens.soft]',
        'module = "softhsm"',
        'label = "x"',
        'pin-source = "env"',
        'pin-env = "NO_PIN"',
        `module-env = { SOFTHSM2_CONF = "${conf}" }`,
      ].join('\n') + '\n',
    )
    const r = await runAgentCli(['doctor', '--config', config], {
      env: {
        ...process.env,
        CARGO_PKCS11_AGENT_SOCK: join(dir, 'none.sock'),
      },
    })
    assert.equal(r.code, 1, r.stdout + r.stderr)
    assert.match(
      r.stdout,
      new RegExp(`fail  token soft: SoftHSM token directory ${join(dir, 'no-such-tokens')} .*does not exist`),
    )
    assert.match(r.stdout, /→ Create it \(mkdir -p/)
  })
})

describe('install-service', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'service-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('--dry-run renders the hardened unit for this node, this agent and the config', async () => {
    const config = join(dir, 'agent.toml')
    const r = await runAgentCli(['install-service', '--dry-run', '--config', config], {
      env: {
        ...process.env,
        XDG_CONFIG_HOME: join(dir, 'xdg'),
      },
    })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(
      r.stdout.includes(
        `ExecStart="${process.execPath}" "${AGENT}" "run" "--foreground" "--config" "${config}"`,
      ),
      r.stdout,
    )
    assert.doesNotMatch(r.stdout, /@[A-Z]+@/)
    for (const hardening of [
      'NoNewPrivileges=true',
      'ProtectSystem=strict',
      'RestrictAddressFamilies=AF_UNIX AF_NETLINK',
      'UMask=0077',
    ]) {
      assert.ok(r.stdout.includes(hardening), hardening)
    }
  })

  test('installs the unit, re-installs it unchanged, refuses to replace an edited one without --force', async () => {
    const env = { ...process.env, XDG_CONFIG_HOME: join(dir, 'xdg') }
    const unit = join(dir, 'xdg', 'systemd', 'user', 'cargo-pkcs11-agent.service')
    assert.equal((await runAgentCli(['install-service', '--no-start'], { env })).code, 0)
    const first = await readFile(unit, 'utf8')
    assert.match(first, /^ExecStart=/m)
    assert.equal((await runAgentCli(['install-service', '--no-start'], { env })).code, 0)
    await writeFile(unit, first + '# local edit\n')
    const refused = await runAgentCli(['install-service', '--no-start'], { env })
    assert.equal(refused.code, 2, refused.stderr)
    assert.match(
      refused.stderr,
      /already exists with different contents\. Compare it with `install-service --dry-run`/,
    )
    assert.match(await readFile(unit, 'utf8'), /# local edit/)
    assert.equal((await runAgentCli(['install-service', '--no-start', '--force'], { env })).code, 0)
    assert.equal(await readFile(unit, 'utf8'), first)
  })
})
