-- rowcast: SQL-only install, generated from migrations/ and sql/functions/ by `rowcast install-sql`.
-- Run as a role that may create schemas: psql -v ON_ERROR_STOP=1 -f sql/install.sql
begin;
create schema if not exists rowcast;
create table if not exists rowcast.schema_history (version int4 primary key, name varchar(255), applied_on varchar(255), checksum varchar(255));

-- migration V1__schema
-- The rowcast schema: its tables, and who may touch them.
--
--   rowcast.events         the change log the capture triggers append to (one row per change)
--   rowcast.log            positions the sequencer gives to committed events (narrow, insert-only)
--   rowcast.sequencer      the one-row counter and snapshot the sequencer advances
--   rowcast.log_marks      when positions were reached, so retention can tell their age
--   rowcast.wake           the one-row wake-up flag (unlogged) that gates writers' NOTIFY
--   rowcast.routings       registrations: how a table's events are routed (immutable rows)
--   rowcast.mappings       event rules of registrations (immutable rows)
--   rowcast.domain_fields  the fields of each kind of domain row, and the column types they accept
--   rowcast.preset_rules   the event rules of each kind of domain row
--   rowcast.functions      which definitions of sql/functions/ are installed
--
-- Functions, views and triggers are in sql/functions/, applied after the migrations on
-- every `rowcast migrate`. docs/architecture.md explains the design.

create schema if not exists rowcast;
grant usage on schema rowcast to public;

-- ── The change log ───────────────────────────────────────────────────────────────────

-- cache 1: with a per-backend cache, ids from concurrent sessions would not follow the
-- order of insertion, and the sequencer relies on id order for changes to the same row.
create sequence rowcast.events_id_seq as bigint cache 1;

create table rowcast.events (
    id         bigint not null default nextval('rowcast.events_id_seq'),
    -- the writer's top-level transaction: the sequencer compares it with snapshots
    txid       xid8 not null default pg_current_xact_id(),
    relid      oid not null,
    op         text not null,
    data       jsonb,
    old        jsonb,
    ts         timestamptz not null default clock_timestamp(),
    routing_id int,
    primary key (txid, id)
);
alter sequence rowcast.events_id_seq owned by rowcast.events.id;

comment on table rowcast.events is
    'rowcast change log: one row per committed or in-flight change of a watched table; positions live in rowcast.log';
comment on column rowcast.events.relid is
    'the table the change was made to (the trigger''s own table: a partition for a partitioned table)';
comment on column rowcast.events.op is
    'INSERT, UPDATE, DELETE or TRUNCATE, as the capture triggers write it (no check constraint: preparing one costs every capture)';
comment on column rowcast.events.data is
    'the new row (INSERT, UPDATE) or the old row (DELETE), minus excluded columns';
comment on column rowcast.events.old is
    'UPDATE: the previous row minus excluded columns; over 1 kB only its changed columns (the entries that differ from data). PUBLISH: {"topic", "event"}';
comment on column rowcast.events.routing_id is
    'the registration the capture trigger named; the sequencer checks it against the event''s table';

