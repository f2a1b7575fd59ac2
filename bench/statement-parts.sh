#!/usr/bin/env bash
# Where a large UPDATE's statement capture goes, part by part: one UPDATE of every row of
# a ROWS-row table (the shape of `rowcast-bench statement`'s: bigint key, two ints, text,
# timestamptz) in one transaction, as an application role subject to row-level security,
# on copies of the table that each have an AFTER ... FOR EACH STATEMENT trigger with
# transition tables doing one more part of what rowcast.capture_set() does. Wall time of
# the UPDATE and its commit, with `\timing`; before each run the table is vacuumed, the
# logs emptied and a checkpoint taken. No service runs. Variants, interleaved:
#
#   plain        no trigger
#   transition   the trigger, which returns at once: PostgreSQL fills the transition
#                tables (`referencing old table ... new table`)
#   new_json     + `to_jsonb` of every new row (counted, not kept)
#   both_json    + `to_jsonb` of every old row, the two paired by their place and
#                compared (capture_set()'s select, counted, not kept)
#   ins_unlogged + the insert of every pair into an unlogged table without defaults,
#                key or policy
#   ins_logged   the insert into a copy of rowcast.events without row-level security
#                (same columns, key, defaults and sequence)
#   shipped      rowcast.capture_set() as installed (`rowcast.capture_statements`), poll
#                mode: the insert into rowcast.events, its policy checked per row, and
#                the check for old rows over 1 kB (trimmed to their changed columns)
#
#   ROWS=200000 ROUNDS=3 bench/statement-parts.sh
#
# Creates (drops first) the database $DB and installs sql/install.sql (INSTALL= another
# file). Needs a superuser on PGHOST/PGPORT (default 127.0.0.1:5432, postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_statement_parts}"
ROWS="${ROWS:-200000}"
ROUNDS="${ROUNDS:-3}"
WRITER="${WRITER:-bench_writer}"
INSTALL="${INSTALL:-sql/install.sql}"
VARIANTS="${VARIANTS:-plain transition new_json both_json ins_unlogged ins_logged shipped}"

psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB" >/dev/null
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f "$INSTALL" >/dev/null
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -v writer="$WRITER" -v rows="$ROWS" >/dev/null <<'SQL'
select not exists (select from pg_roles where rolname = :'writer') as missing \gset
\if :missing
    create role :"writer" login nosuperuser;
\endif
grant usage on schema public to :"writer";
create table base (id bigint primary key, user_id int not null, provider_id int not null,
                   status text not null, updated_at timestamptz not null default now());
insert into base (id, user_id, provider_id, status)
select g, g % 1000, g % 100, 'PENDING' from generate_series(1, :rows) g;

-- The log copies.
create unlogged table ev_unlogged (relid oid, op text, data jsonb, old jsonb, routing_id int);
create table ev_logged (like rowcast.events including all);
grant insert on ev_unlogged, ev_logged to :"writer";
grant usage on sequence rowcast.events_id_seq to :"writer";

-- One trigger function for every part; its argument says how far to go. The same
-- settings as rowcast.capture_set().
create function part() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set row_security = on
set extra_float_digits = 1
set intervalstyle = 'postgres'
set bytea_output = 'hex'
set datestyle = 'ISO'
set quote_all_identifiers = off
set jit = off
set work_mem = '64MB'
as $$
declare
    counted bigint;
    gone    text[] := '{}';
begin
    if tg_argv[0] = 'transition' then
        return null;
    elsif tg_argv[0] = 'new_json' then
        select count(*) into counted from rowcast_new n where (to_jsonb(n) - gone) is not null;
    elsif tg_argv[0] = 'both_json' then
        select count(*) into counted
        from (select b.new_row, a.old_row, a.ord
              from (select row_number() over () as ord, to_jsonb(o) - gone as old_row from rowcast_old o) a
              join (select row_number() over () as ord, to_jsonb(n) - gone as new_row from rowcast_new n) b
                on b.ord = a.ord
              order by a.ord) c
        where c.new_row <> c.old_row;
    else
        execute format($q$
            insert into public.%I (relid, op, data, old, routing_id)
            select $1, 'UPDATE', c.new_row, c.old_row, 1
            from (select b.new_row, a.old_row, a.ord
                  from (select row_number() over () as ord, to_jsonb(o) - $2 as old_row from rowcast_old o) a
                  join (select row_number() over () as ord, to_jsonb(n) - $2 as new_row from rowcast_new n) b
                    on b.ord = a.ord
                  order by a.ord) c
            where c.new_row <> c.old_row$q$,
            case tg_argv[0] when 'ins_unlogged' then 'ev_unlogged' else 'ev_logged' end)
        using tg_relid, gone;
    end if;
    return null;
end
$$;

do $$
declare
    v text;
begin
    foreach v in array array['plain', 'transition', 'new_json', 'both_json', 'ins_unlogged', 'ins_logged', 'shipped'] loop
        execute format('create table t_%s (like base including all)', v);
        execute format('insert into t_%s select * from base', v);
        if v = 'shipped' then
            perform rowcast.watch(format('t_%s', v), wake => 'poll');
            perform rowcast.capture_statements(format('t_%s', v));
        elsif v <> 'plain' then
            execute format('create trigger part after update on t_%s referencing old table as rowcast_old'
                           ' new table as rowcast_new for each statement execute function part(%L)', v, v);
        end if;
    end loop;
end
$$;
SQL
for v in $VARIANTS; do
    psql -qX -d "$DB" -v ON_ERROR_STOP=1 -c "grant select, update on t_$v to \"$WRITER\""
done

# Milliseconds of the UPDATE and its commit on t_$1.
run() {
    psql -qX -d "$DB" -c "vacuum t_$1" -c "truncate rowcast.events, rowcast.log, ev_unlogged, ev_logged" \
        -c checkpoint >/dev/null
    psql -qX -d "$DB" -U "$WRITER" -v ON_ERROR_STOP=1 <<SQL | awk '/^Time:/ { ms += $2 } END { printf "%.0f", ms }'
\timing on
begin;
update t_$1 set status = case status when 'PENDING' then 'CONFIRMED' else 'PENDING' end, updated_at = now();
commit;
SQL
}

echo "statement parts: one UPDATE of $ROWS rows, as $WRITER, ms (× plain in the same round)"
for round in $(seq 1 "$ROUNDS"); do
    order=$VARIANTS
    if (( round % 2 == 0 )); then
        order=$(echo "$VARIANTS" | tr ' ' '\n' | tac | tr '\n' ' ')
    fi
    declare -A took=()
    for v in $order; do
        took[$v]=$(run "$v")
    done
    line="  round $round:"
    for v in $VARIANTS; do
        if [[ -n "${took[plain]:-}" && "${took[plain]}" -gt 0 ]]; then
            line+=" $v ${took[$v]} ($(awk -v a="${took[$v]}" -v b="${took[plain]}" 'BEGIN { printf "%.2f", a / b }')x)"
        else
            line+=" $v ${took[$v]}"
        fi
    done
    echo "$line"
    unset took
done
