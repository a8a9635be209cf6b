#!/usr/bin/env bash
# The README's first command: walship's main job on the embedded default.
# It starts a throwaway PostgreSQL 15, archives its WAL into a throwaway file
# repository with `walship archive` (a bounded run, then a continuous one
# stopped with SIGTERM under a write load), shows what the repository holds,
# takes a base backup with `walship backup`, reads a shipped segment back
# with `walship wal-fetch` and pg_waldump, restores to a moment between two
# writes with `walship restore --to-time --start`, and checks the repository
# with `walship verify`. walship runs as the postgres user, like the server
# whose restore_command runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin/walship
pgbin=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/walship-demo-XXXXXX)
chmod 755 "$work"
run_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

[[ $(id -u) -eq 0 ]] && chown postgres "$work"
cleanup() {
  run_pg "$pgbin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  run_pg "$pgbin/pg_ctl" -D "$work/restored" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a throwaway PostgreSQL 15 in $work/data"
run_pg "$pgbin/initdb" -D "$work/data" -U postgres -A trust --wal-segsize=1 -N >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
wal_level = replica
CONF
run_pg "$pgbin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w start >/dev/null
pg="host=$work port=5432 user=postgres dbname=postgres"
psql() { "$pgbin/psql" -d "$pg" -Atq "$@"; }
repo="file://$work/repo"

echo "== walship archive --until-caught-up (creates the slot and the repository)"
run_pg "$bin" --repo "$repo" archive --pg "$pg" --until-caught-up
psql -c "CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g"

echo
echo "== walship archive, continuously, while rows are written; then SIGTERM"
if [[ $(id -u) -eq 0 ]]; then
  runuser -u postgres -- "$bin" --repo "$repo" archive --pg "$pg" --sync-interval 200ms &
else
  "$bin" --repo "$repo" archive --pg "$pg" --sync-interval 200ms &
fi
archiver=$!
for i in 1 2 3; do
  psql -c "INSERT INTO demo SELECT g, md5(g::text) FROM generate_series(1, 20000) g"
  sleep 0.5
done
flushed=$(psql -c "SELECT pg_current_wal_flush_lsn()")
sleep 1
# SIGTERM to walship itself (runuser's child when run as root).
if [[ $(id -u) -eq 0 ]]; then pkill -TERM -P "$archiver"; else kill -TERM "$archiver"; fi
wait "$archiver"
acked=$(psql -c "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship'")
echo "primary flushed $flushed; the slot says walship has it up to $acked"
[[ $(psql -c "SELECT '$acked'::pg_lsn >= '$flushed'::pg_lsn") == t ]] || { echo "walship acknowledged less than was flushed"; exit 1; }

echo
echo "== the repository"
cat "$work/repo/walship.json"
echo "$(find "$work/repo/wal" -type f -not -path '*.pieces/*' | wc -l) complete segments and $(find "$work/repo/wal" -path '*.pieces/*' -type f | wc -l) piece(s) of the filling one; the newest keys:"
(cd "$work/repo" && find wal -type f | sort) | tail -n 4

echo
echo "== walship backup --fast (a base backup streamed into the repository)"
run_pg "$bin" --repo "$repo" backup --fast --pg "$pg"

echo
echo "== walship list --pg ..."
run_pg "$bin" --repo "$repo" list --pg "$pg"

echo
seg=$(ls "$work/repo/wal/00000001" | grep -v '\.' | sort | tail -n 1)
echo "== walship wal-fetch $seg, read by pg_waldump"
run_pg mkdir "$work/fetched"
run_pg "$bin" --repo "$repo" wal-fetch "$seg" "$work/fetched/$seg"
"$pgbin/pg_waldump" --path "$work/fetched" "$seg" >"$work/dump" 2>&1 || true
echo "pg_waldump read $(grep -c '^rmgr:' "$work/dump") records from it, the first three:"
grep -m 3 '^rmgr:' "$work/dump"

echo
echo "== point-in-time restore: 1000 rows, a moment noted, 1000 more, then walship restore --to-time that moment --start"
summary="SELECT count(*) || ' rows, ids ' || min(id) || '..' || max(id) || ', md5 ' || md5(string_agg(id::text, ',' ORDER BY id)) FROM pitr"
psql -c "CREATE TABLE pitr AS SELECT g AS id FROM generate_series(1, 1000) g"
want=$(psql -c "$summary")
sleep 0.1
moment=$(psql -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
sleep 0.1
psql -c "INSERT INTO pitr SELECT generate_series(1001, 2000)"
echo "at $moment the primary held: $want"
echo "the primary holds now:       $(psql -c "$summary")"
run_pg "$bin" --repo "$repo" archive --pg "$pg" --until-caught-up
run_pg "$bin" --repo "$repo" restore --target-dir "$work/restored" --to-time "$moment" --start --pg-bin "$pgbin"
run_pg mkdir "$work/rsock"
run_pg "$pgbin/pg_ctl" -D "$work/restored" -l "$work/restored.log" -w -o "-c unix_socket_directories=$work/rsock -c listen_addresses=''" start >/dev/null
got=$("$pgbin/psql" -d "host=$work/rsock port=5432 user=postgres dbname=postgres" -Atqc "$summary")
run_pg "$pgbin/pg_ctl" -D "$work/restored" -m fast stop >/dev/null
echo "the restored cluster holds:  $got"
[[ $got == "$want" ]] || { echo "the restore to $moment does not hold exactly what the primary held then"; exit 1; }
echo "exactly the data of $moment came back"

echo
echo "== walship list: the recoverable window, from the commit times the archiver indexed"
run_pg "$bin" --repo "$repo" list | tail -n 2

echo
echo "== walship verify"
run_pg "$bin" --repo "$repo" verify
