#!/usr/bin/env bash
# The benchmark of the README's Performance section: every comparison in one
# run, each against a baseline it starts itself, then one table of figures,
# ratios and targets.
#
#   bench/run.sh                      # everything (about 6 minutes after the build)
#   bench/run.sh read grpc            # a subset: read split grpc memory usage debits metrics instructions
#
# Settings (environment): BENCH_SECONDS (wrk/h2load seconds per run, 4),
# BENCH_RUNS (runs per figure, median taken; 3), BENCH_DEBIT_SECONDS (5),
# QUOTA_BENCH_POSTGRES (a PostgreSQL server it may create databases on;
# default QUOTA_TEST_POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/test),
# BENCH_USAGE_ARGS (extra arguments of the usage example). QUOTA_* variables
# such as QUOTA_LOG or QUOTA_CACHE_CAPACITY reach every quotad it starts.
#
# It checks for what it needs (wrk, h2load, pgbench, psql, python3 with venv,
# valgrind)
# and installs the Debian packages when run as root, or names what is
# missing. Exit 0 when everything was measured, targets met or not (the table
# says which were missed); 1 when a comparison could not be measured; 2 when a
# tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(read split grpc memory usage debits metrics instructions)
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=("${all[@]}")
wants() {
  local s
  for s in "${sections[@]}"; do
    for w in "$@"; do [ "$s" = "$w" ] && return 0; done
  done
  return 1
}
for s in "${sections[@]}"; do
  case " ${all[*]} " in
    *" $s "*) ;;
    *) echo "unknown section '$s'; choose among: ${all[*]}" >&2; exit 2 ;;
  esac
done

# tool -> Debian package
missing=() packages=()
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    missing+=("$1 (Debian package $2)")
    packages+=("$2")
  fi
}
need python3 python3
wants read split memory metrics && need wrk wrk
wants grpc && need h2load nghttp2-client
wants read debits && need psql postgresql-client
wants debits && need pgbench postgresql-client
wants instructions && need callgrind_control valgrind
if wants read && command -v python3 >/dev/null 2>&1 && ! python3 -m venv --help >/dev/null 2>&1; then
  missing+=("python3 -m venv (Debian package python3-venv)")
  packages+=("python3-venv")
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "bench/run.sh needs, and cannot find:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    echo "install them with: sudo apt-get install ${packages[*]}" >&2
    exit 2
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "bench/run.sh needs cargo (https://rustup.rs)" >&2
  exit 2
fi

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
venv="$target/bench-venv"
if wants read && [ ! -x "$venv/bin/uvicorn" ]; then
  echo "installing FastAPI and uvicorn into $venv"
  if ! { python3 -m venv "$venv" &&
    "$venv/bin/pip" install -q 'fastapi>=0.115,<1' 'uvicorn[standard]>=0.30,<1'; }; then
    echo "could not install FastAPI from PyPI: its comparison will say so" >&2
  fi
fi

if wants read split grpc memory metrics instructions; then
  echo "building quotad and the baselines (release)"
  cargo build --release -q -p quotad -p quota-bench-baselines
fi
examples=()
wants debits && examples+=(--example debit_bench)
# The usage example arrives with per-day totals; without it the usage row says so.
wants usage && [ -f crates/quota-service/examples/usage_bench.rs ] && examples+=(--example usage_bench)
if [ ${#examples[@]} -gt 0 ]; then
  echo "building ${examples[*]} (release)"
  cargo build --release -q -p quota-service "${examples[@]}"
fi

exec python3 bench/bench.py --target "$target" --venv "$venv" "${sections[@]}"
