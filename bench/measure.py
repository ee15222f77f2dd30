#!/usr/bin/env python3
"""Runs one command and prints its wall time and peak RSS as JSON on stderr's last line.

usage: measure.py -- CMD ARGS...   (stdout/stderr of CMD go to /dev/null unless MEASURE_SHOW=1)
"""
import json, os, resource, subprocess, sys, time

cmd = sys.argv[sys.argv.index("--") + 1:]
show = os.environ.get("MEASURE_SHOW") == "1"
start = time.monotonic()
proc = subprocess.run(cmd, stdout=None if show else subprocess.DEVNULL,
                      stderr=None if show else subprocess.DEVNULL)
elapsed = time.monotonic() - start
rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": elapsed, "peak_rss_mib": rss_kib / 1024, "exit": proc.returncode}))
