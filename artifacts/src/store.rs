//! The artifact store: metadata in its own SQLite database, artifacts as content-addressed
//! blobs beside it.
//!
//! ```text
//! DATA/artifacts/artifacts.db            tokens, artifacts, manifests, failures, misses,
//!                                        leases (WAL)
//! DATA/artifacts/blobs/sha256/ab/abcd…   artifact tarballs, named by their sha256
//! DATA/artifacts/tmp/                    uploads being received
//! DATA/artifacts/store.lock              held (shared) by every process with the store open
//! ```
//!
//! A separate database from the mirror's (`DATA/mirror/mirror.db`) because the two hold
//! different kinds of data: the mirror's store is a cache of upstream that can be deleted and
//! refilled, this one is the only copy of what builders published and of the tokens. It is
//! backed up, kept and collected on its own terms, and `precomp token` opens it without
//! touching the mirror's cache.
//!
//! An upload is written to `tmp/` while its sha256 is computed, synced, and renamed into
//! `blobs/` only if the digest is the one the path names; its row is committed after. Signed
//! manifests (bounded, small) are rows: a manifest, its index entry and the misses it closes
//! are one transaction. Several processes may share the store (`precomp serve` and `precomp
//! token`): SQLite in WAL mode with a busy timeout serialises their writes, and `tmp/` is
//! emptied only by a process that has the store to itself.
//!
//! The store owns its schema: numbered migrations (`artifacts/migrations/sqlite/`, run by
//! refinery when the store is opened, in one transaction; [`migrations`]). Nothing else opens
//! the database: what `precomp gc`, `backup` and `restore` need are methods here.
//!
//! Behind a trait, for the PostgreSQL store multi-node mirrors need: [`MetadataStore`]
//! ([`metadata`]) is every operation the service ([`crate::Artifacts`], which holds it as
//! `Arc<dyn MetadataStore>`) asks of its metadata — tokens, artifact rows, manifests and their
//! history ([`history`]), the index, failures, misses, verdicts ([`verdicts`]), job leases
//! ([`jobs`]) and what gc reads and drops ([`maintenance`]) — as domain methods, each one
//! transaction, with typed errors ([`ArtifactStoreError`], [`jobs::JobError`]) and neither SQL
//! types nor HTTP statuses in their signatures (the service maps errors to statuses in one
//! place: `impl From<ArtifactStoreError> for Refusal`). [`ArtifactStore`] is its SQLite
//! implementation, and every operation is written once, in the `impl MetadataStore for
//! ArtifactStore` block of this file (grouped as the trait is); the children hold the domain
//! types and the SQL helpers those operations share. Times come from one clock ([`now`]) or,
//! for leases, from the caller (`now_ms`). [`contract`] holds the behaviours any
//! implementation must have, as functions on a `&dyn MetadataStore` (run here on SQLite).
//!
//! [`open_metadata`] (and [`open_existing_metadata`]) is the one place that chooses the
//! implementation, for the service and for the commands beside it (`precomp token`, `gc`,
//! `store scrub`): no other crate names [`ArtifactStore`], which is not exported. What only
//! SQLite has stays inherent to it or SQLite-only by name: opening and migrating the
//! database file under its lock, and the online backup of that file
//! ([`maintenance::snapshot`], whose result `precomp restore` puts back as a file).
//!
//! Artifact bodies are not metadata: they stay content-addressed files ([`Blobs`]: stored,
//! listed, removed) beside whichever store holds their rows.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use precomp_proto::manifest::{ArtifactPublicKey, SignedManifest};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use precomp_proto::manifest::Manifest;
use precomp_proto::verdict::{Verdict, MISMATCH};

use history::{history_row, history_rows, published_row, KeyManifest};
use jobs::{
    expires_at, held_job, insert_lease, job_row, record_worker_tuples, select_audit, select_miss,
    Job, JobError, JobRecord, LeaseEnd, LeaseEnded, LeaseQuery, LeasedJob,
};
use maintenance::{gc_view, GcDrop, GcView, NamedArtifact, RecordedArtifact, OLD_CLOSED_MISSES};
use verdicts::VerdictPut;

use super::api::{
    CompileEnvJson, Failure, FailureRecorded, FailureReport, IndexBuild, JobKind, JobListing,
    LeaseTuple, LiveJob, Miss, MissMember, MissRecorded, MissReport, ReleaseOutcome, TupleDemand,
    Verdicts, WorkerSeen,
};
use super::token::{
    digests_equal, new_token, parse_scopes, scopes_text, token_sha256, valid_token_name, Scope,
};
use precomp_proto::buildkey::{compile_env_covers, request_satisfied_by, CompileEnvEntry};
pub(crate) use precomp_proto::time::unix_now as now;

// Audit verdicts: their table's queries and the API's checks (a child module, for the
// store's connection).
pub(super) mod verdicts;

// Build and audit jobs leased to workers (`precomp worker [--audit]`): the `leases` table.
pub mod jobs;

// The store's operations as a trait, for other implementations (PostgreSQL).
mod metadata;
pub use metadata::MetadataStore;

// The behaviours every implementation must have, as tests any implementation can run.
pub mod contract;

// Several manifests for one key: the `manifest_history` table (schema version 4).
pub(super) mod history;

// The schema: numbered migrations (refinery).
mod migrations;

// What gc, backup/restore and scrub need of the store.
pub mod maintenance;

// Artifact bodies on disk, beside the metadata.
mod blobs;
pub use blobs::Blobs;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactStoreError {
    /// The database failed (SQLite's error, or another implementation's).
    #[error("artifact database {path}: {source}")]
    Db {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact {path} is corrupt: its sha256 is {actual}, expected {expected}")]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("artifact database {path} has schema version {found}, newer than this precomp knows ({known}): it was written by a newer precomp; run that one (or a newer), or restore a backup taken before the upgrade")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{} has no artifact store (artifacts.db): is --data the mirror's data directory?", dir.display())]
    NoStore { dir: PathBuf },
    #[error("{}: integrity check failed: {message}", path.display())]
    Integrity { path: PathBuf, message: String },
    #[error("artifact database {}: it stayed busy (another process kept writing); try again", path.display())]
    Busy { path: PathBuf },
    #[error("artifact database {path}: its schema cannot be migrated: {message}")]
    Migration { path: PathBuf, message: String },
    #[error(
        "token name {0:?} must be 1 to 64 letters, digits, `-`, `_` and `.`, not starting with `.`"
    )]
    BadTokenName(String),
    #[error("a token named {0:?} exists; revoke it first (`precomp token revoke {0}`) or choose another name")]
    TokenExists(String),
    #[error("no token named {0:?} (`precomp token list` shows them)")]
    NoSuchToken(String),
    #[error("token {0:?} is already revoked")]
    AlreadyRevoked(String),
    #[error("token {name:?}: its stored key is not readable: {reason}")]
    StoredKey { name: String, reason: String },
    /// A lease cannot be renewed or ended.
    #[error(transparent)]
    Job(#[from] jobs::JobError),
}

/// `artifact_use.last_used` is written at most this often per artifact and process.
const TOUCH_INTERVAL: i64 = 3600;

/// Bound on the artifacts whose last write one process remembers.
const MAX_TOUCHED: usize = 100_000;

/// Who an upload token belongs to, and the key it is bound to, if any.
#[derive(Clone, Debug)]
pub struct Publisher {
    pub name: String,
    pub key: Option<ArtifactPublicKey>,
    /// Its scopes as stored; `None`: they follow from its key (`Artifacts::authenticate`).
    pub scopes: Option<Vec<Scope>>,
}

/// What a presented token is.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // looked up once per request, never stored
pub enum TokenLookup {
    Active(Publisher),
    Revoked { name: String, revoked_at: i64 },
    Unknown,
}

/// `precomp token list`: what is known of a token (never the token, never its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub key_id: Option<String>,
    /// `None`: its scopes follow from its key.
    pub scopes: Option<Vec<Scope>>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Whether an artifact a manifest names is on the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactCheck {
    Present,
    Missing,
    SizeMismatch {
        stored: u64,
    },
    /// It is here, but its files are not the ones the manifest lists (why).
    FilesMismatch(String),
}

/// A verified manifest, as it is indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRecord {
    pub key: String,
    pub base_key: String,
    pub package: String,
    pub version: String,
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    pub target: String,
    pub artifact_sha256: String,
    pub artifact_size: u64,
    pub compile_env: Vec<CompileEnvJson>,
    /// Key ids whose signatures were verified.
    pub signers: Vec<String>,
    /// The manifest's key format (2 for everything published now).
    pub key_format: u32,
    /// The base text of its key (`BuildInputs::base_text`): which misses it satisfies.
    pub base_text: String,
    /// The build recipe its provenance records (`Provenance.recipe`); `None`: unknown.
    /// Audit leases offer it only to auditors of the same recipe.
    pub recipe: Option<String>,
}

/// A validated miss, as [`MetadataStore::record_miss`] records it.
#[derive(Clone, Debug)]
pub struct MissRecord<'a> {
    pub report: &'a MissReport,
    /// Its variant key, else its base key, else its request key.
    pub miss_key: String,
    /// Its request text (`BuildInputs::request_text`): the builds whose base text satisfies
    /// it close it (`precomp_proto::buildkey::request_satisfied_by`).
    pub request_text: String,
    /// Set when it carries the package's own compile-env entries (a config variant): then
    /// only builds whose recorded compile env those entries cover satisfy it.
    pub variant_key: Option<String>,
    /// The package's own carried entries, parsed.
    pub own_compile_env: Vec<CompileEnvEntry>,
    /// The compile-env value sets it asks builds for: the package's own, and each closure
    /// member's that carries values. Bounded per release and tuple ([`MissPolicy`]).
    pub variants: Vec<VariantRef>,
}

/// One release's compile-env value set a miss asks a build for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VariantRef {
    pub package: String,
    pub version: String,
    /// `compile_env_digest` of the carried entries, hex.
    pub digest: String,
}

/// How the mirror treats what misses carry (`precomp serve --max-config-variants`,
/// `--miss-retention-days`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissPolicy {
    /// At most this many distinct compile-env value sets (config variants) may be requested
    /// per release and tuple (OTP major, Elixir, Mix env) within the retention; a miss asking
    /// for one more is refused (422).
    pub max_config_variants: u32,
    /// Compile-env values a miss carries are kept this long after its last report, then
    /// erased (an open miss is closed: it cannot be built without them); an open miss nobody
    /// reported for this long is closed too (a new report opens it again).
    pub retention_seconds: i64,
    /// At most this many misses are open at once; a report that would open another is
    /// refused ([`MissOutcome::TooManyOpen`], 429) while reports of open ones still count.
    pub max_open: u64,
}

impl Default for MissPolicy {
    fn default() -> MissPolicy {
        MissPolicy {
            max_config_variants: DEFAULT_MAX_CONFIG_VARIANTS,
            retention_seconds: DEFAULT_MISS_RETENTION_DAYS * 86_400,
            max_open: DEFAULT_MAX_OPEN_MISSES,
        }
    }
}

/// Default bound on the misses open at once.
pub const DEFAULT_MAX_OPEN_MISSES: u64 = 10_000;

/// Default bound on config variants per release and tuple.
pub const DEFAULT_MAX_CONFIG_VARIANTS: u32 = 8;

/// Default days a miss's compile-env values are kept after its last report.
pub const DEFAULT_MISS_RETENTION_DAYS: i64 = 30;

