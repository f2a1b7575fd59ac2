-- Variants of the capture trigger for bench/trigger-variants.sh. Each variant is a copy
-- of a capture function with one thing changed, on its own table (10,000 rows like
-- b_plain of bench/write-overhead), so the harness can time the same one-row UPDATE on
-- each. Needs the rowcast schema installed. For measurement only: several variants drop
-- a guarantee (security definer, the UTC pin), which is the point of measuring them.
drop schema if exists trigvar cascade;
create schema trigvar;

create table trigvar.base (id bigint primary key, user_id int not null, provider_id int not null,
                           status text not null, updated_at timestamptz not null default now());
insert into trigvar.base (id, user_id, provider_id, status)
select g, g % 1000, g % 100, 'PENDING' from generate_series(1, 10000) g;

-- Copies of rowcast.events, for the table-layout variants: ev_copy is the table as
-- installed minus any check constraint (as in schema version 3), ev_check adds version 2's
-- check on `op` back, the others change one thing of ev_copy.
create table trigvar.ev_copy (like rowcast.events including all);
alter table trigvar.ev_copy drop constraint if exists events_op_check;
alter table trigvar.ev_copy alter column id set default nextval('rowcast.events_id_seq');
create table trigvar.ev_check (like trigvar.ev_copy including all);
alter table trigvar.ev_check add constraint events_op_check check (op in ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'));
create table trigvar.ev_pk_id (like trigvar.ev_copy including defaults including constraints);
alter table trigvar.ev_pk_id add primary key (id);
create table trigvar.ev_noidx (like trigvar.ev_copy including defaults including constraints);
create table trigvar.ev_nots (like trigvar.ev_copy including all);
alter table trigvar.ev_nots alter column ts drop not null, alter column ts drop default;
-- The outbox of DESIGN.md's measurement: the floor for any PL/pgSQL capture trigger.
create table trigvar.outbox (id bigserial primary key, tbl text, op text, row jsonb);

-- The body of rowcast.capture() as of versions 2 and 3, with %s for the INSERT's target table.
-- Variants are generated from it by textual edits (see the calls below), so every
-- variant differs from v2 only where its name says.
create function trigvar.make(name text, body text, header text) returns void language plpgsql as $$
begin
    execute format('create function trigvar.%I() returns trigger language plpgsql %s as $f$%s$f$',
                   name, header, body);
    execute format('create table trigvar.%I (like trigvar.base including all)', 't_' || name);
    execute format('insert into trigvar.%I select * from trigvar.base', 't_' || name);
    execute format('create trigger c after insert or update or delete on trigvar.%I for each row '
                   'execute function trigvar.%I(''0'', ''t'', ''1'', '''', ''poll'')', 't_' || name, name);
end $$;

create table trigvar.src (name text primary key, body text);
insert into trigvar.src values ('v2', $b$
declare
    new_row jsonb;
    old_row jsonb;
begin
    if tg_op = 'DELETE' then
        new_row := to_jsonb(old);
    else
        new_row := to_jsonb(new);
    end if;
    if tg_nargs > 5 then
        new_row := new_row - tg_argv[5:];
    end if;
    if tg_op = 'UPDATE' then
        old_row := to_jsonb(old);
        if tg_nargs > 5 then
            old_row := old_row - tg_argv[5:];
        end if;
        if new_row = old_row then
            return null;
        end if;
        if pg_column_size(old_row) > 1024 then
            old_row := old_row - array(select s.k from (select jsonb_object_keys(old_row) as k) s
                                       where new_row -> s.k is not distinct from old_row -> s.k);
        end if;
    end if;
    insert into rowcast.events (relid, table_name, op, data, old, mapping_id, routing_id)
    values (tg_argv[0]::oid, tg_argv[1], tg_op, new_row, old_row, nullif(tg_argv[3], '')::int, tg_argv[2]::int);
    if tg_argv[4] = 'notify'
       and (pg_sequence_last_value('rowcast.wake_hint'::regclass) is null
            or current_setting('transaction_isolation') <> 'read committed') then
        perform rowcast.request_wake();
    end if;
    return null;
end
$b$),
-- The same, every name and operator schema-qualified (safe without `set search_path`).
('v2q', $b$
declare
    new_row jsonb;
    old_row jsonb;
begin
    if tg_op operator(pg_catalog.=) 'DELETE' then
        new_row := pg_catalog.to_jsonb(old);
    else
        new_row := pg_catalog.to_jsonb(new);
    end if;
    if tg_nargs operator(pg_catalog.>) 5 then
        new_row := new_row operator(pg_catalog.-) tg_argv[5:];
    end if;
    if tg_op operator(pg_catalog.=) 'UPDATE' then
        old_row := pg_catalog.to_jsonb(old);
        if tg_nargs operator(pg_catalog.>) 5 then
            old_row := old_row operator(pg_catalog.-) tg_argv[5:];
        end if;
        if new_row operator(pg_catalog.=) old_row then
            return null;
        end if;
        if pg_catalog.pg_column_size(old_row) operator(pg_catalog.>) 1024 then
            old_row := old_row operator(pg_catalog.-) array(select s.k from (select pg_catalog.jsonb_object_keys(old_row) as k) s
                                       where not (new_row operator(pg_catalog.->) s.k operator(pg_catalog.=) old_row operator(pg_catalog.->) s.k));
        end if;
    end if;
    insert into rowcast.events (relid, table_name, op, data, old, mapping_id, routing_id)
    values (tg_argv[0]::pg_catalog.oid, tg_argv[1], tg_op, new_row, old_row,
            case when tg_argv[3] operator(pg_catalog.<>) '' then tg_argv[3]::pg_catalog.int4 end,
            tg_argv[2]::pg_catalog.int4);
    if tg_argv[4] operator(pg_catalog.=) 'notify'
       and (pg_catalog.pg_sequence_last_value('rowcast.wake_hint'::pg_catalog.regclass) is null
            or pg_catalog.current_setting('transaction_isolation') operator(pg_catalog.<>) 'read committed') then
        perform rowcast.request_wake();
    end if;
    return null;
end
$b$);

do $$
declare
    v2  text := (select body from trigvar.src where name = 'v2');
    v2q text := (select body from trigvar.src where name = 'v2q');
    ins text := $x$insert into rowcast.events (relid, table_name, op, data, old, mapping_id, routing_id)
    values (tg_argv[0]::oid, tg_argv[1], tg_op, new_row, old_row, nullif(tg_argv[3], '')::int, tg_argv[2]::int);$x$;
    sd  text := 'security definer set search_path = pg_catalog, pg_temp set timezone = ''UTC''';
begin
    -- The trigger machinery alone, and what each clause of the function header costs.
    perform trigvar.make('empty', 'begin return null; end', '');
    perform trigvar.make('empty_secdef', 'begin return null; end', 'security definer');
    perform trigvar.make('empty_sp', 'begin return null; end', 'set search_path = pg_catalog, pg_temp');
    perform trigvar.make('empty_tz', 'begin return null; end', 'set timezone = ''UTC''');
    perform trigvar.make('empty_all', 'begin return null; end', sd);
    -- Version 2 as shipped, and the header variants.
    perform trigvar.make('v2', v2, sd);
    perform trigvar.make('v2_no_tz', v2, 'security definer set search_path = pg_catalog, pg_temp');
    perform trigvar.make('v2q_no_sp', v2q, 'security definer set timezone = ''UTC''');
    perform trigvar.make('v2q_no_cfg', v2q, 'security definer');
    perform trigvar.make('v2_invoker', v2, 'set search_path = pg_catalog, pg_temp set timezone = ''UTC''');
    perform trigvar.make('v2q_bare', v2q, '');
    -- Body variants, header as shipped.
    perform trigvar.make('v2q', v2q, sd);
    perform trigvar.make('no_noop_check', replace(v2, 'if new_row = old_row then', 'if false then'), sd);
    perform trigvar.make('no_colsize', replace(v2, 'if pg_column_size(old_row) > 1024 then', 'if false then'), sd);
    perform trigvar.make('row_to_json', replace(v2, 'to_jsonb(', 'row_to_json('), sd);
    perform trigvar.make('no_old', replace(v2, 'old_row := to_jsonb(old);', 'old_row := null;'), sd);
    perform trigvar.make('no_nargs_check', replace(v2, 'if tg_nargs > 5 then', 'if false then'), sd);
    perform trigvar.make('insert_min', replace(v2, ins,
        $x$insert into rowcast.events (relid, table_name, op, data, old)
    values (0, 't', tg_op, new_row, old_row);$x$), sd);
    perform trigvar.make('ins_const_args', replace(v2, ins,
        $x$insert into rowcast.events (relid, table_name, op, data, old, mapping_id, routing_id)
    values (0, 't', tg_op, new_row, old_row, null, 1);$x$), sd);
    perform trigvar.make('ev_check', replace(v2, 'insert into rowcast.events', 'insert into trigvar.ev_check'), sd);
    perform trigvar.make('no_insert', replace(v2, ins, ''), sd);
    perform trigvar.make('ev_copy', replace(v2, 'insert into rowcast.events', 'insert into trigvar.ev_copy'), sd);
    perform trigvar.make('ev_pk_id', replace(v2, 'insert into rowcast.events', 'insert into trigvar.ev_pk_id'), sd);
    perform trigvar.make('ev_noidx', replace(v2, 'insert into rowcast.events', 'insert into trigvar.ev_noidx'), sd);
    perform trigvar.make('ev_nots', replace(v2, 'insert into rowcast.events', 'insert into trigvar.ev_nots'), sd);
    perform trigvar.make('outbox_min', $b$begin
        insert into trigvar.outbox (tbl, op, row) values (tg_table_name, tg_op, to_jsonb(new));
        return null;
    end$b$, '');
end $$;
-- Version 2 in notify mode (the wake-up hint check), through rowcast.watch as shipped.
create table trigvar.t_shipped_notify (like trigvar.base including all);
insert into trigvar.t_shipped_notify select * from trigvar.base;
create table trigvar.t_shipped_poll (like trigvar.base including all);
insert into trigvar.t_shipped_poll select * from trigvar.base;
create table trigvar.t_plain (like trigvar.base including all);
insert into trigvar.t_plain select * from trigvar.base;
select rowcast.watch('trigvar.t_shipped_notify', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'notify');
select rowcast.watch('trigvar.t_shipped_poll', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'poll');

-- A statement-level trigger with transition tables, doing the v2 work for every row of
-- the statement in one INSERT ... SELECT (UPDATE pairs old and new rows by position,
-- which is how PostgreSQL fills the two transition tables).
create table trigvar.t_stmt (like trigvar.base including all);
insert into trigvar.t_stmt select * from trigvar.base;
create function trigvar.stmt() returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp set timezone = 'UTC' as $f$
begin
    insert into rowcast.events (relid, table_name, op, data, old, mapping_id, routing_id)
    select tg_argv[0]::oid, tg_argv[1], tg_op, n.j, o.j, nullif(tg_argv[3], '')::int, tg_argv[2]::int
    from (select to_jsonb(x) j, row_number() over () rn from new_tab x) n
    join (select to_jsonb(x) j, row_number() over () rn from old_tab x) o using (rn)
    where n.j <> o.j;
    return null;
end $f$;
create trigger c after update on trigvar.t_stmt referencing old table as old_tab new table as new_tab
    for each statement execute function trigvar.stmt('0', 't', '1', '', 'poll');
vacuum analyze;
