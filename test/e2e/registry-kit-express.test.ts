/**
 * The registry kit (src/registry, docs/registry-kit.md) as an operator would use it: a small express
 * app that mounts `cargoAuthMiddleware` and implements storage only. Real cargo publishes and yanks
 * through it with the real shim and agent (SoftHSM); tokens minted here show what only a hostile
 * client sends: a replayed mutation token, an unknown key, no token at all.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import type { Server } from 'node:http'
import { mkdtempSync, rmSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import express from 'express'

import { k3Pid, k3Public } from '../../src/keys/paserk.js'
import {
  cargoAuthMiddleware,
  cargoAuthOf,
  CargoAuth,
  encodePublishBody,
  type RegisteredKey,
} from '../../src/registry/index.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken } from '../../src/token/build.js'
import { startAgent, type AgentFixture } from '../helpers/agent.js'
import { cargoThroughAgent, show, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

interface Line {
  name: string
  vers: string
  deps: unknown[]
  cksum: string
  features: Record<string, string[]>
  yanked: boolean
}

/** What an operator writes: storage and cargo's JSON shapes; every token check is the kit's. */
function registryApp(keys: Map<string, RegisteredKey>) {
  const crates = new Map<string, { lines: Line[]; files: Map<string, Buffer>; publishedBy: string[] }>()
  const app = express()
  let base = ''
  const state = {
    crates,
    auth: undefined as CargoAuth | undefined,
    listen: async (): Promise<Server> => {
      const server = await new Promise<Server>((resolve) => {
        const s = app.listen(0, '127.0.0.1', () => resolve(s))
      })
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
      state.auth = new CargoAuth({
        url: `sparse+${base}/index/`,
        resolveKey: (kip) => keys.get(kip),
        loginUrl: `${base}/me`,
        maxAgeSeconds: 120,
        strictLowS: true,
      })
      return server
    },
  }
  app.get('/health', (_req, res) => void res.send('ok'))
  app.use((req, res, next) => cargoAuthMiddleware(state.auth!)(req, res, next))
  app.get(
    '/index/config.json',
    (_req, res) => void res.json({ dl: `${base}/dl`, api: base, 'auth-required': true }),
  )
  app.get('/index/*path', (req, res) => {
    const entry = crates.get(cargoAuthOf(req).route.crate.name!.toLowerCase())
    if (entry === undefined) return void res.status(404).send('not found\n')
    res.type('text/plain').send(entry.lines.map((l) => JSON.stringify(l) + '\n').join(''))
  })
  app.get('/dl/:name/:vers/download', (req, res) => {
    const file = crates.get(String(req.params['name']))?.files.get(String(req.params['vers']))
    if (file === undefined) return void res.status(404).json({ errors: [{ detail: 'no such version' }] })
    res.type('application/octet-stream').send(file)
  })
  app.put('/api/v1/crates/new', (req, res) => {
    const { publish, token } = cargoAuthOf(req)
    const { name, vers, cksum } = publish!.crate
    const entry = crates.get(name) ?? {
      lines: [] as Line[],
      files: new Map<string, Buffer>(),
      publishedBy: [] as string[],
    }
    if (entry.files.has(vers))
      return void res.status(400).json({ errors: [{ detail: `${name}@${vers} exists` }] })
    entry.lines.push({ name, vers, deps: [], cksum, features: {}, yanked: false })
    entry.files.set(vers, Buffer.from(publish!.crateFile))
    entry.publishedBy.push(token?.user ?? '?')
    crates.set(name, entry)
    res.json({ warnings: { invalid_categories: [], invalid_badges: [], other: [] } })
  })
  app.delete('/api/v1/crates/:name/:vers/yank', (req, res) => {
    const line = crates.get(String(req.params['name']))?.lines.find((l) => l.vers === req.params['vers'])
    if (line === undefined) return void res.status(404).json({ errors: [{ detail: 'no such version' }] })
    line.yanked = true
    res.json({ ok: true })
  })
  app.put('/api/v1/crates/:name/:vers/unyank', (req, res) => {
    const line = crates.get(String(req.params['name']))?.lines.find((l) => l.vers === req.params['vers'])
    if (line === undefined) return void res.status(404).json({ errors: [{ detail: 'no such version' }] })
    line.yanked = false
    res.json({ ok: true })
  })
  return state
}

