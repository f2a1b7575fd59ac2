#!/usr/bin/env bash
# What a large UPDATE would cost the writer if changes were read from the WAL (logical
# decoding) instead of captured by a trigger: the same one-UPDATE-of-every-row as
# `rowcast-bench statement` and bench/statement-parts.sh, on a throwaway cluster with
# `wal_level = logical` and a logical replication slot, on a table with the default
# replica identity (the key) and on one with `REPLICA IDENTITY FULL` (every old value in
# the WAL, which events that carry the old row would need), and, after a restart with
# `wal_level = replica` (PostgreSQL's default; the slot is dropped first), on the first
# table again: what the UPDATE costs today on an unwatched table. Each round runs all
# three, alternating the order of the first two. Prints the wall time of the UPDATE and
# its commit and the WAL it wrote; at the end the slot is read once (test_decoding) to
# time decoding one statement, which a WAL sender would do beside the writers.
#
#   ROWS=200000 ROUNDS=3 bench/statement-wal.sh
#
# Needs PostgreSQL's server binaries (initdb, pg_ctl; PG_BIN= their directory, default
# the newest under /usr/lib/postgresql) and test_decoding. As root, the cluster runs as
# the `postgres` user. Uses port $PORT (default 5499) and a temporary directory, removed
# at the end.
set -euo pipefail
ROWS="${ROWS:-200000}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-5499}"
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
DIR=$(mktemp -d /tmp/rowcast-statement-wal.XXXXXX)
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
[[ $(id -u) -eq 0 ]] && chown postgres "$DIR"
trap 'as_owner "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

as_owner "$PG_BIN/initdb" -D "$DIR/data" -U postgres --auth=trust >/dev/null
cat >>"$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
max_wal_size = 4GB
CONF
sql() { psql -qX -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
# Restarts the cluster with wal_level $1 (and a slot when logical).
restart() {
    if as_owner "$PG_BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        sql -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots" >/dev/null
        as_owner "$PG_BIN/pg_ctl" -D "$DIR/data" -w stop >/dev/null
    fi
    as_owner "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -o "-c wal_level=$1" -w start >/dev/null
    if [[ $1 == logical ]]; then
        sql -c "select pg_create_logical_replication_slot('rowcast_bench', 'test_decoding')" >/dev/null
    fi
}
restart logical

sql -v rows="$ROWS" >/dev/null <<'SQL'
create table t_key (id bigint primary key, user_id int not null, provider_id int not null,
                    status text not null, updated_at timestamptz not null default now());
insert into t_key (id, user_id, provider_id, status)
select g, g % 1000, g % 100, 'PENDING' from generate_series(1, :rows) g;
create table t_full (like t_key including all);
insert into t_full select * from t_key;
alter table t_full replica identity full;
SQL

# "<ms> <WAL bytes>" of the UPDATE and its commit on $1.
run() {
    sql -c "vacuum $1" -c checkpoint >/dev/null
    sql -c "select pg_replication_slot_advance(slot_name, pg_current_wal_lsn()) from pg_replication_slots" >/dev/null
    local before
    before=$(sql -At -c "select pg_current_wal_lsn()")
    local ms
    ms=$(sql <<SQL | awk '/^Time:/ { ms += $2 } END { printf "%.0f", ms }'
\timing on
begin;
update $1 set status = case status when 'PENDING' then 'CONFIRMED' else 'PENDING' end, updated_at = now();
commit;
SQL
)
    echo "$ms $(sql -At -c "select pg_current_wal_lsn() - '$before'::pg_lsn")"
}

echo "statement WAL: one UPDATE of $ROWS rows: ms, MB of WAL, and × wal_level = replica"
for round in $(seq 1 "$ROUNDS"); do
    (( round > 1 )) && restart logical
    order="t_key t_full"
    (( round % 2 == 0 )) && order="t_full t_key"
    declare -A took=()
    for t in $order; do
        took[$t]=$(run "$t")
    done
    restart replica
    took[plain]=$(run t_key)
    read -r p_ms p_wal <<<"${took[plain]}"
    read -r key_ms key_wal <<<"${took[t_key]}"
    read -r full_ms full_wal <<<"${took[t_full]}"
    awk -v pm="$p_ms" -v pw="$p_wal" -v km="$key_ms" -v kw="$key_wal" -v fm="$full_ms" -v fw="$full_wal" -v r="$round" 'BEGIN {
        printf "  round %d: replica %d ms, %.1f MB; logical, key %d ms (%.2fx), %.1f MB (%.2fx); logical, full %d ms (%.2fx), %.1f MB (%.2fx)\n",
               r, pm, pw / 1e6, km, km / pm, kw / 1e6, kw / pw, fm, fm / pm, fw / 1e6, fw / pw }'
    unset took
done
restart logical
# Decoding the last statement (t_key or t_full, whichever ran last): the WAL sender's work.
read -r _ _ <<<"$(run t_full)"
decode=$(sql <<'SQL' | awk '/^Time:/ { ms += $2 } END { printf "%.0f", ms }'
\timing on
select count(*) from pg_logical_slot_get_changes('rowcast_bench', null, null);
SQL
)
echo "  decoding the last t_full UPDATE with test_decoding: $decode ms"
