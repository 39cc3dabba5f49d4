/**
 * The virtual YubiKey fixture checked with tools that are not ours: OpenSC's pkcs11-tool drives the
 * real ykcs11 through pcscd and vpcd to the emulated PIV card, and node:crypto verifies what comes
 * back. Also records the raw Cryptoki values ykcs11 returns for a wrong PIN and a missed touch,
 * which the device layer's error table depends on.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash, randomBytes, verify as cryptoVerify } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'

import { startVirtualYubiKey, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'

const PIN = '654321'

interface ToolResult {
  code: number
  stdout: string
  stderr: string
}

describe('virtual YubiKey seen through OpenSC pkcs11-tool and the real ykcs11', () => {
  let yk: VirtualYubiKey
  let dir: string

  /** pkcs11-tool in a child process (so this process never loads ykcs11); the PIN travels as env:. */
  const tool = async (args: readonly string[], pin?: string): Promise<ToolResult> =>
    new Promise((resolve) => {
      execFile(
        'pkcs11-tool',
        ['--module', yk.module, ...args],
        {
          env: { ...process.env, ...yk.env, ...(pin === undefined ? {} : { YK_TEST_PIN: pin }) },
          timeout: 30_000,
        },
        (error, stdout, stderr) =>
          resolve({ code: error === null ? 0 : Number(error.code ?? 1), stdout, stderr }),
      )
    })

  const signWithTool = async (
    pin: string,
  ): Promise<{ result: ToolResult; message: Buffer; signature: Buffer }> => {
    const message = randomBytes(200)
    const input = join(dir, 'digest.bin')
    const output = join(dir, 'signature.der')
    await rm(output, { force: true })
    await writeFile(input, createHash('sha384').update(message).digest())
    const result = await tool(
      [
        '--login',
        '--pin',
        'env:YK_TEST_PIN',
        '--sign',
        '--mechanism',
        'ECDSA',
        '--id',
        '02',
        '--input-file',
        input,
        '--output-file',
        output,
        '--signature-format',
        'openssl',
      ],
      pin,
    )
    const signature = result.code === 0 ? await readFile(output) : Buffer.alloc(0)
    return { result, message, signature }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ykcs11-tool-'))
    yk = await startVirtualYubiKey({ pin: PIN, serial: 31415926 })
  })

  after(async () => {
    await yk?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('lists the token with the card serial and the 9C public point the card holds', async () => {
    const slots = await tool(['--list-token-slots'])
    assert.equal(slots.code, 0, slots.stderr)
    assert.match(slots.stdout, /serial num\s*:\s*31415926/)
    assert.match(slots.stdout, /token label\s*:\s*YubiKey PIV #31415926/)
    const objects = await tool(['--list-objects', '--type', 'pubkey', '--id', '02'])
    assert.equal(objects.code, 0, objects.stderr)
    // --list-objects does not filter by --id: pick the object whose ID is 02 (slot 9C).
    const block = objects.stdout.split(/\n(?=\S)/).find((b) => /\n\s+ID:\s+02\b/.test(b))
    const hex = /EC_POINT:\s+([0-9a-f]+)/.exec(block ?? '')?.[1]
    assert.ok(hex !== undefined, objects.stdout)
    const jwk = yk.publicKeyObjects['9c']?.export({ format: 'jwk' })
    const expected = Buffer.concat([
      Buffer.from('046104', 'hex'),
      Buffer.from(jwk?.x ?? '', 'base64url'),
      Buffer.from(jwk?.y ?? '', 'base64url'),
    ])
    assert.equal(hex, expected.toString('hex'))
  })

  it('signs a SHA-384 digest on the card; node:crypto verifies it over the message', async () => {
    const before = await yk.control.counters()
    const { result, message, signature } = await signWithTool(PIN)
    assert.equal(result.code, 0, result.stderr)
    const key = yk.publicKeyObjects['9c']
    assert.ok(key !== undefined)
    assert.equal(cryptoVerify('sha384', message, key, signature), true)
    const after = await yk.control.counters()
    assert.equal(after.sign - before.sign, 1)
  })

  it('a wrong PIN is CKR_PIN_INCORRECT after one VERIFY, and no signature is attempted', async () => {
    const before = await yk.control.counters()
    const { result } = await signWithTool('000000')
    assert.notEqual(result.code, 0)
    assert.match(result.stderr + result.stdout, /CKR_PIN_INCORRECT/)
    const after = await yk.control.counters()
    assert.equal(after.verify - before.verify, 1)
    assert.equal(after.sign, before.sign)
    assert.equal((await yk.control.state()).pinTriesLeft, 2)
    await yk.control.setPinTries(3)
  })

  it('a missed touch (card SW 6982) comes out of ykcs11 as CKR_USER_NOT_LOGGED_IN from C_Sign', async () => {
    await yk.control.missTouch(true)
    try {
      const { result } = await signWithTool(PIN)
      assert.notEqual(result.code, 0)
      assert.match(result.stderr + result.stdout, /C_Sign.*CKR_USER_NOT_LOGGED_IN/s)
    } finally {
      await yk.control.missTouch(false)
    }
  })
})