/// How recording a miss ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissOutcome {
    Recorded(MissRecorded),
    /// It asks for a config variant of `package` `version` past the bound.
    TooManyVariants {
        package: String,
        version: String,
        limit: u32,
    },
    /// It would open one more miss than [`MissPolicy::max_open`].
    TooManyOpen {
        limit: u64,
    },
}

/// Rows of `worker_tuples` older than this are removed (the job listing looks back much
/// less: [`WORKER_WINDOW_SECONDS`]).
const WORKER_TUPLES_KEPT: i64 = 86_400;

/// A worker counts as able to build a tuple when it asked for it this recently.
pub const WORKER_WINDOW_SECONDS: i64 = 900;

/// Misses' values are looked at for expiry at most this often per process.
const EXPIRY_INTERVAL: i64 = 60;

/// What a miss carries besides its columns, as the `misses.inputs` JSON holds it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct MissInputs {
    #[serde(default)]
    manager: String,
    #[serde(default)]
    compile_env: Vec<CompileEnvJson>,
    #[serde(default)]
    closure: Vec<MissMember>,
}

/// How storing a manifest ended ([`MetadataStore::put_manifest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestPut {
    Created {
        closed_misses: u64,
    },
    /// The same bytes were there, or nothing new to add.
    Unchanged {
        signers: Vec<String>,
    },
    /// The same manifest was there; the new verified signatures were added to it.
    Countersigned {
        signers: Vec<String>,
    },
    /// Another manifest with the same artifact is published under this key (an identical
    /// build): this one is kept beside it as agreement evidence.
    Agreed {
        signers: Vec<String>,
    },
    /// Nothing published under the key had a signer that counts: this manifest replaced it.
    Replaced {
        closed_misses: u64,
        /// The digest of the manifest it replaced.
        replaced: String,
    },
    /// A manifest of another build recipe (or of none) with another artifact is published
    /// under this key: two ways of compiling, both correct, so not a reproducibility finding
    /// (docs/builder.md "The build recipe"). Nothing stored; the published one stays.
    OtherRecipe {
        /// The published manifest's recipe (`None`: it records none) and signers.
        published_recipe: Option<String>,
        signers: Vec<String>,
    },
    /// A manifest with another artifact is published under this key: this one is recorded
    /// as a reproducibility finding, not published.
    Conflict {
        /// The published manifest's digest, artifact and signers.
        existing_digest: String,
        existing_artifact: String,
        existing_signers: Vec<String>,
        /// What differs, by file.
        difference: String,
        /// Whether it was kept in the key's history (false past
        /// [`history::MAX_CONFLICTING_PER_KEY`]).
        recorded: bool,
    },
}

/// Opens the metadata store of the artifact store directory `root` (`DATA/artifacts`),
/// creating it if absent. The one place that chooses the implementation, for the service
/// ([`crate::Artifacts::open`]) and the commands beside it (`precomp token`, `gc`, `store
/// scrub`): SQLite (`root/artifacts.db`, `ArtifactStore`) today; a PostgreSQL store plugs
/// in here. No other crate names the implementation.
pub fn open_metadata(root: &Path) -> Result<Arc<dyn MetadataStore>, ArtifactStoreError> {
    Ok(Arc::new(ArtifactStore::open(root)?))
}

/// [`open_metadata`], only if the store exists ([`ArtifactStoreError::NoStore`] otherwise): for
/// the commands that act on an existing store (`precomp gc`, `store scrub`), so a wrong
/// `--data` is an error, not a new empty store.
pub fn open_existing_metadata(root: &Path) -> Result<Arc<dyn MetadataStore>, ArtifactStoreError> {
    Ok(Arc::new(ArtifactStore::open_existing(root)?))
}

/// The SQLite metadata store ([`MetadataStore`]); opened through [`open_metadata`].
pub struct ArtifactStore {
    blobs: Blobs,
    db_path: PathBuf,
    db: Mutex<Connection>,
    _lock: std::fs::File,
    /// When this process last wrote `artifact_use` for an artifact (throttles the writes).
    touched: Mutex<std::collections::HashMap<[u8; 32], i64>>,
    /// When this process last erased expired miss values ([`MetadataStore::expire_miss_values`]).
    expired_at: std::sync::atomic::AtomicI64,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store under `root` (`DATA/artifacts`).
    pub fn open(root: &Path) -> Result<ArtifactStore, ArtifactStoreError> {
        let lock = precomp_registry::blob_dir::open(root)
            .map_err(|(path, source)| ArtifactStoreError::Io { path, source })?;

        let db_path = root.join("artifacts.db");
        let db_err = |source: rusqlite::Error| ArtifactStoreError::Db {
            path: db_path.clone(),
            source: Box::new(source),
        };
        // FULL: a publish answered 201 survives a power cut.
        let mut db = precomp_registry::blob_dir::open_index(&db_path, "FULL").map_err(db_err)?;
        // One transaction, so a process opening the store at the same time sees the old
        // schema or the new one.
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let migrated = match migrations::migrate(&tx) {
            Ok(migrated) => migrated,
            Err(migrations::MigrateError::Db(source)) => return Err(db_err(source)),
            Err(migrations::MigrateError::Newer { found }) => {
                return Err(ArtifactStoreError::NewerSchema {
                    path: db_path,
                    found,
                    known: migrations::latest_version(),
                })
            }
            Err(migrations::MigrateError::Migration(e)) => {
                return Err(ArtifactStoreError::Migration {
                    path: db_path,
                    message: e.to_string(),
                })
            }
        };
        tx.commit().map_err(db_err)?;
        if migrated.from != 0 && migrated.from < migrated.to {
            tracing::info!(
                path = %db_path.display(),
                from = migrated.from,
                to = migrated.to,
                "artifact database schema migrated"
            );
        }
        Ok(ArtifactStore {
            blobs: Blobs::new(root),
            db_path,
            db: Mutex::new(db),
            _lock: lock,
            touched: Mutex::new(std::collections::HashMap::new()),
            expired_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// Opens the store under `root` only if it has a database: for the commands that act on
    /// an existing store (`gc`, `store scrub`), so a wrong `--data` is an error, not a new
    /// empty store.
    pub fn open_existing(root: &Path) -> Result<ArtifactStore, ArtifactStoreError> {
        if !root.join("artifacts.db").is_file() {
            return Err(ArtifactStoreError::NoStore {
                dir: root.to_path_buf(),
            });
        }
        ArtifactStore::open(root)
    }

    fn db_err(&self) -> impl Fn(rusqlite::Error) -> ArtifactStoreError + '_ {
        |source: rusqlite::Error| ArtifactStoreError::Db {
            path: self.db_path.clone(),
            source: Box::new(source),
        }
    }

    /// Whether expiry is due now (and, if so, that it is done from now on).
    fn expiry_due(&self, now: i64, policy: &MissPolicy) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.expired_at.load(Ordering::Relaxed);
        let interval = EXPIRY_INTERVAL.min(policy.retention_seconds.max(1));
        if last != i64::MIN && now - last < interval {
            return false;
        }
        self.expired_at.store(now, Ordering::Relaxed);
        true
    }

    fn expire_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        now: i64,
        policy: &MissPolicy,
    ) -> rusqlite::Result<()> {
        let erased = expire_values(tx, now, policy.retention_seconds)?;
        if erased > 0 {
            tracing::info!(
                erased,
                retention_seconds = policy.retention_seconds,
                "erased the compile-env values of misses past their retention"
            );
        }
        Ok(())
    }
}

/// The SQLite store: every operation of the service's metadata, each one transaction, in
/// the order of the trait, whose documentation is their contract.
impl MetadataStore for ArtifactStore {
    fn check(&self) -> Result<(), ArtifactStoreError> {
        self.db
            .lock()
            .query_row(
                "SELECT count(*) FROM tokens WHERE name = ''",
                [],
                |_| Ok(()),
            )
            .map_err(self.db_err())
    }

    // Tokens ---------------------------------------------------------------------------------

