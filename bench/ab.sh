#!/usr/bin/env bash
# Two or more builds of lc-import side by side against a zero-cost nginx (the shared bench's
# nginx-static.conf on 127.0.0.1:18090), unthrottled, interleaved round by round so a noisy
# machine costs each build alike. Prints rows/s and CPU µs per row for every run.
#
#   bench/ab.sh before=/path/to/old/lc-import now=target/release/lc-import
#
# Knobs: ROWS (200000), CONC (16), ROUNDS (3), SHARED (../shared/bench).
# The generator is taken from target/release/examples/generate (cargo build --release --example generate).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-200000}; CONC=${CONC:-16}; ROUNDS=${ROUNDS:-3}
SHARED=${SHARED:-$(cd ../shared/bench 2>/dev/null && pwd)}
[ $# -ge 2 ] || { echo "usage: $0 label=binary label=binary ..." >&2; exit 2; }
for t in nginx /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "needs $t: apt-get install -y nginx time" >&2; exit 2; }
done
W=$(mktemp -d /tmp/lc-ab.XXXXXX)
cp "$SHARED/nginx-static.conf" "$W/"
target/release/examples/generate "$ROWS" > "$W/in.csv"
nginx -c "$W/nginx-static.conf" -e "$W/nginx-error.log" & NP=$!
trap 'kill -QUIT $NP 2>/dev/null; sleep 0.5; rm -rf "$W"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null && break; sleep 0.1; done
echo "rows $ROWS, concurrency $CONC, rounds $ROUNDS, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$ROUNDS"); do
  for pair in "$@"; do
    label=${pair%%=*}; bin=$(readlink -f "${pair#*=}")
    rm -f "$W"/r.csv*
    t0=$(date +%s.%N)
    LC_TOKEN=x /usr/bin/time -f "%U %S" -o "$W/t" "$bin" run "$W/in.csv" --base-url http://127.0.0.1:18090 \
      --rate none --concurrency "$CONC" --results "$W/r.csv" -q > "$W/log" 2>&1 || { tail "$W/log"; exit 1; }
    t1=$(date +%s.%N)
    awk -v l="$label" -v r="$ROWS" -v a="$t0" -v b="$t1" -v c="$(cat "$W/t")" -v i="$i" \
      'BEGIN { split(c, x, " "); printf "round %d  %-10s %8.0f rows/s  %6.2f µs CPU/row\n", i, l, r/(b-a), (x[1]+x[2])/r*1e6 }'
  done
done
