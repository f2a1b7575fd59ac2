#!/usr/bin/env bash
# PostgreSQL CPU per event with several replicas of `rowcast serve` on one database.
#
# For each number of replicas in REPLICAS, and each build in BUILDS (interleaved: builds
# alternate inside each replica count, their order flips every round), this starts that
# many `rowcast serve` processes (each with application_name rc_r<i>, so their backends
# can be told apart), lets them settle, runs pgbench writers committing one-row UPDATEs
# on a watched (notify) table at a steady RATE per second, and reads the CPU time
# (utime + stime from /proc/<pid>/stat) of every backend of the database over the middle
# SECONDS_PER_RUN seconds. Events are the positions handed out in that window. Backends
# are grouped by what they serve, from pg_stat_activity sampled every 100 ms during the
# window (query text; the process-level fields cannot say more):
#   writers   the pgbench clients' backends
#   seq       a sequencer connection seen running rowcast.rearm()/sequence_step: the
#             leader's (one) in a build with a leader lock; every replica's in one without
#   standby   a sequencer connection that never sequenced in the window (a leader-lock
#             build's standing-by replicas; see "standby" below)
#   tailer    the connection reading rowcast.log (LISTEN rowcast_seq)
#   pool      the replica's other backends (health sampling, registry checks, retention)
#   pg_other  walwriter, checkpointer, background writer, autovacuum: cluster-wide,
#             includes other databases' load (context only, not in the totals)
#   service   the rowcast processes themselves (not PostgreSQL; context)
# A standing-by sequencer runs pg_try_advisory_lock and rowcast.unsequenced() every
# sequencer.standby_check; a pool connection's last statement is often
# rowcast.unsequenced() too (health sampling). A backend whose only statements seen are
# unsequenced() is the standby if it connected after the replica's first backend (the
# pool's connection for start-up checks is made before the sequencer and the tailer
# connect), else pool. The classification is printed per configuration with DEBUG=1.
#
#   BUILDS="old=/work/wt-old/target/release/rowcast new=target/release/rowcast" \
#     REPLICAS="1 2 4 8" SECONDS_PER_RUN=20 RATE=1000 ROUNDS=2 bench/replica-cpu.sh
#
# The same build with and without the bus: list it twice and name the bus label in BUS
# (replicas then follow a stream of their own on NATS_URL, default nats://127.0.0.1:4222):
#
#   BUILDS="pg=target/release/rowcast bus=target/release/rowcast" BUS=bus \
#     REPLICAS="1 2 4 8" SECONDS_PER_RUN=20 RATE=1000 bench/replica-cpu.sh
#
# Each build gets its own database ${DB_PREFIX}_<label>, created (dropped first) and
# migrated by that build, with the watched table r_events (10,000 rows, notify wake-up,
# routed by user_id). KEEP=1 leaves the databases; by default they are dropped at the end.
# Writers: CLIENTS pgbench clients (default 16, enough to keep RATE on a loaded machine
# with every commit waiting for its WAL flush), as WRITER (default bench_writer, created
# if missing, no superuser). The replicas
# listen on 127.0.0.1:PORT_BASE.. (default 19100). Needs a superuser at PGHOST/PGPORT/
# PGUSER (default 127.0.0.1:5432, postgres), pgbench, psql, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pgbench-window.sh
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
BUILDS="${BUILDS:-new=${CARGO_TARGET_DIR:-$PWD/target}/release/rowcast}"
REPLICAS="${REPLICAS:-1 2 4 8}"
SECS="${SECONDS_PER_RUN:-20}"
RATE="${RATE:-1000}"
CLIENTS="${CLIENTS:-16}"
ROUNDS="${ROUNDS:-1}"
SETTLE="${SETTLE:-3}"
DB_PREFIX="${DB_PREFIX:-bench_replicas}"
PORT_BASE="${PORT_BASE:-19100}"
WRITER="${WRITER:-bench_writer}"
HZ=$(getconf CLK_TCK)
OUT=$(mktemp -d)
SERVE_PIDS=()
PB=

cleanup() {
    [ -n "$PB" ] && kill "$PB" 2>/dev/null || true
    for p in "${SERVE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${SERVE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" != 1 ]; then
        for b in $BUILDS; do
            psql -qX -d postgres -c "drop database if exists ${DB_PREFIX}_${b%%=*} with (force)" 2>/dev/null || true
        done
    fi
    rm -rf "$OUT"
}
trap cleanup EXIT

