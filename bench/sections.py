"""The comparisons of bench/run.sh, one function per section; each adds its
rows to the table. The targets are those of the README's Performance section."""

import hashlib
import http.client
import os
import re
import signal
import sqlite3
import subprocess
import time

import harness
from harness import BenchError, median_runs, rate, summary, wrk

WARM_UP_SECONDS = 1


def _figure(samples):
    rps = summary(samples, "rps")
    p99 = summary(samples, "p99")[0]
    failed = sum(s["failed"] for s in samples)
    shown = f"{rate(*rps)}, p99 {p99:.1f} ms"
    return (shown + (f", {failed} FAILED" if failed else "")), rps[0], p99, failed


def _rest(ctx, servers, runs=None):
    """wrk -t1 -c64 on each `name -> (addr, key)`, warmed up, interleaved."""
    for name, (addr, key) in servers.items():
        harness.check_subscription(name, addr, key)
        wrk(addr, key, WARM_UP_SECONDS)
    measures = {name: (lambda a=addr, k=key: wrk(a, k, ctx.seconds))
                for name, (addr, key) in servers.items()}
    samples = median_runs(measures, runs or ctx.runs)
    return {name: _figure(runs_of) for name, runs_of in samples.items()}


def _failed_note(*figures):
    failed = sum(f[3] for f in figures)
    return f"{failed} requests failed" if failed else ""


def read(ctx, table):
    """REST `quotad serve` on SQLite and PostgreSQL vs a static handler and FastAPI."""
    db_file = os.path.join(ctx.work, "read.db")
    _, rest, grpc = ctx.quotad.serve("serve-sqlite", f"sqlite://{db_file}")
    key = ctx.quotad.five_dollar_key(grpc)
    servers = {"static": (ctx.baseline("static-rest"), key), "sqlite": (rest, key)}
    skipped = {}
    try:
        url = ctx.postgres_database("read")
        _, rest_pg, grpc_pg = ctx.quotad.serve("serve-postgres", url)
        servers["postgres"] = (rest_pg, ctx.quotad.five_dollar_key(grpc_pg))
    except BenchError as e:
        skipped["postgres"] = str(e)
    try:
        servers["fastapi"] = (ctx.fastapi(db_file), key)
    except BenchError as e:
        skipped["fastapi"] = str(e)
    got = _rest(ctx, servers)
    static = got["static"]
    table.add("REST static axum handler (baseline)", static[0])
    for name, what, target in (("sqlite", "SQLite file", 0.60),
                               ("postgres", "PostgreSQL", 0.50)):
        if name not in got:
            table.fail(f"REST `quotad serve`, {what}", skipped[name])
            continue
        ours = got[name]
        table.add(f"REST `quotad serve`, {what}", ours[0], f"{static[1]:,.0f} static",
                  ours[1] / static[1], target, note=_failed_note(ours, static))
        table.add(f"REST `quotad serve`, {what}: p99", f"{ours[2]:.1f} ms",
                  f"{static[2]:.1f} ms static", ours[2] / static[2], 2.0, at_least=False)
    if "fastapi" in got:
        peer = got["fastapi"]
        table.add("REST `quotad serve`, SQLite, vs FastAPI + uvicorn (2 workers)",
                  got["sqlite"][0], f"{peer[1]:,.0f} FastAPI", got["sqlite"][1] / peer[1], 6.0,
                  note=_failed_note(peer))
    else:
        table.fail("REST `quotad serve` vs FastAPI", skipped["fastapi"])


def split(ctx, table):
    """`quotad edge` -> `quotad grpc` vs an axum -> constant tonic bridge."""
    _, grpc = ctx.quotad.grpc("grpc-sqlite", f"sqlite://{os.path.join(ctx.work, 'split.db')}")
    key = ctx.quotad.five_dollar_key(grpc)
    _, edge = ctx.quotad.edge("edge", grpc)
    constant = ctx.baseline("constant-grpc")
    bridge = ctx.baseline("bridge", "--upstream", f"http://{constant}")
    got = _rest(ctx, {"bridge": (bridge, key), "split": (edge, key)})
    ours, base = got["split"], got["bridge"]
    table.add("REST axum→tonic bridge over loopback (baseline)", base[0])
    table.add("REST `quotad edge` → `quotad grpc`, SQLite file", ours[0],
              f"{base[1]:,.0f} bridge", ours[1] / base[1], 0.80,
              note=_failed_note(ours, base))


