/**
 * The verifying gateway (`cargo-pkcs11-agent gateway`, a real process) in front of two registries
 * that know only a bearer token: the fixture registry in bearer mode (the Web API and the index) and
 * a static sparse index served by Debian's nginx, which checks the bearer token itself. Real cargo,
 * shim and agent (SoftHSM) publish, yank, change owners and build through it; tokens minted here
 * play the attacker. Each upstream records what reached it, so "refused at the gateway" means the
 * upstream never saw the request; the upstream token must appear in no response and no log line.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, createHash } from 'node:crypto'
import {
  appendFileSync,
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { k3Public } from '../../src/keys/paserk.js'
import { encodePublishBody } from '../../src/registry/index.js'
import { MemorySigner } from '../../src/signer/memory.js'
import { buildToken } from '../../src/token/build.js'
import { startAgent, type AgentFixture } from '../helpers/agent.js'
import { waitFor } from '../helpers/wait.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import {
  cargoThroughAgent,
  createCargoSandbox,
  show,
  type CargoResult,
  type CargoSandbox,
} from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

const BIN = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))

type GatewayEvent = Record<string, unknown>

interface GatewayProcess {
  url: string
  indexUrl: string
  child: ChildProcess
  /** The JSON lines the gateway has written to stderr so far (whole lines only). */
  events(): GatewayEvent[]
  /**
   * The events once `done` holds for them. The gateway logs a request when it has answered it and
   * the line reaches us through a pipe, so it can arrive after the response that caused it.
   */
  eventsWhen(what: string, done: (events: GatewayEvent[]) => boolean): Promise<GatewayEvent[]>
  stderr(): string
  /** Stops the gateway; resolves when it has exited and all its output has been read. */
  stop(): Promise<void>
}

async function spawnGateway(args: string[]): Promise<GatewayProcess> {
  const child = spawn(process.execPath, [BIN, 'gateway', '--listen', '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const first = await new Promise<{ url: string; indexUrl: string }>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
      if (stdout.includes('\n'))
        resolve(JSON.parse(stdout.split('\n')[0]!) as { url: string; indexUrl: string })
    })
    child.on('exit', (code) => reject(new Error(`gateway exited ${code}: ${stderr}`)))
  })
  // The text after the last newline is a line still arriving: not parsed until it is whole.
  const events = (): GatewayEvent[] =>
    stderr
      .split('\n')
      .slice(0, -1)
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as GatewayEvent)
  return {
    ...first,
    child,
    stderr: () => stderr,
    events,
    eventsWhen: (what, done) =>
      waitFor(
        `the gateway to log ${what}`,
        () => {
          if (child.exitCode !== null || child.signalCode !== null)
            throw new Error(`the gateway exited while we waited for it to log ${what}:\n${stderr}`)
          return events()
        },
        done,
        { show: () => stderr },
      ),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      await closed
    },
  }
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** nginx as a child: a static sparse index (the fixture's state dir) that answers only to `token`. */
async function startNginx(
  dir: string,
  stateDir: string,
  token: string,
): Promise<{ url: string; accessLog: string; stop: () => Promise<void> }> {
  mkdirSync(join(dir, 'tmp'), { recursive: true })
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  writeFileSync(
    join(stateDir, 'index', 'config.json'),
    JSON.stringify({ dl: `${url}/dl`, api: url, 'auth-required': true }),
  )
  const accessLog = join(dir, 'access.log')
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(
    (t) => `  ${t}_temp_path ${join(dir, 'tmp', t)};`,
  )
  writeFileSync(
    join(dir, 'nginx.conf'),
    [
      // As root nginx would drop its workers to `nobody`, who cannot read the test's private temp dirs.
      ...(process.getuid?.() === 0 ? ['user root;'] : []),
      'worker_processes 1;',
      'daemon off;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} warn;`,
      'events { worker_connections 64; }',
      'http {',
      `  access_log ${accessLog};`,
      ...temp,
      '  default_type application/octet-stream;',
      '  server {',
      `    listen 127.0.0.1:${port};`,
      `    if ($http_authorization != "${token}") { return 401; }`,
      `    location /index/ { alias ${join(stateDir, 'index')}/; }`,
      `    location ~ ^/dl/([^/]+)/([^/]+)/download$ { alias ${join(stateDir, 'crates')}/$1/$2.crate; }`,
      '  }',
      '}',
      '',
    ].join('\n'),
  )
  const child = spawn('nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  await waitFor(
    `nginx on ${url} to refuse a request without the token`,
    async () => {
      if (child.exitCode !== null) throw new Error(`nginx exited: ${stderr}`)
      return fetch(`${url}/index/config.json`).then(
        (r) => r.status === 401,
        () => false,
      )
    },
    (refused) => refused,
    { show: () => stderr },
  )
  return {
    url,
    accessLog,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve()
        child.once('exit', () => resolve())
        child.kill('SIGQUIT')
      }),
  }
}

