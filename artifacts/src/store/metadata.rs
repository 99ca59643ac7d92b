//! The artifact service's metadata, behind a trait: what [`crate::Artifacts`] (and the
//! commands beside it) ask of the store, as domain operations. [`ArtifactStore`] (SQLite) is
//! the implementation; a PostgreSQL one for multi-node mirrors can be written against the
//! same contract and checked by the same tests ([`super::contract`]).
//!
//! The contract, for any implementation:
//! - each method is one transaction: what it reads and what it writes are consistent with
//!   each other, and a concurrent caller (another process, another node) sees all of it or
//!   none of it. Several processes or nodes may share one store.
//! - no database types in the signatures; failures are [`ArtifactStoreError`], whose domain
//!   variants ([`JobError`], the token errors) say what went wrong without an HTTP status
//!   (the service maps them: `impl From<ArtifactStoreError> for Refusal`).
//! - time: the methods that record when something happened take it from one clock
//!   ([`super::now`], Unix seconds); leases, which expire, take `now_ms` from the caller
//!   (tests pass their own clock).
//! - artifact bodies are not here: they are content-addressed files beside the store
//!   ([`super::Blobs`]), whichever store holds their rows. A row is recorded only once its
//!   blob is in place; gc deletes rows, then blobs.
//! - a method that takes `counts` calls it inside its transaction, for the key ids whose
//!   signatures count on the mirror now (the trust document's verdict); it must not block.

use precomp_proto::manifest::{ArtifactPublicKey, SignedManifest};
use precomp_proto::verdict::Verdict;

use super::history::KeyManifest;
use super::jobs::{JobRecord, LeaseEnd, LeaseQuery, LeasedJob};
use super::maintenance::{GcDrop, GcView, NamedArtifact, RecordedArtifact};
use super::verdicts::VerdictPut;
use super::{
    ArtifactStoreError, ManifestPut, ManifestRecord, MissOutcome, MissPolicy, MissRecord,
    TokenInfo, TokenLookup,
};
use crate::api::{
    Failure, FailureRecorded, FailureReport, IndexBuild, JobListing, Miss, ReleaseOutcome, Verdicts,
};
use crate::token::Scope;

#[allow(unused_imports)] // for the docs
use super::jobs::JobError;

type Result<T> = std::result::Result<T, ArtifactStoreError>;

/// The artifact store's metadata: tokens, artifacts' rows, manifests and their history,
/// failures, misses, verdicts, leases, and what gc needs. Object-safe; held as
/// `Arc<dyn MetadataStore>`.
pub trait MetadataStore: Send + Sync {
    /// Whether the store answers a query (`/healthz`).
    fn check(&self) -> Result<()>;

    // Tokens ---------------------------------------------------------------------------------

    /// Creates a token named `name` (bound to `key`, with `scopes` if given) and returns it:
    /// the only time it exists outside the caller; only its SHA-256 is kept. A revoked
    /// token's name can be reused; a live one's cannot ([`ArtifactStoreError::TokenExists`]).
    fn create_token(
        &self,
        name: &str,
        key: Option<&ArtifactPublicKey>,
        scopes: Option<&[Scope]>,
    ) -> Result<String>;
    /// Every token, by name (never the token, never its hash).
    fn list_tokens(&self) -> Result<Vec<TokenInfo>>;
    /// Revokes the token `name` ([`ArtifactStoreError::NoSuchToken`],
    /// [`ArtifactStoreError::AlreadyRevoked`]).
    fn revoke_token(&self, name: &str) -> Result<()>;
    /// What a presented token is, looked up by its SHA-256 and read on every call (a `precomp
    /// token revoke` takes effect at once).
    fn lookup_token(&self, token: &str) -> Result<TokenLookup>;

    // Artifacts ------------------------------------------------------------------------------

