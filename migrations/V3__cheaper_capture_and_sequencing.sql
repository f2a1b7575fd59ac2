-- rowcast schema, version 3: a cheaper event insert, and a sequencer batch that reuses its
-- plans.
--
-- The capture trigger inserts one row into rowcast.events per change, each one its own
-- INSERT statement. At the first row of every statement PostgreSQL reads each check
-- constraint of the target table back from its stored text form and prepares it again
-- (nothing caches the prepared form across statements), so the check on `op` cost the
-- writer about 5 µs of CPU per row, a sixth of the whole trigger (measured,
-- BENCHMARKS.md "Write overhead"). It guarded nothing the functions can get wrong: only
-- rowcast.capture() (`tg_op`: INSERT, UPDATE or DELETE) and rowcast.capture_truncate()
-- ('TRUNCATE') insert events, no other role may, and the service skips a log row whose
-- `op` it does not know with an error in its log, never delivering it as something else.
alter table rowcast.events drop constraint events_op_check;

comment on column rowcast.events.op is
    'INSERT, UPDATE, DELETE or TRUNCATE, as the capture triggers write it (no check constraint: preparing one costs every capture)';

-- rowcast.sequence_step() ran with plan_cache_mode = force_custom_plan, so every call
-- planned each of its statements again: about 0.6 ms of the sequencer's CPU per round,
-- two thirds of a round that sequences one event (1.05 ms against 0.35 ms, measured,
-- BENCHMARKS.md "Latency"), and a round runs for nearly every commit at 1k writes/s. With
-- the default mode its simple statements keep one plan per connection, and PostgreSQL
-- still plans the batch statement for its actual snapshot bounds whenever a generic
-- plan would cost more. The results are the same either way.
alter function rowcast.sequence_step(integer) reset plan_cache_mode;
