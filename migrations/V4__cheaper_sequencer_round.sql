-- rowcast schema, version 4: a cheaper sequencer round.
--
-- Every round of the service's sequencer ran three statements in one round trip:
-- rowcast.rearm(), rowcast.sequence_step() and a read of the log after the local
-- tailer's head, which the tailer then publishes without a read of its own. The read
-- is now part of the batch's statement (rowcast.sequence_step_changes()), which saves
-- a statement's start-up, snapshot and end on every round: a round runs for nearly
-- every commit at 1k writes/s. Each event's topics cost less to compute, and the log
-- loses an index nothing reads any more. BENCHMARKS.md has the measurements.

-- The service reads the log by position only (a resume on a topic reads windows of
-- positions and tests the topics of each row: `serve::replay`), so the GIN index on
-- topics served no query and cost the sequencer an index insert per event.
drop index rowcast.log_topics;

-- As in version 2 (its comment there has the rules), in the same order and without
-- repeats, but without building an array of the new and the old row: for an UPDATE a
-- value of the old row is the old value when `old` has the column, else the new one
-- (which is what `data || old` gave), read column by column.
create or replace function rowcast.topics_of(r rowcast.routings, op text, data jsonb, old jsonb) returns text[]
language plpgsql
immutable
as $$
declare
    topics text[];
    t      text;
    v      text;
    c      text;
    i      int;
    n      int;
begin
    if r.id is null then
        return null;
    end if;
    topics := array[r.table_name];
    n := coalesce(pg_catalog.cardinality(r.route_columns), 0);
    if pg_catalog.cardinality(r.key_columns) > 0 then
        t := r.topic;
        foreach c in array r.key_columns loop
            t := t operator(pg_catalog.||) ':' operator(pg_catalog.||) coalesce(data operator(pg_catalog.->>) c, '');
        end loop;
        if not t operator(pg_catalog.=) any (topics) then
            topics := topics operator(pg_catalog.||) t;
        end if;
    end if;
    for i in 1 .. n loop
        v := data operator(pg_catalog.->>) r.route_columns[i];
        continue when v is null;
        t := r.route_topics[i] operator(pg_catalog.||) ':' operator(pg_catalog.||) v;
        if not t operator(pg_catalog.=) any (topics) then
            topics := topics operator(pg_catalog.||) t;
        end if;
    end loop;
    if op operator(pg_catalog.<>) 'UPDATE' or old is null then
        return topics;
    end if;
    if pg_catalog.cardinality(r.key_columns) > 0 then
        t := r.topic;
        foreach c in array r.key_columns loop
            t := t operator(pg_catalog.||) ':' operator(pg_catalog.||) coalesce(
                case when old operator(pg_catalog.?) c then old operator(pg_catalog.->>) c
                     else data operator(pg_catalog.->>) c end, '');
        end loop;
        if not t operator(pg_catalog.=) any (topics) then
            topics := topics operator(pg_catalog.||) t;
        end if;
    end if;
    for i in 1 .. n loop
        c := r.route_columns[i];
        v := case when old operator(pg_catalog.?) c then old operator(pg_catalog.->>) c
                  else data operator(pg_catalog.->>) c end;
        continue when v is null;
        t := r.route_topics[i] operator(pg_catalog.||) ':' operator(pg_catalog.||) v;
        if not t operator(pg_catalog.=) any (topics) then
            topics := topics operator(pg_catalog.||) t;
        end if;
    end loop;
    return topics;
end
$$;

-- rowcast.sequence_step(), returning what it sequenced: one row per event in position
-- order, the first `changes_limit` of them (the columns the service reads the log with,
-- the row as text, `ts` rendered in UTC), then one last row whose `pos` is null with the
-- step's `sequenced` and `in_progress`. Only the service calls it, on the sequencer's
-- connection; it returns captured rows, so only roles given rowcast.grant_service() may
-- execute it.
create function rowcast.sequence_step_changes(batch_limit integer, changes_limit integer)
returns table (pos bigint, table_name text, op text, topics text[], ts text, data text,
               old text, mapping_id int, sequenced bigint, in_progress boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
as $$
#variable_conflict use_column
declare
    step record;
    upto bigint;
begin
    select s.sequenced, s.in_progress into step from rowcast.sequence_step(batch_limit) s;
    if step.sequenced > 0 and changes_limit > 0 then
        -- This transaction holds the counter row: nobody moved it since the step.
        select q.last_pos into upto from rowcast.sequencer q where q.singleton;
        return query
            select l.pos, e.table_name, e.op, l.topics,
                   to_char(e.ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   e.data::text, e.old::text, e.mapping_id, null::bigint, null::boolean
            from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id
            where l.pos > upto - step.sequenced and l.pos <= upto
            order by l.pos
            limit changes_limit;
    end if;
    return query
        select null::bigint, null::text, null::text, null::text[], null::text, null::text,
               null::text, null::int, step.sequenced, step.in_progress;
end
$$;

revoke execute on function rowcast.sequence_step_changes(integer, integer) from public;

create or replace function rowcast.grant_service(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.events, rowcast.log, rowcast.sequencer, rowcast.watches, '
                   'rowcast.watched, rowcast.schema_history, rowcast.mappings, rowcast.routings, '
                   'rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.sequence(integer), '
                   'rowcast.sequence_step(integer), rowcast.sequence_step_changes(integer, integer), '
                   'rowcast.rearm(), rowcast.prune(bigint, interval, integer), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]) to %s', role);
end
$$;

-- Roles already given the service's grants get the new function too.
do $$
declare
    r record;
begin
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_function_privilege(a.oid, 'rowcast.sequence_step(integer)', 'EXECUTE')
    loop
        execute format('grant execute on function rowcast.sequence_step_changes(integer, integer) to %s', r.role);
    end loop;
end
$$;
