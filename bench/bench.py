"""bench/run.sh's measurements: every comparison of the README's Performance
section in one run, each against a baseline started here, then one table.

Run through bench/run.sh, which checks the tools and builds the binaries:
    python3 bench/bench.py --target DIR [--venv DIR] [read split grpc memory usage debits metrics instructions]
"""

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import datetime, timezone

import harness
import sections
from harness import BenchError

SECTIONS = ["read", "split", "grpc", "memory", "usage", "debits", "metrics", "instructions"]
HERE = os.path.dirname(os.path.abspath(__file__))


class Context:
    """What every section shares: binaries, processes, databases, settings."""

    def __init__(self, args, work):
        self.target = args.target
        self.venv = args.venv
        self.work = work
        self.seconds = int(os.environ.get("BENCH_SECONDS", "4"))
        self.runs = int(os.environ.get("BENCH_RUNS", "3"))
        self.procs = harness.Procs(work)
        self.quotad = harness.Quotad(self.procs, self.binary("quotad"))
        self.postgres = os.environ.get("QUOTA_BENCH_POSTGRES") or os.environ.get(
            "QUOTA_TEST_POSTGRES_URL") or "postgres://postgres@127.0.0.1:5432/test"
        self.databases = []

    def binary(self, name):
        return os.path.join(self.target, "release", name)

    def example(self, name):
        return os.path.join(self.target, "release", "examples", name)

    def baseline(self, mode, *extra):
        proc = self.procs.start(f"baseline-{mode}", [self.binary("baseline"), mode, *extra])
        return harness.wait_for(proc, harness.BASELINE_AT, "its address")

    def postgres_database(self, purpose):
        """A fresh PostgreSQL database's URL, dropped at the end of the run."""
        if not shutil.which("psql"):
            raise BenchError("psql is missing (Debian package postgresql-client)")
        name = f"quota_bench_{os.getpid()}_{purpose}"
        try:
            harness.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", self.postgres, "-c",
                         f"CREATE DATABASE {name}"], timeout=30)
        except BenchError as e:
            raise BenchError(f"PostgreSQL at {redact(self.postgres)} is not usable "
                             f"(set QUOTA_BENCH_POSTGRES): {e}") from None
        self.databases.append(name)
        return urllib.parse.urlunsplit(urllib.parse.urlsplit(self.postgres)._replace(
            path=f"/{name}"))

    def drop_databases(self):
        for name in self.databases:
            subprocess.run(["psql", "-q", self.postgres, "-c",
                            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                           capture_output=True, timeout=60)
        self.databases = []

    def fastapi(self, sqlite_file):
        """uvicorn with 2 workers serving bench/fastapi_peer.py on `sqlite_file`."""
        uvicorn = os.path.join(self.venv or "", "bin", "uvicorn")
        if not self.venv or not os.access(uvicorn, os.X_OK):
            raise BenchError("no FastAPI virtualenv (bench/run.sh makes it with pip)")
        port = free_port()
        env = dict(os.environ, QUOTA_BENCH_SQLITE=sqlite_file)
        proc = self.procs.start("fastapi", [uvicorn, "fastapi_peer:app", "--app-dir", HERE,
                                            "--workers", "2", "--host", "127.0.0.1", "--port",
                                            str(port), "--no-access-log", "--log-level",
                                            "warning"], env=env)
        addr = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                harness.get(f"http://{addr}/healthz", "")
                return addr
            except OSError:
                time.sleep(0.2)
        raise BenchError(f"uvicorn did not start: {harness.log_text(proc)[-800:]}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redact(url):
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs ({model}), {platform.system()} {platform.release()}"


def load():
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def revision():
    try:
        out = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--venv")
    parser.add_argument("sections", nargs="*")
    args = parser.parse_args()
    chosen = args.sections or SECTIONS
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section {unknown[0]!r}; choose among: {' '.join(SECTIONS)}")

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

    started = datetime.now(timezone.utc)
    load_before = load()
    table = harness.Table()
    work = tempfile.mkdtemp(prefix="quota-bench-")
    ctx = Context(args, work)
    print(f"quota benchmark, {started:%Y-%m-%d %H:%M} UTC, {revision()}, on {machine()}")
    print(f"load average before: {load_before}; wrk/h2load {ctx.seconds} s per run, "
          f"median of {ctx.runs} (metrics: of {max(ctx.runs, 5)})\n", flush=True)
    try:
        for name in chosen:
            print(f"== {name}", flush=True)
            began = time.monotonic()
            try:
                getattr(sections, name)(ctx, table)
            except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                table.fail(name, str(e).splitlines()[0] if str(e) else type(e).__name__)
                print(f"{name}: {e}", file=sys.stderr)
            finally:
                ctx.procs.stop_all()
            print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        ctx.procs.stop_all()
        ctx.drop_databases()
        shutil.rmtree(work, ignore_errors=True)

    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    print()
    print(table.render())
    print()
    print(f"machine: {machine()}")
    print(f"load average before: {load_before}, after: {load()} "
          f"(above 0.5 per CPU before the run, the figures are noisy)")
    print(f"{started:%Y-%m-%d %H:%M} UTC, {revision()}, {elapsed:.0f} s")
    met, missed, errors = table.counts()
    verdict = "every target met" if not missed and not errors else "NOT every target met"
    print(f"targets: {met} met, {missed} MISSED, {errors} not measured: {verdict}")
    # Missed targets are a result, not a failure of the command; a comparison
    # that could not be measured is.
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
