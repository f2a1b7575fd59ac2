-- Schema version 5: capture that trusts nobody.
--
-- The roles and what each may do are in docs/threat-model.md. What changes here:
--
--   * rowcast.capture() runs with the writer's rights (security invoker). Serialising the
--     row (to_jsonb, which calls a user type's cast to json) is the writer's own code,
--     never run with rowcast's rights. The writer appends to rowcast.events directly:
--     public may insert only the columns relid, op, data, old and routing_id, and a
--     row-level security policy admits an event only for a table and an operation the
--     writer may write. The event's table is the trigger's own (tg_relid), never an
--     argument; the sequencer accepts the registration an event names only when it is a
--     registration of that table (or of a partitioned table above it) that the table's
--     capture trigger named (armed) and had not replaced when the event was captured.
--   * The registry refers to columns by number. Excluded columns are trigger arguments
--     by attnum and are named at capture time, so a renamed column stays excluded.
--     Registrations (rowcast.routings) are immutable rows holding both the attnums and
--     the names they had; the current registration of a table is the one its capture
--     trigger names, so only whoever may create a trigger on the table (its owner) can
--     change it. An event trigger re-registers a watched table when ALTER TABLE renames
--     it or its columns, in the same transaction (installed when the installer is a
--     superuser); rowcast.watched shows what a schema change broke.
--   * Tenant admins get functions only: watch, unwatch, the view rowcast.watched of the
--     tables they own and the view rowcast.captured of those tables' events. The
--     registry tables and the log grant them nothing.
--   * Table topics cannot collide with row and routed topics: a table topic never holds
--     ':' (the separator of every other topic), and '.', ',', '*', '%' and white space
--     in a schema or table name are percent-encoded.

-- ── Registrations ────────────────────────────────────────────────────────────────────

alter table rowcast.routings
    add column relid          oid,
    add column table_topic    text,
    add column topic_default  boolean not null default false,
    add column key_attnums    int2[],
    add column route_attnums  int2[],
    add column exclude_columns text[],
    add column exclude_attnums int2[],
    add column mapping_id     int references rowcast.mappings (id),
    add column armed_at       timestamptz,
    add column disarmed_at    timestamptz;
-- No uniqueness on content: an identical registration in another open transaction must
-- never make watch() wait. register() reuses an armed identical one when it finds it.
alter table rowcast.routings drop constraint routings_content;
create index routings_relid on rowcast.routings (relid);
comment on column rowcast.routings.armed_at is
    'when a capture trigger of the table first named this registration (rowcast.confirm); the sequencer uses armed registrations only';
comment on column rowcast.routings.disarmed_at is
    'when the table''s capture trigger stopped naming it (a newer registration, or unwatch): events captured later are not routed by it';

-- Registrations are immutable, except that each may be armed once and disarmed once.
create function rowcast.routings_immutable() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'UPDATE'
       and (old.armed_at is not distinct from new.armed_at or old.armed_at is null)
       and (old.disarmed_at is not distinct from new.disarmed_at or old.disarmed_at is null)
       and (to_jsonb(old) - '{armed_at,disarmed_at}'::text[]) = (to_jsonb(new) - '{armed_at,disarmed_at}'::text[]) then
        return new;
    end if;
    raise exception 'rowcast.routings rows are immutable: events refer to them'
        using errcode = 'object_in_use';
end
$$;
drop trigger routings_immutable on rowcast.routings;

comment on table rowcast.routings is
    'rowcast registrations: immutable; the table, its topics (column numbers and the names they had), its domain mapping. A table''s capture trigger names its current one';

-- Registrations made before version 5 belong to the table they were made for: the one
-- watched with them, or the one whose events name them.
update rowcast.routings r set relid = w.relid from rowcast.watches w where w.routing_id = r.id;
update rowcast.routings r set relid = s.relid
from (select distinct on (e.routing_id) e.routing_id, e.relid from rowcast.events e
      where e.routing_id is not null order by e.routing_id, e.id desc) s
where s.routing_id = r.id and r.relid is null;
-- Registrations of version 4 were all made by watch(): those in use are armed.
update rowcast.routings r set armed_at = r.created_at where r.relid is not null;
update rowcast.routings r set disarmed_at = clock_timestamp()
where r.relid is not null and not exists (select from rowcast.watches w where w.routing_id = r.id);
create trigger routings_immutable before update or delete on rowcast.routings
    for each row execute function rowcast.routings_immutable();

alter table rowcast.mappings add column attnums jsonb;
alter table rowcast.mappings drop constraint mappings_relid_kind_fields_key;
create index mappings_relid on rowcast.mappings (relid);
comment on column rowcast.mappings.attnums is 'field -> column number (version 5 and later)';

-- ── The log ──────────────────────────────────────────────────────────────────────────

-- The registration the sequencer checked and used for the event's topics; its table
-- name and mapping are what readers report.
alter table rowcast.log add column routing_id int;
comment on column rowcast.log.routing_id is
    'the registration the event was sequenced with (checked against the event''s table); null when it named none of its table';

alter table rowcast.events alter column table_name drop not null;
comment on column rowcast.events.table_name is 'version 4 and earlier; later events take it from their registration';
comment on column rowcast.events.relid is 'the table the change was made to (the trigger''s own table: a partition for a partitioned table)';

-- Writers append their own changes, nothing else: only these columns, and only for a
-- table and an operation the writer may write (the owner of rowcast.events, the
-- installer, is not subject to the policy). PostgreSQL lets some writes through without
-- the writer holding the privilege itself (through a view or a rule of the table's
-- owner, a foreign key's cascade, a row moving between partitions); such a write has
-- inserted, updated or deleted rows of the table in the writer's own transaction, which
-- PostgreSQL counts (pg_stat_get_xact_tuples_*), so that is the last test, per
-- operation: a lock alone proves nothing (a statement that is only parsed takes one).
-- Everyone may read nothing; the service's grant gives it select, and `readers` lets
-- that select see every row.
alter table rowcast.events enable row level security;
create policy writers_append_their_own_changes on rowcast.events for insert to public
with check (
    case op
        when 'INSERT' then pg_catalog.has_any_column_privilege(relid, 'INSERT')
        when 'UPDATE' then pg_catalog.has_any_column_privilege(relid, 'UPDATE')
        when 'DELETE' then pg_catalog.has_table_privilege(relid, 'DELETE')
        when 'TRUNCATE' then pg_catalog.has_table_privilege(relid, 'TRUNCATE')
    end
    -- A write through a partitioned table needs no privilege on the partition.
    or exists (select from pg_catalog.pg_partition_ancestors(relid) a
               where a.relid operator(pg_catalog.<>) events.relid
                 and case events.op
                         when 'INSERT' then pg_catalog.has_any_column_privilege(a.relid, 'INSERT')
                         when 'UPDATE' then pg_catalog.has_any_column_privilege(a.relid, 'UPDATE')
                         when 'DELETE' then pg_catalog.has_table_privilege(a.relid, 'DELETE')
                         when 'TRUNCATE' then pg_catalog.has_table_privilege(a.relid, 'TRUNCATE')
                     end)
    or case events.op
           when 'INSERT' then pg_catalog.pg_stat_get_xact_tuples_inserted(events.relid) operator(pg_catalog.>) 0
           when 'UPDATE' then pg_catalog.pg_stat_get_xact_tuples_updated(events.relid) operator(pg_catalog.>) 0
           when 'DELETE' then pg_catalog.pg_stat_get_xact_tuples_deleted(events.relid) operator(pg_catalog.>) 0
       end
);
create policy readers on rowcast.events for select using (true);

grant usage on schema rowcast to public;
grant insert (relid, op, data, old, routing_id) on rowcast.events to public;
grant usage on sequence rowcast.events_id_seq to public;
grant select on sequence rowcast.wake_hint to public;

-- Roles given the version 1-4 admin grant (direct writes to the registry, reads of the
-- log) keep only what grant_admin() now gives.
do $$
declare
    r record;
begin
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and a.oid <> (select c.relowner from pg_catalog.pg_class c where c.oid = 'rowcast.watches'::regclass)
          and has_table_privilege(a.oid, 'rowcast.watches', 'INSERT')
    loop
        execute format('revoke all on rowcast.watches, rowcast.mappings, rowcast.routings, rowcast.events, '
                       'rowcast.log, rowcast.sequencer, rowcast.watched from %s', r.role);
        execute format('create temporary table if not exists rowcast_v5_admins (role regrole)');
        execute format('insert into rowcast_v5_admins values (%L)', r.role);
    end loop;
end
$$;

-- ── Topics ───────────────────────────────────────────────────────────────────────────

-- A name as it appears in a table topic: '%', ':', '.', ',', '*', control characters and
-- white space (ASCII or Unicode) are percent-encoded, byte by byte in UTF-8, so a table
-- topic never holds the separator of row and routed topics, a schema-qualified topic
-- splits at its one '.', and two names never give one topic. A topic prefix is valid
-- when escaping leaves it as it is.
create function rowcast.topic_escape(name text) returns text
language sql
immutable strict
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(string_agg(
               case when s.c in ('%', ':', '.', ',', '*') or ascii(s.c) <= 32 or ascii(s.c) between 127 and 160
                         or ascii(s.c) in (5760, 8232, 8233, 8239, 8287, 12288, 65279)
                         or ascii(s.c) between 8192 and 8202
                    then (select string_agg('%' || lpad(upper(to_hex(get_byte(b.v, i))), 2, '0'), '' order by i)
                          from (select convert_to(s.c, 'UTF8') as v) b, generate_series(0, length(b.v) - 1) i)
                    else s.c end, '' order by s.n), '')
    from regexp_split_to_table(name, '') with ordinality as s(c, n)
$$;

-- The table topic of a table: its name, `schema.table` outside public, escaped.
create function rowcast.table_topic(tbl regclass) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case when n.nspname = 'public' then rowcast.topic_escape(c.relname::text)
                else rowcast.topic_escape(n.nspname::text) || '.' || rowcast.topic_escape(c.relname::text) end
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl
$$;

-- The name events report for a table: `schema.table` outside public, as it is spelled.
create function rowcast.shown_name(tbl regclass) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case when n.nspname = 'public' then c.relname::text else n.nspname || '.' || c.relname end
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl
$$;

-- As in version 4; the table topic is escaped, and a TRUNCATE is on the table topic only.
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
    topics := array[coalesce(r.table_topic, r.table_name)];
    if op operator(pg_catalog.=) 'TRUNCATE' then
        return topics;
    end if;
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

-- ── Capture ──────────────────────────────────────────────────────────────────────────

-- The row trigger. Arguments: the registration (rowcast.routings id), the watched table's
-- oid, the wake mode, then the column numbers of excluded columns. Runs as the writer:
-- it serialises the row, drops the excluded columns by number (named as they are now,
-- so a rename cannot un-exclude one: about 4 µs a column, see BENCHMARKS.md), and
-- appends one event, which the policy on rowcast.events admits only for the writer's
-- own writes. For 'notify' tables it then asks for a wake-up as before.
create or replace function rowcast.capture() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set row_security = on
as $$
declare
    new_row jsonb;
    old_row jsonb;
    gone    text[];
    i       int;
begin
    if tg_op = 'DELETE' then
        new_row := to_jsonb(old);
    else
        new_row := to_jsonb(new);
    end if;
    if tg_nargs > 3 then
        -- Names from the watched table (a partition's column numbers may differ).
        for i in 3 .. tg_nargs - 1 loop
            gone := gone || coalesce((pg_identify_object_as_address('pg_class'::regclass, tg_argv[1]::oid,
                                                                    tg_argv[i]::int)).object_names[3], '');
        end loop;
        new_row := new_row - gone;
    end if;
    if tg_op = 'UPDATE' then
        old_row := to_jsonb(old);
        if gone is not null then
            old_row := old_row - gone;
        end if;
        if new_row = old_row then
            return null;  -- nothing visible changed: no event
        end if;
        -- A large old row is trimmed to the columns that changed (see version 3).
        if pg_column_size(old_row) > 1024 then
            old_row := old_row - array(select s.k from (select jsonb_object_keys(old_row) as k) s
                                       where new_row -> s.k is not distinct from old_row -> s.k);
        end if;
    end if;

    insert into rowcast.events (relid, op, data, old, routing_id)
    values (tg_relid, tg_op, new_row, old_row, tg_argv[0]::int);

    -- The event row is inserted before the flag is read (see version 2).
    if tg_argv[2] = 'notify'
       and (pg_sequence_last_value('rowcast.wake_hint'::regclass) is null
            or current_setting('transaction_isolation') <> 'read committed') then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

-- The statement trigger for TRUNCATE: the same arguments, one event.
create or replace function rowcast.capture_truncate() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set row_security = on
as $$
begin
    insert into rowcast.events (relid, op, routing_id) values (tg_relid, 'TRUNCATE', tg_argv[0]::int);
    if tg_argv[2] = 'notify' then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

grant execute on function rowcast.request_wake() to public;

-- ── Sequencing ───────────────────────────────────────────────────────────────────────

-- As in version 3, except that an event's registration is used only when it belongs to
-- the event's table (or a partitioned table above it) and a capture trigger of that
-- table named it (armed), and is recorded in the log. Any other event (a hand-made
-- trigger, an append by hand) gets no topics: it is positioned, delivered to nobody,
-- and its row is not read back (rowcast.sequence_step_changes, the service's log read).
create or replace function rowcast.sequence_step(batch_limit integer default 10000,
                                                 out sequenced bigint, out in_progress boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
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
        select e.id, e.txid, e.relid, e.table_name, e.op, e.topics, e.routing_id, e.data, e.old, e.ts from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(target)
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        union all
        select e.id, e.txid, e.relid, e.table_name, e.op, e.topics, e.routing_id, e.data, e.old, e.ts from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        order by id
        limit batch_limit
    ), current_regs as (
        -- Once per registration in the batch: a registration still in use whose table
        -- was renamed (and not re-registered: see rowcast.watched) routes nothing, so
        -- that no table publishes on a name it no longer has. One replaced since routes
        -- what was captured before it was replaced, under the names of that time.
        select r.id from rowcast.routings r
        where r.id in (select distinct b.routing_id from batch b)
          and r.armed_at is not null
          and (r.disarmed_at is not null
               or r.table_name = coalesce(rowcast.shown_name(r.relid::regclass), r.table_name))
    ), ins as (
        insert into rowcast.log (pos, event_id, txid, topics, routing_id)
        select st.last_pos + row_number() over (order by b.id), b.id, b.txid,
               case when b.topics is not null then b.topics             -- version 1 events
                    when r.id is not null then rowcast.topics_of(r, b.op, b.data, b.old)
                    else '{}' end,
               r.id
        from batch b
        left join rowcast.routings r
          on r.id = b.routing_id
         and r.id in (select c.id from current_regs c)
         and (r.disarmed_at is null or b.ts < r.disarmed_at)
         and (r.relid = b.relid
              or r.relid in (select a.relid from pg_partition_ancestors(b.relid) a))
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

-- As in version 4; the table name and mapping come from the event's checked registration.
create or replace function rowcast.sequence_step_changes(batch_limit integer, changes_limit integer)
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
        select q.last_pos into upto from rowcast.sequencer q where q.singleton;
        return query
            select l.pos, coalesce(r.table_name, e.table_name, ''), e.op, l.topics,
                   to_char(e.ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   case when r.id is not null or e.topics is not null or e.table_name is not null then e.data::text end,
                   case when r.id is not null or e.topics is not null or e.table_name is not null then e.old::text end,
                   coalesce(r.mapping_id, e.mapping_id), null::bigint, null::boolean
            from rowcast.log l join rowcast.events e on e.txid = l.txid and e.id = l.event_id
            left join rowcast.routings r on r.id = l.routing_id
            where l.pos > upto - step.sequenced and l.pos <= upto
            order by l.pos
            limit changes_limit;
    end if;
    return query
        select null::bigint, null::text, null::text, null::text[], null::text, null::text,
               null::text, null::int, step.sequenced, step.in_progress;
end
$$;

-- ── Registering a table ──────────────────────────────────────────────────────────────

-- The arguments of a table's capture trigger (null when it has none).
create function rowcast.capture_args(tbl oid) returns text[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select (string_to_array(encode(t.tgargs, 'escape'), '\000'))[1:t.tgnargs]
    from pg_catalog.pg_trigger t
    where t.tgrelid = tbl and t.tgparentid = 0 and t.tgfoid = 'rowcast.capture()'::regprocedure
    order by t.tgname = 'rowcast_capture' desc, t.tgname
    limit 1
$$;

-- Records a registration: validates the settings against the table, resolves names to
-- column numbers, and returns the (new or identical earlier) immutable registration and
-- the column numbers to exclude. It changes no table's capture: a registration is used
-- once the table's trigger names it, which only the table's owner (or the installer)
-- can arrange. Security definer because nobody else may write the registry; it only
-- reads the catalog and its arguments, and evaluates no user code.
create function rowcast.register(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    out routing_id int,
    out exclude_attnums int2[]
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_variable
declare
    rel        record;
    shown      text;
    t_topic    text;
    t_default  boolean;
    keys       text[];
    key_nums   int2[];
    r_cols     text[];
    r_nums     int2[];
    r_topics   text[];
    bad        text;
    m_fields   jsonb;
    m_nums     jsonb;
    m_id       int;
    problem    text;
    bad_names  text[];
begin
    select c.relkind, c.relname, c.relispartition, n.nspname into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    if rel.relkind not in ('r', 'p') then
        raise exception 'rowcast.watch: % is not a table (only tables and partitioned tables can be watched)', tbl
            using errcode = 'wrong_object_type';
    end if;
    if rel.nspname in ('rowcast', 'pg_catalog', 'information_schema') or rel.nspname like 'pg_toast%'
       or rel.nspname like 'pg_temp%' then
        raise exception 'rowcast.watch: % is in a system schema (or a temporary one) and cannot be watched', tbl
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

    shown := rowcast.shown_name(tbl);
    t_topic := rowcast.table_topic(tbl);
    t_default := topic is null;
    topic := coalesce(topic, t_topic);
    if topic = '' or (not t_default and topic is distinct from rowcast.topic_escape(topic)) then
        raise exception 'rowcast.watch: topic prefix % must be non-empty and contain no spaces, commas, colons, dots, %% or *', quote_literal(topic)
            using errcode = 'invalid_parameter_value';
    end if;

    routes := coalesce(routes, '{}');
    if jsonb_typeof(routes) <> 'object' then
        raise exception 'rowcast.watch: routes must be a JSON object of column -> topic prefix, like {"client_id": "user"}'
            using errcode = 'invalid_parameter_value';
    end if;
    select e.key into bad from jsonb_each(routes) e
    where jsonb_typeof(e.value) <> 'string' or e.value #>> '{}' = ''
       or e.value #>> '{}' is distinct from rowcast.topic_escape(e.value #>> '{}') limit 1;
    if bad is not null then
        raise exception 'rowcast.watch: routes: the topic prefix for column "%" must be a non-empty string without spaces, commas, colons, dots, %% or *', bad
            using errcode = 'invalid_parameter_value';
    end if;
    select coalesce(array_agg(e.key order by e.key), '{}'), coalesce(array_agg(e.value #>> '{}' order by e.key), '{}')
    into r_cols, r_topics
    from jsonb_each(routes) e;
    perform rowcast.check_columns(tbl, 'routes', r_cols);
    select coalesce(array_agg(a.attnum order by x.ord), '{}') into r_nums
    from unnest(r_cols) with ordinality as x(name, ord)
    join pg_catalog.pg_attribute a on a.attrelid = tbl and a.attname = x.name and a.attnum > 0 and not a.attisdropped;

    exclude := coalesce(exclude, '{}');
    perform rowcast.check_columns(tbl, 'exclude', exclude);
    select coalesce(array_agg(distinct a.attnum), '{}') into exclude_attnums
    from pg_catalog.pg_attribute a
    where a.attrelid = tbl and a.attname = any (exclude) and a.attnum > 0 and not a.attisdropped;

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
        select coalesce(jsonb_object_agg(f.key, a.attnum), '{}') into m_nums
        from jsonb_each_text(m_fields) f
        join pg_catalog.pg_attribute a on a.attrelid = tbl and a.attname = f.value and a.attnum > 0 and not a.attisdropped;
        select m.id into m_id from rowcast.mappings m
        where m.relid = tbl and m.kind = domain and m.fields = m_fields and m.attnums = m_nums
          and exists (select from rowcast.routings r where r.mapping_id = m.id and r.armed_at is not null)
        order by m.id limit 1;
        if m_id is null then
            insert into rowcast.mappings as m (relid, kind, fields, attnums) values (tbl, domain, m_fields, m_nums)
            returning m.id into m_id;
        end if;
    end if;

    select coalesce(array_agg(a.attname::text order by k.ord), '{}'), coalesce(array_agg(a.attnum order by k.ord), '{}')
    into keys, key_nums
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

    select coalesce(array_agg(x order by x), '{}') into exclude_attnums from unnest(exclude_attnums) x;
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}') into bad_names
    from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attnum = any (exclude_attnums);

    select r.id into routing_id from rowcast.routings r
    where r.relid = tbl and r.armed_at is not null
      and r.table_name = shown and r.table_topic = t_topic and r.topic = register.topic
      and r.topic_default = t_default and r.key_columns = keys and r.key_attnums = key_nums
      and r.route_columns = r_cols and r.route_attnums = r_nums and r.route_topics = r_topics
      and r.exclude_columns = bad_names and r.exclude_attnums = exclude_attnums
      and r.mapping_id is not distinct from m_id
    order by r.id limit 1;
    if routing_id is null then
        insert into rowcast.routings as r (relid, table_name, table_topic, topic, topic_default, key_columns, key_attnums,
                                           route_columns, route_attnums, route_topics, exclude_columns,
                                           exclude_attnums, mapping_id)
        values (tbl, shown, t_topic, topic, t_default, keys, key_nums, r_cols, r_nums, r_topics, bad_names,
                exclude_attnums, m_id)
        returning r.id into routing_id;
    end if;
end
$$;

-- Arms the registration a table's capture trigger names (from now on the sequencer
-- accepts it for the table's events) and disarms every other one of the table (events
-- captured from now on are not routed by them). Anyone may call it: it only records what
-- the trigger says, and only the table's owner (or the installer) can make a trigger say it.
create function rowcast.confirm(tbl regclass) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    args text[];
begin
    args := rowcast.capture_args(tbl);
    if exists (select from pg_catalog.pg_trigger t
               where t.tgrelid = tbl and t.tgparentid = 0 and t.tgfoid = 'rowcast.capture()'::regprocedure
                 and (string_to_array(encode(t.tgargs, 'escape'), '\000'))[1] is distinct from args[1]) then
        args := null;  -- two capture triggers naming different registrations: neither is trusted
    end if;
    update rowcast.routings r set disarmed_at = clock_timestamp()
    where r.relid = tbl and r.armed_at is not null and r.disarmed_at is null
      and (args is null or r.id::text is distinct from args[1]);
    if args is null or cardinality(args) < 2 or args[1] !~ '^[0-9]{1,9}$' or args[2] is distinct from tbl::oid::text then
        return;
    end if;
    update rowcast.routings r set armed_at = clock_timestamp()
    where r.id = args[1]::int and r.relid = tbl and r.armed_at is null;
end
$$;

-- Installs (or replaces) a table's capture triggers naming a registration, and arms it.
-- Runs with the caller's rights: creating a trigger needs the table's ownership.
create function rowcast.arm_triggers(tbl regclass, routing_id int, wake text, exclude_attnums int2[])
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    args text;
begin
    select string_agg(quote_literal(a), ', ' order by n) into args
    from unnest(array[routing_id::text, tbl::oid::text, wake]
                || coalesce((select array_agg(x::text order by x) from unnest(exclude_attnums) x), '{}'))
         with ordinality as x(a, n);
    execute format('create or replace trigger rowcast_capture after insert or update or delete on %s '
                   'for each row execute function rowcast.capture(%s)', tbl, args);
    execute format('create or replace trigger rowcast_capture_truncate after truncate on %s '
                   'for each statement execute function rowcast.capture_truncate(%s)', tbl, args);
    perform rowcast.confirm(tbl);
end
$$;

drop function rowcast.arm(regclass);

-- Watch a table (or update its settings): registers them, then points the table's capture
-- triggers at the registration. Runs with the caller's rights, so only the table's owner
-- (or a member of the owning role) can do it.
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
    reg record;
begin
    if not pg_catalog.pg_has_role((select c.relowner from pg_catalog.pg_class c where c.oid = tbl), 'USAGE') then
        raise exception 'rowcast.watch: only the owner of % may watch it (creating its trigger needs ownership)', tbl
            using errcode = 'insufficient_privilege';
    end if;
    select * into reg from rowcast.register(tbl, topic, routes, exclude, domain, columns, wake);
    perform rowcast.arm_triggers(tbl, reg.routing_id, wake, reg.exclude_attnums);
    return rowcast.shown_name(tbl);
end
$$;

-- Stop watching a table: remove its triggers. Events already captured stay in the log
-- and are delivered. Returns false if it was not watched.
create or replace function rowcast.unwatch(tbl regclass) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    was boolean;
begin
    was := rowcast.capture_args(tbl) is not null;
    if was and not pg_catalog.pg_has_role((select c.relowner from pg_catalog.pg_class c where c.oid = tbl), 'USAGE') then
        raise exception 'rowcast.unwatch: only the owner of % may unwatch it', tbl
            using errcode = 'insufficient_privilege';
    end if;
    execute format('drop trigger if exists rowcast_capture on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_truncate on %s', tbl);
    perform rowcast.confirm(tbl);
    return was;
end
$$;

-- What a schema change (or a hand-made trigger) broke in a table's registration, in
-- words; null when nothing. `args` are the table's capture trigger arguments.
create function rowcast.problem_of(tbl oid, args text[]) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    r       rowcast.routings;
    m       rowcast.mappings;
    i       int;
    now_name text;
    keys    int2[];
    f       record;
    fields  jsonb;
    problem text;
begin
    if args is null or cardinality(args) < 3 or args[1] !~ '^[0-9]{1,9}$' then
        return 'the capture trigger was not made by rowcast.watch: run rowcast.watch again';
    end if;
    select * into r from rowcast.routings x where x.id = args[1]::int;
    if not found or r.relid is distinct from tbl or args[2] is distinct from tbl::text then
        return 'the capture trigger names a registration of another table: its events are delivered to nobody; run rowcast.watch again';
    end if;
    if r.armed_at is null then
        return 'the capture trigger names a registration that was never armed: its events are delivered to nobody; run rowcast.watch again';
    end if;
    if (select count(distinct (string_to_array(encode(t.tgargs, 'escape'), '\000'))[1])
        from pg_catalog.pg_trigger t
        where t.tgrelid = tbl and t.tgparentid = 0 and t.tgfoid = 'rowcast.capture()'::regprocedure) > 1 then
        return 'two capture triggers name different registrations: their events are delivered to nobody; run rowcast.watch again';
    end if;
    if exists (select from pg_catalog.pg_trigger t
               where t.tgrelid = tbl and t.tgparentid = 0 and t.tgfoid = 'rowcast.capture()'::regprocedure
                 and t.tgenabled = 'D') then
        return 'the capture trigger is disabled: changes are not captured';
    end if;
    if r.table_name is distinct from rowcast.shown_name(tbl) then
        return format('the table was renamed from %s and its registration did not follow: its events are delivered to nobody until rowcast.watch is run again',
                      r.table_name);
    end if;
    for i in 1 .. coalesce(cardinality(r.exclude_columns), 0) loop
        if not exists (select from pg_catalog.pg_attribute a
                       where a.attrelid = tbl and (a.attnum = r.exclude_attnums[i] or a.attname = r.exclude_columns[i])
                         and not a.attisdropped) then
            return format('excluded column "%s" was dropped: the registration is kept as it is (renames are not followed) '
                          'so that a column added again under that name stays excluded; run rowcast.watch again to let it go',
                          r.exclude_columns[i]);
        end if;
    end loop;
    for i in 1 .. coalesce(cardinality(r.exclude_columns), 0) loop
        if not exists (select from pg_catalog.pg_attribute a
                       where a.attrelid = tbl and a.attnum = r.exclude_attnums[i] and not a.attisdropped)
           and exists (select from pg_catalog.pg_attribute a
                       where a.attrelid = tbl and a.attname = r.exclude_columns[i] and not a.attisdropped) then
            return format('excluded column "%s" was dropped and a new column "%s" added: the new one is NOT excluded; run rowcast.watch again',
                          r.exclude_columns[i], r.exclude_columns[i]);
        end if;
    end loop;
    for i in 1 .. coalesce(cardinality(r.route_attnums), 0) loop
        select a.attname into now_name from pg_catalog.pg_attribute a
        where a.attrelid = tbl and a.attnum = r.route_attnums[i] and not a.attisdropped;
        if now_name is null then
            return format('routing column "%s" was dropped: events are no longer published on %s:* topics',
                          r.route_columns[i], r.route_topics[i]);
        elsif now_name <> r.route_columns[i] then
            return format('routing column "%s" was renamed to "%s": run rowcast.watch again so that its %s:* topics follow it',
                          r.route_columns[i], now_name, r.route_topics[i]);
        end if;
    end loop;
    select coalesce(array_agg(k.attnum order by k.ord), '{}') into keys
    from pg_catalog.pg_index x cross join lateral unnest(x.indkey) with ordinality as k(attnum, ord)
    where x.indrelid = tbl and x.indisprimary;
    if keys is distinct from coalesce(r.key_attnums, keys) then
        return 'the primary key changed: row topics are made of the old key; run rowcast.watch again';
    end if;
    for i in 1 .. coalesce(cardinality(r.key_attnums), 0) loop
        select a.attname into now_name from pg_catalog.pg_attribute a
        where a.attrelid = tbl and a.attnum = r.key_attnums[i] and not a.attisdropped;
        if now_name is distinct from r.key_columns[i] then
            return format('key column "%s" was renamed to "%s": run rowcast.watch again so that row topics follow it',
                          r.key_columns[i], now_name);
        end if;
    end loop;
    if r.mapping_id is not null then
        select * into m from rowcast.mappings x where x.id = r.mapping_id;
        for f in select e.key, e.value from jsonb_each_text(m.fields) e loop
            select a.attname into now_name from pg_catalog.pg_attribute a
            where a.attrelid = tbl and a.attnum = (m.attnums ->> f.key)::int2 and not a.attisdropped;
            if now_name is null then
                return format('column "%s", which the %s domain reads as "%s", was dropped: its rows are delivered as row.*',
                              f.value, m.kind, f.key);
            elsif now_name <> f.value then
                return format('column "%s", which the %s domain reads as "%s", was renamed to "%s": run rowcast.watch again',
                              f.value, m.kind, f.key, now_name);
            end if;
        end loop;
        problem := rowcast.mapping_error(tbl::regclass, m.kind, m.fields, '{}');
        if problem is not null then
            return problem;
        end if;
    end if;
    for i in 1 .. coalesce(cardinality(r.exclude_columns), 0) loop
        select a.attname into now_name from pg_catalog.pg_attribute a
        where a.attrelid = tbl and a.attnum = r.exclude_attnums[i] and not a.attisdropped;
        if now_name <> r.exclude_columns[i] then
            return format('excluded column "%s" is now "%s": it is still excluded; run rowcast.watch again to record its name',
                          r.exclude_columns[i], now_name);
        end if;
    end loop;
    if not exists (select from pg_catalog.pg_trigger t where t.tgrelid = tbl and t.tgname = 'rowcast_capture_truncate') then
        return 'the TRUNCATE trigger is missing: truncations are not captured; run rowcast.watch again';
    end if;
    return null;
end
$$;

-- rowcast.problem_of() for rowcast.watched: only for whoever may see the table's
-- registration, a member of its owner (by the session's login role, since this function
-- runs as its definer) or the service; null for anyone else.
create function rowcast.registration_problem(tbl oid, args text[]) returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select case when pg_catalog.pg_has_role(session_user, c.relowner, 'MEMBER')
                  or pg_catalog.has_table_privilege(session_user, 'rowcast.routings', 'SELECT')
                then rowcast.problem_of(tbl, args) end
    from pg_catalog.pg_class c where c.oid = tbl
$$;

-- Follows a watched table through ALTER TABLE: when it or its columns were renamed (or
-- its key changed), registers it again from its column numbers and points its triggers
-- at the new registration, in the same transaction. What cannot be followed (a column a
-- registration uses was dropped, a mapping no longer fits) is left as it is and shown in
-- rowcast.watched. Never fails the schema change.
create function rowcast.follow(tbl oid) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    args    text[];
    r       rowcast.routings;
    m       rowcast.mappings;
    routes  jsonb;
    columns jsonb;
    exclude text[];
    reg     record;
    now_ex  int2[];
begin
    args := rowcast.capture_args(tbl);
    if args is null or cardinality(args) < 3 or args[1] !~ '^[0-9]{1,9}$' then
        return;
    end if;
    select * into r from rowcast.routings x where x.id = args[1]::int and x.relid = tbl;
    if not found or rowcast.problem_of(tbl, args) is null then
        return;
    end if;
    if exists (select from unnest(r.route_attnums) n
               where not exists (select from pg_catalog.pg_attribute a
                                 where a.attrelid = tbl and a.attnum = n and not a.attisdropped)) then
        return;
    end if;
    -- An excluded column dropped and not added again: keep the registration (and the
    -- name it excludes) until it is, or until watch() is run again.
    if exists (select from unnest(r.exclude_columns, r.exclude_attnums) as x(name, n)
               where not exists (select from pg_catalog.pg_attribute a
                                 where a.attrelid = tbl and (a.attnum = x.n or a.attname = x.name)
                                   and not a.attisdropped)) then
        return;
    end if;
    select coalesce(jsonb_object_agg(a.attname, r.route_topics[x.ord]), '{}') into routes
    from unnest(r.route_attnums) with ordinality as x(n, ord)
    join pg_catalog.pg_attribute a on a.attrelid = tbl and a.attnum = x.n;
    select coalesce(array_agg(a.attname::text), '{}') into exclude
    from unnest(args[4:]) x join pg_catalog.pg_attribute a on a.attrelid = tbl and a.attnum = x::int2 and not a.attisdropped;
    -- A column dropped and added again under an excluded name (a type change the way
    -- some migration tools make it) stays excluded.
    select exclude || coalesce(array_agg(x.name), '{}') into exclude
    from unnest(r.exclude_columns, r.exclude_attnums) as x(name, n)
    where not exists (select from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attnum = x.n and not a.attisdropped)
      and exists (select from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attname = x.name and not a.attisdropped)
      and not x.name = any (exclude);
    if r.mapping_id is not null then
        select * into m from rowcast.mappings x where x.id = r.mapping_id;
        if m.attnums is null then
            return;
        end if;
        select coalesce(jsonb_object_agg(e.key, a.attname), '{}') into columns
        from jsonb_each_text(m.attnums) e
        join pg_catalog.pg_attribute a on a.attrelid = tbl and a.attnum = e.value::int2 and not a.attisdropped;
    end if;
    select * into reg from rowcast.register(tbl::regclass, case when r.topic_default then null else r.topic end,
                                            routes, exclude, m.kind, coalesce(columns, '{}'), args[3]);
    select coalesce(array_agg(x::int2 order by x::int2), '{}') into now_ex from unnest(args[4:]) x;
    if reg.routing_id <> r.id or reg.exclude_attnums <> now_ex then
        perform rowcast.arm_triggers(tbl::regclass, reg.routing_id, args[3], reg.exclude_attnums);
    end if;
exception when others then
    raise warning 'rowcast: could not follow the schema change of %: % (see rowcast.watched)', tbl::regclass, sqlerrm;
end
$$;

create function rowcast.follow_ddl() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    t oid;
begin
    for t in
        select distinct w.tgrelid
        from pg_catalog.pg_event_trigger_ddl_commands() d
        join pg_catalog.pg_trigger w
          on w.tgparentid = 0
         and w.tgfoid = 'rowcast.capture()'::regprocedure
         and (   (d.classid = 'pg_catalog.pg_class'::regclass and w.tgrelid = d.objid)
              or (d.classid = 'pg_catalog.pg_namespace'::regclass
                  and w.tgrelid in (select c.oid from pg_catalog.pg_class c where c.relnamespace = d.objid)))
    loop
        perform rowcast.follow(t);
    end loop;
end
$$;

do $$
begin
    if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
        create event trigger rowcast_follow_ddl on ddl_command_end
            when tag in ('ALTER TABLE', 'ALTER SCHEMA', 'ALTER INDEX', 'ALTER VIEW',
                         'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE')
            execute function rowcast.follow_ddl();
    else
        raise notice 'rowcast: installed without superuser rights, so renames are not followed automatically: '
                     'rowcast.watched shows a renamed table or column until rowcast.watch is run again '
                     '(excluded columns stay excluded either way)';
    end if;
end
$$;

-- ── Re-arm what was watched under version 4, then retire rowcast.watches ─────────────

do $$
declare
    w   record;
    reg record;
begin
    for w in select x.* from rowcast.watches x
             where exists (select from pg_catalog.pg_class c where c.oid = x.relid) loop
        begin
            select * into reg from rowcast.register(w.relid::regclass,
                case when w.topic = w.table_name then null else w.topic end,
                w.routes, w.exclude, w.domain, w.columns, w.wake);
        exception when others then
            -- A table that no longer fits its mapping keeps its topics, without domain.
            raise warning 'rowcast: % no longer fits its domain mapping (%); it is watched without it', w.table_name, sqlerrm;
            select * into reg from rowcast.register(w.relid::regclass,
                case when w.topic = w.table_name then null else w.topic end,
                w.routes, w.exclude, null, '{}', w.wake);
        end;
        perform rowcast.arm_triggers(w.relid::regclass, reg.routing_id, w.wake, reg.exclude_attnums);
    end loop;
    -- Triggers of version 4 that no registration backs would misread their arguments.
    for w in select t.tgrelid::regclass as tbl, t.tgname from pg_catalog.pg_trigger t
             where t.tgname in ('rowcast_capture', 'rowcast_capture_truncate') and t.tgparentid = 0
               and not exists (select from rowcast.routings r
                               where r.relid = t.tgrelid and r.route_attnums is not null
                                 and r.id::text = (string_to_array(encode(t.tgargs, 'escape'), '\000'))[1]) loop
        execute format('drop trigger %I on %s', w.tgname, w.tbl);
    end loop;
end
$$;

drop view rowcast.watched;
alter table rowcast.watches drop constraint watches_routing_id_fkey;
drop table rowcast.watches;

-- What is watched, and how: one row per table whose capture trigger rowcast.watch made,
-- with column names as they are now. Tenant admins see the tables they own; the
-- installer and service roles see all. `problem` says what a schema change broke.
create view rowcast.watched with (security_barrier) as
select t.tgrelid::regclass as "table",
       r.table_name,
       r.table_topic,
       r.topic,
       coalesce((select array_agg(a.attname::text order by x.ord)
                 from unnest(r.key_attnums) with ordinality as x(n, ord)
                 join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = x.n), r.key_columns) as key_columns,
       coalesce((select jsonb_object_agg(a.attname, r.route_topics[x.ord])
                 from unnest(r.route_attnums) with ordinality as x(n, ord)
                 join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = x.n and not a.attisdropped), '{}') as routes,
       coalesce((select array_agg(a.attname::text order by a.attnum)
                 from unnest(args.a[4:]) x
                 join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = x::int2 and not a.attisdropped), '{}') as exclude,
       m.kind as domain,
       coalesce((select jsonb_object_agg(e.key, a.attname)
                 from jsonb_each_text(m.attnums) e
                 join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = e.value::int2 and not a.attisdropped),
                m.fields) as columns,
       m.fields as mapping,
       args.a[3] as wake,
       (t.tgenabled <> 'D' and problem.p is null) as active,
       problem.p as problem,
       r.id as registration,
       r.created_at as registered_at
from (select distinct on (x.tgrelid) x.* from pg_catalog.pg_trigger x
      where x.tgparentid = 0 and x.tgfoid = 'rowcast.capture()'::regprocedure
      order by x.tgrelid, x.tgname = 'rowcast_capture' desc, x.tgname) t
join pg_catalog.pg_class c on c.oid = t.tgrelid
cross join lateral (select rowcast.capture_args(t.tgrelid) as a) args
cross join lateral (select rowcast.registration_problem(t.tgrelid, args.a) as p) problem
left join rowcast.routings r on args.a[1] ~ '^[0-9]{1,9}$' and r.id = args.a[1]::int and r.relid = t.tgrelid
left join rowcast.mappings m on m.id = r.mapping_id
where (pg_catalog.pg_has_role(c.relowner, 'USAGE')
       or pg_catalog.has_table_privilege('rowcast.routings', 'SELECT'));

comment on view rowcast.watched is
    'rowcast: the watched tables (those the caller owns, or all for the service), their settings by current column names, and what a schema change broke';

-- The captured events of the tables the caller owns, for tenant admins.
create view rowcast.captured with (security_barrier) as
select l.pos,
       coalesce(r.table_name, e.table_name) as table_name,
       e.op,
       l.topics,
       e.data,
       e.old,
       e.ts
from rowcast.log l
join rowcast.events e on e.txid = l.txid and e.id = l.event_id
left join rowcast.routings r on r.id = l.routing_id
join pg_catalog.pg_class c on c.oid = coalesce(r.relid, e.relid)
where pg_catalog.pg_has_role(c.relowner, 'USAGE');

comment on view rowcast.captured is 'rowcast: the sequenced events of the tables the caller owns';

-- ── Grants ───────────────────────────────────────────────────────────────────────────

-- Least-privilege grants, run by the installer once per role:
--   select rowcast.grant_service('rowcast_service');  -- the role `rowcast serve` connects as
--   select rowcast.grant_admin('app_owner');          -- a table owner who runs watch/unwatch
create or replace function rowcast.grant_service(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.events, rowcast.log, rowcast.sequencer, rowcast.watched, '
                   'rowcast.schema_history, rowcast.mappings, rowcast.routings, rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.sequence(integer), '
                   'rowcast.sequence_step(integer), rowcast.sequence_step_changes(integer, integer), '
                   'rowcast.rearm(), rowcast.prune(bigint, interval, integer), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]) to %s', role);
end
$$;

-- A tenant admin: watches, unwatches and reads the status and events of the tables it
-- owns, through functions and filtered views only.
create or replace function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.watched, rowcast.captured, rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.unwatch(regclass), '
                   'rowcast.register(regclass, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.arm_triggers(regclass, integer, text, int2[]), '
                   'rowcast.capture(), rowcast.capture_truncate() to %s', role);
end
$$;

revoke execute on all functions in schema rowcast from public;
grant execute on function rowcast.request_wake() to public;
-- What rowcast.watched calls with the caller's rights (the catalog and the registration's
-- problem only), and the names watch() reports.
grant execute on function rowcast.capture_args(oid), rowcast.registration_problem(oid, text[]), rowcast.confirm(regclass),
    rowcast.shown_name(regclass), rowcast.table_topic(regclass), rowcast.topic_escape(text) to public;

-- Roles that held the version 1-4 admin grant get the new one, and service roles the view.
do $$
declare
    r record;
begin
    if to_regclass('pg_temp.rowcast_v5_admins') is not null then
        for r in execute 'select role from pg_temp.rowcast_v5_admins' loop
            perform rowcast.grant_admin(r.role);
        end loop;
        drop table pg_temp.rowcast_v5_admins;
    end if;
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_function_privilege(a.oid, 'rowcast.sequence_step_changes(integer, integer)', 'EXECUTE')
    loop
        perform rowcast.grant_service(r.role);
    end loop;
end
$$;
