-- rowcast: SQL-only install, generated from migrations/ by `rowcast install-sql`.
-- Run as a role that may create schemas: psql -v ON_ERROR_STOP=1 -f sql/install.sql
begin;
create schema if not exists rowcast;
create table if not exists rowcast.schema_history (version int4 primary key, name varchar(255), applied_on varchar(255), checksum varchar(255));

-- migration V1__core
-- rowcast core schema.
--
--   rowcast.events     the change log the capture trigger writes (immutable, one row per change)
--   rowcast.log        positions the sequencer gives to committed events (narrow, insert-only)
--   rowcast.sequencer  the one-row counter and snapshot the sequencer advances, and how far
--                      the log has been pruned
--   rowcast.log_marks  when positions were reached, so retention can tell the age of a position
--   rowcast.sequencer  the one-row counter and snapshot the sequencer advances
--   rowcast.wake       the one-row wake-up flag (unlogged) that gates writers' NOTIFY
--   rowcast.watches    what is watched, and how (the registry behind the view rowcast.watched)
--   rowcast.domain_fields  the fields of each kind of domain row, and the column types they accept
--   rowcast.mappings   resolved field -> column mappings of watched tables (immutable, by id)
--   rowcast.capture()  the row trigger; rowcast.capture_truncate() the statement trigger
--   rowcast.watch() / rowcast.unwatch()   the DBA API
--   rowcast.sequence() the sequencer's batch, called by the service
--   rowcast.prune()    one retention batch, called by the service
--   rowcast.rearm()    clears (and after a crash re-seeds) the wake-up flag before a batch
--
-- Every function fixes its search_path and qualifies every name; execute is revoked from
-- public at the end of the file.

create schema if not exists rowcast;

-- cache 1: with a per-backend cache, ids from concurrent sessions would not follow the
-- order of insertion, and the sequencer relies on id order for changes to the same row.
create sequence rowcast.events_id_seq as bigint cache 1;

create table rowcast.events (
    id         bigint primary key default nextval('rowcast.events_id_seq'),
    -- top-level transaction of the write (savepoints share it); the sequencer compares
    -- it with snapshots to find events that committed since its last batch.
    txid       xid8 not null default pg_current_xact_id(),
    relid      oid not null,
    table_name text not null,
    op         text not null check (op in ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    topics     text[] not null,
    -- the new row (INSERT, UPDATE) or the old row (DELETE), minus excluded columns
    data       jsonb,
    -- UPDATE only: the previous values of the changed columns
    old        jsonb,
    -- the domain mapping the event was captured with (rowcast.mappings), null for generic
    mapping_id int,
    ts         timestamptz not null default clock_timestamp()
);
alter sequence rowcast.events_id_seq owned by rowcast.events.id;
create index events_txid on rowcast.events (txid);

comment on table rowcast.events is
    'rowcast change log: one row per committed or in-flight change of a watched table; positions live in rowcast.log';

-- The sequenced log: a narrow row per event so that giving a position is not a second
-- write of the (possibly wide) event row. Topics are copied here by the sequencer so a
-- sparse resume (user:7) is an index lookup that writers never pay for.
create table rowcast.log (
    pos      bigint primary key,
    event_id bigint not null unique,
    topics   text[] not null
);
create index log_topics on rowcast.log using gin (topics);

comment on table rowcast.log is
    'rowcast sequenced log: gap-free positions of committed events, in delivery order';

-- One row. Everything visible in `snap` has a position. A pass in progress (a batch that
-- hit its limit) remembers its target snapshot and the last event id it sequenced.
-- `pruned_pos`: every position at or below it has been deleted by retention; it moves in
-- the same transaction as the deletes, so a reader that checks it after reading a range
-- knows whether the range was whole.
create table rowcast.sequencer (
    singleton  boolean primary key default true check (singleton),
    last_pos   bigint not null default 0,
    snap       pg_snapshot not null,
    pass_snap  pg_snapshot,
    pass_id    bigint not null default 0,
    pruned_pos bigint not null default 0,
    updated_at timestamptz not null default clock_timestamp()
);
insert into rowcast.sequencer (snap) values (pg_current_snapshot());

-- Retention needs the age of a position, which is the time it was sequenced (a long
-- transaction's events are old when they get one), not the time of the change. Rather
-- than widen every log row, each prune run records a mark when the counter has moved:
-- (pos, at) says every position up to pos had been handed out by `at`.
create table rowcast.log_marks (
    pos bigint not null,
    at  timestamptz not null
);
create index log_marks_at on rowcast.log_marks (at);

comment on table rowcast.log_marks is
    'rowcast retention: times at which positions had been reached (pos <= this pos were sequenced by at)';

-- The fields of each kind of row a domain knows, as `watch(..., domain => kind)` names
-- it. A required field must resolve to a column; an optional one is used when present.
-- type_class: 'id' (integer types, numeric, text, varchar, uuid), 'status' (text,
-- varchar or an enum), 'time' (timestamptz, timestamp or date).
create table rowcast.domain_fields (
    kind       text not null,
    field      text not null,
    required   boolean not null,
    type_class text not null check (type_class in ('id', 'status', 'time')),
    primary key (kind, field)
);

insert into rowcast.domain_fields (kind, field, required, type_class) values
    -- attendance domain
    ('meeting', 'id', true, 'id'),
    ('meeting', 'started_at', true, 'time'),
    ('meeting', 'ended_at', true, 'time'),
    ('meeting', 'court_rep_id', false, 'id'),
    ('meeting', 'organization_id', false, 'id'),
    ('attendance', 'id', true, 'id'),
    ('attendance', 'meeting_id', true, 'id'),
    ('attendance', 'participant_id', true, 'id'),
    ('attendance', 'joined_at', false, 'time'),
    ('attendance', 'left_at', true, 'time'),
    ('attendance', 'status', false, 'status'),
    ('court_card', 'id', true, 'id'),
    ('court_card', 'meeting_id', false, 'id'),
    ('court_card', 'participant_id', false, 'id'),
    ('court_card', 'court_rep_id', false, 'id'),
    ('court_card', 'status', false, 'status'),
    -- booking domain
    ('booking', 'id', true, 'id'),
    ('booking', 'status', true, 'status'),
    ('booking', 'client_id', false, 'id'),
    ('booking', 'provider_id', false, 'id'),
    ('payment', 'id', true, 'id'),
    ('payment', 'status', true, 'status'),
    ('payment', 'booking_id', false, 'id'),
    ('payment', 'client_id', false, 'id'),
    ('payment', 'provider_id', false, 'id'),
    ('payout', 'id', true, 'id'),
    ('payout', 'status', true, 'status'),
    ('payout', 'payment_id', false, 'id'),
    ('payout', 'provider_id', false, 'id'),
    -- course domain
    ('course', 'id', true, 'id'),
    ('course', 'status', true, 'status'),
    ('course', 'instructor_id', true, 'id'),
    ('course', 'scheduled_for', true, 'time'),
    ('course', 'organization_id', false, 'id'),
    ('course', 'requested_by', false, 'id');

comment on table rowcast.domain_fields is
    'rowcast: the fields of each kind of domain row and the column types they accept';

-- A resolved mapping: which column of the table holds each field of the kind. Rows are
-- never changed or deleted, so an event captured with a mapping is read with the same
-- mapping by every replica and every replay, even after the table is watched again.
create table rowcast.mappings (
    id         int generated always as identity primary key,
    relid      oid not null,
    kind       text not null,
    fields     jsonb not null,
    created_at timestamptz not null default clock_timestamp(),
    unique (relid, kind, fields)
);

comment on table rowcast.mappings is
    'rowcast: immutable field -> column mappings, referenced by rowcast.events.mapping_id';

create function rowcast.mappings_immutable() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'rowcast.mappings rows are immutable: events refer to them'
        using errcode = 'object_in_use';
end
$$;

create trigger mappings_immutable before update or delete on rowcast.mappings
    for each row execute function rowcast.mappings_immutable();

-- The wake-up flag. NOTIFY serialises the commits of the transactions that send it
-- (each holds a database-wide lock through its commit), so a NOTIFY per writer caps
-- write throughput. Instead the flag says "the sequencer has been woken and has not
-- read since": the first writer after a read flips it and sends the one NOTIFY of that
-- round; every later writer sees it set and sends nothing. See rowcast.request_wake()
-- for the writer's side, rowcast.rearm() and src/capture/sequencer.rs for the reader's
-- and for the latency bound.
--
-- Unlogged: it is written on every round and need not survive a crash. A crash empties
-- it; until the sequencer re-seeds it (rowcast.rearm(), on every round) writers that
-- find no row NOTIFY every time, which is correct, only slower.
create unlogged table rowcast.wake (
    singleton boolean primary key default true check (singleton),
    pending   boolean not null default false
);
insert into rowcast.wake (pending) values (false);

comment on table rowcast.wake is
    'rowcast wake-up flag: set by the first writer after a sequencer read, cleared by the sequencer';

create table rowcast.watches (
    relid        oid primary key,
    table_name   text not null,
    topic        text not null,
    key_columns  text[] not null,
    routes       jsonb not null default '{}',
    route_columns text[] not null default '{}',
    route_topics text[] not null default '{}',
    exclude      text[] not null default '{}',
    domain       text,
    columns      jsonb not null default '{}',
    mapping_id   int references rowcast.mappings (id),
    wake         text not null default 'notify' check (wake in ('notify', 'poll')),
    created_at   timestamptz not null default clock_timestamp(),
    updated_at   timestamptz not null default clock_timestamp()
);

create view rowcast.watched as
select w.relid::regclass as "table",
       w.table_name,
       w.topic,
       w.key_columns,
       w.routes,
       w.exclude,
       w.domain,
       w.columns,
       m.fields as mapping,
       w.wake,
       exists (select 1 from pg_catalog.pg_trigger t
               where t.tgrelid = w.relid and t.tgname = 'rowcast_capture') as active,
       w.created_at,
       w.updated_at
from rowcast.watches w
left join rowcast.mappings m on m.id = w.mapping_id;

comment on view rowcast.watched is 'rowcast: the watched tables and their settings';

-- Sends the wake-up, unless PostgreSQL's NOTIFY queue is nearly full (a listener
-- somewhere is not reading): a NOTIFY into a full queue would fail the writer's
-- transaction, and a write must never fail because of the notifier. The sequencer's
-- fallback timer picks the event up instead.
create function rowcast.notify_wake() returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if pg_catalog.pg_notification_queue_usage() < 0.9 then
        perform pg_catalog.pg_notify('rowcast_wake', '');
    end if;
end
$$;

-- The writer's side of the wake-up, called by the capture triggers of 'notify' tables
-- after the event row is inserted, when the flag did not read as set.
--
-- Never waits on a lock: the flag row is taken with `for update skip locked`, so a
-- writer that finds it locked (by the writer that flipped it and has not committed yet,
-- or by the sequencer clearing it) goes on without it. Whoever holds it is about to
-- send a wake-up or to read, and the sequencer's re-check covers writers that were
-- still in progress when it read (see src/capture/sequencer.rs).
--
-- Outside read committed the flag is not used: a repeatable-read snapshot may show a
-- flag that has since been cleared, and locking a row changed after the snapshot would
-- fail the writer's transaction with a serialization error. Such writers NOTIFY (one
-- per transaction, as NOTIFY folds duplicates).
create function rowcast.request_wake() returns void
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
        perform rowcast.notify_wake();
    end if;
