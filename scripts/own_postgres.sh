#!/usr/bin/env bash
# A PostgreSQL server of a test's own, in the foreground: `own_postgres.sh PORT DIR`.
# Initialises DIR on first use, then replaces itself with the server (same process id, so a
# test that started it in a process group of its own can kill or pause every process of it).
# Runs as `postgres` when started as root. Tests use it through CQRS_POSTGRES_SERVER
# (services.sh), to kill and restart a server without touching the shared one.
set -euo pipefail
port=$1
dir=$2
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[[ -x "$bin/postgres" ]] || { echo "own_postgres.sh: no PostgreSQL binaries under /usr/lib/postgresql" >&2; exit 1; }
as_owner=()
if [[ $(id -u) == 0 ]]; then
  # The directory's parents must let `postgres` through (a TMPDIR under /root does not).
  chown postgres:postgres "$dir"
  as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
if [[ ! -f "$dir/PG_VERSION" ]]; then
  "${as_owner[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust --no-sync >/dev/null
fi
# A kill -9 of the server is not a machine crash: what it wrote reached the kernel, so commits
# survive it without fsync.
exec "${as_owner[@]}" "$bin/postgres" -D "$dir" -p "$port" -k "$dir" \
  -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200
