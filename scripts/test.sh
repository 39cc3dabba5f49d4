#!/usr/bin/env bash
# The whole test suite: unit, integration (SoftHSM, swtpm + tpm2-pkcs11, ykcs11 on a virtual PIV
# card, fault injection), end to end (real agent and shim processes, real cargo, verifying registry).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# cargo >= 1.74 is needed for credential providers; rustup installs it in ~/.cargo/bin.
export PATH="$HOME/.cargo/bin:$PATH"

# Only *.test.js: dist/test also holds helpers and fixtures, which are not tests.
# One file at a time: some fixtures own fixed local ports (vpcd 35963 in the fallback without namespaces).
shopt -s globstar nullglob
tests=(dist/test/**/*.test.js)
((${#tests[@]} > 0)) || { echo "test: no compiled tests under dist/test" >&2; exit 1; }
exec node --test --test-concurrency=1 --test-timeout=600000 "${tests[@]}"
