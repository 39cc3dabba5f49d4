import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

/** The TypeScript sources (this file runs from dist/test/unit/). */
const SRC = fileURLToPath(new URL('../../../src/', import.meta.url))

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sources(path)
    return entry.name.endsWith('.ts') ? [path] : []
  })
}

/** Every module specifier a file imports, statically or with `import()`. */
function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8')
  const specifiers: string[] = []
  for (const match of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"]([^'"]+)['"]/g)) {
    if (match[1] !== undefined) specifiers.push(match[1])
  }
  return specifiers
}

const FORBIDDEN_IN_PURE_LAYERS = /^(?:node:)?(?:fs|fs\/promises|net)$|^pkcs11js$/

test('token building, verification, key encodings and policy do no file, socket or device I/O (design.md)', () => {
  const offenders: string[] = []
  for (const layer of ['token', 'verify', 'keys', 'policy']) {
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
