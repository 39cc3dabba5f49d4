import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'

import { parseConfig } from '../../src/config/load.js'
import {
  AGENT_ROWS,
  closestKey,
  effectiveConfirm,
  REGISTRY_ROWS,
  TOKEN_ROWS,
  type Row,
} from '../../src/config/schema.js'
import { AgentError } from '../../src/lib/errors.js'
import { LIMITS } from '../../src/lib/limits.js'
import { packageFile } from '../../src/lib/package-files.js'
import { DEFAULT_POLICY_CONFIG } from '../../src/policy/config.js'

const ENV = { HOME: '/home/u', XDG_STATE_HOME: '/state' }

const GOOD = `
[agent]
headless = false
touch-notice-after-ms = 800

[tokens.yubikey]
module = "ykcs11"
serial = "12345678"
kind = "yubikey"
pin-source = "tty"

[tokens.ci]
module = "/usr/lib/softhsm/libsofthsm2.so"
label = "ci"
pin-source = "env"
pin-env = "CI_TOKEN_PIN"

[registries.my-registry]
index = "sparse+https://registry.example/index/"
read-key = { token = "yubikey", label = "cargo-read" }
mutation-key = { token = "yubikey", label = "cargo-publish", id = "0A" }
confirm = "touch"
token-max-age-seconds = 300

[registries.ci]
index = "sparse+http://127.0.0.1:8080/index/"
read-key = { token = "ci", id = "01" }
`

function problems(text: string, env: Record<string, string> = ENV): string {
  try {
    parseConfig(text, 'config.toml', env)
  } catch (error) {
    assert.ok(error instanceof AgentError, String(error))
    assert.equal(error.code, 'CONFIG_INVALID')
    assert.ok(error.remedy !== undefined && error.remedy.includes('docs/configuration.md'))
    return error.message
  }
  assert.fail('config was accepted')
}

