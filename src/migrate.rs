//! Installing and upgrading the `rowcast` schema, both embedded at build time.
//!
//! Schema changes are versioned migrations (`migrations/`), applied with `refinery`, each
//! in its own transaction, recorded in `rowcast.schema_history`. Functions, views and
//! triggers are re-runnable files (`sql/functions/`, one current definition each),
//! applied after the migrations on every run, in one transaction, and recorded by
//! checksum in `rowcast.functions`. Concurrent runs are serialised with an advisory lock.
//! A database migrated by a newer rowcast is refused, and [`check`] tells the service
//! whether the schema and the functions match this binary.

use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The re-runnable files of `sql/functions/`, in the order they are applied.
pub(crate) const FUNCTIONS: &[(&str, &str)] = &[
    (
        "10_topics.sql",
        include_str!("../sql/functions/10_topics.sql"),
    ),
    (
        "20_capture.sql",
        include_str!("../sql/functions/20_capture.sql"),
    ),
    (
        "30_sequence.sql",
        include_str!("../sql/functions/30_sequence.sql"),
    ),
    (
        "40_rules.sql",
        include_str!("../sql/functions/40_rules.sql"),
    ),
    (
        "50_registry.sql",
        include_str!("../sql/functions/50_registry.sql"),
    ),
    (
        "55_snapshot.sql",
        include_str!("../sql/functions/55_snapshot.sql"),
    ),
    (
        "60_schema_changes.sql",
        include_str!("../sql/functions/60_schema_changes.sql"),
    ),
    (
        "70_views.sql",
        include_str!("../sql/functions/70_views.sql"),
    ),
    (
        "80_grants.sql",
        include_str!("../sql/functions/80_grants.sql"),
    ),
];

/// A checksum of [`FUNCTIONS`] (64-bit FNV-1a over names and texts, in hex): what
/// `rowcast.functions` records and [`check`] compares.
pub(crate) fn functions_checksum() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, sql) in FUNCTIONS {
        for byte in name.bytes().chain([0]).chain(sql.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// The statement that records [`functions_checksum`] as installed.
pub(crate) fn record_functions_sql() -> String {
    format!(
        "insert into rowcast.functions (checksum) values ('{}') \
         on conflict (singleton) do update set checksum = excluded.checksum, applied_on = clock_timestamp();",
        functions_checksum()
    )
}

/// Where refinery records applied migrations.
pub(crate) const HISTORY_TABLE: &str = "rowcast.schema_history";

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
    /// The functions installed are not this binary's (another rowcast migrated last).
    #[error("the rowcast functions in this database are not this binary's: run `rowcast migrate`")]
    FunctionsDiffer,
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
pub(crate) fn embedded_migrations() -> Vec<refinery::Migration> {
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

/// Applies every pending migration, then (re)installs the functions. Returns the
/// versions applied by this call.
pub async fn migrate(client: &mut Client) -> Result<Vec<i64>, MigrateError> {
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
    let result = run(client).await;
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

async fn run(client: &mut Client) -> Result<Vec<i64>, MigrateError> {
    client
        .batch_execute("create schema if not exists rowcast")
        .await?;
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    let report = runner
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(client)
        .await?;
    install_functions(client).await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .collect())
}

/// Remembers who may execute which `rowcast` function (not its owner, not public): a
/// file of [`FUNCTIONS`] that replaces a function by one of another signature drops the
/// old one, and with it the grants a DBA made to it.
const SAVE_GRANTS_SQL: &str = "create temp table rowcast_kept_grants on commit drop as \
     select p.proname::text as name, p.oid::regprocedure::text as signature, a.grantee \
     from pg_catalog.pg_proc p cross join lateral pg_catalog.aclexplode(p.proacl) a \
     where p.pronamespace = 'rowcast'::regnamespace and a.privilege_type = 'EXECUTE' \
       and a.grantee <> 0 and a.grantee <> p.proowner; \
     create temp table rowcast_kept_functions on commit drop as \
     select p.oid::regprocedure::text as signature from pg_catalog.pg_proc p \
     where p.pronamespace = 'rowcast'::regnamespace";

/// Gives the grants of a function that is gone (dropped by a file) to the functions of
/// its name this run created; a function still there keeps exactly its own grants.
const RESTORE_GRANTS_SQL: &str = "do $$ declare g record; begin \
     for g in select distinct p.oid::regprocedure as f, k.grantee::regrole as r \
              from rowcast_kept_grants k join pg_catalog.pg_proc p \
                on p.proname = k.name and p.pronamespace = 'rowcast'::regnamespace \
              where pg_catalog.to_regprocedure(k.signature) is null \
                and p.oid::regprocedure::text not in (select signature from rowcast_kept_functions) \
                and not pg_catalog.has_function_privilege(k.grantee, p.oid, 'EXECUTE') loop \
         execute pg_catalog.format('grant execute on function %s to %s', g.f, g.r); \
     end loop; end $$";

/// Applies every file of [`FUNCTIONS`] and records their checksum, in one transaction,
/// keeping the grants made to functions a file replaces.
async fn install_functions(client: &mut Client) -> Result<(), MigrateError> {
    let tx = client.transaction().await?;
    tx.batch_execute(SAVE_GRANTS_SQL).await?;
    for (_, sql) in FUNCTIONS {
        tx.batch_execute(sql).await?;
    }
    tx.batch_execute(RESTORE_GRANTS_SQL).await?;
    tx.batch_execute(&record_functions_sql()).await?;
    tx.commit().await?;
    Ok(())
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
        std::cmp::Ordering::Equal => {
            let installed: Option<String> = client
                .query_opt("select checksum from rowcast.functions", &[])
                .await?
                .map(|row| row.get(0));
            if installed.as_deref() == Some(functions_checksum().as_str()) {
                Ok(())
            } else {
                Err(MigrateError::FunctionsDiffer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_sql_functions_is_applied_in_name_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/functions");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = FUNCTIONS.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, listed);
    }

    /// A function body is parsed in its caller's session, and any role may turn
    /// `standard_conforming_strings` off, which makes a backslash in a plain '...'
    /// literal an escape (`'\.'` becomes `'.'`, any character). Only E'...' literals
    /// read the same either way: a backslash anywhere else (code, '...' literals, across
    /// lines) is refused; comments are skipped.
    #[test]
    fn no_literal_in_the_functions_depends_on_standard_conforming_strings() {
        for (name, text) in FUNCTIONS {
            let chars: Vec<char> = text.chars().collect();
            let line_of = |at: usize| chars[..at].iter().filter(|c| **c == '\n').count() + 1;
            let word = |c: char| c.is_alphanumeric() || c == '_';
            let (mut i, mut literal, mut escapes) = (0, false, false);
            while i < chars.len() {
                let c = chars[i];
                if literal {
                    if c == '\'' && chars.get(i + 1) == Some(&'\'') {
                        i += 1;
                    } else if c == '\'' {
                        literal = false;
                    } else if c == '\\' {
                        assert!(
                            escapes,
                            "{name}:{}: a backslash in a '...' literal",
                            line_of(i)
                        );
                        i += 1;
                    }
                } else if c == '-' && chars.get(i + 1) == Some(&'-') {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                } else if c == '\'' {
                    literal = true;
                    escapes = i > 0
                        && chars[i - 1].eq_ignore_ascii_case(&'e')
                        && (i < 2 || !word(chars[i - 2]));
                } else {
                    assert!(
                        c != '\\',
                        "{name}:{}: a backslash outside a literal",
                        line_of(i)
                    );
                }
                i += 1;
            }
            assert!(!literal, "{name}: a literal is not closed");
        }
    }
}
