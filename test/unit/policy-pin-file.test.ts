import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { AgentError } from '../../src/lib/errors.js'
import { readPinFile } from '../../src/lib/pin-file.js'

const dir = mkdtempSync(join(tmpdir(), 'pin-file-'))
after(() => rmSync(dir, { recursive: true, force: true }))

function file(name: string, content: string, mode: number): string {
  const path = join(dir, name)
  writeFileSync(path, content, { mode })
  chmodSync(path, mode)
  return path
}

test('a 0600 PIN file is read; one trailing newline is not part of the PIN', async () => {
  const pin = await readPinFile(file('ok', '12345678\n', 0o600))
  assert.equal(pin.expose().toString(), '12345678')
  const crlf = await readPinFile(file('crlf', 'abc\r\n', 0o400))
  assert.equal(crlf.expose().toString(), 'abc')
})

test('a group- or world-readable PIN file is refused with a chmod remedy, without its content in the error', async () => {
  for (const mode of [0o640, 0o604, 0o660, 0o644]) {
    const path = file(`loose-${mode.toString(8)}`, 'secret-pin-778899', mode)
    await assert.rejects(readPinFile(path), (e: unknown) => {
      assert.ok(e instanceof AgentError)
      assert.equal(e.code, 'CONFIG_INVALID')
      assert.match(e.remedy ?? '', /chmod 600/)
      assert.equal(JSON.stringify(e.toWire()).includes('778899'), false)
      return true
    })
  }
})

test('missing, empty, oversize and non-regular files are errors that say what to do', async () => {
  await assert.rejects(readPinFile(join(dir, 'absent')), { code: 'PIN_REQUIRED' })
  await assert.rejects(readPinFile(file('empty', '\n', 0o600)), { code: 'PIN_REQUIRED' })
  await assert.rejects(readPinFile(file('huge', 'x'.repeat(5000), 0o600)), { code: 'CONFIG_INVALID' })
  await assert.rejects(
    readPinFile(dir),
    (e: unknown) => e instanceof AgentError && e.code === 'CONFIG_INVALID',
  )
})

test('a symlink to a 0600 file is accepted (mounted secrets are symlinks); the target mode counts', async () => {
  const target = file('target', '2468', 0o600)
  const link = join(dir, 'link')
  symlinkSync(target, link)
  assert.equal((await readPinFile(link)).expose().toString(), '2468')
  chmodSync(target, 0o644)
  await assert.rejects(readPinFile(link), { code: 'CONFIG_INVALID' })
})
