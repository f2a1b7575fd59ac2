-- Sequencing and retention: gap-free positions for committed events, and pruning by position.
--
-- Re-runnable: `rowcast migrate` applies every file of sql/functions/ after the versioned
-- migrations, each time. One current definition per object.

-- One sequencer batch: gives the next gap-free positions to events whose transaction
-- became visible since the last batch's snapshot, in id order (which keeps each row's
-- changes in order), and wakes the tailers. Returns how many it sequenced (-1 when
-- another sequencer holds the counter row) and whether transactions were in progress,
-- so that the caller reads again shortly. The counter row, locked `for update skip
-- locked` for the batch, is the leadership and the guarantee that no position is handed
-- out twice. An event's registration is used only when it belongs to the event's table
-- (or a partitioned table above it) and a capture trigger of that table named it (armed);
-- any other event gets no topics and is delivered to nobody. A batch with nothing to do
-- reads only. docs/architecture.md has the reasoning.
create or replace function rowcast.sequence_step(batch_limit integer default 10000,
                                                 out sequenced bigint, out in_progress boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
as $$
declare
    st     rowcast.sequencer;
    target pg_snapshot;
    top_id bigint;
begin
    if batch_limit is null or batch_limit < 1 then
        raise exception 'rowcast.sequence: batch_limit must be at least 1' using errcode = 'invalid_parameter_value';
    end if;

    select * into st from rowcast.sequencer where singleton;
    if st.pass_snap is null then
        target := pg_current_snapshot();
        if not exists (
            select from rowcast.events e
            where e.txid >= pg_snapshot_xmax(st.snap)
              and e.txid < pg_snapshot_xmax(target)
              and pg_visible_in_snapshot(e.txid, target)
            union all
            select from rowcast.events e
            where e.txid = any (array(select pg_snapshot_xip(st.snap)))
              and pg_visible_in_snapshot(e.txid, target)
        ) then
            sequenced := 0;
            in_progress := exists (select from pg_snapshot_xip(target));
            return;
        end if;
    end if;

    select * into st from rowcast.sequencer where singleton for update skip locked;
    if not found then
        sequenced := -1;
        in_progress := true;
        return;
    end if;
    target := coalesce(st.pass_snap, pg_current_snapshot());
    in_progress := st.pass_snap is not null or exists (select from pg_snapshot_xip(target));

    with batch as (
        select e.id, e.txid, e.relid, e.op, e.routing_id, e.data, e.old, e.ts from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(target)
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        union all
        select e.id, e.txid, e.relid, e.op, e.routing_id, e.data, e.old, e.ts from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, target)
          and e.id + 0 > st.pass_id
        order by id
        limit batch_limit
    ), current_regs as materialized (
        -- Once per registration in the batch: a registration still in use whose table
        -- was renamed (and not re-registered: see rowcast.watched) routes nothing, so
        -- that no table publishes on a name it no longer has. One replaced since routes
        -- what was captured before it was replaced, under the names of that time.
        select r.id from rowcast.routings r
        where r.id in (select distinct b.routing_id from batch b)
          and r.armed_at is not null
          and (r.disarmed_at is not null
               or r.table_name = coalesce(rowcast.shown_name(r.relid::regclass), r.table_name))
    ), ins as (
        insert into rowcast.log (pos, event_id, txid, topics, kept, routing_id)
        select st.last_pos + row_number() over (order by b.id), b.id, b.txid,
               case when b.op = 'PUBLISH' and b.relid = 0 then array[b.old ->> 'topic']
                    else coalesce(t.topics, '{}') end,
               t.kept, r.id
        from batch b
        left join rowcast.routings r
          on r.id = b.routing_id
         and r.id in (select c.id from current_regs c)
         and (r.disarmed_at is null or b.ts < r.disarmed_at)
         and (r.relid = b.relid
              or r.relid in (select a.relid from pg_partition_ancestors(b.relid) a))
        left join lateral rowcast.route_event(r, b.op, b.data, b.old) t on true
        returning pos, event_id
    )
    select count(*), max(event_id) into sequenced, top_id from ins;

    if sequenced < batch_limit then
        update rowcast.sequencer
        set last_pos = st.last_pos + sequenced, snap = target, pass_snap = null, pass_id = 0,
            updated_at = clock_timestamp()
        where singleton;
    else
        update rowcast.sequencer
        set last_pos = st.last_pos + sequenced, pass_snap = target, pass_id = top_id,
            updated_at = clock_timestamp()
        where singleton;
    end if;

    if sequenced > 0 then
        perform pg_catalog.pg_notify('rowcast_seq', (st.last_pos + sequenced)::text);
    end if;
end
$$;

-- Retired: the service read a batch's changes inside the batch's transaction, so a
-- replica that stopped reading its result kept the counter row locked. It reads them
-- after the batch has committed now (docs/architecture.md, "Sequencing").
drop function if exists rowcast.sequence_step_changes(integer, integer);

