/**
 * The configuration side of docs/remote-tokens.md: `p11-kit-client` is a known module name with a
 * multiarch path per Linux architecture, its server address is module environment, the systemd unit
 * opens IP sockets for it only when the address is not a Unix socket, and the audit line carries
 * the module and server it is given.
 */
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { describe, test } from 'node:test'

import { auditEntry } from '../../src/audit/entry.js'
import { needsNetwork } from '../../src/cli/install-service.js'
import { formatEntry } from '../../src/cli/log.js'
import { parseConfig } from '../../src/config/load.js'
import { LIMITS } from '../../src/lib/limits.js'
import { knownModules } from '../../src/lib/package-files.js'
import { platformKey, resolveModulePath } from '../../src/pkcs11/modules.js'
import { readIntent } from '../fixtures/pinentry/harness.js'

const ENV = { HOME: '/home/u', XDG_STATE_HOME: '/state' }

function config(tokenTable: string): ReturnType<typeof parseConfig> {
  return parseConfig(
    `[tokens.fleet]\n${tokenTable}\nlabel = "fleet"\npin-source = "env"\npin-env = "FLEET_PIN"\n\n` +
      '[registries.work]\nindex = "sparse+https://registry.example/index/"\nread-key = { token = "fleet", label = "cargo" }\n',
    'c',
    ENV,
  )
}

describe('p11-kit-client as a token module', () => {
  test('a known name with the Debian multiarch path for each Linux architecture; the proxy is not a fallback', () => {
    const table = knownModules()
    assert.deepEqual(table['p11-kit-client']?.['linux-x64'], [
      '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so',
    ])
    assert.deepEqual(table['p11-kit-client']?.['linux-arm64'], [
      '/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so',
    ])
    assert.ok(!(table['p11-kit']?.['linux-x64'] ?? []).some((p) => p.includes('p11-kit-client')))
    const candidates = table['p11-kit-client']?.[platformKey()] ?? []
    const installed = candidates.find((p) => existsSync(p))
    if (installed !== undefined) assert.equal(resolveModulePath('p11-kit-client'), installed)
    else assert.throws(() => resolveModulePath('p11-kit-client'), { code: 'MODULE_LOAD_FAILED' })
  })

  test('the server address is module-env; the unit opens IP sockets only for a non-Unix address', () => {
    const unix = config(
      'module = "p11-kit-client"\nmodule-env = { P11_KIT_SERVER_ADDRESS = "unix:path=/run/user/1000/p11-kit/fleet.sock" }',
    )
    assert.deepEqual(unix.tokens['fleet']?.moduleEnv, {
      P11_KIT_SERVER_ADDRESS: 'unix:path=/run/user/1000/p11-kit/fleet.sock',
    })
    assert.equal(needsNetwork(unix), false)
    assert.equal(needsNetwork(config('module = "p11-kit-client"')), false, 'default: the runtime directory')
    assert.equal(
      needsNetwork(
        config(
          'module = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"\nmodule-env = { P11_KIT_SERVER_ADDRESS = "vsock:cid=3;port=9000" }',
        ),
      ),
      true,
    )
    // A vendor's network HSM module is not known to be local.
    assert.equal(needsNetwork(config('module = "/opt/vendor/lib/libvendorpkcs11.so"')), true)
    assert.equal(needsNetwork(config('module = "softhsm"')), false)
  })

  test('the audit line names the token, the module and the server, each cut to the field limit', () => {
    const server = `unix:path=/run/${'x'.repeat(LIMITS.auditFieldMaxChars)}`
    const entry = auditEntry(readIntent(), {
      result: 'signed',
      token: 't',
      device: { token: 'fleet', module: '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so', server },
    })
    assert.equal(entry.device?.token, 'fleet')
    assert.equal(entry.device?.module, '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so')
    assert.equal(entry.device?.server?.length, LIMITS.auditFieldMaxChars)
    assert.ok(entry.device?.server?.startsWith('unix:path=/run/'))
    const local = auditEntry(readIntent(), {
      result: 'signed',
      token: 't',
      device: { token: 'ci', module: '/usr/lib/softhsm/libsofthsm2.so' },
    })
    assert.deepEqual(local.device, { token: 'ci', module: '/usr/lib/softhsm/libsofthsm2.so' })
    assert.equal(auditEntry(readIntent(), { result: 'signed', token: 't' }).device, undefined)
    // `cargo-pkcs11-agent log` says which server signed; a local module adds nothing to the line.
    assert.match(formatEntry(entry), /; via p11-kit server unix:path=\/run\/x+…?/)
    assert.doesNotMatch(formatEntry(local), /via/)
  })
})
