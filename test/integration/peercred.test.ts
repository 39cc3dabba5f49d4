/**
 * The native addon against other real processes: peer credentials of a child process and of a
 * process of another uid (65534, started with setpriv; needs root, as CI runs), what PR_SET_DUMPABLE
 * changes for another process of the same user, and that the shim never maps the addon.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { pathToFileURL } from 'node:url'

import { packageFile } from '../../src/lib/package-files.js'
import { peerCredentials, type PeerCredentials } from '../../src/lib/peercred.js'
import { distPath, packageShimPath } from '../helpers/agent.js'

const NOBODY = 65534
const AS_NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups']
const ADDON = packageFile('native/peercred/build/Release/peercred.node')

let dir: string

before(() => {
  // A directory uid 65534 can reach: only for this test (the agent's own is 0700).
  dir = mkdtempSync(join(tmpdir(), 'peercred-it-'))
  chmodSync(dir, 0o777)
})
after(() => rmSync(dir, { recursive: true, force: true }))

function requireRoot(): void {
  assert.equal(
    process.getuid?.(),
    0,
    'this test starts processes as uid 65534 with setpriv, which needs root (CI runs as root)',
  )
}

/** Starts a server on a fresh socket (mode 0666 so another uid may connect) and records the
 * credentials of the first connection it accepts. */
async function serve(
  name: string,
): Promise<{ server: Server; path: string; peer: Promise<PeerCredentials> }> {
  const path = join(dir, name)
  const server = createServer()
  const peer = new Promise<PeerCredentials>((resolve, reject) => {
    server.once('connection', (socket) => {
      try {
        resolve(peerCredentials(socket))
      } catch (error) {
        reject(error as Error)
      }
      socket.end()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(path, resolve)
  })
  chmodSync(path, 0o666)
  return { server, path, peer }
}

/** The client: connects, prints its own pid, exits when the server hangs up. */
const CLIENT = `
const socket = require('node:net').createConnection(process.argv[1])
socket.on('connect', () => process.stdout.write(String(process.pid)))
socket.on('error', (e) => { process.stderr.write(String(e)); process.exit(2) })
socket.on('close', () => process.exit(0))
socket.resume()
`

function runClient(
  command: string,
  args: string[],
): Promise<{ pid: number; code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env['PATH'] },
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('exit', (code) => {
      if (child.pid === undefined) return reject(new Error(`${command} did not start`))
      assert.equal(Number(stdout), child.pid, `the client printed ${stdout}; stderr: ${stderr}`)
      resolve({ pid: child.pid, code, stderr })
    })
  })
}

describe('peer credentials of other processes', () => {
  test('a child process: the kernel names its pid, not ours', async () => {
    const { server, path, peer } = await serve('child.sock')
    try {
      const client = await runClient(process.execPath, ['-e', CLIENT, path])
      assert.equal(client.code, 0, client.stderr)
      const credentials = await peer
      assert.notEqual(credentials.pid, process.pid)
      assert.deepEqual(
        { ...credentials },
        { uid: process.getuid?.(), gid: process.getgid?.(), pid: client.pid },
      )
    } finally {
      server.close()
    }
  })

  test('a process of another uid (65534 via setpriv): the kernel names that uid, gid and pid', async () => {
    requireRoot()
    const { server, path, peer } = await serve('nobody.sock')
    try {
      // setpriv execs node, so the spawned pid is the client's pid.
      const client = await runClient('setpriv', [...AS_NOBODY, process.execPath, '-e', CLIENT, path])
      assert.equal(client.code, 0, `the uid-65534 client failed: ${client.stderr}`)
      assert.deepEqual({ ...(await peer) }, { uid: NOBODY, gid: NOBODY, pid: client.pid })
    } finally {
      server.close()
    }
  })
})

/**
 * A uid-65534 process that loads the addon (a copy in the shared temp dir, so the checkout need not
 * be readable by that uid), reports isDumpable(), and on "harden" calls setNonDumpable().
 */
const HARDENED_CHILD = `
const addon = require(process.argv[1])
const report = () => process.stdout.write(JSON.stringify({ pid: process.pid, dumpable: addon.isDumpable() }) + '\\n')
report()
process.stdin.setEncoding('utf8').on('data', (line) => {
  if (line.trim() === 'harden') { addon.setNonDumpable(); report() }
})
`

