//! `rowcast tail`: the event stream in a terminal, for DBAs and developers checking what
//! a write produces.
//!
//! It reads the sequenced log directly, on a connection of its own that LISTENs for new
//! positions, and prints each event's frame, exactly what subscribers receive, or a
//! line per event. It needs a role that may read the log (the installer, or a role given
//! `rowcast.grant_service()`); it starts no service.

use std::io::Write;
use std::time::Duration;

use crate::capture::log;
use crate::db::{DbError, Listener};
use crate::events::Mappings;

/// What to follow and how to print it.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Only events on one of these topics (all events when empty).
    pub topics: Vec<String>,
    /// Start after this position (default: the current head, live only).
    pub since: Option<i64>,
    /// Print each event's JSON frame on a line of its own.
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<u64>,
}

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The database refused or the connection ended.
    #[error(transparent)]
    Db(#[from] DbError),
    /// `since` is older than what retention kept.
    #[error("--since {since} is older than what the log keeps (pruned up to {pruned})")]
    TooOld {
        /// The position asked for.
        since: i64,
        /// Every position up to this one was pruned.
        pruned: i64,
    },
    /// Printing failed (a closed pipe).
    #[error("cannot print: {0}")]
    Io(#[from] std::io::Error),
}

/// Positions read per query.
const WINDOW: i64 = 10_000;
/// Events read per query.
const PAGE: i64 = 1_000;
/// Read anyway this often without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// Follows the log through `pg`, printing to `out`, until `count` events were printed
/// (never, without it) or the connection ends.
pub async fn tail(
    pg: &tokio_postgres::Config,
    options: &TailOptions,
    out: &mut impl Write,
) -> Result<(), TailError> {
    let listener = Listener::connect(pg, &["rowcast_seq"]).await?;
    let client = &listener.client;
    let mut cursor = match options.since {
        Some(since) => {
            let pruned = log::pruned_position(client).await?;
            if since < pruned && since != 0 {
                return Err(TailError::TooOld { since, pruned });
            }
            since.max(pruned)
        }
        None => log::last_position(client).await?,
    };
    let all = client
        .prepare(log::RANGE_SQL)
        .await
        .map_err(DbError::from)?;
    let some = client
        .prepare(log::RANGE_FOR_TOPICS_SQL)
        .await
        .map_err(DbError::from)?;
    let mappings = Mappings::new();
    let mut printed = 0;
    loop {
        let head = log::last_position(client).await?;
        while cursor < head {
            let upto = head.min(cursor + WINDOW);
            let rows = if options.topics.is_empty() {
                log::read_range(client, &all, cursor, upto, PAGE).await?
            } else {
                log::read_range_for_topics(client, &some, cursor, upto, &options.topics, PAGE)
                    .await?
            };
            log::load_rules(client, &mappings, &rows).await?;
            for row in &rows {
                match row {
                    Ok(change) => {
                        let published = log::publishable(change, &mappings);
                        // With --topic, what a subscriber of those topics gets: the
                        // event, or `row.left` on topics the row left.
                        let shown = if options.topics.is_empty() {
                            Some(&published)
                        } else {
                            published.for_topics(|t| options.topics.iter().any(|o| o == t))
                        };
                        let Some(published) = shown else { continue };
                        if options.json {
                            writeln!(out, "{}", published.frame.as_str())?;
                        } else {
                            writeln!(
                                out,
                                "{:>8}  {:<24} {}  [{}]",
                                published.pos,
                                published.event.name(),
                                printable(&change.table),
                                printable(&published.topics.join(", "))
                            )?;
                        }
                        printed += 1;
                        if options.count.is_some_and(|count| printed >= count) {
                            out.flush()?;
                            return Ok(());
                        }
                    }
                    Err(err) => writeln!(out, "{:>8}  (unreadable: {})", err.pos, err.reason)?,
                }
            }
            out.flush()?;
            cursor = match rows.last() {
                Some(last) if rows.len() as i64 >= PAGE => log::position(last),
                _ => upto,
            };
        }
        tokio::select! {
            _ = listener.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = listener.closed() => {
                return Err(DbError::Unexpected("the connection to postgres ended").into());
            }
        }
    }
}

/// `text` for a terminal: control characters (line breaks, escape sequences) written
/// escaped (`\u{1b}`), so that a table name or a topic read from the log cannot forge a
/// line or move the cursor.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown.into()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_in_names_and_topics_are_printed_escaped() {
        assert_eq!(printable("bookings"), "bookings");
        assert_eq!(printable("stats:glo\u{1b}[2Jbal"), "stats:glo\\u{1b}[2Jbal");
        assert_eq!(printable("x\nERROR forged"), "x\\nERROR forged");
        assert_eq!(printable("réservations"), "réservations");
    }
}
