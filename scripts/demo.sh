#!/usr/bin/env bash
# npm run demo [-- --keep | --stop | stop]
#
# Runs the agent plus a demo: a key on a PKCS#11 token (a SoftHSM token under .state/demo unless
# CARGO_PKCS11_DEMO_MODULE names a device), a local verifying registry that knows only that key's
# k3.public, and the real cargo publishing, yanking and downloading through the credential provider.
#
# Afterwards the agent and the registry keep running so you can try cargo yourself (interactive
# default), or everything is stopped (--stop; the default when CI=true or stdin is not a terminal).
# `npm run demo -- stop` stops a demo left running.
#
# Environment: CARGO_PKCS11_DEMO_PIN (user PIN; default: a random PIN kept only in this process and the
# agent's environment), CARGO_PKCS11_DEMO_MODULE / _TOKEN_LABEL / _KEY_LABEL (use an existing device
# and key instead of SoftHSM), DEMO_STATE_DIR (default .state/demo), DEMO_SKIP_SETUP=1 (already built).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${DEMO_STATE_DIR:-$ROOT/.state/demo}
# The programs package.json installs (the shim may ship as an ESM or a CommonJS build).
bin_of() { node -e 'console.log(require(process.argv[1]).bin[process.argv[2]])' "$ROOT/package.json" "$1"; }
AGENT_BIN=$ROOT/$(bin_of cargo-pkcs11-agent)
SHIM_BIN=$ROOT/$(bin_of cargo-credential-pkcs11)
REGISTRY_MAIN=$ROOT/dist/test/fixtures/registry/main.js
# RFC 3231 recommends up to 15 minutes; 2 minutes keeps the demo honest about short-lived tokens.
TOKEN_MAX_AGE=120

if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi
note() { printf '   %s\n' "$*"; }
die() {
  printf 'demo: %s\n' "$1" >&2
  [ $# -gt 1 ] && printf 'demo: %s\n' "$2" >&2
  exit 1
}

stop_demo() {
  for name in agent registry; do
    local pidfile=$STATE/$name.pid
    [ -f "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    # Only a process we started: the pid file names it and its command line must be ours.
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$STATE"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
      note "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
  done
  return 0
}

MODE=auto
case "${1:-}" in
  stop)
    stop_demo
    exit 0
    ;;
  --keep) MODE=keep ;;
  --stop) MODE=stop ;;
  '') ;;
  *) die "unknown argument: $1" "usage: npm run demo [-- --keep | --stop | stop]" ;;
esac
if [ "$MODE" = auto ]; then
  if [ "${CI:-}" = true ] || [ ! -t 0 ]; then MODE=stop; else MODE=keep; fi
fi

say "1. set-up: packages and build (scripts/setup.sh)"
# DEMO_SKIP_SETUP=1: the caller has built already (test/e2e/demo.test.ts runs the demo from dist/).
if [ "${DEMO_SKIP_SETUP:-}" = 1 ]; then note "skipped (DEMO_SKIP_SETUP=1)"; else bash scripts/setup.sh; fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found" "install Rust with rustup (cargo >= 1.74 is needed for credential providers)"
note "$(cargo --version)"
for f in "$AGENT_BIN" "$SHIM_BIN" "$REGISTRY_MAIN"; do
  [ -f "$f" ] || die "missing $f" "run npm run build and check its errors"
done

# A previous demo's processes and files go first: every run starts from an empty registry and token.
stop_demo
rm -rf "$STATE"
mkdir -p "$STATE"
chmod 700 "$STATE"

cleanup_on_failure() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    printf '\ndemo: FAILED (exit %s); logs: %s/agent.log %s/registry.log\n' "$rc" "$STATE" "$STATE" >&2
    stop_demo >&2
  fi
}
trap cleanup_on_failure EXIT