-- Writers append their own changes, nothing else: only these columns, and only for a
-- table and an operation the writer may write (the owner of rowcast.events, the
-- installer, is not subject to the policy). PostgreSQL lets some writes through without
-- the writer holding the privilege itself (through a view or a rule of the table's
-- owner, a foreign key's cascade, a row moving between partitions); such a write has
-- inserted, updated or deleted rows of the table in the writer's own transaction, which
-- PostgreSQL counts (pg_stat_get_xact_tuples_*), so that is the last test, per
-- operation. Everyone may read nothing; the service's grant gives it select, and
-- `readers` lets that select see every row.
grant insert (relid, op, data, old, routing_id) on rowcast.events to public;
grant usage on sequence rowcast.events_id_seq to public;
alter table rowcast.events enable row level security;
create policy writers_append_their_own_changes on rowcast.events for insert to public
    with check (
        case op when 'INSERT' then has_any_column_privilege(relid, 'INSERT')
                when 'UPDATE' then has_any_column_privilege(relid, 'UPDATE')
                when 'DELETE' then has_table_privilege(relid, 'DELETE')
                when 'TRUNCATE' then has_table_privilege(relid, 'TRUNCATE') end
        or exists (select from pg_partition_ancestors(relid::regclass) a
                   where a.relid::oid <> events.relid
                     and case events.op when 'INSERT' then has_any_column_privilege(a.relid, 'INSERT')
                                        when 'UPDATE' then has_any_column_privilege(a.relid, 'UPDATE')
                                        when 'DELETE' then has_table_privilege(a.relid, 'DELETE')
                                        when 'TRUNCATE' then has_table_privilege(a.relid, 'TRUNCATE') end)
        or case op when 'INSERT' then pg_stat_get_xact_tuples_inserted(relid) > 0
                   when 'UPDATE' then pg_stat_get_xact_tuples_updated(relid) > 0
                   when 'DELETE' then pg_stat_get_xact_tuples_deleted(relid) > 0 end);
-- Applications publish events of their own (rowcast.publish()): no table (relid 0), a
-- topic with a ':' (so never a table's topic) and an event name, kept in `old`, and the
-- payload in `data`. The same checks as rowcast.publish() makes, so a direct insert can
-- do no more than the function.
create policy apps_publish on rowcast.events for insert to public
    with check (op = 'PUBLISH' and relid = 0 and routing_id is null
                and jsonb_typeof(old) = 'object'
                and length(old ->> 'topic') <= 200
                and old ->> 'topic' ~ '^[^[:space:],*:%]+:[^[:space:],*]+$'
                and length(old ->> 'event') <= 100
                and old ->> 'event' ~ '^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$');
create policy readers on rowcast.events for select using (true);

-- ── The sequenced log ────────────────────────────────────────────────────────────────

-- A narrow row per event, so that giving a position is not a second write of the
-- (possibly wide) event row.
create table rowcast.log (
    pos        bigint primary key,
    event_id   bigint not null unique,
    topics     text[] not null,
    txid       xid8 not null,
    routing_id int
);

comment on table rowcast.log is
    'rowcast sequenced log: gap-free positions of committed events, in delivery order';
comment on column rowcast.log.routing_id is
    'the registration the event was sequenced with (checked against the event''s table); null when it named none of its table';

-- One row. Everything visible in `snap` has a position. A pass in progress (a batch that
-- hit its limit) remembers its target snapshot and the last event id it sequenced.
-- Every position at or below `pruned_pos` has been deleted by retention.
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
-- transaction's events are old when they get one), not the time of the change: each
-- prune run records (pos, at), every position up to pos had been handed out by `at`.
create table rowcast.log_marks (
    pos bigint not null,
    at  timestamptz not null
);
create index log_marks_at on rowcast.log_marks (at);

comment on table rowcast.log_marks is
    'rowcast retention: times at which positions had been reached (pos <= this pos were sequenced by at)';

-- ── The wake-up flag ─────────────────────────────────────────────────────────────────

-- Set by the first 'notify' writer after a sequencer read, cleared by the sequencer before
-- each batch: writers that find it set send no NOTIFY. Unlogged: written every round, and
-- a crash that empties it only makes writers NOTIFY until the sequencer re-seeds it.
create unlogged table rowcast.wake (
    singleton boolean primary key default true check (singleton),
    pending   boolean not null default false
);
insert into rowcast.wake (pending) values (false);

comment on table rowcast.wake is
    'rowcast wake-up flag: set by the first writer after a sequencer read, cleared by the sequencer';

-- The flag's hint, which a writer reads with a function call (pg_sequence_last_value)
-- instead of a query: a last value means a wake-up is under way, none means ask the flag
-- row. Not transactional: request_wake() sets it with the flag, rearm() clears it.
-- Unlogged, like the flag, so that a round that clears it waits for no WAL flush.
create unlogged sequence rowcast.wake_hint minvalue 1 maxvalue 2;
grant select on sequence rowcast.wake_hint to public;

-- ── The registry ─────────────────────────────────────────────────────────────────────

-- The fields of each kind of row a domain knows, as `watch(..., domain => kind)` names
-- it, and the column types each may be mapped to. A required field's same-named column
-- is refused when excluded rather than skipped.
create table rowcast.domain_fields (
    kind       text not null,
    field      text not null,
    required   boolean not null default false,
    type_class text not null check (type_class in ('id', 'status', 'time')),
    primary key (kind, field)
);

insert into rowcast.domain_fields (kind, field, required, type_class) values
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
    ('course', 'id', true, 'id'),
    ('course', 'status', true, 'status'),
    ('course', 'instructor_id', true, 'id'),
    ('course', 'scheduled_for', true, 'time'),
    ('course', 'organization_id', false, 'id'),
    ('course', 'requested_by', false, 'id');

comment on table rowcast.domain_fields is
    'rowcast: the fields of each kind of domain row and the column types they accept';

-- The built-in domains, as rules over the fields of rowcast.domain_fields, tried in order.
create table rowcast.preset_rules (
    kind  text not null,
    ord   int  not null,
    rule  text not null,
    event text not null,
    primary key (kind, ord)
);

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

comment on table rowcast.preset_rules is
    'rowcast: the event rules of each kind of domain row, over its field names, tried in order';

-- A table's event rules, resolved by watch(): its own rules, then its domain preset's
-- through `fields` (field -> column name) and `attnums` (field -> column number). Rows are
-- never changed or deleted, so an event is named with the rules it was captured with on
-- every replica and in every replay.
create table rowcast.mappings (
    id         int generated always as identity primary key,
    relid      oid not null,
    kind       text,
    fields     jsonb not null,
    attnums    jsonb not null,
    rules      jsonb not null,
    created_at timestamptz not null default clock_timestamp()
);
create index mappings_relid on rowcast.mappings (relid);

comment on table rowcast.mappings is
    'rowcast: immutable event rules of a registration (a domain preset through field -> column, and the table''s own rules), referenced by rowcast.routings.mapping_id';
comment on column rowcast.mappings.rules is
    'the resolved event rules, tried in order: {event, op, test, column, attnum, values, from}';

-- Registrations: a table, its topics (column numbers and the names they had), its
-- exclusions and its rules. Immutable, except that each is armed once (when the table's
-- capture trigger first names it) and disarmed once (when the trigger stops naming it).
-- No uniqueness on content: an identical registration in another open transaction must
-- never make watch() wait; register() reuses an armed identical one when it finds it.
create table rowcast.routings (
    id              int generated always as identity primary key,
    relid           oid not null,
    table_name      text not null,
    table_topic     text not null,
    topic           text not null,
    topic_default   boolean not null default false,
    key_columns     text[] not null,
    key_attnums     int2[] not null,
    route_columns   text[] not null,
    route_attnums   int2[] not null,
    route_topics    text[] not null,
    exclude_columns text[] not null,
    exclude_attnums int2[] not null,
    mapping_id      int references rowcast.mappings (id),
    created_at      timestamptz not null default clock_timestamp(),
    armed_at        timestamptz,
    disarmed_at     timestamptz
);
create index routings_relid on rowcast.routings (relid);

comment on table rowcast.routings is
    'rowcast registrations: immutable; the table, its topics (column numbers and the names they had), its event rules. A table''s capture trigger names its current one';
comment on column rowcast.routings.armed_at is
    'when a capture trigger of the table first named this registration (rowcast.confirm); the sequencer uses armed registrations only';
comment on column rowcast.routings.disarmed_at is
    'when the table''s capture trigger stopped naming it (a newer registration, or unwatch): events captured later are not routed by it';

-- ── The installed functions ──────────────────────────────────────────────────────────

-- The checksum of the sql/functions/ files `rowcast migrate` last applied: the service
-- refuses to start on functions another version of rowcast installed.
create table rowcast.functions (
    singleton  boolean primary key default true check (singleton),
    checksum   text not null,
    applied_on timestamptz not null default clock_timestamp()
);

insert into rowcast.schema_history (version, name, applied_on, checksum) values (1, 'schema', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '301782345348287454');

-- migration V2__first_screen
-- The first screen: which registrations serve snapshots, and which topics an event's row left.

-- Set by rowcast.watch(..., snapshot => true): GET /snapshot may return the table's
-- current rows (the service role then needs select on the table).
alter table rowcast.routings add column snapshot boolean not null default false;
comment on column rowcast.routings.snapshot is
    'whether GET /snapshot may return the table''s current rows (rowcast.watch(..., snapshot => true))';

-- An UPDATE that moves a row off a row topic or a routed topic: the topics from the new
-- row come first in `topics`, then the ones only the old row had. Null when every topic
-- gets the whole event.
alter table rowcast.log add column kept smallint;
comment on column rowcast.log.kept is
    'null: every topic gets the whole event; n: the first n topics do, the rest are topics the row left (they get a key-only row.left)';

insert into rowcast.schema_history (version, name, applied_on, checksum) values (2, 'first_screen', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '10990677135690905440');

-- sql/functions/10_topics.sql
-- Topics: how a table and its rows are named on the wire, and how an application names a table.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- A name as it appears in a table topic: '%', ':', '.', ',', '*', control characters and
-- white space (ASCII or Unicode) are percent-encoded, byte by byte in UTF-8, so a table
-- topic never holds the separator of row and routed topics, a schema-qualified topic
-- splits at its one '.', and two names never give one topic. A topic prefix is valid
-- when escaping leaves it as it is.
create or replace function rowcast.topic_escape(name text) returns text
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
create or replace function rowcast.table_topic(tbl regclass) returns text
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
-- PL/pgSQL rather than SQL: the sequencer calls it once per registration in every batch,
-- and a PL/pgSQL function keeps its plan for the session where a SQL function with a
-- `set` clause is planned again in every statement that calls it.
create or replace function rowcast.shown_name(tbl regclass) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    return (select case when n.nspname = 'public' then c.relname::text else n.nspname || '.' || c.relname end
            from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
            where c.oid = tbl);
end
$$;

-- A table named as an application spells it: first as SQL reads it ('bookings',
-- 'public.bookings', '"Booking"'), then, when that names nothing, with each part taken
-- as written ('Booking', 'billing.Invoice'), then ignoring case; unqualified names look
-- in the caller's search_path. Two tables that match equally are an error that shows how
-- to quote each. Runs with the caller's rights and search_path (it has no `set` clause
-- so that it sees them), so every name in it is qualified.
create or replace function rowcast.resolve_table(name text) returns regclass
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

-- The topics of an event: the table, the row (its primary key, from the new and the old
-- row) and one per routing column (new and old value), in that order, without repeats;
-- a TRUNCATE is on the table topic only. The topics of the new row come first; `kept`
-- is how many they are when an UPDATE moved the row off others (its old row topic, an old
-- routing value), which follow and get a key-only `row.left` instead of the row, and null
-- when every topic gets the whole event. For an UPDATE a value of the old row is the old
-- value when `old` has the column, else the new one. Excluded columns are never part of
-- a topic (watch() refuses to exclude a key or routing column). Called by
-- rowcast.sequence_step() for every event of a batch; reads no table.
create or replace function rowcast.route_event(r rowcast.routings, op text, data jsonb, old jsonb,
                                               out topics text[], out kept int)
language plpgsql
immutable
as $$
declare
    t      text;
    v      text;
    c      text;
    i      int;
    n      int;
begin
    if r.id is null then
        return;
    end if;
    topics := array[r.table_topic];
    if op operator(pg_catalog.=) 'TRUNCATE' then
        return;
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
        return;
    end if;
    kept := pg_catalog.cardinality(topics);
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
    if pg_catalog.cardinality(topics) operator(pg_catalog.=) kept then
        kept := null;
    end if;
end
$$;

-- Replaced by rowcast.route_event(), which also says which topics the row left.
drop function if exists rowcast.topics_of(rowcast.routings, text, jsonb, jsonb);

-- What a topic an UPDATE moved the row off gets instead of the row (`row.left`): the
-- row's primary key as it was, as JSON text; null when every topic gets the whole event
-- (`kept` null). A table without a primary key gives '{}'. PL/pgSQL, so that the log's
-- readers, which call it for the rows an UPDATE moved, use a plan kept for the session.
create or replace function rowcast.left_key(r rowcast.routings, kept int, data jsonb, old jsonb) returns text
language plpgsql
immutable
as $$
begin
    if kept is null or r.id is null then
        return null;
    end if;
    return coalesce((select pg_catalog.jsonb_object_agg(k, case when old operator(pg_catalog.?) k
                                                             then old operator(pg_catalog.->) k
                                                             else data operator(pg_catalog.->) k end)
                     from pg_catalog.unnest(r.key_columns) k), '{}'::pg_catalog.jsonb)::pg_catalog.text;
end
$$;

-- sql/functions/20_capture.sql
-- Capture: the triggers that write every change of a watched table to rowcast.events, and the wake-up flag.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- An event name: letters, digits and underscores in dot-separated parts (no white space
-- or line breaks, which would break an SSE stream), at most 100 characters, and not a
-- name a named SSE stream gives its own messages (`subscribed`, `reset`). The one rule
-- for rowcast.publish(), the insert policy and event rules (rowcast.checked_event());
-- the service checks the same on what it reads (`mapping::is_event_name`).
create or replace function rowcast.is_event_name(ev text) returns boolean
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    return coalesce(length(ev) <= 100 and ev ~ '^[A-Za-z0-9_]+([.][A-Za-z0-9_]+)*$'
                    and ev not in ('subscribed', 'reset'), false);
end
$$;

-- A topic an application may publish on: `prefix:value` (the ':' keeps it apart from
-- every table's topic), no white space, commas, * or %, at most 200 characters. The one
-- rule for rowcast.publish() and the insert policy.
create or replace function rowcast.is_published_topic(topic text) returns boolean
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    return coalesce(length(topic) <= 200 and topic ~ '^[^[:space:],*:%]+:[^[:space:],*]+$', false);
end
$$;

-- Who may append an event to rowcast.events: the one check of its insert policy, called
-- for every event a capture trigger, rowcast.publish() or a direct insert appends, as
-- the appending role. A change of a table is admitted when the role holds the privilege
-- for the operation on the table (`INSERT`/`UPDATE` on at least one column, `DELETE`,
-- `TRUNCATE`) or on a partitioned table above it, or when its transaction really did
-- that operation to the table (PostgreSQL counts the rows: a write through a view or a
-- rule of the owner's, a foreign key's cascade, a row moving between partitions). An
-- application's own event (op PUBLISH) is admitted with the checks rowcast.publish()
-- makes. One PL/pgSQL call instead of the policies' expressions: PostgreSQL builds a
-- policy's expression again for every captured row, and these cost each one-row write
-- more than the call. No `set` clause (it would cost every row too): every function,
-- operator and type below is named with its schema, so the caller's search_path
-- changes nothing, and no literal depends on `standard_conforming_strings`. Stable, so
-- it takes no snapshot of its own. Never drop it (`cascade` would take the policy, and
-- every captured write would then fail): change its body, or replace the policy in the
-- same transaction.
create or replace function rowcast.may_append(event_relid oid, event_op text, event_routing integer, event_old jsonb)
returns boolean
language plpgsql
stable
as $$
begin
    if event_op OPERATOR(pg_catalog.=) 'INSERT' or event_op OPERATOR(pg_catalog.=) 'UPDATE' then
        if pg_catalog.has_any_column_privilege(event_relid, event_op) then
            return true;
        end if;
    elsif event_op OPERATOR(pg_catalog.=) 'DELETE' or event_op OPERATOR(pg_catalog.=) 'TRUNCATE' then
        if pg_catalog.has_table_privilege(event_relid, event_op) then
            return true;
        end if;
    elsif event_op OPERATOR(pg_catalog.=) 'PUBLISH' then
        return coalesce(event_relid OPERATOR(pg_catalog.=) 0::pg_catalog.oid
                        and event_routing is null
                        and pg_catalog.jsonb_typeof(event_old) OPERATOR(pg_catalog.=) 'object'
                        and rowcast.is_published_topic(event_old OPERATOR(pg_catalog.->>) 'topic')
                        and rowcast.is_event_name(event_old OPERATOR(pg_catalog.->>) 'event'),
                        false);
    else
        return false;
    end if;
    -- The privilege on a partitioned table above (the row was written through it).
    if exists (select from pg_catalog.pg_partition_ancestors(event_relid::pg_catalog.regclass) a
               where a.relid::pg_catalog.oid OPERATOR(pg_catalog.<>) event_relid
                 and case when event_op OPERATOR(pg_catalog.=) 'INSERT' or event_op OPERATOR(pg_catalog.=) 'UPDATE'
                          then pg_catalog.has_any_column_privilege(a.relid::pg_catalog.oid, event_op)
                          else pg_catalog.has_table_privilege(a.relid::pg_catalog.oid, event_op) end) then
        return true;
    end if;
    -- What the transaction did to the table (not TRUNCATE: PostgreSQL does not count it).
    if event_op OPERATOR(pg_catalog.=) 'INSERT' then
        return coalesce(pg_catalog.pg_stat_get_xact_tuples_inserted(event_relid) OPERATOR(pg_catalog.>) 0, false);
    elsif event_op OPERATOR(pg_catalog.=) 'UPDATE' then
        return coalesce(pg_catalog.pg_stat_get_xact_tuples_updated(event_relid) OPERATOR(pg_catalog.>) 0, false);
    elsif event_op OPERATOR(pg_catalog.=) 'DELETE' then
        return coalesce(pg_catalog.pg_stat_get_xact_tuples_deleted(event_relid) OPERATOR(pg_catalog.>) 0, false);
    end if;
    return false;
end
$$;

-- rowcast.events' insert policy is that one call (schema version 1 created two policies
-- with the same checks written out). Replaced once, in the same transaction as the
-- function, and left alone on later runs: changing a policy locks the log table.
do $$
begin
    if exists (select from pg_catalog.pg_policy
               where polrelid = 'rowcast.events'::regclass
                 and polname in ('writers_append_their_own_changes', 'apps_publish')) then
        drop policy if exists writers_append_their_own_changes on rowcast.events;
        drop policy if exists apps_publish on rowcast.events;
    end if;
    if not exists (select from pg_catalog.pg_policy
                   where polrelid = 'rowcast.events'::regclass and polname = 'appenders') then
        create policy appenders on rowcast.events for insert to public
            with check (rowcast.may_append(relid, op, routing_id, old));
    end if;
end
$$;

-- The row trigger. Arguments: the registration (rowcast.routings id), the watched table's
-- oid, the wake mode, then the column numbers of excluded columns. Runs as the writer:
-- it serialises the row, drops the excluded columns by number (named as they are now, so
-- a rename cannot un-exclude one), and appends one event, which the policy on
-- rowcast.events admits only for the writer's own writes. For 'notify' tables it then
-- asks for a wake-up.
--
-- A captured row reads the same whatever the writer's session says: it is serialised
-- in UTC, with floats exact (`extra_float_digits` above 0), intervals, bytea and dates
-- in ranges in PostgreSQL's default styles, identifiers quoted only where needed, and
-- appended with `row_security = on` (a restore under `row_security = off` still
-- writes). (`money` follows `lc_monetary`, which is not changed.) `search_path`, the time
-- zone and `row_security` are `set` clauses: the path so that an owner's cast to json,
-- which `to_jsonb` calls, resolves its names as the owner wrote them, and the time zone
-- because many sessions have another one. The other settings are checked instead, since
-- each `set` clause costs every one-row transaction and sessions rarely change them: when
-- the session differs they are set for the transaction (`set_config(..., true)`) and put
-- back before the trigger returns (an error rolls them back with the transaction or
-- savepoint).
create or replace function rowcast.capture() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set row_security = on
as $$
declare
    -- The trigger's arguments, as rowcast.arm_triggers() writes them: tg_argv[0] the
    -- registration, tg_argv[1] the watched table, tg_argv[2] the wake mode, tg_argv[3:]
    -- the column numbers of excluded columns in the watched table. Read where they are
    -- used: every assignment is one more expression PostgreSQL prepares in every
    -- transaction.
    new_row jsonb;
    old_row jsonb;
    gone    text[];
    i       int;
    -- The writer's settings that had to be changed: name, value, name, value, ...
    saved   text[];
begin
    -- How every row is serialised (see above). One test on the usual path; on the other,
    -- only what differs is changed.
    if current_setting('extra_float_digits') not in ('1', '2', '3')
       or current_setting('IntervalStyle') <> 'postgres'
       or current_setting('bytea_output') <> 'hex'
       or current_setting('DateStyle') not like 'ISO,%'
       or current_setting('quote_all_identifiers') <> 'off' then
        saved := '{}';
        if current_setting('extra_float_digits') not in ('1', '2', '3') then
            saved := saved || array['extra_float_digits', current_setting('extra_float_digits')];
            perform set_config('extra_float_digits', '1', true);
        end if;
        if current_setting('IntervalStyle') <> 'postgres' then
            saved := saved || array['IntervalStyle', current_setting('IntervalStyle')];
            perform set_config('IntervalStyle', 'postgres', true);
        end if;
        if current_setting('bytea_output') <> 'hex' then
            saved := saved || array['bytea_output', current_setting('bytea_output')];
            perform set_config('bytea_output', 'hex', true);
        end if;
        if current_setting('DateStyle') not like 'ISO,%' then
            saved := saved || array['DateStyle', current_setting('DateStyle')];
            perform set_config('DateStyle', 'ISO', true);
        end if;
        if current_setting('quote_all_identifiers') <> 'off' then
            saved := saved || array['quote_all_identifiers', current_setting('quote_all_identifiers')];
            perform set_config('quote_all_identifiers', 'off', true);
        end if;
    end if;
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
        -- A large old row is trimmed to the columns that changed: the log stays narrow.
        if pg_column_size(old_row) > 1024 and new_row <> old_row then
            old_row := old_row - array(select s.k from (select jsonb_object_keys(old_row) as k) s
                                       where new_row -> s.k is not distinct from old_row -> s.k);
        end if;
    end if;

    -- Nothing visible changed: no event.
    if old_row is null or new_row <> old_row then
        insert into rowcast.events (relid, op, data, old, routing_id)
        values (tg_relid, tg_op, new_row, old_row, tg_argv[0]::int);

        -- The event row is inserted before the flag is read, so that a sequencer that
        -- cleared the flag after this read sees the event.
        if tg_argv[2] = 'notify'
           and (pg_sequence_last_value('rowcast.wake_hint'::regclass) is null
                or current_setting('transaction_isolation') <> 'read committed') then
            perform rowcast.request_wake();
        end if;
    end if;
    if saved is not null then
        for i in 1 .. array_length(saved, 1) by 2 loop
            perform set_config(saved[i], saved[i + 1], true);
        end loop;
    end if;
    return null;
end
$$;

-- Capture per statement, for tables moved to it with rowcast.capture_statements(): one
-- statement trigger per operation (a trigger with transition tables serves one event),
-- with the same arguments as rowcast.capture(). It writes the statement's rows from its
-- transition tables (`rowcast_new`, `rowcast_old`) with one `insert ... select`, in the
-- order the statement changed them, which is the order the row trigger would have fired
-- in: the same events, each row's as rowcast.capture() makes it (excluded columns dropped
-- by number, no event for an UPDATE that changed nothing visible, an old row over 1 kB
-- trimmed to the changed columns). The old and the new image of an updated row are
-- paired by their place in the two transition tables, which PostgreSQL fills together,
-- row by row. Runs as the writer, like rowcast.capture().
create or replace function rowcast.capture_set() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
-- Rows read as rowcast.capture() serialises them (see there).
set timezone = 'UTC'
set row_security = on
set extra_float_digits = 1
set intervalstyle = 'postgres'
set bytea_output = 'hex'
set datestyle = 'ISO'
set quote_all_identifiers = off
-- The planner cannot estimate the pairing join (it guesses rows squared), and JIT
-- compiling it took longer than the statement's capture; the two sorts of a 200,000-row
-- UPDATE fit in memory within 64 MB (at 4 MB they spill to disk).
set jit = off
set work_mem = '64MB'
as $$
declare
    -- The trigger's arguments, as rowcast.arm_triggers() writes them.
    registration int  := tg_argv[0];
    watched      oid  := tg_argv[1];
    wake         text := tg_argv[2];
    -- tg_argv[3:]: the column numbers of excluded columns, in the watched table.
    gone    text[] := '{}';
    written bigint;
    i       int;
