#!/usr/bin/env bash
# Set up a virtual environment with aetool, its test tools, the PostgreSQL driver and the example
# plugin, start a throwaway PostgreSQL server where one can be had, then run the test suite and
# build the documentation site (mkdocs build --strict).
# Used by the README's quick start and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' -e plugins/aetool-saltpepper \
    -e plugins/aetool-mlp
# The driver for the PostgreSQL tests; without it they skip and say so.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[postgres]' \
  || echo "aetool[postgres] could not be installed; the PostgreSQL tests will skip" >&2
# The documentation site's tools (mkdocs, Material, mkdocstrings); without them (no network) the
# site build after the tests is skipped and says so, and under CI=true it fails.
DOCS_TOOLS=1
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[docs]' || DOCS_TOOLS=""

APT_UPDATED=""
apt_update() { [ -n "$APT_UPDATED" ] || { apt-get update -qq && APT_UPDATED=1; }; }

# The report test renders the page in headless Chromium; install it when we can (root + apt).
# Under CI=true a missing, failing or hanging Chromium fails that test instead of skipping it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt_update && apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed; the browser test will skip (fail under CI=true," \
            "unless AETOOL_TEST_NO_BROWSER=1)" >&2
fi

# PostgreSQL for tests/search/test_postgres.py (two search workers splitting a grid, a killed
# worker's trial retried, a rerun that trains nothing): a throwaway server from the
# distribution's package
# (installed with apt-get when missing and we are root), its data in a temporary folder,
# listening on 127.0.0.1 only, stopped and deleted when this script exits, on failure too. Its
# URL goes to the tests in AETOOL_TEST_POSTGRES; where no server could be started,
# AETOOL_TEST_POSTGRES_SKIP says why and those tests skip with that reason.
PG_TMP="" PG_PID="" PG_REASON=""
pg_fail() { PG_REASON=$1; return 1; }
stop_postgres() {
  if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
    kill -QUIT "$PG_PID" 2>/dev/null || true   # immediate shutdown: the data is thrown away
    for _ in $(seq 50); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -n "$PG_TMP" ]; then
    umount -l "$PG_TMP/root" 2>/dev/null || true
    rm -rf "$PG_TMP"
  fi
}
as_postgres() {
  # PostgreSQL refuses to run as root. Root runs it as the package's `postgres` user; where the
  # system has no such user (no /etc/passwd entry; initdb must look its user up), inside a
  # private mount namespace whose root holds the system's folders and a two-line passwd file.
  if [ "$(id -u)" != 0 ]; then
    "$@"
  elif id postgres >/dev/null 2>&1; then   # setpriv, not runuser/su: no PAM needed
    setpriv --reuid="$(id -u postgres)" --regid="$(id -g postgres)" --clear-groups "$@"
  else
    local r="$PG_TMP/root" d
    unshare --mount --propagation private sh -c '
      r=$1; shift; mount -t tmpfs none "$r"
      for d in usr lib lib32 lib64 bin sbin tmp dev proc; do
        [ -e "/$d" ] || continue; mkdir -p "$r/$d"; mount --rbind "/$d" "$r/$d"; done
      mkdir -p "$r/etc"
      printf "root:x:0:0::/root:/bin/sh\npostgres:x:999:999::/tmp:/bin/sh\n" > "$r/etc/passwd"
      printf "root:x:0:\npostgres:x:999:\n" > "$r/etc/group"
      exec chroot "$r" setpriv --reuid=999 --regid=999 --clear-groups "$@"' sh "$r" "$@"
  fi
}
start_postgres() {
  local bin port owner=postgres
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt_update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || pg_fail "apt-get could not install postgresql" || return 1
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -n "$bin" ] || pg_fail "no PostgreSQL server is installed (and no root and apt-get to install one)" || return 1
  .venv/bin/python -c 'import psycopg' 2>/dev/null || pg_fail "psycopg (aetool[postgres]) is not installed" || return 1
  PG_TMP=$(mktemp -d /tmp/aetool-pg.XXXXXX) || pg_fail "no temporary folder" || return 1
  chmod 755 "$PG_TMP" && mkdir "$PG_TMP/data" "$PG_TMP/root"
  [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || owner=999; } && chown "$owner" "$PG_TMP/data"
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_postgres "$bin/initdb" -D "$PG_TMP/data" -U aetool --auth=trust -E UTF8 >"$PG_TMP/initdb.log" 2>&1 \
    || pg_fail "initdb failed: $(tail -n 2 "$PG_TMP/initdb.log" | tr '\n' ' ')" || return 1
  as_postgres "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/data/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$PG_TMP/data" >/dev/null 2>&1 \
    || pg_fail "the server did not start: $(tail -n 2 "$PG_TMP/data/server.log" 2>/dev/null | tr '\n' ' ')" || return 1
  PG_PID=$(head -n 1 "$PG_TMP/data/postmaster.pid")
  export AETOOL_TEST_POSTGRES="postgresql://aetool@127.0.0.1:$port/postgres"
  local version
  version=$("$bin/postgres" --version) && version=${version#*) } && version=${version%% *}
  echo "PostgreSQL $version for the tests at $AETOOL_TEST_POSTGRES" >&2
}
trap stop_postgres EXIT
if ! start_postgres; then
  export AETOOL_TEST_POSTGRES_SKIP="$PG_REASON"
  echo "No PostgreSQL for the tests ($PG_REASON); tests/search/test_postgres.py will skip" >&2
fi

.venv/bin/python -m ruff check aetool tests benchmarks plugins scripts
status=0
.venv/bin/python -m pytest -q "$@" || status=$?

# The documentation site, built with --strict into a temporary folder: a broken link or anchor,
# a missing page or a page left out of mkdocs.yml's navigation fails the run.
if [ -n "$DOCS_TOOLS" ]; then
  SITE=$(mktemp -d /tmp/aetool-site.XXXXXX)
  NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet -d "$SITE" \
    || { echo "mkdocs build --strict failed (see above)" >&2; status=1; }
  rm -rf "$SITE"
elif [ "${CI:-}" = true ]; then
  echo "aetool[docs] could not be installed (no network?), so the documentation site was not" \
       "built; under CI=true that fails" >&2
  status=1
else
  echo "aetool[docs] could not be installed (no network?); the documentation site build is" \
       "skipped" >&2
fi
exit "$status"
