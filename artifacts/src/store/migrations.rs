//! The artifact database's schema: numbered migrations run by [refinery], in one transaction
//! with everything the store checks on opening.
//!
//! The migrations are SQL files, `artifacts/migrations/sqlite/V{N}__{name}.sql`, embedded in
//! the binary. Refinery records each one it applied (version, name, checksum) in
//! `refinery_schema_history`; a migration that was applied is never edited (its checksum
//! would no longer match: opening fails), a change is a new file with the next number.
//!
//! Why refinery: it is the maintained migration tool of the Rust ecosystem that runs the same
//! embedded, versioned migrations on SQLite (rusqlite) and on PostgreSQL (`postgres`,
//! `tokio-postgres`) — the store's metadata is to move to PostgreSQL for multi-node mirrors,
//! which will then have a `migrations/postgres/` set of its own run by the same tool. It works
//! on a connection we hand it (no own pool, no CLI needed at run time) and fails on a
//! divergent or missing migration. Alternatives: `rusqlite_migration` is SQLite only; sqlx's
//! migrator needs sqlx's own SQLite driver (a second SQLite library beside rusqlite's).
//!
//! We drive refinery through its driver traits on the open transaction ([`InTransaction`])
//! instead of its own rusqlite driver, which begins a transaction per call: so the
//! newer-schema check, the baseline of a legacy database, every migration and the
//! `user_version` are one `BEGIN IMMEDIATE` transaction — a process opening the store at the
//! same time sees the old schema or the new one, and a failed migration leaves it untouched.
//!
//! `PRAGMA user_version` keeps saying the schema version (the latest migration applied), so
//! a precomp from before refinery refuses a database that is newer than it knows, and opens
//! one of its own version.
//!
//! Databases written before the migrations were numbered here (schema versions 1 to 4, said
//! by `user_version` alone) are baselined ([`legacy_baseline`]): the migrations up to their
//! version are recorded as applied without running, then the later ones run.

