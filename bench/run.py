#!/usr/bin/env python3
"""The lc-import benchmark: starts release sandboxes on loopback, runs each measure, prints one
table (measure, value, reference, ratio). Called by bench/run.sh after a release build.

Every figure comes from this run; rates against wrk are measured in the same run on the same
sandbox and payload, so the ratio is what to read on a shared, noisy machine.

Knobs (environment): RATE_SECONDS (180), THROUGHPUT_ROWS (1000000), MEMORY_ROWS
("100000,1000000,10000000"), SKEW_ROWS (1000000), RESUME_ROWS (1000000), WRK_SECONDS (10),
RESOLVE_ROWS (1000000), RESOLVE_CONTACTS ("2000,20000,500000"), REHEARSAL_CONTACTS (20000),
ONLY (comma-separated subset of: validate,rate,throughput,memory,skew,resume,resolve).
"""
import json, os, re, resource, shutil, subprocess, sys, tempfile, threading, time, urllib.request

BIN = "target/release/lc-import"
GEN = "target/release/examples/generate"
TOKEN = "sandbox-token"
ONLY = set(filter(None, os.environ.get("ONLY", "").split(",")))
TMP = tempfile.mkdtemp(prefix="lc-bench-")
rows_out = []


def want(name):
    return not ONLY or name in ONLY


def row(measure, value, reference, ratio=None, note=""):
    if ratio is None:
        ratio = value / reference if reference else float("nan")
    rows_out.append((measure, value, reference, ratio, note))
    print(f"  {measure}: {value:,.2f} (reference {reference:,}, ratio {ratio:.2f}) {note}", file=sys.stderr, flush=True)


