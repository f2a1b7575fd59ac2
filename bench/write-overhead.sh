#!/usr/bin/env bash
# Write overhead of the capture trigger: pgbench one-row UPDATEs on a plain table and on
# watched tables (notify mode, poll mode, notify-every-transaction for comparison, and poll
# mode with one excluded column), at 1, 8 and 32 clients, all in one run so the ratios
# compare like with like.
#
#   bench/write-overhead.sh                 # database perf_write on 127.0.0.1:5432
#   DB=perf_x SECONDS_PER_RUN=10 CLIENTS="1 8 32" ROUNDS=2 bench/write-overhead.sh
#   ROWCAST=/tmp/base-target/release/rowcast DB=perf_old bench/write-overhead.sh
#
# Creates (drops first) the database $DB, installs the rowcast schema with `$ROWCAST
# migrate` (so the schema is the one that binary ships), starts `rowcast serve` on it (the
# sequencer clears the wake-up flag, as in production) and prints a table of tps and
# ratios to plain, per round and averaged. Connection: PGHOST/PGPORT/PGUSER (default
# 127.0.0.1:5432, postgres) for setup and the service.
#
# ROWCAST=<binary>  use this rowcast binary (another checkout's build) and skip the cargo
#                   build; default: build this checkout's release binary.
# WRITER=<role>     the role pgbench connects as (default bench_writer, created if missing,
#                   as a login role that is no superuser). It is granted usage on schema
#                   public and select, update on the bench tables, nothing else: the writers
#                   of an application, which own nothing and are subject to row-level
#                   security. WRITER=postgres measures as a superuser (the figures before
#                   schema version 5), which bypasses row-level security.
# VARIANTS="..."    which tables to update (default: plain notify poll notify_every exclude;
#                   also: set, notify mode captured by statement triggers). Every other
#                   round runs them in the reverse order.
#
# Every run is bounded: ROUNDS x variants x CLIENTS x SECONDS_PER_RUN seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_write}"
SECS="${SECONDS_PER_RUN:-10}"
CLIENTS="${CLIENTS:-1 8 32}"
ROUNDS="${ROUNDS:-1}"
VARIANTS="${VARIANTS:-plain notify poll notify_every exclude}"
WRITER="${WRITER:-bench_writer}"
PGBENCH="${PGBENCH:-pgbench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

if [[ -z "${ROWCAST:-}" ]]; then
    cargo build --release --quiet --bin rowcast
    ROWCAST="$CARGO_TARGET_DIR/release/rowcast"
fi

psql -qX -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"
URL="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$DB"
"$ROWCAST" migrate --admin-url "$URL" >/dev/null
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -f bench/write-overhead/schema.sql >/dev/null
echo "$("$ROWCAST" --version 2>/dev/null || echo "$ROWCAST"), schema version" \
     "$(psql -qXAt -d "$DB" -c "select max(version) from rowcast.schema_history" 2>/dev/null || echo '?'), writers as $WRITER" >&2

# The writers: an application role that owns none of the tables.
psql -qX -d "$DB" -v ON_ERROR_STOP=1 -v writer="$WRITER" -f bench/write-overhead/writer.sql >/dev/null

ROWCAST_LOG=warn "$ROWCAST" serve --database-url "$URL" --listen 127.0.0.1:0 &
SERVE_PID=$!
trap 'kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true' EXIT
sleep 1

declare -A TPS RTPS
for round in $(seq 1 "$ROUNDS"); do
    # Every other round in the reverse order: a variant run right after another pays for
    # what the sequencer still has to do of the one before.
    order=$VARIANTS
    if (( round % 2 == 0 )); then
        order=$(echo "$VARIANTS" | tr ' ' '\n' | tac | tr '\n' ' ')
    fi
    for c in $CLIENTS; do
        for v in $order; do
            j=$(( c < 2 ? 1 : 2 ))
            out=$("$PGBENCH" -n -U "$WRITER" -c "$c" -j "$j" -T "$SECS" -f "bench/write-overhead/update_$v.sql" "$DB" 2>&1) || true
            tps=$(awk '/^tps/ {print int($3); exit}' <<<"$out")
            if [[ -z "$tps" ]] || grep -qi 'aborted\|error' <<<"$out"; then
                echo "pgbench failed on $v with $c clients as $WRITER:" >&2; tail -5 <<<"$out" >&2; exit 1
            fi
            TPS[$v,$c]=$(( ${TPS[$v,$c]:-0} + tps ))
            RTPS[$round,$v,$c]=$tps
            echo "round $round clients $c $v: $tps tps" >&2
        done
    done
done

events=$(psql -qXAt -d "$DB" -c "select count(*) from rowcast.events")
sequenced=$(psql -qXAt -d "$DB" -c "select count(*) from rowcast.log")
row() {  # label clients, then tps per variant (plain first): prints tps and ratios to plain
    local label=$1 c=$2; shift 2
    local p=$1 line ratios="" t
    line=$(printf '%-6s %-8s' "$label" "$c")
    for t in "$@"; do line+=$(printf ' %12d' "$t"); done
    shift
    for t in "$@"; do
        if (( p > 0 )); then ratios+=$(printf ' %9.2f' "$(echo "$t/$p" | bc -l)"); else ratios+=$(printf ' %9s' -); fi
    done
    echo "$line   $ratios"
}
header=$(printf '\n%-6s %-8s' round clients)
rhead=""
base=${VARIANTS%% *}
for v in $VARIANTS; do header+=$(printf ' %12s' "$v"); done
for v in ${VARIANTS#* }; do rhead+=$(printf ' %9s' "${v##*_}/${base:0:1}"); done
echo "$header   $rhead"
for c in $CLIENTS; do
    if (( ROUNDS > 1 )); then
        for round in $(seq 1 "$ROUNDS"); do
            vals=(); for v in $VARIANTS; do vals+=("${RTPS[$round,$v,$c]}"); done
            row "$round" "$c" "${vals[@]}"
        done
    fi
    vals=(); for v in $VARIANTS; do vals+=("$(( TPS[$v,$c] / ROUNDS ))"); done
    row mean "$c" "${vals[@]}"
done
echo "events captured: $events, sequenced while running: $sequenced (tps averaged over $ROUNDS round(s) of ${SECS}s, writers as $WRITER)"
