#!/usr/bin/env bash
# The capture trigger's variants (bench/trigger-variants/variants.sql) under concurrency:
# pgbench CLIENTS writers run one-row UPDATEs on each variant's table, interleaved over
# ROUNDS, with no sequencer running (only the writers' side is measured). Reports tps and
# the CPU time (utime + stime) of the writers' backends and their context switches per
# transaction, over the middle of each run. Uses the database of bench/trigger-variants.sh
# (run that first). tps moves with the machine's other load: compare within one run.
#
#   DB=perf_trig CLIENTS=32 SECONDS_PER_RUN=10 ROUNDS=2 VARIANTS="plain shipped_poll outbox_min" bench/trigger-concurrent.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pgbench-window.sh
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_trig}"
SECS="${SECONDS_PER_RUN:-10}"
CLIENTS="${CLIENTS:-32}"
ROUNDS="${ROUNDS:-2}"
VARIANTS="${VARIANTS:-plain empty_all shipped_poll no_insert outbox_min ev_copy ev_check ev_noidx ev_pk_id}"
HZ=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# "ticks switches" summed over the writers' backends.
writers() {
    for pid in $(psql -qXAt -d "$DB" -c "select pid from pg_stat_activity where application_name = 'pgbench'"); do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || continue
        s=$(awk '/ctxt_switches/ {n += $2} END {print n}' "/proc/$pid/status" 2>/dev/null) || continue
        echo "$pid $t $s"
    done
}

declare -A TPS CPU SW
for round in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
        printf '\\set id random(1, 10000)\nupdate trigvar.t_%s set status = case when status = %s then %s else %s end, updated_at = now() where id = :id;\n' \
            "$v" "'PENDING'" "'CONFIRMED'" "'PENDING'" >"$work/$v.sql"
        pgbench -n -c "$CLIENTS" -j 2 -T "$(( SECS + 3 ))" -f "$work/$v.sql" "$DB" >"$work/out" 2>/dev/null &
        PB=$!
        launched=$(date +%s.%N)
        wait_for_clients "$DB" "$CLIENTS"
        a=$(writers); t0=$(date +%s.%N)
        sleep "$(echo "$launched + $SECS - 1.5 - $(date +%s.%N)" | bc -l | sed 's/^-.*/0/')"
        b=$(writers); t1=$(date +%s.%N)
        wait "$PB" || true
        tps=$(awk '/^tps/ {print int($3); exit}' "$work/out")
        read -r dt ds < <(awk 'NR == FNR {t[$1] = $2; s[$1] = $3; next} $1 in t {dt += $2 - t[$1]; ds += $3 - s[$1]}
                               END {print dt + 0, ds + 0}' <(echo "$a") <(echo "$b"))
        TPS[$v]=$(( ${TPS[$v]:-0} + tps ))
        # per transaction, using pgbench's tps over the window's length
        CPU[$v]=$(echo "${CPU[$v]:-0} + $dt / $HZ * 1000000 / ($tps * ($t1 - $t0))" | bc -l)
        SW[$v]=$(echo "${SW[$v]:-0} + $ds / ($tps * ($t1 - $t0))" | bc -l)
        echo "round $round $v: $tps tps" >&2
    done
done
printf '%-16s %8s %10s %18s %16s\n' variant tps "ratio" "writers µs/tx" "switches/tx"
for v in $VARIANTS; do
    printf '%-16s %8d %10.2f %18.1f %16.2f\n' "$v" "$(( TPS[$v] / ROUNDS ))" "$(echo "${TPS[$v]} / ${TPS[plain]:-${TPS[$v]}}" | bc -l)" \
        "$(echo "${CPU[$v]} / $ROUNDS" | bc -l)" "$(echo "${SW[$v]} / $ROUNDS" | bc -l)"
done
