import assert from 'node:assert/strict'
import { test } from 'node:test'

import { LIMITS } from '../../src/lib/limits.js'
import {
  LineSplitter,
  commandLine,
  decodeData,
  escapeArgument,
  parseServerLine,
} from '../../src/policy/assuan.js'

test('arguments escape %, CR, LF and other control characters (Assuan)', () => {
  assert.equal(escapeArgument('100% sure\r\nOK'), '100%25 sure%0D%0AOK')
  assert.equal(escapeArgument('tab\there'), 'tab%09here')
  assert.equal(escapeArgument('crate ünïcode'), 'crate ünïcode')
  assert.equal(commandLine('SETDESC', 'a\nb').toString(), 'SETDESC a%0Ab\n')
  assert.equal(commandLine('GETPIN').toString(), 'GETPIN\n')
})

test('a command line never exceeds the Assuan limit and never ends inside an escape', () => {
  for (const filler of ['a', '%', 'é', '😀', 'x%']) {
    const line = commandLine('SETDESC', filler.repeat(2_000))
    assert.ok(line.length <= LIMITS.assuanLineMaxBytes, `${filler}: ${line.length}`)
    const text = line.toString('utf8')
    assert.ok(text.endsWith('…\n'))
    assert.equal(/%[0-9A-F]?…\n$/.test(text), false)
    assert.equal(text.includes('\uFFFD'), false)
  }
})

test('D line payloads decode %XX escapes into bytes', () => {
  assert.deepEqual(decodeData(Buffer.from('12%2534%0Aab%0d')), Buffer.from('12%34\nab\r'))
  assert.deepEqual(decodeData(Buffer.from('%C3%A9')), Buffer.from('é'))
  // A stray % that is not an escape stays literal.
  assert.deepEqual(decodeData(Buffer.from('50%')), Buffer.from('50%'))
})

test('server lines are classified; D payloads stay bytes', () => {
  assert.deepEqual(parseServerLine(Buffer.from('OK Pleased to meet you')), {
    type: 'ok',
    text: 'Pleased to meet you',
  })
  assert.deepEqual(parseServerLine(Buffer.from('OK')), { type: 'ok', text: '' })
  assert.deepEqual(parseServerLine(Buffer.from('ERR 83886179 Operation cancelled <Pinentry>')), {
    type: 'err',
    code: 83886179,
    text: 'Operation cancelled <Pinentry>',
  })
  const data = parseServerLine(Buffer.from('D 1234'))
  assert.equal(data.type, 'data')
  assert.deepEqual(data.type === 'data' ? data.payload : undefined, Buffer.from('1234'))
  assert.equal(parseServerLine(Buffer.from('S PASSWORD_FROM_CACHE')).type, 'status')
  assert.equal(parseServerLine(Buffer.from('# comment')).type, 'comment')
  assert.equal(parseServerLine(Buffer.from('INQUIRE QUALITY')).type, 'inquire')
  // "Dx" and "OKAY" are not D / OK lines.
  assert.equal(parseServerLine(Buffer.from('Dx')).type, 'unknown')
  assert.equal(parseServerLine(Buffer.from('OKAY')).type, 'unknown')
})

test('the line splitter joins chunks and wipes what it consumed', () => {
  const splitter = new LineSplitter()
  const chunk1 = Buffer.from('OK hi\nD 12')
  const chunk2 = Buffer.from('34\nOK\n')
  assert.deepEqual(splitter.push(chunk1).map(String), ['OK hi'])
  assert.deepEqual([...chunk1], new Array(chunk1.length).fill(0))
  assert.equal(splitter.pendingBytes, 4)
  assert.deepEqual(splitter.push(chunk2).map(String), ['D 1234', 'OK'])
  assert.equal(splitter.pendingBytes, 0)
})
