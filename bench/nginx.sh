#!/usr/bin/env bash
# Importer vs wrk against a zero-cost nginx stand-in for the inbound endpoint.
#
#   bench-nginx.sh <path/to/lc-import> [rows=300000]
#
# Generates <rows> with examples/generate (taken from beside the binary: <dir>/examples/generate,
# override with GEN=...), starts nginx with ../shared/bench/nginx-static.conf (127.0.0.1:18090),
# then PAIRS times (default 2): wrk -t1 -c16 -d10s with wrk-post.lua, followed by
#   LC_TOKEN=x <bin> run <input> --base-url http://127.0.0.1:18090 --rate none --concurrency 16 --results <tmp>
# under /usr/bin/time -v. Prints per pair: wrk req/s, importer rows/s (rows / wall s), ratio,
# importer user+sys CPU s, µs CPU per row, peak RSS. Stops nginx and removes its temp files at exit.
#
# Knobs: PAIRS (2), WRK_SECONDS (10), CONC (16), GEN, SHARED (../shared/bench),
#        IMPORTER_FLAGS (extra flags for `run`, e.g. -q; none by default).
set -euo pipefail

BIN=${1:?usage: $0 <path/to/lc-import> [rows]}
ROWS=${2:-300000}
BIN=$(readlink -f "$BIN")
GEN=${GEN:-$(dirname "$BIN")/examples/generate}
SHARED=${SHARED:-$(cd "$(dirname "$0")/../../shared/bench" 2>/dev/null && pwd)}
PAIRS=${PAIRS:-2}
WRK_SECONDS=${WRK_SECONDS:-10}
CONC=${CONC:-16}
IMPORTER_FLAGS=${IMPORTER_FLAGS:-}
PORT_URL=http://127.0.0.1:18090
ENDPOINT=$PORT_URL/conversations/messages/inbound
PIDFILE=/tmp/lc-bench-nginx.pid

for t in nginx wrk /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "needs $t: apt-get install -y nginx wrk time" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "not an executable: $BIN" >&2; exit 2; }
[ -x "$GEN" ] || { echo "generator not found: $GEN (set GEN=...)" >&2; exit 2; }
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "an nginx from $PIDFILE (pid $(cat "$PIDFILE")) is already running; stop it first" >&2; exit 2
fi

WORK=$(mktemp -d /tmp/lc-bench-nginx.XXXXXX)
NGINX_PID=
cleanup() {
  if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
    kill -QUIT "$NGINX_PID" 2>/dev/null || true       # graceful stop of master + worker
    for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$SHARED/nginx-static.conf" "$WORK/nginx-static.conf"
cp "$SHARED/wrk-post.lua" "$WORK/wrk-post.lua"

echo "binary:   $BIN ($(stat -c %y "$BIN" | cut -d. -f1))"
echo "rows:     $ROWS   concurrency: $CONC   wrk: -t1 -c$CONC -d${WRK_SECONDS}s   pairs: $PAIRS"
echo "machine:  $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

INPUT=$WORK/in-$ROWS.csv
"$GEN" "$ROWS" > "$INPUT"

nginx -c "$WORK/nginx-static.conf" -e /tmp/lc-bench-nginx-error.log &
NGINX_PID=$!
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null; then break; fi
  kill -0 "$NGINX_PID" 2>/dev/null || { echo "nginx exited; see /tmp/lc-bench-nginx-error.log" >&2; NGINX_PID=; exit 1; }
  sleep 0.1
done
(exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null || { echo "nginx did not listen on 18090" >&2; exit 1; }

declare -a R_WRK R_RPS R_CPU R_RSS
printf '\n%-5s %12s %14s %8s %10s %10s %12s %12s\n' pair "wrk req/s" "importer r/s" ratio "wall s" "CPU s" "µs CPU/row" "peak RSS MiB"
for i in $(seq "$PAIRS"); do
  wrk_out=$(wrk -t1 -c"$CONC" -d"${WRK_SECONDS}s" -s "$WORK/wrk-post.lua" "$ENDPOINT")
  wrk_rps=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' <<<"$wrk_out")
  if grep -q 'Non-2xx' <<<"$wrk_out"; then echo "wrk saw non-2xx responses:" >&2; echo "$wrk_out" >&2; exit 1; fi

  results=$WORK/results-$i.csv
  rm -f "$results"
  t0=$(date +%s.%N)
  set +e
  # shellcheck disable=SC2086
  LC_TOKEN=x /usr/bin/time -v -o "$WORK/time-$i.txt" "$BIN" run "$INPUT" --base-url "$PORT_URL" \
      --rate none --concurrency "$CONC" --results "$results" $IMPORTER_FLAGS >"$WORK/run-$i.log" 2>&1
  code=$?
  set -e
  t1=$(date +%s.%N)
  if [ "$code" -ne 0 ]; then
    echo "importer exited $code; its output:" >&2; tail -20 "$WORK/run-$i.log" >&2; exit 1
  fi
  sent=$(sed -n 's/^[[:space:]]*sent[[:space:]]*\([0-9]*\).*/\1/p' "$WORK/run-$i.log" | tail -1)
  if [ "$sent" != "$ROWS" ]; then
    echo "importer sent ${sent:-?} of $ROWS rows; its output:" >&2; tail -20 "$WORK/run-$i.log" >&2; exit 1
  fi
  user=$(sed -n 's/^[[:space:]]*User time (seconds): //p' "$WORK/time-$i.txt")
  sys=$(sed -n 's/^[[:space:]]*System time (seconds): //p' "$WORK/time-$i.txt")
  rss_kb=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$WORK/time-$i.txt")
  read -r wall rps ratio cpu us_row rss <<<"$(awk -v r="$ROWS" -v a="$t0" -v b="$t1" -v w="$wrk_rps" \
      -v u="$user" -v s="$sys" -v k="$rss_kb" 'BEGIN {
        wall = b - a; rps = r / wall; cpu = u + s
        printf "%.2f %.0f %.3f %.2f %.2f %.1f", wall, rps, rps / w, cpu, cpu / r * 1e6, k / 1024 }')"
  printf '%-5s %12.0f %14s %8s %10s %10s %12s %12s\n' "$i" "$wrk_rps" "$rps" "$ratio" "$wall" "$cpu" "$us_row" "$rss"
  R_WRK+=("$wrk_rps"); R_RPS+=("$rps"); R_CPU+=("$us_row"); R_RSS+=("$rss")
  rm -f "$results" "$results".* 2>/dev/null || true
done

echo
echo "last importer summary (pair $PAIRS):"
tail -7 "$WORK/run-$PAIRS.log" | sed 's/^/  /'
printf '\nmean over %s pairs: wrk %.0f req/s, importer %.0f rows/s, ratio %.3f, %.2f µs CPU/row, peak RSS %.1f MiB\n' \
  "$PAIRS" \
  "$(printf '%s\n' "${R_WRK[@]}" | awk '{s+=$1} END {print s/NR}')" \
  "$(printf '%s\n' "${R_RPS[@]}" | awk '{s+=$1} END {print s/NR}')" \
  "$(paste <(printf '%s\n' "${R_RPS[@]}") <(printf '%s\n' "${R_WRK[@]}") | awk '{s+=$1/$2} END {print s/NR}')" \
  "$(printf '%s\n' "${R_CPU[@]}" | awk '{s+=$1} END {print s/NR}')" \
  "$(printf '%s\n' "${R_RSS[@]}" | awk '{if ($1>m) m=$1} END {print m}')"