-- Whether committed events wait for a position: `waiting` when any event visible now is
-- not covered by the sequencer's snapshot (or a pass is unfinished), the capture time of
-- the oldest such event, and the last position handed out. The service samples it to
-- tell a stalled sequencer from an idle one (readiness, metrics, taking over from a
-- frozen sequencing replica). Reads only: it takes no lock.
create or replace function rowcast.unsequenced(out waiting boolean, out oldest timestamptz, out last_pos bigint)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    st  rowcast.sequencer;
    cur pg_snapshot := pg_current_snapshot();
begin
    select * into st from rowcast.sequencer s where s.singleton;
    last_pos := st.last_pos;
    select min(x.ts) into oldest from (
        select e.ts from rowcast.events e
        where e.txid >= pg_snapshot_xmax(st.snap)
          and e.txid < pg_snapshot_xmax(cur)
          and pg_visible_in_snapshot(e.txid, cur)
        union all
        select e.ts from rowcast.events e
        where e.txid = any (array(select pg_snapshot_xip(st.snap)))
          and pg_visible_in_snapshot(e.txid, cur)
    ) x;
    waiting := oldest is not null or st.pass_snap is not null;
end
$$;

-- rowcast.sequence_step() without the in-progress hint: the number of events sequenced,
-- or -1 when another sequencer holds the counter row.
create or replace function rowcast.sequence(batch_limit integer default 10000) returns bigint
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.sequenced from rowcast.sequence_step(batch_limit) s
$$;

-- The sequencer's side of the wake-up flag, called in its own transaction right before
-- every batch: clears the flag so that the next writer sends a NOTIFY, and re-seeds the
-- row when a crash emptied the unlogged table. Returns whether the flag is now clear;
-- never waits (a flag row locked by someone else is left as it is: the caller then
-- re-checks on a short timer).
create or replace function rowcast.rearm() returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from rowcast.wake) then
        insert into rowcast.wake (pending) values (false) on conflict do nothing;
    end if;
    perform from rowcast.wake where singleton and pending for update skip locked;
    if not found and exists (select from rowcast.wake where pending) then
        return false;  -- set, and locked by someone else: leave both as they are
    end if;
    if found then
        update rowcast.wake set pending = false where singleton;
    end if;
    -- The flag is clear (as of this transaction's commit): so is the hint.
    if pg_sequence_last_value('rowcast.wake_hint') is not null then
        perform setval('rowcast.wake_hint', 1, false);
    end if;
    return true;
end
$$;

-- One retention batch: deletes, in position order, at most batch_limit log rows beyond
-- the last keep_events positions and sequenced longer than max_age ago, with their event
-- rows, and raises `pruned_pos` in the same transaction. An event without a position is
-- never touched, however old. Returns the number of log rows deleted, or -1 when another
-- session is pruning; call it until it returns less than batch_limit.
create or replace function rowcast.prune(keep_events bigint, max_age interval, batch_limit integer default 10000)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set lock_timeout = '2s'
as $$
declare
    st     record;
    aged   bigint;
    target bigint;
    n      bigint;
    top    bigint;
begin
    if keep_events is null or keep_events < 0 or max_age is null or max_age < interval '0'
       or batch_limit is null or batch_limit < 1 then
        raise exception 'rowcast.prune: keep_events and max_age must be non-negative and batch_limit at least 1'
            using errcode = 'invalid_parameter_value';
    end if;
    -- One pruner at a time (every replica runs one); the others skip this round.
    if not pg_try_advisory_xact_lock(7526676273746144) then
        return -1;
    end if;
    select s.last_pos, s.pruned_pos into st from rowcast.sequencer s where singleton;

    insert into rowcast.log_marks (pos, at)
    select st.last_pos, clock_timestamp()
    where st.last_pos > coalesce((select max(m.pos) from rowcast.log_marks m), -1);

    select max(m.pos) into aged from rowcast.log_marks m where m.at <= clock_timestamp() - max_age;
    target := least(st.last_pos - keep_events, coalesce(aged, 0));
    if target <= st.pruned_pos then
        return 0;
    end if;

    with doomed as (
        select l.pos from rowcast.log l
        where l.pos > st.pruned_pos and l.pos <= target
        order by l.pos
        limit batch_limit
    ), gone as (
        delete from rowcast.log l using doomed d where l.pos = d.pos
        returning l.pos, l.event_id, l.txid
    ), gone_events as (
        delete from rowcast.events e using gone g where e.txid = g.txid and e.id = g.event_id
    )
    select count(*), max(g.pos) into n, top from gone g;

    update rowcast.sequencer
    set pruned_pos = greatest(pruned_pos, case when n < batch_limit then target else top end)
    where singleton;
    -- Marks below the one in use are of no further use.
    delete from rowcast.log_marks m where m.pos < coalesce(aged, 0);
    return n;
end
$$;

-- The last position handed out, as the caller's snapshot sees it: every event at or
-- below it is visible in that snapshot. An application reads its first screen and this
-- in one `repeatable read` transaction, then subscribes with `since` = this position:
-- the events after it bring every change the screen lacks (some it already shows, which
-- applying in order repeats harmlessly). Callable by anyone; it returns a number only.
create or replace function rowcast.head() returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.last_pos from rowcast.sequencer s where s.singleton
$$;
