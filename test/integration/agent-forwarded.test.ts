/**
 * What a forwarded peer may not do, against the real agent process over its real socket
 * (docs/ssh-forwarding.md, "What forwarded requests may do"). The forwarder is this test's own
 * node binary under the file name `ssh`: the agent decides by the name of the peer's executable
 * (src/agent/requester.ts), so the raw client below, run by that binary, is a forwarded connection
 * exactly as the ssh client of `ssh -R` is. The same client run by plain node is the local control.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, linkSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, readAudit, startAgent, type AgentFixture } from '../helpers/agent.js'
import { KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38722/index/'
const known = { label: KNOWN_KEY.label, id: KNOWN_KEY.id }
const registry = { 'index-url': INDEX, name: 'work' }

/** One request (argv: socket, method, params as JSON); prints the response frame, answers nothing. */
const RAW_CLIENT = `
const s = require('node:net').createConnection(process.argv[2])
let buf = ''
s.on('connect', () => s.write(JSON.stringify({ v: 1, type: 'request', id: 1, method: process.argv[3], params: JSON.parse(process.argv[4]) }) + '\\n'))
s.setEncoding('utf8').on('data', (d) => {
  buf += d
  for (let i; (i = buf.indexOf('\\n')) >= 0; buf = buf.slice(i + 1)) {
    const f = JSON.parse(buf.slice(0, i))
    if (f.type === 'response') { process.stdout.write(JSON.stringify(f)); process.exit(0) }
  }
})
s.on('error', (e) => { process.stderr.write(String(e)); process.exit(2) })
`

interface Answer {
  pid: number
  result?: Record<string, unknown>
  error?: { code?: string; message?: string; remedy?: string }
}