end
$$;

-- The capture trigger. Runs in the writer's transaction: it only reads the registration
-- and inserts one row, so a write never waits on the notifier and never fails because of
-- a payload size (the row is stored as jsonb, not sent through NOTIFY). For 'notify'
-- tables it then reads the wake-up flag without a lock and, only when it is not set,
-- asks rowcast.request_wake() to set it and NOTIFY; 'poll' tables never NOTIFY.
create function rowcast.capture() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
declare
    w        rowcast.watches;
    full_new jsonb;
    full_old jsonb;
    new_row  jsonb;
    old_row  jsonb;
    changed  jsonb;
    topics   text[];
    r        jsonb;
    t        text;
    v        text;
    i        int;
begin
    select * into w from rowcast.watches where relid = tg_argv[0]::oid;
    if not found then
        return null;  -- unwatched while this statement ran
    end if;

    if tg_op <> 'DELETE' then
        full_new := to_jsonb(new);
        new_row := full_new - w.exclude;
    end if;
    if tg_op <> 'INSERT' then
        full_old := to_jsonb(old);
        old_row := full_old - w.exclude;
    end if;

    if tg_op = 'UPDATE' then
        if new_row = old_row then
            return null;  -- nothing visible changed: no event
        end if;
        -- The old row minus the columns that kept their value. Keys come from a set-
        -- returning function in the select list (no tuplestore per row, unlike
        -- jsonb_each in from), and `-` is one C call: about 9 µs a row cheaper than
        -- aggregating jsonb_each (measured, see BENCHMARKS.md).
        changed := old_row - array(select s.k from (select jsonb_object_keys(old_row) as k) s
                                   where new_row -> s.k is not distinct from old_row -> s.k);
    end if;

    -- Topics: the table, the row (new and old key), one per routing column (new and old value).
    topics := array[w.table_name];
    foreach r in array array[full_new, full_old] loop
        continue when r is null;
        if cardinality(w.key_columns) > 0 then
            t := w.topic;
            foreach v in array w.key_columns loop
                t := t || ':' || coalesce(r ->> v, '');
            end loop;
            if not t = any(topics) then
                topics := topics || t;
            end if;
        end if;
        for i in 1 .. coalesce(cardinality(w.route_columns), 0) loop
            v := r ->> w.route_columns[i];
            continue when v is null;
            t := w.route_topics[i] || ':' || v;
            if not t = any(topics) then
                topics := topics || t;
            end if;
        end loop;
    end loop;

    insert into rowcast.events (relid, table_name, op, topics, data, old, mapping_id)
    values (w.relid, w.table_name, tg_op, topics,
            case when tg_op = 'DELETE' then old_row else new_row end, changed, w.mapping_id);

    -- The event row is inserted before the flag is read: the sequencer's re-check relies
    -- on a writer that saw the flag set being in progress (holding a transaction id)
    -- from then on. The read takes no lock; `is not true` also covers a missing flag
    -- row. Outside read committed the read may be stale: request_wake() decides.
    if w.wake = 'notify'
       and ((select f.pending from rowcast.wake f) is not true
            or current_setting('transaction_isolation') <> 'read committed') then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

create function rowcast.capture_truncate() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
declare
    w rowcast.watches;
begin
    select * into w from rowcast.watches where relid = tg_argv[0]::oid;
    if not found then
        return null;
    end if;
    insert into rowcast.events (relid, table_name, op, topics, data, old)
    values (w.relid, w.table_name, 'TRUNCATE', array[w.table_name], null, null);
    if w.wake = 'notify' then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

-- Raises a clear error unless every name is a live column of the table.
create function rowcast.check_columns(tbl regclass, what text, names text[]) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    missing text;
begin
    select n into missing
    from unnest(names) as n
    where not exists (select 1 from pg_catalog.pg_attribute a
                      where a.attrelid = tbl and a.attname = n
                        and a.attnum > 0 and not a.attisdropped)
    limit 1;
    if missing is not null then
        raise exception 'rowcast.watch: % names column "%", which table % does not have', what, missing, tbl
            using errcode = 'undefined_column';
    end if;
end
$$;

-- The mapping of a kind onto a table: each field of the kind -> the column named for it
-- in `columns`, or else the column of the field's own name when the table has one (an
-- optional field whose same-named column is excluded is left out). Checked by
-- rowcast.mapping_error, not here.
create function rowcast.resolve_fields(tbl regclass, kind text, columns jsonb, exclude text[]) returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(jsonb_object_agg(d.field, coalesce(columns ->> d.field, d.field)), '{}')
    from rowcast.domain_fields d
    where d.kind = resolve_fields.kind
      and (columns ? d.field
           or (exists (select 1 from pg_catalog.pg_attribute a
                       where a.attrelid = tbl and a.attname = d.field
                         and a.attnum > 0 and not a.attisdropped)
               and (d.required or not d.field = any(exclude))))
$$;

