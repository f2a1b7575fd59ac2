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