describe('a forwarded peer may sign, and nothing else that acts on the agent’s host', () => {
  let dir: string
  let agent: AgentFixture
  let ssh: string
  let client: string

  const call = (bin: string, method: string, params: object): Answer => {
    const r = spawnSync(bin, [client, agent.socket, method, JSON.stringify(params)], {
      encoding: 'utf8',
      timeout: 20_000,
    })
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}\n${agent.log()}`)
    return { pid: r.pid, ...(JSON.parse(r.stdout) as Omit<Answer, 'pid'>) }
  }
  const forwarded = (method: string, params: object): Answer => call(ssh, method, params)
  const local = (method: string, params: object): Answer => call(process.execPath, method, params)
  const pinCached = (): boolean => {
    const tokens = local('status', {}).result?.['tokens'] as { name: string; pinCached: boolean }[]
    return tokens.find((t) => t.name === 'softhsm')?.pinCached === true
  }
  const refusedLine = async (method: string, pid: number): Promise<void> => {
    const line = new RegExp(`${method} refused: a forwarded connection via ssh pid ${pid}\\b`)
    for (let i = 0; i < 100 && !line.test(agent.log()); i++) await new Promise((r) => setTimeout(r, 20))
    assert.match(agent.log(), line)
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-forwarded-'))
    client = join(dir, 'raw-client.cjs')
    writeFileSync(client, RAW_CLIENT)
    ssh = join(dir, 'ssh')
    try {
      linkSync(realpathSync(process.execPath), ssh)
    } catch {
      copyFileSync(process.execPath, ssh) // another file system than node's
      chmodSync(ssh, 0o755)
    }
    agent = await startAgent({ registries: { work: { index: INDEX, readKey: known, confirm: 'none' } } })
  })

  after(async () => {
    await agent?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('a forwarded read is signed and audited as forwarded (the forwarder is recognised)', async () => {
    const read = forwarded('sign', {
      cargo: JSON.stringify(cargoGet(INDEX, 'read', { registryName: 'work' })),
      interactive: false,
    })
    const token = read.result?.['token']
    assert.equal(typeof token, 'string', JSON.stringify(read))
    await verifyToken(String(token), { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    const line = readAudit(agent.auditLog).at(-1)
    assert.equal(line?.['result'], 'signed')
    assert.deepEqual((line?.['forwarded'] as Record<string, unknown>)['via'], 'ssh')
    assert.equal((line?.['forwarded'] as Record<string, unknown>)['pid'], read.pid)
  })

  test('keygen and cargo login: FORWARDED_REFUSED, logged, and one denied audit line each naming the forwarder', async () => {
    const before = readAudit(agent.auditLog).length
    const keygen = forwarded('keygen', { token: 'softhsm', label: 'remote-made', force: true })
    assert.equal(keygen.error?.code, 'FORWARDED_REFUSED', JSON.stringify(keygen))
    assert.match(keygen.error?.remedy ?? '', /Run `cargo-pkcs11-agent keygen` on the agent's host/)
    await refusedLine('keygen', keygen.pid)
    // The registry as cargo (or whoever sends the line) names it is not what the audit line records.
    const login = forwarded('login', {
      cargo: JSON.stringify({ v: 1, registry: { ...registry, name: 'production' }, kind: 'login' }),
    })
    assert.equal(login.error?.code, 'FORWARDED_REFUSED', JSON.stringify(login))
    assert.match(login.error?.remedy ?? '', /Run `cargo login` on the agent's host/)
    await refusedLine('login', login.pid)

    const lines = readAudit(agent.auditLog).slice(before)
    assert.deepEqual(
      lines.map((l) => [
        l['operation'],
        l['result'],
        l['code'],
        (l['forwarded'] as Record<string, unknown>)?.['pid'],
      ]),
      [
        ['keygen', 'denied', 'FORWARDED_REFUSED', keygen.pid],
        ['login', 'denied', 'FORWARDED_REFUSED', login.pid],
      ],
      JSON.stringify(lines, null, 2),
    )
    for (const l of lines) assert.equal((l['forwarded'] as Record<string, unknown>)['via'], 'ssh')
    assert.equal(lines[0]?.['key'], 'softhsm/remote-made')
    assert.equal(lines[0]?.['replaced'], true)
    assert.deepEqual(lines[1]?.['registry'], { name: 'work', url: INDEX }, 'named as the config binds it')
    assert.match(String(lines[0]?.['reason']), /keygen is not available through a forwarded socket/)
    // Nothing was made: the label is still unknown to the token.
    const made = local('keygen', { token: 'softhsm', label: 'remote-made' })
    assert.equal(made.error, undefined, JSON.stringify(made))
    assert.equal(readAudit(agent.auditLog).at(-1)?.['result'], 'generated')
  })

  test('lock, release, reload and cargo logout: FORWARDED_REFUSED and logged; the held PIN stays', async () => {
    const read = local('sign', {
      cargo: JSON.stringify(cargoGet(INDEX, 'read', { registryName: 'work' })),
      interactive: false,
    })
    assert.equal(typeof read.result?.['token'], 'string', JSON.stringify(read))
    assert.ok(pinCached(), 'the signature left the PIN held')

    const remedies: Record<string, RegExp> = {
      lock: /Run `cargo-pkcs11-agent lock` on the agent's host/,
      release: /Run `cargo-pkcs11-agent release` on the agent's host/,
      reload: /Run `cargo-pkcs11-agent reload` on the agent's host/,
      logout: /Run `cargo logout` on the agent's host/,
    }
    for (const [method, remedy] of Object.entries(remedies)) {
      const params = method === 'logout' ? { cargo: JSON.stringify({ v: 1, registry, kind: 'logout' }) } : {}
      const answer = forwarded(method, params)
      assert.equal(answer.error?.code, 'FORWARDED_REFUSED', `${method}: ${JSON.stringify(answer)}`)
      assert.match(answer.error?.remedy ?? '', remedy)
      await refusedLine(method, answer.pid)
      assert.ok(pinCached(), `the PIN is still held after a forwarded ${method}`)
    }

    // The same requests from the agent's host do what they say.
    const logout = local('logout', { cargo: JSON.stringify({ v: 1, registry, kind: 'logout' }) })
    assert.equal(logout.result?.['forgotten'], 1, JSON.stringify(logout))
    assert.equal(pinCached(), false)
    assert.equal(typeof local('release', {}).result?.['released'], 'number')
    assert.equal(typeof local('lock', {}).result?.['forgotten'], 'number')
  })

  test('pubkey: FORWARDED_REFUSED (keys are shown for registration on the agent’s host only)', async () => {
    const answer = forwarded('pubkey', { registry: 'work' })
    assert.equal(answer.error?.code, 'FORWARDED_REFUSED', JSON.stringify(answer))
    assert.match(answer.error?.remedy ?? '', /Run `cargo-pkcs11-agent pubkey` on the agent's host/)
    assert.equal(JSON.stringify(answer).includes(KNOWN_KEY.k3Public), false)
    await refusedLine('pubkey', answer.pid)
    const mine = local('pubkey', { registry: 'work' })
    assert.ok(JSON.stringify(mine.result).includes(KNOWN_KEY.k3Public), JSON.stringify(mine))
  })
})
