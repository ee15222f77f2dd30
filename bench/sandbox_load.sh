#!/usr/bin/env bash
# Throughput of the sandbox with no limits, without and with --record, measured with wrk.
# Needs a release build and wrk (apt-get install -y wrk).
#
#   cargo build --release --bin lc-import && bench/sandbox_load.sh [DURATION] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-15s}"
connections="${2:-64}"
bin=target/release/lc-import
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

run() {
    local label="$1"; shift
    "$bin" sandbox --listen 127.0.0.1:0 --rate none --daily none --reads off "$@" >"$work/out" &
    local pid=$!
    until grep -q '^sandbox listening on ' "$work/out" 2>/dev/null; do
        kill -0 "$pid" || { echo "sandbox did not start" >&2; exit 1; }
        sleep 0.05
    done
    local url
    url="$(sed -n 's/^sandbox listening on //p' "$work/out")"
    echo "== $label: wrk -t2 -c$connections -d$duration -s bench/sandbox_load.lua $url"
    wrk -t2 -c"$connections" -d"$duration" -s bench/sandbox_load.lua "$url"
    echo "-- /__stats: $(curl -s "$url/__stats" 2>/dev/null || echo '(curl missing)')"
    kill -TERM "$pid"
    wait "$pid"
    : >"$work/out"
}

run "no limits"
run "no limits, --record" --record "$work/record.jsonl"
echo "-- record lines: $(wc -l <"$work/record.jsonl")"