    fn create_token(
        &self,
        name: &str,
        key: Option<&ArtifactPublicKey>,
        scopes: Option<&[Scope]>,
    ) -> Result<String, ArtifactStoreError> {
        if !valid_token_name(name) {
            return Err(ArtifactStoreError::BadTokenName(name.to_string()));
        }
        let key_pem = match key {
            Some(key) => Some(key.to_pem().map_err(|e| ArtifactStoreError::StoredKey {
                name: name.to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let token = new_token();
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let existing: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM tokens WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.db_err())?;
        match existing {
            Some(None) => return Err(ArtifactStoreError::TokenExists(name.to_string())),
            Some(Some(_)) => {
                tx.execute("DELETE FROM tokens WHERE name = ?1", params![name])
                    .map_err(self.db_err())?;
            }
            None => {}
        }
        tx.execute(
            "INSERT INTO tokens (name, sha256, key_pem, key_id, created_at, scopes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                token_sha256(&token).as_slice(),
                key_pem,
                key.map(ArtifactPublicKey::key_id),
                now(),
                scopes.map(scopes_text)
            ],
        )
        .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(token)
    }

    fn list_tokens(&self) -> Result<Vec<TokenInfo>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare(
                "SELECT name, key_id, created_at, revoked_at, scopes FROM tokens ORDER BY name",
            )
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([], |row| {
                Ok(TokenInfo {
                    name: row.get(0)?,
                    key_id: row.get(1)?,
                    created_at: row.get(2)?,
                    revoked_at: row.get(3)?,
                    scopes: row
                        .get::<_, Option<String>>(4)?
                        .as_deref()
                        .map(parse_scopes),
                })
            })
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    fn revoke_token(&self, name: &str) -> Result<(), ArtifactStoreError> {
        let db = self.db.lock();
        let revoked: Option<Option<i64>> = db
            .query_row(
                "SELECT revoked_at FROM tokens WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.db_err())?;
        match revoked {
            None => Err(ArtifactStoreError::NoSuchToken(name.to_string())),
            Some(Some(_)) => Err(ArtifactStoreError::AlreadyRevoked(name.to_string())),
            Some(None) => {
                db.execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    params![name, now()],
                )
                .map_err(self.db_err())?;
                Ok(())
            }
        }
    }

    fn lookup_token(&self, token: &str) -> Result<TokenLookup, ArtifactStoreError> {
        let hash = token_sha256(token);
        let db = self.db.lock();
        let row = db
            .query_row(
                "SELECT name, sha256, key_pem, revoked_at, scopes FROM tokens WHERE sha256 = ?1",
                params![hash.as_slice()],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(self.db_err())?;
        let Some((name, stored, key_pem, revoked_at, scopes)) = row else {
            return Ok(TokenLookup::Unknown);
        };
        if !digests_equal(&stored, &hash) {
            return Ok(TokenLookup::Unknown);
        }
        if let Some(revoked_at) = revoked_at {
            return Ok(TokenLookup::Revoked { name, revoked_at });
        }
        let key = match key_pem {
            Some(pem) => Some(ArtifactPublicKey::from_pem(&pem).map_err(|e| {
                ArtifactStoreError::StoredKey {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        Ok(TokenLookup::Active(Publisher {
            name,
            key,
            scopes: scopes.as_deref().map(parse_scopes),
        }))
    }

    // Artifacts ------------------------------------------------------------------------------

    fn record_artifact(
        &self,
        sha256: &[u8; 32],
        size: u64,
        uploaded_by: &str,
    ) -> Result<(), ArtifactStoreError> {
        self.db
            .lock()
            .execute(
                "INSERT INTO artifacts (sha256, size, uploaded_by, uploaded_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(sha256) DO NOTHING",
                params![hex::encode(sha256), size as i64, uploaded_by, now()],
            )
            .map_err(self.db_err())?;
        Ok(())
    }

    fn touch_artifact(&self, sha256: &[u8; 32]) {
        let now = now();
        {
            let mut touched = self.touched.lock();
            if touched
                .get(sha256)
                .is_some_and(|at| now - at < TOUCH_INTERVAL)
            {
                return;
            }
            if touched.len() >= MAX_TOUCHED {
                touched.clear();
            }
            touched.insert(*sha256, now);
        }
        let result = self.db.lock().execute(
            "INSERT INTO artifact_use (sha256, last_used) VALUES (?1, ?2)
             ON CONFLICT(sha256) DO UPDATE SET last_used = max(last_used, ?2)",
            params![hex::encode(sha256), now],
        );
        if let Err(e) = result {
            tracing::warn!(sha256 = %hex::encode(sha256), "recording an artifact's use: {e}");
        }
    }

    // Manifests, history and the index -------------------------------------------------------

    fn put_manifest(
        &self,
        record: &ManifestRecord,
        signed: &SignedManifest,
        bytes: &[u8],
        published_by: &str,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<ManifestPut, ArtifactStoreError> {
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let outcome = put_manifest_in(&tx, record, signed, bytes, published_by, counts)
            .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(outcome)
    }

    fn manifest(&self, key: &str) -> Result<Option<Vec<u8>>, ArtifactStoreError> {
        self.db
            .lock()
            .query_row(
                "SELECT signed_manifest FROM manifests WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.db_err())
    }

    fn key_manifests(&self, key: &str) -> Result<Vec<KeyManifest>, ArtifactStoreError> {
        let db = self.db.lock();
        let Some(published) = published_row(&db, key).map_err(self.db_err())? else {
            return Ok(Vec::new());
        };
        let mut all = vec![published];
        all.extend(history_rows(&db, key).map_err(self.db_err())?);
        Ok(all)
    }

    fn package_history(&self, package: &str) -> Result<Vec<KeyManifest>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare(
                "SELECT key, status, manifest_digest, x'', signers, artifact_sha256,
                    published_by, published_at, changed_at, note, verdicts
                 FROM manifest_history
                 WHERE key IN (SELECT key FROM manifests WHERE package = ?1)
                 ORDER BY key, published_at, manifest_digest",
            )
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map(params![package], history_row)
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    fn index(&self, package: &str) -> Result<Vec<IndexBuild>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare(&format!(
                "SELECT {INDEX_BUILD_COLUMNS} FROM manifests WHERE package = ?1"
            ))
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map(params![package], index_build_row)
            .map_err(self.db_err())?;
        let mut builds: Vec<IndexBuild> = rows.collect::<Result<_, _>>().map_err(self.db_err())?;
        drop(stmt);
        verdicts::attach(&db, &mut builds).map_err(self.db_err())?;
        builds.sort_by(|a, b| {
            let va = semver::Version::parse(&a.version).ok();
            let vb = semver::Version::parse(&b.version).ok();
            va.cmp(&vb)
                .then_with(|| a.version.cmp(&b.version))
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(builds)
    }

    fn packages(&self) -> Result<Vec<String>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare("SELECT DISTINCT package FROM manifests ORDER BY package")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([], |row| row.get(0))
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    // Failures -------------------------------------------------------------------------------

    fn record_failure(
        &self,
        report: &FailureReport,
        reported_by: &str,
    ) -> Result<FailureRecorded, ArtifactStoreError> {
        let log_sha256 = hex::encode(Sha256::digest(report.log.as_bytes()));
        let now = now();
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let attempts: i64 = tx
            .query_row(
                "INSERT INTO failures (base_key, toolchain_id, package, version, log, log_sha256,
                    reported_by, attempts, first_reported, last_reported)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?8)
                 ON CONFLICT(base_key, toolchain_id) DO UPDATE SET
                    package = ?3, version = ?4, log = ?5, log_sha256 = ?6, reported_by = ?7,
                    attempts = attempts + 1, last_reported = ?8
                 RETURNING attempts",
                params![
                    report.base_key,
                    report.toolchain_id,
                    report.package,
                    report.version,
                    report.log,
                    log_sha256,
                    reported_by,
                    now
                ],
                |row| row.get(0),
            )
            .map_err(self.db_err())?;
        let closed_misses = close_misses(
            &tx,
            &report.base_key,
            &format!("failed on {}", report.toolchain_id),
        )
        .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(FailureRecorded {
            base_key: report.base_key.clone(),
            toolchain_id: report.toolchain_id.clone(),
            log_sha256,
            attempts: attempts as u64,
            closed_misses,
        })
    }

    fn failures(&self, package: &str) -> Result<Vec<Failure>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare(
                "SELECT package, version, base_key, toolchain_id, log_sha256, log, attempts,
                    reported_by, first_reported, last_reported
                 FROM failures WHERE package = ?1
                 ORDER BY last_reported DESC, base_key, toolchain_id",
            )
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map(params![package], |row| {
                Ok(Failure {
                    package: row.get(0)?,
                    version: row.get(1)?,
                    base_key: row.get(2)?,
                    toolchain_id: row.get(3)?,
                    log_sha256: row.get(4)?,
                    log: row.get(5)?,
                    attempts: row.get::<_, i64>(6)? as u64,
                    reported_by: row.get(7)?,
                    first_reported: row.get(8)?,
                    last_reported: row.get(9)?,
                })
            })
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    // Misses ---------------------------------------------------------------------------------

    fn record_miss(
        &self,
        miss: &MissRecord<'_>,
        policy: &MissPolicy,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<MissOutcome, ArtifactStoreError> {
        let report = miss.report;
        let now = now();
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        if self.expiry_due(now, policy) {
            self.expire_in(&tx, now, policy).map_err(self.db_err())?;
        }
        // A report of a miss already here only counts; a new one must fit the bound.
        let known: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM misses WHERE miss_key = ?1 AND closed_at IS NULL)",
                params![miss.miss_key],
                |row| row.get(0),
            )
            .map_err(self.db_err())?;
        if !known {
            let open: i64 = tx
                .query_row(
                    "SELECT count(*) FROM misses WHERE closed_at IS NULL",
                    [],
                    |row| row.get(0),
                )
                .map_err(self.db_err())?;
            if open as u64 >= policy.max_open {
                return Ok(MissOutcome::TooManyOpen {
                    limit: policy.max_open,
                });
            }
        }
        if let Some(refused) =
            record_variants(&tx, report, &miss.variants, policy, now).map_err(self.db_err())?
        {
            return Ok(refused);
        }
        let failed: Option<String> = tx
            .query_row(
                "SELECT 'failed on ' || toolchain_id FROM failures WHERE base_key = ?1 LIMIT 1",
                params![miss.miss_key],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.db_err())?;
        let closed_by = match failed {
            Some(failed) => Some(failed),
            None => published_satisfying(&tx, miss, counts)
                .map_err(self.db_err())?
                .map(|key| format!("published {key}")),
        };
        let inputs = MissInputs {
            manager: report.manager.clone(),
            compile_env: report.compile_env.clone(),
            closure: report.closure.clone(),
        };
        let has_values = !report.compile_env.is_empty()
            || report.closure.iter().any(|m| !m.compile_env.is_empty());
        // A miss whose values expired takes the new report's values ({REOPEN}); a miss a
        // publish closed reopens when nothing that counts satisfies it now (?15 is NULL).
        let (count, closed_at, closed_by): (i64, Option<i64>, Option<String>) = tx
            .query_row(
                &format!(
                    "INSERT INTO misses (miss_key, base_key, request_text, package, version, reason,
                        otp_major, elixir, mix_env, target, lock, inputs, count, first_reported,
                        last_reported, closed_at, closed_by, request_key, variant_key, has_values)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 1, ?13, ?13, ?14, ?15,
                        ?16, ?17, ?18)
                     ON CONFLICT(miss_key) DO UPDATE SET count = count + 1, last_reported = ?13,
                        lock = CASE WHEN {REOPEN} THEN ?11 ELSE lock END,
                        inputs = CASE WHEN {REOPEN} THEN ?12 ELSE inputs END,
                        has_values = CASE WHEN {REOPEN} THEN ?18 ELSE has_values END,
                        closed_at = CASE WHEN {REOPEN} OR {REOPEN_PUBLISHED} THEN ?14
                                         ELSE closed_at END,
                        closed_by = CASE WHEN {REOPEN} OR {REOPEN_PUBLISHED} THEN ?15
                                         ELSE closed_by END
                     RETURNING count, closed_at, closed_by"
                ),
                params![
                    miss.miss_key,
                    report.base_key,
                    miss.request_text,
                    report.package,
                    report.version,
                    report.reason,
                    report.otp_major,
                    report.elixir,
                    report.mix_env,
                    report.target,
                    report.lock,
                    to_json(&inputs),
                    now,
                    closed_by.as_ref().map(|_| now),
                    closed_by,
                    report.request_key,
                    miss.variant_key,
                    has_values
                ],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(MissOutcome::Recorded(MissRecorded {
            base_key: report.base_key.clone(),
            request_key: report.request_key.clone(),
            variant_key: miss.variant_key.clone(),
            count: count as u64,
            open: closed_at.is_none(),
            closed_by,
        }))
    }

    fn expire_miss_values(
        &self,
        now: i64,
        retention_seconds: i64,
    ) -> Result<u64, ArtifactStoreError> {
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let erased = expire_values(&tx, now, retention_seconds).map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(erased)
    }

    fn expire_if_due(&self, policy: &MissPolicy) -> Result<(), ArtifactStoreError> {
        let now = now();
        if !self.expiry_due(now, policy) {
            return Ok(());
        }
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        self.expire_in(&tx, now, policy).map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())
    }

    fn open_misses(&self, limit: usize, max_bytes: usize) -> Result<Vec<Miss>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare(&format!(
                "SELECT {MISS_COLUMNS} FROM misses WHERE closed_at IS NULL
                 ORDER BY count DESC, first_reported, miss_key LIMIT ?1"
            ))
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map(params![limit as i64], miss_row)
            .map_err(self.db_err())?;
        let mut misses = Vec::new();
        let mut bytes = 0;
        for miss in rows {
            let miss = miss.map_err(self.db_err())?;
            bytes += miss.lock.len();
            if bytes > max_bytes && !misses.is_empty() {
                break;
            }
            misses.push(miss);
        }
        Ok(misses)
    }

    // Verdicts -------------------------------------------------------------------------------

    fn put_verdict(
        &self,
        verdict: &Verdict,
        bytes: &[u8],
        reported_by: &str,
    ) -> Result<VerdictPut, ArtifactStoreError> {
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        // The published manifest, or an agreeing one (the one served while every signer of
        // the published one is excluded): a verdict may name either, they hold the same
        // artifact.
        let Some(published) = published_row(&tx, &verdict.key).map_err(self.db_err())? else {
            return Ok(VerdictPut::NoManifest);
        };
        let agreeing = history_rows(&tx, &verdict.key)
            .map_err(self.db_err())?
            .into_iter()
            .filter(|row| row.status == history::AGREEING);
        let named = hex::encode(&verdict.manifest_sha256);
        let Some(stored) = std::iter::once(published.clone())
            .chain(agreeing)
            .find(|row| row.manifest_digest == named)
            .map(|row| row.signed_manifest)
        else {
            return Ok(VerdictPut::OtherManifest {
                published: published.manifest_digest,
            });
        };
        // Stored manifests were verified when they were published.
        let signed = SignedManifest::decode(stored.as_slice()).ok();
        let manifest_bytes = signed
            .as_ref()
            .map(|s| s.manifest.as_slice())
            .unwrap_or(&[]);
        let artifact = Manifest::decode(manifest_bytes)
            .ok()
            .and_then(|m| m.output)
            .map(|o| o.artifact_sha256)
            .unwrap_or_default();
        if artifact != verdict.published_sha256 {
            return Ok(VerdictPut::OtherArtifact {
                published: hex::encode(artifact),
            });
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let previous: Option<String> = tx
            .query_row(
                "SELECT verdict_sha256 FROM verdicts WHERE key = ?1 AND auditor_id = ?2",
                params![verdict.key, verdict.auditor_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.db_err())?;
        let how = match previous {
            Some(previous) if previous == sha256 => "unchanged",
            Some(_) => "replaced",
            None => "created",
        };
        if how != "unchanged" {
            tx.execute(
                "INSERT INTO verdicts (key, auditor_id, result, summary, toolchain_id,
                    signed_verdict, verdict_sha256, reported_by, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(key, auditor_id) DO UPDATE SET result = ?3, summary = ?4,
                    toolchain_id = ?5, signed_verdict = ?6, verdict_sha256 = ?7,
                    reported_by = ?8, received_at = ?9",
                params![
                    verdict.key,
                    verdict.auditor_id,
                    verdict.result,
                    verdict.summary,
                    verdict.toolchain_id,
                    bytes,
                    sha256,
                    reported_by,
                    now()
                ],
            )
            .map_err(self.db_err())?;
        }
        let flagged: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM verdicts WHERE key = ?1 AND result = ?2)",
                params![verdict.key, MISMATCH],
                |row| row.get(0),
            )
            .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(VerdictPut::Stored { how, flagged })
    }

    fn verdicts(&self, key: &str) -> Result<Verdicts, ArtifactStoreError> {
        let db = self.db.lock();
        let verdicts = verdicts::records(&db, key).map_err(self.db_err())?;
        let flagged = verdicts.iter().any(|v| v.result == MISMATCH);
        Ok(Verdicts {
            key: key.to_string(),
            flagged,
            verdicts,
            disagreements: Vec::new(),
        })
    }

    fn verdict_counts(&self) -> Result<(u64, u64), ArtifactStoreError> {
        self.db
            .lock()
            .query_row(
                "SELECT count(*) FILTER (WHERE result = 'match'),
                        count(*) FILTER (WHERE result = 'mismatch')
                 FROM verdicts",
                [],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
            )
            .map_err(self.db_err())
    }

    // Leases ---------------------------------------------------------------------------------

    fn lease_job(
        &self,
        query: &LeaseQuery<'_>,
        now_ms: i64,
    ) -> Result<Option<LeasedJob>, ArtifactStoreError> {
        let err = self.db_err();
        let request = query.request;
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        // What this worker can do, for the job listing's "which tuples have no worker".
        record_worker_tuples(&tx, request, query.token, now_ms / 1000).map_err(&err)?;
        let job = match query.auditor {
            None => select_miss(&tx, request, now_ms)
                .map_err(&err)?
                .map(Job::Build),
            Some(auditor) => select_audit(
                &tx,
                request,
                auditor,
                query.token,
                query.auditor_ids,
                now_ms,
            )
            .map_err(&err)?
            .map(Job::Audit),
        };
        let Some(job) = job else {
            tx.commit().map_err(&err)?;
            return Ok(None);
        };
        let lease_ms = request.lease_seconds as i64 * 1000;
        let id = insert_lease(
            &tx,
            &job,
            request,
            query.token,
            query.auditor,
            now_ms,
            lease_ms,
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(Some(LeasedJob {
            job: id,
            work: job,
            expires_ms: now_ms + lease_ms,
        }))
    }

    fn job(&self, job: u64) -> Result<Option<JobRecord>, ArtifactStoreError> {
        let db = self.db.lock();
        job_row(&db, job).map_err(self.db_err())
    }

    fn renew_lease(
        &self,
        job: u64,
        token: &str,
        lease_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<JobRecord, ArtifactStoreError> {
        let err = self.db_err();
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut held = held_job(&tx, job, token).map_err(&err)??;
        if let Some(ended) = held.ended {
            return Err(JobError::Ended { job, ended }.into());
        }
        if let Some(closed_by) = held.closed_by {
            return Err(JobError::Closed { job, closed_by }.into());
        }
        let lease_ms = lease_ms.unwrap_or(held.lease_ms);
        tx.execute(
            "UPDATE leases SET expires_ms = ?2, lease_ms = ?3 WHERE job = ?1",
            params![job as i64, now_ms + lease_ms, lease_ms],
        )
        .map_err(&err)?;
        // A worker busy with a job still serves the tuples it asked for.
        tx.execute(
            "UPDATE worker_tuples SET last_seen = ?2
             WHERE (kind, worker, token_name) IN
                   (SELECT kind, worker, token_name FROM leases WHERE job = ?1)",
            params![job as i64, now_ms / 1000],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        held.lease_ms = lease_ms;
        Ok(held)
    }

    fn end_lease(
        &self,
        job: u64,
        token: &str,
        outcome: ReleaseOutcome,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<LeaseEnd, ArtifactStoreError> {
        let err = self.db_err();
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let held = held_job(&tx, job, token).map_err(&err)??;
        let end = match held.ended {
            Some(LeaseEnded::Released | LeaseEnded::Failed) => LeaseEnd::AlreadyReleased,
            Some(ended @ LeaseEnded::Lost) => return Err(JobError::Ended { job, ended }.into()),
            None => {
                tx.execute(
                    "UPDATE leases SET ended_at = ?2, ended = ?3, reason = ?4 WHERE job = ?1",
                    params![job as i64, now_ms / 1000, outcome.as_str(), reason],
                )
                .map_err(&err)?;
                LeaseEnd::Ended {
                    closed: held.closed_by.is_some(),
                }
            }
        };
        tx.commit().map_err(&err)?;
        Ok(end)
    }

    fn job_listing(&self, now_ms: i64) -> Result<JobListing, ArtifactStoreError> {
        let now = now_ms;
        let since = now / 1000 - WORKER_WINDOW_SECONDS;
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(self.db_err())?;
        let listing = (|| -> rusqlite::Result<JobListing> {
            let mut workers_by_tuple: std::collections::BTreeMap<
                (String, String, String, String),
                Vec<String>,
            > = Default::default();
            let mut seen: std::collections::BTreeMap<(String, String, String), WorkerSeen> =
                Default::default();
            {
                let mut stmt = tx.prepare(
                    "SELECT kind, worker, token_name, otp_major, elixir, mix_env, target,
                    last_seen
                 FROM worker_tuples WHERE last_seen >= ?1
                 ORDER BY worker, token_name, kind, otp_major, elixir, mix_env, target",
                )?;
                let mut rows = stmt.query(params![since])?;
                while let Some(row) = rows.next()? {
                    let kind: String = row.get(0)?;
                    let kind = if kind == "audit" {
                        JobKind::Audit
                    } else {
                        JobKind::Build
                    };
                    let (worker, token): (String, String) = (row.get(1)?, row.get(2)?);
                    let tuple: (String, String, String, String) =
                        (row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?);
                    let last_seen: i64 = row.get(7)?;
                    if kind == JobKind::Build {
                        let names = workers_by_tuple.entry(tuple.clone()).or_default();
                        if !names.contains(&worker) {
                            names.push(worker.clone());
                        }
                    }
                    let entry = seen
                        .entry((worker.clone(), token.clone(), kind.as_str().to_string()))
                        .or_insert_with(|| WorkerSeen {
                            worker,
                            token,
                            kind,
                            tuples: Vec::new(),
                            last_seen,
                        });
                    entry.last_seen = entry.last_seen.max(last_seen);
                    let (otp_major, elixir, mix_env, target) = tuple;
                    match entry.tuples.iter_mut().find(|t| {
                        t.otp_major == otp_major && t.elixir == elixir && t.mix_env == mix_env
                    }) {
                        Some(existing) => existing.targets.push(target),
                        None => entry.tuples.push(LeaseTuple {
                            otp_major,
                            elixir,
                            mix_env,
                            targets: vec![target],
                        }),
                    }
                }
            }
            let mut tuples = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT m.otp_major, m.elixir, m.mix_env, m.target, count(*),
                    count(m.variant_key), sum(m.count), min(m.first_reported),
                    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM leases l
                        WHERE l.kind = 'build' AND l.base_key = m.miss_key
                          AND l.ended_at IS NULL AND l.expires_ms > ?1))
                 FROM misses m WHERE m.closed_at IS NULL
                 GROUP BY m.otp_major, m.elixir, m.mix_env, m.target
                 ORDER BY count(*) DESC, m.otp_major, m.elixir, m.mix_env, m.target",
                )?;
                let mut rows = stmt.query(params![now])?;
                while let Some(row) = rows.next()? {
                    let tuple: (String, String, String, String) =
                        (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
                    let workers = workers_by_tuple.get(&tuple).cloned().unwrap_or_default();
                    let (otp_major, elixir, mix_env, target) = tuple;
                    tuples.push(TupleDemand {
                        otp_major,
                        elixir,
                        mix_env,
                        target,
                        open_misses: row.get::<_, i64>(4)? as u64,
                        variants: row.get::<_, i64>(5)? as u64,
                        reports: row.get::<_, i64>(6)? as u64,
                        oldest_reported: row.get(7)?,
                        leased: row.get::<_, i64>(8)? as u64,
                        served: !workers.is_empty(),
                        workers,
                    });
                }
            }
            let mut jobs = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT l.job, l.kind, l.base_key, l.key, l.worker, l.token_name,
                    l.leased_at, l.expires_ms,
                    coalesce(mi.package, ma.package), coalesce(mi.version, ma.version),
                    coalesce(mi.otp_major, ma.otp_major), coalesce(mi.elixir, ma.elixir),
                    coalesce(mi.mix_env, ma.mix_env), coalesce(mi.target, ma.target)
                 FROM leases l
                 LEFT JOIN misses mi ON l.kind = 'build' AND mi.miss_key = l.base_key
                 LEFT JOIN manifests ma ON l.kind = 'audit' AND ma.key = l.key
                 WHERE l.ended_at IS NULL AND l.expires_ms > ?1
                   AND (mi.closed_at IS NULL AND mi.miss_key IS NOT NULL
                        OR ma.key IS NOT NULL)
                 ORDER BY l.job",
                )?;
                let mut rows = stmt.query(params![now])?;
                while let Some(row) = rows.next()? {
                    let kind: String = row.get(1)?;
                    jobs.push(LiveJob {
                        job: row.get::<_, i64>(0)? as u64,
                        kind: if kind == "audit" {
                            JobKind::Audit
                        } else {
                            JobKind::Build
                        },
                        base_key: row.get(2)?,
                        key: row.get(3)?,
                        worker: row.get(4)?,
                        token: row.get(5)?,
                        leased_at: row.get(6)?,
                        lease_expires_at: expires_at(row.get(7)?),
                        package: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
                        version: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
                        otp_major: row.get::<_, Option<String>>(10)?.unwrap_or_default(),
                        elixir: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
                        mix_env: row.get::<_, Option<String>>(12)?.unwrap_or_default(),
                        target: row.get::<_, Option<String>>(13)?.unwrap_or_default(),
                    });
                }
            }
            Ok(JobListing {
                window_seconds: WORKER_WINDOW_SECONDS as u64,
                tuples,
                workers: seen.into_values().collect(),
                jobs,
            })
        })()
        .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(listing)
    }

    // What gc needs --------------------------------------------------------------------------

    fn collect_garbage(
        &self,
        misses_since: i64,
        apply: bool,
        decide: &mut dyn FnMut(&GcView) -> GcDrop,
    ) -> Result<GcDrop, ArtifactStoreError> {
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(if apply {
                TransactionBehavior::Immediate
            } else {
                TransactionBehavior::Deferred
            })
            .map_err(self.db_err())?;
        let view = gc_view(&tx, misses_since).map_err(self.db_err())?;
        let dropped = decide(&view);
        if apply {
            for key in &dropped.builds {
                // The key's verdicts and its other manifests (agreeing, conflicting,
                // replaced) go with its build.
                for table in ["manifests", "verdicts", "manifest_history"] {
                    tx.execute(&format!("DELETE FROM {table} WHERE key = ?1"), params![key])
                        .map_err(self.db_err())?;
                }
            }
            for sha256 in &dropped.artifacts {
                for table in ["artifacts", "artifact_use"] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE sha256 = ?1"),
                        params![sha256],
                    )
                    .map_err(self.db_err())?;
                }
            }
            if dropped.old_closed_misses {
                tx.execute(
                    &format!("DELETE FROM misses WHERE {OLD_CLOSED_MISSES}"),
                    params![misses_since],
                )
                .map_err(self.db_err())?;
            }
        }
        tx.commit().map_err(self.db_err())?;
        drop(db);
        if apply {
            for sha256 in &dropped.artifacts {
                self.blobs.remove(sha256)?;
            }
        }
        Ok(dropped)
    }

    fn recorded_artifacts(&self) -> Result<Vec<RecordedArtifact>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare("SELECT sha256, size FROM artifacts ORDER BY sha256")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([], |row| {
                Ok(RecordedArtifact {
                    sha256: row.get(0)?,
                    size: row.get::<_, i64>(1)?.max(0) as u64,
                })
            })
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    fn named_artifacts(&self) -> Result<Vec<NamedArtifact>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare(
                "SELECT artifact_sha256, artifact_size, key FROM manifests
                 ORDER BY artifact_sha256, artifact_size, key",
            )
            .map_err(self.db_err())?;
        let mut rows = stmt.query([]).map_err(self.db_err())?;
        let mut named: Vec<NamedArtifact> = Vec::new();
        while let Some(row) = rows.next().map_err(self.db_err())? {
            let (sha256, size, key): (String, i64, String) =
                (|| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))().map_err(self.db_err())?;
            let size = size.max(0) as u64;
            match named.last_mut() {
                Some(last) if last.sha256 == sha256 && last.size == size => last.builds.push(key),
                _ => named.push(NamedArtifact {
                    sha256,
                    size,
                    builds: vec![key],
                }),
            }
        }
        Ok(named)
    }
}

