//! The JSON bodies of the mirror's artifact API (`docs/protocol.md`, "Precompiled artifacts
//! API"): one definition for the server and every client (builders, workers, auditors,
//! `precomp fetch`).

use serde::{Deserialize, Serialize};

/// `GET /precomp/v1/index/PACKAGE`: every published build of a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub package: String,
    /// Sorted by version (SemVer order), then key.
    pub builds: Vec<IndexBuild>,
}

/// One published manifest, as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBuild {
    pub version: String,
    /// The build key (lowercase hex): `GET /precomp/v1/manifests/KEY`.
    pub key: String,
    pub base_key: String,
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    pub target: String,
    /// `GET /precomp/v1/artifacts/SHA256`.
    pub artifact_sha256: String,
    pub artifact_size: u64,
    /// The compile-env entries the manifest records, in its order.
    pub compile_env: Vec<CompileEnvJson>,
    /// The manifest's key format: 2, or 1 for builds published before key format v2, whose
    /// keys clients do not compute any more (absent from older mirrors' indexes: 1).
    #[serde(default = "key_format_v1")]
    pub key_format: u32,
    /// Key ids of the signatures the mirror verified when it accepted the manifest.
    pub signers: Vec<String>,
    /// Of `signers`, the mirror's auditor keys (`precomp serve --auditor-key`): auditors who
    /// rebuilt the artifact and got the same bytes. The others are builders. Absent when
    /// empty, as are `flagged` when false and `verdicts` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auditors: Vec<String>,
    /// True when an auditor's rebuild gave other bytes (a `mismatch` verdict).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
    /// The verdicts auditors posted for this build, by auditor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<VerdictSummary>,
}

fn key_format_v1() -> u32 {
    1
}

/// One auditor's verdict on a build, as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictSummary {
    /// The auditor's key id.
    pub auditor: String,
    /// `match` or `mismatch`.
    pub result: String,
    pub summary: String,
    pub toolchain_id: String,
    /// Unix seconds.
    pub received_at: i64,
}

/// `GET /precomp/v1/index`: the packages that have at least one build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packages {
    /// Sorted.
    pub packages: Vec<String>,
}

/// `GET /precomp/v1/verdicts/KEY`: every verdict on a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdicts {
    pub key: String,
    pub flagged: bool,
    /// By auditor.
    pub verdicts: Vec<VerdictRecord>,
}

/// One stored verdict: its fields decoded, and the signed bytes to check them by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub auditor: String,
    pub result: String,
    pub summary: String,
    pub toolchain_id: String,
    pub toolchain_digest: String,
    pub published_sha256: String,
    pub rebuilt_sha256: String,
    pub rebuilt_size: u64,
    pub files: Vec<FileDifferenceJson>,
    /// The name of the token that posted it.
    pub reported_by: String,
    /// Unix seconds.
    pub received_at: i64,
    /// The `SignedVerdict` (protobuf), base64: verify it with the auditor's public key.
    pub signed_verdict: String,
}

/// A file that differs between the published artifact and an auditor's rebuild.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDifferenceJson {
    pub path: String,
    /// `changed`, `only_published`, `only_rebuilt` or `executable`.
    pub change: String,
    pub published_sha256: String,
    pub rebuilt_sha256: String,
    pub published_size: u64,
    pub rebuilt_size: u64,
    pub chunks: Vec<ChunkDifferenceJson>,
    pub explanation: String,
}

/// A beam chunk that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDifferenceJson {
    pub id: String,
    pub change: String,
    pub published_size: u64,
    pub rebuilt_size: u64,
    pub explanation: String,
}

/// The answer to `POST /precomp/v1/verdicts/KEY`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictStored {
    pub key: String,
    pub auditor: String,
    pub result: String,
    /// `created`, `replaced` (this auditor's earlier verdict) or `unchanged`.
    pub stored: String,
    /// Whether the build is flagged now.
    pub flagged: bool,
}

/// A manifest's compile-env record: Erlang term text, `value` null when the config set none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileEnvJson {
    pub app: String,
    pub path: String,
    pub value: Option<String>,
}

/// `POST /precomp/v1/failures`: a build that failed, with its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    pub package: String,
    pub version: String,
    pub base_key: String,
    pub toolchain_id: String,
    /// At most [`crate::artifacts::MAX_FAILURE_LOG`] bytes of UTF-8.
    pub log: String,
}

/// The answer to a [`FailureReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecorded {
    pub base_key: String,
    pub toolchain_id: String,
    pub log_sha256: String,
    /// How many failures were reported for this base key and toolchain, this one included.
    pub attempts: u64,
    /// Misses closed by this report (0 or 1).
    pub closed_misses: u64,
}

