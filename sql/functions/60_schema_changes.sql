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
