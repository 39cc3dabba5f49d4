/**
 * The touch countdown as a human sees it: the real cargo publishes through the real shim and agent,
 * in a tmux pane 100 columns wide, while the device waits for a "touch" (the fault-injecting module
 * delays C_Sign, test/fixtures/faulty-pkcs11). The intent is printed once per touch, the countdown
 * redraws in place on one row that fits the pane, and it is erased when the signature comes back: the
 * pane never holds wrapped copies of a redrawn line.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { startAgent, waitForSocket, type AgentFixture } from '../helpers/agent.js'
import { repoRoot } from '../helpers/softhsm.js'
import { startRegistry, type Registry } from '../fixtures/registry/server.js'
import { cargoThroughAgent, type CargoSandbox } from './lib/cargo.js'
import { tokenK3Public } from './lib/pubkey.js'

const FAULTY = join(repoRoot(), 'test', 'fixtures', 'faulty-pkcs11', 'libfaulty-pkcs11.so')
const COLUMNS = 100
/** Long enough for the countdown to redraw a few times (one redraw a second). */
const TOUCH_MS = 3_500

const quote = (value: string): string => `'${value.replace(/'/g, `'\\''`)}'`

describe(
  'touch countdown in a 100-column terminal',
  { skip: existsSync(FAULTY) ? false : `build ${FAULTY} first (scripts/setup.sh)` },
  () => {
    let dir: string
    let registry: Registry
    let agent: AgentFixture
    let cargo: CargoSandbox
    const server = `countdown-${process.pid}`
    const tmux = (...args: string[]): string => {
      const r = spawnSync('tmux', ['-L', server, ...args], { encoding: 'utf8' })
      assert.equal(r.status, 0, `tmux ${args.join(' ')}: ${r.stderr}`)
      return r.stdout
    }

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'countdown-'))
      registry = await startRegistry({ stateDir: join(dir, 'registry'), maxAgeSeconds: 120 })
      agent = await startAgent({
        registries: { local: { index: registry.indexUrl, confirm: 'touch', tokenMaxAgeSeconds: 120 } },
        tokens: { yubikey: { module: FAULTY, kind: 'yubikey' } },
        agent: { 'touch-notice-after-ms': 300 },
        start: false,
      })
      const control = join(agent.dir, 'faults')
      writeFileSync(control, `sign_delay_ms=${TOUCH_MS}\n`)
      Object.assign(agent.agentEnv, { FAULTY_PKCS11_CONTROL: control })
      const child = await agent.spawnAgent()
      await waitForSocket(agent.socket, child, agent.log)
      registry.addKey(await tokenK3Public({ ...agent.softhsm, keyLabel: agent.softhsm.generatedKey.label }))
      cargo = cargoThroughAgent(dir, registry, agent)
    })

    after(async () => {
      spawnSync('tmux', ['-L', server, 'kill-server'])
      await agent?.stop()
      await registry?.stop()
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
    })

    test('cargo publish: the intent once per touch, a countdown that fits and is erased, no wrapped copies', async () => {
      const crate = cargo.crate('hwtok-alpha')
      const script = join(dir, 'publish.sh')
      const env = Object.entries({ ...cargo.env, TERM: 'xterm-256color' })
        .filter(([k, v]) => v !== undefined && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && !k.startsWith('TMUX'))
        .map(([k, v]) => `export ${k}=${quote(v as string)}`)
      writeFileSync(
        script,
        [
          ...env,
          `cd ${quote(crate)}`,
          'cargo publish --registry local --no-verify',
          'echo "EXIT=$?"',
          'sleep 600',
          '',
        ].join('\n'),
      )
      tmux('new-session', '-d', '-x', String(COLUMNS), '-y', '60', '-s', 'pub', `bash ${quote(script)}`)
      assert.equal(tmux('display-message', '-p', '-t', 'pub', '#{pane_width}').trim(), String(COLUMNS))

      const capture = (): string => tmux('capture-pane', '-p', '-t', 'pub', '-S', '-')
      const deadline = Date.now() + 120_000
      let midway: string | undefined
      let screen = capture()
      while (!/EXIT=\d+/.test(screen) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200))
        screen = capture()
        if (midway === undefined && /\d+ s left/.test(screen)) midway = screen
      }
      assert.match(screen, /EXIT=0/, screen + agent.log())

      // While the device waited: one countdown row, shorter than the pane.
      assert.ok(midway !== undefined, `no countdown was seen:\n${screen}`)
      const rows = midway.split('\n').filter((l) => /s left/.test(l))
      assert.equal(rows.length, 1, midway)
      assert.ok((rows[0] ?? '').length < COLUMNS, rows[0])
      assert.match(rows[0] ?? '', /^cargo-credential-pkcs11: touch the device, \d+ s left$/)

      // Afterwards: each touch's intent exactly once, every countdown erased.
      const lines = screen.split('\n')
      const intents = lines.filter((l) => l.startsWith('cargo-credential-pkcs11: Touch '))
      assert.equal(intents.filter((l) => / to publish hwtok-alpha/.test(l)).length, 1, screen)
      const touches = intents.length
      assert.ok(touches >= 1 && touches <= 2, screen)
      assert.equal(lines.filter((l) => /s left/.test(l)).length, 0, screen)
      // A wrapped, redrawn line leaves its tail on the next row: no row repeats a fragment of an intent.
      const fragments = lines.filter(
        (l) => l !== '' && !l.startsWith('cargo') && intents.some((i) => i.includes(l.trim())),
      )
      assert.deepEqual(fragments, [], screen)
    })
  },
)
