-- The first screen: the current rows behind some topics, read by the service for
-- GET /snapshot, page by page, in the caller's snapshot.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- Where the rows of each topic come from: one source per topic and current registration
-- watched with `snapshot => true` that publishes on it, numbered in the order of the
-- topics (then registration, then the kind of match): the table topic (every row), a row
-- topic (the row whose primary key it names) or a routed topic (the rows whose routing
-- column holds its value). Columns are given by number. A registration is current while
-- its table's trigger names it under the name it was registered with.
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

-- Whether `value` reads as a `type`: a topic's value that does not cannot name a row.
-- Only called with built-in types and enums, whose input functions are PostgreSQL's own.
create or replace function rowcast.reads_as(value text, type regtype) returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('select $1::%s', type) using value;
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

-- Whether the service can read, serialise and compare a column of type `t` without
-- running code someone else wrote: a built-in type, or an enum or an array of one with
-- no cast to json (which to_jsonb would call). A composite, range or other user-defined
-- type may carry functions of its owner, which must never run with the service's rights.
create or replace function rowcast.plain_type(t oid) returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case when b.oid < 16384 then true
                when y.typtype = 'e' then not exists (
                    select from pg_catalog.pg_cast c
                    where c.castsource = b.oid and c.casttarget in ('json'::regtype, 'jsonb'::regtype))
                when y.typelem <> 0 and y.typcategory = 'A' then rowcast.plain_type(y.typelem)
                else false end
    from (select rowcast.base_type(t) as oid) b
    join pg_catalog.pg_type y on y.oid = b.oid
$$;

-- One page of the current rows of `topics`: at most `page_limit` rows, from source
-- `from_source` (rowcast.snapshot_sources) on, after the key `after_key` (its columns as
-- text) in that source, in key order. Each row is the table's row as a capture stores it
-- (to_jsonb in UTC, under its current column names) without its excluded columns, which
-- are never read (by number, or by the name they were excluded under), with its source
-- and key for the next page. Runs with the caller's rights: the service role needs
-- `select` on the table (or on every column but the excluded ones), and is told the
-- grant when it lacks it. Nothing the table's owner wrote runs: a table with row-level
-- security (its policies would run as the caller) or a column of a type that may carry
-- its owner's functions is refused. Read it in the same repeatable-read transaction as
-- rowcast.head().
create or replace function rowcast.snapshot_rows(topics text[], from_source int, after_key text[], page_limit int)
returns table (source int, topic text, table_name text, data text, key text[])
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
#variable_conflict use_column
declare
    s        record;
    cols     text;
    names    text;
    k_names  text[];
    k_types  text[];
    f_exprs  text[];
    f_names  text[];
    f_types  text[];
    parts    text[];
    filter   text;
    later    text;
    bad      text;
    taken    int := 0;
    n        int;
    i        int;
begin
    if page_limit is null or page_limit < 1 then
        raise exception 'rowcast.snapshot_rows: page_limit must be at least 1' using errcode = 'invalid_parameter_value';
    end if;
    for s in select * from rowcast.snapshot_sources(topics) x
             where x.source >= coalesce(from_source, 1) order by x.source loop
        select string_agg(format('t.%I', a.attname), ', ' order by a.attnum),
               string_agg(quote_ident(a.attname), ', ' order by a.attnum),
               min(a.attname) filter (where not rowcast.plain_type(a.atttypid))
        into cols, names, bad
        from pg_catalog.pg_attribute a
        where a.attrelid = s.relid and a.attnum > 0 and not a.attisdropped
          and not a.attnum = any (s.exclude_attnums) and not a.attname::text = any (s.exclude_columns);
        if bad is not null then
            raise exception 'rowcast.snapshot: column "%" of % has a type that may run its owner''s functions; exclude it or watch % without snapshot',
                bad, s.relid::regclass, s.relid::regclass
                using errcode = 'feature_not_supported';
        end if;
        if exists (select from pg_catalog.pg_class c where c.oid = s.relid and c.relrowsecurity)
           and not (select r.rolbypassrls from pg_catalog.pg_roles r where r.rolname = current_user) then
            raise exception 'rowcast.snapshot: % has row-level security, whose policies would run as the service role; turn snapshot off for it',
                s.relid::regclass
                using errcode = 'feature_not_supported';
        end if;
        select array_agg(a.attname::text order by k.ord),
               array_agg(format_type(rowcast.base_type(a.atttypid), null) order by k.ord)
        into k_names, k_types
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
            select array_agg(format('pg_catalog.jsonb_build_array(t.%I) ->> 0', a.attname) order by f.ord),
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
                raise exception 'rowcast.snapshot: the cursor does not fit %: ask for the first page again', s.table_name
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
                'select %s, %L, %L, (select pg_catalog.to_jsonb(c) from (select %s) c)::text, array[%s] '
                'from %s %s t where %s and %s order by %s limit %s',
                s.source, s.topic, s.table_name, cols,
                (select string_agg(format('t.%I::text', k), ', ') from unnest(k_names) k),
                case when (select c.relkind from pg_catalog.pg_class c where c.oid = s.relid) = 'r' then 'only' else '' end,
                s.relid::regclass, filter, later,
                (select string_agg(format('t.%I', k), ', ') from unnest(k_names) k),
                page_limit - taken)
            using s.filter_value;
        exception when insufficient_privilege then
            raise exception 'rowcast.snapshot: role % may not read %: grant select on % to %',
                current_user, s.relid::regclass, s.relid::regclass, quote_ident(current_user)
                using errcode = 'insufficient_privilege',
                      hint = format('or grant select (%s) on %s to %s', names, s.relid::regclass, quote_ident(current_user));
        end;
        get diagnostics n = row_count;
        taken := taken + n;
        exit when taken >= page_limit;
    end loop;
end
$$;