    /// Records a blob that is in place (idempotent).
    fn record_artifact(&self, sha256: &[u8; 32], size: u64, uploaded_by: &str) -> Result<()>;
    /// Records that an artifact was used now (served, or named by a manifest being
    /// published), for gc; may be throttled (the SQLite store writes at most once an hour per
    /// artifact and process). Best effort: a failed write is logged, never an error (it must
    /// not fail a download).
    fn touch_artifact(&self, sha256: &[u8; 32]);

    // Manifests, history and the index -------------------------------------------------------

    /// Stores a verified manifest (`bytes`, decoded as `signed`), in one transaction with the
    /// misses it closes. `counts` says whether a signer's signature counts on the mirror now
    /// (its trust document does not exclude the key). Under a key nothing is published under,
    /// it is published (`Created`). Under a published key (docs/protocol.md, "Several
    /// manifests for one key", and `store::history`):
    /// - the same bytes: `Unchanged`; the same manifest as the published one or an agreeing
    ///   one, with new signatures: they are added to that envelope (`Countersigned`);
    /// - when no manifest of the key has a signer that counts (revoked, expired): it is
    ///   published in place of the old one, which is kept as `replaced` with its verdicts, and
    ///   closes the misses it satisfies (`Replaced`);
    /// - else, the same artifact: kept as `agreeing` (`Agreed`), or `Unchanged` when its
    ///   signers already signed a manifest with that artifact;
    /// - else, another artifact of another build recipe than the published one's (or of
    ///   none): nothing stored (`OtherRecipe`);
    /// - else, another artifact: kept as `conflicting`, with what differs (`Conflict`).
    fn put_manifest(
        &self,
        record: &ManifestRecord,
        signed: &SignedManifest,
        bytes: &[u8],
        published_by: &str,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<ManifestPut>;
    /// The signed manifest published under `key`.
    fn manifest(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every manifest kept for `key`: the published one first, then its history, oldest
    /// first; empty when nothing is published.
    fn key_manifests(&self, key: &str) -> Result<Vec<KeyManifest>>;
    /// The history rows of `package`'s builds (for the index: agreeing builders and
    /// disagreements), without their envelopes.
    fn package_history(&self, package: &str) -> Result<Vec<KeyManifest>>;
    /// Every build of `package` with its verdict summary, by version (SemVer), then key.
    fn index(&self, package: &str) -> Result<Vec<IndexBuild>>;
    /// The packages with a published build, sorted.
    fn packages(&self) -> Result<Vec<String>>;

    // Failures -------------------------------------------------------------------------------

    /// Records a failed build (the latest log per base key and toolchain, with a count of
    /// attempts) and closes the misses of its base key.
    fn record_failure(&self, report: &FailureReport, reported_by: &str) -> Result<FailureRecorded>;
    /// `package`'s failures, most recent first.
    fn failures(&self, package: &str) -> Result<Vec<Failure>>;

    // Misses ---------------------------------------------------------------------------------

    /// Counts a (validated) miss, by its key. The first report opens it, unless a build that
    /// satisfies it is published with a signer that counts (`counts`: the mirror's trust
    /// document does not exclude it) or a failure with its key is recorded already; later
    /// reports count, and reopen a miss a publish closed when no such build satisfies it any
    /// more (its signers were revoked, gc removed it). A miss whose values expired is opened
    /// again by a new report, with the new report's values. A miss asking for a config variant
    /// past `policy`'s bound is not recorded ([`MissOutcome::TooManyVariants`]).
    fn record_miss(
        &self,
        miss: &MissRecord<'_>,
        policy: &MissPolicy,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<MissOutcome>;
    /// Erases the compile-env values of misses last reported more than `retention_seconds`
    /// before `now` (an open one is closed: it cannot be built without them; its lock is
    /// kept, for gc), and forgets the config variants and worker tuples not seen since. How
    /// many misses were erased.
    fn expire_miss_values(&self, now: i64, retention_seconds: i64) -> Result<u64>;
    /// [`MetadataStore::expire_miss_values`] with `policy`'s retention, when this process has
    /// not done it lately (the SQLite store: in the last minute, or the retention if shorter).
    /// Misses are expired so whenever they are recorded ([`MetadataStore::record_miss`], in
    /// its transaction), listed or leased.
    fn expire_if_due(&self, policy: &MissPolicy) -> Result<()>;
    /// The open misses, most reported first: at most `limit`, and no more once their locks
    /// add up to `max_bytes` (the first is always listed).
    fn open_misses(&self, limit: usize, max_bytes: usize) -> Result<Vec<Miss>>;

    // Verdicts -------------------------------------------------------------------------------

    /// Stores a verified verdict (replacing its auditor's earlier one) if it is about the
    /// manifest published under its key (or an agreeing one: they hold the same artifact) and
    /// its artifact; says whether the build is now flagged (a `mismatch` verdict on it).
    fn put_verdict(&self, verdict: &Verdict, bytes: &[u8], reported_by: &str)
        -> Result<VerdictPut>;
    /// Every verdict on `key`, by auditor.
    fn verdicts(&self, key: &str) -> Result<Verdicts>;
    /// The stored verdicts (the latest per build and auditor) by result: `(matches,
    /// mismatches)`, for the reproducibility rate on `/metrics`.
    fn verdict_counts(&self) -> Result<(u64, u64)>;

    // Leases ---------------------------------------------------------------------------------

    /// Records the tuples `query`'s worker asked for, then leases it the next job: for a
    /// build job the most-reported open miss of one of its tuples with no live lease, for an
    /// audit job the matching published build with the fewest audits. An earlier lease of
    /// that work (expired) ends as lost. `None` when there is no such job.
    fn lease_job(&self, query: &LeaseQuery<'_>, now_ms: i64) -> Result<Option<LeasedJob>>;
    /// The lease `job` as it stands.
    fn job(&self, job: u64) -> Result<Option<JobRecord>>;
    /// Renews the lease of `job` for `token` (which must have leased it) until `now_ms` plus
    /// `lease_ms` (its last duration when `None`); the worker's tuples count as seen now.
    /// [`JobError`] when it is not there, not `token`'s, ended or closed.
    fn renew_lease(
        &self,
        job: u64,
        token: &str,
        lease_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<JobRecord>;
    /// Ends the lease of `job` for `token` (which must have leased it) as `outcome`, with
    /// `reason`: `Released` puts the work back in the queue, `Failed` keeps an audit job from
    /// this token for good. A lease released before is left as it is; a lost one is
    /// [`JobError::Ended`].
    fn end_lease(
        &self,
        job: u64,
        token: &str,
        outcome: ReleaseOutcome,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<LeaseEnd>;
    /// `GET jobs`: the open misses by tuple and whether a worker asked for that tuple within
    /// [`crate::WORKER_WINDOW_SECONDS`] of `now_ms`, the workers seen, and the live leases.
    fn job_listing(&self, now_ms: i64) -> Result<JobListing>;

    // What gc needs --------------------------------------------------------------------------

    /// Reads what gc decides on (`misses_since`: the oldest miss whose lock counts), asks
    /// `decide`, and — with `apply` — deletes what it returns in the same transaction (a write
    /// transaction from the start, so nothing is published or recorded in between), then
    /// removes the dropped artifacts' blobs. Rows go first: a crash in between leaves blobs
    /// without rows, which [`super::Blobs::files`] shows gc next time.
    fn collect_garbage(
        &self,
        misses_since: i64,
        apply: bool,
        decide: &mut dyn FnMut(&GcView) -> GcDrop,
    ) -> Result<GcDrop>;
    /// Every artifact row (digest, size), by digest.
    fn recorded_artifacts(&self) -> Result<Vec<RecordedArtifact>>;
    /// The artifacts published builds name (digest and size, as their manifests say), by
    /// digest, each with the keys of the builds that name it: each must be stored.
    fn named_artifacts(&self) -> Result<Vec<NamedArtifact>>;
}