begin
    if tg_level <> 'STATEMENT' or tg_when <> 'AFTER' then
        raise exception 'rowcast.capture_set() is an AFTER ... FOR EACH STATEMENT trigger with transition tables'
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    -- Names from the watched table, as they are now: a rename cannot un-exclude a column.
    for i in 3 .. tg_nargs - 1 loop
        gone := gone || coalesce((pg_identify_object_as_address('pg_class'::regclass, watched,
                                                                tg_argv[i]::int)).object_names[3], '');
    end loop;
    if tg_op = 'INSERT' then
        insert into rowcast.events (relid, op, data, routing_id)
        select tg_relid, 'INSERT', to_jsonb(n) - gone, registration
        from rowcast_new n;
    elsif tg_op = 'DELETE' then
        insert into rowcast.events (relid, op, data, routing_id)
        select tg_relid, 'DELETE', to_jsonb(o) - gone, registration
        from rowcast_old o;
    elsif tg_op = 'UPDATE' and not exists (select from rowcast_new offset 1) then
        -- One row (most writes): the pair needs no pairing, and this plan costs less.
        insert into rowcast.events (relid, op, data, old, routing_id)
        select tg_relid, 'UPDATE', c.new_row,
               case when pg_column_size(c.old_row) > 1024
                    then c.old_row - array(select k from jsonb_object_keys(c.old_row) k
                                           where c.new_row -> k is not distinct from c.old_row -> k)
                    else c.old_row end,
               registration
        from (select to_jsonb(n) - gone as new_row, to_jsonb(o) - gone as old_row
              from rowcast_old o, rowcast_new n) c
        where c.new_row <> c.old_row;  -- nothing visible changed: no event
    elsif tg_op = 'UPDATE' then
        insert into rowcast.events (relid, op, data, old, routing_id)
        select tg_relid, 'UPDATE', c.new_row,
               case when pg_column_size(c.old_row) > 1024
                    then c.old_row - array(select k from jsonb_object_keys(c.old_row) k
                                           where c.new_row -> k is not distinct from c.old_row -> k)
                    else c.old_row end,
               registration
        from (select b.new_row, a.old_row, a.ord
              from (select row_number() over () as ord, to_jsonb(o) - gone as old_row from rowcast_old o) a
              join (select row_number() over () as ord, to_jsonb(n) - gone as new_row from rowcast_new n) b
                on b.ord = a.ord
              order by a.ord) c
        where c.new_row <> c.old_row;  -- nothing visible changed: no event
    else
        raise exception 'rowcast.capture_set() captures INSERT, UPDATE and DELETE, not %', tg_op
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    get diagnostics written = row_count;

    -- As in rowcast.capture(): the events are inserted before the flag is read.
    if written > 0 and wake = 'notify'
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
declare
    registration int  := tg_argv[0];
    wake         text := tg_argv[2];
begin
    insert into rowcast.events (relid, op, routing_id) values (tg_relid, 'TRUNCATE', registration);
    if wake = 'notify' then
        perform rowcast.request_wake();
    end if;
    return null;
end
$$;

