-- Tables for bench/write-overhead.sh: the same 100,000 rows five times.
--   b_plain         no trigger
--   b_notify        watched, wake => 'notify' (flag-gated wake-up)
--   b_poll          watched, wake => 'poll' (no NOTIFY at all)
--   b_notify_every  watched in notify mode plus a NOTIFY in every transaction: what the
--                   capture trigger did before the flag (for comparison only)
--   b_exclude       watched like b_poll, with one more text column, status_note, that is
--                   excluded from the captured rows (what an excluded column costs; its
--                   extra column is also the only other difference from b_poll)
--   b_set           watched like b_notify, but captured by statement triggers
--                   (rowcast.capture_statements) instead of the row trigger
drop table if exists b_plain, b_notify, b_poll, b_notify_every, b_exclude, b_set cascade;
create table b_plain (id bigint primary key, user_id int not null, provider_id int not null,
                      status text not null, updated_at timestamptz not null default now());
insert into b_plain (id, user_id, provider_id, status)
select g, g % 1000, g % 100, 'PENDING' from generate_series(1, 100000) g;
create table b_notify (like b_plain including all);
create table b_poll (like b_plain including all);
create table b_notify_every (like b_plain including all);
insert into b_notify select * from b_plain;
insert into b_poll select * from b_plain;
insert into b_notify_every select * from b_plain;
create table b_set (like b_plain including all);
insert into b_set select * from b_plain;
create table b_exclude (like b_plain including all, status_note text not null default 'no note');
insert into b_exclude select * from b_plain;
select rowcast.watch('b_notify', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'notify');
select rowcast.watch('b_poll', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'poll');
select rowcast.watch('b_exclude', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'poll',
                     exclude => array['status_note']);
select rowcast.watch('b_notify_every', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'notify');
select rowcast.watch('b_set', topic => 'booking', routes => '{"user_id": "user", "provider_id": "provider"}', wake => 'notify');
select rowcast.capture_statements('b_set');
create or replace function b_notify_every_tx() returns trigger language plpgsql as $$
begin
    perform pg_notify('rowcast_wake', '');
    return null;
end $$;
create trigger b_notify_every_tx after update on b_notify_every
    for each row execute function b_notify_every_tx();
vacuum analyze b_plain, b_notify, b_poll, b_notify_every, b_exclude, b_set;
