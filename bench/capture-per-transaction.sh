#!/usr/bin/env bash
# What the capture costs a one-row write transaction, part by part: pgbench one-row
# UPDATEs (one per transaction, as an application role subject to row-level security) of
# copies of the write-overhead table, each with a trigger that does one more part of the
# capture, and the writers' backend CPU per transaction (utime + stime from
# /proc/<pid>/stat over the middle of the run). No service runs: this is the writer's
# side only. Variants, interleaved within each round:
#
#   plain        no trigger
#   empty        an empty PL/pgSQL AFTER ROW trigger
#   empty_set    the same with three `set` clauses (search_path, timezone, row_security)
#   empty_path   the same with one `set` clause (search_path)
#   ins_norls    + one insert of a constant event into a copy of rowcast.events without
#                row-level security (same columns, key, defaults and sequence)
#   ins_oldpol   the same insert into a copy with schema version 1's two insert policies
#   ins_policy   the same insert into rowcast.events (its current policy)
#   shipped      rowcast.capture() as installed, poll mode
#   shipped_set  the same function with `set` clauses for the five settings it checks
#                instead (and sets only when the writer's session differs)
#
# A loop of UPDATEs in one transaction (bench/trigger-variants.sh) shows the cost per row;
# this shows what a transaction of one row pays on top, which is most of what one-row
# writers pay (per transaction, PL/pgSQL prepares its expressions and PostgreSQL opens
# and locks the log, its index and its sequence again).
#
#   CLIENTS=1 SECONDS_PER_RUN=6 ROUNDS=3 bench/capture-per-transaction.sh
#
# The writer commits with `synchronous_commit = off` in this database (SYNC=on to keep
# PostgreSQL's setting): waiting for the WAL flush varies from commit to commit by more
# than the parts measured here, and no part of the capture depends on it.
#
# Creates (drops first) the database $DB and installs sql/install.sql (INSTALL= another
# file). Needs a superuser on PGHOST/PGPORT (default 127.0.0.1:5432, postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pgbench-window.sh
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_capture_tx}"
SECS="${SECONDS_PER_RUN:-6}"
CLIENTS="${CLIENTS:-1}"
ROUNDS="${ROUNDS:-3}"
WRITER="${WRITER:-bench_writer}"
INSTALL="${INSTALL:-sql/install.sql}"
VARIANTS="${VARIANTS:-plain empty empty_set ins_norls ins_oldpol ins_policy shipped shipped_set}"
HZ=$(getconf CLK_TCK)

psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB" >/dev/null
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f "$INSTALL" >/dev/null
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -v writer="$WRITER" >/dev/null <<'SQL'
select not exists (select from pg_roles where rolname = :'writer') as missing \gset
\if :missing
    create role :"writer" login nosuperuser;
\endif
create schema v;
grant usage on schema v to :"writer";
create table v.base (id bigint primary key, user_id int not null, provider_id int not null,
                     status text not null, updated_at timestamptz not null default now());
insert into v.base select i, i % 1000, i % 50, 'PENDING', now() from generate_series(1, 100000) i;

-- Copies of the log: without row-level security, and with version 1's two policies
-- (added below, read from migrations/V1__schema.sql).
create table v.ev_norls (like rowcast.events including all);
create table v.ev_oldpol (like rowcast.events including all);
alter table v.ev_oldpol enable row level security;
grant insert (relid, op, data, old, routing_id) on v.ev_norls, v.ev_oldpol to :"writer";

create function v.empty() returns trigger language plpgsql as $$ begin return null; end $$;
create function v.empty_set() returns trigger language plpgsql
    set search_path = pg_catalog, pg_temp set timezone = 'UTC' set row_security = on
    as $$ begin return null; end $$;
create function v.empty_path() returns trigger language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$ begin return null; end $$;
do $f$
declare
    t text;
begin
    foreach t in array array['ev_norls', 'ev_oldpol'] loop
        execute format($b$create function v.ins_%s() returns trigger language plpgsql
            set search_path = pg_catalog, pg_temp set timezone = 'UTC' set row_security = on
            as $$ begin
                insert into v.%s (relid, op, data, old, routing_id) values (tg_relid, tg_op, '{}', null, 1);
                return null;
            end $$$b$, substr(t, 4), t);
    end loop;
end
$f$;
create function v.ins_policy() returns trigger language plpgsql
    set search_path = pg_catalog, pg_temp set timezone = 'UTC' set row_security = on
    as $$ begin
        insert into rowcast.events (relid, op, data, old, routing_id) values (tg_relid, tg_op, '{}', null, 1);
        return null;
    end $$;

do $f$
declare
    v text;
begin
    foreach v in array array['plain', 'empty', 'empty_set', 'empty_path', 'ins_norls', 'ins_oldpol', 'ins_policy', 'shipped', 'shipped_set'] loop
        execute format('create table v.t_%s (like v.base including all)', v);
        execute format('insert into v.t_%s select * from v.base', v);
        if v in ('shipped', 'shipped_set') then
            perform rowcast.watch(format('v.t_%s', v)::regclass, wake => 'poll');
        elsif v = 'ins_norls' then
            execute format('create trigger c after insert or update or delete on v.t_%s for each row execute function v.ins_norls()', v);
        elsif v = 'ins_oldpol' then
            execute format('create trigger c after insert or update or delete on v.t_%s for each row execute function v.ins_oldpol()', v);
        elsif v <> 'plain' then
            execute format('create trigger c after insert or update or delete on v.t_%s for each row execute function v.%s()', v, v);
        end if;
    end loop;