/// SQL: the miss row being updated on conflict was closed because its values expired; a new
/// report opens it again with its own values.
const REOPEN: &str = "(has_values = 0 AND closed_by LIKE 'expired%')";

/// SQL: the miss row being updated was closed by a publish, and no build that counts
/// satisfies it now (the report closes it with nothing: `?15` is NULL).
const REOPEN_PUBLISHED: &str = "(?15 IS NULL AND closed_by LIKE 'published %')";

/// What closes a miss whose compile-env values expired.
fn expired_closed_by(retention_seconds: i64) -> String {
    format!(
        "expired: misses and their compile-time values are kept {} after the last report",
        describe_seconds(retention_seconds)
    )
}

fn describe_seconds(seconds: i64) -> String {
    if seconds % 86_400 == 0 {
        let days = seconds / 86_400;
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    } else {
        format!("{seconds} s")
    }
}

/// Records the config variants `variants` asks for (their `last_seen`), unless one of them is
/// new for its release and tuple and that release already has `max_config_variants`: then
/// nothing is recorded and the refusal is returned.
fn record_variants(
    tx: &rusqlite::Transaction<'_>,
    report: &MissReport,
    variants: &[VariantRef],
    policy: &MissPolicy,
    now: i64,
) -> rusqlite::Result<Option<MissOutcome>> {
    let tuple = (&report.otp_major, &report.elixir, &report.mix_env);
    for variant in variants {
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM config_variants WHERE package = ?1 AND version = ?2
                AND otp_major = ?3 AND elixir = ?4 AND mix_env = ?5 AND digest = ?6)",
            params![
                variant.package,
                variant.version,
                tuple.0,
                tuple.1,
                tuple.2,
                variant.digest
            ],
            |row| row.get(0),
        )?;
        if known {
            continue;
        }
        let count: i64 = tx.query_row(
            "SELECT count(*) FROM config_variants WHERE package = ?1 AND version = ?2
                AND otp_major = ?3 AND elixir = ?4 AND mix_env = ?5",
            params![variant.package, variant.version, tuple.0, tuple.1, tuple.2],
            |row| row.get(0),
        )?;
        if count >= i64::from(policy.max_config_variants) {
            return Ok(Some(MissOutcome::TooManyVariants {
                package: variant.package.clone(),
                version: variant.version.clone(),
                limit: policy.max_config_variants,
            }));
        }
    }
    for variant in variants {
        tx.execute(
            "INSERT INTO config_variants (package, version, otp_major, elixir, mix_env, digest,
                first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT DO UPDATE SET last_seen = ?7",
            params![
                variant.package,
                variant.version,
                tuple.0,
                tuple.1,
                tuple.2,
                variant.digest,
                now
            ],
        )?;
    }
    Ok(None)
}

