-- Schema version 7: event rules as data.
--
-- A table's events are rules kept in its registration: `insert`, `update`, `delete`,
-- `<column> set` (null to a value), `<column> cleared` (a value to null), `<column>
-- changed`, `<column> -> v1, v2` (became one of the values) and `<column> -> *` (became
-- another value), each with an event name, tried in order; the first that holds names
-- the event, and a change no rule names is `row.inserted`, `row.updated` or
-- `row.deleted`. The attendance, booking and course domains are presets of such rules
-- (rowcast.preset_rules), written over the kind's field names and resolved through
-- `columns`. `watch(..., rules => '[{"when": "...", "event": "..."}]')` gives a table its
-- own rules, tried before the preset's; a rule of its own for an event of the preset
-- replaces the preset's rule for that event (`"when": null` only removes it).
--
-- watch() resolves every rule against the table (column, type, enum labels) and stores
-- the result in the table's immutable rowcast.mappings row, with each column's number so
-- that renames are followed. The service evaluates the stored rules; it reads nothing
-- else while it names an event. docs/events.md has the language and the presets.

alter table rowcast.mappings alter column kind drop not null;
alter table rowcast.mappings add column rules jsonb;
comment on column rowcast.mappings.rules is
    'the resolved event rules, tried in order: {event, op, test, column, attnum, values, from}';
comment on table rowcast.mappings is
    'rowcast: immutable event rules of a registration (a domain preset through field -> column, and the table''s own rules), referenced by rowcast.routings.mapping_id';

-- The built-in domains, as rules over the fields of rowcast.domain_fields.
create table rowcast.preset_rules (
    kind  text not null,
    ord   int  not null,
    rule  text not null,
    event text not null,
    primary key (kind, ord)
);
comment on table rowcast.preset_rules is
    'rowcast: the event rules of each kind of domain row, over its field names, tried in order';

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

-- Which fields a table of a kind must have is now decided by the rules that read them.
alter table rowcast.domain_fields alter column required set default false;
comment on column rowcast.domain_fields.required is
    'unused since version 7: a field is needed when a preset rule reads it';

-- ── The rule language ────────────────────────────────────────────────────────────────

