#!/usr/bin/env bash
# The lc-import benchmark: builds in release, generates its inputs, starts release sandboxes on
# loopback and prints one table (measure, value, reference, ratio). See bench/run.py for the
# measures and the knobs (RATE_SECONDS, THROUGHPUT_ROWS, MEMORY_ROWS, ONLY, ...).
#
#   bench/run.sh                                  # everything (about 15 minutes on 2 cores)
#   ONLY=validate,resume bench/run.sh             # a subset
#   ONLY=resolve bench/run.sh                     # resolving mode: memory by contacts, resume, ID map (~15 min)
#
# Needs python3 and wrk (apt-get install -y wrk); CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install -y wrk" >&2; exit 2; }
cargo build --release --quiet --bin lc-import --example generate --example client_loop
exec python3 bench/run.py
