import assert from 'node:assert/strict'
import { test } from 'node:test'

import { parseCommandArgs, USAGE } from '../../src/cli/args.js'
import { COMMANDS } from '../../src/cli/commands.js'
import { AgentError } from '../../src/lib/errors.js'

const OPTIONS = { config: { type: 'string' }, json: { type: 'boolean' } } as const

function usageFailure(argv: string[], positionals = false): AgentError {
  try {
    parseCommandArgs(argv, OPTIONS, USAGE.doctor, { positionals })
  } catch (error) {
    assert.ok(error instanceof AgentError, String(error))
    assert.equal(error.code, 'USAGE')
    assert.equal(error.remedy, `Usage: cargo-pkcs11-agent ${USAGE.doctor}`)
    return error
  }
  assert.fail(`accepted ${argv.join(' ')}`)
}

test('typed values, positionals only when the command takes them', () => {
  const parsed = parseCommandArgs(['--config', '/c.toml', '--json'], OPTIONS, USAGE.doctor)
  assert.equal(parsed.values.config, '/c.toml')
  assert.equal(parsed.values.json, true)
  const withToken = parseCommandArgs(['-', '--json'], OPTIONS, USAGE.verify, { positionals: true })
  assert.deepEqual(withToken.positionals, ['-'])
  assert.match(usageFailure(['stray']).message, /Unexpected argument 'stray'/)
})

test('usage errors name the problem, hint near misses, and carry the usage line', () => {
  assert.equal(usageFailure(['--jsn']).message, "Unknown option '--jsn' (did you mean --json?)")
  assert.equal(
    usageFailure(['--confg=/x'], true).message,
    "Unknown option '--confg' (did you mean --config?)",
  )
  assert.equal(usageFailure(['--completely-else']).message, "Unknown option '--completely-else'")
  assert.match(usageFailure(['--config']).message, /--config <value>' argument missing/)
})

test('help shows the same usage line the commands report', () => {
  assert.deepEqual(Object.keys(COMMANDS).sort(), Object.keys(USAGE).sort())
  for (const [name, entry] of Object.entries(COMMANDS)) {
    assert.equal(entry.usage, USAGE[name as keyof typeof USAGE], name)
    assert.ok(entry.usage.startsWith(`${name} `), name)
  }
})
