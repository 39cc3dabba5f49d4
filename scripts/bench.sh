#!/usr/bin/env bash
# Benchmarks, each a ratio measured side by side in one run (shared, noisy machines: no lone times).
#  1. start-up: the shim answering one request vs a bare `node -e 0`, and what importing `ws` would add;
#  2. signature latency per layer vs the device's own C_Sign (scripts/bench/sign.ts);
#  3. throughput under 64 concurrent clients per layer (scripts/bench/load.ts);
#  4. the cost of reading a connection's peer credentials vs one fstat (scripts/bench/peercred.ts);
#  5. event-loop delay while 8 signs wait on touches (scripts/bench/loop.ts);
#  6. agent RSS after 1,000 and 100,000 requests (scripts/bench/rss.ts);
#  7. a real `cargo publish` through the agent vs with `cargo:token` (scripts/bench/publish.ts);
#  8. tpm2-pkcs11 on swtpm and ykcs11 on the virtual PIV card: agent vs raw module (scripts/bench/devices.ts);
#  9. the issue-13 table of ratios, and the chart docs/benchmarks.svg/.png (scripts/bench/report.ts).
# Results go to stdout and .state/bench/*.json; `npm run bench -- --json FILE` also writes the ratios
# to FILE. BENCH_QUICK=1 shortens every phase (a smoke run, not figures to quote).
set -euo pipefail
started=$(date +%s)
json=""
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json="$(realpath -m "$2")"; shift 2 ;;
    *) echo "bench.sh: unknown argument $1 (only --json FILE)" >&2; exit 2 ;;
  esac
done
quick="${BENCH_QUICK:-}"

cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Load average at the start and the end (this machine is shared; ratios are same-run, absolute times are not).
export BENCH_LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
export PATH="$HOME/.cargo/bin:$PATH"
out=.state/bench
mkdir -p "$out"

req="$out/unsupported-request.json"
# A request the shim answers without the agent: measures its whole start-up and protocol path.
printf '%s\n' '{"v":1,"registry":{"index-url":"sparse+http://127.0.0.1:9/index/"},"kind":"frobnicate"}' >"$req"
export CARGO_PKCS11_AGENT_NO_AUTOSTART=1 CARGO_PKCS11_AGENT_SOCK="$out/none.sock"
hyperfine --warmup 5 --runs "${BENCH_RUNS:-40}" --export-json "$out/startup.json" \
  -n 'node -e 0' "node -e 0 < $req" \
  -n 'node + require(ws)' "node -e \"require('ws')\" < $req" \
  -n 'shim (one request)' "node dist/cjs/src/bin/cargo-credential-pkcs11.js --cargo-plugin < $req"
node -e '
  const r = require("./'"$out"'/startup.json").results
  const base = r[0].median
  for (const x of r) console.log(`${x.command.padEnd(20)} median ${(x.median * 1000).toFixed(1)} ms  = ${(x.median / base).toFixed(2)}× node -e 0`)
'
unset CARGO_PKCS11_AGENT_NO_AUTOSTART CARGO_PKCS11_AGENT_SOCK

node dist/scripts/bench/peercred.js --json "$out/peercred.json"
node dist/scripts/bench/sign.js --json "$out/sign.json" ${quick:+--rounds 4}

# 3. throughput at 64 concurrent clients vs the device's and the signer's own (scripts/bench/load.ts).
# The benchmark process gets the agent's pool size, so its device phase is not capped at 4 threads.
UV_THREADPOOL_SIZE="$(node -e 'import("./dist/src/lib/limits.js").then((m) => console.log(m.LIMITS.uvThreadpoolSize))')" \
  node dist/scripts/bench/load.js --json "$out/load.json" --sweep 1,4,16,64 ${quick:+--seconds 1 --rounds 1}

node dist/scripts/bench/loop.js --json "$out/loop.json" ${quick:+--rounds 1}
node dist/scripts/bench/rss.js --json "$out/rss.json" ${quick:+--requests 5000}
node dist/scripts/bench/publish.js --json "$out/publish.json" ${quick:+--rounds 2}
node dist/scripts/bench/devices.js --json "$out/devices.json" ${quick:+--rounds 1 --per-round 5}
node dist/scripts/bench/report.js --dir "$out" --chart docs/benchmarks.svg --markdown BENCHMARKS.md ${json:+--json "$json"}
echo "load average: start $BENCH_LOAD_START, end $(cut -d' ' -f1-3 /proc/loadavg); whole bench $(( $(date +%s) - started )) s"