# The PIN lives in this process's environment and the agent's, never in argv or a file:
# pkcs11-tool reads it through `env:VAR`, the agent through pin-source = "env".
if [ -z "${CARGO_PKCS11_DEMO_PIN:-}" ]; then
  CARGO_PKCS11_DEMO_PIN=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ' | cut -c1-8)
  while [ ${#CARGO_PKCS11_DEMO_PIN} -lt 6 ]; do CARGO_PKCS11_DEMO_PIN="${CARGO_PKCS11_DEMO_PIN}7"; done
fi
export CARGO_PKCS11_DEMO_PIN

if [ -n "${CARGO_PKCS11_DEMO_MODULE:-}" ]; then
  MODULE=$CARGO_PKCS11_DEMO_MODULE
  TOKEN_LABEL=${CARGO_PKCS11_DEMO_TOKEN_LABEL:?set CARGO_PKCS11_DEMO_TOKEN_LABEL to the device token label}
  KEY_LABEL=${CARGO_PKCS11_DEMO_KEY_LABEL:?set CARGO_PKCS11_DEMO_KEY_LABEL to the P-384 key label on it}
  KIND=hsm
  say "2. device: $MODULE, token '$TOKEN_LABEL', key '$KEY_LABEL' (from CARGO_PKCS11_DEMO_MODULE)"
else
  MODULE=/usr/lib/softhsm/libsofthsm2.so
  TOKEN_LABEL=demo
  KEY_LABEL=cargo
  KIND=softhsm
  say "2. no hardware configured: a SoftHSM token in $STATE/softhsm, key generated on it"
  mkdir -p "$STATE/softhsm/tokens"
  chmod 700 "$STATE/softhsm" "$STATE/softhsm/tokens"
  sed "s|@TOKENDIR@|$STATE/softhsm/tokens|" softhsm/softhsm2.conf.template >"$STATE/softhsm/softhsm2.conf"
  export SOFTHSM2_CONF=$STATE/softhsm/softhsm2.conf
  # The SO PIN is needed only to initialise this throwaway token.
  CARGO_PKCS11_DEMO_SO_PIN=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  export CARGO_PKCS11_DEMO_SO_PIN
  p11() { pkcs11-tool --module "$MODULE" "$@" >>"$STATE/pkcs11-tool.log" 2>&1 || die "pkcs11-tool $1 $2 failed" "see $STATE/pkcs11-tool.log"; }
  p11 --init-token --label "$TOKEN_LABEL" --so-pin env:CARGO_PKCS11_DEMO_SO_PIN
  p11 --token-label "$TOKEN_LABEL" --login --login-type so --so-pin env:CARGO_PKCS11_DEMO_SO_PIN --init-pin --pin env:CARGO_PKCS11_DEMO_PIN
  unset CARGO_PKCS11_DEMO_SO_PIN
  note "token '$TOKEN_LABEL' initialised (PINs from the environment, not shown)"
  # The agent's own keygen: the private key is generated on the token and never leaves it.
  printf '   $ cargo-pkcs11-agent keygen --module %s --token-label %s --label %s --id 01 --pin-env CARGO_PKCS11_DEMO_PIN\n' \
    "$MODULE" "$TOKEN_LABEL" "$KEY_LABEL"
  node "$AGENT_BIN" keygen --module "$MODULE" --token-label "$TOKEN_LABEL" --label "$KEY_LABEL" --id 01 \
    --pin-env CARGO_PKCS11_DEMO_PIN 2>&1 | sed 's/^/     /'
fi

# What the registry must register: the k3.public of the key as the device holds it (CKA_EC_POINT).
K3_PUBLIC=$(node "$AGENT_BIN" pubkey --module "$MODULE" --token-label "$TOKEN_LABEL" --label "$KEY_LABEL" --format k3) ||
  die "no P-384 key labelled '$KEY_LABEL' on token '$TOKEN_LABEL'" "generate one (cargo-pkcs11-agent keygen), or set CARGO_PKCS11_DEMO_KEY_LABEL"
K3_PID=$(node "$AGENT_BIN" pubkey --module "$MODULE" --token-label "$TOKEN_LABEL" --label "$KEY_LABEL" --format pid)
note "k3.public: $K3_PUBLIC"
note "k3.pid:    $K3_PID"

say "3. a local verifying registry that knows only this key (every request checked, strict low-S)"
setsid node "$REGISTRY_MAIN" --state "$STATE/registry" --port 0 --key "$K3_PUBLIC" --strict-low-s \
  --max-age-seconds "$TOKEN_MAX_AGE" </dev/null >"$STATE/registry.log" 2>&1 &
echo $! >"$STATE/registry.pid"
for _ in $(seq 1 100); do [ -s "$STATE/registry.log" ] && break; sleep 0.05; done
REGISTRY_JSON=$(head -n1 "$STATE/registry.log")
INDEX_URL=$(node -e 'console.log(JSON.parse(process.argv[1]).indexUrl)' "$REGISTRY_JSON" 2>/dev/null) ||
  die "the registry did not start" "see $STATE/registry.log"
note "index: $INDEX_URL"
note "log:   $STATE/registry.log (JSON record: $STATE/registry/requests.jsonl)"

say "4. agent config binding the registry to the key, then the agent"
HEADLESS=false
if [ "${CI:-}" = true ] || [ ! -t 0 ]; then HEADLESS=true; fi
mkdir -p "$STATE/run" "$STATE/config"
chmod 700 "$STATE/run" "$STATE/config"
SOCK=$STATE/run/cargo-pkcs11-agent/agent.sock
CONFIG=$STATE/config/config.toml
cat >"$CONFIG" <<EOF
# Written by scripts/demo.sh. The PIN comes from the agent's environment, never from this file.
[agent]
audit-log = "$STATE/audit.jsonl"
headless = $HEADLESS
notify = false

[tokens.demo]
module = "$MODULE"
label = "$TOKEN_LABEL"
kind = "$KIND"
pin-source = "env"
pin-env = "CARGO_PKCS11_DEMO_PIN"

[registries.local]
index = "$INDEX_URL"
read-key = { token = "demo", label = "$KEY_LABEL" }
mutation-key = { token = "demo", label = "$KEY_LABEL" }
# A demo has no one to touch a key or answer a prompt; a YubiKey with a touch policy still asks.
confirm = "none"
token-max-age-seconds = $TOKEN_MAX_AGE
EOF
chmod 600 "$CONFIG"
note "config: $CONFIG"
setsid node "$AGENT_BIN" run --foreground --config "$CONFIG" --socket "$SOCK" </dev/null >"$STATE/agent.log" 2>&1 &
echo $! >"$STATE/agent.pid"
for _ in $(seq 1 150); do
  [ -S "$SOCK" ] && break
  kill -0 "$(cat "$STATE/agent.pid")" 2>/dev/null || die "the agent exited" "$(tail -n 5 "$STATE/agent.log")"
  sleep 0.1
done
[ -S "$SOCK" ] || die "the agent did not listen on $SOCK" "see $STATE/agent.log"
note "agent pid $(cat "$STATE/agent.pid") on $SOCK (log $STATE/agent.log)"

# cargo: its own CARGO_HOME, the shim as the registry's credential provider (cargo runs it with
# --cargo-plugin), and the socket/config of the agent we started (no autostart of another one).
export CARGO_HOME=$STATE/cargo-home
export CARGO_TARGET_DIR=$STATE/target
export CARGO_TERM_COLOR=never
export CARGO_PKCS11_AGENT_SOCK=$SOCK
export CARGO_PKCS11_AGENT_CONFIG=$CONFIG
export CARGO_PKCS11_AGENT_NO_AUTOSTART=1
mkdir -p "$CARGO_HOME"
cat >"$CARGO_HOME/config.toml" <<EOF
[registries.local]
index = "$INDEX_URL"
credential-provider = ["$SHIM_BIN"]

[net]
git-fetch-with-cli = false
EOF
mkdir -p "$STATE/crates"
cp -r test/fixtures/crates/hwtok-alpha test/fixtures/crates/hwtok-beta test/fixtures/crates/hwtok-app "$STATE/crates/"

REG_SEEN=1
AUDIT_SEEN=0
show_new() {
  local lines
  lines=$(wc -l <"$STATE/registry.log")
  if [ "$lines" -gt "$REG_SEEN" ]; then
    echo '   registry saw:'
    tail -n +"$((REG_SEEN + 1))" "$STATE/registry.log" | sed 's/^/     /'
    REG_SEEN=$lines
  fi
  if [ -f "$STATE/audit.jsonl" ]; then
    lines=$(wc -l <"$STATE/audit.jsonl")
    if [ "$lines" -gt "$AUDIT_SEEN" ]; then
      echo '   agent audit log:'
      tail -n +"$((AUDIT_SEEN + 1))" "$STATE/audit.jsonl" | sed 's/^/     /'
      AUDIT_SEEN=$lines
    fi
  fi
}
run_cargo() {
  local dir=$1
  shift
  printf '\n   $ cargo %s\n' "$*"
  local rc=0
  (cd "$dir" && cargo "$@" 2>&1 | sed 's/^/     /') || rc=$?
  sleep 0.2 # the registry prints its record after answering
  show_new
  return "$rc"
}

say "5. cargo publish (auth-required registry: a read token, then a publish token; both signed on the token)"
run_cargo "$STATE/crates/hwtok-alpha" publish --registry local --no-verify
run_cargo "$STATE/crates/hwtok-beta" publish --registry local --no-verify

say "6. cargo yank and cargo yank --undo"
run_cargo "$STATE" yank --version 0.1.0 hwtok-alpha --registry local
run_cargo "$STATE" yank --undo --version 0.1.0 hwtok-alpha --registry local

say "6b. cargo owner --add / --list (owners tokens carry the crate name, no version)"
run_cargo "$STATE" owner --add alice hwtok-beta --registry local
run_cargo "$STATE" owner --list hwtok-beta --registry local

say "7. a build that downloads both crates from the registry (read tokens only)"
run_cargo "$STATE/crates/hwtok-app" run --quiet

say "8. the agent's view: cargo-pkcs11-agent status / log"
node "$AGENT_BIN" status --socket "$SOCK" 2>&1 | sed 's/^/     /' || true
node "$AGENT_BIN" log --config "$CONFIG" -n 20 2>&1 | sed 's/^/     /' || true

say "9. summary"
node --input-type=module -e "
  import { readFileSync } from 'node:fs'
  const reg = readFileSync(process.argv[1], 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const audit = readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const checked = reg.filter((r) => r.auth === 'accepted' || r.auth === 'rejected')
  const rejected = checked.filter((r) => r.auth === 'rejected')
  const muts = checked.filter((r) => r.operation !== 'read')
  const count = (xs, f) => Object.entries(xs.reduce((a, x) => ({ ...a, [f(x)]: (a[f(x)] ?? 0) + 1 }), {})).map(([k, v]) => k + ' ' + v).join(', ')
  console.log('   registry: ' + checked.length + ' authenticated requests, ' + rejected.length + ' rejected; by operation: ' + count(checked, (r) => r.operation))
  console.log('   registry: ' + new Set(checked.map((r) => r.tokenSha256)).size + ' distinct tokens; ' + muts.length + ' mutation tokens, ' + new Set(muts.map((r) => r.tokenSha256)).size + ' distinct (none reused); every signature low-S (the registry runs strict)')
  console.log('   agent:    ' + audit.filter((a) => a.result === 'signed').length + ' signatures on the token; by operation: ' + count(audit.filter((a) => a.result === 'signed'), (a) => a.operation))
  // Every token the registry saw must be one the agent logged as signed on the device.
  const signedTokens = new Set(audit.filter((a) => a.result === 'signed').map((a) => a.token))
  const unknown = checked.filter((r) => !signedTokens.has('sha256:' + r.tokenSha256.slice(0, 16)))
  if (unknown.length > 0) console.log('   MISMATCH: ' + unknown.length + ' registry tokens are not in the audit log')
  if (rejected.length > 0 || unknown.length > 0) process.exit(1)
  console.log('   every token the registry verified appears in the agent audit log (matched by SHA-256 fingerprint)')
" "$STATE/registry/requests.jsonl" "$STATE/audit.jsonl"

trap - EXIT
if [ "$MODE" = stop ]; then
  say "done: stopping the agent and the registry (--stop$([ "${CI:-}" = true ] && echo ', CI=true'))"
  stop_demo
  note "state kept in $STATE (audit log, registry record, logs); rerun to start fresh"
else
  say "done: the agent and the registry keep running, so you can try cargo yourself"
  cat <<EOF
   export PATH="\$HOME/.cargo/bin:\$PATH" CARGO_HOME=$CARGO_HOME CARGO_TARGET_DIR=$CARGO_TARGET_DIR
   export CARGO_PKCS11_AGENT_SOCK=$SOCK CARGO_PKCS11_AGENT_CONFIG=$CONFIG CARGO_PKCS11_AGENT_NO_AUTOSTART=1
   cd $STATE/crates/hwtok-alpha && sed -i 's/^version = .*/version = "0.2.0"/' Cargo.toml && cargo publish --registry local --no-verify
   tail -f $STATE/registry.log $STATE/audit.jsonl

   stop both: npm run demo -- stop      (or: bash scripts/demo.sh stop)
   next time stop automatically: npm run demo -- --stop
EOF
fi