-- The writer's side of the wake-up, called by the capture triggers of 'notify' tables
-- when the flag did not read as set. Never waits on a lock: the flag row is taken with
-- `for update skip locked`, and a writer that finds it locked goes on without it (the
-- holder is about to send a wake-up, or the sequencer is about to read). Outside read
-- committed the flag is not used (locking a row changed after the snapshot would fail the
-- writer's transaction): such writers NOTIFY, once per transaction.
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

-- Sends the wake-up, unless PostgreSQL's NOTIFY queue is nearly full (a listener
-- somewhere is not reading): a NOTIFY into a full queue would fail the writer's
-- transaction, and a write must never fail because of the notifier. The sequencer's
-- fallback timer picks the event up instead.
create or replace function rowcast.notify_wake() returns void
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

-- An application's own event: `event` on `topic` with `payload`, in the caller's
-- transaction, so it is delivered only if that commits, positioned after the row events
-- the transaction wrote before it, and replayed like any other. The topic must hold a
-- ':' (`stats:global`, `meeting:5`), so it is never a table's topic; the payload is
-- stored whole (no NOTIFY payload limit). Runs with the caller's rights: the policy on
-- rowcast.events makes the same checks for a direct insert.
create or replace function rowcast.publish(topic text, event text, payload jsonb default '{}')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
set row_security = on
as $$
begin
    if not rowcast.is_published_topic(topic) then
        raise exception 'rowcast.publish: topic % must look like prefix:value (no white space, commas, * or %% in it, at most 200 characters)',
            coalesce(quote_literal(topic), 'null')
            using errcode = 'invalid_parameter_value';
    end if;
    if not rowcast.is_event_name(event) then
        raise exception 'rowcast.publish: event name % must be letters, digits and underscores in dot-separated parts, like stats.updated (not subscribed or reset)',
            coalesce(quote_literal(event), 'null')
            using errcode = 'invalid_parameter_value';
    end if;
    insert into rowcast.events (relid, op, data, old)
    values (0, 'PUBLISH', coalesce(payload, '{}'), jsonb_build_object('topic', topic, 'event', event));
    if pg_sequence_last_value('rowcast.wake_hint'::regclass) is null
       or current_setting('transaction_isolation') <> 'read committed' then
        perform rowcast.request_wake();
    end if;
end
$$;

-- sql/functions/30_sequence.sql
-- Sequencing and retention: gap-free positions for committed events, and pruning by position.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- One sequencer batch: gives the next gap-free positions to events whose transaction
-- became visible since the last batch's snapshot, in id order (which keeps each row's
-- changes in order), and wakes the tailers. Returns how many it sequenced (-1 when
-- another sequencer holds the counter row) and whether transactions were in progress,
-- so that the caller reads again shortly. The counter row, locked `for update skip
-- locked` for the batch, is the leadership and the guarantee that no position is handed
-- out twice. An event's registration is used only when it belongs to the event's table
-- (or a partitioned table above it) and a capture trigger of that table named it (armed);
-- any other event gets no topics and is delivered to nobody. A batch with nothing to do
-- reads only. docs/architecture.md has the reasoning.
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
        select e.id, e.txid, e.relid, e.op, e.routing_id, e.data, e.old, e.ts from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(target)
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        union all
        select e.id, e.txid, e.relid, e.op, e.routing_id, e.data, e.old, e.ts from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        order by id
        limit batch_limit
    ), current_regs as materialized (
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
        insert into rowcast.log (pos, event_id, txid, topics, kept, routing_id)
        select st.last_pos + row_number() over (order by b.id), b.id, b.txid,
               case when b.op = 'PUBLISH' and b.relid = 0 then array[b.old ->> 'topic']
                    else coalesce(t.topics, '{}') end,
               t.kept, r.id
        from batch b
        left join rowcast.routings r
          on r.id = b.routing_id
         and r.id in (select c.id from current_regs c)
         and (r.disarmed_at is null or b.ts < r.disarmed_at)
         and (r.relid = b.relid
              or r.relid in (select a.relid from pg_partition_ancestors(b.relid) a))
        left join lateral rowcast.route_event(r, b.op, b.data, b.old) t on true
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

-- Retired: the service read a batch's changes inside the batch's transaction, so a
-- replica that stopped reading its result kept the counter row locked. It reads them
-- after the batch has committed now (docs/architecture.md, "Sequencing").
drop function if exists rowcast.sequence_step_changes(integer, integer);

-- Whether committed events wait for a position: `waiting` when any event visible now is
-- not covered by the sequencer's snapshot (or a pass is unfinished), the capture time of
-- the oldest such event, and the last position handed out. The service samples it to
-- tell a stalled sequencer from an idle one (readiness, metrics, taking over from a
-- frozen sequencing replica). Reads only: it takes no lock.
create or replace function rowcast.unsequenced(out waiting boolean, out oldest timestamptz, out last_pos bigint)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    st  rowcast.sequencer;
    cur pg_snapshot := pg_current_snapshot();
begin
    select * into st from rowcast.sequencer s where s.singleton;
    last_pos := st.last_pos;
    select min(x.ts) into oldest from (
        select e.ts from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(cur)
          and pg_visible_in_snapshot(e.txid, cur)
        union all
        select e.ts from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, cur)
    ) x;
    waiting := oldest is not null or st.pass_snap is not null;
end
$$;

-- rowcast.sequence_step() without the in-progress hint: the number of events sequenced,
-- or -1 when another sequencer holds the counter row.
create or replace function rowcast.sequence(batch_limit integer default 10000) returns bigint
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.sequenced from rowcast.sequence_step(batch_limit) s
$$;

-- The sequencer's side of the wake-up flag, called in its own transaction right before
-- every batch: clears the flag so that the next writer sends a NOTIFY, and re-seeds the
-- row when a crash emptied the unlogged table. Returns whether the flag is now clear;
-- never waits (a flag row locked by someone else is left as it is: the caller then
-- re-checks on a short timer).
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

-- One retention batch: deletes, in position order, at most batch_limit log rows beyond
-- the last keep_events positions and sequenced longer than max_age ago, with their event
-- rows, and raises `pruned_pos` in the same transaction. An event without a position is
-- never touched, however old. Returns the number of log rows deleted, or -1 when another
-- session is pruning; call it until it returns less than batch_limit.
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

-- The last position handed out, as the caller's snapshot sees it: every event at or
-- below it is visible in that snapshot. An application reads its first screen and this
-- in one `repeatable read` transaction, then subscribes with `since` = this position:
-- the events after it bring every change the screen lacks (some it already shows, which
-- applying in order repeats harmlessly). Callable by anyone; it returns a number only.
create or replace function rowcast.head() returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.last_pos from rowcast.sequencer s where s.singleton
$$;

-- sql/functions/40_rules.sql
-- Event rules: the rule language, resolving rules and domain fields against a table.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- Reads one rule: `insert`, `update`, `delete`, `<column> set|cleared|changed`,
-- `<column> -> v1, v2` or `<column> -> *`. A column may be double-quoted ("startTime"),
-- a value single-quoted ('in progress'). Returns {op} or {op: UPDATE, test, column,
-- values}; raises a clear error for anything else. Reads nothing but its argument.
create or replace function rowcast.parse_rule(rule text) returns jsonb
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
    if length(s) > 1000 then
        raise exception 'rowcast.watch: a rule is at most 1000 characters' using errcode = 'program_limit_exceeded';
    end if;
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
            m := regexp_match(s, '^([^[:space:]]+)[[:space:]]+([^[:space:]]+)$');
            col := m[1];
            rest := m[2];
        end if;
        if col is null or col = '' or col ~ '[[:space:]"]' then
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
        while i <= n and substr(v, i, 1) ~ '[[:space:]]' loop i := i + 1; end loop;
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
        if cardinality(vals) > 100 then
            raise exception 'rowcast.watch: rule % has more than 100 values', quote_literal(left(s, 60) || '...')
                using errcode = 'program_limit_exceeded';
        end if;
        while i <= n and substr(v, i, 1) ~ '[[:space:]]' loop i := i + 1; end loop;
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
create or replace function rowcast.rule_text(rule jsonb, col text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when rule ->> 'op' is null then null
        when rule ->> 'test' is null then lower(rule ->> 'op')
        else case when col ~ '^[^[:space:]"]+$' and strpos(col, '->') = 0 then col
                  else '"' || replace(col, '"', '""') || '"' end
             || case rule ->> 'test'
                    when 'becomes' then ' -> ' || (select string_agg(case when v ~ '^[^[:space:],'']([^,'']*[^[:space:],''])?$' and v <> '*' then v
                                                                          else '''' || replace(v, '''', '''''') || '''' end,
                                                         ', ' order by o)
                                                   from jsonb_array_elements_text(rule -> 'values') with ordinality x(v, o))
                    when 'becomes_any' then ' -> *'
                    else ' ' || (rule ->> 'test')
                end
    end
$$;

-- Raises a clear error unless every name is a live column of the table.
create or replace function rowcast.check_columns(tbl regclass, what text, names text[]) returns void
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
create or replace function rowcast.resolve_fields(tbl regclass, kind text, columns jsonb, exclude text[]) returns jsonb
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

-- What is wrong with a mapping of `kind`'s fields onto a table (a mapped column missing,
-- excluded, of the wrong type, or mapped twice), as a message naming the table, the field
-- and the column; null when it is sound (or when there is no kind). Which fields a table
-- needs is decided by the preset's rules (rowcast.resolve_rules).
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

