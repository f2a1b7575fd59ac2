-- The first screen: which registrations serve snapshots, and which topics an event's row left.

-- Set by rowcast.watch(..., snapshot => true): GET /snapshot may return the table's
-- current rows (the service role then needs select on the table).
alter table rowcast.routings add column snapshot boolean not null default false;
comment on column rowcast.routings.snapshot is
    'whether GET /snapshot may return the table''s current rows (rowcast.watch(..., snapshot => true))';

-- An UPDATE that moves a row off a row topic or a routed topic: the topics from the new
-- row come first in `topics`, then the ones only the old row had. Null when every topic
-- gets the whole event.
alter table rowcast.log add column kept smallint;
comment on column rowcast.log.kept is
    'null: every topic gets the whole event; n: the first n topics do, the rest are topics the row left (they get a key-only row.left)';
