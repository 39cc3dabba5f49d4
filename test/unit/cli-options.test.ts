/** Every option of every usage line says what it does, in `help <command>`, `--help` and the man page. */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { USAGE, usageOptions } from '../../src/cli/args.js'
import { COMMANDS, type CommandName } from '../../src/cli/commands.js'
import { OPTION_TEXTS, optionTexts } from '../../src/cli/options.js'

const run = promisify(execFile)
const BIN = fileURLToPath(new URL('../../src/bin/cargo-pkcs11-agent.cjs', import.meta.url))

test('every option of every usage line has a text, and no text is left for an option no usage line has', () => {
  const undocumented: string[] = []
  for (const command of Object.keys(COMMANDS) as CommandName[])
    for (const [name, text] of optionTexts(command)) if (text === '') undocumented.push(`${command} ${name}`)
  assert.deepEqual(undocumented, [])
  const used = new Set(Object.values(USAGE).flatMap((usage) => usageOptions(usage).map((o) => o.name)))
  assert.deepEqual(
    Object.keys(OPTION_TEXTS).filter((name) => !used.has(name)),
    [],
  )
})

test('`<command> --help` and `help <command>` list the options with their texts', async () => {
  const keygen = (await run(process.execPath, [BIN, 'keygen', '--help'])).stdout
  assert.match(keygen, /^usage: cargo-pkcs11-agent keygen /)
  assert.match(keygen, /\noptions:\n/)
  assert.match(keygen, /\n {2}--force +replace an existing key of that label or id/)
  const setup = (await run(process.execPath, [BIN, 'help', 'setup'])).stdout
  assert.match(
    setup,
    /\n {2}--force +change a table of the configs that differs/,
    'setup says what --force means there',
  )
  assert.match(setup, /\n {2}--confirm-destroy +the k3\.pid of the key --regenerate-key may destroy/)
  assert.equal(setup.match(/^ {2}--/gm)?.length, usageOptions(USAGE.setup).length)
  const man = (await run(process.execPath, [BIN, 'man'])).stdout
  assert.match(
    man,
    /\\fB\\-\\-confirm\\-destroy\\fR {2}the k3\.pid of the key \\-\\-regenerate\\-key may destroy/,
  )
})