describe('gateway: RFC 3231 in front of bearer-only registries, with real cargo', () => {
  let dir: string
  let upstream: Registry
  let nginx: Awaited<ReturnType<typeof startNginx>>
  let gateway: GatewayProcess
  let staticGateway: GatewayProcess
  let agent: AgentFixture
  let cargo: CargoSandbox
  let keysFile: string
  const upstreamToken = `Bearer upstream-${randomBytes(16).toString('hex')}`
  const bot = MemorySigner.generate()
  /** Every response body and header the tests and cargo saw, to look for the upstream token. */
  const seen: string[] = []
  const run = async (sandbox: CargoSandbox, args: string[], cwd?: string): Promise<CargoResult> => {
    const result = await sandbox.cargo(args, cwd === undefined ? {} : { cwd })
    seen.push(result.stdout, result.stderr)
    return result
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hwtok-gateway-'))
    chmodSync(dir, 0o755)
    upstream = await startRegistry({ stateDir: join(dir, 'upstream'), bearerToken: upstreamToken })
    const tokenFile = join(dir, 'upstream-token')
    writeFileSync(tokenFile, `${upstreamToken}\n`, { mode: 0o600 })
    keysFile = join(dir, 'keys', 'registered')
    mkdirSync(join(dir, 'keys'))
    writeFileSync(keysFile, `# registered users\n${k3Public(bot.publicKey)} ci-bot\n`)
    gateway = await spawnGateway([
      '--upstream',
      upstream.url,
      '--keys',
      keysFile,
      '--upstream-token-file',
      tokenFile,
    ])
    nginx = await startNginx(join(dir, 'nginx'), upstream.stateDir, upstreamToken)
    // The second gateway takes the token from its environment instead of a file.
    staticGateway = await spawnGatewayWithEnv(nginx.url, keysFile, upstreamToken)
    agent = await startAgent({
      registries: { local: { index: gateway.indexUrl }, mirror: { index: staticGateway.indexUrl } },
    })
    const k3 = await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label })
    // Registering the agent's key: the first gateway sees the file change, the second gets SIGHUP.
    appendFileSync(keysFile, `${k3} alice\n`)
    staticGateway.child.kill('SIGHUP')
    for (const g of [gateway, staticGateway])
      await g.eventsWhen('the keys file reload', (events) =>
        events.some((e) => e['event'] === 'keys-reloaded' && e['keys'] === 2),
      )
    cargo = cargoThroughAgent(dir, gateway, agent)
  })

  async function spawnGatewayWithEnv(
    upstreamUrl: string,
    keys: string,
    token: string,
  ): Promise<GatewayProcess> {
    const config = join(dir, 'gateway.toml')
    writeFileSync(
      config,
      `upstream = "${upstreamUrl}"\nkeys-file = "${keys}"\nupstream-token-env = "GATEWAY_UPSTREAM_TOKEN"\nmax-age-seconds = 120\n`,
    )
    process.env['GATEWAY_UPSTREAM_TOKEN'] = token
    try {
      return await spawnGateway(['--config', config])
    } finally {
      delete process.env['GATEWAY_UPSTREAM_TOKEN']
    }
  }

  after(async () => {
    await agent?.stop()
    await gateway?.stop()
    await staticGateway?.stop()
    await nginx?.stop()
    await upstream?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  const upstreamSaw = (method: string, path: string) =>
    upstream.records().filter((r) => r.method === method && r.path === path)

  test('cargo publish, yank, unyank and owners pass through to the bearer-only upstream', async () => {
    for (const name of ['hwtok-alpha', 'hwtok-beta']) {
      const r = await run(cargo, ['publish', '--registry', 'local', '--no-verify'], cargo.crate(name))
      assert.equal(r.code, 0, show(r) + gateway.stderr())
    }
    assert.equal(upstream.index('hwtok-beta')[0]?.deps[0]?.package, 'hwtok-alpha')
    const published = upstreamSaw('PUT', '/api/v1/crates/new')
    assert.deepEqual(
      published.map((r) => [r.auth, r.status, r.crate?.name]),
      [
        ['accepted', 200, 'hwtok-alpha'],
        ['accepted', 200, 'hwtok-beta'],
      ],
    )
    // Only the gateway's bearer token ever reached the upstream: nothing was refused there.
    assert.deepEqual(
      upstream.records().filter((r) => r.auth !== 'accepted'),
      [],
    )

    const yank = await run(cargo, ['yank', '--registry', 'local', '--version', '0.1.0', 'hwtok-alpha'])
    assert.equal(yank.code, 0, show(yank))
    assert.equal(upstream.index('hwtok-alpha')[0]?.yanked, true)
    const unyank = await run(cargo, [
      'yank',
      '--undo',
      '--registry',
      'local',
      '--version',
      '0.1.0',
      'hwtok-alpha',
    ])
    assert.equal(unyank.code, 0, show(unyank))
    assert.equal(upstream.index('hwtok-alpha')[0]?.yanked, false)

    const add = await run(cargo, ['owner', '--registry', 'local', '--add', 'bob', 'hwtok-alpha'])
    assert.equal(add.code, 0, show(add))
    assert.deepEqual(upstream.owners('hwtok-alpha'), ['publisher', 'bob'])
    const list = await run(cargo, ['owner', '--registry', 'local', '--list', 'hwtok-alpha'])
    assert.equal(list.code, 0, show(list))
    assert.match(list.stdout, /bob/)
    const remove = await run(cargo, ['owner', '--registry', 'local', '--remove', 'bob', 'hwtok-alpha'])
    assert.equal(remove.code, 0, show(remove))
    assert.deepEqual(upstream.owners('hwtok-alpha'), ['publisher'])

    // The gateway logged who did each mutation, as the keys file names them.
    const isMutation = (e: GatewayEvent): boolean => e['outcome'] === 'forwarded' && e['operation'] !== 'read'
    const mutations = (
      await gateway.eventsWhen('the seven mutations', (events) => events.filter(isMutation).length >= 7)
    ).filter(isMutation)
    assert.deepEqual(
      mutations.map((e) => [e['operation'], e['user'], e['status']]),
      [
        ['publish', 'alice', 200],
        ['publish', 'alice', 200],
        ['yank', 'alice', 200],
        ['unyank', 'alice', 200],
        ['owners', 'alice', 200],
        ['owners', 'alice', 200],
        ['owners', 'alice', 200],
      ],
    )
  })

  test('an authenticated build through the gateway: index and downloads from the bearer-only upstream', async () => {
    const build = await run(cargo, ['build'], cargo.crate('hwtok-app'))
    assert.equal(build.code, 0, show(build) + gateway.stderr())
    assert.equal(upstreamSaw('GET', '/dl/hwtok-beta/0.1.0/download').at(-1)?.status, 200)
  })

  test('the same build through a second gateway in front of nginx serving a static sparse index', async () => {
    const direct = await fetch(`${nginx.url}/index/config.json`)
    assert.equal(direct.status, 401, 'nginx itself refuses requests without its bearer token')
    const mirror = createCargoSandbox({
      dir: join(dir, 'mirror-cargo'),
      indexUrl: staticGateway.indexUrl,
      credentialProvider: agent.shimPath,
      env: agent.env,
    })
    const before = readFileSync(nginx.accessLog, 'utf8').split('\n').length
    const build = await run(mirror, ['build'], mirror.crate('hwtok-app'))
    assert.equal(build.code, 0, show(build) + staticGateway.stderr())
    const paths = ['/index/config.json', '/index/hw/to/hwtok-beta', '/dl/hwtok-alpha/0.1.0/download']
    const ok = (l: string): boolean => /" 200 /.test(l)
    const servedPath = (lines: string[], path: string): boolean =>
      lines.some((l) => l.includes(`GET ${path} `) && ok(l))
    // nginx writes its access log line after it has sent the response, so it can come after cargo is done.
    const served = await waitFor(
      `nginx to log ${paths.join(', ')}`,
      () =>
        readFileSync(nginx.accessLog, 'utf8')
          .split('\n')
          .slice(before - 1),
      (lines) => paths.every((path) => servedPath(lines, path)),
      { show: (lines) => lines.join('\n') },
    )
    for (const path of paths)
      assert.ok(servedPath(served, path), `nginx served ${path}:\n${served.join('\n')}`)
    // Only the gateway has nginx's token, so each 200 nginx logged is a request the gateway forwarded.
    const forwarded = (events: GatewayEvent[]): GatewayEvent[] =>
      events.filter((e) => e['outcome'] === 'forwarded')
    const reads = forwarded(
      await staticGateway.eventsWhen(
        `a forwarded request for each of the ${served.filter(ok).length} nginx served`,
        (events) =>
          forwarded(events).length >= served.filter(ok).length &&
          paths.every((path) => forwarded(events).some((e) => e['path'] === path)),
      ),
    )
    assert.ok(reads.length >= 3 && reads.every((e) => e['operation'] === 'read' && e['user'] === 'alice'))
  })

  test('refused at the gateway, never forwarded: a replayed publish token, a read token for publish, an unknown key', async () => {
    const indexUrl = gateway.indexUrl
    const call = async (method: string, path: string, authorization?: string, body?: Buffer) => {
      const res = await fetch(`${gateway.url}${path}`, {
        method,
        headers: authorization === undefined ? {} : { authorization },
        ...(body === undefined ? {} : { body }),
      })
      const text = await res.text()
      seen.push(text, JSON.stringify([...res.headers]))
      return { status: res.status, text }
    }
    const detail = (text: string): string =>
      (JSON.parse(text) as { errors: { detail: string }[] }).errors[0]!.detail
    const crateFile = Buffer.from('a crate published by the CI bot')
    const body = encodePublishBody({ name: 'gw-bot', vers: '1.0.0', deps: [], features: {} }, crateFile)
    const cksum = createHash('sha256').update(crateFile).digest('hex')
    const publish = (
      await buildToken(bot, {
        indexUrl,
        operation: 'publish',
        crate: { name: 'gw-bot', vers: '1.0.0', cksum },
      })
    ).token
    const forwarded = (): number => upstreamSaw('PUT', '/api/v1/crates/new').length

    const first = await call('PUT', '/api/v1/crates/new', publish, body)
    assert.equal(first.status, 200, first.text)
    assert.equal(forwarded(), 3)
    const replay = await call('PUT', '/api/v1/crates/new', publish, body)
    assert.equal(replay.status, 401)
    assert.match(detail(replay.text), /^TOKEN_REPLAYED: /)

    const body2 = encodePublishBody({ name: 'gw-bot', vers: '1.0.1', deps: [], features: {} }, crateFile)
    const read = (await buildToken(bot, { indexUrl, operation: 'read' })).token
    const readAsPublish = await call('PUT', '/api/v1/crates/new', read, body2)
    assert.equal(readAsPublish.status, 401)
    assert.match(detail(readAsPublish.text), /^MUTATION_MISMATCH: /)

    const stranger = MemorySigner.generate()
    const strangerPublish = (
      await buildToken(stranger, {
        indexUrl,
        operation: 'publish',
        crate: { name: 'gw-bot', vers: '1.0.1', cksum },
      })
    ).token
    const unknown = await call('PUT', '/api/v1/crates/new', strangerPublish, body2)
    assert.equal(unknown.status, 401)
    assert.match(detail(unknown.text), /^KEY_ID_MISMATCH: /)
    const unknownRead = await call(
      'GET',
      '/index/config.json',
      (await buildToken(stranger, { indexUrl, operation: 'read' })).token,
    )
    assert.equal(unknownRead.status, 401)

    // Not a cargo registry request: refused, not forwarded with the gateway's credential.
    const other = await call('GET', '/me/../admin', read)
    assert.equal(other.status, 404)

    assert.equal(forwarded(), 3, 'only the first publish reached the upstream')
    assert.deepEqual(
      upstream.index('gw-bot').map((l) => l.vers),
      ['1.0.0'],
    )
    assert.equal(upstream.records().filter((r) => r.path.includes('admin')).length, 0)
    const codes = ['TOKEN_REPLAYED', 'MUTATION_MISMATCH', 'KEY_ID_MISMATCH']
    const isRefused = (e: GatewayEvent): boolean => e['outcome'] === 'refused' && e['status'] === 401
    const refused = (
      await gateway.eventsWhen(`the refusals ${codes.join(', ')}`, (events) =>
        codes.every((c) => events.some((e) => isRefused(e) && e['code'] === c)),
      )
    ).filter(isRefused)
    assert.ok(codes.every((c) => refused.some((e) => e['code'] === c)))

    const config = await call('GET', '/index/config.json', read)
    assert.deepEqual(JSON.parse(config.text), {
      dl: `${gateway.url}/dl`,
      api: gateway.url,
      'auth-required': true,
    })
  })

  test("the upstream's token appears in no response, no cargo output and no gateway log line", async () => {
    const secret = upstreamToken.slice('Bearer '.length)
    // Stopped, so every line they wrote has been read, the last requests' and their shutdown's too.
    await gateway.stop()
    await staticGateway.stop()
    assert.ok(seen.length > 10)
    for (const text of [...seen, gateway.stderr(), staticGateway.stderr()]) assert.ok(!text.includes(secret))
  })
})
