-- rowcast: remove every capture trigger, then the schema rowcast with its log and
-- functions. Application tables and their data are untouched.
--   psql -v ON_ERROR_STOP=1 -f sql/uninstall.sql      (or: rowcast uninstall)
do $$
declare
    r record;
begin
    if to_regnamespace('rowcast') is null then
        return;
    end if;
    for r in
        select t.tgrelid::regclass as tbl, t.tgname
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_proc p on p.oid = t.tgfoid
        join pg_catalog.pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'rowcast' and not t.tgisinternal and t.tgparentid = 0
    loop
        execute format('drop trigger %I on %s', r.tgname, r.tbl);
    end loop;
end
$$;
drop schema if exists rowcast cascade;
