#!/usr/bin/env bash
# Benchmarks of lc-import. Builds in release, generates its inputs in a temp folder, runs each
# measure and prints one table: measure, value, reference, ratio.
#
#   bench/run.sh            # all measures
#   ROWS_BIG=200000 bench/run.sh   # smaller inputs for a quick look
#
# Goals (issues 2, 6): validate >= 500,000 rows/s on one core; peak RSS < 50 MiB and flat
# (within 10 %) from 100k to 1M rows.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS_SMALL=${ROWS_SMALL:-100000}
ROWS_BIG=${ROWS_BIG:-1000000}

cargo build --release --quiet --bin lc-import --example generate
BIN=target/release/lc-import
GEN=target/release/examples/generate
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$GEN" "$ROWS_SMALL" > "$TMP/small.csv"
"$GEN" "$ROWS_BIG" > "$TMP/big.csv"

measure() { python3 bench/measure.py -- "$@"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }

# validate is single-threaded: pin it to one core so the figure is per core.
small=$(measure taskset -c 0 "$BIN" validate "$TMP/small.csv" --results "$TMP/small.out.csv")
big=$(measure taskset -c 0 "$BIN" validate "$TMP/big.csv" --results "$TMP/big.out.csv")

python3 - "$ROWS_SMALL" "$small" "$ROWS_BIG" "$big" <<'PY'
import json, sys
n_s, s, n_b, b = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
rows = [
    (f"validate {n_s:,} rows: rows/s (1 core)", n_s / s["seconds"], 500_000),
    (f"validate {n_b:,} rows: rows/s (1 core)", n_b / b["seconds"], 500_000),
    (f"validate {n_s:,} rows: peak RSS MiB", s["peak_rss_mib"], 50),
    (f"validate {n_b:,} rows: peak RSS MiB", b["peak_rss_mib"], 50),
    (f"validate RSS {n_b:,} / {n_s:,} rows", b["peak_rss_mib"] / s["peak_rss_mib"], 1.10),
]
print(f"| {'measure':<44} | {'value':>12} | {'reference':>10} | {'ratio':>6} |")
print(f"|{'-'*46}|{'-'*14}|{'-'*12}|{'-'*8}|")
for name, value, ref in rows:
    print(f"| {name:<44} | {value:>12,.2f} | {ref:>10,} | {value/ref:>6.2f} |")
PY