-- What is wrong with a mapping of `kind` onto a table, as a message naming the table,
-- the field and the column; null when it is sound. Used by rowcast.watch (an error) and
-- by the service at start (a warning, since a column may have changed since).
create function rowcast.mapping_error(tbl regclass, kind text, fields jsonb, exclude text[]) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    d      record;
    col    text;
    typ    oid;
    typmod int;
    base   oid;
    btype  char;
    ok     boolean;
    dup    text;
begin
    if not exists (select 1 from rowcast.domain_fields f where f.kind = mapping_error.kind) then
        return format('unknown domain %L (one of: %s)', kind,
                      (select string_agg(distinct f.kind, ', ' order by f.kind) from rowcast.domain_fields f));
    end if;
    for d in select f.field, f.required, f.type_class from rowcast.domain_fields f
             where f.kind = mapping_error.kind order by f.required desc, f.field loop
        col := fields ->> d.field;
        if col is null then
            if d.required then
                return format('domain %s needs field "%s": table %s has no column "%s" '
                              '(map it with columns => ''{"%s": "your_column"}'')',
                              kind, d.field, tbl, d.field, d.field);
            end if;
            continue;
        end if;
        select a.atttypid, a.atttypmod into typ, typmod
        from pg_catalog.pg_attribute a
        where a.attrelid = tbl and a.attname = col and a.attnum > 0 and not a.attisdropped;
        if not found then
            return format('domain %s: field "%s" is mapped to column "%s", which table %s does not have',
                          kind, d.field, col, tbl);
        end if;
        if col = any(exclude) then
            return format('domain %s: field "%s" is mapped to column "%s" of table %s, which is excluded '
                          '(an excluded column never reaches the service)', kind, d.field, col, tbl);
        end if;
        select case when t.typtype = 'd' then t.typbasetype else t.oid end into base
        from pg_catalog.pg_type t where t.oid = typ;
        select t.typtype into btype from pg_catalog.pg_type t where t.oid = base;
        ok := case d.type_class
            when 'id' then base in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype,
                                    'text'::regtype, 'varchar'::regtype, 'uuid'::regtype)
            when 'status' then base in ('text'::regtype, 'varchar'::regtype) or btype = 'e'
            when 'time' then base in ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
        end;
        if not ok then
            return format('domain %s: field "%s" needs %s, but column "%s" of table %s is %s',
                          kind, d.field,
                          case d.type_class
                              when 'id' then 'an id column (smallint, integer, bigint, numeric, text, varchar or uuid)'
                              when 'status' then 'a status column (text, varchar or an enum)'
                              else 'a time column (timestamptz, timestamp or date)'
                          end,
                          col, tbl, pg_catalog.format_type(typ, typmod));
        end if;
        -- Typed events rename the column to the field: another column of that name
        -- would appear twice.
        if col <> d.field
           and exists (select 1 from pg_catalog.pg_attribute a
                       where a.attrelid = tbl and a.attname = d.field and a.attnum > 0 and not a.attisdropped)
           and not d.field = any(exclude)
           and not exists (select 1 from jsonb_each_text(fields) e where e.value = d.field) then
            return format('domain %s: field "%s" is mapped to column "%s", but table %s also has a column "%s" '
                          '(exclude it, or map field "%s" to it)', kind, d.field, col, tbl, d.field, d.field);
        end if;
    end loop;
    select e.value into dup from jsonb_each_text(fields) e group by e.value having count(*) > 1 limit 1;
    if dup is not null then
        return format('domain %s: column "%s" of table %s is mapped to more than one field', kind, dup, tbl);
    end if;
    return null;
end
$$;

-- Watch a table: register how its changes become events and install the triggers.
-- Calling it again updates the settings. Runs with the caller's rights: creating a
-- trigger needs the table owner's.
--
-- `domain` names the kind of row the table holds (a kind of rowcast.domain_fields:
-- meeting, attendance, court_card, booking, payment, payout, course; null: generic
-- row.* events) and `columns` maps the kind's fields to columns of other names. The
-- mapping is checked here (rowcast.mapping_error) and stored in rowcast.mappings; the
-- capture trigger records its id on every event. docs/events.md has the rules.
create function rowcast.watch(
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

    insert into rowcast.watches as w (relid, table_name, topic, key_columns, routes, route_columns,
                                      route_topics, exclude, domain, columns, mapping_id, wake)
    values (tbl, shown, topic, keys, routes, r_cols, r_topics, exclude, domain, columns, m_id, wake)
    on conflict (relid) do update
        set table_name = excluded.table_name, topic = excluded.topic, key_columns = excluded.key_columns,
            routes = excluded.routes, route_columns = excluded.route_columns,
            route_topics = excluded.route_topics, exclude = excluded.exclude, domain = excluded.domain,
            columns = excluded.columns, mapping_id = excluded.mapping_id, wake = excluded.wake, updated_at = clock_timestamp();

    execute format('create or replace trigger rowcast_capture after insert or update or delete on %s '
                   'for each row execute function rowcast.capture(%L)', tbl, tbl::oid);
    execute format('create or replace trigger rowcast_capture_truncate after truncate on %s '
                   'for each statement execute function rowcast.capture_truncate(%L)', tbl, tbl::oid);
    return shown;
end
$$;

-- Stop watching a table: remove its triggers and its registration. Events already
-- captured stay in the log and are delivered. Returns false if it was not watched.
create function rowcast.unwatch(tbl regclass) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('drop trigger if exists rowcast_capture on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_truncate on %s', tbl);
    delete from rowcast.watches where relid = tbl;
    return found;
end
$$;

-- Least-privilege grants, run by the DBA once per role:
--   select rowcast.grant_service('rowcast_service');  -- the role `rowcast serve` connects as
--   select rowcast.grant_admin('app_owner');          -- a table owner who runs watch/unwatch
-- The service role reads the log and calls rowcast.sequence(); it gets no access to app
-- tables. The admin role may register tables it owns (creating a trigger still needs
-- ownership of the table).
create function rowcast.grant_service(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.events, rowcast.log, rowcast.sequencer, rowcast.watches, '
                   'rowcast.watched, rowcast.schema_history, rowcast.mappings, rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.sequence(integer), '
                   'rowcast.sequence_step(integer), rowcast.rearm(), '
                   'rowcast.prune(bigint, interval, integer), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]) to %s', role);
end
$$;

create function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select, insert, update, delete on rowcast.watches to %s', role);
    execute format('grant select, insert on rowcast.mappings to %s', role);
    execute format('grant select on rowcast.domain_fields to %s', role);
    execute format('grant select on rowcast.watched, rowcast.sequencer, rowcast.log, rowcast.events, '
                   'rowcast.schema_history to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.unwatch(regclass), rowcast.check_columns(regclass, text, text[]), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]), '
                   'rowcast.resolve_fields(regclass, text, jsonb, text[]), '
                   'rowcast.capture(), rowcast.capture_truncate() to %s', role);
end
$$;

-- One sequencer batch. Gives the next gap-free positions to events whose transaction
-- committed since the last batch, and wakes the tailers. Returns how many events it
-- sequenced (-1 when another sequencer holds the counter row) and whether the batch's
-- snapshot showed transactions in progress (or was an older snapshot: the rest of a long
-- pass), in which case the caller reads again shortly: a writer that found the wake-up
-- flag set and so sent no NOTIFY may commit after this read (see src/capture/sequencer.rs).
--
-- Why not `where id > last_id`: ids (and xids) are handed out when a transaction writes,
-- but transactions commit in another order, so a reader that follows ids skips an event
-- whose transaction commits after a later id was read. Instead the sequencer keeps the
-- snapshot of its last batch: an event is new when its transaction is visible in the
-- current snapshot and was not in the stored one (it was in progress then, or started
-- after). Rolled-back transactions are never visible, so their events never get a
-- position. Within a batch events are ordered by id: a second change to a row waits for
-- the first change's transaction to end, so it has a larger id, and it can never be
-- visible in a snapshot that does not show the first one: every row keeps its order.
--
-- The counter row is locked for the whole batch, so two sequencers can never hand out a
-- position twice (and `log.pos` is a primary key besides); `skip locked` makes the
-- row lock the leadership: a replica that finds it taken returns -1 and does nothing.
-- The lock is transaction-scoped, so it dies with a dead connection's transaction.
--
-- A batch with nothing to do is read-only: it first looks for new events without the
-- lock, so an idle or re-checking sequencer writes nothing and waits for no WAL flush.
create function rowcast.sequence_step(batch_limit integer default 10000,
                                      out sequenced bigint, out in_progress boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
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
        select e.id, e.topics from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(target)
          and pg_visible_in_snapshot(e.txid, target)
          and e.id > st.pass_id
        union all
        select e.id, e.topics from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, target)
          and e.id > st.pass_id
        order by id
        limit batch_limit
    ), ins as (
        insert into rowcast.log (pos, event_id, topics)
        select st.last_pos + row_number() over (order by b.id), b.id, b.topics from batch b
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

-- rowcast.sequence_step() without the in-progress hint: the number of events sequenced,
-- or -1 when another sequencer holds the counter row.
create function rowcast.sequence(batch_limit integer default 10000) returns bigint
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.sequenced from rowcast.sequence_step(batch_limit) s
$$;

-- The sequencer's side of the wake-up flag, called in its own transaction (committed)
-- right before every rowcast.sequence_step(): clears the flag so that the next writer
-- sends a NOTIFY, and re-seeds the row when a crash emptied the unlogged table. Returns
-- whether the flag is now clear. It never waits: a flag row locked by someone else is
-- left as it is and `false` is returned, and the caller then re-checks on a short timer
-- instead of relying on a NOTIFY (writers see the flag set and send none).
create function rowcast.rearm() returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from rowcast.wake) then
        insert into rowcast.wake (pending) values (false) on conflict do nothing;
    end if;
    perform from rowcast.wake where singleton and pending for update skip locked;
    if found then
        update rowcast.wake set pending = false where singleton;
        return true;
    end if;
    return not exists (select from rowcast.wake where pending);
