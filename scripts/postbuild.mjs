// tsc does not set the executable bit; cargo runs the shim directly (it must be an executable
// with a shebang, cargo passes only `--cargo-plugin`), so both bins need it.
import { chmodSync, existsSync } from 'node:fs'
for (const bin of ['dist/src/bin/cargo-pkcs11-agent.js', 'dist/src/bin/cargo-credential-pkcs11.js']) {
  if (existsSync(bin)) chmodSync(bin, 0o755)
}
