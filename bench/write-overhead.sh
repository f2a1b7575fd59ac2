#!/usr/bin/env bash
# Write overhead of the capture trigger: pgbench one-row UPDATEs on a plain table and on
# watched tables (notify mode, poll mode, and notify-every-transaction for comparison),
# at 1, 8 and 32 clients, all in one run so the ratios compare like with like.
#
#   bench/write-overhead.sh                 # database perf_write on 127.0.0.1:5432
#   DB=perf_x SECONDS_PER_RUN=10 CLIENTS="1 8 32" ROUNDS=2 bench/write-overhead.sh
#
# Creates (drops first) the database $DB, installs the rowcast schema, starts `rowcast
# serve` on it (the sequencer clears the wake-up flag, as in production) and prints a
# table of tps and ratios to plain. Connection: PGHOST/PGPORT/PGUSER (default
# 127.0.0.1:5432, postgres). Every run is bounded: ROUNDS x variants x CLIENTS x
# SECONDS_PER_RUN seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_write}"
SECS="${SECONDS_PER_RUN:-10}"
CLIENTS="${CLIENTS:-1 8 32}"
ROUNDS="${ROUNDS:-1}"
VARIANTS="plain notify poll notify_every"
PGBENCH="${PGBENCH:-pgbench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --release --quiet --bin rowcast
ROWCAST="$CARGO_TARGET_DIR/release/rowcast"

psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
URL="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$DB"
"$ROWCAST" migrate --admin-url "$URL" >/dev/null
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f bench/write-overhead/schema.sql >/dev/null

ROWCAST_LOG=warn "$ROWCAST" serve --database-url "$URL" --listen 127.0.0.1:0 &
SERVE_PID=$!
trap 'kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true' EXIT
sleep 1

declare -A TPS
for round in $(seq 1 "$ROUNDS"); do
    for c in $CLIENTS; do
        for v in $VARIANTS; do
            j=$(( c < 2 ? 1 : 2 ))
            tps=$("$PGBENCH" -n -c "$c" -j "$j" -T "$SECS" -f "bench/write-overhead/update_$v.sql" "$DB" 2>/dev/null \
                  | awk '/^tps/ {print int($3); exit}')
            TPS[$v,$c]=$(( ${TPS[$v,$c]:-0} + tps ))
            echo "round $round clients $c $v: $tps tps" >&2
        done
    done
done

events=$(psql -qXAt -d "$DB" -c "select count(*) from rowcast.events")
sequenced=$(psql -qXAt -d "$DB" -c "select count(*) from rowcast.log")
printf '\n%-8s %10s %10s %10s %14s %8s %8s %8s\n' clients plain notify poll notify_every notify/p poll/p every/p
for c in $CLIENTS; do
    p=$(( TPS[plain,$c] / ROUNDS )); n=$(( TPS[notify,$c] / ROUNDS ))
    o=$(( TPS[poll,$c] / ROUNDS )); e=$(( TPS[notify_every,$c] / ROUNDS ))
    printf '%-8s %10d %10d %10d %14d %8.2f %8.2f %8.2f\n' "$c" "$p" "$n" "$o" "$e" \
        "$(echo "$n/$p" | bc -l)" "$(echo "$o/$p" | bc -l)" "$(echo "$e/$p" | bc -l)"
done
echo "events captured: $events, sequenced while running: $sequenced (tps averaged over $ROUNDS round(s) of ${SECS}s)"
