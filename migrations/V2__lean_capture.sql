-- rowcast schema, version 2: a leaner capture trigger.
--
-- The capture trigger runs inside every writer's transaction, on CPU the writers need.
-- Version 1 looked up the table's registration, computed the event's topics and the old
-- values of the changed columns there (about 95 µs a row on a 2-core machine). Now the
-- trigger gets everything it needs from its own arguments (written by rowcast.watch()),
-- stores the row (and, for an UPDATE, the previous row, trimmed to its changed columns
-- only when it is large) and nothing else; the sequencer computes the topics, in one
-- background statement per batch, from the stored row and the table's routing, which is
-- kept as an immutable row of rowcast.routings so that an event is routed as it was
-- captured however the table is watched later. BENCHMARKS.md has the measurements.
--
-- Events captured by version 1 keep the topics they were stored with.

-- What the topics of a table's events are made of. Rows are never changed or deleted:
-- events refer to them (rowcast.events.routing_id).
create table rowcast.routings (
    id            int generated always as identity primary key,
    table_name    text not null,
    topic         text not null,
    key_columns   text[] not null,
    route_columns text[] not null,
    route_topics  text[] not null,
    created_at    timestamptz not null default clock_timestamp(),
    constraint routings_content unique (table_name, topic, key_columns, route_columns, route_topics)
);

comment on table rowcast.routings is
    'rowcast: immutable topic rules (table, key, routing columns), referenced by rowcast.events.routing_id';

create or replace function rowcast.mappings_immutable() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'rowcast.% rows are immutable: events refer to them', tg_table_name
        using errcode = 'object_in_use';
end
$$;

create trigger routings_immutable before update or delete on rowcast.routings
    for each row execute function rowcast.mappings_immutable();

-- Version 2 events store no topics (the sequencer computes them into rowcast.log) and
-- name their routing instead.
alter table rowcast.events alter column topics drop not null;
alter table rowcast.events add column routing_id int;

-- One index on the events instead of two: the sequencer finds new events by transaction
-- id, and readers find an event by (txid, id), which the log now carries. Every index is
-- one more insert into a page all writers share, inside their transactions.
alter table rowcast.log add column txid xid8;
update rowcast.log l set txid = e.txid from rowcast.events e where e.id = l.event_id;
alter table rowcast.log alter column txid set not null;
alter table rowcast.events drop constraint events_pkey;
drop index rowcast.events_txid;
alter table rowcast.events add primary key (txid, id);
comment on column rowcast.events.old is
    'UPDATE only: the previous row minus excluded columns; over 1 kB only its changed columns. The changed columns are the entries that differ from data';
comment on column rowcast.events.topics is
    'topics computed at capture (version 1 events); null when the sequencer computes them from routing_id';

alter table rowcast.watches add column routing_id int references rowcast.routings (id);

-- The topics of an event: the table, the row (its primary key, from the new and the old
-- row) and one per routing column (new and old value), in that order, without repeats.
-- `data` is the stored row; for an UPDATE `old` holds the previous row, or for a large
-- one the previous values of its changed columns: either way the old row is
-- `data || old`. Excluded columns are never part of a topic
-- (rowcast.watch() refuses to exclude a key or routing column).
--
-- Called by rowcast.sequence_step() for every event of a batch. It reads no table and
-- runs with its caller's (fixed) search_path: without a `set` clause a call costs no
-- configuration change. Not executable by public.
create function rowcast.topics_of(r rowcast.routings, op text, data jsonb, old jsonb) returns text[]
language plpgsql
immutable
as $$
declare
    topics text[];
    rw     jsonb;
    t      text;
    v      text;
    i      int;
