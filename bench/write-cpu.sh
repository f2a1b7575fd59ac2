#!/usr/bin/env bash
# Where the CPU goes while pgbench writers run one-row UPDATEs (the tables and scripts of
# bench/write-overhead.sh) with `rowcast serve` sequencing and tailing: for each variant
# (plain, poll, notify by default), interleaved over ROUNDS, the tps and the CPU time
# (utime + stime from /proc/<pid>/stat) of each group of processes over the middle of
# the run, in cores and in µs per writer transaction:
#   writers     the pgbench clients' backends        sequencer  the backend holding the leader lock
#   tailer      the backend reading rowcast.log      rc_other   the service's other backends
#   service     the rowcast process                  pgbench    the pgbench process
#   walwriter, autovacuum (all databases)            machine    every process (from /proc/stat)
# A variant named like `poll@check` runs the same script with version 2's check
# constraint on rowcast.events.op added back (not valid: only new rows are checked,
# as they were), to compare schema versions 2 and 3 in one run; the others run without it.
# WRITER=<role> is the role pgbench connects as (default bench_writer, created if missing,
# granted what bench/write-overhead.sh grants it: an application role subject to
# row-level security); WRITER=postgres measures as a superuser, which bypasses it.
# ROWCAST=<path> runs that binary instead of building one. DEBUG=1 prints each window's ticks per group.
# With WAITS=1 the report adds what the writers' backends were waiting on, sampled from
# pg_stat_activity every 20 ms during the window (CPU = not waiting).
# With TRACK=1 the database also sets track_functions = 'pl' and the report adds the
# sequencer's functions from pg_stat_user_functions (calls, and time per call and per
# writer transaction; this tracking costs every function call a little).
#
#   DB=perf_trig_w CLIENTS=32 SECONDS_PER_RUN=12 ROUNDS=2 bench/write-cpu.sh
#
# The machine's other load counts in `machine` and in tps: compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pgbench-window.sh
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_write}"
SECS="${SECONDS_PER_RUN:-12}"
CLIENTS="${CLIENTS:-32}"
ROUNDS="${ROUNDS:-1}"
VARIANTS="${VARIANTS:-plain poll notify}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
HZ=$(getconf CLK_TCK)

[ -n "${ROWCAST:-}" ] || cargo build --release --quiet --bin rowcast
ROWCAST="${ROWCAST:-$CARGO_TARGET_DIR/release/rowcast}"
psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
URL="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$DB"
"$ROWCAST" migrate --admin-url "$URL" >/dev/null
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f bench/write-overhead/schema.sql >/dev/null
WRITER="${WRITER:-bench_writer}"
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -v writer="$WRITER" -f bench/write-overhead/writer.sql >/dev/null
if [ "${TRACK:-0}" = 1 ]; then
    psql -qX -d postgres -c "alter database $DB set track_functions = 'pl'"
fi
ROWCAST_LOG=warn "$ROWCAST" serve --database-url "$URL" --listen 127.0.0.1:0 &
SERVE_PID=$!
trap 'kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true' EXIT
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# One line per process of interest: "group ticks".
snapshot() {
    psql -qXAt -F ' ' -d "$DB" -c "select pid, case
            when application_name = 'pgbench' then 'writers'
            when application_name = 'rowcast' and exists (select from pg_locks l where l.pid = a.pid
                 and l.locktype = 'advisory' and l.granted and l.objsubid = 1) then 'sequencer'
            when application_name = 'rowcast' and query like '%rowcast.log%' then 'tailer'
            when application_name = 'rowcast' then 'rc_other' end
        from pg_stat_activity a where datname = '$DB' and pid <> pg_backend_pid()" |
    while read -r pid group; do
        t=$(ticks "$pid")
        if [ -n "$group" ] && [ -n "$t" ]; then echo "$group $t $pid"; fi
    done
    for pid in $(pgrep -f '^postgres: .*walwriter'); do echo "walwriter $(ticks "$pid") $pid"; done
    for pid in $(pgrep -f '^postgres: .*autovacuum worker'); do echo "autovacuum $(ticks "$pid") $pid"; done
    echo "service $(ticks "$SERVE_PID") $SERVE_PID"
    echo "pgbench $(ticks "$1") $1"
    echo "machine $(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat) 0"
}
funcs() {
    psql -qXAt -F ' ' -d "$DB" -c "select funcname, calls, total_time, self_time from pg_stat_user_functions
        where schemaname = 'rowcast' and funcname in ('sequence_step', 'rearm', 'topics_of', 'capture', 'request_wake')"
}

