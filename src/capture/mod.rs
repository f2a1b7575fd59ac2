//! Capture: from the trigger's change log to ordered events.
//!
//! The capture trigger (SQL, in `migrations/`) writes `rowcast.events` in the writer's
//! transaction; the [`sequencer`] gives committed events positions in `rowcast.log`;
//! the [`tail`]er follows the log and hands events to the hub; [`log`] reads it (and
//! [`changed`] keeps an UPDATE's changed columns); [`prune`] deletes what retention no
//! longer keeps; [`registry`] reports what a schema change broke in a registration;
//! [`stall`] tells a stalled sequencer from an idle one; [`bus`] carries the log from the
//! sequencing replica to the others through NATS JetStream, when one is configured.

pub mod bus;
pub(crate) mod changed;
pub mod log;
pub mod prune;
pub mod registry;
pub(crate) mod sequencer;
pub(crate) mod stall;
pub mod tail;