/// Erases the values of misses not reported since `now - retention_seconds` (closing the open
/// ones), and forgets old config variants and worker tuples: how many misses were erased.
fn expire_values(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    retention_seconds: i64,
) -> rusqlite::Result<u64> {
    let cutoff = now - retention_seconds;
    let expired: Vec<(String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT miss_key, inputs FROM misses WHERE has_values = 1 AND last_reported < ?1",
        )?;
        let rows = stmt.query_map(params![cutoff], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let closed_by = expired_closed_by(retention_seconds);
    for (miss_key, inputs) in &expired {
        let mut inputs: MissInputs = from_json(inputs);
        inputs.compile_env.clear();
        for member in &mut inputs.closure {
            member.compile_env.clear();
        }
        tx.execute(
            "UPDATE misses SET inputs = ?2, has_values = 0,
                closed_at = coalesce(closed_at, ?3), closed_by = coalesce(closed_by, ?4)
             WHERE miss_key = ?1",
            params![miss_key, to_json(&inputs), now, closed_by],
        )?;
    }
    // Open misses nobody reported within the retention: nobody waits for them any more (a
    // new report opens one again, with the values it carries: `REOPEN`).
    let unreported = tx.execute(
        "UPDATE misses SET closed_at = ?2, closed_by = ?3
         WHERE closed_at IS NULL AND last_reported < ?1",
        params![cutoff, now, closed_by],
    )?;
    tx.execute(
        "DELETE FROM config_variants WHERE last_seen < ?1",
        params![cutoff],
    )?;
    tx.execute(
        "DELETE FROM worker_tuples WHERE last_seen < ?1",
        params![now - WORKER_TUPLES_KEPT],
    )?;
    Ok((expired.len() + unreported) as u64)
}

/// Parsed compile-env records; `None` if one does not parse (then nothing is matched on it).
fn parsed_compile_env(records: &[CompileEnvJson]) -> Option<Vec<CompileEnvEntry>> {
    records
        .iter()
        .map(|record| super::compile_env_entry(record).ok())
        .collect()
}

/// Whether a build with base text `base_text` recording `built_compile_env` satisfies a miss
/// with `request_text` and, for a config variant, the package's own carried entries `own`:
/// its base text satisfies the request, and every compile-env path it read is carried with
/// the same value.
fn satisfies(
    request_text: &str,
    own: Option<&[CompileEnvEntry]>,
    base_text: &str,
    built_compile_env: &[CompileEnvJson],
) -> bool {
    if !request_satisfied_by(request_text, base_text) {
        return false;
    }
    match own {
        None => true,
        Some(own) => parsed_compile_env(built_compile_env)
            .is_some_and(|built| compile_env_covers(own, &built)),
    }
}

/// A published build of the miss's release and toolchain that satisfies it, with a signer
/// that counts (on its published manifest or an agreeing one), if any: its key.
fn published_satisfying(
    tx: &rusqlite::Transaction<'_>,
    miss: &MissRecord<'_>,
    counts: &dyn Fn(&str) -> bool,
) -> rusqlite::Result<Option<String>> {
    let report = miss.report;
    let mut stmt = tx.prepare(
        "SELECT key, base_text, compile_env FROM manifests
         WHERE package = ?1 AND version = ?2 AND otp_major = ?3 AND elixir = ?4 AND mix_env = ?5
           AND base_text IS NOT NULL
         ORDER BY key",
    )?;
    let rows = stmt.query_map(
        params![
            report.package,
            report.version,
            report.otp_major,
            report.elixir,
            report.mix_env
        ],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        },
    )?;
    let own = miss
        .variant_key
        .as_ref()
        .map(|_| miss.own_compile_env.as_slice());
    let mut satisfying = Vec::new();
    for row in rows {
        let (key, base_text, compile_env) = row?;
        let compile_env: Vec<CompileEnvJson> = from_json(&compile_env);
        if satisfies(&miss.request_text, own, &base_text, &compile_env) {
            satisfying.push(key);
        }
    }
    for key in satisfying {
        let mut rows: Vec<history::KeyManifest> = published_row(tx, &key)?.into_iter().collect();
        rows.extend(history_rows(tx, &key)?);
        if history::serving(&rows, counts).is_some_and(|row| row.in_good_standing(counts)) {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// [`MetadataStore::put_manifest`] in `tx`.
fn put_manifest_in(
    tx: &rusqlite::Transaction<'_>,
    record: &ManifestRecord,
    signed: &SignedManifest,
    bytes: &[u8],
    published_by: &str,
    counts: &dyn Fn(&str) -> bool,
) -> rusqlite::Result<ManifestPut> {
    let now = now();
    let Some(published) = published_row(tx, &record.key)? else {
        insert_manifest_row(tx, record, bytes, published_by, now)?;
        let closed_misses = close_satisfied_misses(tx, record)?;
        return Ok(ManifestPut::Created { closed_misses });
    };
    if published.signed_manifest == bytes {
        return Ok(ManifestPut::Unchanged {
            signers: published.signers,
        });
    }
    let history = history_rows(tx, &record.key)?;
    let digest = hex::encode(Sha256::digest(&signed.manifest));
    // The same manifest as the published one or an agreeing one: its new signatures join
    // that envelope (an auditor countersigning).
    if let Some(same) = std::iter::once(&published)
        .chain(history.iter().filter(|row| row.status == history::AGREEING))
        .find(|row| row.manifest_digest == digest)
    {
        return countersign(tx, same, signed, record);
    }
    let current = std::iter::once(&published)
        .chain(history.iter().filter(|row| row.status == history::AGREEING))
        .find(|row| row.in_good_standing(counts));
    let Some(current) = current else {
        // Nothing published under the key counts any more: this build replaces it.
        let note = format!(
            "replaced by manifest {digest} (uploaded by {published_by}): none of its signers \
             ({}) counts on the mirror any more",
            published.signers.join(", ")
        );
        let verdicts = verdicts::records(tx, &record.key)?;
        history::put_history(
            tx,
            &history::KeyManifest {
                status: history::REPLACED.to_string(),
                changed_at: now,
                note: note.clone(),
                verdicts: serde_json::to_value(&verdicts).expect("plain data serialises"),
                ..published.clone()
            },
        )?;
        for row in history.iter().filter(|row| row.status == history::AGREEING) {
            history::put_history(
                tx,
                &history::KeyManifest {
                    status: history::REPLACED.to_string(),
                    changed_at: now,
                    note: note.clone(),
                    ..row.clone()
                },
            )?;
        }
        tx.execute("DELETE FROM verdicts WHERE key = ?1", params![record.key])?;
        tx.execute("DELETE FROM manifests WHERE key = ?1", params![record.key])?;
        insert_manifest_row(tx, record, bytes, published_by, now)?;
        let closed_misses = close_satisfied_misses(tx, record)?;
        return Ok(ManifestPut::Replaced {
            closed_misses,
            replaced: published.manifest_digest,
        });
    };
    if current.artifact_sha256 == record.artifact_sha256 {
        // An identical build: agreement. Nothing new when its signers have already signed a
        // manifest with these bytes.
        let agreed: HashSet<&String> = std::iter::once(&published)
            .chain(history.iter().filter(|row| row.status == history::AGREEING))
            .filter(|row| row.artifact_sha256 == record.artifact_sha256)
            .flat_map(|row| row.signers.iter())
            .collect();
        if record.signers.iter().all(|id| agreed.contains(id)) {
            return Ok(ManifestPut::Unchanged {
                signers: current.signers.clone(),
            });
        }
        history::put_history(
            tx,
            &history::KeyManifest {
                key: record.key.clone(),
                status: history::AGREEING.to_string(),
                manifest_digest: digest,
                signed_manifest: bytes.to_vec(),
                signers: record.signers.clone(),
                artifact_sha256: record.artifact_sha256.clone(),
                published_by: published_by.to_string(),
                published_at: now,
                changed_at: now,
                note: format!(
                    "the same artifact as manifest {} (published by {})",
                    current.manifest_digest, current.published_by
                ),
                verdicts: serde_json::Value::Array(Vec::new()),
            },
        )?;
        return Ok(ManifestPut::Agreed {
            signers: record.signers.clone(),
        });
    }
    let manifest_of = |envelope: &[u8]| {
        SignedManifest::decode(envelope).ok().and_then(|s| {
            <precomp_proto::manifest::Manifest as Message>::decode(s.manifest.as_slice()).ok()
        })
    };
    // Other bytes by another way of compiling: both builds are correct, neither is a finding.
    let published_recipe = manifest_of(&current.signed_manifest)
        .and_then(|m| m.provenance)
        .and_then(|p| p.recipe);
    if published_recipe != record.recipe {
        return Ok(ManifestPut::OtherRecipe {
            published_recipe,
            signers: current.signers.clone(),
        });
    }
    // Other bytes for the same inputs: a reproducibility finding, recorded.
    let output_of = |envelope: &[u8]| {
        manifest_of(envelope)
            .and_then(|m| m.output)
            .unwrap_or_default()
    };
    let difference =
        super::describe_difference(&output_of(&current.signed_manifest), &output_of(bytes));
    let kept = history_rows(tx, &record.key)?;
    let recorded = kept.iter().any(|row| row.manifest_digest == digest)
        || (kept
            .iter()
            .filter(|row| row.status == history::CONFLICTING)
            .count() as u64)
            < history::MAX_CONFLICTING_PER_KEY;
    if !recorded {
        return Ok(ManifestPut::Conflict {
            existing_digest: current.manifest_digest.clone(),
            existing_artifact: current.artifact_sha256.clone(),
            existing_signers: current.signers.clone(),
            difference,
            recorded,
        });
    }
    history::put_history(
        tx,
        &history::KeyManifest {
            key: record.key.clone(),
            status: history::CONFLICTING.to_string(),
            manifest_digest: digest,
            signed_manifest: bytes.to_vec(),
            signers: record.signers.clone(),
            artifact_sha256: record.artifact_sha256.clone(),
            published_by: published_by.to_string(),
            published_at: now,
            changed_at: now,
            note: difference.clone(),
            verdicts: serde_json::Value::Array(Vec::new()),
        },
    )?;
    Ok(ManifestPut::Conflict {
        existing_digest: current.manifest_digest.clone(),
        existing_artifact: current.artifact_sha256.clone(),
        existing_signers: current.signers.clone(),
        difference,
        recorded,
    })
}

/// Adds `signed`'s verified signatures (`record.signers`) that `row`'s envelope lacks to it.
fn countersign(
    tx: &rusqlite::Transaction<'_>,
    row: &history::KeyManifest,
    signed: &SignedManifest,
    record: &ManifestRecord,
) -> rusqlite::Result<ManifestPut> {
    let Ok(mut envelope) = SignedManifest::decode(row.signed_manifest.as_slice()) else {
        return Ok(ManifestPut::Unchanged {
            signers: row.signers.clone(),
        });
    };
    let present: HashSet<String> = envelope
        .signatures
        .iter()
        .map(|s| s.key_id.clone())
        .collect();
    let added: Vec<_> = signed
        .signatures
        .iter()
        .filter(|s| record.signers.contains(&s.key_id) && !present.contains(&s.key_id))
        .cloned()
        .collect();
    let mut signers = row.signers.clone();
    if added.is_empty() {
        return Ok(ManifestPut::Unchanged { signers });
    }
    for signature in added {
        if !signers.contains(&signature.key_id) {
            signers.push(signature.key_id.clone());
        }
        envelope.signatures.push(signature);
    }
    let merged = envelope.encode_to_vec();
    if row.status == history::PUBLISHED {
        tx.execute(
            "UPDATE manifests SET signed_manifest = ?2, manifest_sha256 = ?3, signers = ?4
             WHERE key = ?1",
            params![
                row.key,
                merged,
                hex::encode(Sha256::digest(&merged)),
                to_json(&signers)
            ],
        )?;
    } else {
        tx.execute(
            "UPDATE manifest_history SET signed_manifest = ?3, signers = ?4
             WHERE key = ?1 AND manifest_digest = ?2",
            params![row.key, row.manifest_digest, merged, to_json(&signers)],
        )?;
    }
    Ok(ManifestPut::Countersigned { signers })
}

/// Inserts the `manifests` row of a verified manifest.
fn insert_manifest_row(
    tx: &rusqlite::Transaction<'_>,
    record: &ManifestRecord,
    bytes: &[u8],
    published_by: &str,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO manifests (key, base_key, package, version, otp_major, elixir,
            mix_env, target, artifact_sha256, artifact_size, compile_env, signers,
            signed_manifest, manifest_sha256, published_by, published_at,
            key_format, base_text, recipe)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19)",
        params![
            record.key,
            record.base_key,
            record.package,
            record.version,
            record.otp_major,
            record.elixir,
            record.mix_env,
            record.target,
            record.artifact_sha256,
            record.artifact_size as i64,
            to_json(&record.compile_env),
            to_json(&record.signers),
            bytes,
            hex::encode(Sha256::digest(bytes)),
            published_by,
            now,
            record.key_format,
            record.base_text,
            record.recipe
        ],
    )?;
    Ok(())
}

/// Closes the open misses a newly published build satisfies: those of its release and
/// toolchain whose request text its base text satisfies and, for config variants, whose
/// carried values cover the compile env it recorded.
fn close_satisfied_misses(
    tx: &rusqlite::Transaction<'_>,
    record: &ManifestRecord,
) -> rusqlite::Result<u64> {
    let satisfied: Vec<String> = {
        let mut stmt = tx.prepare(
            "SELECT miss_key, request_text, variant_key, inputs FROM misses
             WHERE package = ?1 AND version = ?2 AND closed_at IS NULL
               AND otp_major = ?3 AND elixir = ?4 AND mix_env = ?5",
        )?;
        let rows = stmt.query_map(
            params![
                record.package,
                record.version,
                record.otp_major,
                record.elixir,
                record.mix_env
            ],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                ))
            },
        )?;
        let mut satisfied = Vec::new();
        for row in rows {
            let (miss_key, request_text, variant_key, inputs) = row?;
            let own = match variant_key {
                None => None,
                Some(_) => {
                    let inputs: MissInputs = from_json(&inputs);
                    match parsed_compile_env(&inputs.compile_env) {
                        Some(own) => Some(own),
                        None => continue,
                    }
                }
            };
            if satisfies(
                &request_text,
                own.as_deref(),
                &record.base_text,
                &record.compile_env,
            ) {
                satisfied.push(miss_key);
            }
        }
        satisfied
    };
    let mut closed = 0;
    for miss_key in satisfied {
        closed += close_misses(tx, &miss_key, &format!("published {}", record.key))?;
    }
    Ok(closed)
}

