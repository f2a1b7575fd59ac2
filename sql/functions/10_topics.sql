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