begin
    if r.id is null then
        return null;
    end if;
    topics := array[r.table_name];
    foreach rw in array array[data, case when op = 'UPDATE' and old is not null then data operator(pg_catalog.||) old end] loop
        continue when rw is null;
        if pg_catalog.cardinality(r.key_columns) > 0 then
            t := r.topic;
            foreach v in array r.key_columns loop
                t := t operator(pg_catalog.||) ':' operator(pg_catalog.||) coalesce(rw operator(pg_catalog.->>) v, '');
            end loop;
            if not t operator(pg_catalog.=) any (topics) then
                topics := topics operator(pg_catalog.||) t;
            end if;
        end if;
        for i in 1 .. coalesce(pg_catalog.cardinality(r.route_columns), 0) loop
            v := rw operator(pg_catalog.->>) r.route_columns[i];
            continue when v is null;
            t := r.route_topics[i] operator(pg_catalog.||) ':' operator(pg_catalog.||) v;
            if not t operator(pg_catalog.=) any (topics) then
                topics := topics operator(pg_catalog.||) t;
            end if;
        end loop;
    end loop;
    return topics;
end
$$;

-- The capture trigger. Runs in the writer's transaction and does only what must happen
-- there: it stores the row as jsonb (so a write never fails because of a payload size
-- and never waits on the notifier), minus the excluded columns, and for an UPDATE the
-- previous row, trimmed to the changed columns when it is large (an UPDATE that changed
-- nothing visible stores nothing). Everything else comes from its arguments, written by rowcast.arm():
--   tg_argv[0] the table's oid          tg_argv[3] mapping id ('' for none)
--   tg_argv[1] the table's name         tg_argv[4] wake mode: 'notify' or 'poll'
--   tg_argv[2] routing id               tg_argv[5:] excluded columns
-- so it reads no registration. For 'notify' tables it then reads the wake-up flag's hint
-- (rowcast.wake_hint) and, only when it is clear, asks rowcast.request_wake() to set the
-- flag and NOTIFY; 'poll' tables never NOTIFY.
create or replace function rowcast.capture() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
declare
    new_row jsonb;
    old_row jsonb;
begin
    -- The row (the old one for a DELETE), minus excluded columns.
    if tg_op = 'DELETE' then
        new_row := to_jsonb(old);
    else
        new_row := to_jsonb(new);
    end if;
    if tg_nargs > 5 then
        new_row := new_row - tg_argv[5:];
    end if;
    if tg_op = 'UPDATE' then
        old_row := to_jsonb(old);
        if tg_nargs > 5 then
            old_row := old_row - tg_argv[5:];
        end if;
        if new_row = old_row then
            return null;  -- nothing visible changed: no event
        end if;
        -- A large old row is trimmed to the columns that changed, so the log does not
        -- hold wide rows twice. A small one is stored whole: finding its changed columns
        -- takes a subquery (a whole executor run, about 15 µs of the writer's CPU), and
        -- readers do it instead (the service keeps the entries of `old` that differ from
        -- `data`, which leaves an already trimmed `old` as it is).
        if pg_column_size(old_row) > 1024 then
            old_row := old_row - array(select s.k from (select jsonb_object_keys(old_row) as k) s
                                       where new_row -> s.k is not distinct from old_row -> s.k);
        end if;
    end if;

    insert into rowcast.events (relid, table_name, op, data, old, mapping_id, routing_id)
    values (tg_argv[0]::oid, tg_argv[1], tg_op, new_row, old_row, nullif(tg_argv[3], '')::int, tg_argv[2]::int);

    -- The event row is inserted before the flag is read: the sequencer's re-check relies
    -- on a writer that saw the flag set being in progress (holding a transaction id)
    -- from then on. The writer reads the flag's hint (rowcast.wake_hint): a function
    -- call, where reading the flag row is a query, a whole executor run per row. Set, it
    -- means a wake-up is under way; clear, request_wake() decides on the flag row itself.
    -- Outside read committed request_wake() always decides.
    if tg_argv[4] = 'notify'
       and (pg_sequence_last_value('rowcast.wake_hint'::regclass) is null
            or current_setting('transaction_isolation') <> 'read committed') then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

-- The statement trigger for TRUNCATE, with the same arguments (no excluded columns).
create or replace function rowcast.capture_truncate() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
begin
    insert into rowcast.events (relid, table_name, op, topics, data, old, mapping_id, routing_id)
    values (tg_argv[0]::oid, tg_argv[1], 'TRUNCATE', array[tg_argv[1]], null, null,
            nullif(tg_argv[3], '')::int, tg_argv[2]::int);
    if tg_argv[4] = 'notify' then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

-- The wake-up flag's hint, for writers: a sequence, whose state a writer reads with a
-- function call instead of a query on rowcast.wake. `is_called` true (last value 1)
-- means a wake-up is under way; false (no last value) means ask the flag. It is not
-- transactional: request_wake() sets it when it sets the flag, rearm() clears it when
-- the flag is clear. A hint left set by a writer that set the flag and then rolled back
-- makes writers skip their NOTIFY until the sequencer's next round (its fallback timer
-- at most), the same bound as for the writers that found that writer's row lock.
-- Unlogged, like the flag: a logged sequence writes WAL on every change, and a round of
-- the sequencer that clears it would then wait for a WAL flush at its commit. A crash
-- resets it to clear, where writers ask the flag row (which a crash removes: they then
-- NOTIFY every time until the sequencer re-seeds it).
create unlogged sequence rowcast.wake_hint minvalue 1 maxvalue 2;
select pg_catalog.setval('rowcast.wake_hint', 1, false);