-- Resolves one rule against a table: the column it reads (through `fields` for a preset
-- rule, whose column names are fields), its number, and its values checked against the
-- column's type. Returns a JSON array of the resolved rule, or an empty array for a
-- preset rule that cannot fire on this table (none of its values is a label of the
-- column's enum). `source` is the preset's kind, or 'rules' for the table's own rules.
create or replace function rowcast.resolve_rule(tbl regclass, rule text, event text, fields jsonb, exclude text[], source text)
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
        elsif class = 'number' and v !~ '^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)$' then
            raise exception 'rowcast.watch: the rule for % compares numeric column "%" of table % with %, which is not a plain decimal number',
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
create or replace function rowcast.resolve_rules(tbl regclass, kind text, fields jsonb, rules jsonb, exclude text[])
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
    if jsonb_typeof(rules) = 'object' and rules ? 'carried' then
        -- rowcast.follow(): the table's own rules as stored, carried forward by column
        -- number; a rule whose column was dropped is kept as one that never fires.
        if jsonb_typeof(rules -> 'carried') <> 'array' or jsonb_array_length(rules -> 'carried') > 100 then
            raise exception 'rowcast.watch: carried rules must be an array of at most 100' using errcode = 'invalid_parameter_value';
        end if;
        for r in select e.value as v from jsonb_array_elements(rules -> 'carried') as e(value) loop
            resolved := resolved || rowcast.carry_rule(tbl, r.v);
            named := named || (r.v ->> 'event');
        end loop;
    elsif jsonb_typeof(rules) <> 'array' then
        raise exception 'rowcast.watch: rules must be a JSON array of {"when": "<rule>", "event": "<name>"}, tried in order'
            using errcode = 'invalid_parameter_value';
    elsif jsonb_array_length(rules) > 100 then
        raise exception 'rowcast.watch: a table has at most 100 rules of its own' using errcode = 'program_limit_exceeded';
    end if;
    for r in select e.value as v, e.ord from jsonb_array_elements(case when jsonb_typeof(rules) = 'array' then rules else '[]' end)
             with ordinality as e(value, ord) loop
        if jsonb_typeof(r.v) <> 'object' or jsonb_typeof(r.v -> 'event') is distinct from 'string'
           or jsonb_typeof(coalesce(r.v -> 'when', 'null')) not in ('string', 'null')
           or exists (select from jsonb_object_keys(r.v) k where k not in ('when', 'event')) then
            raise exception 'rowcast.watch: rule % of rules must be an object {"when": "<rule>", "event": "<name>"}, not %', r.ord, r.v
                using errcode = 'invalid_parameter_value';
        end if;
        ev := rowcast.checked_event(r.v ->> 'event');
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

-- An event name of a rule, checked (rowcast.is_event_name()).
create or replace function rowcast.checked_event(ev text) returns text
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if not rowcast.is_event_name(ev) then
        raise exception 'rowcast.watch: event name % must be letters, digits and underscores in dot-separated parts, like booking.accepted (not subscribed or reset)',
            coalesce(quote_literal(ev), 'null')
            using errcode = 'invalid_parameter_value';
    end if;
    return ev;
end
$$;

-- One of a table's own rules as stored, carried forward to a new registration by column
-- number (rowcast.follow()): its column is named as it is now, and a rule whose column
-- was dropped becomes one that never fires and remembers the column (`dropped`), so that
-- no other column given that name later is read in its place. Nothing is re-parsed or
-- re-checked against the column's type: a rename never makes it fail.
create or replace function rowcast.carry_rule(tbl regclass, rule jsonb) returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    ev   text;
    col  text;
    test text;
begin
    if jsonb_typeof(rule) <> 'object' then
        raise exception 'rowcast.watch: a carried rule must be an object' using errcode = 'invalid_parameter_value';
    end if;
    ev := rowcast.checked_event(rule ->> 'event');
    if rule ->> 'op' is null then
        return jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'event', ev, 'op', null, 'from', 'rules', 'dropped', rule ->> 'dropped', 'attnum', rule -> 'attnum')));
    end if;
    if not rule ? 'attnum' then
        if rule ->> 'op' not in ('INSERT', 'UPDATE', 'DELETE') then
            raise exception 'rowcast.watch: a carried rule has an unknown operation' using errcode = 'invalid_parameter_value';
        end if;
        return jsonb_build_array(jsonb_build_object('event', ev, 'op', rule ->> 'op', 'from', 'rules'));
    end if;
    test := rule ->> 'test';
    if test not in ('set', 'cleared', 'changed', 'becomes', 'becomes_any')
       or (test = 'becomes' and (jsonb_typeof(rule -> 'values') <> 'array'
                                 or jsonb_array_length(rule -> 'values') not between 1 and 100
                                 or exists (select from jsonb_array_elements(rule -> 'values') v
                                            where jsonb_typeof(v) <> 'string'))) then
        raise exception 'rowcast.watch: a carried rule cannot be read' using errcode = 'invalid_parameter_value';
    end if;
    select a.attname into col from pg_catalog.pg_attribute a
    where a.attrelid = tbl and a.attnum = (rule ->> 'attnum')::int2 and a.attnum > 0 and not a.attisdropped;
    if col is null then
        return jsonb_build_array(jsonb_build_object('event', ev, 'op', null, 'from', 'rules',
                                                    'dropped', rule ->> 'column', 'attnum', rule -> 'attnum'));
    end if;
    return jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'event', ev, 'op', 'UPDATE', 'test', test, 'column', col, 'attnum', (rule ->> 'attnum')::int2,
        'values', rule -> 'values', 'from', 'rules')));
end
$$;

-- sql/functions/50_registry.sql
-- The registry: immutable registrations, the triggers that name them, and the DBA API.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- Registrations are immutable, except that each may be armed once and disarmed once.
create or replace function rowcast.routings_immutable() returns trigger
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

-- Rules rows are never changed or deleted: events refer to them by id.
create or replace function rowcast.mappings_immutable() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'rowcast.% rows are immutable: events refer to them', tg_table_name
        using errcode = 'object_in_use';
end
$$;

create or replace trigger routings_immutable before update or delete on rowcast.routings
    for each row execute function rowcast.routings_immutable();
create or replace trigger mappings_immutable before update or delete on rowcast.mappings
    for each row execute function rowcast.mappings_immutable();

-- The arguments of a table's capture triggers (null when it has none): the row trigger's,
-- or the statement triggers' (rowcast.arm_triggers() gives them all the same).
create or replace function rowcast.capture_args(tbl oid) returns text[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select (string_to_array(encode(t.tgargs, 'escape'), E'\\000'))[1:t.tgnargs]
    from pg_catalog.pg_trigger t
    where t.tgrelid = tbl and t.tgparentid = 0
      and t.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)
    order by t.tgname = 'rowcast_capture' desc, t.tgname
    limit 1
$$;

-- Records a registration: validates the settings against the table, resolves names to
-- column numbers and rules to the columns they read, and returns the (new or identical
-- earlier) immutable registration and the column numbers to exclude. It changes no
-- table's capture: a registration is used once the table's trigger names it, which only
-- the table's owner (or the installer) can arrange. Security definer because nobody else
-- may write the registry; it reads only the catalog and its arguments, and evaluates no
-- user code.
-- register() and watch() took no `snapshot` before: their older definitions go first
-- (`rowcast migrate` gives their grants to the new ones).
drop function if exists rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb);
drop function if exists rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb);
drop function if exists rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb);

create or replace function rowcast.register(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null,
    snapshot boolean default false,
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
    -- Only for whoever may watch the table: a registration names settings, and an
    -- identical one is reused, so it must not answer anyone else.
    if not pg_catalog.pg_has_role(session_user, (select c.relowner from pg_catalog.pg_class c where c.oid = tbl), 'USAGE') then
        raise exception 'rowcast.watch: only the owner of % may register it', tbl
            using errcode = 'insufficient_privilege';
    end if;
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
    snapshot := coalesce(snapshot, false);
    -- Snapshots make the service read the table: only the DBA who installed rowcast (the
    -- owner of schema rowcast) turns them on; a registration that has them keeps them
    -- when the table's owner watches it again or a schema change is followed.
    if snapshot
       and not pg_catalog.pg_has_role(session_user, (select n.nspowner from pg_catalog.pg_namespace n
                                                     where n.nspname = 'rowcast'), 'MEMBER')
       and not exists (select from rowcast.routings r
                       where r.relid = tbl and r.snapshot and r.armed_at is not null and r.disarmed_at is null) then
        raise exception 'rowcast.watch: snapshot => true lets the service read % and is for the DBA who installed rowcast', tbl
            using errcode = 'insufficient_privilege';
    end if;
    if snapshot and cardinality(keys) = 0 then
        raise exception 'rowcast.watch: snapshot => true needs a primary key on % (a snapshot is read in key order, page by page)', tbl
            using errcode = 'invalid_parameter_value';
    end if;

    select coalesce(array_agg(x order by x), '{}') into exclude_attnums from unnest(exclude_attnums) x;
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}') into bad_names
    from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attnum = any (exclude_attnums);

    -- A registration in use is reused (not one disarmed by unwatch or a newer one: the
    -- sequencer routes no event by it again).
    select r.id into routing_id from rowcast.routings r
    where r.relid = tbl and r.armed_at is not null and r.disarmed_at is null
      and r.table_name = shown and r.table_topic = t_topic and r.topic = register.topic
      and r.topic_default = t_default and r.key_columns = keys and r.key_attnums = key_nums
      and r.route_columns = r_cols and r.route_attnums = r_nums and r.route_topics = r_topics
      and r.exclude_columns = bad_names and r.exclude_attnums = exclude_attnums
      and r.mapping_id is not distinct from m_id and r.snapshot = register.snapshot
    order by r.id limit 1;
    if routing_id is null then
        insert into rowcast.routings as r (relid, table_name, table_topic, topic, topic_default, key_columns, key_attnums,
                                           route_columns, route_attnums, route_topics, exclude_columns,
                                           exclude_attnums, mapping_id, snapshot)
        values (tbl, shown, t_topic, topic, t_default, keys, key_nums, r_cols, r_nums, r_topics, bad_names,
                exclude_attnums, m_id, snapshot)
        returning r.id into routing_id;
    end if;
end
$$;

-- Arms the registration a table's capture trigger names (from now on the sequencer
-- accepts it for the table's events) and disarms every other one of the table (events
-- captured from now on are not routed by them). Anyone may call it: it only records what
-- the trigger says, and only the table's owner (or the installer) can make a trigger say it.
create or replace function rowcast.confirm(tbl regclass) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    args text[];
begin
    args := rowcast.capture_args(tbl);
    if exists (select from pg_catalog.pg_trigger t
               where t.tgrelid = tbl and t.tgparentid = 0
                 and t.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)
                 and (string_to_array(encode(t.tgargs, 'escape'), E'\\000'))[1] is distinct from args[1]) then
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

-- Installs (or replaces) a table's capture triggers with the arguments `args`: the row
-- trigger (rowcast.capture()), or, with `statements`, three statement triggers with
-- transition tables (rowcast.capture_set()), one per operation; and the TRUNCATE
-- trigger. Drops the other kind. Runs with the caller's rights: creating a trigger needs
-- the table's ownership.
create or replace function rowcast.install_capture(tbl regclass, args text[], statements boolean)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    quoted text;
begin
    select string_agg(quote_literal(a), ', ' order by n) into quoted
    from unnest(args) with ordinality as x(a, n);
    if statements then
        if exists (select from pg_catalog.pg_trigger t where t.tgrelid = tbl and t.tgname = 'rowcast_capture') then
            execute format('drop trigger rowcast_capture on %s', tbl);
        end if;
        execute format('create or replace trigger rowcast_capture_insert after insert on %s '
                       'referencing new table as rowcast_new '
                       'for each statement execute function rowcast.capture_set(%s)', tbl, quoted);
        execute format('create or replace trigger rowcast_capture_update after update on %s '
                       'referencing old table as rowcast_old new table as rowcast_new '
                       'for each statement execute function rowcast.capture_set(%s)', tbl, quoted);
        execute format('create or replace trigger rowcast_capture_delete after delete on %s '
                       'referencing old table as rowcast_old '
                       'for each statement execute function rowcast.capture_set(%s)', tbl, quoted);
    else
        if exists (select from pg_catalog.pg_trigger t
                   where t.tgrelid = tbl and t.tgname in ('rowcast_capture_insert', 'rowcast_capture_update',
                                                          'rowcast_capture_delete')) then
            execute format('drop trigger if exists rowcast_capture_insert on %s', tbl);
            execute format('drop trigger if exists rowcast_capture_update on %s', tbl);
            execute format('drop trigger if exists rowcast_capture_delete on %s', tbl);
        end if;
        execute format('create or replace trigger rowcast_capture after insert or update or delete on %s '
                       'for each row execute function rowcast.capture(%s)', tbl, quoted);
    end if;
    execute format('create or replace trigger rowcast_capture_truncate after truncate on %s '
                   'for each statement execute function rowcast.capture_truncate(%s)', tbl, quoted);
