-- The writers of bench/write-overhead.sh and bench/write-cpu.sh: an application role
-- (psql variable `writer`, created if missing) that owns none of the bench tables and may
-- update them, so that rowcast.events' insert policy applies to it as to an application.
select not exists (select from pg_roles where rolname = :'writer') as missing \gset
\if :missing
    create role :"writer" login nosuperuser;
\endif
grant usage on schema public to :"writer";
grant select, update on b_plain, b_notify, b_poll, b_notify_every, b_exclude, b_set to :"writer";
select r.rolsuper or exists (select from pg_class c where c.relname like 'b\_%' and c.relnamespace = 'public'::regnamespace
                                                     and pg_has_role(r.oid, c.relowner, 'USAGE')) as bypasses
from pg_roles r where r.rolname = :'writer' \gset
\if :bypasses
    \warn 'warning: the writer is a superuser or owns the tables: row-level security does not apply to it'
\endif