create or replace function rowcast.request_wake() returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if current_setting('transaction_isolation') <> 'read committed'
       or not exists (select from rowcast.wake) then
        -- Outside read committed, or the flag row is gone (a crash emptied the unlogged
        -- table and no sequencer has re-seeded it yet): wake the sequencer every time.
        perform rowcast.notify_wake();
        return;
    end if;
    perform from rowcast.wake where singleton and not pending for update skip locked;
    if found then
        update rowcast.wake set pending = true where singleton;
        perform setval('rowcast.wake_hint', 1, true);
        perform rowcast.notify_wake();
    end if;
end
$$;

create or replace function rowcast.rearm() returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from rowcast.wake) then
        insert into rowcast.wake (pending) values (false) on conflict do nothing;
    end if;
    perform from rowcast.wake where singleton and pending for update skip locked;
    if not found and exists (select from rowcast.wake where pending) then
        return false;  -- set, and locked by someone else: leave both as they are
    end if;
    if found then
        update rowcast.wake set pending = false where singleton;
    end if;
    -- The flag is clear (as of this transaction's commit): so is the hint.
    if pg_sequence_last_value('rowcast.wake_hint') is not null then
        perform setval('rowcast.wake_hint', 1, false);
    end if;
    return true;
end
$$;

-- (Re)creates the capture triggers of a watched table from its registration, with the
-- arguments rowcast.capture() reads. Called by rowcast.watch(); creating a trigger needs
-- ownership of the table, so it runs as the caller. A concurrent write to the table
-- waits for it (and the trigger it fires is the old or the new one, whole).
create function rowcast.arm(tbl regclass) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    w    rowcast.watches;
    args text;
begin
    select * into w from rowcast.watches where relid = tbl;
    if not found or w.routing_id is null then
        raise exception 'rowcast.arm: % is not watched: use rowcast.watch()', tbl
            using errcode = 'undefined_object';
    end if;
    select string_agg(quote_literal(a), ', ' order by n) into args
    from unnest(array[w.relid::text, w.table_name, w.routing_id::text, coalesce(w.mapping_id::text, ''), w.wake]
                || w.exclude) with ordinality as x(a, n);
    execute format('create or replace trigger rowcast_capture after insert or update or delete on %s '
                   'for each row execute function rowcast.capture(%s)', tbl, args);
    execute format('create or replace trigger rowcast_capture_truncate after truncate on %s '
                   'for each statement execute function rowcast.capture_truncate(%s)', tbl, args);
end
$$;

-- One sequencer batch, as in version 1 (its comment there has the argument), except that
-- the topics of version 2 events are computed here, from the stored row and its routing,
-- and two planner traps are closed: `e.id > pass_id` is a filter, not an index condition
-- (as an index condition with pass_id = 0 the planner ANDed a scan of the whole primary
-- key into every batch, so a batch cost grew with the table), and JIT is off (a
-- misestimate must not make a batch pay for compiling its query).
create or replace function rowcast.sequence_step(batch_limit integer default 10000,
                                      out sequenced bigint, out in_progress boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
set jit = off
as $$
declare
    st     rowcast.sequencer;
    target pg_snapshot;
    top_id bigint;
begin
    if batch_limit is null or batch_limit < 1 then
        raise exception 'rowcast.sequence: batch_limit must be at least 1' using errcode = 'invalid_parameter_value';
    end if;

    select * into st from rowcast.sequencer where singleton;
    if st.pass_snap is null then
        target := pg_current_snapshot();
        if not exists (
            select from rowcast.events e
            where e.txid >= pg_snapshot_xmax(st.snap)
              and e.txid < pg_snapshot_xmax(target)
              and pg_visible_in_snapshot(e.txid, target)
            union all
            select from rowcast.events e
            where e.txid = any (array(select pg_snapshot_xip(st.snap)))
              and pg_visible_in_snapshot(e.txid, target)
        ) then
            sequenced := 0;
            in_progress := exists (select from pg_snapshot_xip(target));
            return;
        end if;
    end if;

    select * into st from rowcast.sequencer where singleton for update skip locked;
    if not found then
        sequenced := -1;
        in_progress := true;
        return;
    end if;
    target := coalesce(st.pass_snap, pg_current_snapshot());
    in_progress := st.pass_snap is not null or exists (select from pg_snapshot_xip(target));

    with batch as (
        select e.id, e.txid, e.table_name, e.op, e.topics, e.routing_id, e.data, e.old from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(target)
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        union all
        select e.id, e.txid, e.table_name, e.op, e.topics, e.routing_id, e.data, e.old from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        order by id
        limit batch_limit
    ), ins as (
        insert into rowcast.log (pos, event_id, txid, topics)
        select st.last_pos + row_number() over (order by b.id), b.id, b.txid,
               coalesce(b.topics, rowcast.topics_of(r, b.op, b.data, b.old), array[b.table_name])
        from batch b left join rowcast.routings r on r.id = b.routing_id
        returning pos, event_id
    )
    select count(*), max(event_id) into sequenced, top_id from ins;

    if sequenced < batch_limit then
        update rowcast.sequencer
        set last_pos = st.last_pos + sequenced, snap = target, pass_snap = null, pass_id = 0,
            updated_at = clock_timestamp()
        where singleton;
    else
        update rowcast.sequencer
        set last_pos = st.last_pos + sequenced, pass_snap = target, pass_id = top_id,
            updated_at = clock_timestamp()
        where singleton;
    end if;

    if sequenced > 0 then
        perform pg_catalog.pg_notify('rowcast_seq', (st.last_pos + sequenced)::text);
    end if;
end
$$;

-- One retention batch, as in version 1 (its comment there has the rules); events are
-- found by (txid, id).
create or replace function rowcast.prune(keep_events bigint, max_age interval, batch_limit integer default 10000)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set lock_timeout = '2s'
as $$
declare
    st     record;
    aged   bigint;
    target bigint;
    n      bigint;
    top    bigint;
begin
    if keep_events is null or keep_events < 0 or max_age is null or max_age < interval '0'
       or batch_limit is null or batch_limit < 1 then
        raise exception 'rowcast.prune: keep_events and max_age must be non-negative and batch_limit at least 1'
            using errcode = 'invalid_parameter_value';
    end if;
    -- One pruner at a time (every replica runs one); the others skip this round.
    if not pg_try_advisory_xact_lock(7526676273746144) then
        return -1;
    end if;
    select s.last_pos, s.pruned_pos into st from rowcast.sequencer s where singleton;

    insert into rowcast.log_marks (pos, at)
    select st.last_pos, clock_timestamp()
    where st.last_pos > coalesce((select max(m.pos) from rowcast.log_marks m), -1);

    select max(m.pos) into aged from rowcast.log_marks m where m.at <= clock_timestamp() - max_age;
    target := least(st.last_pos - keep_events, coalesce(aged, 0));
    if target <= st.pruned_pos then
        return 0;
    end if;

    with doomed as (
        select l.pos from rowcast.log l
        where l.pos > st.pruned_pos and l.pos <= target
        order by l.pos
        limit batch_limit
    ), gone as (
        delete from rowcast.log l using doomed d where l.pos = d.pos
        returning l.pos, l.event_id, l.txid
    ), gone_events as (
        delete from rowcast.events e using gone g where e.txid = g.txid and e.id = g.event_id
    )
    select count(*), max(g.pos) into n, top from gone g;

    update rowcast.sequencer
    set pruned_pos = greatest(pruned_pos, case when n < batch_limit then target else top end)
    where singleton;
    -- Marks below the one in use are of no further use.
    delete from rowcast.log_marks m where m.pos < coalesce(aged, 0);
    return n;
end
$$;

-- Watching a table now also records its routing and refuses to exclude a column a topic
-- is made of; the triggers are created by rowcast.arm().
create or replace function rowcast.watch(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify'
) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    rel        record;
    shown      text;
    keys       text[];
    r_cols     text[];
    r_topics   text[];
    bad        text;
    m_fields   jsonb;
    m_id       int;
    rt_id      int;
    problem    text;
begin
    -- Registrations of tables dropped since (their triggers went with them).
    delete from rowcast.watches w
    where not exists (select 1 from pg_catalog.pg_class c where c.oid = w.relid);

    select c.relkind, c.relname, c.relispartition, n.nspname into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    if rel.relkind not in ('r', 'p') then
        raise exception 'rowcast.watch: % is not a table (only tables and partitioned tables can be watched)', tbl
            using errcode = 'wrong_object_type';
    end if;
    if rel.nspname in ('rowcast', 'pg_catalog', 'information_schema') or rel.nspname like 'pg_toast%' then
        raise exception 'rowcast.watch: % is in a system schema and cannot be watched', tbl
            using errcode = 'insufficient_privilege';
    end if;
    if not pg_catalog.pg_has_role(current_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tbl), 'USAGE') then
        raise exception 'rowcast.watch: only the owner of % may watch it (creating its trigger needs ownership)', tbl
            using errcode = 'insufficient_privilege';
    end if;
    if rel.relispartition then
        raise exception 'rowcast.watch: % is a partition; watch its partitioned table instead', tbl
            using errcode = 'wrong_object_type';
    end if;

    if wake is null or wake not in ('notify', 'poll') then
        raise exception 'rowcast.watch: wake must be ''notify'' or ''poll'', not %', coalesce(quote_literal(wake), 'null')
            using errcode = 'invalid_parameter_value';
    end if;

    shown := case when rel.nspname = 'public' then rel.relname else rel.nspname || '.' || rel.relname end;
    topic := coalesce(topic, shown);
    if topic = '' or topic ~ '[\s,]' then
        raise exception 'rowcast.watch: topic prefix % must be non-empty and contain no spaces or commas', quote_literal(topic)
            using errcode = 'invalid_parameter_value';
    end if;

    routes := coalesce(routes, '{}');
    if jsonb_typeof(routes) <> 'object' then
        raise exception 'rowcast.watch: routes must be a JSON object of column -> topic prefix, like {"client_id": "user"}'
            using errcode = 'invalid_parameter_value';
    end if;
    select e.key into bad from jsonb_each(routes) e
    where jsonb_typeof(e.value) <> 'string' or e.value #>> '{}' = '' or e.value #>> '{}' ~ '[\s,]' limit 1;
    if bad is not null then
        raise exception 'rowcast.watch: routes: the topic prefix for column "%" must be a non-empty string without spaces or commas', bad
            using errcode = 'invalid_parameter_value';
    end if;
    select coalesce(array_agg(e.key order by e.key), '{}'), coalesce(array_agg(e.value #>> '{}' order by e.key), '{}')
    into r_cols, r_topics
    from jsonb_each(routes) e;
    perform rowcast.check_columns(tbl, 'routes', r_cols);

    exclude := coalesce(exclude, '{}');
    perform rowcast.check_columns(tbl, 'exclude', exclude);

    columns := coalesce(columns, '{}');
    if jsonb_typeof(columns) <> 'object' then
        raise exception 'rowcast.watch: columns must be a JSON object of domain field -> column, like {"status": "state"}'
            using errcode = 'invalid_parameter_value';
    end if;
    select e.key into bad from jsonb_each(columns) e where jsonb_typeof(e.value) <> 'string' limit 1;
    if bad is not null then
        raise exception 'rowcast.watch: columns: the column for field "%" must be a string', bad
            using errcode = 'invalid_parameter_value';
    end if;
    if domain is null then
        if columns <> '{}' then
            raise exception 'rowcast.watch: columns maps domain fields to columns, so it needs a domain (one of: %)',
                (select string_agg(distinct f.kind, ', ' order by f.kind) from rowcast.domain_fields f)
                using errcode = 'invalid_parameter_value';
        end if;
    else
        if not exists (select 1 from rowcast.domain_fields f where f.kind = domain) then
            raise exception 'rowcast.watch: unknown domain % (one of: %)', quote_literal(domain),
                (select string_agg(distinct f.kind, ', ' order by f.kind) from rowcast.domain_fields f)
                using errcode = 'invalid_parameter_value';
        end if;
        select e.key into bad from jsonb_each(columns) e
        where not exists (select 1 from rowcast.domain_fields f where f.kind = domain and f.field = e.key)
        limit 1;
        if bad is not null then
            raise exception 'rowcast.watch: domain % has no field "%" (its fields: %)', domain, bad,
                (select string_agg(f.field, ', ' order by f.field) from rowcast.domain_fields f where f.kind = domain)
                using errcode = 'invalid_parameter_value';
        end if;
        m_fields := rowcast.resolve_fields(tbl, domain, columns, exclude);
        problem := rowcast.mapping_error(tbl, domain, m_fields, exclude);
        if problem is not null then
            raise exception 'rowcast.watch: %', problem using errcode = 'invalid_parameter_value';
        end if;
        insert into rowcast.mappings as m (relid, kind, fields) values (tbl, domain, m_fields)
        on conflict (relid, kind, fields) do nothing
        returning m.id into m_id;
        if m_id is null then
            select m.id into m_id from rowcast.mappings m
            where m.relid = tbl and m.kind = domain and m.fields = m_fields;
        end if;
    end if;

    select coalesce(array_agg(a.attname::text order by k.ord), '{}') into keys
    from pg_catalog.pg_index i
    cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = tbl and i.indisprimary;

    -- Topics are computed from the stored row, which has no excluded column; and a topic
    -- would carry the column's value anyway.
    select c into bad from unnest(exclude) c where c = any (keys) or c = any (r_cols) limit 1;
    if bad is not null then
        raise exception 'rowcast.watch: column "%" of % is excluded, but % carries its value; do not exclude it',
            bad, tbl, case when bad = any (keys) then 'the row topic (primary key)' else 'a routing topic' end
            using errcode = 'invalid_parameter_value';
    end if;

    insert into rowcast.routings as r (table_name, topic, key_columns, route_columns, route_topics)
    values (shown, topic, keys, r_cols, r_topics)
    on conflict on constraint routings_content do nothing
    returning r.id into rt_id;
    if rt_id is null then
        select r.id into rt_id from rowcast.routings r
        where r.table_name = shown and r.topic = watch.topic and r.key_columns = keys
          and r.route_columns = r_cols and r.route_topics = r_topics;
    end if;

    insert into rowcast.watches as w (relid, table_name, topic, key_columns, routes, route_columns,
                                      route_topics, exclude, domain, columns, mapping_id, routing_id, wake)
    values (tbl, shown, topic, keys, routes, r_cols, r_topics, exclude, domain, columns, m_id, rt_id, wake)
    on conflict (relid) do update
        set table_name = excluded.table_name, topic = excluded.topic, key_columns = excluded.key_columns,
            routes = excluded.routes, route_columns = excluded.route_columns,
            route_topics = excluded.route_topics, exclude = excluded.exclude, domain = excluded.domain,
            columns = excluded.columns, mapping_id = excluded.mapping_id, routing_id = excluded.routing_id,
            wake = excluded.wake, updated_at = clock_timestamp();

    perform rowcast.arm(tbl);
    return shown;
end
$$;

-- Existing registrations: give each its routing and re-create the triggers of the armed
-- ones with the arguments the new trigger reads. A capture trigger of a table that is no
-- longer registered (the registration was deleted by hand) is dropped: it has no
-- arguments to run with. A version 1 registration that excluded a key or routing column
-- keeps working, without that column's part of the topics.
insert into rowcast.routings (table_name, topic, key_columns, route_columns, route_topics)
select distinct w.table_name, w.topic, w.key_columns, w.route_columns, w.route_topics
from rowcast.watches w
on conflict on constraint routings_content do nothing;

update rowcast.watches w set routing_id = r.id
from rowcast.routings r
where r.table_name = w.table_name and r.topic = w.topic and r.key_columns = w.key_columns
  and r.route_columns = w.route_columns and r.route_topics = w.route_topics;

do $$
declare
    t record;
begin
    for t in
        select tg.tgrelid::regclass as tbl, tg.tgname
        from pg_catalog.pg_trigger tg
        join pg_catalog.pg_proc p on p.oid = tg.tgfoid
        join pg_catalog.pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'rowcast' and p.proname in ('capture', 'capture_truncate')
          and not tg.tgisinternal and tg.tgparentid = 0
          and not exists (select from rowcast.watches w where w.relid = tg.tgrelid)
    loop
        execute format('drop trigger %I on %s', t.tgname, t.tbl);
    end loop;
    for t in
        select w.relid::regclass as tbl from rowcast.watches w
        where exists (select from pg_catalog.pg_trigger tg
                      where tg.tgrelid = w.relid and tg.tgname = 'rowcast_capture')
    loop
        perform rowcast.arm(t.tbl);
    end loop;
end
$$;

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
                   'rowcast.sequence_step(integer), rowcast.rearm(), '
                   'rowcast.prune(bigint, interval, integer), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]) to %s', role);
end
$$;

create or replace function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select, insert, update, delete on rowcast.watches to %s', role);
    execute format('grant select, insert on rowcast.mappings, rowcast.routings to %s', role);
    execute format('grant select on rowcast.domain_fields to %s', role);
    execute format('grant select on rowcast.watched, rowcast.sequencer, rowcast.log, rowcast.events, '
                   'rowcast.schema_history to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.unwatch(regclass), rowcast.check_columns(regclass, text, text[]), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]), '
                   'rowcast.arm(regclass), rowcast.resolve_fields(regclass, text, jsonb, text[]), '
                   'rowcast.capture(), rowcast.capture_truncate() to %s', role);
end
$$;

-- Roles already granted: admins (they may insert mappings) also need the routings and
-- rowcast.arm(); services (they may run the sequencer) may read the routings.
do $$
declare
    r record;
begin
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_table_privilege(a.oid, 'rowcast.mappings', 'INSERT')
    loop
        execute format('grant select, insert on rowcast.routings to %s', r.role);
        execute format('grant execute on function rowcast.arm(regclass) to %s', r.role);
    end loop;
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_function_privilege(a.oid, 'rowcast.sequence_step(integer)', 'EXECUTE')
    loop
        execute format('grant select on rowcast.routings to %s', r.role);
    end loop;
end
$$;

revoke execute on function rowcast.topics_of(rowcast.routings, text, jsonb, jsonb), rowcast.arm(regclass) from public;
