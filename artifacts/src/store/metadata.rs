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
use super::maintenance::{GcDrop, GcView, RecordedArtifact};
use super::verdicts::VerdictPut;
use super::{
    ArtifactStore, ArtifactStoreError, ManifestPut, ManifestRecord, MissOutcome, MissPolicy,
    MissRecord, TokenInfo, TokenLookup,
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
    /// What a presented token is, read on every call (a revoke takes effect at once).
    fn lookup_token(&self, token: &str) -> Result<TokenLookup>;

    // Artifacts ------------------------------------------------------------------------------

    /// Records a blob that is in place (idempotent).
    fn record_artifact(&self, sha256: &[u8; 32], size: u64, uploaded_by: &str) -> Result<()>;
    /// Records that an artifact was used now, for gc; best effort (never fails a download).
    fn touch_artifact(&self, sha256: &[u8; 32]);

    // Manifests, history and the index -------------------------------------------------------

    /// Stores a verified manifest with the misses it closes ([`ArtifactStore::put_manifest`]
    /// describes the outcomes).
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
    /// The history rows of `package`'s builds, without their envelopes.
    fn package_history(&self, package: &str) -> Result<Vec<KeyManifest>>;
    /// Every build of `package` with its verdict summary, by version (SemVer), then key.
    fn index(&self, package: &str) -> Result<Vec<IndexBuild>>;
    /// The packages with a published build, sorted.
    fn packages(&self) -> Result<Vec<String>>;

    // Failures -------------------------------------------------------------------------------

    /// Records a failed build (the latest log per base key and toolchain, counted) and closes
    /// the misses of its base key.
    fn record_failure(&self, report: &FailureReport, reported_by: &str) -> Result<FailureRecorded>;
    /// `package`'s failures, most recent first.
    fn failures(&self, package: &str) -> Result<Vec<Failure>>;

    // Misses ---------------------------------------------------------------------------------

    /// Counts a validated miss, bounded by `policy` ([`ArtifactStore::record_miss`]).
    fn record_miss(
        &self,
        miss: &MissRecord<'_>,
        policy: &MissPolicy,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<MissOutcome>;
    /// Erases the values of misses last reported more than `retention_seconds` before `now`
    /// (closing the open ones); how many.
    fn expire_miss_values(&self, now: i64, retention_seconds: i64) -> Result<u64>;
    /// [`MetadataStore::expire_miss_values`] with `policy`'s retention, when this process has
    /// not done it lately.
    fn expire_if_due(&self, policy: &MissPolicy) -> Result<()>;
    /// The open misses, most reported first: at most `limit`, and no more once their locks
    /// add up to `max_bytes` (the first is always listed).
    fn open_misses(&self, limit: usize, max_bytes: usize) -> Result<Vec<Miss>>;

    // Verdicts -------------------------------------------------------------------------------

    /// Stores a verified verdict (replacing its auditor's earlier one) if it is about the
    /// manifest published under its key.
    fn put_verdict(&self, verdict: &Verdict, bytes: &[u8], reported_by: &str)
        -> Result<VerdictPut>;
    /// Every verdict on `key`, by auditor.
    fn verdicts(&self, key: &str) -> Result<Verdicts>;
    /// The latest verdicts by result: `(matches, mismatches)`.
    fn verdict_counts(&self) -> Result<(u64, u64)>;

    // Leases ---------------------------------------------------------------------------------

    /// Records the worker's tuples and leases it the next job, if any.
    fn lease_job(&self, query: &LeaseQuery<'_>, now_ms: i64) -> Result<Option<LeasedJob>>;
    /// The lease `job` as it stands.
    fn job(&self, job: u64) -> Result<Option<JobRecord>>;
    /// Renews `token`'s lease of `job` ([`JobError`] when not there, not its, ended, closed).
    fn renew_lease(
        &self,
        job: u64,
        token: &str,
        lease_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<JobRecord>;
    /// Ends `token`'s lease of `job` as `outcome`.
    fn end_lease(
        &self,
        job: u64,
        token: &str,
        outcome: ReleaseOutcome,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<LeaseEnd>;
    /// `GET jobs`: demand by tuple, workers seen, live leases.
    fn job_listing(&self, now_ms: i64) -> Result<JobListing>;

    // What gc needs --------------------------------------------------------------------------

    /// Reads what gc decides on, asks `decide`, and with `apply` deletes what it returns in
    /// the same transaction, then the dropped artifacts' blobs.
    fn collect_garbage(
        &self,
        misses_since: i64,
        apply: bool,
        decide: &mut dyn FnMut(&GcView) -> GcDrop,
    ) -> Result<GcDrop>;
    /// Every artifact row (digest, size), by digest.
    fn recorded_artifacts(&self) -> Result<Vec<RecordedArtifact>>;
    /// The artifacts published builds name, by digest.
    fn named_artifacts(&self) -> Result<Vec<RecordedArtifact>>;
}

/// The SQLite store: each method is the inherent one of the same name.
impl MetadataStore for ArtifactStore {
    fn check(&self) -> Result<()> {
        ArtifactStore::check(self)
    }
    fn create_token(
        &self,
        name: &str,
        key: Option<&ArtifactPublicKey>,
        scopes: Option<&[Scope]>,
    ) -> Result<String> {
        ArtifactStore::create_token(self, name, key, scopes)
    }
    fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        ArtifactStore::list_tokens(self)
    }
    fn revoke_token(&self, name: &str) -> Result<()> {
        ArtifactStore::revoke_token(self, name)
    }
    fn lookup_token(&self, token: &str) -> Result<TokenLookup> {
        ArtifactStore::lookup_token(self, token)
    }
    fn record_artifact(&self, sha256: &[u8; 32], size: u64, uploaded_by: &str) -> Result<()> {
        ArtifactStore::record_artifact(self, sha256, size, uploaded_by)
    }
    fn touch_artifact(&self, sha256: &[u8; 32]) {
        ArtifactStore::touch_artifact(self, sha256)
    }
    fn put_manifest(
        &self,
        record: &ManifestRecord,
        signed: &SignedManifest,
        bytes: &[u8],
        published_by: &str,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<ManifestPut> {
        ArtifactStore::put_manifest(self, record, signed, bytes, published_by, counts)
    }
    fn manifest(&self, key: &str) -> Result<Option<Vec<u8>>> {
        ArtifactStore::manifest(self, key)
    }
    fn key_manifests(&self, key: &str) -> Result<Vec<KeyManifest>> {
        ArtifactStore::key_manifests(self, key)
    }
    fn package_history(&self, package: &str) -> Result<Vec<KeyManifest>> {
        ArtifactStore::package_history(self, package)
    }
    fn index(&self, package: &str) -> Result<Vec<IndexBuild>> {
        ArtifactStore::index(self, package)
    }
    fn packages(&self) -> Result<Vec<String>> {
        ArtifactStore::packages(self)
    }
    fn record_failure(&self, report: &FailureReport, reported_by: &str) -> Result<FailureRecorded> {
        ArtifactStore::record_failure(self, report, reported_by)
    }
    fn failures(&self, package: &str) -> Result<Vec<Failure>> {
        ArtifactStore::failures(self, package)
    }
    fn record_miss(
        &self,
        miss: &MissRecord<'_>,
        policy: &MissPolicy,
        counts: &dyn Fn(&str) -> bool,
    ) -> Result<MissOutcome> {
        ArtifactStore::record_miss(self, miss, policy, counts)
    }
    fn expire_miss_values(&self, now: i64, retention_seconds: i64) -> Result<u64> {
        ArtifactStore::expire_miss_values(self, now, retention_seconds)
    }
    fn expire_if_due(&self, policy: &MissPolicy) -> Result<()> {
        ArtifactStore::expire_if_due(self, policy)
    }
    fn open_misses(&self, limit: usize, max_bytes: usize) -> Result<Vec<Miss>> {
        ArtifactStore::open_misses(self, limit, max_bytes)
    }
    fn put_verdict(
        &self,
        verdict: &Verdict,
        bytes: &[u8],
        reported_by: &str,
    ) -> Result<VerdictPut> {
        ArtifactStore::put_verdict(self, verdict, bytes, reported_by)
    }
    fn verdicts(&self, key: &str) -> Result<Verdicts> {
        ArtifactStore::verdicts(self, key)
    }
    fn verdict_counts(&self) -> Result<(u64, u64)> {
        ArtifactStore::verdict_counts(self)
    }
    fn lease_job(&self, query: &LeaseQuery<'_>, now_ms: i64) -> Result<Option<LeasedJob>> {
        ArtifactStore::lease_job(self, query, now_ms)
    }
    fn job(&self, job: u64) -> Result<Option<JobRecord>> {
        ArtifactStore::job(self, job)
    }
    fn renew_lease(
        &self,
        job: u64,
        token: &str,
        lease_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<JobRecord> {
        ArtifactStore::renew_lease(self, job, token, lease_ms, now_ms)
    }
    fn end_lease(
        &self,
        job: u64,
        token: &str,
        outcome: ReleaseOutcome,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<LeaseEnd> {
        ArtifactStore::end_lease(self, job, token, outcome, reason, now_ms)
    }
    fn job_listing(&self, now_ms: i64) -> Result<JobListing> {
        ArtifactStore::job_listing(self, now_ms)
    }
    fn collect_garbage(
        &self,
        misses_since: i64,
        apply: bool,
        decide: &mut dyn FnMut(&GcView) -> GcDrop,
    ) -> Result<GcDrop> {
        ArtifactStore::collect_garbage(self, misses_since, apply, decide)
    }
    fn recorded_artifacts(&self) -> Result<Vec<RecordedArtifact>> {
        ArtifactStore::recorded_artifacts(self)
    }
    fn named_artifacts(&self) -> Result<Vec<RecordedArtifact>> {
        ArtifactStore::named_artifacts(self)
    }
}