ticks() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || true; } | awk '{print $12 + $13}'; }
# "pid ticks" for each pid on stdin, read in one pass (a fork per pid would spread the
# snapshot over seconds on a loaded machine)
ticks_all() {
    local files=() pid
    while read -r pid; do [ -n "$pid" ] && files+=("/proc/$pid/stat"); done
    [ ${#files[@]} -gt 0 ] || return 0
    awk '{ split(FILENAME, f, "/"); sub(/.*\) /, ""); split($0, x, " "); print f[3], x[12] + x[13] }' \
        "${files[@]}" 2>/dev/null || true
}

# Setup: one database per build, migrated by that build.
for b in $BUILDS; do
    label=${b%%=*} bin=${b#*=}
    [ -x "$bin" ] || { echo "no binary $bin" >&2; exit 2; }
    db="${DB_PREFIX}_$label"
    psql -qX -d postgres -c "drop database if exists $db with (force)" -c "create database $db"
    "$bin" migrate --admin-url "host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" >/dev/null
    psql -qX -d "$db" -v ON_ERROR_STOP=1 -v writer="$WRITER" >/dev/null <<'SQL'
create table r_events (id bigint primary key, user_id int not null, status text not null,
                       updated_at timestamptz not null default now());
insert into r_events (id, user_id, status) select g, g % 1000, 'PENDING' from generate_series(1, 10000) g;
select rowcast.watch('r_events', topic => 'r_events', routes => '{"user_id": "user"}', wake => 'notify');
select not exists (select from pg_roles where rolname = :'writer') as missing \gset
\if :missing
    create role :"writer" login nosuperuser;
\endif
grant usage on schema public to :"writer";
grant select, update on r_events to :"writer";
vacuum analyze r_events;
SQL
    echo "$label: $("$bin" --version 2>/dev/null || echo "$bin"), schema version" \
         "$(psql -qXAt -d "$db" -c "select max(version) from rowcast.schema_history")" >&2
done
cat >"$OUT/update.sql" <<'SQL'
\set id random(1, 10000)
update r_events set status = case when status = 'PENDING' then 'CONFIRMED' else 'PENDING' end, updated_at = now() where id = :id;
SQL

# The sampler: every 100 ms for $1 seconds, what each backend of the database last ran,
# then one line per backend: pid app class backend_start(epoch) (class from all samples).
sampler() {
    psql -qXAt -F ' ' -d "$2" -v ON_ERROR_STOP=1 2>/dev/null <<SQL
create temp table seen (pid int, app text, class text, started float8);
do \$\$ declare t0 timestamptz := clock_timestamp(); begin
    while clock_timestamp() < t0 + interval '$1 s' loop
        perform pg_stat_clear_snapshot();
        insert into seen
        select pid, application_name, case
                 when query ~ 'rowcast\.rearm|sequence_step' then 'seq'
                 when query ~ 'pg_try_advisory_lock' then 'standby'
                 when query ~ 'rowcast\.log' then 'tailer'
                 when query ~ 'rowcast\.unsequenced' then 'unseq'
                 else 'pool' end,
               extract(epoch from backend_start)
        from pg_stat_activity
        where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend';
        perform pg_sleep(0.1);
    end loop;
end \$\$;
select pid, app, case when bool_or(class = 'seq') then 'seq'
                      when bool_or(class = 'standby') then 'standby'
                      when bool_or(class = 'tailer') then 'tailer'
                      when bool_or(class = 'pool') then 'pool'
                      else 'unseq' end, min(started)
from seen group by pid, app;
SQL
}

# pid ticks, for every client backend of the database, the rowcast processes and the
# cluster's background processes.
snapshot() {
    local db=$1; shift
    { psql -qXAt -d "$db" -c "select pid from pg_stat_activity where (datname = current_database()
                              and pid <> pg_backend_pid() and backend_type = 'client backend')
                              or backend_type in ('walwriter', 'checkpointer', 'background writer',
                                                  'autovacuum worker', 'autovacuum launcher')"
      printf '%s\n' "$@"; } | ticks_all
}
head_pos() { psql -qXAt -d "$1" -c "select coalesce(max(pos), 0) from rowcast.log"; }

run() { # label bin n round
    local label=$1 bin=$2 n=$3 round=$4 db="${DB_PREFIX}_$1" i
    local url="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db"
    SERVE_PIDS=()
    # Builds labelled in BUS follow a NATS JetStream stream of their own (bus.*).
    local bus=()
    if [[ " ${BUS:-} " == *" $label "* ]]; then
        bus=(ROWCAST_BUS__NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
             ROWCAST_BUS__STREAM="rowcast_bench_${label}_${round}_$n"
             ROWCAST_BUS__SUBJECT="rowcast_bench.${label}.${round}.$n")
    fi
    for i in $(seq 1 "$n"); do
        env "${bus[@]}" ROWCAST_LOG=warn "$bin" serve --database-url "$url application_name=rc_r$i" \
            --listen "127.0.0.1:$(( PORT_BASE + i - 1 ))" >"$OUT/serve.$i.log" 2>&1 &
        SERVE_PIDS+=($!)
    done
    for i in $(seq 1 "$n"); do
        for _ in $(seq 1 100); do
            curl -fs "http://127.0.0.1:$(( PORT_BASE + i - 1 ))/healthz" >/dev/null && break
            sleep 0.1
        done
    done
    sleep "$SETTLE"
    pgbench -n -U "$WRITER" -R "$RATE" -c "$CLIENTS" -j 1 -T "$(( SECS + 8 ))" -f "$OUT/update.sql" "$db" \
        >"$OUT/pgbench.out" 2>&1 &
    PB=$!
    wait_for_clients "$db" "$CLIENTS"
    sleep 1
    sampler "$SECS" "$db" >"$OUT/classes" &
    local SP=$!
    local a b h0 h1 t0 t1
    a=$(snapshot "$db" "${SERVE_PIDS[@]}"); h0=$(head_pos "$db"); t0=$(date +%s.%N)
    sleep "$SECS"
    b=$(snapshot "$db" "${SERVE_PIDS[@]}"); h1=$(head_pos "$db"); t1=$(date +%s.%N)
    wait "$SP" || true
    # backend types, for the cluster's background processes
    psql -qXAt -F ' ' -d "$db" -c "select pid, 'pg_other' from pg_stat_activity where backend_type in
        ('walwriter', 'checkpointer', 'background writer', 'autovacuum worker', 'autovacuum launcher')" >"$OUT/bg"
    kill -INT "$PB" 2>/dev/null || true; wait "$PB" || true; PB=
    for p in "${SERVE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${SERVE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    local done_pids="${SERVE_PIDS[*]}"; SERVE_PIDS=()
    local errors; errors=$(grep -c -i 'error' "$OUT"/serve.*.log || true)
    # Per group ticks over the window: pids present in both snapshots.
    awk -v label="$label" -v n="$n" -v round="$round" -v events=$(( h1 - h0 )) \
        -v secs="$(echo "$t1 - $t0" | bc -l)" -v hz="$HZ" -v services="$done_pids" \
        -v debug="${DEBUG:-0}" -v errors="$errors" '
        FILENAME == ARGV[1] { app[$1] = $2; cls[$1] = $3; start[$1] = $4; next }
        FILENAME == ARGV[2] { cls[$1] = "pg_other"; next }
        FILENAME == ARGV[3] { a[$1] = $2; next }
        FILENAME == ARGV[4] { if ($1 in a) d[$1] = $2 - a[$1]; next }
        END {
            split(services, sp, " "); for (k in sp) cls[sp[k]] = "service"
            # a backend seen only running unsequenced(): the standby if it is not the
            # replica first backend (the pool connection made before the sequencer)
            for (p in cls) if (app[p] ~ /^rc_r/ && (!(app[p] in first) || start[p] < start[first[app[p]]])) first[app[p]] = p
            # the leading replica: the one whose sequencer connection used the most CPU
            for (p in d) if (cls[p] == "seq" && (lead == "" || d[p] > d[lead])) lead = p
            for (p in d) {
                if (lead != "" && app[p] == app[lead]) { t["lead"] += d[p]; cnt["lead"]++ }
                c = cls[p]
                if (c == "") c = (app[p] == "pgbench") ? "writers" : "unknown"
                if (app[p] == "pgbench") c = "writers"
                if (c == "unseq") c = (first[app[p]] == p) ? "pool" : "standby"
                t[c] += d[p]; cnt[c]++
                if (debug) printf "  %s n=%d pid %s %s %s %d ticks\n", label, n, p, app[p], c, d[p] > "/dev/stderr"
            }
            printf "%s %d %d %d %.3f", label, n, round, events, secs
            split("writers seq standby tailer pool unknown pg_other service lead", g, " ")
            for (k = 1; k <= 9; k++) printf " %s=%d/%d", g[k], t[g[k]] + 0, cnt[g[k]] + 0
            printf " errors=%d\n", errors
        }' "$OUT/classes" "$OUT/bg" <(echo "$a") <(echo "$b") | tee -a "$OUT/results" >&2
}

echo "# label n round events secs group=ticks/backends ... (HZ=$HZ)" >"$OUT/results"
for round in $(seq 1 "$ROUNDS"); do
    order=$BUILDS
    if (( round % 2 == 0 )); then order=$(echo "$BUILDS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for n in $REPLICAS; do
        for b in $order; do
            run "${b%%=*}" "${b#*=}" "$n" "$round"
        done
    done
done

# Report: µs of CPU per event, means over rounds (range in brackets when ROUNDS > 1).
awk -v hz="$HZ" '
    /^#/ { next }
    {
        key = $1 " " $2; if (!(key in seen)) { order[++nk] = key; seen[key] = 1 }
        ev = $4; rate[key] += ev / $5; rounds[key]++
        for (i = 6; i <= NF; i++) {
            split($i, kv, "="); split(kv[2], tb, "/")
            us = tb[1] * 1e6 / hz / ev
            v[key, kv[1]] += us; nb[key, kv[1]] = tb[2]
            if (!((key, kv[1]) in lo) || us < lo[key, kv[1]]) lo[key, kv[1]] = us
            if (!((key, kv[1]) in hi) || us > hi[key, kv[1]]) hi[key, kv[1]] = us
        }
        rep = 0; split("seq standby tailer pool unknown", rg, " ")
        for (k in rg) for (i = 6; i <= NF; i++) { split($i, kv, "="); if (kv[1] == rg[k]) { split(kv[2], tb, "/"); rep += tb[1] } }
        r = rep * 1e6 / hz / ev
        for (i = 6; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "lead") { split(kv[2], tb, "/"); ld = tb[1] } }
        if ($2 > 1) fol[key] += (rep - ld) * 1e6 / hz / ev / ($2 - 1)
        tot[key] += r; if (!(key in tlo) || r < tlo[key]) tlo[key] = r; if (!(key in thi) || r > thi[key]) thi[key] = r
    }
    END {
        printf "%-6s %2s %7s %9s %9s %9s %9s %9s %9s %9s %9s %9s %10s %10s\n", "build", "N", "ev/s",
            "writers", "seq", "standby", "tailer", "pool", "replicas", "per_repl", "marginal", "follower", "pg_other", "service"
        for (j = 1; j <= nk; j++) {
            key = order[j]; split(key, kk, " "); R = rounds[key]; N = kk[2]
            t = tot[key] / R
            m = "-"
            if (kk[1] in prevN) m = sprintf("%.1f", (t - prevT[kk[1]]) / (N - prevN[kk[1]]))
            printf "%-6s %2d %7.0f", kk[1], N, rate[key] / R
            split("writers seq standby tailer pool", g, " ")
            for (k = 1; k <= 5; k++) printf " %9.1f", v[key, g[k]] / R
            f = (N > 1) ? sprintf("%.1f", fol[key] / R) : "-"
            printf " %9.1f %9.1f %9s %9s %10.1f %10.1f\n", t, t / N, m, f, v[key, "pg_other"] / R, v[key, "service"] / R
            if (R > 1) printf "%-6s %2s %7s    replicas total over rounds: %.1f-%.1f\n", "", "", "", tlo[key], thi[key]
            prevN[kk[1]] = N; prevT[kk[1]] = t
        }
        print "µs of CPU per event (positions handed out in the window); replicas = seq + standby + tailer + pool (PostgreSQL backends serving the replicas); per_repl = replicas / N; marginal = change of replicas per added replica, from the previous N; follower = the backends of one replica other than the leading one (whose sequencer connection used the most CPU), mean; pg_other = cluster background processes (all databases); service = the rowcast processes"
    }' "$OUT/results"
cp "$OUT/results" "${RESULTS:-/tmp/replica-cpu.results}"