end
$$;

-- One retention batch. Deletes, in position order, at most batch_limit log rows that are
-- both beyond the last keep_events positions and sequenced longer than max_age ago,
-- together with their event rows, and raises `pruned_pos` in the same transaction.
-- Event rows are deleted only through the log rows that point to them: an event without a
-- position (its transaction is still open, or committed but not yet sequenced) is never
-- touched, however old its `ts`. Returns the number of log rows deleted, or -1 when
-- another session is pruning. Call it until it returns less than batch_limit.
--
-- The counter row is updated last, so its lock (which makes a concurrent sequencer batch
-- skip one round) is held only until commit; lock_timeout bounds the wait for a long
-- sequencer batch, and the whole batch is retried on the next run.
create function rowcast.prune(keep_events bigint, max_age interval, batch_limit integer default 10000)
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
        returning l.pos, l.event_id
    ), gone_events as (
        delete from rowcast.events e using gone g where e.id = g.event_id
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

revoke all on schema rowcast from public;
revoke execute on all functions in schema rowcast from public;

insert into rowcast.schema_history (version, name, applied_on, checksum) values (1, 'core', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '3962031161259389524');

-- migration V2__lean_capture
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

insert into rowcast.schema_history (version, name, applied_on, checksum) values (2, 'lean_capture', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '9474608759657169441');

-- migration V3__cheaper_capture_and_sequencing
-- rowcast schema, version 3: a cheaper event insert, and a sequencer batch that reuses its
-- plans.
--
-- The capture trigger inserts one row into rowcast.events per change, each one its own
-- INSERT statement. At the first row of every statement PostgreSQL reads each check
-- constraint of the target table back from its stored text form and prepares it again
-- (nothing caches the prepared form across statements), so the check on `op` cost the
-- writer about 5 µs of CPU per row, a sixth of the whole trigger (measured,
-- BENCHMARKS.md "Write overhead"). It guarded nothing the functions can get wrong: only
-- rowcast.capture() (`tg_op`: INSERT, UPDATE or DELETE) and rowcast.capture_truncate()
-- ('TRUNCATE') insert events, no other role may, and the service skips a log row whose
-- `op` it does not know with an error in its log, never delivering it as something else.
alter table rowcast.events drop constraint events_op_check;

comment on column rowcast.events.op is
    'INSERT, UPDATE, DELETE or TRUNCATE, as the capture triggers write it (no check constraint: preparing one costs every capture)';

-- rowcast.sequence_step() ran with plan_cache_mode = force_custom_plan, so every call
-- planned each of its statements again: about 0.6 ms of the sequencer's CPU per round,
-- two thirds of a round that sequences one event (1.05 ms against 0.35 ms, measured,
-- BENCHMARKS.md "Latency"), and a round runs for nearly every commit at 1k writes/s. With
-- the default mode its simple statements keep one plan per connection, and PostgreSQL
-- still plans the batch statement for its actual snapshot bounds whenever a generic
-- plan would cost more. The results are the same either way.
alter function rowcast.sequence_step(integer) reset plan_cache_mode;

insert into rowcast.schema_history (version, name, applied_on, checksum) values (3, 'cheaper_capture_and_sequencing', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '4143954786882274428');

-- migration V4__cheaper_sequencer_round
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

insert into rowcast.schema_history (version, name, applied_on, checksum) values (4, 'cheaper_sequencer_round', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '4710523534803821910');

-- migration V5__trust
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

insert into rowcast.schema_history (version, name, applied_on, checksum) values (5, 'trust', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '3954854411500834473');

-- migration V6__table_names_as_apps_spell_them
-- Schema version 6: table arguments as applications spell them.
--
-- rowcast.watch() and rowcast.unwatch() take a regclass, which reads a name the way SQL
-- does: unquoted letters fold to lower case, so `watch('public.Booking')` looked for
-- public.booking. Prisma, Rails and Django schemas are full of mixed-case names. Both
-- functions now also take the name as text, resolved by rowcast.resolve_table().

-- A table named as an application spells it: first as SQL reads it ('bookings',
-- 'public.bookings', '"Booking"'), then, when that names nothing, with each part taken
-- as written ('Booking', 'billing.Invoice'), then ignoring case; unqualified names look
-- in the caller's search_path. Two tables that match equally are an error that shows how
-- to quote each. Runs with the caller's rights and search_path (it has no `set` clause
-- so that it sees them), so every name in it is qualified.
create function rowcast.resolve_table(name text) returns regclass
language plpgsql
stable
as $$
declare
    found    regclass;
    parts    text[];
    matches  text[];
    pass     int;
begin
    if name is null or name operator(pg_catalog.=) '' then
        raise exception 'rowcast: a table name is required' using errcode = 'invalid_parameter_value';
    end if;
    begin
        found := pg_catalog.to_regclass(name);
    exception when invalid_name or syntax_error then
        found := null;
    end;
    if found is not null then
        return found;
    end if;
    if pg_catalog.strpos(name, '"') operator(pg_catalog.=) 0 then
        parts := pg_catalog.string_to_array(name, '.');
        if pg_catalog.cardinality(parts) operator(pg_catalog.<=) 2 then
            for pass in 1 .. 2 loop
                select pg_catalog.array_agg(pg_catalog.format('%I.%I', n.nspname, c.relname)::text
                                            order by s.ord, n.nspname, c.relname)
                into matches
                from pg_catalog.pg_class c
                join pg_catalog.pg_namespace n on n.oid operator(pg_catalog.=) c.relnamespace
                left join lateral (select x.ord from pg_catalog.unnest(pg_catalog.current_schemas(true))
                                   with ordinality as x(nsp, ord) where x.nsp operator(pg_catalog.=) n.nspname) s on true
                where c.relkind operator(pg_catalog.=) any (array['r', 'p', 'v', 'm', 'f']::"char"[])
                  and case when pass operator(pg_catalog.=) 1
                           then c.relname::text operator(pg_catalog.=) parts[pg_catalog.cardinality(parts)]
                           else pg_catalog.lower(c.relname::text) operator(pg_catalog.=) pg_catalog.lower(parts[pg_catalog.cardinality(parts)]) end
                  and case when pg_catalog.cardinality(parts) operator(pg_catalog.=) 2
                           then case when pass operator(pg_catalog.=) 1
                                     then n.nspname::text operator(pg_catalog.=) parts[1]
                                     else pg_catalog.lower(n.nspname::text) operator(pg_catalog.=) pg_catalog.lower(parts[1]) end
                           else s.ord is not null end;
                if pg_catalog.cardinality(matches) operator(pg_catalog.=) 1 then
                    return matches[1]::regclass;
                end if;
                if pg_catalog.cardinality(parts) operator(pg_catalog.=) 1 and pg_catalog.cardinality(matches) operator(pg_catalog.>) 1 then
                    -- The first schema of the search path that has one wins, as in SQL,
                    -- when only one table of that schema matches.
                    select pg_catalog.array_agg(m) into matches from pg_catalog.unnest(matches) m
                    where pg_catalog.split_part(m, '.', 1) operator(pg_catalog.=) pg_catalog.split_part(matches[1], '.', 1);
                    if pg_catalog.cardinality(matches) operator(pg_catalog.=) 1 then
                        return matches[1]::regclass;
                    end if;
                end if;
                if pg_catalog.cardinality(matches) operator(pg_catalog.>) 1 then
                    raise exception 'rowcast: % could name %: quote the one you mean', pg_catalog.quote_literal(name),
                        pg_catalog.array_to_string(matches, ' or ')
                        using errcode = 'ambiguous_alias';
                end if;
            end loop;
        end if;
    end if;
    raise exception 'relation "%" does not exist', name using errcode = 'undefined_table';
