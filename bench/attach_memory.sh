#!/usr/bin/env bash
# Peak memory of an attachment upload (issue 15): one row attaching a SIZE_MB file (200 by
# default), imported into a release sandbox on loopback, both under /usr/bin/time -v; the same
# with a 1 MB file beside it, as the reference. Files are streamed on both sides, so the peak
# RSS must not grow with the file (README "Attachments": under 64 MiB with 200 MB). Checks that
# the sandbox's copy is the file, byte for byte.
#
#   bench/attach_memory.sh                 # 200 MB
#   SIZE_MB=1000 bench/attach_memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin lc-import
BIN=$PWD/target/release/lc-import
SIZE_MB=${SIZE_MB:-200}
work=$(mktemp -d)
sandbox_pid=
cleanup() {
    [ -n "$sandbox_pid" ] && kill "$sandbox_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

rss() { awk -F': ' '/Maximum resident set size/ { printf "%.2f", $2 / 1024 }' "$1"; }

measure() { # label, size in MiB → "label importer_MiB sandbox_MiB"
    local label=$1 mib=$2 dir=$work/$1
    mkdir -p "$dir"
    head -c $((mib * 1024 * 1024)) /dev/urandom > "$dir/big.mp4"
    printf 'altId,conversationId,contactId,type,direction,message,attachments\nr0,c1,k1,SMS,inbound,a video,big.mp4\n' > "$dir/in.csv"
    /usr/bin/time -v "$BIN" sandbox --listen 127.0.0.1:0 --rate none --daily none \
        --upload-dir "$dir/uploaded" --upload-max-size "$((mib + 1))MiB" \
        > "$dir/sandbox.out" 2> "$dir/sandbox.time" &
    sandbox_pid=$!
    local url=
    for _ in $(seq 100); do
        url=$(sed -n 's/^sandbox listening on //p' "$dir/sandbox.out")
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "the sandbox did not start" >&2; exit 1; }
    LC_TOKEN=sandbox-token /usr/bin/time -v "$BIN" run "$dir/in.csv" --base-url "$url" \
        --rate none --location-id L1 --attachment-max-size "$((mib + 1))MiB" -q \
        > "$dir/run.out" 2> "$dir/run.time"
    # $! is /usr/bin/time's pid: the sandbox is its child, and ends on SIGTERM (time reports then).
    kill -TERM "$(ps -o pid= --ppid "$sandbox_pid")"
    wait "$sandbox_pid" || true
    sandbox_pid=
    cmp "$dir/big.mp4" "$dir"/uploaded/*/big.mp4
    grep -q ',sent,' "$dir/in.results.csv"
    echo "$label $(rss "$dir/run.time") $(rss "$dir/sandbox.time")"
}

small=$(measure small 1)
large=$(measure large "$SIZE_MB")
read -r _ small_run small_sb <<< "$small"
read -r _ large_run large_sb <<< "$large"
printf '%-44s %10s %10s %8s\n' "measure" "value" "reference" "ratio"
printf '%-44s %10s %10s %8s\n' "import, ${SIZE_MB} MB attachment: peak RSS MiB" "$large_run" "64" \
    "$(awk -v a="$large_run" 'BEGIN { printf "%.2f", a / 64 }')"
printf '%-44s %10s %10s %8s\n' "… against a 1 MB attachment: peak RSS MiB" "$large_run" "$small_run" \
    "$(awk -v a="$large_run" -v b="$small_run" 'BEGIN { printf "%.2f", a / b }')"
printf '%-44s %10s %10s %8s\n' "sandbox taking it: peak RSS MiB" "$large_sb" "$small_sb" \
    "$(awk -v a="$large_sb" -v b="$small_sb" 'BEGIN { printf "%.2f", a / b }')"
