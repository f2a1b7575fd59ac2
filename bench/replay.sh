#!/usr/bin/env bash
# Replay far behind the head: pages of /events on a common topic from near the start of
# a long log, then a topic with one event from since=0 to the end, each request timed.
# Runs `rowcast serve` on the database left by the sustained benchmark (every event on
# `bench_events`, each row also on `bench:<id>`), so run that first:
#
#   target/release/rowcast-bench sustained --seconds 600 --writers 32 --rows-per-tx 1
#   bench/replay.sh                        # database perf_bench on 127.0.0.1:5432
#   DB=perf_bench PAGES=10 RARE=bench:1500000 PORT=18092 bench/replay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB="${DB:-perf_bench}"
PAGES="${PAGES:-10}"
RARE="${RARE:-bench:1500000}"
PORT="${PORT:-18092}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --bin rowcast

DATABASE_URL="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$DB" ROWCAST_LISTEN="127.0.0.1:$PORT" \
    ROWCAST_LOG=warn "$CARGO_TARGET_DIR/release/rowcast" serve >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
done
end=$(psql -qXAt -d "$DB" -c "select last_pos from rowcast.sequencer")
echo "log of $end positions"

# One timed request: prints "<seconds> <events> <head>".
page() {
    local body
    body=$(mktemp)
    local took
    took=$(curl -s -o "$body" -w '%{time_total}' "http://127.0.0.1:$PORT/events?$1")
    echo "$took $(grep -o '"type":"event"' "$body" | wc -l) $(grep -o '"head":[0-9]*' "$body" | cut -d: -f2)"
    rm -f "$body"
}

since=1000
for i in $(seq 1 "$PAGES"); do
    read -r took n head < <(page "topics=bench_events&since=$since&limit=1000")
    echo "common topic, page $i: ${took}s, $n events, head $head"
    since=$head
done
since=0
i=0
while [ "$since" -lt "$end" ]; do
    i=$((i + 1))
    read -r took n head < <(page "topics=$RARE&since=$since&limit=100")
    echo "rare topic $RARE, request $i: ${took}s, $n events, head $head"
    since=$head
done