def generate(n, conversations=None, hot=None):
    path = os.path.join(TMP, f"in-{n}-{conversations}-{hot}.csv")
    if not os.path.exists(path):
        args = [GEN, str(n)]
        if conversations or hot:
            args.append(str(conversations or max(n // 20, 1)))
        if hot:
            args.append(str(hot))
        with open(path, "w") as f:
            subprocess.run(args, stdout=f, check=True)
    return path


def generate_migration(n, contacts):
    """A migration's export (resolving mode): n rows of `contacts` contacts named by phone and
    e-mail, no HighLevel IDs, round-robin."""
    path = os.path.join(TMP, f"migration-{n}-{contacts}.csv")
    if not os.path.exists(path):
        with open(path, "w") as f:
            subprocess.run([GEN, str(n), "--contacts", str(contacts)], stdout=f, check=True)
    return path


class Sandbox:
    def __init__(self, *flags, record=None):
        # --reads off: the bench stores millions of messages; keeping them would skew memory.
        args = [BIN, "sandbox", "--listen", "127.0.0.1:0", "--reads", "off", *flags]
        if record:
            args += ["--record", record]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://\S+", line)
        if not m:
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.url = m.group(0)

    def stats(self):
        with urllib.request.urlopen(self.url + "/__stats") as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def measure(args, env=None):
    """Runs a command; returns (seconds, peak RSS MiB of that child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    # A fresh process per measure: ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so
    # each measured command runs through a small wrapper that reports its own peak.
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys;"
               "p=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,text=True);"
               "sys.stdout.write(p.stdout);"
               "print('@@RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)", *args]
    p = subprocess.run(wrapper, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - start
    m = re.search(r"@@RSS (\d+) (-?\d+)", p.stdout)
    rss, code = int(m.group(1)) / 1024, int(m.group(2))
    del before
    return seconds, rss, code, p.stdout


def importer(input_path, url, *flags, results=None):
    results = results or input_path + f".{time.monotonic_ns()}.results.csv"
    args = [BIN, "run", input_path, "--base-url", url, "--results", results, "-q", *flags]
    seconds, rss, code, out = measure(args, {"LC_TOKEN": TOKEN})
    if code not in (0,):
        raise SystemExit(f"run exited {code}: {' '.join(args)}\n{out}")
    return seconds, rss, results


def wrk(url, connections, seconds):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", "bench/sandbox_load.lua", url],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def client_loop(url, connections):
    out = subprocess.run(["target/release/examples/client_loop", url, "200000", str(connections)],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def achieved_rate(record, period):
    """Requests per second over the whole windows of PERIOD from the first arrival."""
    times = []
    with open(record) as f:
        for line in f:
            t = json.loads(line)["receivedAt"]
            times.append(time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + t[19:-1]))
    times.sort()
    span = times[-1] - times[0]
    whole = int(span // period) * period
    count = sum(1 for t in times if t < times[0] + whole)
    return count / whole, len(times)


def bench_validate():
    for n in (100_000, 1_000_000):
        path = generate(n)
        s, rss, code, _ = measure(["taskset", "-c", "0", BIN, "validate", path, "--results", path + ".v.csv"])
        row(f"validate {n:,} rows: rows/s (1 core)", n / s, 500_000)
        row(f"validate {n:,} rows: peak RSS MiB", rss, 50)
    # The same export with accents, curly quotes and a euro sign in a fifth of the rows: as UTF-8,
    # as Windows-1252 read with --encoding, as UTF-16 by its BOM, and gzip-compressed; the UTF-8
    # file is the reference of each ratio.
    import gzip
    n = 1_000_000
    with open(generate(n), encoding="utf-8") as f:
        text = f.read().replace("Running 10 min late, sorry", "En retard de 10 min, désolé – “5 €”")
    files = {}
    for label, encode, flags in [
        ("UTF-8", lambda t: t.encode("utf-8"), []),
        ("Windows-1252, --encoding windows-1252", lambda t: t.encode("cp1252"), ["--encoding", "windows-1252"]),
        ("UTF-16LE with BOM", lambda t: t.encode("utf-16"), []),
        ("UTF-8 gzip", lambda t: gzip.compress(t.encode("utf-8"), 6), []),
    ]:
        path = os.path.join(TMP, f"accented-{len(files)}.csv")
        with open(path, "wb") as f:
            f.write(encode(text))
        files[label] = (path, flags)
    del text
    reference = None
    for label, (path, flags) in files.items():
        s, rss, code, _ = measure(["taskset", "-c", "0", BIN, "validate", path, "--results", path + ".v.csv", *flags])
        if code != 0:
            raise SystemExit(f"validate {label} exited {code}")
        rate = n / s
        reference = reference or rate
        row(f"validate {n:,} rows with accents, {label}: rows/s (1 core)", rate, 500_000)
        row(f"  … against the UTF-8 file, peak RSS {rss:.1f} MiB", rate, round(reference), rate / reference)


def bench_rate():
    seconds = int(os.environ.get("RATE_SECONDS", "180"))
    # Concurrency must cover rate x latency (Little's law): 100/s at up to 300 ms needs 30 in flight.
    cases = [("100/10s", 100, 10, "100/10s", 16), ("1000/10s", 1000, 10, "1000/10s", 48),
             ("limit unknown", 100, 10, "none", 16)]
    results = {}

    def one(label, n, period, client_rate, concurrency):
        rows = int(n / period * (seconds + 2 * period))
        path = generate(rows, max(rows // 20, 1))
        record = os.path.join(TMP, f"rate-{label.replace(' ', '_').replace('/', '_')}.jsonl")
        sb = Sandbox("--rate", f"{n}/{period}s", "--daily", "none", "--latency", "50ms..300ms", record=record)
        try:
            importer(path, sb.url, "--rate", client_rate, "--concurrency", str(concurrency))
            results[label] = (achieved_rate(record, period), sb.stats()["rate_limited"], n / period)
        finally:
            sb.stop()

    threads = [threading.Thread(target=one, args=c) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for label, _, _, _, _ in cases:
        (rate, count), r429, limit = results[label]
        row(f"rate {label}: achieved req/s over {seconds}s+ ({count:,} req)", rate, limit, note="goal ratio >= 0.99")
        row(f"rate {label}: responses 429", r429, 0, ratio=float(r429), note="goal 0" + (" (a handful at start)" if "unknown" in label else ""))


def bench_throughput():
    n = int(os.environ.get("THROUGHPUT_ROWS", "1000000"))
    wrk_seconds = int(os.environ.get("WRK_SECONDS", "10"))
    path = generate(n)
    for conc in (16, 64):
        sb = Sandbox("--rate", "none", "--daily", "none")
        try:
            raw = wrk(sb.url, conc, wrk_seconds)
            client = client_loop(sb.url, conc)
            s, rss, _ = importer(path, sb.url, "--rate", "none", "--concurrency", str(conc))
            row(f"wrk raw req/s, {conc} connections", raw, raw)
            row(f"importer's HTTP client alone req/s, {conc} in flight", client, round(raw))
            row(f"run {n:,} rows, concurrency {conc}: rows/s", n / s, round(raw), note="goal ratio >= 0.60")
        finally:
            sb.stop()


def bench_memory():
    sizes = [int(x) for x in os.environ.get("MEMORY_ROWS", "100000,1000000,10000000").split(",")]
    rss_by = {}
    for n in sizes:
        path = generate(n)
        sb = Sandbox("--rate", "none", "--daily", "none")
        try:
            s, rss, _ = importer(path, sb.url, "--rate", "none", "--concurrency", "16")
        finally:
            sb.stop()
        rss_by[n] = rss
        row(f"run {n:,} rows: peak RSS MiB", rss, 64)
        row(f"run {n:,} rows: rows/s", n / s, 1, ratio=float("nan"))
        os.remove(path)
    row(f"run RSS {max(sizes):,} / {min(sizes):,} rows", rss_by[max(sizes)] / rss_by[min(sizes)], 1.10, note="goal <= 1.10")


def bench_skew():
    n = int(os.environ.get("SKEW_ROWS", "1000000"))
    for label, path in (("uniform", generate(n)), ("skewed (one conversation = half the rows)", generate(n, n // 20, 0.5))):
        sb = Sandbox("--rate", "none", "--daily", "none")
        try:
            s, rss, _ = importer(path, sb.url, "--rate", "none", "--concurrency", "16")
            stats = sb.stats()
        finally:
            sb.stop()
        row(f"run {n:,} rows {label}: rows/s", n / s, 1, ratio=float("nan"))
        row(f"run {n:,} rows {label}: peak RSS MiB", rss, 64)
        row(f"run {n:,} rows {label}: out-of-order", stats["out_of_order"], 0, ratio=float(stats["out_of_order"]))


def bench_resume():
    n = int(os.environ.get("RESUME_ROWS", "1000000"))
    path = generate(n)
    sb = Sandbox("--rate", "none", "--daily", "none")
    try:
        _, _, results = importer(path, sb.url, "--rate", "none", "--concurrency", "16")
        before = sb.stats()["requests"]
        s, rss, _ = importer(path, sb.url, "--rate", "none", results=results)
        after = sb.stats()["requests"]
    finally:
        sb.stop()
    row(f"resume {n:,} rows all sent: seconds", s, 3, note="goal < 3 s")
    row(f"resume {n:,} rows all sent: peak RSS MiB", rss, 64)
    row(f"resume {n:,} rows all sent: requests made", after - before, 0, ratio=float(after - before))


LOCATION = "sandboxLocation0001"


def lookups(stats):
    return sum(stats[k] for k in ("contact_searches", "contact_upserts", "conversation_searches", "conversation_creates"))


def bench_resolve():
    """Resolving mode (rows named by phone and e-mail, every contact new, created): peak memory
    by distinct contacts for the same number of rows, then at the most contacts a resume (nothing
    left to do) and a run from the ID map alone (a fresh results file beside a copy of the ID
    map: every ID from the map, no lookup made), and a rehearsal of 2 rows per contact, where
    the lookups are most of the requests. Unthrottled on both sides."""
    n = int(os.environ.get("RESOLVE_ROWS", "1000000"))
    counts = [int(x) for x in os.environ.get("RESOLVE_CONTACTS", "2000,20000,500000").split(",")]
    flags = ["--location-id", LOCATION, "--create-contacts", "--rate", "none", "--concurrency", "16"]
    rss_by = {}
    for c in counts:
        path = generate_migration(n, c)
        sb = Sandbox("--rate", "none", "--daily", "none")
        try:
            s, rss, results = importer(path, sb.url, *flags)
            made = lookups(sb.stats())
            rss_by[c] = rss
            row(f"resolving run {n:,} rows, {c:,} contacts: peak RSS MiB", rss, 64, note="goal < 64")
            row(f"resolving run {n:,} rows, {c:,} contacts: rows/s", n / s, 1, ratio=float("nan"))
            row(f"resolving run {n:,} rows, {c:,} contacts: lookups", made, 4 * c, note="4 per new contact")
            if c != max(counts):
                continue
            before = sb.stats()["requests"]
            s, rss, _ = importer(path, sb.url, *flags, results=results)
            row(f"resume of it, all sent: seconds", s, 3, note="goal < 3 s")
            row(f"resume of it, all sent: peak RSS MiB", rss, 64)
            row(f"resume of it, all sent: requests made", sb.stats()["requests"] - before, 0, ratio=float(sb.stats()["requests"] - before))
            again = results + ".again.csv"
            shutil.copy(results + ".ids.csv", again + ".ids.csv")
            before = sb.stats()
            s, rss, _ = importer(path, sb.url, *flags, results=again)
            after = sb.stats()
            row(f"run from the ID map of {c:,} contacts ({n:,} rows): rows/s", n / s, 1, ratio=float("nan"))
            row(f"run from the ID map of {c:,} contacts: peak RSS MiB", rss, 64)
            row(f"run from the ID map of {c:,} contacts: lookups made", lookups(after) - lookups(before), 0,
                ratio=float(lookups(after) - lookups(before)))
        finally:
            sb.stop()
    if len(rss_by) > 1:
        row(f"resolving run RSS {max(counts):,} / {min(counts):,} contacts", rss_by[max(counts)] / rss_by[min(counts)], 1.15,
            note="goal <= 1.15")
    c = int(os.environ.get("REHEARSAL_CONTACTS", "20000"))
    path = generate_migration(2 * c, c)
    sb = Sandbox("--rate", "none", "--daily", "none")
    try:
        s, rss, _ = importer(path, sb.url, *flags)
        made = lookups(sb.stats())
    finally:
        sb.stop()
    row(f"rehearsal of {c:,} new contacts x 2 rows ({made:,} lookups): rows/s", 2 * c / s, 1000, note="goal: thousands")
    row(f"rehearsal of {c:,} new contacts x 2 rows: peak RSS MiB", rss, 64)


for name, f in [("validate", bench_validate), ("rate", bench_rate), ("throughput", bench_throughput),
                ("memory", bench_memory), ("skew", bench_skew), ("resume", bench_resume), ("resolve", bench_resolve)]:
    if want(name):
        print(f"== {name}", file=sys.stderr, flush=True)
        f()

print(f"| {'measure':<62} | {'value':>14} | {'reference':>12} | {'ratio':>6} |")
print(f"|{'-' * 64}|{'-' * 16}|{'-' * 14}|{'-' * 8}|")
for measure, value, reference, ratio, note in rows_out:
    ratio_s = "" if ratio != ratio else f"{ratio:.2f}"
    ref_s = "" if reference == 1 and ratio != ratio else f"{reference:,}"
    print(f"| {measure:<62} | {value:>14,.2f} | {ref_s:>12} | {ratio_s:>6} |")
subprocess.run(["rm", "-rf", TMP])