def grpc(ctx, table):
    """gRPC GetSubscription (h2load -c16 -m16) vs a constant tonic unary."""
    _, ours = ctx.quotad.grpc("grpc-sqlite", f"sqlite://{os.path.join(ctx.work, 'grpc.db')}")
    key = ctx.quotad.five_dollar_key(ours)
    servers = {"constant": ctx.baseline("constant-grpc"), "quotad": ours}
    body = harness.grpc_body(ctx.work)
    for name, addr in servers.items():
        check = harness.h2load(addr, key, body, requests=1, clients=1, streams=1)
        if check["failed"]:
            raise BenchError(f"GetSubscription on {name} failed (no message in the answer)")
        harness.h2load(addr, key, body, seconds=WARM_UP_SECONDS)
    measures = {name: (lambda a=addr: harness.h2load(a, key, body, seconds=ctx.seconds))
                for name, addr in servers.items()}
    got = {name: (summary(samples, "rps"), sum(s["failed"] for s in samples))
           for name, samples in median_runs(measures, ctx.runs).items()}
    (base, base_failed), (mine, failed) = got["constant"], got["quotad"]
    table.add("gRPC constant tonic unary (baseline)", rate(*base, "calls/s"))
    table.add("gRPC `GetSubscription`, `quotad grpc`, SQLite file", rate(*mine, "calls/s"),
              f"{base[0]:,.0f} constant", mine[0] / base[0], 0.70,
              note=f"{failed + base_failed} calls failed" if failed + base_failed else "")


MEMORY_KEYS = 100_000
MEMORY_LIMIT_MIB = 64

# Reads keys sk-000…001 to sk-000…100000 once each, in order, from one wrk
# thread; once every key has an answer it writes the tally to DONE_FILE and
# stops, and bench.py stops wrk.
MEMORY_LUA = """
local n, answers, bad, keys = 0, 0, 0, KEYS
request = function()
  n = n < keys and n + 1 or keys
  return wrk.format("GET", "ROUTE", {["Authorization"] = string.format("Bearer sk-%048d", n)})
end
response = function(status)
  answers = answers + 1
  if status ~= 200 then bad = bad + 1 end
  if answers == keys then
    local f = io.open("DONE_FILE", "w")
    f:write(string.format("%d %d\\n", answers, bad))
    f:close()
    wrk.thread:stop()
  end
end
"""


def _seed_keys(db_file, count):
    """`count` enabled $5 tokens whose keys are sk- and 48 digits of their number."""
    now = int(time.time())
    db = sqlite3.connect(db_file)
    rows = ((hashlib.sha256(f"sk-{n:048d}".encode()).hexdigest(), "sk-0000…", f"bench-{n}",
             2_500_000, now, now) for n in range(1, count + 1))
    with db:
        db.executemany("INSERT INTO quota_tokens (key_digest, display_prefix, name, remaining,"
                       " used, held, unlimited, expires_at, status, created_at, updated_at)"
                       " VALUES (?, ?, ?, ?, 0, 0, 0, NULL, 1, ?, ?)", rows)
    db.close()


