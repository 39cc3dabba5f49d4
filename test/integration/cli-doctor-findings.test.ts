/**
 * `doctor` against misconfigurations a new user makes, each injected into real files and checked by
 * the real CLI process: a PIN file others can read, a pinentry that is not installed, a headless agent
 * asked to prompt, `confirm = "touch"` on a key that attests no touch, cargo configs whose provider is gone or cannot start; and the shim answering its
 * hello as cargo starts it. `systemd-analyze verify` of the rendered unit and the plist parsed as XML.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { renderServiceFor, type ServiceValues } from '../../src/cli/install-service.js'
import { repoRoot } from '../helpers/softhsm.js'
import { cargoGet, runAgentCli, startAgent, type AgentFixture } from '../helpers/agent.js'

interface Finding {
  level: string
  check: string
  detail: string
  remedy?: string
}

async function doctor(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; findings: Finding[] }> {
  const r = await runAgentCli(['doctor', '--json', ...args], { env })
  return { code: r.code, findings: JSON.parse(r.stdout) as Finding[] }
}

function one(findings: Finding[], check: string, pattern: RegExp): Finding {
  const found = findings.find((f) => f.check === check && pattern.test(f.detail))
  assert.ok(
    found !== undefined,
    `no ${check} finding matching ${String(pattern)} in\n${JSON.stringify(findings, null, 2)}`,
  )
  return found
}

describe('doctor: findings with their fix', () => {
  let fixture: AgentFixture
  let dir: string
  let env: NodeJS.ProcessEnv

  before(async () => {
    fixture = await startAgent({ start: false })
    dir = await mkdtemp(join(tmpdir(), 'doctor-findings-'))
    await mkdir(join(dir, 'cargo'))
    env = {
      ...fixture.agentEnv,
      CARGO_HOME: join(dir, 'cargo'),
      CARGO_PKCS11_AGENT_SOCK: join(dir, 'none.sock'),
    }
  })

  after(async () => {
    await fixture.stop()
    await rm(dir, { recursive: true, force: true })
  })

  const tokenTable = (name: string, extra: string[]): string[] => [
    `[tokens.${name}]`,
    `module = ${JSON.stringify(fixture.softhsm.module)}`,
    `label = ${JSON.stringify(fixture.softhsm.label)}`,
    ...extra,
    `module-env = { SOFTHSM2_CONF = ${JSON.stringify(fixture.softhsm.env['SOFTHSM2_CONF'])} }`,
  ]

  test('a PIN file of mode 644, a missing pinentry, headless with confirm = "prompt": each fails with its fix', async () => {
    const pinFile = join(dir, 'pin')
    await writeFile(pinFile, fixture.softhsm.pin)
    await chmod(pinFile, 0o644)
    const config = join(dir, 'agent.toml')
    await writeFile(
      config,
      [
        '[agent]',
        'headless = true',
        `audit-log = ${JSON.stringify(join(dir, 'audit.jsonl'))}`,
        ...tokenTable('filepin', ['pin-source = "file"', `pin-file = ${JSON.stringify(pinFile)}`]),
        ...tokenTable('gui', ['pin-source = "pinentry"', 'pinentry-program = "pinentry-not-installed-here"']),
        '[registries.local]',
        'index = "sparse+http://127.0.0.1:38711/index/"',
        'read-key = { token = "filepin", label = "gen" }',
        'confirm = "prompt"',
      ].join('\n') + '\n',
    )
    const { code, findings } = await doctor(['--config', config], env)
    assert.equal(code, 1)
    const pin = one(findings, 'token filepin', /PIN file .* has mode 644/)
    assert.equal(pin.level, 'fail')
    assert.equal(pin.remedy, `chmod 600 ${pinFile}`)
    const pinentry = one(findings, 'token gui', /pinentry-not-installed-here is not on PATH/)
    assert.equal(pinentry.level, 'fail')
    assert.match(pinentry.remedy ?? '', /Install a pinentry/)
    const headless = one(findings, 'registry local', /confirm = "prompt" on a headless agent/)
    assert.equal(headless.level, 'fail')
    // A SoftHSM key attests no touch: confirm = "touch" only with a key that has a touch policy.
    assert.match(
      headless.remedy ?? '',
      /confirm = "none" \(CI\).*a mutation key with a touch policy and confirm = "touch"/,
    )

    // Fixed, the same findings are gone.
    await chmod(pinFile, 0o600)
    const fixed = await doctor(['--config', config], env)
    assert.ok(
      !fixed.findings.some((f) => f.check === 'token filepin' && /PIN file/.test(f.detail)),
      JSON.stringify(fixed.findings),
    )

    // confirm unset on a SoftHSM key (no touch policy): the default "prompt" applies, and fails the same way.
    await writeFile(config, (await readFile(config, 'utf8')).replace('confirm = "prompt"\n', ''))
    const unset = await doctor(['--config', config], env)
    const byDefault = one(
      unset.findings,
      'registry local',
      /confirm = "prompt" \(the default\) on a headless agent/,
    )
    assert.equal(byDefault.level, 'fail')
    assert.ok(
      unset.findings.some(
        (f) =>
          f.check === 'registry local' &&
          f.detail === "confirm prompt — default, key 'gen' shows no touch policy",
      ),
      JSON.stringify(unset.findings, null, 2),
    )
  })

  test('confirm = "touch" on the SoftHSM key (no touch policy to attest) warns, naming both remedies', async () => {
    const config = join(dir, 'touch.toml')
    await writeFile(
      config,
      [
        '[agent]',
        `audit-log = ${JSON.stringify(join(dir, 'audit.jsonl'))}`,
        ...tokenTable('soft', ['pin-source = "none"']),
        '[registries.local]',
        'index = "sparse+http://127.0.0.1:38711/index/"',
        'read-key = { token = "soft", label = "gen" }',
        'confirm = "touch"',
      ].join('\n') + '\n',
    )
    const { findings } = await doctor(['--config', config], env)
    const touch = one(
      findings,
      'registry local',
      /^registry local: confirm = "touch" but key 'gen' shows no touch policy: the agent cannot check that the device asks for a touch/,
    )
    assert.equal(touch.level, 'warn')
    assert.match(touch.remedy ?? '', /key with a touch policy.*confirm = "prompt" in \[registries\.local\]/)
    // With confirm = "prompt" there is nothing to warn about.
    await writeFile(
      config,
      (await readFile(config, 'utf8')).replace('confirm = "touch"', 'confirm = "prompt"'),
    )
    const fixed = await doctor(['--config', config], env)
    assert.ok(
      fixed.findings.some(
        (f) =>
          f.check === 'registry local' &&
          f.level === 'ok' &&
          f.detail === "confirm prompt — set in the config, key 'gen' shows no touch policy",
      ),
      JSON.stringify(fixed.findings, null, 2),
    )
  })

  test('cargo configs: a provider path that is gone, one that cannot start, and the shim answering its hello', async () => {
    const noNode = join(dir, 'bin', 'cargo-credential-pkcs11')
    await mkdir(join(dir, 'bin'))
    await writeFile(noNode, '#!/nonexistent/node\n')
    await chmod(noNode, 0o755)
    const cargoConfig = [
      '# a comment the user wrote',
      '[registries.gone]',
      'index = "sparse+http://127.0.0.1:38712/index/"',
      `credential-provider = [${JSON.stringify(join(dir, 'old-prefix', 'lib', 'node_modules', 'cargo-credential-pkcs11'))}]`,
      '[registries.broken]',
      'index = "sparse+http://127.0.0.1:38713/index/"',
      `credential-provider = ${JSON.stringify(noNode)}`,
      '[registries.good]',
      'index = "sparse+http://127.0.0.1:38714/index/"',
      `credential-provider = [${JSON.stringify(fixture.shimPath)}, "--no-autostart"]`,
    ].join('\n')
    await writeFile(join(dir, 'cargo', 'config.toml'), cargoConfig + '\n')
    const { code, findings } = await doctor(['--config', fixture.configPath], env)
    assert.equal(code, 1)
    const gone = one(findings, 'cargo registries.gone', /does not exist or is not executable/)
    assert.equal(gone.level, 'fail')
    assert.match(gone.remedy ?? '', /setup --write-cargo-config/)
    const broken = one(findings, 'cargo registries.broken', /cannot start as cargo runs it/)
    assert.equal(broken.level, 'fail')
    const good = one(findings, 'cargo registries.good', /answers \(credential protocol v1\)/)
    assert.equal(good.level, 'ok')
    // doctor reads cargo's config and never writes it.
    assert.equal(await readFile(join(dir, 'cargo', 'config.toml'), 'utf8'), cargoConfig + '\n')
  })

  test('no provider bound yet: the shim shipped with this installation answers its hello', async () => {
    await writeFile(join(dir, 'cargo', 'config.toml'), '')
    const { findings } = await doctor(['--config', fixture.configPath], env)
    assert.equal(one(findings, 'shim', /answers/).level, 'ok')
    assert.equal(one(findings, 'native binding', /pkcs11js loaded/).level, 'ok')
  })
})

describe('service files as their managers read them', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'service files %i $HOME '))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const values = (over: Partial<ServiceValues>): ServiceValues => ({
    node: process.execPath,
    agent: join(dir, 'agent.js'),
    config: join(dir, 'config "quoted" & <odd>.toml'),
    log: join(dir, 'agent.log'),
    docs: join(repoRoot(), 'README.md'),
    stateDir: join(dir, 'state %h'),
    dataDir: join(dir, 'data'),
    extraWritable: [],
    network: false,
    path: '/usr/bin:/bin',
    ...over,
  })

  test('systemd-analyze verify accepts the unit with spaces, % and $ in every path, and fails the unescaped one', async () => {
    // A node at a path with a space and a %: if ExecStart were unquoted or % unescaped, systemd would
    // look for another program and verify would fail.
    const node = join(dir, 'node bin %i', 'node')
    await mkdir(join(dir, 'node bin %i'))
    await writeFile(node, '#!/bin/sh\n')
    await chmod(node, 0o755)
    const template = await readFile(
      join(repoRoot(), 'native-config/service/cargo-pkcs11-agent.service'),
      'utf8',
    )
    const unit = renderServiceFor('linux', template, values({ node }))
    const runtime = join(dir, 'runtime')
    await mkdir(runtime, { mode: 0o700 })
    const verify = (text: string, name: string): ReturnType<typeof spawnSync> => {
      const sub = join(dir, name)
      spawnSync('mkdir', ['-p', sub])
      const path = join(sub, 'cargo-pkcs11-agent.service')
      spawnSync('sh', ['-c', 'cat > "$1"', 'sh', path], { input: text })
      return spawnSync('systemd-analyze', ['verify', '--user', path], {
        encoding: 'utf8',
        env: { ...process.env, XDG_RUNTIME_DIR: runtime },
      })
    }
    const ok = verify(unit, 'good')
    assert.equal(ok.status, 0, `${String(ok.stderr)}\n${unit}`)
    assert.equal(String(ok.stderr).trim(), '', unit)
    // The XDG state and data directories, as this user has them, each quoted with % doubled.
    const word = (path: string): string => `"-${path.replace(/%/g, '%%')}"`
    assert.ok(
      unit.includes(`ReadWritePaths=${word(join(dir, 'state %h'))} ${word(join(dir, 'data'))} %t\n`),
      unit,
    )
    assert.match(unit, /^RestrictAddressFamilies=AF_UNIX AF_NETLINK$/m)
    const unescaped = unit.replace(/%%/g, '%')
    const bad = verify(unescaped, 'bad')
    assert.notEqual(bad.status, 0, 'systemd-analyze accepted an unescaped % in ExecStart')
    assert.match(
      renderServiceFor('linux', template, values({ node, network: true })),
      /^RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6$/m,
    )
  })

  test('the launchd plist parses as XML and gives launchd the exact paths and a PATH', async () => {
    const template = await readFile(
      join(repoRoot(), 'native-config/service/dev.cargo-pkcs11-agent.plist'),
      'utf8',
    )
    const v = values({})
    const plist = renderServiceFor('darwin', template, v)
    // Python's plistlib: an XML parser that also checks the plist structure.
    const parsed = spawnSync(
      'python3',
      ['-c', 'import plistlib,sys,json; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))'],
      { input: plist, encoding: 'utf8' },
    )
    assert.equal(parsed.status, 0, `${parsed.stderr}\n${plist}`)
    const doc = JSON.parse(parsed.stdout) as {
      ProgramArguments: string[]
      EnvironmentVariables: Record<string, string>
      StandardErrorPath: string
    }
    assert.deepEqual(doc.ProgramArguments, [v.node, v.agent, 'run', '--foreground', '--config', v.config])
    assert.equal(doc.EnvironmentVariables['PATH'], '/usr/bin:/bin')
    assert.equal(doc.StandardErrorPath, v.log)
  })
})

describe('a token whose label is mistyped', () => {
  test('the agent (through the shim) and doctor give the same remedy: check the label with list, or insert it', async () => {
    const index = 'sparse+http://127.0.0.1:38712/index/'
    const agent = await startAgent({
      registries: { local: { index } },
      tokens: { softhsm: { label: 'carg' } },
    })
    try {
      const r = await agent.runShim(cargoGet(index, 'read'))
      const err = (JSON.parse(r.lines[1] ?? '{}') as { Err?: { message?: string } }).Err
      assert.ok(err !== undefined, r.stdout + r.stderr)
      const { findings } = await doctor(['--config', agent.configPath], {
        ...agent.agentEnv,
        CARGO_PKCS11_AGENT_SOCK: join(agent.dir, 'none.sock'),
      })
      const absent = one(findings, 'token softhsm', /token 'carg' via .* is not present/)
      assert.equal(absent.level, 'fail')
      const remedy = absent.remedy ?? ''
      assert.match(
        remedy,
        new RegExp(
          `^Check its label/serial in the config \\(\`cargo-pkcs11-agent list --module ${agent.softhsm.module}\` shows the tokens there\\), or insert token 'carg'; the agent picks it up without a restart; a token that exists but is not found: set the SOFTHSM2_CONF it was made with in the token's module-env`,
        ),
      )
      assert.ok(r.lines[1]?.includes(remedy), `the agent said: ${r.lines[1]}`)
    } finally {
      await agent.stop()
    }
  })
})
