#!/usr/bin/env bash
# Run a command against a private, throwaway PostgreSQL on loopback:
#   scripts/with-postgres.sh pytest -q
# The command sees LABDOCK_TEST_DB_URL pointing at the server's maintenance database.
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bindir/initdb" ] || { echo "with-postgres: PostgreSQL is not installed (run scripts/system-deps.sh)" >&2; exit 1; }
dir=$(mktemp -d /tmp/labdock-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres:postgres "$dir"
  as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
stop() { "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap stop EXIT
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -w -l "$dir/log" \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
  start >/dev/null
echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
export LABDOCK_TEST_DB_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
"$@"
