#!/usr/bin/env bash
# CPU cost of the capture trigger per row, without concurrency or commits: N one-row
# UPDATEs in one transaction on each table of bench/write-overhead.sh (run that first,
# or pass SETUP=1 to create the tables here), best of ROUNDS, interleaved. Counts the
# backend's own CPU time, so a busy machine changes the figures little.
#
#   bench/trigger-cost.sh                  # database perf_write on 127.0.0.1:5432
#   DB=perf_write N=5000 ROUNDS=3 bench/trigger-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_write}"
N="${N:-5000}"
ROUNDS="${ROUNDS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

if [ "${SETUP:-0}" = 1 ]; then
    cargo build --release --quiet --bin rowcast
    psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
    "$CARGO_TARGET_DIR/release/rowcast" migrate --admin-url "host=$PGHOST port=$PGPORT user=$PGUSER dbname=$DB" >/dev/null
    psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f bench/write-overhead/schema.sql >/dev/null 2>&1
fi

# Prints the backend's own CPU time (Linux schedstat, read by the backend itself: needs a
# superuser) for N one-row UPDATEs, in ns: other processes' load does not count.
run() {
    psql -qXAt -d "$DB" -v ON_ERROR_STOP=1 2>&1 <<SQL | sed -n 's/.*cpu_ns=//p'
do \$\$ declare a bigint; b bigint; begin
    a := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    for i in 1..$N loop
        update $1 set status = case when status = 'PENDING' then 'CONFIRMED' else 'PENDING' end,
                      updated_at = now() where id = i;
    end loop;
    b := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    raise notice 'cpu_ns=%', b - a;
end \$\$;
SQL
}

declare -A BEST
for _ in $(seq 1 "$ROUNDS"); do
    for t in b_plain b_poll b_notify; do
        ns=$(run "$t")
        if [ -z "${BEST[$t]:-}" ] || [ "$ns" -lt "${BEST[$t]}" ]; then BEST[$t]=$ns; fi
    done
done
printf '%-10s %12s %12s\n' table "CPU µs/row" "trigger µs"
for t in b_plain b_poll b_notify; do
    us=$(echo "${BEST[$t]} / 1000 / $N" | bc -l)
    extra=$(echo "($us) - (${BEST[b_plain]} / 1000 / $N)" | bc -l)
    printf '%-10s %12.1f %12.1f\n' "$t" "$us" "$extra"
done
