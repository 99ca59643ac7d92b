//! The JSON bodies of the mirror's artifact API (`docs/protocol.md`, "Precompiled artifacts
//! API"), and the bounds on what it carries: one definition for the server and every client
//! (builders, workers, auditors, `precomp fetch`), so both sides agree on every limit.

use serde::{Deserialize, Serialize};

/// The API's path prefix.
pub const API_PREFIX: &str = "/precomp/v1";

/// Bound on an artifact tarball (uploads and downloads): 256 MiB.
pub const MAX_ARTIFACT_SIZE: u64 = crate::artifact::MAX_ARTIFACT_SIZE;

/// Bound on a signed manifest (`PUT`/`GET manifests/KEY`).
pub const MAX_MANIFEST_SIZE: u64 = crate::manifest::MAX_SIGNED_MANIFEST_SIZE as u64;

/// Bound on a signed trust document (`GET trust`, `GET trust/VERSION`).
pub const MAX_TRUST_DOCUMENT_SIZE: u64 = crate::trust::MAX_TRUST_DOCUMENT_SIZE as u64;

/// Bound on a failure's log, in bytes of UTF-8. Clients keep the end of a longer log.
pub const MAX_FAILURE_LOG: usize = 1024 * 1024;

/// Bound on a `POST failures` body: the log JSON-escaped (up to 6 bytes per byte) and the rest.
pub const MAX_FAILURE_BODY: usize = 6 * MAX_FAILURE_LOG + 64 * 1024;

/// Bound on a miss's `lock` text. Clients send the closure's entries, or the start of the
/// whole lock cut to this.
pub const MAX_MISS_LOCK: usize = 1024 * 1024;

/// Bound on a `POST misses` body.
pub const MAX_MISS_BODY: usize = 2 * MAX_MISS_LOCK + 64 * 1024;

/// Bound on a miss's `reason`, in bytes (one line).
pub const MAX_MISS_REASON: usize = 256;

/// Bound on the closure members a miss lists.
pub const MAX_MISS_MEMBERS: usize = 4096;

/// Bound on the compile-env entries a miss carries for one package.
pub const MAX_MISS_COMPILE_ENV: usize = 1024;

/// At most this many open misses are listed, most reported first.
pub const MAX_MISSES_LISTED: usize = 1000;

/// ... and only as many as have locks adding up to this, so the list stays well under
/// [`MAX_JSON_RESPONSE`].
pub const MAX_MISSES_LOCK_BYTES: usize = 32 * 1024 * 1024;

/// Bound on a `POST verdicts/KEY` body: a signed verdict.
pub const MAX_VERDICT_BODY: usize = crate::verdict::MAX_SIGNED_VERDICT_SIZE;

/// Bounds on a job lease's length (`POST jobs/lease`, `lease_seconds`).
pub const MIN_LEASE_SECONDS: u64 = 2;
pub const MAX_LEASE_SECONDS: u64 = 3600;

/// Bound on the body of `POST jobs/lease` and `POST jobs/ID/heartbeat|release`.
pub const MAX_JOB_BODY: usize = 16 * 1024;

/// Bound on JSON answers a client reads (index, failures, misses, verdicts, jobs).
pub const MAX_JSON_RESPONSE: u64 = 64 * 1024 * 1024;

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
    /// The build recipe its manifest records (`Provenance.recipe`, `precomp_builder::RECIPE`):
    /// how it was compiled, which auditors must share to compare bytes. Absent when the
    /// manifest records none (builders from before recipes were recorded) and from older
    /// mirrors' indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
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
    /// Builders (key ids) whose own manifest of this key holds the same artifact bytes: an
    /// identical rebuild, kept as agreement evidence (docs/protocol.md, "Several manifests
    /// for one key"). Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agreed_by: Vec<String>,
    /// Builds of the same key by other builders that gave other artifact bytes: a
    /// reproducibility finding, which flags the build as a mismatch verdict does. Absent
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<Disagreement>,
}

/// Another builder's build of a published key whose artifact differs from the published one
/// (a `conflicting` manifest of the key's history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The key ids that signed it.
    pub signers: Vec<String>,
    pub artifact_sha256: String,
    /// What differs from the published artifact, by file.
    pub summary: String,
    /// Unix seconds.
    pub received_at: i64,
}

