/**
 * The virtual YubiKey's card-management side (test/fixtures/vpiv/README.md) checked with clients
 * that are not ours: Debian's yubico-piv-tool 2.2 and OpenSC's pkcs11-tool over the real ykcs11 2.2,
 * through pcscd and vpcd; openssl verifies the attestation chain and parses its extensions. The
 * AES management-key exchange, which no installed client speaks (yubico-piv-tool learned it in
 * 2.3), is driven at the APDU level with node:crypto doing the client's half.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createCipheriv, createDecipheriv, createHash, createPublicKey, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'

import { createAttestationCa, createAttestationKey } from '../fixtures/vpiv/attestation.js'
import { DEFAULT_MANAGEMENT_KEY, PivCard } from '../fixtures/vpiv/piv-card.js'
import { startVirtualYubiKey, YUBICO_OID, type VirtualYubiKey } from '../helpers/virtual-yubikey.js'

interface Run {
  code: number
  stdout: string
  stderr: string
}

const run = async (
  command: string,
  args: readonly string[],
  env: Readonly<Record<string, string>> = {},
): Promise<Run> =>
  new Promise((resolve) => {
    execFile(command, args, { env: { ...process.env, ...env }, timeout: 30_000 }, (error, stdout, stderr) =>
      resolve({ code: error === null ? 0 : Number(error.code ?? 1), stdout, stderr }),
    )
  })

const DEFAULT_HEX = DEFAULT_MANAGEMENT_KEY.toString('hex')

/** The uncompressed point of a PEM public key or certificate. */
function pointOf(pem: string): string {
  const jwk = createPublicKey(pem).export({ format: 'jwk' })
  return Buffer.concat([
    Buffer.from([4]),
    Buffer.from(jwk.x ?? '', 'base64url'),
    Buffer.from(jwk.y ?? '', 'base64url'),
  ]).toString('hex')
}

/** Yubico extension values (hex) of a certificate, as `openssl asn1parse` shows them. */
async function yubicoExtensions(dir: string, pem: string): Promise<Record<string, string>> {
  const file = join(dir, `asn1-${randomBytes(4).toString('hex')}.pem`)
  await writeFile(file, pem)
  const parsed = await run('openssl', ['asn1parse', '-in', file])
  assert.equal(parsed.code, 0, parsed.stderr)
  const lines = parsed.stdout.split('\n')
  const out: Record<string, string> = {}
  lines.forEach((line, i) => {
    const oid = /OBJECT\s+:(1\.3\.6\.1\.4\.1\.41482\.3\.\d+)/.exec(line)?.[1]
    const value = /OCTET STRING\s+\[HEX DUMP\]:([0-9A-F]+)/.exec(lines[i + 1] ?? '')?.[1]
    if (oid !== undefined && value !== undefined) out[oid] = value.toLowerCase()
  })
  return out
}

