//! Replay: the log's events on some topics after a position, then the switch to live.
//!
//! Every transport resumes through this module, so a WebSocket, an SSE stream and an
//! HTTP poll given the same `since` send the same frames, built by the same
//! [`log::publishable`] as live ones. Pages are read from the pool ([`read_page`]) in
//! windows of [`SCAN_WINDOW`] positions; a range retention reached is
//! [`ReadError::TooOld`], never a silent gap. A streaming session drives a [`Replay`] and
//! is live once it gets [`Step::Live`]; a `since` too old yields [`Step::Reset`].

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::capture::log;
use crate::db::{self, DbError};
use crate::events::Mappings;
use crate::hub::{Hub, Published, SessionId};
use crate::serve::AppContext;

/// The `reason` of a `reset` whose `since` is older than retention.
pub(crate) const SINCE_TOO_OLD: &str = "since_too_old";

/// Longest one query of a replay read may take (a page is up to
/// [`SCAN_WINDOWS_PER_PAGE`] of them).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Positions one query of a replay covers at most.
pub(crate) const SCAN_WINDOW: i64 = 10_000;

/// Windows one page reads at most before it returns what it found (maybe nothing), so a
/// request for a rare topic far behind the head answers in bounded time.
pub(crate) const SCAN_WINDOWS_PER_PAGE: usize = 20;

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Retention has deleted positions after the requested start.
    #[error("position {after} is older than what the log retains (pruned up to {pruned})")]
    TooOld {
        /// The requested start (exclusive).
        after: i64,
        /// Every position up to this one has been pruned.
        pruned: i64,
    },
}

/// One page of the log for some topics.
#[derive(Debug)]
pub struct Page {
    /// The events, in position order.
    pub events: Vec<Arc<Published>>,
    /// Read through this position: the next page starts after it. It is `upto` once the
    /// whole range has been read.
    pub last: i64,
}

/// Where a read resuming after `since` starts: `since` itself, or for `since = 0` the
/// retention mark (everything still retained). Fails if `since` is older than retention.
pub async fn start(pool: &Pool, since: i64) -> Result<i64, ReadError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let pruned = db::with_timeout(READ_TIMEOUT, log::pruned_position(&client)).await?;
    match since {
        0 => Ok(pruned),
        since if since < pruned => Err(ReadError::TooOld {
            after: since,
            pruned,
        }),
        since => Ok(since),
    }
}

/// Reads up to `limit` events on `topics` with `after < pos <= upto`, window by window
/// (see the module docs), checking that retention had not deleted any of them.
pub async fn read_page(
    pool: &Pool,
    mappings: &Mappings,
    topics: &[String],
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Page, ReadError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let stmt = client
        .prepare_cached(log::RANGE_FOR_TOPICS_SQL)
        .await
        .map_err(DbError::from)?;
    let mut rows = Vec::new();
    let mut last = after;
    for _ in 0..SCAN_WINDOWS_PER_PAGE {
        let end = upto.min(last.saturating_add(SCAN_WINDOW));
        let want = limit - rows.len() as i64;
        let found = db::with_timeout(
            READ_TIMEOUT,
            log::read_range_for_topics(&client, &stmt, last, end, topics, want),
        )
        .await?;
        let full = found.len() as i64 >= want;
        rows.extend(found);
        last = match (full, rows.last()) {
            (true, Some(row)) => log::position(row),
            _ => end,
        };
        if full || last >= upto {
            break;
        }
    }
    db::with_timeout(READ_TIMEOUT, log::load_rules(&client, mappings, &rows)).await?;
    // Read after the rows: the mark moves with the deletes, so if it is still at or
    // below `after` now, nothing in the range had been deleted when the rows were read.
    let pruned = db::with_timeout(READ_TIMEOUT, log::pruned_position(&client)).await?;
    if pruned > after {
        return Err(ReadError::TooOld { after, pruned });
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            // The event, or `row.left` for topics the row left, as live sessions get it.
            Ok(change) => events.extend(
                log::publishable(&change, mappings)
                    .for_topics(|topic| topics.iter().any(|t| t == topic))
                    .cloned(),
            ),
            Err(err) => tracing::error!(error = %err, "skipping unreadable log row in replay"),
        }
    }
    Ok(Page { events, last })
}

/// The head a `reset` announces: where the live stream continues (never below what has
/// been pruned).
pub(crate) fn reset_head(hub: &Hub, pruned: i64) -> i64 {
    hub.head().max(pruned)
}

/// What a replaying session does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send these events, in order.
    Events(Vec<Arc<Published>>),
    /// `since` was older than retention: send a `reset` with this head. The replay goes
    /// on after it.
    Reset {
        /// Where the stream continues.
        head: i64,
    },
    /// The session is live: every event after `upto` reaches its hub queue.
    Live {
        /// The last position covered by the replay.
        upto: i64,
    },
}

/// A session's replay: from `since` to the hub's head, then live.
#[derive(Debug)]
pub(crate) struct Replay {
    hub: Arc<Hub>,
    pool: Pool,
    mappings: Arc<Mappings>,
    id: SessionId,
    topics: Vec<String>,
    since: i64,
    /// Last position read; `None` until the start has been checked against retention.
    after: Option<i64>,
    head: i64,
    page: i64,
}

impl Replay {
    /// A replay for session `id` (subscribed with `replay = true`, which returned `head`)
    /// of the events on `topics` after `since`, read `session.replay_page` at a time.
    pub(crate) fn new(
        ctx: &AppContext,
        id: SessionId,
        topics: Vec<String>,
        since: i64,
        head: i64,
    ) -> Replay {
        Replay {
            hub: ctx.hub.clone(),
            pool: ctx.pool.clone(),
            mappings: ctx.mappings.clone(),
            id,
            topics,
            since,
            after: None,
            head,
            page: ctx.session.replay_page.max(1),
        }
    }

    /// The next step. After [`Step::Live`] the replay is over.
    pub(crate) async fn next(&mut self) -> Result<Step, DbError> {
        let mut after = match self.after {
            Some(after) => after,
            None => match start(&self.pool, self.since).await {
                Ok(after) => after,
                Err(ReadError::TooOld { pruned, .. }) => return Ok(self.reset(pruned)),
                Err(ReadError::Db(err)) => return Err(err),
            },
        };
        loop {
            self.after = Some(after);
            if after < self.head {
                match read_page(
                    &self.pool,
                    &self.mappings,
                    &self.topics,
                    after,
                    self.head,
                    self.page,
                )
                .await
                {
                    Ok(page) => {
                        after = page.last;
                        self.after = Some(after);
                        if !page.events.is_empty() {
                            return Ok(Step::Events(page.events));
                        }
                        continue;
                    }
                    Err(ReadError::TooOld { pruned, .. }) => return Ok(self.reset(pruned)),
                    Err(ReadError::Db(err)) => return Err(err),
                }
            }
            match self.hub.go_live(self.id, after) {
                Ok(()) => return Ok(Step::Live { upto: after }),
                // The tailer published more during the read: read up to the new head.
                Err(newer) => self.head = newer,
            }
        }
    }

    fn reset(&mut self, pruned: i64) -> Step {
        let head = reset_head(&self.hub, pruned);
        tracing::info!(
            session = self.id,
            since = self.since,
            pruned,
            head,
            "resume older than retention: reset"
        );
        self.after = Some(head);
        self.head = self.head.max(head);
        Step::Reset { head }
    }
}
