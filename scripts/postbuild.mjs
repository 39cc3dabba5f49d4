import { chmodSync, cpSync, existsSync, rmSync } from 'node:fs'

// tsc does not set the executable bit; cargo runs the shim directly (it must be an executable
// with a shebang, cargo passes only `--cargo-plugin`), so both bins need it.
for (const bin of ['dist/src/bin/cargo-pkcs11-agent.cjs', 'dist/src/bin/cargo-credential-pkcs11.js']) {
  if (existsSync(bin)) chmodSync(bin, 0o755)
}

// The token vectors ship in cargo-pkcs11-verify (packages/verify/vectors/, in its `files`), copied
// from the one committed set in test/vectors/tokens/ so the two cannot differ.
rmSync('packages/verify/vectors', { recursive: true, force: true })
cpSync('test/vectors/tokens', 'packages/verify/vectors', { recursive: true })
// Its README links only what its tarball holds: the licences and the three docs a registry reads
// (they link only each other), copied like the vectors.
rmSync('packages/verify/docs', { recursive: true, force: true })
for (const file of ['LICENSE-MIT', 'LICENSE-APACHE']) cpSync(file, `packages/verify/${file}`)
for (const doc of ['verifying-tokens.md', 'registry-kit.md', 'gateway.md'])
  cpSync(`docs/${doc}`, `packages/verify/docs/${doc}`)