/// `GET /precomp/v1/failures/PACKAGE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    pub package: String,
    /// Most recent first.
    pub failures: Vec<Failure>,
}

/// One recorded failure: the latest log for a base key and toolchain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub package: String,
    pub version: String,
    pub base_key: String,
    pub toolchain_id: String,
    pub log_sha256: String,
    pub log: String,
    pub attempts: u64,
    /// The name of the token that reported it.
    pub reported_by: String,
    /// Unix seconds.
    pub first_reported: i64,
    pub last_reported: i64,
}

/// `POST /precomp/v1/misses`: a client found no usable artifact. It carries what the mirror
/// needs to recompute the key it claims (docs/protocol.md, "Misses"): the closure's lock, the
/// toolchain, env and target, and for the package and each closure member its manager, its
/// target when known and the compile-env entries the client's config gives for the paths the
/// mirror's builds of it record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissReport {
    pub package: String,
    pub version: String,
    /// The package's (v2) base key with this toolchain, env and target, when every closure
    /// member's key is known. Exactly one of `base_key` and `request_key` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_key: Option<String>,
    /// When some member's key is unknown (the mirror has no build of it yet): the SHA-256 of
    /// the request text (`precomp_proto::buildkey::BuildInputs::request_text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// Why the client could not use what the mirror has, e.g. `not built`.
    pub reason: String,
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    /// The package's target: `any` unless the client knows it holds native code.
    pub target: String,
    /// mix.lock text holding the package and its closure.
    pub lock: String,
    /// The package's build tool (`mix`, `rebar3`, `make`). Empty in misses of key format v1,
    /// which the mirror refuses.
    #[serde(default)]
    pub manager: String,
    /// The client's values for the compile-env paths the mirror's builds of the package record.
    #[serde(default)]
    pub compile_env: Vec<CompileEnvJson>,
    /// Every closure member, by Hex package name.
    #[serde(default)]
    pub closure: Vec<MissMember>,
}

impl MissReport {
    /// What identifies the miss: its base key, else its request key.
    pub fn miss_key(&self) -> Option<&str> {
        self.base_key.as_deref().or(self.request_key.as_deref())
    }
}

/// What a miss carries for one closure member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissMember {
    /// The Hex package name.
    pub name: String,
    pub version: String,
    pub manager: String,
    /// `any` or `ARCH-LIBC`; absent when the mirror has no build of the member for this
    /// toolchain (its key is then unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The client's values for the paths the mirror's builds of the member record.
    #[serde(default)]
    pub compile_env: Vec<CompileEnvJson>,
}

/// The answer to a [`MissReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissRecorded {
    /// The miss's key, as reported: one of the two is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// Reports of this miss so far, this one included.
    pub count: u64,
    /// False when a build that satisfies it was published or a failure was recorded.
    pub open: bool,
}

/// `GET /precomp/v1/misses`: the open misses, most reported first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misses {
    pub misses: Vec<Miss>,
}

/// An open miss: the first report's fields, and how often it was reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    pub package: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    pub reason: String,
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    pub target: String,
    pub lock: String,
    #[serde(default)]
    pub manager: String,
    #[serde(default)]
    pub compile_env: Vec<CompileEnvJson>,
    #[serde(default)]
    pub closure: Vec<MissMember>,
    pub count: u64,
    /// Unix seconds.
    pub first_reported: i64,
    pub last_reported: i64,
}

impl Miss {
    /// What identifies the miss (its base key, else its request key): what build jobs and
    /// failures name it by.
    pub fn miss_key(&self) -> &str {
        self.base_key
            .as_deref()
            .or(self.request_key.as_deref())
            .unwrap_or_default()
    }

    /// The report this miss was recorded from (its first).
    pub fn report(&self) -> MissReport {
        MissReport {
            package: self.package.clone(),
            version: self.version.clone(),
            base_key: self.base_key.clone(),
            request_key: self.request_key.clone(),
            reason: self.reason.clone(),
            otp_major: self.otp_major.clone(),
            elixir: self.elixir.clone(),
            mix_env: self.mix_env.clone(),
            target: self.target.clone(),
            lock: self.lock.clone(),
            manager: self.manager.clone(),
            compile_env: self.compile_env.clone(),
            closure: self.closure.clone(),
        }
    }

    /// Every compile-env entry the miss carries, the package's and its members'.
    pub fn all_compile_env(&self) -> impl Iterator<Item = &CompileEnvJson> + '_ {
        self.compile_env
            .iter()
            .chain(self.closure.iter().flat_map(|m| m.compile_env.iter()))
    }
}

/// The answer to `PUT /precomp/v1/artifacts/SHA256`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactStored {
    pub sha256: String,
    pub size: u64,
    /// False when the mirror already had it.
    pub created: bool,
}