-- Reads one rule: `insert`, `update`, `delete`, `<column> set|cleared|changed`,
-- `<column> -> v1, v2` or `<column> -> *`. A column may be double-quoted ("startTime"),
-- a value single-quoted ('in progress'). Returns {op} or {op: UPDATE, test, column,
-- values}; raises a clear error for anything else. Reads nothing but its argument.
create function rowcast.parse_rule(rule text) returns jsonb
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
            m := regexp_match(s, '^(\S+)\s+(\S+)$');
            col := m[1];
            rest := m[2];
        end if;
        if col is null or col = '' or col ~ '[\s"]' then
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
        while i <= n and substr(v, i, 1) ~ '\s' loop i := i + 1; end loop;
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
        while i <= n and substr(v, i, 1) ~ '\s' loop i := i + 1; end loop;
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
create function rowcast.rule_text(rule jsonb, col text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when rule ->> 'op' is null then null
        when rule ->> 'test' is null then lower(rule ->> 'op')
        else case when col ~ '^[^\s"]+$' and strpos(col, '->') = 0 then col
                  else '"' || replace(col, '"', '""') || '"' end
             || case rule ->> 'test'
                    when 'becomes' then ' -> ' || (select string_agg(case when v ~ '^[^\s,'']([^,'']*[^\s,''])?$' and v <> '*' then v
                                                                          else quote_literal(v) end, ', ' order by o)
                                                   from jsonb_array_elements_text(rule -> 'values') with ordinality x(v, o))
                    when 'becomes_any' then ' -> *'
                    else ' ' || (rule ->> 'test')
                end
    end
$$;

-- Resolves one rule against a table: the column it reads (through `fields` for a preset
-- rule, whose column names are fields), its number, and its values checked against the
-- column's type. Returns a JSON array of the resolved rule, or an empty array for a
-- preset rule that cannot fire on this table (none of its values is a label of the
-- column's enum). `source` is the preset's kind, or 'rules' for the table's own rules.
create function rowcast.resolve_rule(tbl regclass, rule text, event text, fields jsonb, exclude text[], source text)
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
        elsif class = 'number' and v !~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$' then
            raise exception 'rowcast.watch: the rule for % compares numeric column "%" of table % with %, which is not a number',
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
create function rowcast.resolve_rules(tbl regclass, kind text, fields jsonb, rules jsonb, exclude text[])
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
    if jsonb_typeof(rules) <> 'array' then
        raise exception 'rowcast.watch: rules must be a JSON array of {"when": "<rule>", "event": "<name>"}, tried in order'
            using errcode = 'invalid_parameter_value';
    end if;
    for r in select e.value as v, e.ord from jsonb_array_elements(rules) with ordinality as e(value, ord) loop
        if jsonb_typeof(r.v) <> 'object' or jsonb_typeof(r.v -> 'event') is distinct from 'string'
           or jsonb_typeof(coalesce(r.v -> 'when', 'null')) not in ('string', 'null')
           or exists (select from jsonb_object_keys(r.v) k where k not in ('when', 'event')) then
            raise exception 'rowcast.watch: rule % of rules must be an object {"when": "<rule>", "event": "<name>"}, not %', r.ord, r.v
                using errcode = 'invalid_parameter_value';
        end if;
        ev := r.v ->> 'event';
        if ev !~ '^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$' or length(ev) > 100 then
            raise exception 'rowcast.watch: event name % must be letters, digits and underscores in dot-separated parts, like booking.accepted',
                quote_literal(ev)
                using errcode = 'invalid_parameter_value';
        end if;
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

-- The table's own rules of a stored mapping, in the rule language with the columns' names
-- now (by number): what watch() is given again when a rename is followed.
create function rowcast.own_rules(tbl oid, rules jsonb) returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(jsonb_agg(jsonb_build_object('when', rowcast.rule_text(x.r, a.attname::text), 'event', x.r ->> 'event')
                              order by x.ord), '[]')
    from jsonb_array_elements(coalesce(rules, '[]')) with ordinality as x(r, ord)
    left join pg_catalog.pg_attribute a
           on a.attrelid = tbl and a.attnum = (x.r ->> 'attnum')::int2 and not a.attisdropped
    where x.r ->> 'from' = 'rules'
$$;

-- Mappings made before version 7: the rules of their kind's preset, through their fields.
alter table rowcast.mappings disable trigger mappings_immutable;
update rowcast.mappings m set rules = (
    select coalesce(jsonb_agg(case when x.r ? 'column'
                                   then x.r || jsonb_build_object('column', m.fields ->> (x.r ->> 'column'),
                                                                  'attnum', (m.attnums ->> (x.r ->> 'column'))::int)
                                   else x.r end
                              order by x.ord), '[]')
    from (select p.ord, rowcast.parse_rule(p.rule) || jsonb_build_object('event', p.event, 'from', p.kind) as r
          from rowcast.preset_rules p where p.kind = m.kind) x
    where not x.r ? 'column' or m.fields ? (x.r ->> 'column'))
where m.rules is null;
alter table rowcast.mappings enable trigger mappings_immutable;

-- What is wrong with a mapping of `kind`'s fields onto a table (a mapped column missing,
-- excluded, of the wrong type, or mapped twice), as a message naming the table, the field
-- and the column; null when it is sound. Which fields a table needs is decided by the
-- preset's rules (rowcast.resolve_rules); frames never rename columns, so a column named
-- like a field beside the mapped one is no longer refused.
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

-- Records a registration (as in version 5, with the table's event rules): validates the
-- settings against the table, resolves names to column numbers and rules to the columns
-- they read, and returns the (new or identical earlier) immutable registration and the
-- column numbers to exclude. It changes no table's capture: a registration is used once
-- the table's trigger names it, which only the table's owner (or the installer) can
-- arrange. Security definer because nobody else may write the registry; it only reads
-- the catalog and its arguments, and evaluates no user code.
drop function rowcast.register(regclass, text, jsonb, text[], text, jsonb, text);
create function rowcast.register(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null,
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

    select coalesce(array_agg(x order by x), '{}') into exclude_attnums from unnest(exclude_attnums) x;
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}') into bad_names
    from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attnum = any (exclude_attnums);

    select r.id into routing_id from rowcast.routings r
    where r.relid = tbl and r.armed_at is not null
      and r.table_name = shown and r.table_topic = t_topic and r.topic = register.topic
      and r.topic_default = t_default and r.key_columns = keys and r.key_attnums = key_nums
      and r.route_columns = r_cols and r.route_attnums = r_nums and r.route_topics = r_topics
      and r.exclude_columns = bad_names and r.exclude_attnums = exclude_attnums
      and r.mapping_id is not distinct from m_id
    order by r.id limit 1;
    if routing_id is null then
        insert into rowcast.routings as r (relid, table_name, table_topic, topic, topic_default, key_columns, key_attnums,
                                           route_columns, route_attnums, route_topics, exclude_columns,
                                           exclude_attnums, mapping_id)
        values (tbl, shown, t_topic, topic, t_default, keys, key_nums, r_cols, r_nums, r_topics, bad_names,
                exclude_attnums, m_id)
        returning r.id into routing_id;
    end if;
end
$$;

-- Follows a watched table through ALTER TABLE (as in version 5, with the table's own
-- rules, whose columns are followed by number): when it or its columns were renamed (or
-- its key changed), registers it again from its column numbers and points its triggers
-- at the new registration, in the same transaction. What cannot be followed (a column a
-- registration uses was dropped, a mapping no longer fits) is left as it is and shown in
-- rowcast.watched. Never fails the schema change.
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
    if exists (select from unnest(r.route_attnums) n
               where not exists (select from pg_catalog.pg_attribute a
                                 where a.attrelid = tbl and a.attnum = n and not a.attisdropped)) then
        return;
    end if;
    -- A column the table's own rules read was dropped: shown in rowcast.watched until
    -- watch() is run again with rules that fit.
    if r.mapping_id is not null
       and exists (select from rowcast.mappings x cross join lateral jsonb_array_elements(x.rules) e(rule)
                   where x.id = r.mapping_id and e.rule ->> 'from' = 'rules' and e.rule ? 'attnum'
                     and not exists (select from pg_catalog.pg_attribute a
                                     where a.attrelid = tbl and a.attnum = (e.rule ->> 'attnum')::int2 and not a.attisdropped)) then
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
                                            rowcast.own_rules(tbl, m.rules));
    select coalesce(array_agg(x::int2 order by x::int2), '{}') into now_ex from unnest(args[4:]) x;
    if reg.routing_id <> r.id or reg.exclude_attnums <> now_ex then
        perform rowcast.arm_triggers(tbl::regclass, reg.routing_id, args[3], reg.exclude_attnums);
    end if;
exception when others then
    raise warning 'rowcast: could not follow the schema change of %: % (see rowcast.watched)', tbl::regclass, sqlerrm;
end
$$;

-- ── What a schema change broke ───────────────────────────────────────────────────────

-- Version 5's checks keep their name for what they check; rowcast.problem_of adds the
-- columns of the table's own rules.
alter function rowcast.problem_of(oid, text[]) rename to routing_problem;

-- What a schema change broke in the table's own rules, in words; null when nothing: a
-- column a rule reads was dropped or renamed (and not followed), or its type changed so
-- that the rule's values no longer fit it.
create function rowcast.rules_problem(tbl oid, args text[]) returns text
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
        if x.now_name is null then
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
                          x.rule ->> 'event', x.now_name, regexp_replace(sqlerrm, '^rowcast\.watch: ', ''));
        end;
    end loop;
    return null;
