/**
 * The PIN prompt and the confirmation on the user's terminal. cargo gives the shim pipes, not a tty
 * (docs/cargo-protocol.md §1.1); the shim opens /dev/tty itself for the PIN, and the agent opens the
 * same terminal (the shim's controlling tty, as the kernel reports it) for the yes/no, which never
 * travels over the socket (docs/design.md §4). util-linux `script` gives the shim a real pseudo
 * terminal as its controlling tty while stdin/stdout stay redirected files, exactly like under cargo.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { verifyToken } from '../../src/verify/verify.js'
import { cargoGet, startAgent, type AgentFixture } from '../helpers/agent.js'
import { createSoftHsmToken, KNOWN_KEY } from '../helpers/softhsm.js'

const INDEX = 'sparse+http://127.0.0.1:38700/index/'
const CKSUM = 'b'.repeat(64)

function quote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`
}

/** The parent of `pid` from /proc/<pid>/stat (field 4, after the parenthesised command name). */
function parentOf(pid: string): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]
  } catch {
    return undefined
  }
}

/** How many descriptors the shim running under `script` (pid `scriptPid`) holds open on /dev/tty. */
function shimTtyDescriptors(scriptPid: number, shimPath: string): number {
  const shim = readdirSync('/proc').find((pid) => {
    let argv: string[]
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    } catch {
      return false
    }
    if (argv[0] !== process.execPath || argv[1] !== shimPath) return false
    for (let up = parentOf(pid); up !== undefined && up !== '0'; up = parentOf(up))
      if (up === String(scriptPid)) return true
    return false
  })
  assert.ok(shim !== undefined, 'the shim process under script')
  return readdirSync(`/proc/${shim}/fd`).filter((fd) => {
    try {
      return readlinkSync(`/proc/${shim}/fd/${fd}`) === '/dev/tty'
    } catch {
      return false
    }
  }).length
}

/**
 * Runs the shim on a pty. `answers` are typed in order, each after its prompt (a regex) appeared on
 * the terminal, `look` (given the pid of `script`) called just before. Resolves to the protocol
 * output (stdout file) and everything the terminal showed.
 */
async function onTerminal(
  agent: AgentFixture,
  request: object,
  answers: { after: RegExp; type: string; look?: (scriptPid: number) => void }[],
): Promise<{ lines: string[]; screen: string }> {
  const work = await mkdtemp(join(agent.dir, 'tty-'))
  const requestFile = join(work, 'request.json')
  const outFile = join(work, 'out.txt')
  await writeFile(requestFile, JSON.stringify(request) + '\n')
  const command = `${quote(process.execPath)} ${quote(agent.shimPath)} --cargo-plugin < ${quote(requestFile)} > ${quote(outFile)}`
  const child = spawn('script', ['-q', '-f', '-e', '-c', command, '/dev/null'], {
    env: agent.env,
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let screen = ''
  const pending = [...answers]
  let timer: NodeJS.Timeout | undefined
  const exited = new Promise<void>((resolve, reject) => {
    timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`shim on a pty did not finish; screen:\n${screen}`))
    }, 30_000)
    child.on('exit', () => resolve())
  })
  const onOutput = (d: Buffer): void => {
    screen += d.toString('utf8')
    const next = pending[0]
    if (next !== undefined && next.after.test(screen)) {
      pending.shift()
      next.look?.(child.pid as number)
      child.stdin.write(next.type)
    }
  }
  child.stdout.on('data', onOutput)
  child.stderr.on('data', onOutput)
  await exited
  clearTimeout(timer)
  child.stdin.destroy()
  if (process.env['SHOW_SCREEN']) console.log(screen)
  const lines = (await readFile(outFile, 'utf8')).split('\n').filter((l) => l !== '')
  return { lines, screen }
}

