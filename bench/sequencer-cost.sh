#!/usr/bin/env bash
# CPU cost of the sequencer, per round and per event, measured in the backend itself
# (/proc/self/schedstat, so other load changes the figures little; needs a superuser):
#   empty round     rowcast.rearm() + rowcast.sequence_step() with nothing new, per call
#   batch           sequence_step() over a backlog of N events (one UPDATE of N rows of a
#                   table watched like bench/write-overhead's), per event
#   topics_of       the part of a batch spent in rowcast.topics_of(), per event
#   log insert      inserting N rows into a copy of rowcast.log, with and without its
#                   GIN index on topics, per event
# Best of ROUNDS. Creates (drops first) the database $DB from sql/install.sql.
#
#   DB=perf_trig_s N=10000 ROUNDS=5 bench/sequencer-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_trig_s}"
N="${N:-10000}"
ROUNDS="${ROUNDS:-5}"

psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f sql/install.sql >/dev/null 2>&1
psql -qX -d "$DB" -v ON_ERROR_STOP=1 >/dev/null 2>&1 <<SQL
create table s_poll (id bigint primary key, user_id int not null, provider_id int not null,
                     status text not null, updated_at timestamptz not null default now());
insert into s_poll (id, user_id, provider_id, status)
select g, g % 1000, g % 100, 'PENDING' from generate_series(1, $N) g;
select rowcast.watch('s_poll', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'poll');
create table log_nogin (like rowcast.log including all);
create table log_gin (like rowcast.log including all);
create index on log_gin using gin (topics);  -- as rowcast.log had until version 4
SQL

# Prints "label ns" lines for one round.
round() {
    psql -qXAt -d "$DB" -v ON_ERROR_STOP=1 2>&1 <<SQL | sed -n 's/.*NOTICE: *//p'
update s_poll set status = case when status = 'PENDING' then 'CONFIRMED' else 'PENDING' end;
truncate log_gin, log_nogin;
do \$\$ declare a bigint; b bigint; n bigint; x record;
begin
    perform rowcast.rearm(); perform rowcast.sequence_step(1);  -- warm up; leaves N - 1
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    loop
        select * into x from rowcast.sequence_step(100000);
        exit when x.sequenced < 100000;
    end loop;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    raise notice 'batch %', (b - a) / ($N - 1);
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    for i in 1..1000 loop
        perform rowcast.rearm();
        perform rowcast.sequence_step(10000);
    end loop;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    raise notice 'empty_round %', (b - a) / 1000;
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    perform count(e.data), count(e.old) from rowcast.events e left join rowcast.routings r on r.id = e.routing_id;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    n := b - a;
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    perform count(rowcast.topics_of(r, e.op, e.data, e.old)) from rowcast.events e left join rowcast.routings r on r.id = e.routing_id;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    raise notice 'topics_of %', (b - a - n) / (select count(*) from rowcast.events);
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    insert into log_gin select l.* from rowcast.log l;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    raise notice 'log_insert_gin %', (b - a) / (select count(*) from rowcast.log);
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    insert into log_nogin select l.* from rowcast.log l;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    raise notice 'log_insert_nogin %', (b - a) / (select count(*) from rowcast.log);
end \$\$;
truncate rowcast.log, rowcast.events;
SQL
}

declare -A BEST
for r in $(seq 1 "$ROUNDS"); do
    while read -r label ns; do
        if [ -z "${BEST[$label]:-}" ] || [ "$ns" -lt "${BEST[$label]}" ]; then BEST[$label]=$ns; fi
    done < <(round)
    echo "round $r done" >&2
done
printf '%-18s %10s\n' measure "CPU µs"
for label in empty_round batch topics_of log_insert_gin log_insert_nogin; do
    printf '%-18s %10.1f\n' "$label" "$(echo "${BEST[$label]:-0} / 1000" | bc -l)"
done