declare -A CPU TPS FN
for round in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
        out=$(mktemp)
        script=${v%@check}
        psql -qX -d "$DB" -c "alter table rowcast.events drop constraint if exists events_op_check" 2>/dev/null
        if [ "$script" != "$v" ]; then
            psql -qX -d "$DB" -c "alter table rowcast.events add constraint events_op_check
                check (op in ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')) not valid"
        fi
        pgbench -n -U "$WRITER" -c "$CLIENTS" -j 2 -T "$(( SECS + 3 ))" -f "bench/write-overhead/update_$script.sql" "$DB" >"$out" 2>/dev/null &
        PB=$!
        launched=$(date +%s.%N)
        # The window starts once every client is connected (slow on a loaded machine) and
        # ends 1.5 s before SECS are up (pgbench runs 3 s longer: its end is not exact).
        wait_for_clients "$DB" "$CLIENTS"
        PBPID=$(pgrep -x pgbench -P $$ || echo "$PB")
        a=$(snapshot "$PBPID"); fa=$(funcs); t0=$(date +%s.%N)
        x0=$(psql -qXAt -d "$DB" -c "select xact_commit from pg_stat_database where datname = '$DB'")
        if [ "${WAITS:-0}" = 1 ]; then
            psql -qXAt -d "$DB" 2>&1 <<SQL | sed -n "s/^.*waits: /  $v waits: /p" >&2 &
do \$\$ declare a text[] := '{}'; begin
    for i in 1..$(( (SECS - 5) * 40 )) loop
        perform pg_stat_clear_snapshot();
        a := a || array(select coalesce(wait_event_type || ':' || wait_event, 'CPU') from pg_stat_activity
                        where application_name = 'pgbench' and state = 'active');
        perform pg_sleep(0.02);
    end loop;
    raise notice 'waits: %', (select string_agg(e || ' ' || round(100.0 * n / cardinality(a)) || '%', ', ')
                              from (select e, count(*) n from unnest(a) e group by e order by 2 desc limit 8) x);
end \$\$;
SQL
        fi
        sleep "$(echo "$launched + $SECS - 1.5 - $(date +%s.%N)" | bc -l | sed 's/^-.*/0/')"
        b=$(snapshot "$PBPID"); fb=$(funcs); t1=$(date +%s.%N)
        x1=$(psql -qXAt -d "$DB" -c "select xact_commit from pg_stat_database where datname = '$DB'")
        wait "$PB" || true
        tps=$(awk '/^tps/ {print int($3); exit}' "$out"); rm -f "$out"
        TPS[$v]=$(( ${TPS[$v]:-0} + tps ))
        # per group: sum over pids present in both snapshots of (ticks_b - ticks_a); a
        # backend seen running the sequencer's statements in either snapshot counts as
        # the sequencer (its last statement may also be a read of the log).
        while read -r g d; do
            [ -n "${DEBUG:-}" ] && echo "  $v $g $d ticks" >&2
            CPU[$v,$g]=$(echo "${CPU[$v,$g]:-0} + $d / $HZ / ($t1 - $t0)" | bc -l)
        done < <(awk 'NR == FNR {a[$3] = $2; ga[$3] = $1; next}
                      $3 in a {g = (ga[$3] == "sequencer") ? ga[$3] : $1; d[g] += $2 - a[$3]}
                      END {for (g in d) print g, d[g]}' <(echo "$a") <(echo "$b"))
        while read -r f c tt st; do
            read -r _ c0 tt0 st0 < <(echo "$fa" | awk -v f="$f" '$1 == f' || true)
            FN[$v,$f]="$(( c - ${c0:-0} )) $(echo "$st - ${st0:-0}" | bc -l) $(echo "$t1 - $t0" | bc -l)"
        done < <(echo "$fb" | grep . || true)
        echo "round $round $v: $tps tps, $(( x1 - x0 )) commits in the window" >&2
    done
done

GROUPS_="writers sequencer tailer rc_other service pgbench walwriter autovacuum machine"
printf '%-10s %8s' variant tps; for g in $GROUPS_; do printf ' %10s' "$g"; done; echo
for v in $VARIANTS; do
    t=$(( TPS[$v] / ROUNDS ))
    printf '%-10s %8d' "$v" "$t"; for g in $GROUPS_; do printf ' %10.2f' "$(echo "${CPU[$v,$g]:-0} / $ROUNDS" | bc -l)"; done; echo "   (cores)"
    printf '%-10s %8s' "" ""; for g in $GROUPS_; do printf ' %10.1f' "$(echo "${CPU[$v,$g]:-0} / $ROUNDS * 1000000 / $t" | bc -l)"; done; echo "   (µs per writer transaction)"
done
if [ "${TRACK:-0}" = 1 ]; then
    echo "last round, pg_stat_user_functions over the window: calls, self ms per call, self µs per writer tx"
    for v in $VARIANTS; do for f in sequence_step rearm topics_of capture request_wake; do
        [ -n "${FN[$v,$f]:-}" ] || continue
        read -r c st secs <<<"${FN[$v,$f]}"
        [ "$c" -gt 0 ] || continue
        printf '%-10s %-14s %8d calls %10.3f ms/call %8.1f µs/tx\n' "$v" "$f" "$c" "$(echo "$st / $c" | bc -l)" \
            "$(echo "$st * 1000 / ($secs * ${TPS[$v]} / $ROUNDS)" | bc -l)"
    done; done
fi
