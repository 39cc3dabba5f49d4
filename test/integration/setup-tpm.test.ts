/**
 * `setup --module tpm2` on a software TPM (swtpm + tpm2-pkcs11): the TCTI and the object store are
 * saved in the token's module-env (the log level and the PIN variable are not), so an agent started
 * without them signs; a re-run without --kind (the module by path) reuses [tokens.tpm] instead of
 * adding a [tokens.device] for the same token.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parseConfig } from '../../src/config/load.js'
import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, distPath, runAgentCli, runShim, shimBinPath, waitForSocket } from '../helpers/agent.js'
import { startSoftwareTpm, type SoftwareTpm } from '../helpers/swtpm.js'

const INDEX = 'sparse+http://127.0.0.1:38672/index/'
const PIN = '314159'
const LABEL = 'setup-tpm'

describe('setup --module tpm2 on swtpm', () => {
  let dir: string
  let tpm: SoftwareTpm
  let env: NodeJS.ProcessEnv
  const configPath = (): string => join(dir, 'config', 'cargo-pkcs11-agent', 'config.toml')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'setup-tpm-'))
    tpm = await startSoftwareTpm({
      label: LABEL,
      pin: PIN,
      soPin: '27182818',
      key: { label: 'cargo', id: '01' },
    })
    env = {
      ...process.env,
      ...tpm.env,
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_STATE_HOME: join(dir, 'state'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      CARGO_HOME: join(dir, 'cargo-home'),
      CARGO_PKCS11_AGENT_SOCK: join(dir, 'run', 'agent.sock'),
      SETUP_TPM_PIN: PIN,
    }
    delete env['CARGO_PKCS11_AGENT_CONFIG']
    delete env['CI']
  })
  after(async () => {
    await tpm?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  const flags = ['--token-label', LABEL, '--pin-source', 'env', '--pin-env', 'SETUP_TPM_PIN']
  let k3: string

  test('the TCTI and the store go into module-env, the log level and the PIN variable do not', async () => {
    const r = await runAgentCli(
      ['setup', '--module', 'tpm2', ...flags, '--kind', 'tpm', '--registry', 'local', '--index', INDEX],
      { env, detached: true, timeoutMs: 120_000 },
    )
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /key 'cargo' \(id 01\) on token tpm: reused/)
    k3 = /k3\.public\.[A-Za-z0-9_-]{66}/.exec(r.stdout)?.[0] ?? ''
    const text = await readFile(configPath(), 'utf8')
    assert.deepEqual(parseConfig(text, configPath(), {}).tokens['tpm']?.moduleEnv, {
      TPM2_PKCS11_TCTI: tpm.env['TPM2_PKCS11_TCTI'],
      TPM2_PKCS11_STORE: tpm.env['TPM2_PKCS11_STORE'],
    })
    assert.ok(!text.includes(PIN), 'no PIN in the config')
  })

  test('a re-run without --kind, the module by path, reuses [tokens.tpm]: no [tokens.device]', async () => {
    const before = await readFile(configPath(), 'utf8')
    const r = await runAgentCli(['setup', '--module', tpm.module, ...flags], {
      env,
      detached: true,
      timeoutMs: 120_000,
    })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /on token tpm: reused/)
    assert.ok(r.stdout.includes(k3), 'the same key')
    const text = await readFile(configPath(), 'utf8')
    assert.equal(text, before, 'the config is unchanged')
    assert.deepEqual(Object.keys(parseConfig(text, configPath(), {}).tokens), ['tpm'])
  })

  test('an agent started without the TPM variables reaches the TPM through module-env and signs', async () => {
    const agentEnv = { ...env }
    delete agentEnv['TPM2_PKCS11_TCTI']
    delete agentEnv['TPM2_PKCS11_STORE']
    const child = spawn(
      process.execPath,
      [distPath('src', 'bin', 'cargo-pkcs11-agent.cjs'), 'run', '--foreground'],
      {
        env: agentEnv,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d))
    try {
      await waitForSocket(String(env['CARGO_PKCS11_AGENT_SOCK']), child, () => output, 60_000)
      const r = await runShim(shimBinPath(), cargoGet(INDEX, 'read'), {
        env: { ...agentEnv, CARGO_PKCS11_AGENT_NO_AUTOSTART: '1' },
        timeoutMs: 60_000,
      })
      const ok = JSON.parse(String(r.lines[1])) as { Ok?: { token: string } }
      assert.ok(ok.Ok !== undefined, `${r.stdout} ${r.stderr} ${output}`)
      await verifyToken(ok.Ok.token, { publicKey: k3, url: INDEX, operation: 'read' })
    } finally {
      const exited = new Promise((res) => child.once('exit', res))
      child.kill('SIGTERM')
      await exited
    }
  })
})
