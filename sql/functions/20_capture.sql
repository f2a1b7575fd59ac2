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
