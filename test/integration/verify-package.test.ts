/**
 * The registry-side verifier as a registry operator gets it: `npm pack` of packages/verify, installed
 * from the tarball into an empty directory with no C/C++ compiler and no Node headers, then used only
 * through the installed package. A control shows that this environment does break a native addon
 * (pkcs11js), so the main check can fail.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { buildToken, k3Public, MemorySigner } from '../../src/index.js'

const run = promisify(execFile)
const REPO = fileURLToPath(new URL('../../../', import.meta.url))
const PACKAGE_DIR = join(REPO, 'packages', 'verify')
const INDEX_URL = 'sparse+http://127.0.0.1:9/index/'
const CKSUM = 'ab'.repeat(32)

/** No compiler (CC/CXX run `false`) and Node headers nowhere useful: a native build must fail. */
function hostileEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, CC: 'false', CXX: 'false' }
  for (const name of Object.keys(env)) if (/^npm_config_nodedir$/i.test(name)) delete env[name]
  env['npm_config_nodedir'] = join(tmpdir(), 'no-node-headers-here')
  return env
}

async function npm(args: string[], cwd: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run('npm', args, { cwd, env: hostileEnv(), timeout: 240_000 })
    return { code: 0, output: stdout + stderr }
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : -1, output: `${e.stdout ?? ''}${e.stderr ?? ''}` }
  }
}

/** Every file under `dir`, relative, for "nothing native was installed". */
function walk(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? walk(join(dir, entry.name), `${prefix}${entry.name}/`) : [`${prefix}${entry.name}`],
  )
}

/** Runs in the temp app: imports only `cargo-pkcs11-verify`, reads cases on stdin, prints outcomes. */
const CHECK_SCRIPT = `
import { readFileSync } from 'node:fs'
import { AgentError, VerifyError, VERIFY_CODES, k3Pid, verifyToken } from 'cargo-pkcs11-verify'
import { matchRoute } from 'cargo-pkcs11-verify/registry'
let input = ''
for await (const chunk of process.stdin) input += chunk
const out = { resolved: import.meta.resolve('cargo-pkcs11-verify'), codes: VERIFY_CODES.length, results: [] }
for (const { token, options } of JSON.parse(input)) {
  try {
    const verified = await verifyToken(token, options)
    out.results.push({ ok: true, claims: verified.claims, kip: verified.footer.kip, pid: k3Pid(options.publicKey) })
  } catch (error) {
    out.results.push({
      ok: false,
      code: error.code,
      verifyError: error instanceof VerifyError,
      agentError: error instanceof AgentError,
      remedy: error.remedy,
    })
  }
}
out.route = matchRoute('PUT', '/api/v1/crates/new')?.operation
const vectors = JSON.parse(readFileSync(new URL(import.meta.resolve('cargo-pkcs11-verify/vectors/rfc3231-tokens.json')), 'utf8'))
out.vectors = { total: vectors.tests.length, agreed: 0 }
for (const v of vectors.tests) {
  let outcome
  try {
    await verifyToken(v.token, { ...v.options, now: new Date(v.options.now) })
    outcome = 'valid'
  } catch (error) {
    outcome = error.code
  }
  if (outcome === (v.expect.valid ? 'valid' : v.expect.code)) out.vectors.agreed++
}
process.stdout.write(JSON.stringify(out))
`