/// The columns [`miss_row`] reads, in its order.
const MISS_COLUMNS: &str = "package, version, base_key, miss_key, reason, otp_major, \
    elixir, mix_env, target, lock, inputs, count, first_reported, last_reported, request_key, \
    variant_key";

/// A `misses` row selected as [`MISS_COLUMNS`].
fn miss_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Miss> {
    let base_key: Option<String> = row.get(2)?;
    let miss_key: String = row.get(3)?;
    let request_key: Option<String> = row.get(14)?;
    let variant_key: Option<String> = row.get(15)?;
    let inputs: MissInputs = from_json(&row.get::<_, String>(10)?);
    Ok(Miss {
        package: row.get(0)?,
        version: row.get(1)?,
        // Misses recorded before request keys had a column of their own: the miss key.
        request_key: request_key.or_else(|| base_key.is_none().then_some(miss_key)),
        base_key,
        variant_key,
        reason: row.get(4)?,
        otp_major: row.get(5)?,
        elixir: row.get(6)?,
        mix_env: row.get(7)?,
        target: row.get(8)?,
        lock: row.get(9)?,
        manager: inputs.manager,
        compile_env: inputs.compile_env,
        closure: inputs.closure,
        count: row.get::<_, i64>(11)? as u64,
        first_reported: row.get(12)?,
        last_reported: row.get(13)?,
    })
}

/// The columns [`index_build_row`] reads, in its order.
const INDEX_BUILD_COLUMNS: &str = "version, key, base_key, otp_major, elixir, \
    mix_env, target, artifact_sha256, artifact_size, compile_env, signers, key_format, recipe";

/// A `manifests` row selected as [`INDEX_BUILD_COLUMNS`]; `auditors`, `flagged` and
/// `verdicts` are left for the caller.
fn index_build_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<IndexBuild> {
    Ok(IndexBuild {
        version: row.get(0)?,
        key: row.get(1)?,
        base_key: row.get(2)?,
        otp_major: row.get(3)?,
        elixir: row.get(4)?,
        mix_env: row.get(5)?,
        target: row.get(6)?,
        artifact_sha256: row.get(7)?,
        artifact_size: row.get::<_, i64>(8)? as u64,
        compile_env: from_json(&row.get::<_, String>(9)?),
        signers: from_json(&row.get::<_, String>(10)?),
        key_format: row.get(11)?,
        recipe: row.get(12)?,
        auditors: Vec::new(),
        flagged: false,
        verdicts: Vec::new(),
        agreed_by: Vec::new(),
        disagreements: Vec::new(),
    })
}

