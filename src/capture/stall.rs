//! Telling a stalled sequencer from an idle one.
//!
//! `rowcast.unsequenced()` says whether committed events wait for positions, and the last
//! position handed out. Sampled on an interval, a [`StallWatch`] keeps how long events
//! have been waiting with no position handed out in between: the stall. It restarts
//! whenever a position is handed out or nothing waits, so a long transaction whose old
//! events just committed, or an idle hour before a write, is no stall. Readiness and the
//! metrics report it; a standing-by sequencer takes over when it passes
//! `sequencer.takeover_after`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::db::DbError;

/// Whether committed events wait for positions, the age of the oldest (seconds, from its
/// capture), and the last position handed out.
pub(crate) const UNSEQUENCED_SQL: &str = "select waiting, \
     coalesce(extract(epoch from clock_timestamp() - oldest)::float8, 0), last_pos \
     from rowcast.unsequenced()";

/// One sample of [`UNSEQUENCED_SQL`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Committed events wait for positions.
    pub(crate) waiting: bool,
    /// Seconds since the oldest of them was captured (0 when none waits).
    pub(crate) oldest: f64,
    /// The last position handed out.
    pub(crate) last_pos: i64,
}

/// Takes a sample through `client`.
pub(crate) async fn sample(client: &Client) -> Result<Sample, DbError> {
    let row = client.query_one(UNSEQUENCED_SQL, &[]).await?;
    Ok(Sample {
        waiting: row.get(0),
        oldest: row.get(1),
        last_pos: row.get(2),
    })
}

/// How long committed events have waited with no position handed out, from samples.
#[derive(Debug, Default)]
pub(crate) struct StallWatch {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last position seen.
    last_pos: i64,
    /// Since when events have waited with `last_pos` unchanged.
    since: Option<Instant>,
    /// The last sample's age of the oldest waiting event.
    oldest: f64,
}

impl StallWatch {
    /// Records a sample taken at `now`.
    pub(crate) fn observe(&self, sample: Sample, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let moved = sample.last_pos != state.last_pos;
        state.since = match (sample.waiting, state.since) {
            (false, _) => None,
            // Still waiting, and nothing was handed out since: the stall goes on.
            (true, Some(since)) if !moved => Some(since),
            (true, _) => Some(now),
        };
        state.last_pos = sample.last_pos;
        state.oldest = if sample.waiting { sample.oldest } else { 0.0 };
    }

    /// How long events have waited with no position handed out, as of `now`.
    pub(crate) fn stalled_for(&self, now: Instant) -> Duration {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Seconds since the oldest event waiting for a position was captured (last sample).
    pub(crate) fn oldest_waiting(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(waiting: bool, last_pos: i64) -> Sample {
        Sample {
            waiting,
            oldest: if waiting { 3.0 } else { 0.0 },
            last_pos,
        }
    }

    #[test]
    fn a_stall_lasts_while_events_wait_and_no_position_is_handed_out() {
        let watch = StallWatch::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        watch.observe(sample(false, 5), at(0));
        assert_eq!(watch.stalled_for(at(100)), Duration::ZERO);
        // Events wait; the clock starts at the first sample that sees them.
        watch.observe(sample(true, 5), at(1000));
        watch.observe(sample(true, 5), at(2000));
        assert_eq!(watch.stalled_for(at(2500)), Duration::from_millis(1500));
        assert_eq!(watch.oldest_waiting(), 3.0);
        // A position handed out restarts it, though events still wait.
        watch.observe(sample(true, 9), at(3000));
        assert_eq!(watch.stalled_for(at(3000)), Duration::ZERO);
        watch.observe(sample(true, 9), at(4000));
        assert_eq!(watch.stalled_for(at(4000)), Duration::from_millis(1000));
        // Nothing waits: no stall.
        watch.observe(sample(false, 9), at(5000));
        assert_eq!(watch.stalled_for(at(9000)), Duration::ZERO);
        assert_eq!(watch.oldest_waiting(), 0.0);
    }
}