end
$$;

-- Why a table cannot be captured by statement triggers, in words; null when it can.
-- PostgreSQL fires a table's statement triggers only for statements that name it: a
-- statement on a partition (or an inheritance child) does not fire its parent's, one on
-- the parent does not fire a partition's, and an inheritance parent's transition tables
-- also hold its children's rows. Row triggers fire for every changed row of the tree,
-- and a partitioned table's is cloned to partitions attached later.
create or replace function rowcast.statement_capture_problem(tbl oid) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when c.relkind = 'p' then 'a partitioned table is captured by its row trigger (writes may name a partition)'
        when c.relispartition then 'a partition is captured by its parent''s row trigger'
        when exists (select from pg_catalog.pg_inherits i where i.inhrelid = c.oid or i.inhparent = c.oid)
            then 'a table in an inheritance tree is captured by its row trigger (writes may name another table of the tree)'
        when c.relkind <> 'r' then 'only tables can be captured by statement triggers'
    end
    from pg_catalog.pg_class c where c.oid = tbl
$$;

-- Installs (or replaces) a table's capture triggers naming a registration, and arms it.
-- The table keeps the kind of capture it has (row, or statements after
-- rowcast.capture_statements), unless it can no longer be captured by statements; a
-- table watched for the first time gets the row trigger. Runs with the caller's rights:
-- creating a trigger needs the table's ownership.
create or replace function rowcast.arm_triggers(tbl regclass, routing_id int, wake text, exclude_attnums int2[])
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform rowcast.install_capture(
        tbl,
        array[routing_id::text, tbl::oid::text, wake]
            || coalesce((select array_agg(x::text order by x) from unnest(exclude_attnums) x), '{}'),
        exists (select from pg_catalog.pg_trigger t
                where t.tgrelid = tbl and t.tgfoid = 'rowcast.capture_set()'::regprocedure)
            and rowcast.statement_capture_problem(tbl) is null);
    perform rowcast.confirm(tbl);
end
$$;

-- Captures a watched table's changes once per statement (`enabled`), from the
-- statement's transition tables, or once per row (the default). Both write the same
-- events; per statement, a multi-row statement costs a fraction of what it costs per row,
-- and a one-row write somewhat more (BENCHMARKS.md, "Multi-row statements"). Returns
-- whether the table is now captured per statement. Runs with the caller's rights, so
-- only the table's owner (or a member of the owning role) can do it.
create or replace function rowcast.capture_statements(tbl regclass, enabled boolean default true)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    args    text[];
    problem text;
begin
    if not pg_catalog.pg_has_role((select c.relowner from pg_catalog.pg_class c where c.oid = tbl), 'USAGE') then
        raise exception 'rowcast.capture_statements: only the owner of % may change its capture triggers', tbl
            using errcode = 'insufficient_privilege';
    end if;
    args := rowcast.capture_args(tbl);
    if args is null then
        raise exception 'rowcast.capture_statements: % is not watched (run rowcast.watch first)', tbl
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    problem := rowcast.statement_capture_problem(tbl);
    if enabled and problem is not null then
        raise exception 'rowcast.capture_statements: % cannot be captured by statement triggers: %', tbl, problem
            using errcode = 'wrong_object_type';
    end if;
    perform rowcast.install_capture(tbl, args, enabled);
    perform rowcast.confirm(tbl);
    return enabled;
end
$$;

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
    wake    text    default 'notify',
    rules   jsonb   default null,
    snapshot boolean default false
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
    select * into reg from rowcast.register(tbl, topic, routes, exclude, domain, columns, wake, rules, snapshot);
    perform rowcast.arm_triggers(tbl, reg.routing_id, wake, reg.exclude_attnums);
    return rowcast.shown_name(tbl);
end
$$;

-- The same, with the table named as the application spells it (rowcast.resolve_table).
create or replace function rowcast.watch(
    tbl     text,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null,
    snapshot boolean default false
) returns text
language sql
as $$
    select rowcast.watch(rowcast.resolve_table(tbl), topic, routes, exclude, domain, columns, wake, rules, snapshot)
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
    execute format('drop trigger if exists rowcast_capture_insert on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_update on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_delete on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_truncate on %s', tbl);
    perform rowcast.confirm(tbl);
    return was;
end
$$;

create or replace function rowcast.unwatch(tbl text) returns boolean
language sql
as $$
    select rowcast.unwatch(rowcast.resolve_table(tbl))
$$;

-- sql/functions/55_snapshot.sql
-- The first screen: the current rows behind some topics, read by the service for
-- GET /snapshot, page by page.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.
--
-- The service reads application tables here, so nothing their owners wrote may run while
-- it does: a function in an index, a partition key or a constraint, a row-level security
-- policy, a cast of an owner's type. The tables are locked first
-- (rowcast.lock_for_snapshot: no DDL can change them until the read ends), then, in the
-- next statement's snapshot, each table is checked (rowcast.snapshot_refusal) and read
-- only if nothing of its owner's can run; an owner's enum is read through its output
-- function, never a cast. A refused table is reported, not read.

-- An earlier definition, replaced by rowcast.read_kind().
drop function if exists rowcast.plain_type(oid);

-- Where the rows of each topic come from: one source per topic and current registration
-- watched with `snapshot => true` that publishes on it, numbered in the order of the
-- topics (then registration, then the kind of match): the table topic (every row), a row
-- topic (the row whose primary key it names) or a routed topic (the rows whose routing
-- column holds its value). Columns are given by number. A registration is current while
-- the table's capture trigger names it, under the name it was registered with.
create or replace function rowcast.snapshot_sources(topics text[])
returns table (source int, topic text, relid oid, table_name text, key_attnums int2[],
               exclude_attnums int2[], exclude_columns text[], filter_attnums int2[], filter_value text)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select (row_number() over (order by t.ord, r.id, f.kind, f.i))::int, t.topic, r.relid, r.table_name,
           r.key_attnums, r.exclude_attnums, r.exclude_columns, f.attnums, f.value
    from unnest(topics) with ordinality as t(topic, ord)
    join rowcast.routings r
      on r.snapshot and r.armed_at is not null and r.disarmed_at is null
     and r.table_name = rowcast.shown_name(r.relid::regclass)
     and (rowcast.capture_args(r.relid))[1] = r.id::text
    cross join lateral (
        select 0 as kind, 0::bigint as i, '{}'::int2[] as attnums, null::text as value
        where t.topic = r.table_topic
        union all
        select 1, 0, r.key_attnums, substr(t.topic, length(r.topic) + 2)
        where cardinality(r.key_attnums) > 0 and starts_with(t.topic, r.topic || ':')
        union all
        select 2, x.i, array[x.n], substr(t.topic, length(x.p) + 2)
        from unnest(r.route_topics, r.route_attnums) with ordinality as x(p, n, i)
        where starts_with(t.topic, x.p || ':')
    ) f
$$;

-- Locks the tables behind `topics` (rowcast.snapshot_sources) against DDL until the
-- caller's transaction ends: share update exclusive, which writers do not wait for, but
-- which keeps indexes, policies, rules, partitions and column types from changing while
-- the snapshot is checked and read. The caller sets `lock_timeout`. Security definer: the
-- service may only read the tables; it locks nothing but tables served as snapshots.
create or replace function rowcast.lock_for_snapshot(topics text[]) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    t oid;
begin
    for t in select distinct s.relid from rowcast.snapshot_sources(topics) s order by s.relid loop
        begin
            execute format('lock table %s in share update exclusive mode', t::regclass);
        exception when lock_not_available then
            -- Held by another session (a long DDL, say): this table is skipped, the
            -- others are read.
            null;
        end;
    end loop;
end
$$;

-- Whether `value` reads as a `type`: a topic's value that does not cannot name a row.
-- The value is a literal, read by the type's input function (never a cast); only called
-- with built-in types and enums.
create or replace function rowcast.reads_as(value text, type regtype) returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('select %L::%s', value, type);
    return true;
exception when data_exception then
    return false;
end
$$;

-- The type a column's values are read and compared as: a domain's base type (so no
-- domain constraint is evaluated), else the type itself.
create or replace function rowcast.base_type(t oid) returns oid
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with recursive d(oid, base, depth) as (
        select y.oid, y.typbasetype, 0 from pg_catalog.pg_type y where y.oid = t
        union all
        select y.oid, y.typbasetype, d.depth + 1 from d join pg_catalog.pg_type y on y.oid = d.base
        where d.base <> 0 and d.depth < 32
    )
    select d.oid from d where d.base = 0
$$;