describe('the registry kit in an express app, with real cargo', () => {
  let dir: string
  let server: Server
  let agent: AgentFixture
  let cargo: CargoSandbox
  let base: string
  const keys = new Map<string, RegisteredKey>()
  const bot = MemorySigner.generate()
  const registry = registryApp(keys)

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-kit-'))
    server = await registry.listen()
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const indexUrl = `sparse+${base}/index/`
    agent = await startAgent({ registries: { local: { index: indexUrl, tokenMaxAgeSeconds: 120 } } })
    const k3 = await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label })
    keys.set(k3Pid(k3), { publicKey: k3, user: 'alice' })
    keys.set(k3Pid(bot.publicKey), { publicKey: k3Public(bot.publicKey), user: 'ci-bot' })
    cargo = cargoThroughAgent(dir, { indexUrl }, agent)
  })

  after(async () => {
    await agent?.stop()
    server?.closeAllConnections()
    await new Promise((resolve) => server?.close(resolve))
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  test('cargo publish and yank pass the kit; the app sees the verified user and the upload', async () => {
    const publish = await cargo.cargo(['publish', '--registry', 'local', '--no-verify'], {
      cwd: cargo.crate('hwtok-alpha'),
    })
    assert.equal(publish.code, 0, show(publish) + agent.log())
    const entry = registry.crates.get('hwtok-alpha')
    assert.ok(entry !== undefined)
    assert.deepEqual(entry.publishedBy, ['alice'])
    const [line] = entry.lines
    assert.equal(line?.cksum, createHash('sha256').update(entry.files.get('0.1.0')!).digest('hex'))
    const yank = await cargo.cargo(['yank', '--registry', 'local', '--version', '0.1.0', 'hwtok-alpha'])
    assert.equal(yank.code, 0, show(yank))
    assert.equal(entry.lines[0]?.yanked, true)
    // cargo signed one publish and one yank; each was accepted once, so the store holds both.
    assert.equal(registry.auth?.singleUse?.size, 2)
  })

  test('refusals: no token, unknown key, a replayed mutation token, a token for another operation', async () => {
    const indexUrl = `sparse+${base}/index/`
    const call = async (method: string, path: string, authorization?: string, body?: Buffer) => {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: authorization === undefined ? {} : { authorization },
        ...(body === undefined ? {} : { body }),
      })
      return { status: res.status, challenge: res.headers.get('www-authenticate'), text: await res.text() }
    }
    const detail = (text: string): string =>
      (JSON.parse(text) as { errors: { detail: string }[] }).errors[0]!.detail

    const missing = await call('GET', '/index/config.json')
    assert.equal(missing.status, 401)
    assert.equal(missing.challenge, `Cargo login_url="${base}/me"`)
    assert.match(detail(missing.text), /^TOKEN_MISSING: /)

    const stranger = (await buildToken(MemorySigner.generate(), { indexUrl, operation: 'read' })).token
    const unknown = await call('GET', '/index/config.json', stranger)
    assert.equal(unknown.status, 401)
    assert.match(detail(unknown.text), /^KEY_ID_MISMATCH: /)

    const unyank = (
      await buildToken(bot, { indexUrl, operation: 'unyank', crate: { name: 'hwtok-alpha', vers: '0.1.0' } })
    ).token
    assert.equal((await call('PUT', '/api/v1/crates/hwtok-alpha/0.1.0/unyank', unyank)).status, 200)
    assert.equal(registry.crates.get('hwtok-alpha')?.lines[0]?.yanked, false)
    const replay = await call('PUT', '/api/v1/crates/hwtok-alpha/0.1.0/unyank', unyank)
    assert.equal(replay.status, 401)
    assert.match(detail(replay.text), /^TOKEN_REPLAYED: /)

    const crateFile = Buffer.from('bytes of a crate')
    const body = encodePublishBody({ name: 'kit-bot', vers: '1.0.0' }, crateFile)
    const read = (await buildToken(bot, { indexUrl, operation: 'read' })).token
    const asPublish = await call('PUT', '/api/v1/crates/new', read, body)
    assert.equal(asPublish.status, 401)
    assert.match(detail(asPublish.text), /^MUTATION_MISMATCH: /)
    assert.equal(registry.crates.has('kit-bot'), false)
    const cksum = createHash('sha256').update(crateFile).digest('hex')
    const good = (
      await buildToken(bot, {
        indexUrl,
        operation: 'publish',
        crate: { name: 'kit-bot', vers: '1.0.0', cksum },
      })
    ).token
    assert.equal((await call('PUT', '/api/v1/crates/new', good, body)).status, 200)
    assert.deepEqual(registry.crates.get('kit-bot')?.publishedBy, ['ci-bot'])

    // Routes that are not cargo's are the app's own: the middleware lets them through untouched.
    assert.equal((await call('GET', '/health')).text, 'ok')
  })
})