/// Closes the open miss `miss_key` (a failure's base key names the miss it closes).
fn close_misses(
    tx: &rusqlite::Transaction<'_>,
    miss_key: &str,
    closed_by: &str,
) -> rusqlite::Result<u64> {
    tx.execute(
        "UPDATE misses SET closed_at = ?2, closed_by = ?3 WHERE miss_key = ?1 AND closed_at IS NULL",
        params![miss_key, now(), closed_by],
    )
    .map(|n| n as u64)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

/// Columns this module wrote; a malformed one reads as empty rather than failing the index.
fn from_json<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!("malformed JSON column in the artifact database: {e}");
        T::default()
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ArtifactStoreError + '_ {
    move |source| ArtifactStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod schema_tests {
    use super::contract::record_miss;
    use super::*;
    use crate::{Artifacts, ArtifactsConfig, HeartbeatRequest, JobKind};

    /// The schema each older precomp wrote (its `SCHEMA`, verbatim, and its `user_version`),
    /// by name: `tests/fixtures/legacy-schemas/`.
    const LEGACY: &[(&str, &str)] = &[
        (
            "v1a",
            include_str!("../tests/fixtures/legacy-schemas/v1a-e3bf253.sql"),
        ),
        (
            "v1b",
            include_str!("../tests/fixtures/legacy-schemas/v1b-c167051.sql"),
        ),
        (
            "v1c",
            include_str!("../tests/fixtures/legacy-schemas/v1c-babc19b.sql"),
        ),
        (
            "v2",
            include_str!("../tests/fixtures/legacy-schemas/v2-7881c9f.sql"),
        ),
        (
            "v3",
            include_str!("../tests/fixtures/legacy-schemas/v3-c3d7988.sql"),
        ),
        (
            "v4a",
            include_str!("../tests/fixtures/legacy-schemas/v4a-193e709.sql"),
        ),
        (
            "v4b",
            include_str!("../tests/fixtures/legacy-schemas/v4b-267b575.sql"),
        ),
    ];

    /// A database in `dir` as the older precomp `name` wrote it.
    fn legacy_database(dir: &Path, name: &str) -> Connection {
        let (_, sql) = LEGACY.iter().find(|(n, _)| *n == name).unwrap();
        let db = Connection::open(dir.join("artifacts.db")).unwrap();
        db.execute_batch(sql).unwrap();
        db
    }

    /// Every table's columns (name, type, not null, default, primary key) and indexes
    /// (name, unique, columns), sorted: what a migration must get right, whatever the order
    /// tables were made in.
    fn schema_of(db: &Connection) -> Vec<String> {
        let tables: Vec<String> = db
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' AND name != 'refinery_schema_history'",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut schema = Vec::new();
        for table in tables {
            let mut columns = db
                .prepare(&format!("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{table}')"))
                .unwrap();
            for column in columns
                .query_map([], |row| {
                    Ok(format!(
                        "{table}.{}: {} notnull={} default={:?} pk={}",
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, i64>(4)?
                    ))
                })
                .unwrap()
            {
                schema.push(column.unwrap());
            }
            let indexes: Vec<(String, i64)> = db
                .prepare(&format!(
                    "SELECT name, \"unique\" FROM pragma_index_list('{table}')"
                ))
                .unwrap()
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for (index, unique) in indexes {
                let columns: Vec<String> = db
                    .prepare(&format!(
                        "SELECT name FROM pragma_index_info('{index}') ORDER BY seqno"
                    ))
                    .unwrap()
                    .query_map([], |row| row.get::<_, Option<String>>(0))
                    .unwrap()
                    .map(|c| c.unwrap().unwrap_or_default())
                    .collect();
                let name = if index.starts_with("sqlite_autoindex") {
                    "auto"
                } else {
                    index.as_str()
                };
                schema.push(format!(
                    "{table} index {name} unique={unique} ({})",
                    columns.join(", ")
                ));
            }
        }
        schema.sort();
        schema
    }

    fn user_version(db: &Connection) -> i64 {
        db.query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap()
    }

    /// The migrations refinery recorded as applied.
    fn recorded_migrations(db: &Connection) -> Vec<i64> {
        db.prepare("SELECT version FROM refinery_schema_history ORDER BY version")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every schema an older precomp wrote (versions 1 to 4, in each shape they had) opens and
    /// ends with exactly the schema of a new database, with every migration recorded; opening
    /// it again changes nothing.
    #[test]
    fn every_older_database_migrates_to_the_schema_of_a_new_one() {
        let fresh_dir = tempfile::tempdir().unwrap();
        drop(ArtifactStore::open(fresh_dir.path()).unwrap());
        let fresh = Connection::open(fresh_dir.path().join("artifacts.db")).unwrap();
        let latest = migrations::latest_version();
        assert_eq!(latest, 6);
        assert_eq!(user_version(&fresh), latest);
        assert_eq!(
            recorded_migrations(&fresh),
            (1..=latest).collect::<Vec<_>>()
        );
        let expected = schema_of(&fresh);
        assert!(
            expected.iter().any(|c| c.starts_with("misses.has_values")),
            "{expected:?}"
        );

        for (name, _) in LEGACY {
            let dir = tempfile::tempdir().unwrap();
            let old = legacy_database(dir.path(), name);
            assert_ne!(
                schema_of(&old),
                expected,
                "{name} is already the new schema"
            );
            let store = ArtifactStore::open(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
            store.check().unwrap();
            assert_eq!(schema_of(&old), expected, "{name}");
            assert_eq!(user_version(&old), latest, "{name}");
            assert_eq!(
                recorded_migrations(&old),
                (1..=latest).collect::<Vec<_>>(),
                "{name}"
            );
            drop(store);
            ArtifactStore::open(dir.path()).unwrap();
            assert_eq!(schema_of(&old), expected, "{name}, opened again");
        }
    }

    /// A version-1 database is migrated when it is opened: its leases are build jobs, live
    /// and renewable, and the database says version 2.
    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_leases() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = legacy_database(dir.path(), "v1c");
            old.execute(
                "INSERT INTO leases (base_key, worker, token_name, lease_ms, leased_at,
                    expires_ms) VALUES ('b1', 'w', 'w1', 60000, 0, ?1)",
                params![(now() + 600) * 1000],
            )
            .unwrap();
        }
        let builder = precomp_proto::manifest::ArtifactSigningKey::generate().public_key();
        let artifacts = Artifacts::open(ArtifactsConfig {
            data: dir.path().to_path_buf(),
            ..ArtifactsConfig::default()
        })
        .unwrap();
        let worker = Publisher {
            name: "w1".into(),
            key: Some(builder),
            scopes: None,
        };
        let renewed = artifacts
            .heartbeat_job(1, &HeartbeatRequest::default(), &worker)
            .unwrap();
        assert_eq!(renewed.kind, JobKind::Build);
        assert_eq!(renewed.base_key, "b1");
        assert_eq!(renewed.key, None);
        drop(artifacts);

        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, migrations::latest_version());
        let kind: String = db
            .query_row("SELECT kind FROM leases WHERE job = 1", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(kind, "build");
        // Opening a migrated database again changes nothing.
        ArtifactStore::open(dir.path()).unwrap();
        let columns: i64 = db
            .query_row(
                "SELECT count(*) FROM pragma_table_info('leases')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(columns, 13);
    }

    /// A version-2 database (key format v1) is migrated when it is opened: its manifests stay
    /// served and indexed as key format 1, its misses are kept (with their locks) but closed,
    /// and new misses and manifests are recorded in the new tables.
    #[test]
    fn a_version_2_database_is_migrated_keeping_its_v1_builds_and_closing_its_misses() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = legacy_database(dir.path(), "v2");
            old.execute(
                "INSERT INTO manifests VALUES ('k1', 'b1', 'shapes', '1.0.0', '25', '1.14.0',
                    'prod', 'any', 'aa', 10, '[]', '[]', x'0a00', 'ss', 'builder', 5)",
                [],
            )
            .unwrap();
            old.execute(
                "INSERT INTO misses VALUES ('m1', 'plain_ex', '1.0.0', 'not built', '25',
                    '1.14.0', 'prod', 'any', 'LOCK', 3, 1, 2, NULL, NULL)",
                [],
            )
            .unwrap();
        }
        let store = ArtifactStore::open(dir.path()).unwrap();
        // The v1 build is still indexed and served, as key format 1.
        let index = store.index("shapes").unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!((index[0].key.as_str(), index[0].key_format), ("k1", 1));
        assert_eq!(store.manifest("k1").unwrap(), Some(vec![0x0a, 0x00]));
        // The v1 miss is closed, with why, and keeps its lock (gc reads recent misses' locks).
        assert!(store.open_misses(10, 1 << 20).unwrap().is_empty());
        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        let (lock, closed_by, count): (String, String, i64) = db
            .query_row(
                "SELECT lock, closed_by, count FROM misses WHERE miss_key = 'm1'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!((lock.as_str(), count), ("LOCK", 3));
        assert!(closed_by.contains("key format v1"), "{closed_by}");
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, migrations::latest_version());
        // Opening it again changes nothing; the old table is gone.
        drop(store);
        ArtifactStore::open(dir.path()).unwrap();
        let tables: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'misses_v2'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// A version-3 database is migrated when it is opened (one step, 3 → 4): its misses keep
    /// their keys — a request-key miss is listed with its request key, a base-key miss with
    /// its base key and no variant key — and those carrying values are known to, so they
    /// expire; the new tables exist.
    #[test]
    fn a_version_3_database_is_migrated_keeping_its_misses() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = legacy_database(dir.path(), "v3");
            let now = now();
            for (key, base_key, inputs) in [
                (
                    "r1",
                    None,
                    r#"{"manager":"mix","compile_env":[],"closure":[]}"#,
                ),
                (
                    "b1",
                    Some("b1"),
                    r#"{"manager":"mix","compile_env":[{"app":"a","path":"[k]","value":"1"}],"closure":[]}"#,
                ),
            ] {
                old.execute(
                    "INSERT INTO misses (miss_key, base_key, request_text, package, version,
                        reason, otp_major, elixir, mix_env, target, lock, inputs, count,
                        first_reported, last_reported)
                     VALUES (?1, ?2, '', 'plain_ex', '1.0.0', 'not built', '25', '1.14.0',
                        'prod', 'any', 'LOCK', ?3, 1, ?4, ?4)",
                    params![key, base_key, inputs, now],
                )
                .unwrap();
            }
        }
        let store = ArtifactStore::open(dir.path()).unwrap();
        let misses = store.open_misses(10, 1 << 20).unwrap();
        assert_eq!(misses.len(), 2);
        let by_key = |key: &str| misses.iter().find(|m| m.miss_key() == key).unwrap();
        assert_eq!(by_key("r1").request_key.as_deref(), Some("r1"));
        assert_eq!(by_key("r1").base_key, None);
        assert_eq!(by_key("b1").base_key.as_deref(), Some("b1"));
        assert_eq!(by_key("b1").request_key, None);
        assert_eq!(by_key("b1").variant_key, None);
        assert_eq!(by_key("b1").compile_env[0].value.as_deref(), Some("1"));
        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, migrations::latest_version());
        let with_values: Vec<String> = db
            .prepare("SELECT miss_key FROM misses WHERE has_values = 1")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(with_values, vec!["b1".to_string()]);
        for table in ["config_variants", "worker_tuples"] {
            let found: i64 = db
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                    params![table],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(found, 1, "{table}");
        }
        // Opening it again changes nothing.
        drop(store);
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert_eq!(store.open_misses(10, 1 << 20).unwrap().len(), 2);
    }

    /// The values misses carry are erased once they have not been reported for the
    /// retention: the miss is closed saying so (its lock kept), its config variants are
    /// forgotten; a new report opens it again with its new values.
    #[test]
    fn miss_values_expire_after_the_retention_and_a_new_report_reopens_the_miss() {
        use crate::{CompileEnvJson, MissReport};
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let report = MissReport {
            package: "env_reader".into(),
            version: "1.0.0".into(),
            base_key: Some("b".repeat(64)),
            request_key: None,
            variant_key: None,
            reason: "compile_env_mismatch".into(),
            otp_major: "25".into(),
            elixir: "1.14.0".into(),
            mix_env: "prod".into(),
            target: "any".into(),
            lock: "LOCK".into(),
            manager: "mix".into(),
            compile_env: vec![CompileEnvJson {
                app: "env_reader".into(),
                path: "[greeting]".into(),
                value: Some("<<\"howdy\">>".into()),
            }],
            closure: vec![],
        };
        let record = MissRecord {
            report: &report,
            miss_key: "v".repeat(64),
            request_text: String::new(),
            variant_key: Some("v".repeat(64)),
            own_compile_env: Vec::new(),
            variants: vec![VariantRef {
                package: "env_reader".into(),
                version: "1.0.0".into(),
                digest: "d".repeat(64),
            }],
        };
        let policy = MissPolicy {
            max_config_variants: 1,
            retention_seconds: 3600,
            ..MissPolicy::default()
        };
        assert!(record_miss(&store, &record, &policy).open);
        // Another variant of the release is past the bound of 1.
        let mut other = record.clone();
        other.miss_key = "w".repeat(64);
        other.variant_key = Some("w".repeat(64));
        other.variants[0].digest = "e".repeat(64);
        assert_eq!(
            store.record_miss(&other, &policy, &|_| true).unwrap(),
            MissOutcome::TooManyVariants {
                package: "env_reader".into(),
                version: "1.0.0".into(),
                limit: 1
            }
        );

        // Within the retention nothing changes; after it, the values are gone.
        assert_eq!(store.expire_miss_values(now() + 60, 3600).unwrap(), 0);
        assert_eq!(store.open_misses(10, 1 << 20).unwrap().len(), 1);
        assert_eq!(store.expire_miss_values(now() + 3601, 3600).unwrap(), 1);
        assert!(store.open_misses(10, 1 << 20).unwrap().is_empty());
        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        let (inputs, lock, closed_by): (String, String, String) = db
            .query_row("SELECT inputs, lock, closed_by FROM misses", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert!(!inputs.contains("howdy"), "{inputs}");
        assert_eq!(lock, "LOCK");
        assert!(closed_by.starts_with("expired"), "{closed_by}");
        let variants: i64 = db
            .query_row("SELECT count(*) FROM config_variants", [], |row| row.get(0))
            .unwrap();
        assert_eq!(variants, 0);

        // The other variant now fits; the first, reported again, is open with its values.
        assert!(record_miss(&store, &other, &policy).open);
        let policy = MissPolicy {
            max_config_variants: 2,
            ..policy
        };
        let again = record_miss(&store, &record, &policy);
        assert!(again.open);
        assert_eq!(again.count, 2);
        let open = store.open_misses(10, 1 << 20).unwrap();
        let reopened = open
            .iter()
            .find(|m| m.miss_key() == "v".repeat(64))
            .unwrap();
        assert_eq!(
            reopened.compile_env[0].value.as_deref(),
            Some("<<\"howdy\">>")
        );
    }

    /// An open miss nobody reports again expires too, values or not, and a new report opens
    /// it again; open misses are bounded (a repeat of an open one still counts).
    #[test]
    fn unreported_open_misses_expire_and_open_misses_are_bounded() {
        use crate::MissReport;
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let report = MissReport {
            package: "plain_ex".into(),
            version: "1.0.0".into(),
            base_key: Some("b".repeat(64)),
            request_key: None,
            variant_key: None,
            reason: "not built".into(),
            otp_major: "25".into(),
            elixir: "1.14.0".into(),
            mix_env: "prod".into(),
            target: "any".into(),
            lock: "LOCK".into(),
            manager: "mix".into(),
            compile_env: vec![],
            closure: vec![],
        };
        let record = MissRecord {
            report: &report,
            miss_key: "b".repeat(64),
            request_text: String::new(),
            variant_key: None,
            own_compile_env: Vec::new(),
            variants: vec![],
        };
        let policy = MissPolicy {
            retention_seconds: 3600,
            max_open: 1,
            ..MissPolicy::default()
        };
        assert!(record_miss(&store, &record, &policy).open);
        let mut other = record.clone();
        other.miss_key = "c".repeat(64);
        assert_eq!(
            store.record_miss(&other, &policy, &|_| true).unwrap(),
            MissOutcome::TooManyOpen { limit: 1 }
        );
        assert_eq!(record_miss(&store, &record, &policy).count, 2);
        assert_eq!(store.expire_miss_values(now() + 60, 3600).unwrap(), 0);
        assert_eq!(store.expire_miss_values(now() + 3601, 3600).unwrap(), 1);
        assert!(store.open_misses(10, 1 << 20).unwrap().is_empty());
        // The bound now lets another open; the expired one reopens when reported again.
        assert!(record_miss(&store, &other, &policy).open);
        let policy = MissPolicy {
            max_open: 2,
            ..policy
        };
        let again = record_miss(&store, &record, &policy);
        assert!(again.open, "{again:?}");
        assert_eq!(again.count, 3);
    }

    /// A panic while the database is locked (a bug in one request) must not turn every later
    /// request into an error, as a poisoned `std::sync::Mutex` did.
    #[test]
    fn a_panic_while_the_database_is_locked_leaves_it_usable() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(ArtifactStore::open(dir.path()).unwrap());
        let token = store.create_token("b1", None, None).unwrap();
        let panicking = std::sync::Arc::clone(&store);
        let result = std::thread::spawn(move || {
            let _db = panicking.db.lock();
            panic!("a bug while the database is locked");
        })
        .join();
        assert!(result.is_err(), "the thread did not panic");
        store.check().unwrap();
        assert!(matches!(
            store.lookup_token(&token).unwrap(),
            TokenLookup::Active(_)
        ));
    }

    /// A database from before `manifests.recipe` (version 5) gets each row's recipe from its
    /// signed manifest: a builder newer than its mirror recorded one the mirror did not know.
    #[test]
    fn a_version_5_database_gets_the_recipes_its_manifests_record() {
        use super::contract::build_of_recipe;
        let dir = tempfile::tempdir().unwrap();
        let builder = precomp_proto::manifest::ArtifactSigningKey::generate();
        {
            let store = ArtifactStore::open(dir.path()).unwrap();
            for (otp, recipe) in [("25", Some("precomp-build-recipe-3")), ("26", None)] {
                let (mut record, signed) = build_of_recipe(otp, 1, recipe, &builder);
                // As a version 5 mirror stored it: the recipe in the bytes only.
                record.recipe = None;
                store
                    .put_manifest(&record, &signed, &signed.encode_to_vec(), "b", &|_| true)
                    .unwrap();
            }
        }
        {
            // Back to version 5's schema.
            let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
            db.execute_batch(
                "ALTER TABLE manifests DROP COLUMN recipe;
                 DELETE FROM refinery_schema_history WHERE version = 6;
                 PRAGMA user_version = 5;",
            )
            .unwrap();
        }
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut index = store.index("plain_ex").unwrap();
        index.sort_by(|a, b| a.otp_major.cmp(&b.otp_major));
        let recipes: Vec<Option<&str>> = index.iter().map(|b| b.recipe.as_deref()).collect();
        assert_eq!(recipes, [Some("precomp-build-recipe-3"), None]);
    }

    /// A database of a newer precomp is refused, untouched: by its `user_version` (what
    /// precomps before refinery set) and by a migration refinery recorded that this precomp
    /// does not know.
    #[test]
    fn a_newer_database_is_refused_untouched() {
        let latest = migrations::latest_version();
        let dir = tempfile::tempdir().unwrap();
        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        db.pragma_update(None, "user_version", latest + 1).unwrap();
        let error = ArtifactStore::open(dir.path()).err().expect("refused");
        assert!(
            matches!(error, ArtifactStoreError::NewerSchema { found, known, .. } if found == latest + 1 && known == latest),
            "{error}"
        );
        assert!(error.to_string().contains("newer precomp"), "{error}");
        assert_eq!(user_version(&db), latest + 1);
        assert!(schema_of(&db).is_empty());

        let dir = tempfile::tempdir().unwrap();
        drop(ArtifactStore::open(dir.path()).unwrap());
        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        db.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (?1, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
            params![latest + 1],
        )
        .unwrap();
        assert!(matches!(
            ArtifactStore::open(dir.path()),
            Err(ArtifactStoreError::NewerSchema { .. })
        ));
        assert_eq!(user_version(&db), latest);
    }

    /// A migration that fails leaves the database as it was: the baseline, the earlier
    /// migrations and the version are one transaction with it.
    #[test]
    fn a_failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let old = legacy_database(dir.path(), "v2");
        // Migration 3 rebuilds `misses`: without it, it fails.
        old.execute_batch("DROP TABLE misses").unwrap();
        let before = schema_of(&old);
        let error = ArtifactStore::open(dir.path())
            .err()
            .expect("the migration fails");
        assert!(
            matches!(error, ArtifactStoreError::Migration { .. }),
            "{error}"
        );
        assert_eq!(schema_of(&old), before);
        assert_eq!(user_version(&old), 2);
        let history: i64 = old
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'refinery_schema_history'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(history, 0);
    }

    /// An applied migration whose recorded checksum differs from the embedded one (it was
    /// edited after it shipped) is refused, not run again or ignored.
    #[test]
    fn an_edited_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(ArtifactStore::open(dir.path()).unwrap());
        let db = Connection::open(dir.path().join("artifacts.db")).unwrap();
        db.execute(
            "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 2",
            [],
        )
        .unwrap();
        let error = ArtifactStore::open(dir.path()).err().expect("refused");
        assert!(
            matches!(error, ArtifactStoreError::Migration { .. }),
            "{error}"
        );
    }
}

