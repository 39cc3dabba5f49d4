// Builds the CommonJS copy of the shim (tsconfig.shim.json) into dist/cjs/ and marks it as
// CommonJS (the package is "type": "module"), executable, with its shebang (tsc keeps it).
// Why CommonJS: see tsconfig.shim.json. Run after `tsc -p tsconfig.json`.
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
try {
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.shim.json'], { stdio: 'inherit' })
} catch {
  // tsc still emits on type errors (like the main build); the type errors were printed above.
}
mkdirSync('dist/cjs', { recursive: true })
writeFileSync('dist/cjs/package.json', '{ "type": "commonjs" }\n')
chmodSync('dist/cjs/src/bin/cargo-credential-pkcs11.js', 0o755)
