#!/usr/bin/env bash
# What one sequencer round of the service costs, statement by statement: pgbench (one
# client, prepared statements, the service's session settings) loops a transaction of 5
# inserts into a watched table, then the round the service runs with a local tailer:
#   schema version 4 and later   rowcast.rearm(); rowcast.sequence_step_changes()
#   earlier versions             rowcast.rearm(); rowcast.sequence_step(); then the
#                                hand-off read of the log after the head (log::RANGE_SQL)
# and reports pgbench's latency per statement (ms), which includes one round trip each
# (the service pipelines them). synchronous_commit is off, so the figures are the work,
# not the disk. ROUNDS runs of SECONDS each; compare schemas in one run:
#
#   bench/round-cost.sh                                  # sql/install.sql of this checkout
#   INSTALL=/path/to/other/sql/install.sql DB=perf_round_old bench/round-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_round}"
INSTALL="${INSTALL:-sql/install.sql}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
ROUNDS="${ROUNDS:-3}"

psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f "$INSTALL" >/dev/null 2>&1
psql -qX -d "$DB" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
create table s_poll (id bigint primary key, user_id int not null, provider_id int not null,
                     status text not null, updated_at timestamptz not null default now());
create sequence s_poll_ids;
select rowcast.watch('s_poll', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'poll');
SQL

script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'SQL'
insert into s_poll (id, user_id, provider_id, status) select nextval('s_poll_ids'), g, g, 'PENDING' from generate_series(1, 5) g;
select last_pos as head from rowcast.sequencer \gset
select rowcast.rearm();
SQL
if [ "$(psql -qXAt -d "$DB" -c "select to_regproc('rowcast.sequence_step_changes') is not null")" = t ]; then
    echo 'select * from rowcast.sequence_step_changes(10000, 2000);' >>"$script"
else
    # The format's colons are written as chr(58): pgbench reads `:name` as a variable.
    cat >>"$script" <<'SQL'
select sequenced, in_progress from rowcast.sequence_step(10000);
select l.pos, e.table_name, e.op, l.topics, to_char(e.ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.MS"Z"'), e.data::text, e.old::text, e.mapping_id from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id where l.pos > cast(:head as bigint) and l.pos <= 9223372036854775807 order by l.pos limit 2000;
SQL
fi

export PGOPTIONS="-c enable_seqscan=off -c jit=off -c synchronous_commit=off"
for r in $(seq 1 "$ROUNDS"); do
    echo "run $r ($INSTALL)"
    pgbench -n -M prepared -r -T "$SECONDS_PER_RUN" -f "$script" "$DB" 2>&1 |
        grep -E '^tps|^ +[0-9.]+ +[0-9]+ +(insert|select)' | cut -c1-100
done
