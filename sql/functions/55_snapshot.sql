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
