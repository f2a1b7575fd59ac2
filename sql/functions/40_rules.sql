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
