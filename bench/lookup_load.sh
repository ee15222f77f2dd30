#!/usr/bin/env bash
# The sandbox's lookups at a small and a large contact book, in the same minute: contact search
# by e-mail and conversation search by contact must cost the same per request at 1M contacts as
# at 1k (they are indexed), so the two wrk rates should be within noise of each other.
# Needs a release build and wrk (apt-get install -y wrk).
#
#   cargo build --release --bin lc-import && bench/lookup_load.sh [SMALL] [LARGE] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
small="${1:-1000}"
large="${2:-1000000}"
duration="${3:-10s}"
bin="${BIN:-target/release/lc-import}"
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

seed() {
    awk -v n="$1" 'BEGIN {
        print "id,locationId,email,phone,firstName,lastName,conversationId"
        for (i = 0; i < n; i++)
            printf "c%019d,ve9EPM428h8vShlRW1KT,c%d@example.com,,,,v%019d\n", i, i, i
    }' >"$work/contacts.csv"
}

run() {
    local n="$1"
    seed "$n"
    "$bin" sandbox --listen 127.0.0.1:0 --rate none --daily none --reads off \
        --contacts "$work/contacts.csv" >"$work/out" &
    pid=$!
    until grep -q '^sandbox listening on ' "$work/out" 2>/dev/null; do
        kill -0 "$pid" || { echo "sandbox did not start" >&2; exit 1; }
        sleep 0.1
    done
    local url rss
    url="$(sed -n 's/^sandbox listening on //p' "$work/out")"
    rss="$(awk '/VmRSS/ {print $2 " kB"}' "/proc/$pid/status")"
    echo "== $n contacts (sandbox RSS $rss): CONTACTS=$n wrk -t2 -c32 -d$duration -s bench/lookup_load.lua"
    CONTACTS="$n" wrk -t2 -c32 -d"$duration" -s bench/lookup_load.lua "$url" |
        grep -E "Requests/sec|Latency|unexpected|Non-2xx"
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
    : >"$work/out"
}

run "$small"
run "$large"
run "$small"