def _vm(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no {field} in /proc/{pid}/status")


def memory(ctx, table):
    """Peak RSS of `quotad serve` once 100,000 distinct keys have been read."""
    db_file = os.path.join(ctx.work, "memory.db")
    ctx.quotad.migrate(f"sqlite://{db_file}")
    _seed_keys(db_file, MEMORY_KEYS)
    proc, rest, _ = ctx.quotad.serve("serve-memory", f"sqlite://{db_file}")
    harness.check_subscription("quotad serve", rest, f"sk-{1:048d}")
    at_start = _vm(proc.pid, "VmHWM")
    done = os.path.join(ctx.work, "memory.done")
    script = os.path.join(ctx.work, "memory.lua")
    with open(script, "w") as f:
        f.write(MEMORY_LUA.replace("KEYS", str(MEMORY_KEYS)).replace("ROUTE", harness.ROUTE)
                .replace("DONE_FILE", done))
    began = time.monotonic()
    reader = subprocess.Popen(["wrk", "-t1", "-c64", "-d600s", "-s", script,
                               f"http://{rest}{harness.ROUTE}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(done) and reader.poll() is None:
            if time.monotonic() - began > 300:
                raise BenchError("100,000 reads took more than 300 s")
            time.sleep(0.1)
    finally:
        if reader.poll() is None:
            reader.send_signal(signal.SIGINT)
        reader.wait()
    if not os.path.exists(done):
        raise BenchError("wrk stopped before every key was read")
    time.sleep(0.2)
    with open(done) as f:
        answers, bad = (int(n) for n in f.read().split())
    peak, now = _vm(proc.pid, "VmHWM"), _vm(proc.pid, "VmRSS")
    cache = os.environ.get("QUOTA_CACHE_CAPACITY", "default")
    table.add(f"memory: peak RSS of `quotad serve` after {MEMORY_KEYS:,} distinct keys read",
              f"{peak:.1f} MiB", f"{MEMORY_LIMIT_MIB} MiB ({at_start:.1f} at start)",
              peak / MEMORY_LIMIT_MIB, 1.0,
              at_least=False,
              note=(f"{bad} of {answers} reads failed" if bad else
                    f"RSS after {now:.1f} MiB, cache capacity {cache}, "
                    f"{answers / (time.monotonic() - began):,.0f} reads/s"))


USAGE_LINE = re.compile(r"^usage\s+(.*?)\s+(\w+=.*)$")


def usage(ctx, table):
    """The usage example's p50 per database and window, against 5 ms."""
    example = ctx.example("usage_bench")
    if not os.access(example, os.X_OK):
        raise BenchError("no usage_bench example (crates/quota-service/examples/usage_bench.rs)")
    extra = os.environ.get("BENCH_USAGE_ARGS", "").split()
    env = dict(os.environ, QUOTA_TEST_POSTGRES_URL=ctx.postgres)
    out = _stream([example, *extra], env, timeout=420)
    rows = 0
    for line in out.splitlines():
        found = USAGE_LINE.match(line.strip())
        if not found:
            continue
        fields = dict(f.split("=", 1) for f in found.group(2).split() if "=" in f)
        if "p50_ms" not in fields:
            continue
        p50 = _number(fields["p50_ms"])
        p99 = f", p99 {_number(fields['p99_ms']):.2f} ms" if "p99_ms" in fields else ""
        what = f"usage route: {found.group(1)}"
        if "ledger-scan" in found.group(1):
            # The former way, shown for comparison: not held to the target.
            table.add(what, f"p50 {p50:.2f} ms{p99}", note="the former ledger scan, for comparison")
        else:
            table.add(what, f"p50 {p50:.2f} ms{p99}", "5 ms", p50 / 5.0, 1.0, at_least=False)
        rows += 1
    if not rows:
        raise BenchError("usage_bench printed no `usage … p50_ms=…` line")


def _number(text):
    found = re.match(r"[\d.]+", text)
    if not found:
        raise BenchError(f"not a number: {text!r}")
    return float(found.group(0))


def _stream(argv, env, timeout):
    """Runs `argv`, echoing its output as it comes; its stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)
    lines, began = [], time.monotonic()
    try:
        for line in proc.stdout:
            print("   " + line, end="", flush=True)
            lines.append(line)
            if time.monotonic() - began > timeout:
                raise BenchError(f"{os.path.basename(argv[0])} took over {timeout} s")
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"{os.path.basename(argv[0])} exited {proc.returncode}: "
                         f"{''.join(lines[-3:]).strip()}")
    return "".join(lines)


def _debit_rows(out):
    """debit_bench's table rows as dicts keyed by its header."""
    header, rows = None, []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set("".join(cells)) <= set("-: "):
            continue
        if header is None and "database" in cells:
            header = cells
        elif header:
            rows.append(dict(zip(header, cells)))
    return rows


def debits(ctx, table):
    """debit_bench: Consume vs pgbench on PostgreSQL, and reserve + settle pairs."""
    example = ctx.example("debit_bench")
    if not os.access(example, os.X_OK):
        raise BenchError("no debit_bench example was built")
    seconds = os.environ.get("BENCH_DEBIT_SECONDS", "5")
    out = _stream([example, "--seconds", seconds, "--postgres", ctx.postgres], os.environ,
                  timeout=600)
    targets = {("PostgreSQL", "spread over 1000 tokens"): 1.5,
               ("PostgreSQL", "one hot token"): 5.0}
    for row in _debit_rows(out):
        database, workload, calls = row.get("database"), row.get("workload"), row.get("calls")
        ratio = row.get("ratio", "")
        if not ratio:
            continue
        what = f"debits: {database}, {workload}, {calls}"
        if calls == "Consume" and (database, workload) in targets:
            table.add(what, f"{float(row['per s']):,.0f}/s, p99 {row['p99 ms']} ms",
                      f"{float(row['pgbench tx/s']):,.0f} pgbench tx/s", float(ratio),
                      targets[(database, workload)])
        elif calls and calls.startswith("pgbench"):
            table.add(what, f"{float(row['per s']):,.0f} pairs/s",
                      "pgbench debits of the same run", float(ratio), None,
                      note="PostgreSQL's own pairs / debits, for the pairs row above")
        elif calls and calls != "Consume":
            cpu = row.get("cpu ratio", "")
            table.add(what, f"{float(row['per s']):,.0f} pairs/s", "Consume of the same run",
                      float(ratio), 0.5,
                      note=f"{cpu} by CPU time" if cpu else "")
    if not any(r[0].startswith("debits:") for r in table.rows):
        raise BenchError("debit_bench printed no row this command can read")


def metrics(ctx, table):
    """`quotad serve` with --metrics-addr vs without, on a SQLite file each."""
    servers, procs = {}, {}
    for name, extra in (("plain", ()), ("metrics", ("--metrics-addr", "127.0.0.1:0"))):
        procs[name], rest, grpc_addr = ctx.quotad.serve(f"serve-{name}",
                                                        f"sqlite://{ctx.work}/{name}.db", *extra)
        servers[name] = (rest, ctx.quotad.five_dollar_key(grpc_addr))
    scrape = harness.wait_for(procs["metrics"], r"metrics listening on (http://\S+)",
                              "its metrics address")
    got = _rest(ctx, servers, runs=max(ctx.runs, 5))
    status, text = harness.get(scrape, "")
    if status != 200 or b"quota_http_requests_total" not in text:
        raise BenchError(f"{scrape} did not show quota_http_requests_total ({status})")
    with_metrics, without = got["metrics"], got["plain"]
    table.add("REST `quotad serve`, SQLite, without metrics", without[0])
    table.add("REST `quotad serve`, SQLite, with `--metrics-addr`", with_metrics[0],
              f"{without[1]:,.0f} without", with_metrics[1] / without[1], 0.95,
              note=_failed_note(with_metrics, without))


CALLGRIND_WARM_UP, CALLGRIND_READS = 300, 3000


def _keep_alive_reads(addr, key, count):
    """`count` reads of the subscription route over one keep-alive connection."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        for _ in range(count):
            conn.request("GET", harness.ROUTE, headers={"Authorization": f"Bearer {key}"})
            answer = conn.getresponse()
            harness.expect_subscription(f"{addr}, to a counted read,", answer.status,
                                        answer.read())
    except http.client.HTTPException as e:
        raise BenchError(f"{addr} broke off a counted read: {e!r}") from e
    finally:
        conn.close()


def _callgrind_control(proc, *args):
    """callgrind_control on `proc`; it exits 0 even when it found no callgrind
    run, so its output says whether it worked."""
    out = harness.run(["callgrind_control", *args, str(proc.pid)])
    if "Error" in out or "No active" in out or "not detected" in out:
        raise BenchError(f"callgrind_control {' '.join(args)} on {proc.bench_name}: "
                         f"{out.strip()[-300:]}")


def _instructions_per_read(proc, out_file, addr, key):
    """The instructions `proc`, started by `_under_callgrind` with counting
    off, runs per read: counted over CALLGRIND_READS reads after
    CALLGRIND_WARM_UP, every thread of it, from callgrind's dump."""
    harness.check_subscription(proc.bench_name, addr, key)
    _keep_alive_reads(addr, key, CALLGRIND_WARM_UP)
    _callgrind_control(proc, "--instr=on")
    _keep_alive_reads(addr, key, CALLGRIND_READS)
    _callgrind_control(proc, "--dump")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # The first explicit dump; the file without a number comes at exit.
        dump = f"{out_file}.{proc.pid}.1"
        if os.path.exists(dump):
            with open(dump, errors="replace") as f:
                totals = re.search(r"^totals:\s+(\d+)", f.read(), re.M)
            if totals and int(totals.group(1)) > 0:
                return int(totals.group(1)) / CALLGRIND_READS
            if totals:
                raise BenchError(f"callgrind counted nothing in {proc.bench_name}")
        time.sleep(0.2)
    raise BenchError(f"callgrind wrote no totals for {proc.bench_name}")


def _under_callgrind(ctx, name):
    """valgrind's callgrind with counting off until switched on, and its output file."""
    out_file = os.path.join(ctx.work, f"callgrind.{name}")
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out_file}.%p"], out_file


def instructions(ctx, table):
    """Instructions per cached read, counted by callgrind: the static handler,
    `quotad serve` on a SQLite file, and the same with --metrics-addr. Unlike
    throughput, a count does not move with the machine's other load."""
    counts, key = {}, None
    for name, extra in (("plain", ()), ("metrics", ("--metrics-addr", "127.0.0.1:0"))):
        under, out_file = _under_callgrind(ctx, f"serve-{name}")
        proc, rest, grpc_addr = ctx.quotad.serve(f"callgrind-serve-{name}",
                                                 f"sqlite://{ctx.work}/callgrind-{name}.db",
                                                 *extra, under=under)
        key = ctx.quotad.five_dollar_key(grpc_addr)
        scrape = None
        if extra:
            scrape = harness.wait_for(proc, r"metrics listening on (http://\S+)",
                                      "its metrics address")
        counts[name] = _instructions_per_read(proc, out_file, rest, key)
        if scrape:
            status, text = harness.get(scrape, "")
            if status != 200 or b"quota_http_requests_total" not in text:
                raise BenchError(f"{scrape} did not show quota_http_requests_total ({status})")
        ctx.procs.stop(proc)
    under, out_file = _under_callgrind(ctx, "static")
    proc = ctx.procs.start("callgrind-static", [*under, ctx.binary("baseline"), "static-rest"])
    addr = harness.wait_for(proc, harness.BASELINE_AT, "its address")
    counts["static"] = _instructions_per_read(proc, out_file, addr, key)
    ctx.procs.stop(proc)
    static, plain, metrics = counts["static"], counts["plain"], counts["metrics"]
    how = f"callgrind, {CALLGRIND_READS:,} keep-alive reads after {CALLGRIND_WARM_UP}"
    table.add("instructions per read: static axum handler (baseline)", f"{static:,.0f}",
              note=how)
    table.add("instructions per read: `quotad serve`, SQLite file", f"{plain:,.0f}",
              f"{static:,.0f} static", static / plain, None,
              note="no target: the read path's own cost, for comparing builds")
    table.add("instructions per read: `quotad serve` with `--metrics-addr`", f"{metrics:,.0f}",
              f"{plain:,.0f} without", plain / metrics, 0.95)