/** What another uid-65534 process gets reading /proc/<pid>/environ: the marker, or an errno name. */
function readEnvironAsNobody(pid: number, marker: string): string {
  const reader = `
try { process.stdout.write(require('node:fs').readFileSync(process.argv[1], 'latin1').includes(process.argv[2]) ? 'marker' : 'no marker') }
catch (e) { process.stdout.write(e.code) }`
  const result = spawnSync(
    'setpriv',
    [...AS_NOBODY, process.execPath, '-e', reader, `/proc/${pid}/environ`, marker],
    { encoding: 'utf8', env: { PATH: process.env['PATH'] } },
  )
  assert.equal(result.status, 0, `the uid-65534 reader failed: ${result.stderr}`)
  return result.stdout
}

describe('setNonDumpable', () => {
  test('another process of the same uid reads our /proc/<pid>/environ before, gets EACCES after', async () => {
    requireRoot()
    const addon = join(dir, 'peercred.node')
    copyFileSync(ADDON, addon)
    chmodSync(addon, 0o755)
    const marker = `PEERCRED_MARKER=${process.pid}-${Date.now()}`
    const child = spawn('setpriv', [...AS_NOBODY, process.execPath, '-e', HARDENED_CHILD, addon], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: process.env['PATH'], PEERCRED_MARKER: marker.split('=')[1] },
    })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    const lines: string[] = []
    let wake: (() => void) | undefined
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      lines.push(...d.split('\n').filter((l) => l !== ''))
      wake?.()
    })
    const nextReport = async (): Promise<{ pid: number; dumpable: boolean }> => {
      const deadline = Date.now() + 10_000
      while (lines.length === 0) {
        assert.ok(Date.now() < deadline && child.exitCode === null, `the hardened child stopped: ${stderr}`)
        await new Promise<void>((resolve) => {
          wake = resolve
          setTimeout(resolve, 100)
        })
      }
      return JSON.parse(lines.shift() as string) as { pid: number; dumpable: boolean }
    }
    try {
      const first = await nextReport()
      assert.equal(first.pid, child.pid)
      const environ = `/proc/${first.pid}/environ`
      assert.equal(first.dumpable, true)
      assert.equal(statSync(environ).uid, NOBODY)
      assert.equal(readEnvironAsNobody(first.pid, marker), 'marker')

      child.stdin.write('harden\n')
      const second = await nextReport()
      assert.equal(second.dumpable, false)
      // `man 5 proc`: the files of a non-dumpable process belong to root, and reading them needs
      // ptrace access (PTRACE_MODE_READ), which the kernel no longer grants to the same uid.
      assert.equal(statSync(environ).uid, 0)
      assert.equal(readEnvironAsNobody(first.pid, marker), 'EACCES')
    } finally {
      child.kill('SIGKILL')
    }
  })
})

describe('start-up path of the shim', () => {
  /** A preload that writes, at exit, whether the addon is mapped into the process (/proc/self/maps). */
  function preload(out: string): string {
    const path = join(dir, `maps-${Date.now()}.cjs`)
    writeFileSync(
      path,
      `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)},
        require('node:fs').readFileSync('/proc/self/maps', 'utf8').includes('peercred.node') ? 'mapped' : 'absent'))\n`,
    )
    return path
  }

  function run(args: string[], input: string): { mapped: string; stdout: string; stderr: string } {
    const out = join(dir, `mapped-${Date.now()}-${Math.random()}`)
    const result = spawnSync(process.execPath, ['--require', preload(out), ...args], {
      input,
      encoding: 'utf8',
      env: {
        PATH: process.env['PATH'],
        CARGO_PKCS11_AGENT_NO_AUTOSTART: '1',
        CARGO_PKCS11_AGENT_SOCK: join(dir, 'no-agent.sock'),
      },
    })
    return { mapped: readFileSync(out, 'utf8'), stdout: result.stdout, stderr: result.stderr }
  }

  test('a process that uses the wrapper maps the addon (the check below can see it)', () => {
    const wrapper = pathToFileURL(distPath('src', 'lib', 'peercred.js')).href
    const result = run(
      ['--input-type=module', '-e', `import(${JSON.stringify(wrapper)}).then((m) => m.isDumpable())`],
      '',
    )
    assert.equal(result.mapped, 'mapped', result.stderr)
  })

  for (const [build, shim] of [
    ['CommonJS', packageShimPath()],
    ['ESM', distPath('src', 'bin', 'cargo-credential-pkcs11.js')],
  ] as const) {
    test(`the ${build} shim answers a request without mapping the addon`, () => {
      const request =
        '{"v":1,"registry":{"index-url":"sparse+http://127.0.0.1:9/index/"},"kind":"frobnicate"}\n'
      const result = run([shim, '--cargo-plugin'], request)
      assert.match(result.stdout, /"Err"/, `the shim did not answer: ${result.stdout} ${result.stderr}`)
      assert.equal(result.mapped, 'absent')
    })
  }
})