end
$f$;

-- shipped_set: the installed trigger's body, with the `set` clauses, called with the
-- arguments rowcast.watch() gave the table's own trigger.
do $f$
declare
    trig record;
begin
    execute replace(pg_get_functiondef('rowcast.capture()'::regprocedure),
                    'FUNCTION rowcast.capture()', 'FUNCTION v.capture_set_clauses()');
    alter function v.capture_set_clauses() set extra_float_digits = 1 set intervalstyle = 'postgres'
        set bytea_output = 'hex' set datestyle = 'ISO' set quote_all_identifiers = off;
    select t.tgname, array_to_string(array(select quote_literal(a)
                                           from unnest((string_to_array(encode(t.tgargs, 'escape'), '\000'))[1:t.tgnargs]) a), ', ') as args
      into trig
      from pg_trigger t where t.tgrelid = 'v.t_shipped_set'::regclass and t.tgfoid = 'rowcast.capture()'::regprocedure;
    execute format('drop trigger %I on v.t_shipped_set', trig.tgname);
    execute format('create trigger %I after insert or update or delete on v.t_shipped_set for each row execute function v.capture_set_clauses(%s)',
                   trig.tgname, trig.args);
end
$f$;
SQL
# Version 1's insert policies, as its migration wrote them, on the copy.
sed -n '/^create policy writers_append_their_own_changes/,/^create policy readers/p' migrations/V1__schema.sql |
    grep -v -e '^create policy readers' -e '^--' |
    sed 's/rowcast\.events/v.ev_oldpol/g; s/events\.relid/ev_oldpol.relid/g; s/events\.op/ev_oldpol.op/g' |
    psql -qX -d "$DB" -v ON_ERROR_STOP=1 >/dev/null

# The writer may update every copy (and nothing else).
for v in plain empty empty_set empty_path ins_norls ins_oldpol ins_policy shipped shipped_set; do
    psql -qX -d "$DB" -c "grant select, update on v.t_$v to \"$WRITER\"" >/dev/null
done
psql -qX -d "$DB" -c "alter role \"$WRITER\" in database $DB set synchronous_commit = ${SYNC:-off}" >/dev/null

script=$(mktemp)
trap 'rm -f "$script"' EXIT
ticks() { local s=0 p t; for p in "$@"; do t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0); s=$((s + t)); done; echo "$s"; }
commits() { psql -qXAt -d "$DB" -c "select xact_commit from pg_stat_database where datname = current_database()"; }

declare -A SUM N
echo "writers' backend CPU per one-row transaction, $CLIENTS client(s), ${SECS} s runs, $ROUNDS round(s), writers as $WRITER, synchronous_commit ${SYNC:-off}" >&2
for r in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
        psql -qX -d "$DB" -c "truncate rowcast.events, v.ev_norls, v.ev_oldpol" -c "vacuum v.t_$v" >/dev/null
        printf '\\set id random(1, 100000)\nupdate v.t_%s set status = case when status = %s then %s else %s end, updated_at = now() where id = :id;\n' \
            "$v" "'PENDING'" "'CONFIRMED'" "'PENDING'" >"$script"
        pgbench -n -U "$WRITER" -c "$CLIENTS" -j 1 -T "$((SECS + 2))" -f "$script" "$DB" >/dev/null 2>&1 &
        pb=$!
        wait_for_clients "$DB" "$CLIENTS"
        pids=$(psql -qXAt -d "$DB" -c "select pid from pg_stat_activity where application_name = 'pgbench' and datname = current_database()")
        # shellcheck disable=SC2086
        a=$(ticks $pids); ca=$(commits)
        sleep "$((SECS - 2))"
        # shellcheck disable=SC2086
        b=$(ticks $pids); cb=$(commits)
        wait "$pb" || true
        us=$(awk -v t=$((b - a)) -v n=$((cb - ca)) -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / (n > 0 ? n : 1) }')
        echo "round $r $v: $(( (cb - ca) / (SECS - 2) )) tx/s, $us µs per transaction" >&2
        SUM[$v]=$(awk -v a="${SUM[$v]:-0}" -v b="$us" 'BEGIN { print a + b }')
        N[$v]=$(( ${N[$v]:-0} + 1 ))
    done
done

printf '%-12s %12s %12s\n' variant "µs/tx" "over plain"
plain=$(awk -v s="${SUM[plain]:-0}" -v n="${N[plain]:-1}" 'BEGIN { print s / n }')
for v in $VARIANTS; do
    mean=$(awk -v s="${SUM[$v]}" -v n="${N[$v]}" 'BEGIN { print s / n }')
    printf '%-12s %12.1f %12.1f\n' "$v" "$mean" "$(awk -v m="$mean" -v p="$plain" 'BEGIN { print m - p }')"
done
