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