use rusqlite::Transaction;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// The table refinery records applied migrations in.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// Every migration this precomp knows, in order.
fn runner() -> refinery::Runner {
    let mut runner = embedded::migrations::runner()
        .set_grouped(true)
        .set_abort_divergent(true)
        .set_abort_missing(true);
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

/// The schema version this precomp writes: its latest migration's.
pub(crate) fn latest_version() -> i64 {
    runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// What [`migrate`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// The schema version the database had (0: a new database).
    pub from: i64,
    pub to: i64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    /// The database was written by a newer precomp.
    #[error("schema version {found}")]
    Newer { found: i64 },
    #[error("migration: {0}")]
    Migration(#[from] refinery::Error),
}

/// Brings the database to [`latest_version`] inside `tx` (which the caller commits), or
/// refuses a newer one untouched.
pub(crate) fn migrate(tx: &Transaction<'_>) -> Result<Migrated, MigrateError> {
    let latest = latest_version();
    let user_version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let recorded = recorded_version(tx)?;
    let found = recorded.unwrap_or(0).max(user_version);
    if found > latest {
        return Err(MigrateError::Newer { found });
    }
    let mut conn = InTransaction(tx);
    if recorded.is_none() && user_version > 0 {
        let baseline = legacy_baseline(tx, user_version)?;
        runner()
            .set_target(refinery::Target::FakeVersion(baseline as _))
            .run(&mut conn)?;
    }
    runner().run(&mut conn)?;
    if found > 0 && found < RECIPE_VERSION {
        fill_recipes(tx)?;
    }
    tx.pragma_update(None, "user_version", latest)?;
    Ok(Migrated {
        from: found,
        to: latest,
    })
}

/// The migration that added `manifests.recipe`.
const RECIPE_VERSION: i64 = 6;

/// Fills in `manifests.recipe` of the rows a database from before [`RECIPE_VERSION`] holds,
/// from each signed manifest's `Provenance.recipe`: a mirror older than the builders that
/// published to it stored their recipe in the manifest's bytes without knowing it. A row
/// whose manifest records none (or, which the mirror never stores, does not decode) stays
/// NULL: an unknown recipe.
fn fill_recipes(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    use precomp_proto::manifest::{Manifest, SignedManifest};
    use prost::Message;
    let rows: Vec<(String, Vec<u8>)> = {
        let mut stmt = tx.prepare("SELECT key, signed_manifest FROM manifests")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (key, bytes) in rows {
        let recipe = SignedManifest::decode(bytes.as_slice())
            .ok()
            .and_then(|signed| Manifest::decode(signed.manifest.as_slice()).ok())
            .and_then(|manifest| manifest.provenance)
            .and_then(|provenance| provenance.recipe);
        if let Some(recipe) = recipe {
            tx.execute(
                "UPDATE manifests SET recipe = ?2 WHERE key = ?1",
                rusqlite::params![key, recipe],
            )?;
        }
    }
    Ok(())
}

/// The latest migration refinery recorded; `None` when it never ran on this database.
fn recorded_version(tx: &Transaction<'_>) -> rusqlite::Result<Option<i64>> {
    let exists: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [HISTORY_TABLE],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    tx.query_row(
        &format!("SELECT max(version) FROM {HISTORY_TABLE}"),
        [],
        |row| row.get(0),
    )
}

/// The migration a database of schema `version` from before refinery is at, once the tables
/// its version gained without a new number are in place. Versions 1 and 4 each existed in
/// several shapes (tables were added without bumping the version; two lines of development
/// both called their schema 4):
/// - 1: verdicts, leases and artifact_use came during version 1: migration 1 (all
///   `IF NOT EXISTS`) is run again to add what is missing.
/// - 4 without the misses' `request_key` (manifest history only): at 3; migration 4 adds the
///   rest (its `manifest_history` is `IF NOT EXISTS`).
/// - 4 with it (config variants, perhaps without manifest history): at 4, once
///   `manifest_history` exists.
fn legacy_baseline(tx: &Transaction<'_>, version: i64) -> rusqlite::Result<i64> {
    match version {
        1 => {
            let runner = runner();
            let first = runner
                .get_migrations()
                .iter()
                .find(|m| m.version() == 1)
                .and_then(|m| m.sql())
                .expect("migration 1 is embedded");
            tx.execute_batch(first)?;
            Ok(1)
        }
        4 => {
            let has_request_key: bool = tx.query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('misses') WHERE name = 'request_key'",
                [],
                |row| row.get(0),
            )?;
            if has_request_key {
                tx.execute_batch(super::history::LEGACY_HISTORY_SCHEMA)?;
                Ok(4)
            } else {
                Ok(3)
            }
        }
        other => Ok(other),
    }
}

/// Refinery's driver traits on an open transaction: every statement runs in it, none begins
/// or commits one of its own.
struct InTransaction<'a, 'c>(&'a Transaction<'c>);

impl refinery_core::traits::sync::Transaction for InTransaction<'_, '_> {
    type Error = rusqlite::Error;

    fn execute<'q, T: Iterator<Item = &'q str>>(
        &mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let mut count = 0;
        for query in queries {
            self.0.execute_batch(query)?;
            count += 1;
        }
        Ok(count)
    }
}

impl refinery_core::traits::sync::Query<Vec<refinery::Migration>> for InTransaction<'_, '_> {
    fn query(&mut self, query: &str) -> Result<Vec<refinery::Migration>, Self::Error> {
        let mut stmt = self.0.prepare(query)?;
        let rows = stmt.query_map([], |row| {
            let version: refinery::SchemaVersion = row.get(0)?;
            let name: String = row.get(1)?;
            let applied_on: String = row.get(2)?;
            let checksum: String = row.get(3)?;
            Ok((version, name, applied_on, checksum))
        })?;
        let mut applied = Vec::new();
        for row in rows {
            let (version, name, applied_on, checksum) = row?;
            let bad = |what: &str| {
                rusqlite::Error::InvalidColumnType(
                    0,
                    format!("{HISTORY_TABLE}: migration {version}'s {what}"),
                    rusqlite::types::Type::Text,
                )
            };
            let applied_on = time::OffsetDateTime::parse(
                &applied_on,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|_| bad("applied_on"))?;
            let checksum = checksum.parse::<u64>().map_err(|_| bad("checksum"))?;
            applied.push(refinery::Migration::applied(
                version, name, applied_on, checksum,
            ));
        }
        Ok(applied)
    }
}

impl refinery::Migrate for InTransaction<'_, '_> {}