describe('configuration', () => {
  test('a full config becomes a typed, frozen object with defaults filled', () => {
    const config = parseConfig(GOOD, 'config.toml', ENV)
    assert.equal(config.agent.touchNoticeAfterMs, 800)
    assert.equal(config.agent.pinCacheIdleSeconds, 900)
    assert.equal(config.agent.pinCacheMaxSeconds, 28_800)
    assert.equal(config.agent.notify, true)
    assert.equal(config.agent.auditLog, '/state/cargo-pkcs11-agent/audit.jsonl')
    const my = config.registries['my-registry']
    assert.ok(my !== undefined)
    assert.deepEqual(my.readKey, { token: 'yubikey', label: 'cargo-read' })
    assert.deepEqual(my.mutationKey, { token: 'yubikey', label: 'cargo-publish', id: '0a' })
    assert.equal(my.tokenMaxAgeSeconds, 300)
    assert.equal(my.confirm, 'touch')
    const ci = config.registries['ci']
    assert.ok(ci !== undefined)
    assert.equal(ci.mutationKey, ci.readKey, 'mutation-key defaults to read-key')
    assert.equal(ci.confirm, undefined, 'an unset confirm stays unset')
    assert.equal(effectiveConfirm(ci).mode, 'prompt')
    assert.equal(ci.tokenMaxAgeSeconds, 60)
    assert.equal(ci.mutationsPerHour, 30)
    assert.equal(ci.generateOnLogin, false)
    assert.equal(config.tokens['ci']?.pinEnv, 'CI_TOKEN_PIN')
    assert.equal(config.tokens['yubikey']?.confirmFinalTry, true)
    assert.ok(
      Object.isFrozen(config) &&
        Object.isFrozen(config.registries) &&
        Object.isFrozen(my) &&
        Object.isFrozen(config.agent),
    )
  })

  test('headless defaults to true under CI=true', () => {
    assert.equal(parseConfig('', 'c', { ...ENV, CI: 'true' }).agent.headless, true)
    assert.equal(parseConfig('', 'c', ENV).agent.headless, false)
  })

  test('an unknown key is rejected with a "did you mean" hint', () => {
    const message = problems(GOOD.replace('touch-notice-after-ms', 'touch-notice-after'))
    assert.match(message, /agent\.touch-notice-after: unknown key; did you mean `touch-notice-after-ms`\?/)
    assert.match(
      problems(GOOD.replace('pin-source = "tty"', 'pin_source = "tty"')),
      /tokens\.yubikey\.pin_source: unknown key; did you mean `pin-source`\?/,
    )
    assert.match(
      problems(`${GOOD}\n[registry]\nx = 1\n`),
      /registry: unknown key; did you mean `registries`\?/,
    )
    assert.match(
      problems(GOOD.replace('id = "0A"', 'ids = "0A"')),
      /mutation-key\.ids: unknown key; did you mean `id`\?/,
    ) // A message ending in "?" is followed by the remedy without a stray "." (docs/configuration.md example).
    try {
      parseConfig(GOOD.replace('pin-source = "tty"', 'pin_source = "tty"'), 'config.toml', ENV)
      assert.fail('config was accepted')
    } catch (error) {
      assert.ok(error instanceof AgentError)
      assert.match(error.describe(), /did you mean `pin-source`\? Fix the keys named above/)
    }
  })

  test('bad index URLs name the key and the fix', () => {
    assert.match(
      problems(GOOD.replace('sparse+https://registry.example/index/', 'registry.example/index')),
      /registries\.my-registry\.index: "registry\.example\/index" is not a URL; write it exactly as cargo sends it/,
    )
    assert.match(
      problems(
        GOOD.replace('sparse+https://registry.example/index/', 'sparse+https://registry.example/index'),
      ),
      /registries\.my-registry\.index: a sparse index URL ends with "\/"/,
    )
    assert.match(
      problems(
        GOOD.replace('sparse+https://registry.example/index/', 'sparse+ftp://registry.example/index/'),
      ),
      /must be sparse\+http:\/\/ or sparse\+https:\/\//,
    )
    assert.match(
      problems(GOOD.replace('sparse+https://registry.example/index/', 'sparse+http://127.0.0.1:8080/index/')),
      /registries\.ci\.index: the same index is already bound by \[registries\.my-registry\]/,
    )
  })

  test('a key reference to an undefined token says which table to add', () => {
    const message = problems(
      GOOD.replace(
        'read-key = { token = "yubikey", label = "cargo-read" }',
        'read-key = { token = "yubkey", label = "cargo-read" }',
      ),
    )
    assert.match(
      message,
      /registries\.my-registry\.read-key\.token: "yubkey" is not defined; add a \[tokens\.yubkey\] table or did you mean "yubikey"\?/,
    )
    assert.match(
      problems(GOOD.replace('read-key = { token = "ci", id = "01" }', '')),
      /registries\.ci\.read-key: missing/,
    )
    assert.match(
      problems(GOOD.replace('read-key = { token = "ci", id = "01" }', 'read-key = { token = "ci" }')),
      /registries\.ci\.read-key: needs `label` or `id`/,
    )
  })

  test('wrong types and values name the key and the allowed values; all problems are listed at once', () => {
    const message = problems(
      GOOD.replace('confirm = "touch"', 'confirm = "tuch"')
        .replace('token-max-age-seconds = 300', 'token-max-age-seconds = 3600')
        .replace('headless = false', 'headless = "no"'),
    )
    assert.match(message, /has 3 problems/)
    assert.match(
      message,
      /registries\.my-registry\.confirm: "tuch" is not one of "touch", "prompt", "none"; did you mean "touch"\?/,
    )
    assert.match(message, /token-max-age-seconds: must be a whole number from 1 to 900/)
    assert.match(message, /agent\.headless: must be true or false/)
  })

  test('numeric ranges are the documented ones (docs/configuration.md)', () => {
    const message = problems(
      GOOD.replace(
        'touch-notice-after-ms = 800',
        'touch-notice-after-ms = 20001\npin-cache-max-seconds = 604801',
      ).replace('token-max-age-seconds = 300', 'token-max-age-seconds = 300\nmutations-per-hour = 100001'),
    )
    assert.match(message, /has 3 problems/)
    assert.match(message, /agent\.touch-notice-after-ms: must be a whole number from 0 to 20000/)
    assert.match(message, /agent\.pin-cache-max-seconds: must be a whole number from 0 to 604800/)
    assert.match(
      message,
      /registries\.my-registry\.mutations-per-hour: must be a whole number from 0 to 100000/,
    )
    const edges = parseConfig(
      GOOD.replace(
        'touch-notice-after-ms = 800',
        'touch-notice-after-ms = 20000\npin-cache-max-seconds = 604800',
      ),
      'config.toml',
      ENV,
    )
    assert.equal(edges.agent.touchNoticeAfterMs, 20_000)
    assert.equal(edges.agent.pinCacheMaxSeconds, 604_800)
  })

  test('PIN sources need their companion keys', () => {
    assert.match(
      problems(GOOD.replace('pin-env = "CI_TOKEN_PIN"', '')),
      /tokens\.ci\.pin-env: missing; pin-source = "env" needs the variable name/,
    )
    assert.match(
      problems(GOOD.replace('pin-source = "env"\npin-env = "CI_TOKEN_PIN"', 'pin-source = "file"')),
      /tokens\.ci\.pin-file: missing/,
    )
    // A relative pin-file is refused as relative, and not also reported missing.
    const relative = problems(
      GOOD.replace(
        'pin-source = "env"\npin-env = "CI_TOKEN_PIN"',
        'pin-source = "file"\npin-file = "ci.pin"',
      ),
    )
    assert.match(relative, /has a problem:\n {2}tokens\.ci\.pin-file: must be an absolute path$/)
    assert.doesNotMatch(relative, /missing/)
    assert.match(
      problems(GOOD.replace('pin-source = "tty"', 'pin-source = "keyboard"')),
      /tokens\.yubikey\.pin-source: "keyboard" is not one of/,
    )
    assert.match(
      problems(GOOD.replace('module = "ykcs11"', 'module = "lib/ykcs11.so"')),
      /tokens\.yubikey\.module: a module path must be absolute/,
    )
    // A module name is one of native-config/modules.json's, with a did-you-mean; a path may be
    // absent here (the agent checks it when it starts, doctor per token).
    assert.match(
      problems(GOOD.replace('module = "ykcs11"', 'module = "ykcs"')),
      /tokens\.yubikey\.module: unknown PKCS#11 module name "ykcs" \(known: softhsm, ykcs11, .*p11-kit-client; or the library's absolute path\); did you mean "ykcs11"\?/,
    )
    assert.doesNotMatch(problems(GOOD.replace('module = "ykcs11"', 'module = "gadget"')), /did you mean/)
    parseConfig(GOOD.replace('module = "ykcs11"', 'module = "/opt/absent/libpkcs11.so"'), 'c.toml', ENV)
  })

  test('module-env: variables for the PKCS#11 module, one value per variable across tokens', () => {
    const withEnv = GOOD.replace(
      'label = "ci"',
      'label = "ci"\nmodule-env = { SOFTHSM2_CONF = "/a/softhsm2.conf" }',
    )
    assert.deepEqual(parseConfig(withEnv, 'c', ENV).tokens['ci']?.moduleEnv, {
      SOFTHSM2_CONF: '/a/softhsm2.conf',
    })
    assert.deepEqual(parseConfig(GOOD, 'c', ENV).tokens['ci']?.moduleEnv, {})
    const clash = withEnv.replace(
      'serial = "12345678"',
      'serial = "12345678"\nmodule-env = { SOFTHSM2_CONF = "/b/softhsm2.conf" }',
    )
    assert.match(problems(clash), /module-env\.SOFTHSM2_CONF: conflicts with another token's SOFTHSM2_CONF/)
    assert.match(
      problems(withEnv.replace('SOFTHSM2_CONF = "/a/softhsm2.conf"', '"BAD-NAME" = "x"')),
      /is not an environment variable name/,
    )
  })

  test('TOML syntax errors give the line', () => {
    try {
      parseConfig('[agent]\nheadless = \n', 'config.toml', ENV)
      assert.fail('accepted')
    } catch (error) {
      assert.ok(error instanceof AgentError)
      assert.equal(error.code, 'CONFIG_INVALID')
      assert.match(error.message, /config\.toml is not valid TOML at line 2/)
    }
  })

  test('defaults are the documented ones, and the policy has the same', () => {
    const config = parseConfig(
      '[tokens.t]\nmodule = "softhsm"\nlabel = "t"\n[registries.r]\nindex = "sparse+http://127.0.0.1:8080/index/"\nread-key = { token = "t", label = "k" }\n',
      'config.toml',
      ENV,
    )
    // docs/configuration.md: 1000 ms, 900 s, 28800 s, 30 per hour, 60 s, confirm "prompt".
    assert.equal(config.agent.touchNoticeAfterMs, 1_000)
    assert.equal(config.agent.pinCacheIdleSeconds, 900)
    assert.equal(config.agent.pinCacheMaxSeconds, 28_800)
    const r = config.registries['r']
    assert.ok(r !== undefined)
    assert.equal(r.mutationsPerHour, 30)
    assert.equal(r.tokenMaxAgeSeconds, 60)
    assert.equal(r.confirm, undefined)
    assert.equal(effectiveConfirm(r).mode, 'prompt')
    assert.equal(r.forwarded, 'read')
    assert.equal(DEFAULT_POLICY_CONFIG.touchNoticeAfterMs, config.agent.touchNoticeAfterMs)
    assert.equal(DEFAULT_POLICY_CONFIG.pinCacheIdleSeconds, config.agent.pinCacheIdleSeconds)
    assert.equal(DEFAULT_POLICY_CONFIG.pinCacheMaxSeconds, config.agent.pinCacheMaxSeconds)
    assert.deepEqual(
      { confirm: LIMITS.defaultConfirm, mutationsPerHour: LIMITS.defaultMutationsPerHour },
      { confirm: effectiveConfirm(r).mode, mutationsPerHour: r.mutationsPerHour },
    )
  })

  test('an unset confirm is touch on a touch always/cached mutation key, else the default; a set one stays', () => {
    const parse = (confirm: string): NonNullable<ReturnType<typeof parseConfig>['registries'][string]> => {
      const r = parseConfig(
        `[tokens.t]\nmodule = "ykcs11"\n[registries.r]\nindex = "sparse+http://127.0.0.1:8080/index/"\nread-key = { token = "t", id = "02" }\n${confirm}`,
        'config.toml',
        ENV,
      ).registries['r']
      assert.ok(r !== undefined)
      return r
    }
    const unset = parse('')
    assert.deepEqual(effectiveConfirm(unset, { key: 'key 9c', touchPolicy: 'always' }), {
      mode: 'touch',
      source: 'default',
      touchAttested: true,
      reason: 'touch — default, key 9c attests touch always',
    })
    assert.equal(effectiveConfirm(unset, { key: 'key 9c', touchPolicy: 'cached' }).mode, 'touch')
    assert.deepEqual(effectiveConfirm(unset, { key: 'key 9c', touchPolicy: 'never' }), {
      mode: LIMITS.defaultConfirm,
      source: 'default',
      touchAttested: false,
      reason: 'prompt — default, key 9c attests touch never',
    })
    assert.equal(effectiveConfirm(unset, { key: 'key 9c', touchPolicy: undefined }).mode, 'prompt')
    assert.match(
      effectiveConfirm(unset, { key: 'key 9c', unread: 'no YubiKey is inserted' }).reason,
      /^prompt — default, the touch policy of key 9c could not be read \(no YubiKey is inserted\)$/,
    )
    assert.equal(effectiveConfirm(unset).mode, 'prompt', 'no policy to read: the default')
    const none = parse('confirm = "none"\n')
    assert.deepEqual(effectiveConfirm(none, { key: 'key 9c', touchPolicy: 'always' }), {
      mode: 'none',
      source: 'config',
      touchAttested: true,
      reason: 'none — set in the config, key 9c attests touch always',
    })
    assert.equal(
      effectiveConfirm(parse('confirm = "prompt"\n'), { key: 'k', touchPolicy: 'always' }).mode,
      'prompt',
    )
  })

  test('an explicit confirm = "touch" is attested only by a touch always/cached key, and warns otherwise', () => {
    const r = parseConfig(
      `[tokens.t]\nmodule = "softhsm"\nlabel = "x"\n[registries.r]\nindex = "sparse+http://127.0.0.1:8080/index/"\nread-key = { token = "t", label = "k" }\nconfirm = "touch"\n`,
      'config.toml',
      ENV,
    ).registries['r']
    assert.ok(r !== undefined)
    for (const touchPolicy of ['always', 'cached']) {
      const attested = effectiveConfirm(r, { key: 'key 9c', touchPolicy })
      assert.equal(attested.mode, 'touch')
      assert.equal(attested.touchAttested, true, touchPolicy)
      assert.equal(attested.warning, undefined, touchPolicy)
    }
    const soft = effectiveConfirm(r)
    assert.equal(soft.mode, 'touch', 'what the operator asserted is kept')
    assert.equal(soft.touchAttested, false)
    assert.equal(
      soft.warning,
      'registry r: confirm = "touch" but the mutation key (token "t" label "k") shows no touch policy: the agent cannot check that the device asks for a touch, so a reload counts it as no confirmation, and forwarded mutations are asked in the agent\'s pinentry',
    )
    for (const mutation of [
      { key: 'key 9c', touchPolicy: undefined },
      { key: 'key 9c', unread: 'no YubiKey is inserted' },
    ]) {
      const seen = effectiveConfirm(r, mutation)
      assert.equal(seen.touchAttested, false)
      assert.match(
        seen.warning ?? '',
        /^registry r: confirm = "touch" but .*key 9c.*: the agent cannot check/,
      )
    }
  })

  test('closestKey() hints only near misses', () => {
    assert.equal(closestKey('index-ur', ['index', 'index-url']), 'index-url')
    assert.equal(closestKey('completely-different', ['index', 'subject']), undefined)
  })
})

const DOCS = readFileSync(packageFile('docs/configuration.md'), 'utf8')

/** The key tables of docs/configuration.md: heading → one entry per documented key. */
function documentedKeys(): Map<string, Map<string, { type: string; default: string; meaning: string }>> {
  const sections = new Map<string, Map<string, { type: string; default: string; meaning: string }>>()
  let current: Map<string, { type: string; default: string; meaning: string }> | undefined
  for (const line of DOCS.split('\n')) {
    if (line.startsWith('## ')) {
      current = new Map()
      sections.set(line.slice(3).trim(), current)
    } else if (current !== undefined && line.startsWith('| `')) {
      const [keys = '', type = '', def = '', meaning = ''] = line
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((cell) => cell.trim())
      for (const [, key] of keys.matchAll(/`([^`]+)`/g))
        if (key !== undefined) current.set(key, { type, default: def, meaning })
    }
  }
  return sections
}

/** How the docs write a default value in the default column. */
function documentedDefault(value: unknown): string {
  if (typeof value === 'number') return String(value)
  if (typeof value === 'string') return `\`"${value}"\``
  return `\`${JSON.stringify(value)}\``
}

describe('docs/configuration.md and the schema rows', () => {
  const sections = documentedKeys()
  const schema: [string, Readonly<Record<string, Row<unknown>>>][] = [
    ['`[agent]`', AGENT_ROWS],
    ['`[tokens.NAME]`', TOKEN_ROWS],
    ['`[registries.NAME]`', REGISTRY_ROWS],
  ]
  for (const [heading, rows] of schema) {
    test(`${heading}: the docs list every key, and no key that does not exist`, () => {
      const documented = sections.get(heading)
      assert.ok(documented !== undefined, `docs/configuration.md has a "## ${heading}" section`)
      assert.deepEqual(
        [...documented.keys()].sort(),
        Object.values(rows)
          .map((row) => row.key)
          .sort(),
      )
    })

    test(`${heading}: documented ranges, choices, defaults and meanings are the schema's`, () => {
      const documented = sections.get(heading)
      assert.ok(documented !== undefined)
      for (const row of Object.values(rows)) {
        const doc = documented.get(row.key)
        assert.ok(doc !== undefined, row.key)
        const { range, choices, keys } = row.type
        if (range !== undefined) assert.equal(doc.type, `${range[0]}–${range[1]}`, row.key)
        if (choices !== undefined)
          assert.deepEqual(
            [...doc.type.matchAll(/`"([^"]+)"`/g)].map((m) => m[1]).sort(),
            [...choices].sort(),
            row.key,
          )
        if (keys !== undefined)
          assert.equal(
            doc.type,
            `\`{ ${keys.map((k) => (k.required ? k.key : `${k.key}?`)).join(', ')} }\``,
            row.key,
          )
        assert.equal(doc.default === 'required', row.required !== undefined, `${row.key} required`)
        if (row.default !== undefined && typeof row.default !== 'function')
          assert.equal(doc.default, documentedDefault(row.default), `${row.key} default`)
        if (row.unset !== undefined)
          assert.equal(doc.default, row.unset, `${row.key}: how an unset key resolves`)
        assert.ok(
          doc.meaning.replaceAll('`', '').replaceAll('**', '').startsWith(row.doc),
          `${row.key}: "${doc.meaning}" starts with "${row.doc}"`,
        )
      }
    })
  }

  test('the full example validates', () => {
    const example = /## Full example\n\n```toml\n([\s\S]*?)```/.exec(DOCS)?.[1]
    assert.ok(example !== undefined)
    const config = parseConfig(example, 'docs/configuration.md', ENV)
    assert.deepEqual(Object.keys(config.tokens), ['yubikey', 'tpm', 'hsm'])
    assert.deepEqual(Object.keys(config.registries), ['work', 'ci-mirror'])
    assert.equal(config.agent.releaseAfterIdleSeconds, 600)
  })
})