end
$$;

-- What a schema change (or a hand-made trigger) broke in a table's registration, in
-- words; null when nothing. `args` are the table's capture trigger arguments.
create function rowcast.problem_of(tbl oid, args text[]) returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(rowcast.routing_problem(tbl, args),
                    case when args[1] ~ '^[0-9]{1,9}$' then rowcast.rules_problem(tbl, args) end)
$$;

-- ── Watching a table ─────────────────────────────────────────────────────────────────

drop function rowcast.watch(text, text, jsonb, text[], text, jsonb, text);
drop function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text);

-- Watch a table (or update its settings): registers them, then points the table's capture
-- triggers at the registration. Runs with the caller's rights, so only the table's owner
-- (or a member of the owning role) can do it.
create function rowcast.watch(
    tbl     regclass,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null
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
    select * into reg from rowcast.register(tbl, topic, routes, exclude, domain, columns, wake, rules);
    perform rowcast.arm_triggers(tbl, reg.routing_id, wake, reg.exclude_attnums);
    return rowcast.shown_name(tbl);
end
$$;

-- The same, with the table named as the application spells it (rowcast.resolve_table).
create function rowcast.watch(
    tbl     text,
    topic   text    default null,
    routes  jsonb   default '{}',
    exclude text[]  default '{}',
    domain  text    default null,
    columns jsonb   default '{}',
    wake    text    default 'notify',
    rules   jsonb   default null
) returns text
language sql
as $$
    select rowcast.watch(rowcast.resolve_table(tbl), topic, routes, exclude, domain, columns, wake, rules)
$$;

-- ── What is watched ──────────────────────────────────────────────────────────────────

-- As in version 5, with `rules`: the table's rules in the order they are tried, in the
-- rule language with its columns' names now, each with its event and where it comes from
-- (the preset's kind, or 'rules' for the table's own).
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
               on a.attrelid = t.tgrelid and a.attnum = (x.rule ->> 'attnum')::int2 and not a.attisdropped) as rules