/// The answer to `PUT /precomp/v1/manifests/KEY`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStored {
    pub key: String,
    pub base_key: String,
    pub package: String,
    pub version: String,
    /// Every verified signer of the stored manifest.
    pub signers: Vec<String>,
    /// `created`, `unchanged` (the same bytes were there) or `countersigned` (the same
    /// manifest was there; the new signatures were added to it).
    pub result: String,
    pub closed_misses: u64,
}

/// Bound on `fewer_than` in an audit [`LeaseRequest`].
pub const MAX_FEWER_THAN: u32 = 64;

/// Bound on the `reason` of a [`ReleaseRequest`], in bytes.
pub const MAX_RELEASE_REASON: usize = 1024;

/// What a job is: building an open miss, or auditing a published build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Build an open miss and publish it (or record its failure).
    #[default]
    Build,
    /// Rebuild a published build and post a verdict on it (docs/audit.md).
    Audit,
}

impl JobKind {
    /// `build` or `audit`, as the API and the `leases` table spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Build => "build",
            JobKind::Audit => "audit",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn one() -> u32 {
    1
}

/// `POST /precomp/v1/jobs/lease`: a worker asks for the next job it can do. Build jobs (the
/// default): the most-reported open miss for its toolchain. Audit jobs: the published build
/// with the fewest audits that its auditor key has not audited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// `build` when absent, so clients that predate audit jobs keep working.
    #[serde(default)]
    pub kind: JobKind,
    /// The worker's name (for the operator): 1 to 64 letters, digits, `-`, `_`, `.`.
    pub worker: String,
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    /// The targets the worker builds, e.g. `["any", "x86_64-linux-gnu"]` (1 to 16).
    pub targets: Vec<String>,
    /// How long the lease lasts without a heartbeat, within
    /// `MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS` (registry's `artifacts`).
    pub lease_seconds: u64,
    /// Audit jobs: only builds that fewer than this many distinct auditors have audited
    /// (countersigned or posted a verdict on); 1 to [`MAX_FEWER_THAN`], default 1. Ignored for
    /// build jobs.
    #[serde(default = "one")]
    pub fewer_than: u32,
    /// Audit jobs: the key id (`ed25519:…`) of the key the worker signs verdicts with. Optional
    /// when the token allows a single auditor key (a token bound to it); else required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auditor: Option<String>,
}

/// A published build to audit: its package and its index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBuild {
    pub package: String,
    #[serde(flatten)]
    pub build: IndexBuild,
}

/// The answer to a [`LeaseRequest`] when a job was leased (`200`; `204` when none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The job id: `POST /precomp/v1/jobs/ID/heartbeat` and `.../release`.
    pub job: u64,
    /// `build` (then `miss` is set) or `audit` (then `build` is set); `build` when absent.
    #[serde(default)]
    pub kind: JobKind,
    /// Unix seconds; the job goes back to the queue after this without a heartbeat.
    pub lease_expires_at: i64,
    pub lease_seconds: u64,
    /// A build job: the miss to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss: Option<Miss>,
    /// An audit job: the published build to rebuild and compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<AuditBuild>,
}

/// `POST /precomp/v1/jobs/ID/heartbeat` (body optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// A new lease length; the lease's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
}

/// The answer to a heartbeat: the lease is renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewed {
    pub job: u64,
    #[serde(default)]
    pub kind: JobKind,
    /// A build job: the miss's key (its base key or its request key); an audit job: the
    /// audited build's base key.
    pub base_key: String,
    /// An audit job: the audited build's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Unix seconds.
    pub lease_expires_at: i64,
    pub lease_seconds: u64,
}

/// How a worker gives a job back (`POST /precomp/v1/jobs/ID/release`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseOutcome {
    /// Back in the queue, for any worker.
    #[default]
    Released,
    /// Audit jobs: the rebuild failed here; never offered to this token again.
    Failed,
}

impl ReleaseOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseOutcome::Released => "released",
            ReleaseOutcome::Failed => "failed",
        }
    }
}

/// The body of `POST /precomp/v1/jobs/ID/release` (optional: empty is a plain release).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    #[serde(default)]
    pub outcome: ReleaseOutcome,
    /// Why (for `failed`): one line, at most [`MAX_RELEASE_REASON`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to `POST /precomp/v1/jobs/ID/release`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReleased {
    pub job: u64,
    #[serde(default)]
    pub kind: JobKind,
    pub base_key: String,
    /// An audit job: the audited build's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `released`, `failed` (an audit job ended as failed), `already_released` (a repeat),
    /// or `closed` (the miss was closed, or the audit's verdict posted, meanwhile).
    pub result: String,
}