#[cfg(test)]
mod ops_tests {
    use super::*;

    /// What `precomp gc` and `/metrics` read: uses recorded (throttled), verdicts counted.
    #[test]
    fn uses_are_recorded_hourly_and_verdicts_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let other = Connection::open(dir.path().join("artifacts.db")).unwrap();
        let last_used = |sha: &str| -> Option<i64> {
            other
                .query_row(
                    "SELECT last_used FROM artifact_use WHERE sha256 = ?1",
                    params![sha],
                    |row| row.get(0),
                )
                .optional()
                .unwrap()
        };
        let sha = [7u8; 32];
        store.touch_artifact(&sha);
        let first = last_used(&hex::encode(sha)).expect("recorded");
        assert!(now() - first < 60);
        // Within the hour a second use writes nothing.
        other
            .execute("UPDATE artifact_use SET last_used = 1", [])
            .unwrap();
        store.touch_artifact(&sha);
        assert_eq!(last_used(&hex::encode(sha)), Some(1));

        assert_eq!(store.verdict_counts().unwrap(), (0, 0));
        for (key, result) in [("a", "match"), ("b", "match"), ("c", "mismatch")] {
            other
                .execute(
                    "INSERT INTO verdicts (key, auditor_id, result, summary, toolchain_id,
                        signed_verdict, verdict_sha256, reported_by, received_at)
                     VALUES (?1, 'ed25519:0000000000000000', ?2, '', 'host', x'', '', 't', 0)",
                    params![key, result],
                )
                .unwrap();
        }
        assert_eq!(store.verdict_counts().unwrap(), (2, 1));
    }
}