end
$$;

create function rowcast.watch(
    tbl     text,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify'
) returns text
language sql
as $$
    select rowcast.watch(rowcast.resolve_table(tbl), topic, routes, exclude, domain, columns, wake)
$$;

create function rowcast.unwatch(tbl text) returns boolean
language sql
as $$
    select rowcast.unwatch(rowcast.resolve_table(tbl))
$$;

create or replace function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.watched, rowcast.captured, rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.watch(text, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.unwatch(regclass), rowcast.unwatch(text), '
                   'rowcast.register(regclass, text, jsonb, text[], text, jsonb, text), '
                   'rowcast.arm_triggers(regclass, integer, text, int2[]), '
                   'rowcast.capture(), rowcast.capture_truncate() to %s', role);
end
$$;

revoke execute on function rowcast.watch(text, text, jsonb, text[], text, jsonb, text),
    rowcast.unwatch(text) from public;
grant execute on function rowcast.resolve_table(text) to public;

do $$
declare
    r record;
begin
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_function_privilege(a.oid, 'rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text)', 'EXECUTE')
    loop
        perform rowcast.grant_admin(r.role);
    end loop;
end
$$;

insert into rowcast.schema_history (version, name, applied_on, checksum) values (6, 'table_names_as_apps_spell_them', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '16329742405672709711');

-- migration V7__event_rules_as_data
-- Schema version 7: event rules as data.
--
-- A table's events are rules kept in its registration: `insert`, `update`, `delete`,
-- `<column> set` (null to a value), `<column> cleared` (a value to null), `<column>
-- changed`, `<column> -> v1, v2` (became one of the values) and `<column> -> *` (became
-- another value), each with an event name, tried in order; the first that holds names
-- the event, and a change no rule names is `row.inserted`, `row.updated` or
-- `row.deleted`. The attendance, booking and course domains are presets of such rules
-- (rowcast.preset_rules), written over the kind's field names and resolved through
-- `columns`. `watch(..., rules => '[{"when": "...", "event": "..."}]')` gives a table its
-- own rules, tried before the preset's; a rule of its own for an event of the preset
-- replaces the preset's rule for that event (`"when": null` only removes it).
--
-- watch() resolves every rule against the table (column, type, enum labels) and stores
-- the result in the table's immutable rowcast.mappings row, with each column's number so
-- that renames are followed. The service evaluates the stored rules; it reads nothing
-- else while it names an event. docs/events.md has the language and the presets.

alter table rowcast.mappings alter column kind drop not null;
alter table rowcast.mappings add column rules jsonb;
comment on column rowcast.mappings.rules is
    'the resolved event rules, tried in order: {event, op, test, column, attnum, values, from}';
comment on table rowcast.mappings is
    'rowcast: immutable event rules of a registration (a domain preset through field -> column, and the table''s own rules), referenced by rowcast.routings.mapping_id';

-- The built-in domains, as rules over the fields of rowcast.domain_fields.
create table rowcast.preset_rules (
    kind  text not null,
    ord   int  not null,
    rule  text not null,
    event text not null,
    primary key (kind, ord)
);
comment on table rowcast.preset_rules is
    'rowcast: the event rules of each kind of domain row, over its field names, tried in order';

insert into rowcast.preset_rules (kind, ord, rule, event) values
    ('meeting', 1, 'insert', 'meeting.created'),
    ('meeting', 2, 'delete', 'meeting.deleted'),
    ('meeting', 3, 'ended_at set', 'meeting.ended'),
    ('meeting', 4, 'started_at set', 'meeting.started'),
    ('meeting', 5, 'update', 'meeting.updated'),
    ('attendance', 1, 'insert', 'participant.joined'),
    ('attendance', 2, 'delete', 'attendance.deleted'),
    ('attendance', 3, 'left_at set', 'participant.left'),
    ('attendance', 4, 'update', 'attendance.updated'),
    ('court_card', 1, 'insert', 'court_card.created'),
    ('court_card', 2, 'delete', 'court_card.deleted'),
    ('court_card', 3, 'update', 'court_card.updated'),
    ('booking', 1, 'insert', 'booking.created'),
    ('booking', 2, 'delete', 'booking.deleted'),
    ('booking', 3, 'status -> confirmed, accepted, approved', 'booking.accepted'),
    ('booking', 4, 'status -> rejected, declined', 'booking.rejected'),
    ('booking', 5, 'status -> cancelled, canceled', 'booking.cancelled'),
    ('booking', 6, 'status changed', 'booking.status_changed'),
    ('booking', 7, 'update', 'booking.updated'),
    ('payment', 1, 'insert', 'payment.created'),
    ('payment', 2, 'delete', 'payment.deleted'),
    ('payment', 3, 'status changed', 'payment.status_changed'),
    ('payment', 4, 'update', 'payment.updated'),
    ('payout', 1, 'insert', 'payout.created'),
    ('payout', 2, 'delete', 'payout.deleted'),
    ('payout', 3, 'status changed', 'payout.status_changed'),
    ('payout', 4, 'update', 'payout.updated'),
    ('course', 1, 'insert', 'course.requested'),
    ('course', 2, 'delete', 'course.deleted'),
    ('course', 3, 'status -> completed, done', 'course.completed'),
    ('course', 4, 'status -> cancelled, canceled', 'course.cancelled'),
    ('course', 5, 'instructor_id -> *', 'course.assigned'),
    ('course', 6, 'scheduled_for -> *', 'course.rescheduled'),
    ('course', 7, 'update', 'course.updated');

-- Which fields a table of a kind must have is now decided by the rules that read them.
alter table rowcast.domain_fields alter column required set default false;
comment on column rowcast.domain_fields.required is
    'unused since version 7: a field is needed when a preset rule reads it';

-- ── The rule language ────────────────────────────────────────────────────────────────

-- Reads one rule: `insert`, `update`, `delete`, `<column> set|cleared|changed`,
-- `<column> -> v1, v2` or `<column> -> *`. A column may be double-quoted ("startTime"),
-- a value single-quoted ('in progress'). Returns {op} or {op: UPDATE, test, column,
-- values}; raises a clear error for anything else. Reads nothing but its argument.
create function rowcast.parse_rule(rule text) returns jsonb
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
    s      text := btrim(coalesce(rule, ''), e' \t\r\n');
    m      text[];
    col    text;
    rest   text;
    arrow  int;
    test   text;
    v      text;
    vals   text[] := '{}';
    i      int;
    n      int;
    cur    text;
    usage  constant text := ' (a rule is insert, update, delete, "<column> set", "<column> cleared", '
                            '"<column> changed", "<column> -> value, ..." or "<column> -> *")';
