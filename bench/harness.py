"""Processes, load generators and the results table of bench/run.sh.

Every process started here is remembered by its pid and stopped by
`Procs.stop_all` (SIGTERM to the group it leads, then SIGKILL), which the
caller runs on exit, on an error and on SIGINT/SIGTERM/SIGHUP.
"""

import os
import re
import secrets
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request

SUBSCRIPTION_JSON = (
    b'{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":5,'
    b'"hard_limit_usd":5,"system_hard_limit_usd":5,"access_until":0}'
)
ROUTE = "/v1/dashboard/billing/subscription"
GRPC_METHOD = "/quota.v1.QuotaService/GetSubscription"


class BenchError(Exception):
    """A comparison that could not be measured; its rows say why."""


class Procs:
    """The processes of one run, each logging to a file of its own."""

    def __init__(self, work):
        self.work = work
        self.started = []

    def start(self, name, argv, env=None, cwd=None):
        log = open(os.path.join(self.work, f"{name}.log"), "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
        proc.log_path = log.name
        proc.bench_name = name
        log.close()
        self.started.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self):
        for proc in list(self.started):
            self.stop(proc)


def log_text(proc):
    with open(proc.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def wait_for(proc, pattern, what, timeout=60):
    """The first match of `pattern` in `proc`'s log, waiting while it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log_text(proc))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = "\n".join(log_text(proc).splitlines()[-15:])
    raise BenchError(f"{proc.bench_name} did not report {what}; its log ends:\n{tail}")


# The address a quotad server announces once it can answer.
REST_AT = r"REST listening on http://(\S+)"
GRPC_AT = r"gRPC listening on (\S+)"
BASELINE_AT = r"listening on (\S+)"


class Quotad:
    """Starts `quotad` subcommands with one admin secret and mints keys."""

    def __init__(self, procs, binary):
        self.procs = procs
        self.binary = binary
        self.admin = secrets.token_hex(32)
        self.env = dict(os.environ, QUOTA_ADMIN_TOKEN=self.admin)

    def serve(self, name, database_url, *extra, under=()):
        """`quotad serve`, run by the command `under` if given (valgrind, say)."""
        proc = self.procs.start(name, [*under, self.binary, "serve", "--database-url",
                                       database_url, "--grpc-addr", "127.0.0.1:0",
                                       "--http-addr", "127.0.0.1:0", *extra], env=self.env)
        return proc, wait_for(proc, REST_AT, "its REST address"), wait_for(
            proc, GRPC_AT, "its gRPC address")

    def grpc(self, name, database_url):
        proc = self.procs.start(name, [self.binary, "grpc", "--database-url", database_url,
                                       "--grpc-addr", "127.0.0.1:0"], env=self.env)
        return proc, wait_for(proc, GRPC_AT, "its gRPC address")

    def edge(self, name, upstream):
        proc = self.procs.start(name, [self.binary, "edge", "--upstream",
                                       f"http://{upstream}", "--http-addr", "127.0.0.1:0"],
                                env=self.env)
        return proc, wait_for(proc, REST_AT, "its REST address")

    def migrate(self, database_url):
        run([self.binary, "migrate", "--database-url", database_url], env=self.env)

    def five_dollar_key(self, grpc_addr):
        out = run([self.binary, "token", "create", "--server", f"http://{grpc_addr}",
                   "--name", "bench", "--quota-usd", "5"], env=self.env)
        key = out.strip()
        if not key.startswith("sk-"):
            raise BenchError(f"quotad token create printed {out!r}, not a key")
        return key


def run(argv, env=None, timeout=120):
    done = subprocess.run(argv, capture_output=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} failed ({done.returncode}): "
                         f"{done.stderr.decode(errors='replace').strip()[-800:]}")
    return done.stdout.decode()


def get(url, key):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def expect_subscription(name, status, body):
    """An answer of the route is exactly quota's bytes for the $5 key."""
    if status != 200 or body != SUBSCRIPTION_JSON:
        raise BenchError(f"{name} answered {status} {body[:200]!r}, not the $5 key's body")


def check_subscription(name, addr, key):
    """The server at `addr` answers the route with exactly quota's bytes."""
    expect_subscription(name, *get(f"http://{addr}{ROUTE}", key))


def _ms(number, unit):
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(addr, key, seconds, connections=64, path=ROUTE):
    """One wrk run (one thread): requests/s and p99 in ms."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-H", f"Authorization: Bearer {key}", f"http://{addr}{path}"]
    out = run(argv, timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if not rps or not p99:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    failed = int(bad.group(1)) if bad else 0
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    return {"rps": float(rps.group(1)), "p99": _ms(*p99.groups()), "failed": failed}


def grpc_body(work):
    """A gRPC frame of an empty GetSubscriptionRequest: uncompressed, length 0."""
    path = os.path.join(work, "get_subscription.grpc")
    with open(path, "wb") as f:
        f.write(b"\x00\x00\x00\x00\x00")
    return path


def h2load(addr, key, body, seconds=None, requests=None, clients=16, streams=16):
    """One h2load run of GetSubscription: calls/s and data bytes per call.

    A gRPC error is an HTTP 200 whose trailers carry the status and whose body
    is empty, so a call without data counts as failed."""
    argv = ["h2load", f"-c{clients}", f"-m{streams}", "-d", body,
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"authorization: Bearer {key}"]
    argv += [f"-D{seconds}"] if seconds else [f"-n{requests}"]
    out = run(argv + [f"http://{addr}{GRPC_METHOD}"], timeout=(seconds or 10) + 60)
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    data = re.search(r"\((\d+)\) data", out)
    if not rps or not done or not data:
        raise BenchError(f"cannot read h2load's output:\n{out}")
    calls, succeeded = int(done.group(1)), int(done.group(2))
    per_call = int(data.group(1)) / max(calls, 1)
    # A $5 key's Subscription is about 40 bytes plus the 5-byte frame header.
    failed = calls - succeeded if per_call >= 20 else calls
    return {"rps": float(rps.group(1)), "failed": failed, "calls": calls}


def median_runs(measures, runs):
    """Runs each of `measures` (name -> no-argument function) `runs` times,
    interleaved, so that a change in the machine's load hits all alike."""
    results = {name: [] for name in measures}
    for _ in range(runs):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


def summary(samples, field):
    values = [s[field] for s in samples]
    return statistics.median(values), min(values), max(values)


class Table:
    """The results: one row per comparison, with its target."""

    def __init__(self):
        self.rows = []

    def add(self, what, figure, baseline="", ratio=None, target=None, at_least=True,
            note=""):
        if ratio is None or target is None:
            result = note or ""
        else:
            ok = ratio >= target if at_least else ratio <= target
            result = "ok" if ok else "MISSED"
            if note:
                result += f" ({note})"
        shown_target = "" if target is None else ("≥ " if at_least else "≤ ") + f"{target:g}"
        shown_ratio = "" if ratio is None else f"{ratio:.2f}"
        self.rows.append((what, figure, baseline, shown_ratio, shown_target, result))

    def fail(self, what, reason):
        self.rows.append((what, "not measured", "", "", "", f"ERROR: {reason}"))

    def render(self):
        head = ("what", "figure", "baseline", "ratio", "target", "result")
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)

    def counts(self):
        met = sum(1 for r in self.rows if r[5].startswith("ok"))
        missed = sum(1 for r in self.rows if r[5].startswith("MISSED"))
        errors = sum(1 for r in self.rows if r[5].startswith("ERROR"))
        return met, missed, errors


def rate(median, low, high, unit="req/s"):
    return f"{median:,.0f} {unit} ({low:,.0f}–{high:,.0f})"
