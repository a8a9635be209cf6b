#!/bin/sh
# Runs once, when the postgres image initialises an empty data directory:
# the walship role streams WAL and takes base backups over a replication
# connection, which pg_hba.conf must allow.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -v pw="$WALSHIP_PG_PASSWORD" <<'SQL'
CREATE ROLE walship WITH LOGIN REPLICATION PASSWORD :'pw';
SQL
echo "host replication walship all scram-sha-256" >> "$PGDATA/pg_hba.conf"