/// `GET /precomp/v1/manifests/KEY/history`: every manifest the mirror keeps for a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHistory {
    pub key: String,
    /// The published manifest first, then the others, oldest first.
    pub manifests: Vec<KeptManifest>,
}

/// One manifest of a key's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptManifest {
    /// `published` (the key's build), `agreeing` (the same artifact, another manifest),
    /// `conflicting` (another artifact: a reproducibility finding, never published) or
    /// `replaced` (published until a rebuild replaced it: no signer counted any more).
    pub status: String,
    /// True for the one `GET manifests/KEY` serves now.
    pub served: bool,
    /// SHA-256 of the manifest bytes (what verdicts name).
    pub manifest_sha256: String,
    pub artifact_sha256: String,
    /// The key ids whose signatures the mirror verified.
    pub signers: Vec<String>,
    /// Of `signers`, those the mirror's trust document excludes now, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// The token that uploaded it.
    pub published_by: String,
    /// Unix seconds.
    pub published_at: i64,
    pub changed_at: i64,
    /// Why it has its status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// A replaced build's verdicts, as `GET verdicts/KEY` listed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<VerdictRecord>,
    /// The signed envelope, base64: `precomp inspect` reads it.
    pub signed_manifest: String,
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
    /// Other builders' builds of the key with other artifact bytes (they flag it too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<Disagreement>,
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
    /// At most [`MAX_FAILURE_LOG`] bytes of UTF-8.
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

/// Bound on one compile-env value a miss carries, as Erlang term text (bytes). A consumer
/// whose config gives a longer value for a path a package reads reports that package as not
/// buildable rather than send it; the mirror refuses a miss carrying one (422).
pub const MAX_COMPILE_ENV_VALUE: usize = 16 * 1024;

/// Bound on all the compile-env values one miss carries (the package's and its members'),
/// as Erlang term text (bytes).
pub const MAX_MISS_COMPILE_ENV_BYTES: usize = 256 * 1024;

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
    /// When the miss carries the package's own compile-env entries (`compile_env` not
    /// empty): its variant key (`BuildInputs::variant_key`), which identifies it — for a miss
    /// with a base key, the build key the consumer computes. Optional: the mirror computes it
    /// in any case, and refuses a miss whose claimed variant key is not what it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_key: Option<String>,
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
    /// What identifies the miss: its variant key, else its base key, else its request key.
    pub fn miss_key(&self) -> Option<&str> {
        self.variant_key
            .as_deref()
            .or(self.base_key.as_deref())
            .or(self.request_key.as_deref())
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
    /// The variant key, for a miss that carries the package's own compile-env entries: then
    /// it is what identifies the miss (jobs and failures name it by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_key: Option<String>,
    /// Reports of this miss so far, this one included.
    pub count: u64,
    /// False when a build that satisfies it was published or a failure was recorded.
    pub open: bool,
    /// For a closed miss: what closed it (`published KEY`, `failed on TOOLCHAIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
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
    /// Set when the miss carries the package's own compile-env entries: a config variant,
    /// identified by this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_key: Option<String>,
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
    /// What identifies the miss (its variant key, else its base key, else its request key):
    /// what build jobs and failures name it by.
    pub fn miss_key(&self) -> &str {
        self.variant_key
            .as_deref()
            .or(self.base_key.as_deref())
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
            variant_key: self.variant_key.clone(),
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
    /// `created`, `unchanged` (the same bytes were there, or this signer had already
    /// published these artifact bytes), `countersigned` (the same manifest was there; the new
    /// signatures were added to it), `agreed` (another manifest with the same artifact is
    /// published: this one is kept beside it as agreement evidence) or `replaced` (what was
    /// published under the key had no signer that counts any more: this one is published in
    /// its place).
    pub result: String,
    pub closed_misses: u64,
    /// With `replaced`: the SHA-256 of the manifest it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
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

/// One tuple a worker can build (or audit): an OTP major, an Elixir version, a Mix env and
/// the targets its toolchain makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseTuple {
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    /// e.g. `["any", "x86_64-linux-gnu"]` (1 to 16).
    pub targets: Vec<String>,
}

/// Bound on the tuples one lease request lists.
pub const MAX_LEASE_TUPLES: usize = 16;

/// `POST /precomp/v1/jobs/lease`: a worker asks for the next job it can do. Build jobs (the
/// default): the most-reported open miss for one of its tuples. Audit jobs: the published build
/// with the fewest audits that its auditor key has not audited.
///
/// A worker with one toolchain names its tuple with the top-level `otp_major`, `elixir`,
/// `mix_env` and `targets`; one with several lists them all in `tuples` (and, for mirrors
/// that predate `tuples`, its first one at the top level too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// `build` when absent, so clients that predate audit jobs keep working.
    #[serde(default)]
    pub kind: JobKind,
    /// The worker's name (for the operator): 1 to 64 letters, digits, `-`, `_`, `.`.
    pub worker: String,
    #[serde(default)]
    pub otp_major: String,
    #[serde(default)]
    pub elixir: String,
    #[serde(default)]
    pub mix_env: String,
    /// The targets the worker builds, e.g. `["any", "x86_64-linux-gnu"]` (1 to 16).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Every tuple the worker can build (1 to [`MAX_LEASE_TUPLES`]); when given, the
    /// top-level tuple is not read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tuples: Vec<LeaseTuple>,
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
    /// Audit jobs: the build recipe the worker rebuilds with (`precomp_builder::RECIPE`): only
    /// builds whose manifest records this recipe are offered. Absent (workers from before
    /// recipes were recorded): only builds whose manifest records none. Ignored for build
    /// jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
}

