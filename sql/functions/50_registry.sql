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