describe('a blank virtual YubiKey driven by yubico-piv-tool 2.2', () => {
  let yk: VirtualYubiKey
  let dir: string
  const piv = async (args: readonly string[]): Promise<Run> => run('yubico-piv-tool', args, yk.env)

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vpiv-card-'))
    yk = await startVirtualYubiKey({ serial: 20250101, blank: true })
  })
  after(async () => {
    await yk?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('leaves the factory with default PIN, PUK and management key, and no keys', async () => {
    const status = await piv(['-a', 'status'])
    assert.equal(status.code, 0, status.stderr)
    assert.match(status.stdout, /Version:\s+5\.4\.3/)
    assert.match(status.stdout, /Serial Number:\s+20250101/)
    assert.doesNotMatch(status.stdout, /Slot 9[ac]/)
    assert.deepEqual(await yk.control.slots(), [])
    assert.deepEqual(await yk.control.managementKey(), {
      algorithm: '3des',
      hex: DEFAULT_HEX,
      isDefault: true,
      touch: false,
    })
    assert.deepEqual(await yk.control.credentials(), {
      pinIsDefault: true,
      pukIsDefault: true,
      pukTriesLeft: 3,
    })
  })

  it('refuses GENERATE after a failed management-key authentication', async () => {
    const before = await yk.control.counters()
    const wrong = await piv([
      '--key=000000000000000000000000000000000000000000000000',
      '-a',
      'generate',
      '-s',
      '9d',
    ])
    assert.notEqual(wrong.code, 0)
    assert.match(wrong.stderr, /authenticat/i)
    const after = await yk.control.counters()
    assert.equal(after.generate, before.generate)
    assert.equal(after.managementAuth, before.managementAuth)
  })

  it('generates P-384 keys with the PIN and touch policies asked for, in 9c and a retired slot', async () => {
    const mutation = await piv([
      '-a',
      'generate',
      '-s',
      '9c',
      '-A',
      'ECCP384',
      '--pin-policy=always',
      '--touch-policy=always',
    ])
    assert.equal(mutation.code, 0, mutation.stderr)
    const retired = await piv(['-a', 'generate', '-s', '82', '-A', 'ECCP384', '--touch-policy=cached'])
    assert.equal(retired.code, 0, retired.stderr)
    const slots = new Map((await yk.control.slots()).map((slot) => [slot.slot, slot]))
    assert.deepEqual(
      { ...slots.get('9c'), publicPoint: undefined },
      { slot: '9c', pinPolicy: 'always', touchPolicy: 'always', origin: 'generated', publicPoint: undefined },
    )
    assert.equal(slots.get('9c')?.publicPoint, pointOf(mutation.stdout))
    // Default PIN policy for a retired slot is "once".
    assert.equal(slots.get('82')?.pinPolicy, 'once')
    assert.equal(slots.get('82')?.touchPolicy, 'cached')
    assert.equal(slots.get('82')?.publicPoint, pointOf(retired.stdout))
    const counters = await yk.control.counters()
    assert.equal(counters.generate, 2)
  })

  it('attests a generated key: the chain verifies under the test CA, extensions carry serial, firmware and policies', async () => {
    const attestation = await piv(['-a', 'attest', '-s', '9c'])
    assert.equal(attestation.code, 0, attestation.stderr)
    const intermediate = await piv(['-a', 'read-certificate', '-s', 'f9'])
    assert.equal(intermediate.code, 0, intermediate.stderr)
    await writeFile(join(dir, 'ca.pem'), yk.attestationCa.pem)
    await writeFile(join(dir, 'f9.pem'), intermediate.stdout)
    await writeFile(join(dir, '9c.pem'), attestation.stdout)
    const verified = await run('openssl', [
      'verify',
      '-CAfile',
      join(dir, 'ca.pem'),
      '-untrusted',
      join(dir, 'f9.pem'),
      join(dir, '9c.pem'),
    ])
    assert.equal(verified.code, 0, verified.stdout + verified.stderr)
    const f9Der = await run('openssl', ['x509', '-in', join(dir, 'f9.pem'), '-outform', 'DER'])
    assert.equal(f9Der.code, 0)
    const slot = (await yk.control.slots()).find((s) => s.slot === '9c')
    assert.equal(pointOf(attestation.stdout), slot?.publicPoint)
    const subject = await run('openssl', ['x509', '-in', join(dir, '9c.pem'), '-noout', '-subject'])
    assert.match(subject.stdout, /CN ?= ?YubiKey PIV Attestation 9c/)
    const extensions = await yubicoExtensions(dir, attestation.stdout)
    assert.deepEqual(extensions, {
      [YUBICO_OID.firmware]: '050403',
      [YUBICO_OID.serial]: `0204${(20250101).toString(16).padStart(8, '0')}`,
      [YUBICO_OID.policy]: '0302', // PIN always, touch always
      [YUBICO_OID.formFactor]: '03',
    })
    const cached = await yubicoExtensions(dir, (await piv(['-a', 'attest', '-s', '82'])).stdout)
    assert.equal(cached[YUBICO_OID.policy], '0203') // PIN once, touch cached
  })

  it('another card under another CA does not verify under this card’s root; an empty slot cannot be attested', async () => {
    const other = createAttestationKey(createAttestationCa('someone else'), 1)
    await writeFile(join(dir, 'other-f9.der'), other.certificate)
    const otherPem = await run('openssl', ['x509', '-inform', 'DER', '-in', join(dir, 'other-f9.der')])
    await writeFile(join(dir, 'other-f9.pem'), otherPem.stdout)
    const mixed = await run('openssl', [
      'verify',
      '-CAfile',
      join(dir, 'ca.pem'),
      '-untrusted',
      join(dir, 'other-f9.pem'),
      join(dir, '9c.pem'),
    ])
    assert.notEqual(mixed.code, 0)
    const empty = await piv(['-a', 'attest', '-s', '9e'])
    assert.notEqual(empty.code, 0)
  })
})

