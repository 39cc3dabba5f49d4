import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

/** The TypeScript sources, ESM and CommonJS (this file runs from dist/test/unit/). */
const SRC = fileURLToPath(new URL('../../../src/', import.meta.url))

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sources(path)
    return /\.c?ts$/.test(entry.name) ? [path] : []
  })
}

/** Every module specifier a file imports, statically, with `import()` or with `import x = require()`. */
function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8')
  const specifiers: string[] = []
  for (const match of text.matchAll(
    /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|\bimport\s+)['"]([^'"]+)['"]/g,
  )) {
    if (match[1] !== undefined) specifiers.push(match[1])
  }
  return specifiers
}

/**
 * Which layer may import which: every arrow points down the pipeline (docs/design.md, "Layout").
 * A folder not listed here fails the test, so a new folder has to be placed in the picture.
 */
const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  bin: ['cli', 'shim', 'lib'],
  cli: [
    'gateway',
    'registry',
    'agent',
    'shim',
    'protocol',
    'policy',
    'config',
    'verify',
    'token',
    'signer',
    'pkcs11',
    'keys',
    'audit',
    'cargo',
    'lib',
  ],
  agent: [
    'protocol',
    'policy',
    'config',
    'verify',
    'token',
    'signer',
    'pkcs11',
    'keys',
    'audit',
    'cargo',
    'lib',
  ],
  shim: ['protocol', 'config', 'cargo', 'lib'],
  gateway: ['registry', 'verify', 'config', 'lib'],
  registry: ['verify', 'token', 'keys', 'cargo', 'lib'],
  protocol: ['cargo', 'lib'],
  policy: ['cargo', 'lib'],
  config: ['keys', 'cargo', 'lib'],
  verify: ['token', 'keys', 'cargo', 'lib'],
  token: ['signer', 'keys', 'cargo', 'lib'],
  signer: ['pkcs11', 'keys', 'lib'],
  pkcs11: ['keys', 'lib'],
  audit: ['cargo', 'lib'],
  keys: ['lib'],
  cargo: ['lib'],
  lib: [],
  // src/index.ts: the public library surface for registry operators and tools.
  '.': ['verify', 'token', 'signer', 'keys', 'cargo', 'lib'],
}

/** The top-level folder of a path under src/ ('.' for src/index.ts). */
function layerOf(path: string): string {
  const rel = relative(SRC, path)
  const first = rel.split(sep)[0] ?? ''
  return rel.includes(sep) ? first : '.'
}

test('every import points down the layer matrix (no arrow runs back up)', () => {
  const offenders: string[] = []
  for (const file of sources(SRC)) {
    const from = layerOf(file)
    const allowed = ALLOWED[from]
    if (allowed === undefined) {
      offenders.push(`${relative(SRC, file)}: folder ${from} is not in the layer matrix`)
      continue
    }
    for (const specifier of imports(file)) {
      if (!specifier.startsWith('.')) continue
      const to = layerOf(resolve(dirname(file), specifier))
      if (to !== from && !allowed.includes(to))
        offenders.push(`${relative(SRC, file)} (${from}) imports ${specifier} (${to})`)
    }
  }
  assert.deepEqual(offenders, [])
})

test('the layer matrix itself has no cycle, so it is a picture of layers', () => {
  const visiting = new Set<string>()
  const done = new Set<string>()
  const visit = (layer: string, path: string[]): void => {
    if (done.has(layer)) return
    assert.ok(!visiting.has(layer), `cycle: ${[...path, layer].join(' -> ')}`)
    visiting.add(layer)
    for (const next of ALLOWED[layer] ?? []) visit(next, [...path, layer])
    visiting.delete(layer)
    done.add(layer)
  }
  for (const layer of Object.keys(ALLOWED)) visit(layer, [])
})

test('the matrix check sees an upward arrow (guards against a scan that finds nothing)', () => {
  assert.equal(layerOf(join(SRC, 'pkcs11', 'binding.ts')), 'pkcs11')
  assert.equal(layerOf(join(SRC, 'agent', 'pipeline', 'run.ts')), 'agent')
  assert.equal(layerOf(join(SRC, 'index.ts')), '.')
  assert.ok(imports(join(SRC, 'bin', 'cargo-pkcs11-agent.cts')).includes('../lib/limits.js'))
  assert.ok(!(ALLOWED['pkcs11'] ?? []).includes('signer'))
  assert.ok(imports(join(SRC, 'agent', 'pipeline', 'run.ts')).some((s) => s.includes('/policy/')))
})

const FORBIDDEN_IN_PURE_LAYERS = /^(?:node:)?(?:fs|fs\/promises|net)$|^pkcs11js$/

test('token building, verification, key encodings, cargo, protocol and policy do no file, socket or device I/O', () => {
  const offenders: string[] = []
  for (const layer of ['token', 'verify', 'keys', 'policy', 'cargo']) {
    for (const file of sources(join(SRC, layer))) {
      for (const specifier of imports(file)) {
        if (FORBIDDEN_IN_PURE_LAYERS.test(specifier))
          offenders.push(`${relative(SRC, file)} imports ${specifier}`)
      }
    }
  }
  assert.deepEqual(offenders, [])
})

test('only src/pkcs11/binding.ts imports pkcs11js', () => {
  const importers = sources(SRC)
    .filter((file) => imports(file).includes('pkcs11js'))
    .map((file) => relative(SRC, file))
  assert.ok(
    importers.every((file) => file === join('pkcs11', 'binding.ts')),
    importers.join(', '),
  )
})

test('the scan sees real imports (guards against a regex that matches nothing)', () => {
  assert.ok(imports(join(SRC, 'token', 'build.ts')).includes('paseto'))
  assert.ok(imports(join(SRC, 'cli', 'main.ts')).includes('./verify.js'))
})
