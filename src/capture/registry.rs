//! The registry as the service sees it: what a schema change (or a hand-made trigger)
//! broke in a watched table's registration.
//!
//! `rowcast.watched.problem` says it in words, computed from the catalog by column
//! number (see `sql/functions/60_schema_changes.sql`). The service reads it at start-up and on
//! every health sample, logs each problem once, and exports how many tables have one.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio_postgres::Client;

use crate::db::DbError;
use crate::metrics;

/// A watched table whose registration no longer fits the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RegistrationProblem {
    /// The watched table, as events name it.
    pub table: String,
    /// What is wrong, naming the column and what to do.
    pub problem: String,
}

const PROBLEMS_SQL: &str = "select coalesce(table_name, \"table\"::text), problem \
     from rowcast.watched where problem is not null order by 1";

/// Reads the problems of every watched table.
pub async fn problems(client: &Client) -> Result<Vec<RegistrationProblem>, DbError> {
    Ok(client
        .query(PROBLEMS_SQL, &[])
        .await?
        .iter()
        .map(|row| RegistrationProblem {
            table: row.get(0),
            problem: row.get(1),
        })
        .collect())
}

/// Logs each registration problem once (again only after it was mended and came back)
/// and keeps the gauge [`metrics::REGISTRATION_PROBLEMS`] current.
#[derive(Debug)]
pub(crate) struct ProblemLog {
    seen: Mutex<BTreeSet<RegistrationProblem>>,
}

impl Default for ProblemLog {
    fn default() -> Self {
        Self::new()
    }
}

/// The service's one log of registration problems.
pub(crate) static PROBLEMS: ProblemLog = ProblemLog::new();

impl ProblemLog {
    /// An empty log.
    pub(crate) const fn new() -> ProblemLog {
        ProblemLog {
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Records the problems just read; returns those that are new since the last call.
    pub(crate) fn report(&self, now: Vec<RegistrationProblem>) -> Vec<RegistrationProblem> {
        ::metrics::gauge!(metrics::REGISTRATION_PROBLEMS).set(now.len() as f64);
        let now: BTreeSet<_> = now.into_iter().collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: Vec<_> = now.difference(&seen).cloned().collect();
        for p in &fresh {
            tracing::warn!(
                table = ?p.table,
                problem = %p.problem,
                "a watched table's registration no longer fits the table"
            );
        }
        *seen = now;
        fresh
    }

    /// Reads the problems and reports them; a failed read changes nothing.
    pub(crate) async fn check(&self, client: &Client) -> Result<(), DbError> {
        let now = problems(client).await?;
        self.report(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(table: &str, what: &str) -> RegistrationProblem {
        RegistrationProblem {
            table: table.into(),
            problem: what.into(),
        }
    }

    #[test]
    fn a_problem_is_reported_once_until_it_is_mended_and_comes_back() {
        let log = ProblemLog::new();
        assert_eq!(log.report(vec![problem("a", "x")]), vec![problem("a", "x")]);
        assert!(log.report(vec![problem("a", "x")]).is_empty());
        assert_eq!(
            log.report(vec![problem("a", "x"), problem("b", "y")]),
            vec![problem("b", "y")]
        );
        assert!(log.report(vec![]).is_empty());
        assert_eq!(log.report(vec![problem("a", "x")]), vec![problem("a", "x")]);
    }
}
