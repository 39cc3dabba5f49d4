/**
 * Every `docs/<file>.md §N` a comment or a doc cites names a file in docs/ with a numbered heading N,
 * so a contributor can open what the code points at (docs/design.md §6, "Comments say why").
 */
import assert from 'node:assert/strict'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const DOCS = join(ROOT, 'docs')

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return files(path)
    return /\.(ts|md|mjs|sh)$/.test(entry.name) ? [path] : []
  })
}

/** `docs/x.md §1.4`, and in docs/ also `[x](x.md) §1.4` and `x.md §1.4`. */
const CITATION = /(?:docs\/)?([\w-]+\.md)\)? §(\d+(?:\.\d+)?)/g

function headings(doc: string): Set<string> {
  const numbers = new Set<string>()
  for (const match of readFileSync(join(DOCS, doc), 'utf8').matchAll(/^#{2,4} (\d+(?:\.\d+)?)[. ]/gm)) {
    if (match[1] !== undefined) numbers.add(match[1])
  }
  return numbers
}

test('docs/ citations with a section number resolve to a numbered heading', () => {
  const broken: string[] = []
  let seen = 0
  for (const dir of ['src', 'test', 'scripts', 'docs', 'native-config']) {
    for (const file of files(join(ROOT, dir))) {
      for (const match of readFileSync(file, 'utf8').matchAll(CITATION)) {
        const [text, doc, section] = match as unknown as [string, string, string]
        if (!existsSync(join(DOCS, doc))) continue // an upstream file (Version3.md §Sign) or another repo's path
        seen++
        if (!headings(doc).has(section)) broken.push(`${relative(ROOT, file)}: ${text}`)
      }
    }
  }
  assert.ok(seen >= 5, `only ${seen} citations found: the scan is not seeing them`)
  assert.deepEqual(broken, [])
})

test('the three reference docs have numbered sections to cite', () => {
  for (const doc of ['design.md', 'cargo-protocol.md', 'pkcs11-platforms.md']) {
    assert.ok(headings(doc).size >= 5, `${doc} has numbered headings`)
  }
  assert.ok(headings('cargo-protocol.md').has('1.4'), 'cargo-protocol.md §1.4 (the request)')
  assert.ok(headings('pkcs11-platforms.md').has('3'), 'pkcs11-platforms.md §3 (threadpool)')
})