describe('cargo-pkcs11-verify installs without native code and verifies real tokens', () => {
  let dir: string
  let tarball: string
  let packed: string[]

  before(async () => {
    assert.ok(
      existsSync(join(PACKAGE_DIR, 'dist', 'verify', 'index.js')),
      'packages/verify/dist is missing: run `npm run build` first',
    )
    dir = mkdtempSync(join(tmpdir(), 'verify-package-'))
    const pack = await npm(['pack', '--json', '--pack-destination', dir], PACKAGE_DIR)
    assert.equal(pack.code, 0, pack.output)
    const [info] = JSON.parse(pack.output.slice(pack.output.indexOf('['))) as [
      { filename: string; files: { path: string }[] },
    ]
    tarball = join(dir, info.filename)
    packed = info.files.map((file) => file.path)
  })

  after(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  it('the tarball holds only the verifier, the registry kit, token, keys, cargo and lib modules, and the vectors', () => {
    assert.ok(packed.includes('dist/verify/index.js'), packed.join(', '))
    assert.ok(packed.includes('dist/verify/index.d.ts'), packed.join(', '))
    assert.ok(packed.includes('dist/registry/index.js'), packed.join(', '))
    assert.ok(packed.includes('vectors/rfc3231-tokens.json'), packed.join(', '))
    const outside = packed.filter(
      (path) =>
        !/^dist\/(verify|registry|token|keys|cargo|lib)\/[\w-]+\.(js|d\.ts)$/.test(path) &&
        !/^vectors\/[\w-]+\.json$/.test(path) &&
        !/^docs\/[\w-]+\.md$/.test(path) &&
        !['package.json', 'README.md', 'LICENSE-MIT', 'LICENSE-APACHE'].includes(path),
    )
    assert.deepEqual(outside, [])
  })

  it('ships both licences, and every relative link in its markdown resolves inside the tarball', () => {
    assert.ok(packed.includes('LICENSE-MIT') && packed.includes('LICENSE-APACHE'), packed.join(', '))
    const markdown = packed.filter((path) => path.endsWith('.md'))
    assert.ok(markdown.includes('docs/verifying-tokens.md'), packed.join(', '))
    const broken: string[] = []
    for (const file of markdown) {
      const text = readFileSync(join(PACKAGE_DIR, file), 'utf8')
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (target === undefined || /^[a-z]+:/.test(target)) continue
        const resolved = posix.normalize(posix.join(posix.dirname(file), target))
        if (!packed.includes(resolved)) broken.push(`${file} -> ${target}`)
      }
    }
    assert.deepEqual(broken, [])
  })

  it('control: in the same environment a native addon (pkcs11js) fails to install', async () => {
    const control = join(dir, 'control')
    mkdirSync(control)
    writeFileSync(join(control, 'package.json'), '{ "name": "control", "private": true }\n')
    const result = await npm(
      ['install', '--prefer-offline', '--no-audit', '--no-fund', 'pkcs11js@2.1.7'],
      control,
    )
    assert.notEqual(result.code, 0, `pkcs11js installed without a compiler:\n${result.output}`)
  })

  it('installs from the tarball with paseto as its only dependency, and verifies and rejects tokens', async () => {
    const app = join(dir, 'app')
    mkdirSync(app)
    writeFileSync(
      join(app, 'package.json'),
      '{ "name": "registry-app", "private": true, "type": "module" }\n',
    )
    const install = await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], app)
    assert.equal(install.code, 0, install.output)
    const modules = join(app, 'node_modules')
    assert.deepEqual(
      readdirSync(modules)
        .filter((name) => !name.startsWith('.'))
        .sort(),
      ['cargo-pkcs11-verify', 'paseto'],
    )
    const native = walk(modules).filter((path) => /(^|\/)binding\.gyp$|\.node$/.test(path))
    assert.deepEqual(native, [])

    const signer = MemorySigner.generate()
    const publicKey = k3Public(signer.publicKey)
    const crate = { name: 'foo', vers: '1.2.3', cksum: CKSUM }
    const publish = await buildToken(signer, { indexUrl: INDEX_URL, operation: 'publish', crate })
    const read = await buildToken(signer, { indexUrl: INDEX_URL, operation: 'read' })
    const payload = publish.token.split('.')[2] ?? ''
    const at = Math.floor(payload.length / 2)
    const flipped = payload[at] === 'A' ? 'B' : 'A'
    const tampered = publish.token.replace(payload, payload.slice(0, at) + flipped + payload.slice(at + 1))
    assert.notEqual(tampered, publish.token)
    const publishOptions = { publicKey, url: INDEX_URL, operation: 'publish', crate }
    const cases = [
      { token: publish.token, options: publishOptions },
      { token: read.token, options: { publicKey, url: INDEX_URL, operation: 'read' } },
      { token: tampered, options: publishOptions },
      { token: publish.token, options: { ...publishOptions, crate: { ...crate, vers: '1.2.4' } } },
      {
        token: read.token,
        options: { publicKey, url: 'sparse+http://127.0.0.1:9/other/', operation: 'read' },
      },
      { token: publish.token, options: { ...publishOptions, crate: { name: 'foo', vers: '1.2.3' } } },
    ]
    writeFileSync(join(app, 'check.mjs'), CHECK_SCRIPT)
    const child = execFile(process.execPath, ['check.mjs'], { cwd: app, env: hostileEnv(), timeout: 60_000 })
    child.stdin?.end(JSON.stringify(cases))
    let stdout = ''
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    assert.equal(code, 0, stderr)
    const out = JSON.parse(stdout) as {
      resolved: string
      codes: number
      route: string
      vectors: { total: number; agreed: number }
      results: {
        ok: boolean
        code?: string
        verifyError?: boolean
        agentError?: boolean
        remedy?: string
        claims?: Record<string, unknown>
        kip?: string
        pid?: string
      }[]
    }
    assert.ok(
      fileURLToPath(out.resolved).startsWith(join(modules, 'cargo-pkcs11-verify') + '/'),
      `resolved ${out.resolved}, not the installed package`,
    )
    assert.ok(out.codes > 0)
    // The kit and the vectors ship in the package: the installed copy agrees with every vector.
    assert.equal(out.route, 'publish')
    assert.ok(out.vectors.total > 0)
    assert.equal(out.vectors.agreed, out.vectors.total)
    const [good, goodRead, bad, replayed, otherRegistry, badCall] = out.results
    assert.deepEqual(good?.claims, publish.claims)
    assert.equal(good?.kip, publish.kip)
    assert.equal(good?.pid, publish.kip)
    assert.deepEqual(goodRead?.claims, read.claims)
    for (const [result, code] of [
      [bad, 'SIGNATURE_INVALID'],
      [replayed, 'VERS_MISMATCH'],
      [otherRegistry, 'URL_MISMATCH'],
    ] as const) {
      assert.equal(result?.ok, false, `expected ${code}`)
      assert.equal(result.code, code)
      assert.equal(result.verifyError, true, `${code} is a VerifyError`)
      assert.ok((result.remedy ?? '').length > 0, `${code} carries a remedy`)
    }
    // A publish check without the expected cksum is the caller's mistake: an AgentError, not a VerifyError.
    assert.equal(badCall?.ok, false)
    assert.equal(badCall.code, 'USAGE')
    assert.equal(badCall.agentError, true)
    assert.equal(badCall.verifyError, false)
  })
})
