-- Views: what is watched and how, and the captured events of a tenant's own tables.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- What is watched, and how: one row per table whose capture trigger rowcast.watch made,
-- with column names as they are now. Tenant admins see the tables they own; the installer
-- and service roles see all. `problem` says what a schema change broke; `rules` lists the
-- table's event rules in the order they are tried, with the columns' names now and where
-- each comes from (the preset's kind, or 'rules' for the table's own).
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
               on a.attrelid = t.tgrelid and a.attnum = (x.rule ->> 'attnum')::int2 and not a.attisdropped) as rules,
       coalesce(r.snapshot, false) as snapshot
from (select distinct on (x.tgrelid) x.* from pg_catalog.pg_trigger x
      where x.tgparentid = 0 and x.tgfoid in ('rowcast.capture()'::regprocedure, 'rowcast.capture_set()'::regprocedure)
      order by x.tgrelid, x.tgname = 'rowcast_capture' desc, x.tgname) t
join pg_catalog.pg_class c on c.oid = t.tgrelid
cross join lateral (select rowcast.capture_args(t.tgrelid) as a) args
cross join lateral (select rowcast.registration_problem(t.tgrelid, args.a) as p) problem
left join rowcast.routings r on args.a[1] ~ '^[0-9]{1,9}$' and r.id = args.a[1]::int and r.relid = t.tgrelid
left join rowcast.mappings m on m.id = r.mapping_id
where (pg_catalog.pg_has_role(c.relowner, 'USAGE')
       or pg_catalog.has_table_privilege('rowcast.routings', 'SELECT'));

comment on view rowcast.watched is
    'rowcast: the watched tables (those the caller owns, or all for the service), their settings by current column names, and what a schema change broke';

-- The sequenced events of the tables the caller owns, for tenant admins.
create or replace view rowcast.captured with (security_barrier) as
select l.pos,
       r.table_name,
       e.op,
       l.topics,
       e.data,
       e.old,
       e.ts
from rowcast.log l
join rowcast.events e on e.txid = l.txid and e.id = l.event_id
left join rowcast.routings r on r.id = l.routing_id
join pg_catalog.pg_class c on c.oid = coalesce(r.relid, e.relid)
where pg_catalog.pg_has_role(c.relowner, 'USAGE');

comment on view rowcast.captured is 'rowcast: the sequenced events of the tables the caller owns';
