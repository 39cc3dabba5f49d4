#!/usr/bin/env node
// cargo runs `<path> --cargo-plugin` directly (docs/cargo-protocol.md §1.1), so this file needs its shebang and the
// executable bit (scripts/postbuild.mjs).
import { runShim } from '../shim/main.js'

runShim(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (error: unknown) => {
    process.stderr.write(
      `cargo-credential-pkcs11: ${error instanceof Error ? error.message : String(error)}\n`,
    )
    process.exit(1)
  },
)
