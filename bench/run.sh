#!/usr/bin/env bash
# Benchmarks of lc-import. Builds in release, generates its inputs in a temp folder, runs each
# measure and prints one table: measure, value, reference, ratio.
#
#   bench/run.sh            # all measures
#   ROWS_BIG=200000 bench/run.sh   # smaller inputs for a quick look
#
# Goals: validate >= 500,000 rows/s on one core, peak RSS < 50 MiB and flat (within 10 %) from
# 100k to 1M rows (issue 2); run against the sandbox with no limits >= 50 % of the raw request
# rate of wrk on the same sandbox and payload, journal on (issue 4).
#
# Needs python3 (timing and peak RSS), wrk and curl (apt-get install -y wrk curl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS_SMALL=${ROWS_SMALL:-100000}
ROWS_BIG=${ROWS_BIG:-1000000}
ROWS_SEND=${ROWS_SEND:-100000}
CONCURRENCY=${CONCURRENCY:-16}
WRK_SECONDS=${WRK_SECONDS:-10}

cargo build --release --quiet --bin lc-import --example generate
BIN=target/release/lc-import
GEN=target/release/examples/generate
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$GEN" "$ROWS_SMALL" > "$TMP/small.csv"
"$GEN" "$ROWS_BIG" > "$TMP/big.csv"
"$GEN" "$ROWS_SEND" > "$TMP/send.csv"

measure() { python3 bench/measure.py -- "$@"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }

# validate is single-threaded: pin it to one core so the figure is per core.
small=$(measure taskset -c 0 "$BIN" validate "$TMP/small.csv" --results "$TMP/small.out.csv")
big=$(measure taskset -c 0 "$BIN" validate "$TMP/big.csv" --results "$TMP/big.out.csv")

# A release sandbox with no limits, shared by the load generator and the importer.
"$BIN" sandbox --listen 127.0.0.1:0 --rate none --daily none > "$TMP/sandbox.out" &
SANDBOX=$!
trap 'kill $SANDBOX 2>/dev/null; rm -rf "$TMP"' EXIT
until grep -q '^sandbox listening on ' "$TMP/sandbox.out" 2>/dev/null; do sleep 0.05; done
URL=$(sed -n 's/^sandbox listening on //p' "$TMP/sandbox.out")

# Raw request rate: wrk, same concurrency, same kind of body.
wrk_out=$(wrk -t1 -c"$CONCURRENCY" -d"${WRK_SECONDS}s" -s bench/sandbox_load.lua "$URL")
raw=$(echo "$wrk_out" | sed -n 's/^Requests\/sec: *//p')

# The importer: journal on, no pace of its own.
send=$(LC_TOKEN=sandbox-token measure "$BIN" run "$TMP/send.csv" --base-url "$URL" --rate none \
    --concurrency "$CONCURRENCY" --results "$TMP/send.results.csv" -q)
sent=$(grep -c ',sent,' "$TMP/send.results.csv" || true)

python3 - "$ROWS_SMALL" "$small" "$ROWS_BIG" "$big" "$ROWS_SEND" "$send" "$raw" "$sent" "$CONCURRENCY" <<'PY'
import json, sys
n_s, s, n_b, b = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
n_send, send, raw, sent, conc = int(sys.argv[5]), json.loads(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
assert sent == n_send, f"only {sent} of {n_send} rows were sent"
send_rate = n_send / send["seconds"]
rows = [
    (f"validate {n_s:,} rows: rows/s (1 core)", n_s / s["seconds"], 500_000),
    (f"validate {n_b:,} rows: rows/s (1 core)", n_b / b["seconds"], 500_000),
    (f"validate {n_s:,} rows: peak RSS MiB", s["peak_rss_mib"], 50),
    (f"validate {n_b:,} rows: peak RSS MiB", b["peak_rss_mib"], 50),
    (f"validate RSS {n_b:,} / {n_s:,} rows", b["peak_rss_mib"] / s["peak_rss_mib"], 1.10),
    (f"wrk raw requests/s, {conc} connections", raw, raw),
    (f"run {n_send:,} rows: rows/s, concurrency {conc}", send_rate, raw * 0.5),
    (f"run {n_send:,} rows: peak RSS MiB", send["peak_rss_mib"], 64),
]
print(f"| {'measure':<44} | {'value':>12} | {'reference':>10} | {'ratio':>6} |")
print(f"|{'-'*46}|{'-'*14}|{'-'*12}|{'-'*8}|")
for name, value, ref in rows:
    print(f"| {name:<44} | {value:>12,.2f} | {ref:>10,} | {value/ref:>6.2f} |")
PY
