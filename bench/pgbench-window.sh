# Sourced by the bench scripts that measure CPU over a pgbench run.
#
# wait_for_clients DB N: returns once N pgbench clients are connected to DB (slow on a
# loaded machine), at most 10 s, then lets them settle for half a second, so a
# measurement window starts with every client running.
wait_for_clients() {
    local db=$1 clients=$2 up
    for _ in $(seq 1 50); do
        up=$(psql -qXAt -d "$db" -c "select count(*) from pg_stat_activity where application_name = 'pgbench' and datname = current_database()")
        [ "$up" -ge "$clients" ] && break
        sleep 0.2
    done
    sleep 0.5
}