describe('PIN and confirmation on the terminal', () => {
  let agent: AgentFixture
  before(async () => {
    agent = await startAgent({
      registries: {
        local: { index: INDEX, readKey: { label: KNOWN_KEY.label, id: KNOWN_KEY.id }, confirm: 'prompt' },
      },
      tokens: { softhsm: { pinSource: 'tty' } },
    })
  })
  after(async () => {
    await agent?.stop()
  })

  test('the PIN is typed on /dev/tty without echo, then cached by the agent', async () => {
    const { lines, screen } = await onTerminal(agent, cargoGet(INDEX, 'read'), [
      { after: /PIN for [^\n]*: $/m, type: `${agent.softhsm.pin}\r` },
    ])
    assert.equal(lines[0], '{"v":[1]}')
    const ok = JSON.parse(String(lines[1])) as { Ok?: { token: string } }
    assert.ok(ok.Ok !== undefined, `${lines.join('\n')}\n${screen}`)
    await verifyToken(ok.Ok.token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    assert.equal(screen.includes(agent.softhsm.pin), false, 'the PIN is not echoed')
    assert.match(screen, /PIN needed to read from local|PIN needed to .*read/)
    // Cached: the next request asks nothing (no answers scripted; a prompt would hang until the timeout).
    const second = await onTerminal(agent, cargoGet(INDEX, 'read'), [])
    assert.ok('Ok' in (JSON.parse(String(second.lines[1])) as object), second.screen)
    assert.doesNotMatch(second.screen, /PIN for/)
  })

  test('cargo logout and SIGHUP forget the cached PIN: the next request asks again', async () => {
    const pinAnswer = [{ after: /PIN for [^\n]*: $/m, type: `${agent.softhsm.pin}\r` }]
    // Cached from the previous test: no prompt.
    assert.doesNotMatch((await onTerminal(agent, cargoGet(INDEX, 'read'), [])).screen, /PIN for/)
    const out = await agent.runShim({ v: 1, registry: { 'index-url': INDEX }, kind: 'logout' })
    assert.deepEqual(JSON.parse(String(out.lines[1])), { Ok: { kind: 'logout' } })
    const afterLogout = await onTerminal(agent, cargoGet(INDEX, 'read'), pinAnswer)
    assert.match(afterLogout.screen, /PIN for/)
    assert.ok('Ok' in (JSON.parse(String(afterLogout.lines[1])) as object))
    agent.process?.kill('SIGHUP')
    for (let i = 0; i < 100 && !agent.log().includes('configuration reloaded'); i++)
      await new Promise((r) => setTimeout(r, 20))
    const afterHup = await onTerminal(agent, cargoGet(INDEX, 'read'), pinAnswer)
    assert.match(afterHup.screen, /PIN for/)
    assert.ok('Ok' in (JSON.parse(String(afterHup.lines[1])) as object), afterHup.screen)
  })

  test('a mutation shows what is signed and waits for yes; "n" refuses', async () => {
    const refused = await onTerminal(
      agent,
      cargoGet(INDEX, 'publish', { name: 'foo', vers: '2.0.0', cksum: CKSUM, registryName: 'local' }),
      [{ after: /\[y\/N\] $/m, type: 'n' }],
    )
    assert.match(
      refused.screen,
      /publish foo 2\.0\.0 \(cksum bbbbbbbb…\) to local \(sparse\+http:\/\/127\.0\.0\.1:38700\/index\/\)/,
    )
    const err = (JSON.parse(String(refused.lines[1])) as { Err?: { kind: string; 'caused-by': string[] } })
      .Err
    assert.equal(err?.kind, 'other')
    assert.match(JSON.stringify(err), /DENIED/)
    const approved = await onTerminal(
      agent,
      cargoGet(INDEX, 'publish', { name: 'foo', vers: '2.0.0', cksum: CKSUM, registryName: 'local' }),
      [{ after: /\[y\/N\] $/m, type: 'y' }],
    )
    const ok = JSON.parse(String(approved.lines[1])) as { Ok?: { token: string } }
    assert.ok(ok.Ok !== undefined, approved.screen)
    await verifyToken(ok.Ok.token, {
      publicKey: KNOWN_KEY.k3Public,
      url: INDEX,
      operation: 'publish',
      crate: { name: 'foo', vers: '2.0.0', cksum: CKSUM },
    })
  })

  test('Ctrl-C at the PIN prompt cancels cleanly', async () => {
    const c = await import('../../src/protocol/client.js')
    await c.callAgent(agent.socket, 'lock')
    const { lines, screen } = await onTerminal(agent, cargoGet(INDEX, 'read'), [
      { after: /PIN for [^\n]*: $/m, type: '\u0003' },
    ])
    const err = (JSON.parse(String(lines[1])) as { Err?: { kind: string; message: string } }).Err
    assert.equal(err?.kind, 'other', screen)
    assert.match(JSON.stringify(err), /PIN_ENTRY_FAILED|cancelled/)
  })

  test('a PIN question made moot by another request’s PIN ends cleanly: the shim is told and served', async () => {
    const c = await import('../../src/protocol/client.js')
    await c.callAgent(agent.socket, 'lock')
    let other: Promise<unknown> | undefined
    // While the shim waits at its prompt, another client of the token answers its own question.
    const look = (): void => {
      other = (async () => {
        const connection = await c.AgentConnection.connect(agent.socket)
        try {
          return await connection.request(
            'sign',
            { cargo: JSON.stringify(cargoGet(INDEX, 'read')), interactive: true },
            { onQuery: async () => ({ result: { pin: agent.softhsm.pin } }) },
          )
        } finally {
          connection.close()
        }
      })()
    }
    const { lines, screen } = await onTerminal(agent, cargoGet(INDEX, 'read'), [
      { after: /PIN for [^\n]*: $/m, type: '', look },
    ])
    assert.ok(other !== undefined, screen)
    await other
    const ok = JSON.parse(String(lines[1])) as { Ok?: { token: string } }
    assert.ok(ok.Ok !== undefined, `${lines.join('\n')}\n${screen}`)
    await verifyToken(ok.Ok.token, { publicKey: KNOWN_KEY.k3Public, url: INDEX, operation: 'read' })
    assert.match(screen, /PIN typed for another request; yours is not needed/)
  })
})

describe('PIN prompts of one shim run', () => {
  let agent: AgentFixture
  let cleanup: () => Promise<void>
  before(async () => {
    // Two tokens in one SoftHSM store: `cargo login` reads the read key (token "a") and the mutation
    // key (token "b"), logging in to each, so one request asks two PINs.
    const first = await createSoftHsmToken()
    cleanup = first.cleanup
    const second = await createSoftHsmToken({ store: first, label: 'second' })
    agent = await startAgent({
      softhsm: first,
      registries: { local: { index: INDEX, readKey: { token: 'a' }, mutationKey: { token: 'b' } } },
      tokens: { a: { pinSource: 'tty' }, b: { pinSource: 'tty', label: second.label } },
    })
  })
  after(async () => {
    await agent?.stop()
    await cleanup?.()
  })

  test('each prompt closes the /dev/tty it opened: the second prompt holds no more descriptors than the first', async () => {
    const held: number[] = []
    const look = (scriptPid: number): void => {
      held.push(shimTtyDescriptors(scriptPid, agent.shimPath))
    }
    const { lines, screen } = await onTerminal(
      agent,
      { v: 1, registry: { 'index-url': INDEX, name: 'local' }, kind: 'login' },
      [
        { after: /PIN for [^\n]*'cargo': $/m, type: `${agent.softhsm.pin}\r`, look },
        { after: /PIN for [^\n]*'second': $/m, type: `${agent.softhsm.pin}\r`, look },
      ],
    )
    assert.deepEqual(JSON.parse(String(lines[1])), { Ok: { kind: 'login' } }, screen)
    assert.equal(held.length, 2, screen)
    assert.ok((held[0] ?? 0) > 0, 'the open prompt shows as a /dev/tty descriptor of the shim')
    assert.equal(held[1], held[0], `descriptors on /dev/tty at each prompt: ${held.join(', ')}`)
  })
})