-- How a column of type `t` is read without running anyone's code: 'plain' for a built-in
-- type (no one but the installer can add a cast to or from it), 'enum' for an owner's
-- enum (read through its output function, since its owner may add casts), null for any
-- other type (a composite, a range, an array of an owner's type), which is refused.
create or replace function rowcast.read_kind(t oid) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case when b.oid < 16384 then 'plain'
                when y.typtype = 'e' then 'enum' end
    from (select rowcast.base_type(t) as oid) b
    join pg_catalog.pg_type y on y.oid = b.oid
$$;

-- Why table `tbl` cannot be read for a snapshot without running its owner's code, or null
-- when it can: it is not a table any more; it or a partition has row-level security or is
-- a foreign table; it, a partition, a partitioned table above it, or one of their
-- indexes or constraints uses a function or operator that is not PostgreSQL's own (the
-- planner evaluates index predicates and expressions, partition keys and the partition
-- constraints they give, and constraints); or one of them has statistics on expressions
-- (which the planner evaluates too). Read it after rowcast.lock_for_snapshot, in a later
-- statement, so that it sees what the read will see.
create or replace function rowcast.snapshot_refusal(tbl oid) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with rels as (
        select tbl as oid
        union
        select a.relid from pg_catalog.pg_partition_tree(tbl) a
        union
        select a.relid from pg_catalog.pg_partition_ancestors(tbl) a
    ), objects as (
        select 'pg_class'::regclass as classid, r.oid from rels r
        union all
        select 'pg_class'::regclass, i.indexrelid from pg_catalog.pg_index i join rels r on i.indrelid = r.oid
        union all
        select 'pg_constraint'::regclass, c.oid from pg_catalog.pg_constraint c join rels r on c.conrelid = r.oid
    )
    select case
        when not exists (select from pg_catalog.pg_class c where c.oid = tbl and c.relkind in ('r', 'p'))
            then 'it is no longer a table'
        when exists (select from pg_catalog.pg_class c join rels r on r.oid = c.oid where c.relrowsecurity)
            then 'it has row-level security, whose policies would run as the service'
        when exists (select from pg_catalog.pg_class c join rels r on r.oid = c.oid where c.relkind = 'f')
            then 'a partition is a foreign table'
        when exists (select from pg_catalog.pg_statistic_ext x join rels r on r.oid = x.stxrelid
                     where x.stxexprs is not null)
            then 'it has statistics on expressions, which the planner would evaluate as the service'
        when exists (select from pg_catalog.pg_depend d join objects o on o.classid = d.classid and o.oid = d.objid
                     where d.refclassid in ('pg_proc'::regclass, 'pg_operator'::regclass) and d.refobjid >= 16384)
            then 'an index, partition key or constraint uses a function or operator of its own, which the planner would run as the service'
    end
$$;

-- One page of the current rows of `topics`: at most `page_limit` rows, from source
-- `from_source` (rowcast.snapshot_sources) on, after the key `after_key` (its columns as
-- text) in that source, in key order. Each row is the table's row as a capture stores it
-- (to_jsonb in UTC, under its current column names) without its excluded columns, which
-- are never read (by number, or by the name they were excluded under), with its source
-- and key for the next page. A source that cannot be read gives one row with `refused`
-- saying why (nothing of its owner's may run: rowcast.snapshot_refusal, or a column type
-- rowcast.read_kind refuses; or the caller may not read it), and no rows. Runs with the
-- caller's rights: the service role needs `select` on the table (or on every column but
-- the excluded ones). Call it after rowcast.lock_for_snapshot(), in one statement with
-- rowcast.head(), so that both see one snapshot.
create or replace function rowcast.snapshot_rows(topics text[], from_source int, after_key text[], page_limit int)
returns table (source int, topic text, table_name text, data text, key text[], refused text)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
-- Rows read as rowcast.capture() serialises them (see there).
set timezone = 'UTC'
set extra_float_digits = 1
set intervalstyle = 'postgres'
set bytea_output = 'hex'
set datestyle = 'ISO'
set quote_all_identifiers = off
as $$
#variable_conflict use_column
declare
    s        record;
    cols     text;
    names    text;
    k_names  text[];
    k_types  text[];
    k_exprs  text[];
    f_exprs  text[];
    f_names  text[];
    f_types  text[];
    parts    text[];
    filter   text;
    later    text;
    bad      text;
    why      text;
    taken    int := 0;
    n        int;
    i        int;
begin
    if page_limit is null or page_limit < 1 then
        raise exception 'rowcast.snapshot_rows: page_limit must be at least 1' using errcode = 'invalid_parameter_value';
    end if;
    for s in select * from rowcast.snapshot_sources(topics) x
             where x.source >= coalesce(from_source, 1) order by x.source loop
        why := rowcast.snapshot_refusal(s.relid);
        if why is null and not exists (select from pg_catalog.pg_locks l
                                       where l.locktype = 'relation' and l.relation = s.relid and l.granted
                                         and l.pid = pg_backend_pid() and l.mode = 'ShareUpdateExclusiveLock') then
            why := 'it could not be locked (another session held it, or its registration changed): ask again';
        end if;
        -- Every column read, by its current name; an owner's enum through its output
        -- function (format), so that no cast its owner added is looked up.
        select string_agg(case rowcast.read_kind(a.atttypid)
                              when 'enum' then format('pg_catalog.format(''%%s'', t.%I) as %I', a.attname, a.attname)
                              else format('t.%I', a.attname) end, ', ' order by a.attnum),
               string_agg(quote_ident(a.attname), ', ' order by a.attnum),
               min(a.attname) filter (where rowcast.read_kind(a.atttypid) is null)
        into cols, names, bad
        from pg_catalog.pg_attribute a
        where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped
          and not a.attnum = any (s.exclude_attnums) and not a.attname::text = any (s.exclude_columns);
        if why is null and bad is not null then
            why := format('column %I has a type whose functions its owner may have written; exclude it, or leave snapshots off', bad);
        end if;
        if why is not null then
            return query select s.source, s.topic, s.table_name, null::text, null::text[], why;
            continue;
        end if;
        select array_agg(a.attname::text order by k.ord),
               array_agg(format_type(rowcast.base_type(a.atttypid), null) order by k.ord),
               array_agg(format('pg_catalog.format(''%%s'', t.%I)', a.attname) order by k.ord)
        into k_names, k_types, k_exprs
        from unnest(s.key_attnums) with ordinality as k(n, ord)
        join pg_catalog.pg_attribute a on a.attrelid = s.relid and a.attnum = k.n and not a.attisdropped;
        -- A key column dropped or renamed to an excluded name: the registration is held
        -- (see rowcast.watched); it serves no rows until it is watched again.
        continue when cols is null or cardinality(k_names) is distinct from cardinality(s.key_attnums)
                      or k_names && s.exclude_columns;

        filter := 'true';
        if s.filter_value is not null then
            -- The topic's value is the JSON text of the column(s) in the captured row
            -- (joined by ':' for a key of several columns), which the filter matches
            -- exactly; an equality on the column's own type lets an index serve it.
            select array_agg(case rowcast.read_kind(a.atttypid)
                                 when 'enum' then format('pg_catalog.format(''%%s'', t.%I)', a.attname)
                                 else format('pg_catalog.jsonb_build_array(t.%I) ->> 0', a.attname) end order by f.ord),
                   array_agg(a.attname::text order by f.ord),
                   array_agg(format_type(rowcast.base_type(a.atttypid), null) order by f.ord)
            into f_exprs, f_names, f_types
            from unnest(s.filter_attnums) with ordinality as f(n, ord)
            join pg_catalog.pg_attribute a on a.attrelid = s.relid and a.attnum = f.n and not a.attisdropped;
            continue when cardinality(f_exprs) is distinct from cardinality(s.filter_attnums);
            filter := format('%s = $1', array_to_string(f_exprs, ' || '':'' || '));
            parts := case when cardinality(f_names) = 1 then array[s.filter_value]
                          else string_to_array(s.filter_value, ':') end;
            if cardinality(parts) = cardinality(f_names) then
                for i in 1 .. cardinality(parts) loop
                    -- A value that does not read as the column's type names no row.
                    continue when not rowcast.reads_as(parts[i], f_types[i]::regtype);
                    filter := filter || format(' and t.%I = %L::%s', f_names[i], parts[i], f_types[i]);
                end loop;
            end if;
        end if;
        later := 'true';
        if s.source = from_source and after_key is not null then
            if cardinality(after_key) is distinct from cardinality(k_names)
               or exists (select from unnest(after_key, k_types) as x(v, t) where x.v is null or not rowcast.reads_as(x.v, x.t::regtype)) then
                raise exception 'rowcast.snapshot: the cursor does not fit: ask for the first page again'
                    using errcode = 'invalid_parameter_value';
            end if;
            select format('(%s) > (%s)', string_agg(format('t.%I', x.name), ', ' order by x.ord),
                          string_agg(format('%L::%s', x.v, x.t), ', ' order by x.ord))
            into later
            from unnest(k_names, after_key, k_types) with ordinality as x(name, v, t, ord);
        end if;
        begin
            -- `only`: rows of tables inheriting from it are not captured with it.
            return query execute format(
                'select %s, %L, %L, (select pg_catalog.to_jsonb(c) from (select %s) c)::text, array[%s], null::text '
                'from %s %s t where %s and %s order by %s limit %s',
                s.source, s.topic, s.table_name, cols, array_to_string(k_exprs, ', '),
                case when (select c.relkind from pg_catalog.pg_class c where c.oid = s.relid) = 'r' then 'only' else '' end,
                s.relid::regclass, filter, later,
                (select string_agg(format('t.%I', k), ', ') from unnest(k_names) k),
                page_limit - taken)
            using s.filter_value;
        exception when undefined_function then
            return query select s.source, s.topic, s.table_name, null::text, null::text[],
                'its routing column''s type cannot be compared with a value'::text;
            continue;
        when insufficient_privilege then
            return query select s.source, s.topic, s.table_name, null::text, null::text[],
                format('role %s may not read %s: grant select on %s to %s (or only its columns that are not excluded: grant select (%s) on %s to %s)',
                       current_user, s.relid::regclass, s.relid::regclass, quote_ident(current_user),
                       names, s.relid::regclass, quote_ident(current_user));
            continue;
        end;
        get diagnostics n = row_count;
        taken := taken + n;
        exit when taken >= page_limit;
    end loop;
end
$$;

-- sql/functions/60_schema_changes.sql
-- Schema changes: what a change to a watched table broke, and following renames.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- What a schema change (or a hand-made trigger) broke in a table's registration of
-- topics, exclusions and domain fields, in words; null when nothing. `args` are the
-- table's capture trigger arguments.
create or replace function rowcast.routing_problem(tbl oid, args text[]) returns text
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
    if (select count(distinct (string_to_array(encode(t.tgargs, 'escape'), E'\\000'))[1])
        from pg_catalog.pg_trigger t
        where t.tgrelid = tbl and t.tgparentid = 0 and t.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)) > 1 then
        return 'two capture triggers name different registrations: their events are delivered to nobody; run rowcast.watch again';
    end if;
    if exists (select from pg_catalog.pg_trigger t
               where t.tgrelid = tbl and t.tgparentid = 0 and t.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)
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
    if not exists (select from pg_catalog.pg_trigger t
                   where t.tgrelid = tbl and t.tgname = 'rowcast_capture' and t.tgtype & 1 = 1
                     and t.tgfoid = 'rowcast.capture()'::regprocedure)
       and (select count(*) from pg_catalog.pg_trigger t
            where t.tgrelid = tbl and t.tgfoid = 'rowcast.capture_set()'::regprocedure
              and t.tgname in ('rowcast_capture_insert', 'rowcast_capture_update', 'rowcast_capture_delete')) < 3 then
        return 'a capture trigger is missing: changes are not all captured; run rowcast.watch again';
    end if;
    if exists (select from pg_catalog.pg_trigger t
               where t.tgrelid = tbl and t.tgfoid = 'rowcast.capture_set()'::regprocedure)
       and rowcast.statement_capture_problem(tbl) is not null then
        return 'the table joined a partition or inheritance tree after it was watched: changes made through another table of the tree are not captured (or are captured as this one''s); run rowcast.watch again';
    end if;
    if not exists (select from pg_catalog.pg_trigger t where t.tgrelid = tbl and t.tgname = 'rowcast_capture_truncate') then
        return 'the TRUNCATE trigger is missing: truncations are not captured; run rowcast.watch again';
    end if;
    return null;