begin
    if lower(s) in ('insert', 'update', 'delete') then
        return jsonb_build_object('op', upper(s));
    end if;
    if left(s, 1) = '"' then
        m := regexp_match(s, '^"((?:[^"]|"")+)"(.*)$');
        if m is null then
            raise exception 'rowcast.watch: rule %: unterminated quoted column name%', quote_literal(s), usage
                using errcode = 'invalid_parameter_value';
        end if;
        col := replace(m[1], '""', '"');
        rest := btrim(m[2]);
    else
        arrow := strpos(s, '->');
        if arrow > 0 then
            col := btrim(left(s, arrow - 1));
            rest := substr(s, arrow);
        else
            m := regexp_match(s, '^(\S+)\s+(\S+)$');
            col := m[1];
            rest := m[2];
        end if;
        if col is null or col = '' or col ~ '[\s"]' then
            raise exception 'rowcast.watch: rule % cannot be read%', quote_literal(s), usage
                using errcode = 'invalid_parameter_value';
        end if;
    end if;
    if lower(rest) in ('set', 'cleared', 'changed') then
        return jsonb_build_object('op', 'UPDATE', 'test', lower(rest), 'column', col);
    end if;
    if left(rest, 2) <> '->' then
        raise exception 'rowcast.watch: rule % cannot be read%', quote_literal(s), usage
            using errcode = 'invalid_parameter_value';
    end if;
    v := btrim(substr(rest, 3));
    if v = '*' then
        return jsonb_build_object('op', 'UPDATE', 'test', 'becomes_any', 'column', col);
    end if;
    -- A comma-separated list of values, each bare or single-quoted ('' for a quote).
    i := 1;
    n := length(v);
    loop
        while i <= n and substr(v, i, 1) ~ '\s' loop i := i + 1; end loop;
        if i > n then
            raise exception 'rowcast.watch: rule % has an empty value%', quote_literal(s), usage
                using errcode = 'invalid_parameter_value';
        end if;
        cur := '';
        if substr(v, i, 1) = '''' then
            i := i + 1;
            loop
                if i > n then
                    raise exception 'rowcast.watch: rule % has an unterminated quoted value', quote_literal(s)
                        using errcode = 'invalid_parameter_value';
                end if;
                if substr(v, i, 1) = '''' then
                    if substr(v, i + 1, 1) = '''' then
                        cur := cur || '''';
                        i := i + 2;
                    else
                        i := i + 1;
                        exit;
                    end if;
                else
                    cur := cur || substr(v, i, 1);
                    i := i + 1;
                end if;
            end loop;
        else
            while i <= n and substr(v, i, 1) <> ',' loop
                cur := cur || substr(v, i, 1);
                i := i + 1;
            end loop;
            cur := btrim(cur);
            if cur = '' or cur ~ '''' then
                raise exception 'rowcast.watch: rule % has a value that cannot be read (quote it with single quotes)', quote_literal(s)
                    using errcode = 'invalid_parameter_value';
            end if;
        end if;
        vals := vals || cur;
        while i <= n and substr(v, i, 1) ~ '\s' loop i := i + 1; end loop;
        exit when i > n;
        if substr(v, i, 1) <> ',' then
            raise exception 'rowcast.watch: rule %: expected a comma after value %', quote_literal(s), quote_literal(cur)
                using errcode = 'invalid_parameter_value';
        end if;
        i := i + 1;
    end loop;
    return jsonb_build_object('op', 'UPDATE', 'test', 'becomes', 'column', col, 'values', to_jsonb(vals));
end
$$;

-- A stored rule written back in the rule language, naming its column `col` (the column's
-- name now).
create function rowcast.rule_text(rule jsonb, col text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when rule ->> 'op' is null then null
        when rule ->> 'test' is null then lower(rule ->> 'op')
        else case when col ~ '^[^\s"]+$' and strpos(col, '->') = 0 then col
                  else '"' || replace(col, '"', '""') || '"' end
             || case rule ->> 'test'
                    when 'becomes' then ' -> ' || (select string_agg(case when v ~ '^[^\s,'']([^,'']*[^\s,''])?$' and v <> '*' then v
                                                                          else quote_literal(v) end, ', ' order by o)
                                                   from jsonb_array_elements_text(rule -> 'values') with ordinality x(v, o))
                    when 'becomes_any' then ' -> *'
                    else ' ' || (rule ->> 'test')
                end
    end
$$;

-- Resolves one rule against a table: the column it reads (through `fields` for a preset
-- rule, whose column names are fields), its number, and its values checked against the
-- column's type. Returns a JSON array of the resolved rule, or an empty array for a
-- preset rule that cannot fire on this table (none of its values is a label of the
-- column's enum). `source` is the preset's kind, or 'rules' for the table's own rules.
create function rowcast.resolve_rule(tbl regclass, rule text, event text, fields jsonb, exclude text[], source text)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    parsed  jsonb;
    fname   text;
    col     text;
    att     record;
    base    oid;
    btype   char;
    bname   text;
    class   text;
    labels  text[];
    vals    text[] := '{}';
    v       text;
    hint    text;
begin
    parsed := rowcast.parse_rule(rule) || jsonb_build_object('event', event, 'from', source);
    if not parsed ? 'column' then
        return jsonb_build_array(parsed);
    end if;
    fname := parsed ->> 'column';
    if fields is not null then
        col := fields ->> fname;
        if col is null then
            raise exception 'rowcast.watch: domain % needs field "%": table % has no column "%" (map it with columns => ''{"%": "your_column"}'', or give your own rule for %)',
                source, fname, tbl, fname, fname, event
                using errcode = 'invalid_parameter_value';
        end if;
    else
        col := fname;
    end if;
    select a.attnum, a.atttypid, a.atttypmod into att
    from pg_catalog.pg_attribute a
    where a.attrelid = tbl and a.attname = col and a.attnum > 0 and not a.attisdropped;
    if not found then
        select ' (did you mean "' || a.attname || '"?)' into hint
        from pg_catalog.pg_attribute a
        where a.attrelid = tbl and lower(a.attname) = lower(col) and a.attnum > 0 and not a.attisdropped
        limit 1;
        raise exception 'rowcast.watch: the rule for % reads column "%", which table % does not have%',
            event, col, tbl, coalesce(hint, '')
            using errcode = 'undefined_column';
    end if;
    if col = any (coalesce(exclude, '{}')) then
        raise exception 'rowcast.watch: the rule for % reads column "%" of table %, which is excluded (an excluded column never reaches the service)',
            event, col, tbl
            using errcode = 'invalid_parameter_value';
    end if;
    parsed := parsed || jsonb_build_object('column', col, 'attnum', att.attnum);
    if parsed ->> 'test' <> 'becomes' then
        return jsonb_build_array(parsed);
    end if;
    select case when t.typtype = 'd' then t.typbasetype else t.oid end into base
    from pg_catalog.pg_type t where t.oid = att.atttypid;
    select t.typtype, t.typname into btype, bname from pg_catalog.pg_type t where t.oid = base;
    class := case
        when btype = 'e' then 'enum'
        when base in ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'name'::regtype) or bname = 'citext' then 'text'
        when base = 'bool'::regtype then 'boolean'
        when base in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype,
                      'float4'::regtype, 'float8'::regtype) then 'number'
    end;
    if class is null then
        raise exception 'rowcast.watch: the rule for % compares column "%" of table % with values, but it is %: "->" works on text, enum, boolean and numeric columns (use set, cleared or changed)',
            event, col, tbl, pg_catalog.format_type(att.atttypid, att.atttypmod)
            using errcode = 'invalid_parameter_value';
    end if;
    if class = 'enum' then
        select array_agg(e.enumlabel::text order by e.enumsortorder) into labels
        from pg_catalog.pg_enum e where e.enumtypid = base;
    end if;
    for v in select jsonb_array_elements_text(parsed -> 'values') loop
        if class = 'enum' and not exists (select from unnest(labels) l where lower(l) = lower(v)) then
            if source <> 'rules' then
                continue;  -- a preset's synonym the app's enum does not have
            end if;
            raise exception 'rowcast.watch: the rule for % compares column "%" of table % with %, which is not a value of its type % (its values: %)',
                event, col, tbl, quote_literal(v), pg_catalog.format_type(att.atttypid, att.atttypmod),
                array_to_string(labels, ', ')
                using errcode = 'invalid_parameter_value';
        elsif class = 'boolean' then
            if lower(v) not in ('true', 'false') then
                raise exception 'rowcast.watch: the rule for % compares boolean column "%" of table % with %: use true or false',
                    event, col, tbl, quote_literal(v)
                    using errcode = 'invalid_parameter_value';
            end if;
            v := lower(v);
        elsif class = 'number' and v !~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$' then
            raise exception 'rowcast.watch: the rule for % compares numeric column "%" of table % with %, which is not a number',
                event, col, tbl, quote_literal(v)
                using errcode = 'invalid_parameter_value';
        end if;
        vals := vals || v;
    end loop;
    if cardinality(vals) = 0 then
        return '[]';
    end if;
    return jsonb_build_array(parsed || jsonb_build_object('values', to_jsonb(vals)));
end
$$;

-- A table's rules, resolved: its own rules (`rules`, a JSON array of {"when", "event"}) in
-- their order, then the rules of its domain's preset (`kind`, through `fields`) for the
-- events its own rules do not name. Raises a clear error for anything that does not fit.
create function rowcast.resolve_rules(tbl regclass, kind text, fields jsonb, rules jsonb, exclude text[])
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    resolved jsonb := '[]';
    r        record;
    ev       text;
    named    text[] := '{}';
begin
    rules := coalesce(rules, '[]');
    if jsonb_typeof(rules) <> 'array' then
        raise exception 'rowcast.watch: rules must be a JSON array of {"when": "<rule>", "event": "<name>"}, tried in order'
            using errcode = 'invalid_parameter_value';
    end if;
    for r in select e.value as v, e.ord from jsonb_array_elements(rules) with ordinality as e(value, ord) loop
        if jsonb_typeof(r.v) <> 'object' or jsonb_typeof(r.v -> 'event') is distinct from 'string'
           or jsonb_typeof(coalesce(r.v -> 'when', 'null')) not in ('string', 'null')
           or exists (select from jsonb_object_keys(r.v) k where k not in ('when', 'event')) then
            raise exception 'rowcast.watch: rule % of rules must be an object {"when": "<rule>", "event": "<name>"}, not %', r.ord, r.v
                using errcode = 'invalid_parameter_value';
        end if;
        ev := r.v ->> 'event';
        if ev !~ '^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$' or length(ev) > 100 then
            raise exception 'rowcast.watch: event name % must be letters, digits and underscores in dot-separated parts, like booking.accepted',
                quote_literal(ev)
                using errcode = 'invalid_parameter_value';
        end if;
        named := named || ev;
        if r.v ->> 'when' is null then
            if kind is null or not exists (select from rowcast.preset_rules p where p.kind = resolve_rules.kind and p.event = ev) then
                raise exception 'rowcast.watch: a rule without "when" removes an event of the domain''s preset, but % is not one%',
                    quote_literal(ev), coalesce(' (the ' || kind || ' preset names: '
                        || (select string_agg(distinct p.event, ', ') from rowcast.preset_rules p where p.kind = resolve_rules.kind) || ')', '')
                    using errcode = 'invalid_parameter_value';
            end if;
            resolved := resolved || jsonb_build_array(jsonb_build_object('event', ev, 'op', null, 'from', 'rules'));
            continue;
        end if;
        resolved := resolved || rowcast.resolve_rule(tbl, r.v ->> 'when', ev, null, exclude, 'rules');
    end loop;
    if kind is not null then
        for r in select p.rule, p.event from rowcast.preset_rules p
                 where p.kind = resolve_rules.kind and not p.event = any (named) order by p.ord loop
            resolved := resolved || rowcast.resolve_rule(tbl, r.rule, r.event, fields, exclude, kind);
        end loop;
    end if;
    return resolved;
end
$$;

-- The table's own rules of a stored mapping, in the rule language with the columns' names
-- now (by number): what watch() is given again when a rename is followed.
create function rowcast.own_rules(tbl oid, rules jsonb) returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(jsonb_agg(jsonb_build_object('when', rowcast.rule_text(x.r, a.attname::text), 'event', x.r ->> 'event')
                              order by x.ord), '[]')
    from jsonb_array_elements(coalesce(rules, '[]')) with ordinality as x(r, ord)
    left join pg_catalog.pg_attribute a
           on a.attrelid = tbl and a.attnum = (x.r ->> 'attnum')::int2 and not a.attisdropped
    where x.r ->> 'from' = 'rules'
$$;

-- Mappings made before version 7: the rules of their kind's preset, through their fields.
alter table rowcast.mappings disable trigger mappings_immutable;
update rowcast.mappings m set rules = (
    select coalesce(jsonb_agg(case when x.r ? 'column'
                                   then x.r || jsonb_build_object('column', m.fields ->> (x.r ->> 'column'),
                                                                  'attnum', (m.attnums ->> (x.r ->> 'column'))::int)
                                   else x.r end
                              order by x.ord), '[]')
    from (select p.ord, rowcast.parse_rule(p.rule) || jsonb_build_object('event', p.event, 'from', p.kind) as r
          from rowcast.preset_rules p where p.kind = m.kind) x
    where not x.r ? 'column' or m.fields ? (x.r ->> 'column'))
where m.rules is null;
alter table rowcast.mappings enable trigger mappings_immutable;

-- What is wrong with a mapping of `kind`'s fields onto a table (a mapped column missing,
-- excluded, of the wrong type, or mapped twice), as a message naming the table, the field
-- and the column; null when it is sound. Which fields a table needs is decided by the
-- preset's rules (rowcast.resolve_rules); frames never rename columns, so a column named
-- like a field beside the mapped one is no longer refused.
create or replace function rowcast.mapping_error(tbl regclass, kind text, fields jsonb, exclude text[]) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    d      record;
    col    text;
    typ    oid;
    typmod int;
    base   oid;
    btype  char;
    ok     boolean;
    dup    text;
begin
    if kind is null then
        return null;  -- the table's own rules only: no fields to map
    end if;
    if not exists (select 1 from rowcast.domain_fields f where f.kind = mapping_error.kind) then
        return format('unknown domain %L (one of: %s)', kind,
                      (select string_agg(distinct f.kind, ', ' order by f.kind) from rowcast.domain_fields f));
    end if;
    for d in select f.field, f.type_class from rowcast.domain_fields f
             where f.kind = mapping_error.kind order by f.field loop
        col := fields ->> d.field;
        if col is null then
            continue;
        end if;
        select a.atttypid, a.atttypmod into typ, typmod
        from pg_catalog.pg_attribute a
        where a.attrelid = tbl and a.attname = col and a.attnum > 0 and not a.attisdropped;
        if not found then
            return format('domain %s: field "%s" is mapped to column "%s", which table %s does not have',
                          kind, d.field, col, tbl);
        end if;
        if col = any(exclude) then
            return format('domain %s: field "%s" is mapped to column "%s" of table %s, which is excluded '
                          '(an excluded column never reaches the service)', kind, d.field, col, tbl);
        end if;
        select case when t.typtype = 'd' then t.typbasetype else t.oid end into base
        from pg_catalog.pg_type t where t.oid = typ;
        select t.typtype into btype from pg_catalog.pg_type t where t.oid = base;
        ok := case d.type_class
            when 'id' then base in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype,
                                    'text'::regtype, 'varchar'::regtype, 'uuid'::regtype)
            when 'status' then base in ('text'::regtype, 'varchar'::regtype) or btype = 'e'
            when 'time' then base in ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype,
                                      'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)
        end;
        if not ok then
            return format('domain %s: field "%s" needs %s, but column "%s" of table %s is %s',
                          kind, d.field,
                          case d.type_class
                              when 'id' then 'an id column (smallint, integer, bigint, numeric, text, varchar or uuid)'
                              when 'status' then 'a status column (text, varchar or an enum)'
                              else 'a time column (timestamptz, timestamp, date, or an integer or numeric of epoch seconds)'
                          end,
                          col, tbl, pg_catalog.format_type(typ, typmod));
        end if;
    end loop;
    select e.value into dup from jsonb_each_text(fields) e group by e.value having count(*) > 1 limit 1;
    if dup is not null then
        return format('domain %s: column "%s" of table %s is mapped to more than one field', kind, dup, tbl);
    end if;
    return null;
end
$$;

-- Records a registration (as in version 5, with the table's event rules): validates the
-- settings against the table, resolves names to column numbers and rules to the columns
-- they read, and returns the (new or identical earlier) immutable registration and the
-- column numbers to exclude. It changes no table's capture: a registration is used once
-- the table's trigger names it, which only the table's owner (or the installer) can
-- arrange. Security definer because nobody else may write the registry; it only reads
-- the catalog and its arguments, and evaluates no user code.
drop function rowcast.register(regclass, text, jsonb, text[], text, jsonb, text);
create function rowcast.register(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null,
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
    m_rules    jsonb;
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
    end if;
    if domain is not null or coalesce(rules, '[]') <> '[]' then
        m_rules := rowcast.resolve_rules(tbl, domain, m_fields, rules, exclude);
        select m.id into m_id from rowcast.mappings m
        where m.relid = tbl and m.kind is not distinct from domain
          and m.fields = coalesce(m_fields, '{}') and m.attnums = coalesce(m_nums, '{}') and m.rules = m_rules
          and exists (select from rowcast.routings r where r.mapping_id = m.id and r.armed_at is not null)
        order by m.id limit 1;
        if m_id is null then
            insert into rowcast.mappings as m (relid, kind, fields, attnums, rules)
            values (tbl, domain, coalesce(m_fields, '{}'), coalesce(m_nums, '{}'), m_rules)
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

-- Follows a watched table through ALTER TABLE (as in version 5, with the table's own
-- rules, whose columns are followed by number): when it or its columns were renamed (or
-- its key changed), registers it again from its column numbers and points its triggers
-- at the new registration, in the same transaction. What cannot be followed (a column a
-- registration uses was dropped, a mapping no longer fits) is left as it is and shown in
-- rowcast.watched. Never fails the schema change.
create or replace function rowcast.follow(tbl oid) returns void
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
    -- A column the table's own rules read was dropped: shown in rowcast.watched until
    -- watch() is run again with rules that fit.
    if r.mapping_id is not null
       and exists (select from rowcast.mappings x cross join lateral jsonb_array_elements(x.rules) e(rule)
                   where x.id = r.mapping_id and e.rule ->> 'from' = 'rules' and e.rule ? 'attnum'
                     and not exists (select from pg_catalog.pg_attribute a
                                     where a.attrelid = tbl and a.attnum = (e.rule ->> 'attnum')::int2 and not a.attisdropped)) then
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
                                            routes, exclude, m.kind, coalesce(columns, '{}'), args[3],
                                            rowcast.own_rules(tbl, m.rules));
    select coalesce(array_agg(x::int2 order by x::int2), '{}') into now_ex from unnest(args[4:]) x;
    if reg.routing_id <> r.id or reg.exclude_attnums <> now_ex then
        perform rowcast.arm_triggers(tbl::regclass, reg.routing_id, args[3], reg.exclude_attnums);
    end if;
exception when others then
    raise warning 'rowcast: could not follow the schema change of %: % (see rowcast.watched)', tbl::regclass, sqlerrm;
end
$$;

-- ── What a schema change broke ───────────────────────────────────────────────────────

-- Version 5's checks keep their name for what they check; rowcast.problem_of adds the
-- columns of the table's own rules.
alter function rowcast.problem_of(oid, text[]) rename to routing_problem;

-- What a schema change broke in the table's own rules, in words; null when nothing: a
-- column a rule reads was dropped or renamed (and not followed), or its type changed so
-- that the rule's values no longer fit it.
create function rowcast.rules_problem(tbl oid, args text[]) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    x   record;
begin
    for x in
        select e.rule, a.attname::text as now_name
        from rowcast.routings r
        join rowcast.mappings m on m.id = r.mapping_id
        cross join lateral jsonb_array_elements(m.rules) with ordinality as e(rule, ord)
        left join pg_catalog.pg_attribute a
               on a.attrelid = tbl and a.attnum = (e.rule ->> 'attnum')::int2 and not a.attisdropped
        where r.id = args[1]::int and r.relid = tbl and e.rule ->> 'from' = 'rules' and e.rule ? 'attnum'
        order by e.ord
    loop
        if x.now_name is null then
            return format('column "%s", which the rule for %s reads, was dropped: the table''s rows are delivered as row.*; run rowcast.watch again with rules that fit',
                          x.rule ->> 'column', x.rule ->> 'event');
        elsif x.now_name <> x.rule ->> 'column' then
            return format('column "%s", which the rule for %s reads, was renamed to "%s": run rowcast.watch again',
                          x.rule ->> 'column', x.rule ->> 'event', x.now_name);
        end if;
        begin
            perform rowcast.resolve_rule(tbl::regclass, rowcast.rule_text(x.rule, x.now_name), x.rule ->> 'event', null, '{}', 'rules');
        exception when others then
            return format('the rule for %s no longer fits column "%s" (%s): run rowcast.watch again with rules that fit',
                          x.rule ->> 'event', x.now_name, regexp_replace(sqlerrm, '^rowcast\.watch: ', ''));
        end;
    end loop;
    return null;
end
$$;

-- What a schema change (or a hand-made trigger) broke in a table's registration, in
-- words; null when nothing. `args` are the table's capture trigger arguments.
create function rowcast.problem_of(tbl oid, args text[]) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(rowcast.routing_problem(tbl, args),
                    case when args[1] ~ '^[0-9]{1,9}$' then rowcast.rules_problem(tbl, args) end)
$$;

-- ── Watching a table ─────────────────────────────────────────────────────────────────

drop function rowcast.watch(text, text, jsonb, text[], text, jsonb, text);
drop function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text);

-- Watch a table (or update its settings): registers them, then points the table's capture
-- triggers at the registration. Runs with the caller's rights, so only the table's owner
-- (or a member of the owning role) can do it.
create function rowcast.watch(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null
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
    select * into reg from rowcast.register(tbl, topic, routes, exclude, domain, columns, wake, rules);
    perform rowcast.arm_triggers(tbl, reg.routing_id, wake, reg.exclude_attnums);
    return rowcast.shown_name(tbl);
end
$$;

-- The same, with the table named as the application spells it (rowcast.resolve_table).
create function rowcast.watch(
    tbl     text,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null
) returns text
language sql
as $$
    select rowcast.watch(rowcast.resolve_table(tbl), topic, routes, exclude, domain, columns, wake, rules)
$$;

-- ── What is watched ──────────────────────────────────────────────────────────────────

-- As in version 5, with `rules`: the table's rules in the order they are tried, in the
-- rule language with its columns' names now, each with its event and where it comes from
-- (the preset's kind, or 'rules' for the table's own).
create or replace view rowcast.watched with (security_barrier) as
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
       r.created_at as registered_at,
       (select jsonb_agg(jsonb_build_object('when', rowcast.rule_text(x.rule, coalesce(a.attname::text, x.rule ->> 'column')),
                                            'event', x.rule ->> 'event', 'from', x.rule ->> 'from') order by x.ord)
        from jsonb_array_elements(m.rules) with ordinality as x(rule, ord)
        left join pg_catalog.pg_attribute a
               on a.attrelid = t.tgrelid and a.attnum = (x.rule ->> 'attnum')::int2 and not a.attisdropped) as rules
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

-- ── Grants ───────────────────────────────────────────────────────────────────────────

-- A tenant admin: watches, unwatches and reads the status and events of the tables it
-- owns, through functions and filtered views only.
create or replace function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.watched, rowcast.captured, rowcast.domain_fields, rowcast.preset_rules to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb), '
                   'rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb), '
                   'rowcast.unwatch(regclass), rowcast.unwatch(text), '
                   'rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb), '
                   'rowcast.arm_triggers(regclass, integer, text, int2[]), '
                   'rowcast.capture(), rowcast.capture_truncate() to %s', role);
end
$$;

revoke execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb),
    rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb),
    rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb),
    rowcast.parse_rule(text), rowcast.resolve_rule(regclass, text, text, jsonb, text[], text),
    rowcast.resolve_rules(regclass, text, jsonb, jsonb, text[]), rowcast.own_rules(oid, jsonb),
    rowcast.rules_problem(oid, text[]), rowcast.problem_of(oid, text[])
    from public;
-- rowcast.watched writes rules back with the caller's rights.
grant execute on function rowcast.rule_text(jsonb, text) to public;

-- Roles that were tenant admins keep watch() and register() in their new form.
do $$
declare
    r record;
begin
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_function_privilege(a.oid, 'rowcast.arm_triggers(regclass, integer, text, int2[])', 'EXECUTE')
    loop
        perform rowcast.grant_admin(r.role);
    end loop;
end
$$;

insert into rowcast.schema_history (version, name, applied_on, checksum) values (7, 'event_rules_as_data', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '16464286490103148717');
commit;