describe('the virtual YubiKey through the real ykcs11 2.2 (pkcs11-tool)', () => {
  const cards: VirtualYubiKey[] = []
  const tool = async (
    yk: VirtualYubiKey,
    args: readonly string[],
    env: Record<string, string>,
  ): Promise<Run> => run('pkcs11-tool', ['--module', yk.module, ...args], { ...yk.env, ...env })
  const keygen = ['--keypairgen', '--key-type', 'EC:secp384r1']

  after(async () => {
    for (const card of cards) await card.stop()
  })

  it('C_Login as SO with the default key in hex, then C_GenerateKeyPair: key, certificate object and attestation', async () => {
    const yk = await startVirtualYubiKey({ serial: 7001, blank: true })
    cards.push(yk)
    const made = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:MGM', ...keygen, '--id', '02'],
      {
        MGM: DEFAULT_HEX,
      },
    )
    assert.equal(made.code, 0, made.stderr)
    const [slot] = await yk.control.slots()
    // ykcs11 2.2 sends GENERATE without policy tags: the card's defaults for 9c apply.
    assert.deepEqual(
      { ...slot, publicPoint: undefined },
      {
        slot: '9c',
        pinPolicy: 'always',
        touchPolicy: 'never',
        origin: 'generated',
        publicPoint: undefined,
      },
    )
    assert.match(made.stdout, new RegExp(`EC_POINT:\\s+0461${slot?.publicPoint}`))
    const counters = await yk.control.counters()
    assert.equal(counters.managementAuth, 1)
    assert.equal(counters.putData, 1) // the placeholder certificate ykcs11 writes into 5FC10A
    assert.ok((await yk.control.object('5fc10a'))?.startsWith('70'))
    const objects = await tool(yk, ['--list-objects', '--type', 'cert'], {})
    assert.equal(objects.code, 0, objects.stderr)
    assert.match(objects.stdout, /X\.509 Certificate for PIV Attestation 9c/)
    assert.match(objects.stdout, /subject:\s+DN: CN=YubiKey PIV Attestation 9c/)
  })

  it('a wrong management key is CKR_PIN_INCORRECT and generates nothing', async () => {
    const yk = await startVirtualYubiKey({ serial: 7002, blank: true })
    cards.push(yk)
    const wrong = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:MGM', ...keygen, '--id', '02'],
      {
        MGM: randomBytes(24).toString('hex'),
      },
    )
    assert.notEqual(wrong.code, 0)
    assert.match(wrong.stderr + wrong.stdout, /C_Login.*CKR_PIN_INCORRECT/s)
    assert.equal((await yk.control.counters()).generate, 0)
  })

  it('C_SetPIN as SO replaces the management key (SET MANAGEMENT KEY); the old key stops working', async () => {
    const yk = await startVirtualYubiKey({ serial: 7003, blank: true })
    cards.push(yk)
    const fresh = randomBytes(24).toString('hex')
    const changed = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:MGM', '--change-pin', '--new-pin', 'env:NEW'],
      {
        MGM: DEFAULT_HEX,
        NEW: fresh,
      },
    )
    assert.equal(changed.code, 0, changed.stderr)
    assert.deepEqual(await yk.control.managementKey(), {
      algorithm: '3des',
      hex: fresh,
      isDefault: false,
      touch: false,
    })
    const old = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:MGM', ...keygen, '--id', '01'],
      {
        MGM: DEFAULT_HEX,
      },
    )
    assert.notEqual(old.code, 0)
    const next = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:MGM', ...keygen, '--id', '01'],
      {
        MGM: fresh,
      },
    )
    assert.equal(next.code, 0, next.stderr)
  })

  it('a PIN-protected management key: C_Login as SO with the PIN reads it from the printed object after VERIFY', async () => {
    const yk = await startVirtualYubiKey({ serial: 7004, blank: true, protectedManagementKey: true })
    cards.push(yk)
    const stored = await yk.control.object('5fc109')
    assert.equal(stored, `881a8918${yk.initialManagementKey.key.toString('hex')}`)
    const wrongPin = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:PIN', ...keygen, '--id', '01'],
      {
        PIN: '000000',
      },
    )
    assert.notEqual(wrongPin.code, 0)
    const made = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:PIN', ...keygen, '--id', '01'],
      {
        PIN: '123456',
      },
    )
    assert.equal(made.code, 0, made.stderr)
    const counters = await yk.control.counters()
    assert.equal(counters.managementAuth, 1)
    assert.equal(counters.generate, 1)
  })

  it('firmware 5.7 ships an AES-192 default key, which ykcs11 2.2 (3DES only) cannot authenticate with', async () => {
    const yk = await startVirtualYubiKey({ serial: 7005, blank: true, version: [5, 7, 1] })
    cards.push(yk)
    assert.equal((await yk.control.managementKey()).algorithm, 'aes192')
    const login = await tool(
      yk,
      ['--login', '--login-type', 'so', '--so-pin', 'env:MGM', ...keygen, '--id', '02'],
      {
        MGM: DEFAULT_HEX,
      },
    )
    assert.notEqual(login.code, 0)
    assert.match(login.stderr + login.stdout, /CKR_PIN_INCORRECT/)
    assert.equal((await yk.control.counters()).managementAuth, 0)
  })

  it('touch policy "cached": two signatures inside the window cost one touch; after it, another', async () => {
    const yk = await startVirtualYubiKey({
      serial: 7006,
      keys: { '9c': { pinPolicy: 'once', touchPolicy: 'cached' }, '9a': false },
    })
    cards.push(yk)
    const dir = await mkdtemp(join(tmpdir(), 'vpiv-cached-'))
    try {
      const sign = async (): Promise<Run> => {
        await writeFile(join(dir, 'digest'), createHash('sha384').update(randomBytes(32)).digest())
        return tool(
          yk,
          [
            '--login',
            '--pin',
            'env:PIN',
            '--sign',
            '--mechanism',
            'ECDSA',
            '--id',
            '02',
            '--input-file',
            join(dir, 'digest'),
            '--output-file',
            join(dir, 'sig'),
          ],
          { PIN: '123456' },
        )
      }
      const touched = yk.control.touchRequested()
      assert.equal((await sign()).code, 0)
      assert.deepEqual(await touched, { slot: '9c' })
      assert.equal((await sign()).code, 0)
      assert.equal((await yk.control.counters()).touches, 1)
      await yk.control.expireTouchCache()
      assert.equal((await sign()).code, 0)
      const counters = await yk.control.counters()
      assert.equal(counters.touches, 2)
      assert.equal(counters.sign, 3)
      assert.ok((await readFile(join(dir, 'sig'))).length > 0)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('the card at the APDU level: AES management keys, metadata, printed object', () => {
  const ca = createAttestationCa()
  const newCard = (version: [number, number, number]): PivCard =>
    new PivCard({
      pin: '123456',
      puk: '12345678',
      serial: 99,
      version,
      pinTries: 3,
      pukTries: 3,
      managementKey: { algorithm: version[1] >= 7 ? 'aes192' : '3des', key: DEFAULT_MANAGEMENT_KEY },
      keys: {},
      objects: { '5fc109': Buffer.from('88038901aa', 'hex') },
      attestation: createAttestationKey(ca, 99),
      formFactor: 3,
      touchCacheMs: 15_000,
    })
  const apdu = async (card: PivCard, hex: string): Promise<{ sw: string; data: Buffer }> => {
    const raw = Buffer.from(hex, 'hex')
    let answer = await card.transmit(raw)
    let data = answer.subarray(0, -2)
    while (answer[answer.length - 2] === 0x61) {
      answer = await card.transmit(Buffer.from('00c00000', 'hex'))
      data = Buffer.concat([data, answer.subarray(0, -2)])
    }
    return { sw: answer.subarray(-2).toString('hex'), data }
  }
  const withLc = (head: string, body: Buffer): string =>
    `${head}${body.length.toString(16).padStart(2, '0')}${body.toString('hex')}`
  const select = async (card: PivCard): Promise<void> => {
    assert.equal((await apdu(card, '00a4040005a000000308')).sw, '9000')
  }
  /** The client half of mutual authentication, as yubico-piv-tool 2.3+ `lib/ykpiv.c` does it. */
  const authenticate = async (card: PivCard, p1: string, cipher: string, key: Buffer): Promise<string> => {
    const witness = await apdu(card, `0087${p1}9b047c028000`)
    if (witness.sw !== '9000') return witness.sw
    const encrypted = witness.data.subarray(4)
    const decipher = createDecipheriv(cipher, key, null).setAutoPadding(false)
    const plain = Buffer.concat([decipher.update(encrypted), decipher.final()])
    const challenge = randomBytes(plain.length)
    const body = Buffer.concat([
      Buffer.from([0x7c, 4 + 2 * plain.length, 0x80, plain.length]),
      plain,
      Buffer.from([0x81, plain.length]),
      challenge,
    ])
    const answer = await apdu(card, withLc(`0087${p1}9b`, body))
    if (answer.sw !== '9000') return answer.sw
    const encipher = createCipheriv(cipher, key, null).setAutoPadding(false)
    const expected = Buffer.concat([encipher.update(challenge), encipher.final()])
    assert.deepEqual(answer.data.subarray(4), expected, 'the card proves it holds the key')
    return answer.sw
  }

  it('firmware 5.7: AES-192 mutual authentication with the default key; 3DES (P1 03) and a wrong key are refused', async () => {
    const card = newCard([5, 7, 1])
    await select(card)
    assert.equal(await authenticate(card, '03', 'des-ede3', DEFAULT_MANAGEMENT_KEY), '6a86')
    assert.equal(await authenticate(card, '0a', 'aes-192-ecb', randomBytes(24)), '6982')
    assert.equal(card.counters.managementAuth, 0)
    assert.equal(await authenticate(card, '0a', 'aes-192-ecb', DEFAULT_MANAGEMENT_KEY), '9000')
    assert.equal(card.counters.managementAuth, 1)
  })

  it('GET METADATA reports the management key algorithm and default state, which SET MANAGEMENT KEY changes', async () => {
    const card = newCard([5, 7, 1])
    await select(card)
    assert.equal((await apdu(card, '00f7009b')).data.toString('hex'), '01010a02020001050101')
    // SET MANAGEMENT KEY without authentication first.
    const fresh = randomBytes(32)
    const set = withLc('00ffffff', Buffer.concat([Buffer.from([0x0c, 0x9b, 32]), fresh]))
    assert.equal((await apdu(card, set)).sw, '6982')
    assert.equal(await authenticate(card, '0a', 'aes-192-ecb', DEFAULT_MANAGEMENT_KEY), '9000')
    assert.equal((await apdu(card, set)).sw, '9000')
    assert.equal((await apdu(card, '00f7009b')).data.toString('hex'), '01010c02020001050100')
    assert.equal(await authenticate(card, '0c', 'aes-256-ecb', fresh), '9000')
  })

  it('PIN metadata shows the default PIN until CHANGE REFERENCE DATA; printed information needs the PIN', async () => {
    const card = newCard([5, 4, 3])
    await select(card)
    assert.equal((await apdu(card, '00f70080')).data.toString('hex'), '0101ff05010106020303')
    assert.equal((await apdu(card, '00cb3fff055c035fc109')).sw, '6982')
    const pad = (pin: string): string =>
      Buffer.concat([Buffer.from(pin), Buffer.alloc(8 - pin.length, 0xff)]).toString('hex')
    assert.equal((await apdu(card, `0020008008${pad('123456')}`)).sw, '9000')
    const printed = await apdu(card, '00cb3fff055c035fc109')
    assert.deepEqual(
      { sw: printed.sw, data: printed.data.toString('hex') },
      { sw: '9000', data: '530588038901aa' },
    )
    assert.equal((await apdu(card, `0024008010${pad('123456')}${pad('654321')}`)).sw, '9000')
    assert.equal((await apdu(card, '00f70080')).data.toString('hex'), '0101ff05010006020303')
  })

  it('GENERATE needs the management key; ATTEST answers 6A88 for an empty slot', async () => {
    const card = newCard([5, 4, 3])
    await select(card)
    assert.equal((await apdu(card, '0047009c05ac03800114')).sw, '6982')
    assert.equal((await apdu(card, '00f99c00')).sw, '6a88')
    assert.equal(await authenticate(card, '03', 'des-ede3', DEFAULT_MANAGEMENT_KEY), '9000')
    const made = await apdu(card, '0047009c0bac09800114aa0101ab0103')
    assert.equal(made.sw, '9000')
    assert.equal(made.data.subarray(0, 5).toString('hex'), '7f49638661')
    const meta = await apdu(card, '00f7009c')
    assert.equal(meta.data.subarray(0, 10).toString('hex'), '01011402020103030101')
    const attested = await apdu(card, '00f99c00')
    assert.equal(attested.sw, '9000')
    assert.equal(attested.data[0], 0x30)
  })
})
