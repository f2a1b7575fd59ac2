//! Versioned migrations of the `rowcast` schema (`migrations/`, embedded at build time).
//!
//! Applied with `refinery`, each migration in its own transaction, recorded in
//! `rowcast.schema_history`. Concurrent runs are serialised with an advisory lock. A
//! database migrated by a newer rowcast (a version this binary does not know) is refused,
//! and [`check`] tells the service whether the schema matches this binary.

use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Where refinery records applied migrations.
pub const HISTORY_TABLE: &str = "rowcast.schema_history";

/// Key of the advisory lock that serialises concurrent `migrate` runs.
const MIGRATE_LOCK: i64 = 0x726f_7763_6173_7401;

/// Why migrating or checking the schema failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database could not be reached or refused a statement.
    #[error("postgres: {}", crate::db::describe_pg(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A migration failed, or the database holds a history this binary does not know.
    #[error("migration failed: {0}")]
    Refinery(#[from] refinery::Error),
    /// The schema `rowcast` is not installed.
    #[error("rowcast is not installed in this database: run `rowcast migrate`")]
    NotInstalled,
    /// Migrations of this binary are not applied yet.
    #[error(
        "the rowcast schema is at version {applied}, this binary needs {expected}: run `rowcast migrate`"
    )]
    Pending {
        /// Highest applied version.
        applied: i64,
        /// Highest version this binary ships.
        expected: i64,
    },
    /// The database was migrated by a newer rowcast.
    #[error(
        "the rowcast schema is at version {applied}, newer than this binary knows ({expected}): upgrade rowcast"
    )]
    Newer {
        /// Highest applied version.
        applied: i64,
        /// Highest version this binary ships.
        expected: i64,
    },
}

/// The migrations this binary ships, in version order.
pub fn embedded_migrations() -> Vec<refinery::Migration> {
    let mut all = embedded::migrations::runner().get_migrations().clone();
    all.sort();
    all
}

/// The highest migration version this binary ships.
pub fn latest_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Applies every pending migration. Returns the versions applied by this call.
pub async fn migrate(client: &mut Client) -> Result<Vec<i64>, MigrateError> {
    migrate_to(client, None).await
}

/// Applies the pending migrations up to and including `version` (every one when `None`),
/// for an upgrade in steps. Returns the versions applied by this call.
pub async fn migrate_to(
    client: &mut Client,
    version: Option<i32>,
) -> Result<Vec<i64>, MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    // PostgreSQL's notices (`schema "rowcast" already exists, skipping`, ...) say nothing
    // the caller needs: only warnings and errors come through while migrating.
    let shown: String = client
        .query_one(
            "select current_setting('client_min_messages'), \
                    set_config('client_min_messages', 'warning', false)",
            &[],
        )
        .await?
        .get(0);
    let result = run(client, version).await;
    // The lock is session-scoped: release it even when the run failed.
    let unlock = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    let restore = client
        .execute(
            "select set_config('client_min_messages', $1, false)",
            &[&shown],
        )
        .await;
    let applied = result?;
    unlock?;
    restore?;
    Ok(applied)
}

async fn run(client: &mut Client, version: Option<i32>) -> Result<Vec<i64>, MigrateError> {
    client
        .batch_execute("create schema if not exists rowcast")
        .await?;
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    let target = version.map_or(refinery::Target::Latest, refinery::Target::Version);
    let report = runner
        .set_target(target)
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(client)
        .await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .collect())
}

/// Checks that the database's schema is exactly what this binary expects.
pub async fn check(client: &Client) -> Result<(), MigrateError> {
    let installed: bool = client
        .query_one("select to_regclass($1) is not null", &[&HISTORY_TABLE])
        .await?
        .get(0);
    if !installed {
        return Err(MigrateError::NotInstalled);
    }
    let applied: i64 = client
        .query_one(
            &format!("select coalesce(max(version), 0)::bigint from {HISTORY_TABLE}"),
            &[],
        )
        .await?
        .get(0);
    let expected = latest_version();
    match applied.cmp(&expected) {
        std::cmp::Ordering::Less => Err(MigrateError::Pending { applied, expected }),
        std::cmp::Ordering::Greater => Err(MigrateError::Newer { applied, expected }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}