impl LeaseRequest {
    /// The tuples the worker asks for: `tuples`, else the top-level one.
    pub fn all_tuples(&self) -> Vec<LeaseTuple> {
        if !self.tuples.is_empty() {
            return self.tuples.clone();
        }
        vec![LeaseTuple {
            otp_major: self.otp_major.clone(),
            elixir: self.elixir.clone(),
            mix_env: self.mix_env.clone(),
            targets: self.targets.clone(),
        }]
    }
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
    /// A build job: the miss's key (its variant key, base key or request key); an audit job: the
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

/// `GET /precomp/v1/jobs` (a builder's token): what builders have to do, by tuple, and who is
/// doing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListing {
    /// A worker counts as able to build a tuple when it asked for it (a lease request, or a
    /// heartbeat of a job it leased for it) within this many seconds.
    pub window_seconds: u64,
    /// Every tuple with open misses, most open misses first.
    pub tuples: Vec<TupleDemand>,
    /// The workers seen within the window, by name and token.
    pub workers: Vec<WorkerSeen>,
    /// The live build and audit leases.
    pub jobs: Vec<LiveJob>,
}

/// The open misses of one tuple, and the workers able to build them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleDemand {
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    pub target: String,
    pub open_misses: u64,
    /// Of them, config variants (misses carrying the package's own compile-env values).
    pub variants: u64,
    /// Of them, leased now.
    pub leased: u64,
    /// Reports of these misses, in total.
    pub reports: u64,
    /// Unix seconds: the oldest open miss's first report.
    pub oldest_reported: i64,
    /// The workers that asked for this tuple within the window (build jobs).
    pub workers: Vec<String>,
    /// False when no worker asked for it within the window: these misses wait for a worker
    /// with a toolchain of this OTP major and Elixir (docs/builder.md "Building for your CI
    /// image").
    pub served: bool,
}

/// A worker seen within the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSeen {
    pub worker: String,
    pub token: String,
    pub kind: JobKind,
    /// What it asked for.
    pub tuples: Vec<LeaseTuple>,
    /// Unix seconds.
    pub last_seen: i64,
}

/// A live lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveJob {
    pub job: u64,
    pub kind: JobKind,
    pub package: String,
    pub version: String,
    /// Build jobs: the miss's key; audit jobs: the build's base key.
    pub base_key: String,
    /// Audit jobs: the audited build's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
    pub target: String,
    pub worker: String,
    pub token: String,
    /// Unix seconds.
    pub leased_at: i64,
    pub lease_expires_at: i64,
}
