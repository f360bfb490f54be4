#!/usr/bin/env bash
# The test command (README and .ci/run): prepare a fresh Debian machine, then run the suite.
#  - system packages: Debian chromium (browser tests); the PostgreSQL binaries if absent
#  - a throwaway PostgreSQL cluster (initdb in a temporary directory, a free port on 127.0.0.1),
#    stopped and removed at exit; an existing server is used only when CDS_TEST_DATABASE_URL names it
#  - a virtualenv in .venv with the project installed from requirements.lock (pinned) + editable package
#  - pytest over tests/; "no tests collected" (exit 5) is a failure, not a pass
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install $*" >&2; return 1; fi
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

[ -x /usr/bin/chromium ] || apt_install chromium fonts-dejavu-core

# The tests' PostgreSQL: a cluster of our own, never a server we did not start (unless told).
PG_TMP=""
stop_postgres() {
  [ -n "$PG_TMP" ] || return 0
  as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMP"
}
as_pg_owner() {  # initdb/postgres refuse to run as root: use the Debian 'postgres' user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
start_postgres() {
  if [ -n "${CDS_TEST_DATABASE_URL:-}" ]; then
    echo "PostgreSQL: the existing server named by CDS_TEST_DATABASE_URL"
    return 0
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ -z "$PG_BIN" ]; then
    apt_install postgresql
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/cds-test-pg.XXXXXX")
  trap stop_postgres EXIT
  if [ "$(id -u)" = 0 ]; then chown postgres "$PG_TMP"; fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg_owner "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
    >"$PG_TMP/initdb.log" 2>&1 || { cat "$PG_TMP/initdb.log" >&2; exit 1; }
  as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start \
    >/dev/null || { cat "$PG_TMP/server.log" >&2; exit 1; }
  export CDS_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL: throwaway cluster on 127.0.0.1:$port ($PG_TMP), removed at exit"
}
start_postgres

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ -f requirements.lock ]; then
  .venv/bin/pip install -q -r requirements.lock
fi
.venv/bin/pip install -q -e ".[dev]"

# HealthChain 0.16.1 (third-party CDS Hooks 2.0 models) validates our responses in
# tests/test_healthchain_conformance.py. It pins an older fastapi and pydantic, hence a venv of its
# own. Not fatal when the package index is unreachable: that test then skips and says why.
if [ ! -x .venv-healthchain/bin/python ]; then
  { "$PY" -m venv .venv-healthchain && .venv-healthchain/bin/pip install -q "healthchain==0.16.1"; } \
    || { echo "healthchain 0.16.1 not installed: its conformance test is skipped" >&2; rm -rf .venv-healthchain; }
fi

# Dependency advisories: pip-audit over the pinned lock file. Its own --timeout decides whether the
# advisory source answers (no probe of our own); the summary says how many pins were really audited
# ("none" when none was). Findings print a warning and never fail the run — see SECURITY.md.
audit_dependencies() {
  [ -x .venv/bin/pip-audit ] || { echo "pip-audit: not installed (dev extra); skipped"; return 0; }
  local out rc=0
  out=$(timeout 300 .venv/bin/pip-audit -r requirements.lock --no-deps --disable-pip --progress-spinner off \
          --timeout 20 --format json 2>/dev/null) || rc=$?
  printf '%s' "$out" | .venv/bin/python scripts/audit_summary.py requirements.lock "$rc"
}
audit_dependencies || true

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
