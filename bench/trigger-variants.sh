#!/usr/bin/env bash
# Backend CPU per one-row UPDATE for variants of the capture trigger
# (bench/trigger-variants/variants.sql says what each one changes), the way
# bench/trigger-cost.sh measures: N UPDATEs in one DO block, the backend reads its own
# CPU time from /proc/self/schedstat before and after (needs a superuser), best of
# ROUNDS, variants interleaved within each round. Other processes' load changes the
# figures little (N must be in the thousands: the counter advances at scheduler ticks
# and switches). Also prints the WAL the N UPDATEs wrote, per row (last round; WAL is
# what every commit waits to flush).
#
#   DB=perf_trig N=3000 ROUNDS=5 bench/trigger-variants.sh
#   VARIANTS="plain v2 v2_no_tz" bench/trigger-variants.sh    # a subset
#
# WRITER=<role> runs the UPDATEs as that role (created if missing, granted the variant
# tables and the right to read its own CPU time): a role that is not a superuser is
# subject to rowcast.events' insert policy, as application writers are; the default,
# the superuser, bypasses it.
#
# Creates (drops first) the database $DB and installs sql/install.sql unless SETUP=0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_trig}"
N="${N:-3000}"
ROUNDS="${ROUNDS:-5}"
ALL="plain empty empty_secdef empty_sp empty_tz empty_all shipped_poll shipped_notify v2 v2q v2_no_tz v2q_no_sp v2q_no_cfg v2_invoker v2q_bare no_noop_check no_colsize no_nargs_check row_to_json no_old insert_min ins_const_args no_insert ev_copy ev_check ev_pk_id ev_noidx ev_nots outbox_min stmt"
VARIANTS="${VARIANTS:-$ALL}"

if [ "${SETUP:-1}" = 1 ]; then
    psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
    psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f sql/install.sql >/dev/null
    psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f bench/trigger-variants/variants.sql >/dev/null
fi

WRITER="${WRITER:-$PGUSER}"
if [ "$WRITER" != "$PGUSER" ]; then
    psql -qX -d "$DB" -v ON_ERROR_STOP=1 -v writer="$WRITER" >/dev/null <<'SQL'
select not exists (select from pg_roles where rolname = :'writer') as missing \gset
\if :missing
    create role :"writer" login nosuperuser;
\endif
grant pg_read_server_files to :"writer";
grant execute on function pg_read_file(text) to :"writer";
grant usage on schema trigvar to :"writer";
grant select, insert, update on all tables in schema trigvar to :"writer";
grant usage on all sequences in schema trigvar to :"writer";
SQL
fi

# psql's output for N one-row UPDATEs of trigvar.t_$1 (ids 1..N, each once): a notice
# "cpu_ns=<CPU-ns of the backend> <WAL bytes>", or the error.
run() {
    psql -qXAt -U "$WRITER" -d "$DB" -v ON_ERROR_STOP=1 2>&1 <<SQL
do \$\$ declare a bigint; b bigint; la pg_lsn; lb pg_lsn; begin
    -- warm up: compile the trigger function and cache its plans in this backend
    update trigvar.t_$1 set updated_at = now() where id = $N + 1;
    la := pg_current_wal_insert_lsn();
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    for i in 1..$N loop
        update trigvar.t_$1 set status = case when status = 'PENDING' then 'CONFIRMED' else 'PENDING' end,
                      updated_at = now() where id = i;
    end loop;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    lb := pg_current_wal_insert_lsn();
    raise notice 'cpu_ns=% %', b - a, lb - la;
end \$\$;
SQL
}

declare -A BEST WAL
for r in $(seq 1 "$ROUNDS"); do
    psql -qX -d "$DB" -c "truncate rowcast.events, trigvar.ev_copy, trigvar.ev_pk_id, trigvar.ev_noidx, trigvar.ev_nots, trigvar.ev_check, trigvar.outbox" -c "vacuum trigvar.t_plain" >/dev/null 2>&1
    psql -qXAt -d "$DB" -c "select 'vacuum trigvar.' || relname || ';' from pg_class where relnamespace = 'trigvar'::regnamespace and relname like 't\_%' and relkind = 'r'" | psql -qX -d "$DB" >/dev/null
    for v in $VARIANTS; do
        out=$(run "$v" || true)
        line=$(sed -n 's/.*cpu_ns=//p' <<<"$out")
        if [ -z "$line" ]; then
            # Variants written against an older layout of rowcast.events (see variants.sql)
            # fail on the current one: say so, and measure the others.
            echo "variant $v did not run: $(grep -m1 ERROR <<<"$out")" >&2
            continue
        fi
        read -r ns wal <<<"$line"
        WAL[$v]=$wal
        if [ -z "${BEST[$v]:-}" ] || [ "$ns" -lt "${BEST[$v]}" ]; then BEST[$v]=$ns; fi
    done
    echo "round $r done" >&2
done
base=$(echo "${BEST[plain]:-0} / 1000 / $N" | bc -l)
printf '%-16s %12s %14s %10s\n' variant "CPU µs/row" "over plain µs" "WAL B/row"
for v in $VARIANTS; do
    [ -n "${BEST[$v]:-}" ] || continue
    us=$(echo "${BEST[$v]} / 1000 / $N" | bc -l)
    printf '%-16s %12.1f %14.1f %10d\n' "$v" "$us" "$(echo "$us - $base" | bc -l)" "$(( WAL[$v] / N ))"
done
