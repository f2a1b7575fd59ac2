-- Grants: least-privilege roles, and what everyone may call.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- Least-privilege grants, run by the installer once per role:
--   select rowcast.grant_service('rowcast_service');  -- the role `rowcast serve` connects as
--   select rowcast.grant_admin('app_owner');          -- a table owner who runs watch/unwatch
create or replace function rowcast.grant_service(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.events, rowcast.log, rowcast.sequencer, rowcast.watched, '
                   'rowcast.schema_history, rowcast.functions, rowcast.mappings, rowcast.routings, rowcast.domain_fields to %s', role);
    execute format('grant execute on function rowcast.sequence(integer), '
                   'rowcast.sequence_step(integer), rowcast.unsequenced(), rowcast.lock_for_snapshot(text[]), '
                   'rowcast.rearm(), rowcast.prune(bigint, interval, integer), '
                   'rowcast.mapping_error(regclass, text, jsonb, text[]) to %s', role);
end
$$;

-- A tenant admin: watches, unwatches and reads the status and events of the tables it
-- owns, through functions and filtered views only.
create or replace function rowcast.grant_admin(role regrole) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('grant usage on schema rowcast to %s', role);
    execute format('grant select on rowcast.watched, rowcast.captured, rowcast.domain_fields, rowcast.preset_rules to %s', role);
    execute format('grant execute on function rowcast.watch(regclass, text, jsonb, text[], text, jsonb, text, jsonb, boolean), '
                   'rowcast.watch(text, text, jsonb, text[], text, jsonb, text, jsonb, boolean), '
                   'rowcast.unwatch(regclass), rowcast.unwatch(text), '
                   'rowcast.register(regclass, text, jsonb, text[], text, jsonb, text, jsonb, boolean), '
                   'rowcast.arm_triggers(regclass, integer, text, int2[]), '
                   'rowcast.install_capture(regclass, text[], boolean), rowcast.capture_statements(regclass, boolean), '
                   'rowcast.capture(), rowcast.capture_set(), rowcast.capture_truncate() to %s', role);
end
$$;

-- What everyone may call: the capture path's wake-up, what rowcast.watched calls with the
-- caller's rights (the catalog and the registration's problem only), the names watch()
-- reports, the resolution of a table name, the head position for a first screen, and
-- an application's own events. Everything else is revoked from public;
-- grant_service() and grant_admin() give each role its part.
revoke execute on all functions in schema rowcast from public;
grant execute on function rowcast.request_wake(), rowcast.capture_args(oid), rowcast.registration_problem(oid, text[]),
    rowcast.statement_capture_problem(oid),
    rowcast.confirm(regclass), rowcast.shown_name(regclass), rowcast.table_topic(regclass), rowcast.topic_escape(text),
    rowcast.resolve_table(text), rowcast.rule_text(jsonb, text), rowcast.head(),
    rowcast.left_key(rowcast.routings, integer, jsonb, jsonb),
    rowcast.snapshot_sources(text[]), rowcast.snapshot_rows(text[], integer, text[], integer),
    rowcast.reads_as(text, regtype), rowcast.base_type(oid), rowcast.read_kind(oid), rowcast.snapshot_refusal(oid),
    rowcast.publish(text, text, jsonb), rowcast.may_append(oid, text, integer, jsonb),
    rowcast.is_event_name(text), rowcast.is_published_topic(text) to public;

-- Roles given grant_service() or grant_admin() before get what the current definitions
-- need (functions added or replaced since), on every `rowcast migrate`: a service role
-- is one that may execute rowcast.sequence_step(), a tenant admin one that may execute
-- rowcast.unwatch(regclass).
do $$
declare
    r record;
begin
    for r in select distinct a.grantee::regrole as role, f.kind
             from (values ('rowcast.sequence_step(integer)'::regprocedure, 'service'),
                          ('rowcast.unwatch(regclass)'::regprocedure, 'admin')) as f(fn, kind)
             join pg_catalog.pg_proc p on p.oid = f.fn
             cross join lateral pg_catalog.aclexplode(p.proacl) a
             where a.privilege_type = 'EXECUTE' and a.grantee <> 0 and a.grantee <> p.proowner loop
        if r.kind = 'service' then
            perform rowcast.grant_service(r.role);
        else
            perform rowcast.grant_admin(r.role);
        end if;
    end loop;
end
$$;