end
$$;

-- What a schema change broke in the table's own rules, in words; null when nothing: a
-- column a rule reads was dropped or renamed (and not followed), or its type changed so
-- that the rule's values no longer fit it.
create or replace function rowcast.rules_problem(tbl oid, args text[]) returns text
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
        if x.rule ? 'dropped' then
            return format('column "%s", which the rule for %s read, was dropped: the rule no longer fires; run rowcast.watch again with rules that fit',
                          x.rule ->> 'dropped', x.rule ->> 'event');
        elsif x.now_name is null then
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
                          x.rule ->> 'event', x.now_name, regexp_replace(sqlerrm, '^rowcast[.]watch: ', ''));
        end;
    end loop;
    return null;
end
$$;

-- What a schema change (or a hand-made trigger) broke in a table's registration, in
-- words; null when nothing. `args` are the table's capture trigger arguments.
create or replace function rowcast.problem_of(tbl oid, args text[]) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(rowcast.routing_problem(tbl, args),
                    case when args[1] ~ '^[0-9]{1,9}$' then rowcast.rules_problem(tbl, args) end)
$$;

-- rowcast.problem_of() for rowcast.watched: only for whoever may see the table's
-- registration, a member of its owner (by the session's login role, since this function
-- runs as its definer) or the service; null for anyone else.
create or replace function rowcast.registration_problem(tbl oid, args text[]) returns text
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

-- Re-arms a table's current registration so that every column now named like one of its
-- excluded columns, or numbered like one, is excluded: a column dropped and added again
-- under an excluded name (a type change the way some migration tools make it) is never
-- captured, whatever else a schema change broke. Called by rowcast.follow() first.
create or replace function rowcast.keep_exclusions(tbl oid, r rowcast.routings, args text[]) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    now_ex int2[];
begin
    select coalesce(array_agg(distinct a.attnum order by a.attnum), '{}') into now_ex
    from pg_catalog.pg_attribute a
    where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
      and (a.attnum::text = any (args[4:]) or a.attname = any (coalesce(r.exclude_columns, '{}')));
    if r.id is not null and now_ex is distinct from
           (select coalesce(array_agg(x::int2 order by x::int2), '{}') from unnest(args[4:]) x) then
        perform rowcast.arm_triggers(tbl::regclass, r.id, args[3], now_ex);
    end if;
end
$$;

-- Follows a watched table through ALTER TABLE: when it or a column its registration uses
-- was renamed (or its key changed), registers it again from its column numbers (its
-- rules too) and points its triggers at the new registration, in the same transaction.
-- What cannot be followed (a column a registration uses was dropped, a mapping no longer
-- fits) is left as it is and shown in rowcast.watched. Never fails the schema change.
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
    perform rowcast.keep_exclusions(tbl, r, args);
    args := rowcast.capture_args(tbl);
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
                                            routes, exclude, m.kind, coalesce(columns, '{}'), args[3],
                                            jsonb_build_object('carried', coalesce(
                                                (select jsonb_agg(e.rule order by e.ord)
                                                 from jsonb_array_elements(m.rules) with ordinality as e(rule, ord)
                                                 where e.rule ->> 'from' = 'rules'), '[]')),
                                            r.snapshot);
    select coalesce(array_agg(x::int2 order by x::int2), '{}') into now_ex from unnest(args[4:]) x;
    if reg.routing_id <> r.id or reg.exclude_attnums <> now_ex then
        perform rowcast.arm_triggers(tbl::regclass, reg.routing_id, args[3], reg.exclude_attnums);
    end if;
exception when others then
    -- Fail closed: a column added again under an excluded name stays excluded, whatever
    -- else could not be followed.
    begin
        -- The trigger's arguments as the rolled-back body left them (not `args`, which
        -- may hold what the body did before it failed).
        perform rowcast.keep_exclusions(tbl, r, rowcast.capture_args(tbl));
    exception when others then
        raise warning 'rowcast: could not keep the exclusions of % after a schema change: %', tbl::regclass, sqlerrm;
    end;
    raise warning 'rowcast: could not follow the schema change of %: % (see rowcast.watched)', tbl::regclass, sqlerrm;
end
$$;

-- The event trigger's function: follows every watched table an ALTER touched.
create or replace function rowcast.follow_ddl() returns event_trigger
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
         and w.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)
         and (   (d.classid = 'pg_catalog.pg_class'::regclass and w.tgrelid = d.objid)
              or (d.classid = 'pg_catalog.pg_namespace'::regclass
                  and w.tgrelid in (select c.oid from pg_catalog.pg_class c where c.relnamespace = d.objid)))
    loop
        perform rowcast.follow(t);
    end loop;
end
$$;

-- The event trigger that follows renames, installed when the installer is a superuser
-- (only a superuser may create one). Without it, rowcast.watched shows a renamed table
-- or column until rowcast.watch is run again; excluded columns stay excluded either way.
do $$
begin
    if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
        drop event trigger if exists rowcast_follow_ddl;
        create event trigger rowcast_follow_ddl on ddl_command_end
            when tag in ('ALTER TABLE', 'ALTER SCHEMA', 'ALTER INDEX', 'ALTER VIEW',
                         'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE')
            execute function rowcast.follow_ddl();
    elsif not exists (select from pg_catalog.pg_event_trigger e where e.evtname = 'rowcast_follow_ddl') then
        raise warning 'rowcast: installed without superuser rights, so renames are not followed automatically: '
                     'rowcast.watched shows a renamed table or column until rowcast.watch is run again '
                     '(excluded columns stay excluded either way)';
    end if;
end
$$;

-- sql/functions/70_views.sql
-- Views: what is watched and how, and the captured events of a tenant's own tables.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- What is watched, and how: one row per table whose capture trigger rowcast.watch made,
-- with column names as they are now. Tenant admins see the tables they own; the installer
-- and service roles see all. `problem` says what a schema change broke; `rules` lists the
-- table's event rules in the order they are tried, with the columns' names now and where
-- each comes from (the preset's kind, or 'rules' for the table's own).
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
               on a.attrelid = t.tgrelid and a.attnum = (x.rule ->> 'attnum')::int2 and not a.attisdropped) as rules,
       coalesce(r.snapshot, false) as snapshot
from (select distinct on (x.tgrelid) x.* from pg_catalog.pg_trigger x
      where x.tgparentid = 0 and x.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)
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

-- The sequenced events of the tables the caller owns, for tenant admins.
create or replace view rowcast.captured with (security_barrier) as
select l.pos,
       r.table_name,
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

-- sql/functions/80_grants.sql
-- Grants: least-privilege roles, and what everyone may call.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

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
                   'rowcast.schema_history, rowcast.functions, rowcast.mappings, rowcast.routings, rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.sequence(integer), '
                   'rowcast.sequence_step(integer), rowcast.unsequenced(), rowcast.lock_for_snapshot(text[]), '
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
    execute format('grant select on rowcast.watched, rowcast.captured, rowcast.domain_fields, rowcast.preset_rules to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb, boolean), '
                   'rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb, boolean), '
                   'rowcast.unwatch(regclass), rowcast.unwatch(text), '
                   'rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb, boolean), '
                   'rowcast.arm_triggers(regclass, integer, text, int2[]), '
                   'rowcast.install_capture(regclass, text[], boolean), rowcast.capture_statements(regclass, boolean), '
                   'rowcast.capture(), rowcast.capture_set(), rowcast.capture_truncate() to %s', role);
end
$$;

-- What everyone may call: the capture path's wake-up, what rowcast.watched calls with the
-- caller's rights (the catalog and the registration's problem only), the names watch()
-- reports, the resolution of a table name, the head position for a first screen, and
-- an application's own events. Everything else is revoked from public;
-- grant_service() and grant_admin() give each role its part.
revoke execute on all functions in schema rowcast from public;
grant execute on function rowcast.request_wake(), rowcast.capture_args(oid), rowcast.registration_problem(oid, text[]),
    rowcast.statement_capture_problem(oid),
    rowcast.confirm(regclass), rowcast.shown_name(regclass), rowcast.table_topic(regclass), rowcast.topic_escape(text),
    rowcast.resolve_table(text), rowcast.rule_text(jsonb, text), rowcast.head(),
    rowcast.left_key(rowcast.routings, integer, jsonb, jsonb),
    rowcast.snapshot_sources(text[]), rowcast.snapshot_rows(text[], integer, text[], integer),
    rowcast.reads_as(text, regtype), rowcast.base_type(oid), rowcast.read_kind(oid), rowcast.snapshot_refusal(oid),
    rowcast.publish(text, text, jsonb), rowcast.may_append(oid, text, integer, jsonb),
    rowcast.is_event_name(text), rowcast.is_published_topic(text) to public;

-- Roles given grant_service() or grant_admin() before get what the current definitions
-- need (functions added or replaced since), on every `rowcast migrate`: a service role
-- is one that may execute rowcast.sequence_step(), a tenant admin one that may execute
-- rowcast.unwatch(regclass).
do $$
declare
    r record;
begin
    for r in select distinct a.grantee::regrole as role, f.kind
             from (values ('rowcast.sequence_step(integer)'::regprocedure, 'service'),
                          ('rowcast.unwatch(regclass)'::regprocedure, 'admin')) as f(fn, kind)
             join pg_catalog.pg_proc p on p.oid = f.fn
             cross join lateral pg_catalog.aclexplode(p.proacl) a
             where a.privilege_type = 'EXECUTE' and a.grantee <> 0 and a.grantee <> p.proowner loop
        if r.kind = 'service' then
            perform rowcast.grant_service(r.role);
        else
            perform rowcast.grant_admin(r.role);
        end if;
    end loop;
end
$$;

insert into rowcast.functions (checksum) values ('db7f1303746cc8bc') on conflict (singleton) do update set checksum = excluded.checksum, applied_on = clock_timestamp();
commit;