from (select distinct on (x.tgrelid) x.* from pg_catalog.pg_trigger x
      where x.tgparentid = 0 and x.tgfoid = 'rowcast.capture()'::regprocedure
      order by x.tgrelid, x.tgname = 'rowcast_capture' desc, x.tgname) t
join pg_catalog.pg_class c on c.oid = t.tgrelid
cross join lateral (select rowcast.capture_args(t.tgrelid) as a) args
cross join lateral (select rowcast.registration_problem(t.tgrelid, args.a) as p) problem
left join rowcast.routings r on args.a[1] ~ '^[0-9]{1,9}$' and r.id = args.a[1]::int and r.relid = t.tgrelid
left join rowcast.mappings m on m.id = r.mapping_id
where (pg_catalog.pg_has_role(c.relowner, 'USAGE')
       or pg_catalog.has_table_privilege('rowcast.routings', 'SELECT'));

-- ── Grants ───────────────────────────────────────────────────────────────────────────

-- A tenant admin: watches, unwatches and reads the status and events of the tables it
-- owns, through functions and filtered views only.
create or replace function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.watched, rowcast.captured, rowcast.domain_fields, rowcast.preset_rules to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb), '
                   'rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb), '
                   'rowcast.unwatch(regclass), rowcast.unwatch(text), '
                   'rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb), '
                   'rowcast.arm_triggers(regclass, integer, text, int2[]), '
                   'rowcast.capture(), rowcast.capture_truncate() to %s', role);
end
$$;

revoke execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb),
    rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb),
    rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb),
    rowcast.parse_rule(text), rowcast.resolve_rule(regclass, text, text, jsonb, text[], text),
    rowcast.resolve_rules(regclass, text, jsonb, jsonb, text[]), rowcast.own_rules(oid, jsonb),
    rowcast.rules_problem(oid, text[]), rowcast.problem_of(oid, text[])
    from public;
-- rowcast.watched writes rules back with the caller's rights.
grant execute on function rowcast.rule_text(jsonb, text) to public;

-- Roles that were tenant admins keep watch() and register() in their new form.
do $$
declare
    r record;
begin
    for r in
        select a.oid::regrole as role from pg_catalog.pg_roles a
        where not a.rolsuper and a.rolname !~ '^pg_'
          and has_function_privilege(a.oid, 'rowcast.arm_triggers(regclass, integer, text, int2[])', 'EXECUTE')
    loop
        perform rowcast.grant_admin(r.role);
    end loop;
end
$$;
