//! Precompiled artifacts on the mirror: builders publish, clients fetch and report misses.
//!
//! Everything is under `/precomp/v1/` on the mirror's server (`docs/protocol.md`,
//! "Precompiled artifacts API"; `docs/mirror.md` for tokens and operations):
//!
//! - `PUT artifacts/SHA256` (token): an artifact tarball, stored only if its sha256 is the
//!   one in the path. `GET` serves it, immutable.
//! - `PUT manifests/KEY` (token): a [`SignedManifest`], stored and indexed only once it
//!   decodes, its key is what its inputs give and what the path says, it is signed by a key
//!   the token may publish with (below), and its artifact is here with the digest and size it
//!   names. `GET` serves the stored bytes.
//! - `GET index/PACKAGE`: every build of a package, as JSON.
//! - `POST failures` (token), `GET failures/PACKAGE`: failed builds with their logs. A failed
//!   build is never an artifact.
//! - `POST misses` (anyone, validated against its lock), `GET misses` (token): what clients
//!   looked for and did not find, deduplicated by base key, closed by a publish or a failure.
//! - `POST verdicts/KEY` (an auditor's token), `GET verdicts/KEY`: audit verdicts; a build
//!   with a mismatch is flagged in the index. `GET index` lists the packages with builds.
//! - `POST jobs/lease`, `POST jobs/ID/heartbeat`, `POST jobs/ID/release` (token): workers on
//!   other machines lease jobs and renew the lease while they work (`store::jobs`). Build
//!   jobs (a token that may publish) are open misses, reported with `PUT manifests/KEY` or
//!   `POST failures`; audit jobs (a token that may post verdicts) are published builds with
//!   fewer than N audits, reported with `POST verdicts/KEY` (and the countersignature), or
//!   released as `failed` when the rebuild failed.
//! - `GET trust`, `GET trust/VERSION`: the signed trust document `precomp keys` issues into
//!   `DATA/trust` (clients verify it against the root key they pin).
//!
//! Tokens are made with `precomp token create`; only their SHA-256 is stored ([`token`]).
//! Clients speak the API through `precomp_http::artifacts::ArtifactClient`; the bounds both
//! sides enforce are `precomp_proto::api`'s.
//!
//! ## Who may upload what
//!
//! A token authenticates an upload; the keys decide what it may publish ([`trust_policy`]).
//! The mirror trusts the keys its operator configured (`--builder-key`, `--auditor-key`, or
//! `builder_keys` / `auditor_keys` in the config file) and, when `DATA/trust/trust.doc`
//! exists, the trust document's keys by role:
//!
//! - **No trust document** (the rules as they always were): a token bound to a key (`precomp
//!   token create --key`) publishes manifests signed by that key — new ones and signatures
//!   added to published ones — whatever the configured keys; a token bound to none, manifests
//!   signed by a configured builder key. Verdicts: signed by a configured auditor key (the
//!   token's own, when it is bound to one).
//! - **A trust document**: it is verified on each authorization (again only when its bytes
//!   changed; against its own roots, or the pinned `trust_root` and the rotations from it) and
//!   must not have expired; if it cannot be used every upload is refused (503) with the check
//!   that failed — never a silent fallback to the configured keys. The effective builder keys
//!   are the configured ones plus the document's keys valid now with the builder role,
//!   auditors likewise; a key it revokes or whose validity ended is excluded even if
//!   configured. A token bound to K is refused (403, naming the revocation) when K is
//!   excluded; K must be a builder key to publish a new manifest, an auditor key to
//!   countersign a published one or post a verdict. For a token bound to no key, a new
//!   manifest needs a builder key's signature and signatures added to a published one must
//!   be auditor keys'. `precomp keys revoke` takes effect on the next upload, no restart.
//!
//! The index's `auditors` are the signers of a build that are effective auditor keys.

use precomp_proto::api;
mod jobs;
mod store;
pub mod token;
pub mod trust_policy;
mod verdicts;

use std::path::PathBuf;
use std::sync::Arc;

use std::collections::BTreeMap;

use precomp_proto::buildkey::{
    compile_env_digest, CompileEnvEntry, KeyParts, KeyToolchain, Manager, Target,
};
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manifest::{
    ArtifactPublicKey, FileRecord, ManifestError, Output, SignedManifest,
};
use precomp_proto::term::{parse_erlang_terms, Term};
use sha2::{Digest as _, Sha256};
use store::history;

pub use api::{
    ArtifactStored, CompileEnvJson, Disagreement, Failure, FailureRecorded, FailureReport,
    Failures, Index, IndexBuild, KeptManifest, ManifestHistory, ManifestStored, Miss, MissMember,
    MissRecorded, MissReport, Misses,
};
pub use api::{
    AuditBuild, HeartbeatRequest, JobKind, JobListing, Lease, LeaseReleased, LeaseRenewed,
    LeaseRequest, LeaseTuple, LiveJob, ReleaseOutcome, ReleaseRequest, TupleDemand, WorkerSeen,
    MAX_COMPILE_ENV_VALUE, MAX_FEWER_THAN, MAX_LEASE_TUPLES, MAX_MISS_COMPILE_ENV_BYTES,
    MAX_RELEASE_REASON,
};
pub use api::{
    ChunkDifferenceJson, FileDifferenceJson, Packages, VerdictRecord, VerdictStored,
    VerdictSummary, Verdicts,
};
pub use store::contract;
pub use store::history::KeyManifest;
pub use store::jobs::{Job, JobError, JobRecord, LeaseEnd, LeaseEnded, LeaseQuery, LeasedJob};
pub use store::maintenance;
pub use store::verdicts::files_json as verdict_files_json;
pub use store::verdicts::VerdictPut;
pub use store::{
    open_existing_metadata, open_metadata, ArtifactCheck, ArtifactStoreError, ManifestPut,
    ManifestRecord, MissOutcome, MissPolicy, MissRecord, Publisher, TokenInfo, TokenLookup,
    VariantRef, DEFAULT_MAX_CONFIG_VARIANTS, DEFAULT_MAX_OPEN_MISSES, DEFAULT_MISS_RETENTION_DAYS,
    WORKER_WINDOW_SECONDS,
};
pub use store::{Blobs, MetadataStore};
pub use token::Scope;
pub use trust_policy::{EffectiveKeys, TrustPolicy};

// The bounds the API carries: shared with every client (`precomp_proto::api`).
pub use api::{
    API_PREFIX, MAX_ARTIFACT_SIZE, MAX_FAILURE_BODY, MAX_FAILURE_LOG, MAX_JOB_BODY,
    MAX_JSON_RESPONSE, MAX_LEASE_SECONDS, MAX_MISSES_LISTED, MAX_MISSES_LOCK_BYTES, MAX_MISS_BODY,
    MAX_MISS_COMPILE_ENV, MAX_MISS_LOCK, MAX_MISS_MEMBERS, MAX_MISS_REASON, MAX_VERDICT_BODY,
    MIN_LEASE_SECONDS,
};

/// An authenticated token: whose it is (and the key it is bound to), and what it may do.
#[derive(Clone, Debug)]
pub struct Principal {
    pub publisher: Publisher,
    /// Its scopes in effect ([`Artifacts::scopes_of`]); `reader` is always among them.
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Where the artifact store lives and which keys the mirror trusts for uploads, besides the
/// trust document in `DATA/trust` ([`trust_policy`]).
#[derive(Clone, Debug, Default)]
pub struct ArtifactsConfig {
    /// `DATA/artifacts`.
    pub data: PathBuf,
    /// Builders' keys (`--builder-key`, `builder_keys`): a token bound to no key may publish
    /// manifests signed by them.
    pub builder_keys: Vec<ArtifactPublicKey>,
    /// Auditors' keys (`--auditor-key`, `auditor_keys`): they post verdicts and their
    /// countersignatures are listed as `auditors` in the index.
    pub auditor_keys: Vec<ArtifactPublicKey>,
    /// The root the trust document must be signed by, directly or through the root
    /// rotations in `DATA/trust/history` (`--trust-root`, `trust_root`); `None`: the document
    /// is checked against the root keys it lists itself.
    pub trust_root: Option<ArtifactPublicKey>,
    /// How many config variants a release may get, and how long misses' compile-env values
    /// are kept (`--max-config-variants`, `--miss-retention-days`).
    pub misses: MissPolicy,
}

/// A request the API refuses: the HTTP status and a message saying what failed and what to
/// do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `429 Too Many Requests`, to be retried after `seconds`.
    pub fn too_many(seconds: u64, message: impl Into<String>) -> Refusal {
        Refusal {
            retry_after: Some(seconds.max(1)),
            ..Refusal::new(429, message)
        }
    }

    /// A failure of the mirror's own storage (500), logged.
    pub fn internal(error: impl std::fmt::Display) -> Refusal {
        tracing::error!("artifact store: {error}");
        Refusal::new(500, error.to_string())
    }
}

/// The one place the store's errors become API answers: the domain errors a request can
/// cause get their status and a message saying what to do; everything else is the mirror's
/// own failure (500, logged).
impl From<ArtifactStoreError> for Refusal {
    fn from(error: ArtifactStoreError) -> Refusal {
        match error {
            ArtifactStoreError::Job(JobError::NotFound { job }) => Refusal::new(
                404,
                format!("no job {job} on this mirror: lease one with POST /precomp/v1/jobs/lease"),
            ),
            ArtifactStoreError::Job(JobError::NotYours {
                job,
                leased_by,
                token,
            }) => Refusal::new(
                403,
                format!(
                    "job {job} was leased with token {leased_by:?}, not {token:?}: only the \
                     token that leased a job renews or releases it"
                ),
            ),
            ArtifactStoreError::Job(JobError::Ended { job, ended }) => {
                Refusal::new(409, jobs::ended_message(job, ended.as_str()))
            }
            ArtifactStoreError::Job(JobError::Closed { job, closed_by }) => Refusal::new(
                409,
                format!("job {job} is closed ({closed_by}): stop working on it"),
            ),
            other => Refusal::internal(other),
        }
    }
}

/// The artifact service: the store and the trust configuration.
pub struct Artifacts {
    /// The metadata ([`open_metadata`]: SQLite today).
    store: Arc<dyn MetadataStore>,
    /// The artifact bodies, beside it.
    blobs: Blobs,
    /// Which keys may sign what is uploaded: the configured keys and the trust document.
    trust: TrustPolicy,
    /// Bounds on what misses carry.
    misses: MissPolicy,
}

impl Artifacts {
    /// Opens the store and logs the trust setup: the configured keys, the pinned root, and
    /// the trust document in effect (or why it cannot be used: uploads are then refused
    /// until it is fixed; serving goes on).
    pub fn open(config: ArtifactsConfig) -> Result<Arc<Artifacts>, ArtifactStoreError> {
        let store = open_metadata(&config.data)?;
        Ok(Artifacts::with_store(store, config))
    }

    /// The service over `store` (any [`MetadataStore`]), its blobs in `config.data`.
    pub fn with_store(store: Arc<dyn MetadataStore>, config: ArtifactsConfig) -> Arc<Artifacts> {
        let blobs = Blobs::new(&config.data);
        let trust = TrustPolicy::new(
            trust_dir_of(&blobs),
            config.builder_keys,
            config.auditor_keys,
            config.trust_root,
        );
        let ids = |keys: &[ArtifactPublicKey]| {
            keys.iter()
                .map(ArtifactPublicKey::key_id)
                .collect::<Vec<_>>()
        };
        tracing::info!(
            data = %config.data.display(),
            builder_keys = ?ids(trust.configured_builder_keys()),
            auditor_keys = ?ids(trust.configured_auditor_keys()),
            trust_root = ?trust.trust_root().map(ArtifactPublicKey::key_id),
            "artifact store opened"
        );
        let document = trust.document_path();
        match trust.keys() {
            Ok(keys) => match keys.document_version() {
                Some(version) => tracing::info!(
                    document = %document.display(),
                    version,
                    builder_keys = ?keys.builder_ids(),
                    auditor_keys = ?keys.auditor_ids(),
                    "uploads follow the trust document (re-read on every upload) and the \
                     configured keys"
                ),
                None => tracing::info!(
                    document = %document.display(),
                    builder_keys = ?keys.builder_ids(),
                    auditor_keys = ?keys.auditor_ids(),
                    "no trust document: uploads are authorised by tokens and the configured \
                     keys; once `precomp keys init` issues one, it is followed without a restart"
                ),
            },
            // Logged by the policy; the mirror still serves, uploads are refused.
            Err(_) => tracing::warn!(
                document = %document.display(),
                "the trust document cannot be used: every upload is refused until it is fixed"
            ),
        }
        Arc::new(Artifacts {
            store,
            blobs,
            trust,
            misses: config.misses,
        })
    }

    /// [`Artifacts::open`] with `auditor_keys` added to the configured auditor keys.
    pub fn open_with_auditors(
        mut config: ArtifactsConfig,
        auditor_keys: Vec<ArtifactPublicKey>,
    ) -> Result<Arc<Artifacts>, ArtifactStoreError> {
        config.auditor_keys.extend(auditor_keys);
        Artifacts::open(config)
    }

    /// The metadata store.
    pub fn store(&self) -> &dyn MetadataStore {
        &*self.store
    }

    /// The artifact bodies.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Moves a received, synced upload whose sha256 the caller computed into place (unless it
    /// is there already), then records it: the row only once the blob is there. Whether the
    /// blob was new.
    pub fn put_artifact(
        &self,
        tmp: tempfile::NamedTempFile,
        sha256: &[u8; 32],
        size: u64,
        uploaded_by: &str,
    ) -> Result<bool, ArtifactStoreError> {
        let created = self.blobs.persist(tmp, sha256)?;
        self.store.record_artifact(sha256, size, uploaded_by)?;
        Ok(created)
    }

    /// `DATA/trust` beside the store (`DATA/artifacts`): the trust document `precomp keys`
    /// issues, served as `GET /precomp/v1/trust[/VERSION]`.
    pub fn trust_dir(&self) -> PathBuf {
        trust_dir_of(&self.blobs)
    }

    /// The keys in effect now: the configured ones and the trust document's
    /// ([`trust_policy`]); a refusal (503) when the trust document cannot be used.
    pub fn effective_keys(&self) -> Result<EffectiveKeys, Refusal> {
        self.trust.keys()
    }

    /// The builder keys in effect now; none while the trust document cannot be used.
    pub fn builder_keys(&self) -> Vec<ArtifactPublicKey> {
        self.effective_keys()
            .map(|keys| keys.builders().to_vec())
            .unwrap_or_default()
    }

    /// The token of an `Authorization` header value, with the scopes it has: 401 when
    /// absent, malformed, unknown or revoked. `Bearer TOKEN`, or the bare token as Hex
    /// clients send a repository's auth key (`mix hex.repo set hexpm --auth-key TOKEN`,
    /// rebar3's `repo_key`).
    ///
    /// A token stored without scopes (made before scopes existed, or by `precomp token
    /// create` without `--scope`) has the scopes its key gives it now, as it could do before:
    /// bound to an effective auditor key that is no builder key, `auditor`; to a builder key
    /// that is no auditor key, `builder`; else (bound to none, to both, or to neither) both,
    /// the keys deciding the rest as before. Every token reads (`reader`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Refusal> {
        let Some(header) = authorization else {
            return Err(Refusal::new(
                401,
                "this needs a token: send `Authorization: Bearer TOKEN`; an operator \
                 creates one on the mirror with `precomp token create --name NAME --scope SCOPE`",
            ));
        };
        let token = token::bearer(header)
            .or_else(|| Some(header.trim()).filter(|t| t.starts_with(token::TOKEN_PREFIX)))
            .ok_or_else(|| {
                Refusal::new(
                    401,
                    "the Authorization header is not `Bearer TOKEN`: send the token \
                     `precomp token create` printed",
                )
            })?;
        if !token::well_formed(token) {
            return Err(Refusal::new(
                401,
                "the token is malformed: precomp tokens are `pct_` and 43 base64url characters, \
                 as `precomp token create` prints them",
            ));
        }
        match self.store.lookup_token(token)? {
            TokenLookup::Active(publisher) => {
                let scopes = self.scopes_of(&publisher);
                Ok(Principal { publisher, scopes })
            }
            TokenLookup::Revoked { name, .. } => Err(Refusal::new(
                401,
                format!(
                    "token {name:?} was revoked: ask the mirror's operator for a new one \
                     (`precomp token create --name NAME`)"
                ),
            )),
            TokenLookup::Unknown => Err(Refusal::new(
                401,
                "unknown token: it was never created on this mirror (check the mirror URL and \
                 the token), or its name was reused after a revoke; `precomp token create \
                 --name NAME` on the mirror makes a new one",
            )),
        }
    }

    /// The scopes `publisher`'s token has ([`Artifacts::authenticate`]): its stored ones, or
    /// for a token stored without, those its key gives it now. `reader` always.
    pub fn scopes_of(&self, publisher: &Publisher) -> Vec<Scope> {
        let mut scopes = match &publisher.scopes {
            Some(stored) => stored.clone(),
            None => {
                let keys = self.effective_keys().ok();
                let (builder, auditor) = match (&publisher.key, &keys) {
                    (Some(key), Some(keys)) => {
                        (keys.builders().contains(key), keys.auditors().contains(key))
                    }
                    _ => (false, false),
                };
                match (builder, auditor) {
                    (false, true) => vec![Scope::Auditor],
                    (true, false) => vec![Scope::Builder],
                    _ => vec![Scope::Builder, Scope::Auditor],
                }
            }
        };
        scopes.push(Scope::Reader);
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// The keys whose signature on a manifest uploaded with `publisher`'s token can count
    /// (checked before an upload's body is read): without a trust document the token's own
    /// key, else the configured builder keys; with one, the token's key if it is an effective
    /// builder or auditor key, else every effective builder and auditor key. 403 when there
    /// are none or the token's key is revoked (naming the revocation); 503 when the trust
    /// document cannot be used ([`trust_policy`]).
    pub fn trusted_for(&self, publisher: &Publisher) -> Result<Vec<ArtifactPublicKey>, Refusal> {
        self.effective_keys()?.manifest_keys(publisher)
    }

    /// Verifies a signed manifest uploaded to `PUT manifests/KEY` and stores it. The checks,
    /// in order: the trust document, if any, can be used (503); decodes; signed by a key
    /// [`Artifacts::trusted_for`] the token (every such signature verifies, at least one
    /// present; 403 naming any revoked signer); the manifest decodes, has a known format,
    /// and its key and base key are what its inputs give; its key is `url_key`; with a trust
    /// document, the roles ([`EffectiveKeys::check_roles`]: a builder's signature on a new
    /// manifest, only auditors' added to a published one; 403); its artifact is here with the
    /// sha256 and size it names.
    pub fn publish_manifest(
        &self,
        url_key: &str,
        bytes: &[u8],
        publisher: &Publisher,
    ) -> Result<ManifestStored, Refusal> {
        let keys = self.effective_keys()?;
        let trusted = keys.manifest_keys(publisher)?;
        let signed = SignedManifest::decode(bytes)
            .map_err(|e| Refusal::new(422, format!("manifest refused: {e}")))?;
        let (manifest, signers) = signed.verify(&trusted).map_err(|e| match e {
            ManifestError::Untrusted { signers } => Refusal::new(
                403,
                format!(
                    "manifest refused: signature check failed: it has no signature by {} \
                     (signed by: {signers}){}; sign it with {}",
                    key_ids(&trusted),
                    keys.explain_signers(signed.signatures.iter().map(|s| s.key_id.as_str())),
                    match (&publisher.key, keys.document_version()) {
                        (Some(_), _) => format!("the key token {:?} is bound to", publisher.name),
                        (None, None) => "a builder key this mirror trusts (--builder-key), or \
                                         bind the token to your key (`precomp token create \
                                         --key`)"
                            .to_string(),
                        (None, Some(version)) => format!(
                            "a builder key this mirror trusts (trust document version \
                             {version}, --builder-key), or bind the token to your key \
                             (`precomp token create --key`)"
                        ),
                    }
                ),
            ),
            ManifestError::BadSignature { .. } => Refusal::new(
                422,
                format!("manifest refused: signature check failed: {e}"),
            ),
            other => Refusal::new(422, format!("manifest refused: key check failed: {other}")),
        })?;
        if manifest.key != url_key {
            return Err(Refusal::new(
                422,
                format!(
                    "manifest refused: key check failed: the manifest is for key {}, but was \
                     uploaded to /precomp/v1/manifests/{url_key}",
                    manifest.key
                ),
            ));
        }
        // Roles, with a trust document: whether this adds signatures to a manifest kept under
        // the key (the published one or an agreeing one: auditors only) or brings a new
        // manifest (builders only; the store decides whether it is published, kept as
        // agreement, replaces a build nothing counts on any more, or is a finding). (Between
        // this look-up and the store's transaction another upload can store the same manifest
        // first; this one's signature is then added to it: what it signed is what is kept.)
        if keys.document_version().is_some() {
            let digest = hex::encode(Sha256::digest(&signed.manifest));
            let same = self
                .store
                .key_manifests(&manifest.key)?
                .into_iter()
                .find(|row| {
                    matches!(row.status.as_str(), history::PUBLISHED | history::AGREEING)
                        && row.manifest_digest == digest
                });
            match same {
                None => keys.check_roles(&manifest.key, &signers, None)?,
                Some(row) => {
                    let present: Vec<String> = SignedManifest::decode(&row.signed_manifest)
                        .map(|old| old.signatures.into_iter().map(|s| s.key_id).collect())
                        .unwrap_or_default();
                    keys.check_roles(&manifest.key, &signers, Some(&present))?
                }
            }
        }
        let package = manifest
            .package
            .as_ref()
            .ok_or_else(|| Refusal::new(422, "manifest refused: it names no package"))?;
        let output = manifest
            .output
            .as_ref()
            .ok_or_else(|| Refusal::new(422, "manifest refused: it has no output"))?;
        let sha256: [u8; 32] = output.artifact_sha256.as_slice().try_into().map_err(|_| {
            Refusal::new(
                422,
                format!(
                    "manifest refused: its artifact sha256 has {} bytes, not 32",
                    output.artifact_sha256.len()
                ),
            )
        })?;
        let sha_hex = hex::encode(sha256);
        // One streamed read of the blob, hashed once ([`Blobs::check_artifact`]).
        match self.blobs.check_artifact(&sha256, output)? {
            // A manifest naming it is a use: `precomp gc` keeps it.
            ArtifactCheck::Present => self.store.touch_artifact(&sha256),
            ArtifactCheck::Missing => {
                return Err(Refusal::new(
                    422,
                    format!(
                        "manifest refused: artifact check failed: artifact {sha_hex} is not on \
                         this mirror; upload it first (PUT /precomp/v1/artifacts/{sha_hex})"
                    ),
                ))
            }
            ArtifactCheck::SizeMismatch { stored } => {
                return Err(Refusal::new(
                    422,
                    format!(
                        "manifest refused: artifact check failed: the manifest says artifact \
                         {sha_hex} has {} bytes, the stored one has {stored}",
                        output.artifact_size
                    ),
                ))
            }
            // The artifact holds exactly the files the manifest lists, with their digests.
            ArtifactCheck::FilesMismatch(e) => {
                return Err(Refusal::new(
                    422,
                    format!("manifest refused: artifact check failed: {e}"),
                ))
            }
        }
        let record = ManifestRecord {
            key: manifest.key.clone(),
            base_key: manifest.base_key.clone(),
            package: package.name.clone(),
            version: package.version.clone(),
            otp_major: manifest.otp_major.clone(),
            elixir: manifest.elixir.clone(),
            mix_env: manifest.mix_env.clone(),
            target: manifest.target.clone(),
            artifact_sha256: sha_hex,
            artifact_size: output.artifact_size,
            compile_env: manifest
                .compile_env
                .iter()
                .map(|r| CompileEnvJson {
                    app: r.app.clone(),
                    path: r.path.clone(),
                    value: r.value.clone(),
                })
                .collect(),
            signers,
            key_format: manifest.format,
            // Checked by `verify` above: the inputs give the key.
            base_text: manifest
                .inputs()
                .and_then(|inputs| Ok(inputs.base_text()?))
                .map_err(|e| Refusal::new(422, format!("manifest refused: {e}")))?,
            recipe: manifest.provenance.as_ref().and_then(|p| p.recipe.clone()),
        };
        let counts = |id: &str| keys.exclusion(id).is_none();
        let (result, signers, closed_misses, replaced) =
            match self
                .store
                .put_manifest(&record, &signed, bytes, &publisher.name, &counts)?
            {
                ManifestPut::Created { closed_misses } => {
                    ("created", record.signers.clone(), closed_misses, None)
                }
                ManifestPut::Unchanged { signers } => ("unchanged", signers, 0, None),
                ManifestPut::Countersigned { signers } => ("countersigned", signers, 0, None),
                ManifestPut::Agreed { signers } => ("agreed", signers, 0, None),
                ManifestPut::OtherRecipe {
                    published_recipe,
                    signers,
                } => {
                    tracing::info!(
                        key = %record.key,
                        publisher = %publisher.name,
                        published_recipe = published_recipe.as_deref().unwrap_or("unknown"),
                        recipe = record.recipe.as_deref().unwrap_or("unknown"),
                        "a build of another recipe of a published key: not stored, not a finding"
                    );
                    ("other_recipe", signers, 0, None)
                }
                ManifestPut::Replaced {
                    closed_misses,
                    replaced,
                } => (
                    "replaced",
                    record.signers.clone(),
                    closed_misses,
                    Some(replaced),
                ),
                ManifestPut::Conflict {
                    existing_digest,
                    existing_artifact,
                    existing_signers,
                    difference,
                    recorded,
                } => {
                    tracing::warn!(
                        key = %record.key,
                        publisher = %publisher.name,
                        published = %existing_artifact,
                        uploaded = %record.artifact_sha256,
                        "reproducibility finding: a build of a published key gave other bytes"
                    );
                    return Err(Refusal::new(
                        409,
                        format!(
                            "manifest refused: reproducibility finding: key {} is published with \
                             artifact {existing_artifact} (manifest {existing_digest}, signed by \
                             {}), and this build of the same inputs gave artifact {}: \
                             {difference}. {} (GET /precomp/v1/manifests/{}/history); find out \
                             which build is right (`precomp audit`, docs/audit.md) before \
                             trusting either",
                            record.key,
                            existing_signers.join(", "),
                            record.artifact_sha256,
                            if recorded {
                                "Recorded on the mirror, which flags the build".to_string()
                            } else {
                                format!(
                                    "Not recorded: the mirror keeps at most {} conflicting \
                                     manifests per key and flags the build already",
                                    history::MAX_CONFLICTING_PER_KEY
                                )
                            },
                            record.key
                        ),
                    ));
                }
            };
        tracing::info!(
            key = %record.key,
            package = %record.package,
            version = %record.version,
            publisher = %publisher.name,
            result,
            "manifest published"
        );
        Ok(ManifestStored {
            key: record.key,
            base_key: record.base_key,
            package: record.package,
            version: record.version,
            signers,
            result: result.to_string(),
            closed_misses,
            replaced,
        })
    }

    /// Validates and records a failed build.
    pub fn record_failure(
        &self,
        report: &FailureReport,
        publisher: &Publisher,
    ) -> Result<FailureRecorded, Refusal> {
        check_failure(report)?;
        let recorded = self.store.record_failure(report, &publisher.name)?;
        tracing::info!(
            package = %report.package,
            version = %report.version,
            toolchain = %report.toolchain_id,
            publisher = %publisher.name,
            "build failure recorded"
        );
        Ok(recorded)
    }

    /// Validates a miss (its key is recomputed from what it carries: [`check_miss`]), then
    /// counts it: open while no published build that satisfies it has a signer that counts on
    /// the mirror ([`Artifacts::counts`]) and no failure is recorded under its key; a miss
    /// asking for a config variant past the bound is refused (422).
    pub fn record_miss(&self, report: &MissReport) -> Result<MissRecorded, Refusal> {
        let checked = check_miss(report)?;
        self.record_checked_miss(report, checked)
    }

    /// Checks a miss as [`Artifacts::record_miss`] does, without recording it: the server
    /// then checks [`CheckedMiss::releases`] against the mirror's registry records and
    /// records it with [`Artifacts::record_checked_miss`].
    pub fn check_miss(&self, report: &MissReport) -> Result<CheckedMiss, Refusal> {
        check_miss(report)
    }

    /// Records a miss [`Artifacts::check_miss`] checked (`report` is the one it checked).
    pub fn record_checked_miss(
        &self,
        report: &MissReport,
        checked: CheckedMiss,
    ) -> Result<MissRecorded, Refusal> {
        let keys = self.effective_keys().ok();
        let record = MissRecord {
            report,
            miss_key: checked.miss_key,
            request_text: checked.request_text,
            variant_key: checked.variant_key,
            own_compile_env: checked.own_compile_env,
            variants: checked.variants,
        };
        match self
            .store
            .record_miss(&record, &self.misses, &|id| counts(keys.as_ref(), id))?
        {
            MissOutcome::Recorded(recorded) => Ok(recorded),
            MissOutcome::TooManyVariants {
                package,
                version,
                limit,
            } => {
                tracing::warn!(
                    package = %package,
                    version = %version,
                    otp_major = %report.otp_major,
                    elixir = %report.elixir,
                    mix_env = %report.mix_env,
                    limit,
                    "a miss asked for one config variant too many"
                );
                Err(Refusal::new(
                    422,
                    format!(
                        "too many config variants: {package} {version} (OTP {}, Elixir {}, mix \
                         env {}) already has {limit} sets of compile-time values requested, the \
                         most this mirror builds for one release; this miss asks for another. \
                         Align the config values this dependency reads with a set already \
                         built (`precomp fetch` names them), or ask the mirror's operator to \
                         raise --max-config-variants",
                        report.otp_major, report.elixir, report.mix_env
                    ),
                ))
            }
            MissOutcome::TooManyOpen { limit } => {
                tracing::warn!(
                    limit,
                    "a miss was refused: the open misses are at their bound"
                );
                Err(Refusal::too_many(
                    600,
                    format!(
                        "the mirror holds {limit} open misses, its bound (--max-open-misses): \
                         builders are behind, so no new miss is taken now; retry later (misses \
                         already open still count)"
                    ),
                ))
            }
        }
    }

    /// `GET misses`: the open misses, with the compile-env values they carry: for builders'
    /// tokens only (`403` for a token that may not publish builds, or that is bound to an
    /// auditor key).
    pub fn open_misses(&self, publisher: &Publisher) -> Result<Vec<Miss>, Refusal> {
        self.check_builder(publisher)?;
        self.store.expire_if_due(&self.misses)?;
        Ok(self
            .store
            .open_misses(MAX_MISSES_LISTED, MAX_MISSES_LOCK_BYTES)?)
    }

    /// `403` unless `publisher`'s token may publish builds and is not an auditor's: what the
    /// compile-env values misses carry are shown to.
    pub(crate) fn check_builder(&self, publisher: &Publisher) -> Result<(), Refusal> {
        let keys = self.effective_keys()?;
        keys.builder_keys_for(publisher)?;
        if let Some(key) = &publisher.key {
            if keys.auditors().contains(key) && !keys.builders().contains(key) {
                return Err(Refusal::new(
                    403,
                    format!(
                        "token {:?} is bound to auditor key {}: misses (which carry consumers' \
                         compile-time values) are shown to builders' tokens only",
                        publisher.name,
                        key.key_id()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Bounds on what misses carry.
    pub fn miss_policy(&self) -> &MissPolicy {
        &self.misses
    }

    /// The signed manifest `GET manifests/KEY` serves: the published one while one of its
    /// signers counts on the mirror ([`Artifacts::counts`]), else an agreeing one (the same
    /// artifact, another builder's manifest) with a signer that counts, else the published
    /// one (clients then say why they refuse it).
    pub fn served_manifest(&self, key: &str) -> Result<Option<Vec<u8>>, ArtifactStoreError> {
        let rows = self.store.key_manifests(key)?;
        if rows.iter().all(|row| row.status != history::AGREEING) {
            return Ok(rows.into_iter().next().map(|row| row.signed_manifest));
        }
        let keys = self.effective_keys().ok();
        let counts = |id: &str| counts(keys.as_ref(), id);
        Ok(history::serving(&rows, &counts).map(|row| row.signed_manifest.clone()))
    }

    /// Every manifest kept for `key` (`GET manifests/KEY/history`): which one is served, and
    /// which signers the trust document excludes now. `None` when nothing is published.
    pub fn manifest_history(
        &self,
        key: &str,
    ) -> Result<Option<ManifestHistory>, ArtifactStoreError> {
        use base64::Engine as _;
        let rows = self.store.key_manifests(key)?;
        let keys = self.effective_keys().ok();
        let counts_now = |id: &str| counts(keys.as_ref(), id);
        let Some(served) = history::serving(&rows, &counts_now) else {
            return Ok(None);
        };
        let served_digest = served.manifest_digest.clone();
        let manifests = rows
            .iter()
            .map(|row| KeptManifest {
                status: row.status.clone(),
                served: row.manifest_digest == served_digest
                    && matches!(row.status.as_str(), history::PUBLISHED | history::AGREEING),
                manifest_sha256: row.manifest_digest.clone(),
                artifact_sha256: row.artifact_sha256.clone(),
                signers: row.signers.clone(),
                excluded: row
                    .signers
                    .iter()
                    .filter_map(|id| keys.as_ref()?.exclusion(id))
                    .collect(),
                published_by: row.published_by.clone(),
                published_at: row.published_at,
                changed_at: row.changed_at,
                note: row.note.clone(),
                verdicts: serde_json::from_value(row.verdicts.clone()).unwrap_or_default(),
                signed_manifest: base64::engine::general_purpose::STANDARD
                    .encode(&row.signed_manifest),
            })
            .collect();
        Ok(Some(ManifestHistory {
            key: key.to_string(),
            manifests,
        }))
    }

    /// The verdicts on `key` (`GET verdicts/KEY`), with the disagreements that flag it too.
    pub fn verdicts(&self, key: &str) -> Result<Verdicts, ArtifactStoreError> {
        let mut verdicts = self.store.verdicts(key)?;
        let rows = self.store.key_manifests(key)?;
        let keys = self.effective_keys().ok();
        let counts = |id: &str| counts(keys.as_ref(), id);
        verdicts.disagreements = disagreements(&rows, &counts);
        verdicts.flagged |= !verdicts.disagreements.is_empty();
        Ok(verdicts)
    }
}

/// Whether a signature by `id` counts on the mirror now: its trust document (`keys`) does not
/// exclude the key (revoked, validity ended or not begun). Without usable keys (the document
/// cannot be used), nothing is excluded: reading goes on as before, uploads are refused.
fn counts(keys: Option<&EffectiveKeys>, id: &str) -> bool {
    keys.is_none_or(|keys| keys.exclusion(id).is_none())
}

/// The builds of a key (`rows`: its published manifest first, then its history) that gave
/// other artifact bytes than the published one, signed by a key that counts.
fn disagreements(
    rows: &[history::KeyManifest],
    counts: &dyn Fn(&str) -> bool,
) -> Vec<Disagreement> {
    let Some(published) = rows.first().filter(|row| row.status == history::PUBLISHED) else {
        return Vec::new();
    };
    disagreements_with(&published.artifact_sha256, rows.iter(), counts)
}

/// [`disagreements`], given the published artifact and the history rows.
fn disagreements_with<'a>(
    published_artifact: &str,
    rows: impl Iterator<Item = &'a history::KeyManifest>,
    counts: &dyn Fn(&str) -> bool,
) -> Vec<Disagreement> {
    rows.filter(|row| {
        row.status == history::CONFLICTING
            && row.artifact_sha256 != published_artifact
            && row.in_good_standing(counts)
    })
    .map(|row| Disagreement {
        signers: row.signers.clone(),
        artifact_sha256: row.artifact_sha256.clone(),
        summary: row.note.clone(),
        received_at: row.changed_at,
    })
    .collect()
}

/// What differs between a published artifact and another build of the same key, by the
/// files their manifests list: `2 of 14 files differ: ebin/a.beam (other bytes), …`.
pub(crate) fn describe_difference(published: &Output, other: &Output) -> String {
    use std::collections::BTreeMap;
    const NAMED: usize = 5;
    let by_path = |output: &Output| -> BTreeMap<String, FileRecord> {
        output
            .files
            .iter()
            .map(|file| (file.path.clone(), file.clone()))
            .collect()
    };
    let (ours, theirs) = (by_path(published), by_path(other));
    let mut differences = Vec::new();
    for (path, file) in &ours {
        match theirs.get(path) {
            None => differences.push(format!("{path} (only in the published build)")),
            Some(other) if other.sha256 != file.sha256 || other.size != file.size => {
                differences.push(format!("{path} (other bytes)"))
            }
            Some(other) if other.executable != file.executable => {
                differences.push(format!("{path} (executable bit)"))
            }
            Some(_) => {}
        }
    }
    for path in theirs.keys().filter(|path| !ours.contains_key(*path)) {
        differences.push(format!("{path} (only in this build)"));
    }
    if differences.is_empty() {
        return "every file the manifests list matches; the tarballs differ (their \
                compression or layout)"
            .to_string();
    }
    let total = ours.len().max(theirs.len());
    let count = differences.len();
    let more = count.saturating_sub(NAMED);
    differences.truncate(NAMED);
    format!(
        "{count} of {total} file(s) differ: {}{}",
        differences.join(", "),
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    )
}

/// `DATA/trust` beside the store (`DATA/artifacts`).
fn trust_dir_of(store: &Blobs) -> PathBuf {
    store
        .root()
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("trust")
}

fn key_ids(keys: &[ArtifactPublicKey]) -> String {
    keys.iter()
        .map(ArtifactPublicKey::key_id)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Hex package names ([`precomp_proto::registry::is_package_name`]).
pub fn valid_package(name: &str) -> bool {
    precomp_proto::registry::is_package_name(name)
}

/// 64 lowercase hex digits: keys and digests.
pub fn valid_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_toolchain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+'))
}

fn unprocessable(message: String) -> Refusal {
    Refusal::new(422, message)
}

fn check_release(package: &str, version: &str, base_key: &str) -> Result<(), Refusal> {
    if !valid_package(package) {
        return Err(unprocessable(format!(
            "package {package:?} is not a Hex package name"
        )));
    }
    if semver::Version::parse(version).is_err() {
        return Err(unprocessable(format!(
            "version {version:?} is not a SemVer version"
        )));
    }
    if !valid_digest(base_key) {
        return Err(unprocessable(format!(
            "base_key {base_key:?} is not 64 lowercase hex digits"
        )));
    }
    Ok(())
}

fn check_failure(report: &FailureReport) -> Result<(), Refusal> {
    check_release(&report.package, &report.version, &report.base_key)?;
    if !valid_toolchain_id(&report.toolchain_id) {
        return Err(unprocessable(format!(
            "toolchain_id {:?} must be 1 to 128 letters, digits and `._-:@+`",
            report.toolchain_id
        )));
    }
    if report.log.len() > MAX_FAILURE_LOG {
        return Err(Refusal::new(
            413,
            format!(
                "the log is {} bytes, over the limit of {MAX_FAILURE_LOG}: send its end",
                report.log.len()
            ),
        ));
    }
    Ok(())
}

/// A miss, checked: what identifies it and what it asks builds for.
#[derive(Debug)]
pub struct CheckedMiss {
    /// Its variant key, else its base key, else its request key.
    miss_key: String,
    request_text: String,
    variant_key: Option<String>,
    own_compile_env: Vec<CompileEnvEntry>,
    variants: Vec<VariantRef>,
    /// Every Hex release its lock pins, with the checksums the lock claims: checked against
    /// the mirror's verified registry records before the miss is recorded.
    releases: Vec<LockedRelease>,
}

impl CheckedMiss {
    /// The Hex releases the miss's lock pins.
    pub fn releases(&self) -> &[LockedRelease] {
        &self.releases
    }
}

/// A Hex release a miss's lock pins, with the checksums the lock claims for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedRelease {
    pub package: String,
    pub version: String,
    /// Lowercase hex, as the lock has it.
    pub inner_checksum: String,
    pub outer_checksum: Option<String>,
}

impl LockedRelease {
    /// Whether the lock's checksums are the ones the verified registry record gives
    /// (`inner`, `outer`: raw SHA-256 bytes); a 422 naming the release if not. Never names
    /// the registry's checksums: a client must take them from its own verified registry.
    pub fn check(&self, inner: &[u8], outer: Option<&[u8]>) -> Result<(), Refusal> {
        let wrong = |which: &str| {
            Err(unprocessable(format!(
                "lock: the {which} checksum of {} {} is not the one the mirror's verified \
                 registry record gives: fetch the package through this mirror (`mix deps.get`) \
                 and report the miss with the lock that wrote",
                self.package, self.version
            )))
        };
        if !self
            .inner_checksum
            .eq_ignore_ascii_case(&hex::encode(inner))
        {
            return wrong("inner");
        }
        match (&self.outer_checksum, outer) {
            (Some(claimed), Some(outer)) if !claimed.eq_ignore_ascii_case(&hex::encode(outer)) => {
                wrong("outer")
            }
            (Some(_), None) => wrong("outer"),
            _ => Ok(()),
        }
    }
}

/// A miss's lock may pin at most this many Hex releases (a package's closure: `precomp fetch`
/// sends just that), each checked against the mirror's registry records.
pub const MAX_MISS_LOCK_RELEASES: usize = 512;

/// A miss must name a release its lock holds and carry, for the package and each closure
/// member, what its key needs (manager, target when known, compile-env entries: plain data,
/// each value at most [`MAX_COMPILE_ENV_VALUE`] bytes of term text and all of them at most
/// [`MAX_MISS_COMPILE_ENV_BYTES`]); its key must be what those give: the base key when every
/// member's key can be computed, else the request key, and when it carries the package's own
/// compile-env entries its variant key (docs/protocol.md, "Misses"). So the builder can
/// build exactly what the client missed, and junk reports are refused. The key the mirror
/// computes is never part of a refusal: a client must compute it itself.
fn check_miss(report: &MissReport) -> Result<CheckedMiss, Refusal> {
    if !valid_package(&report.package) {
        return Err(unprocessable(format!(
            "package {:?} is not a Hex package name",
            report.package
        )));
    }
    if semver::Version::parse(&report.version).is_err() {
        return Err(unprocessable(format!(
            "version {:?} is not a SemVer version",
            report.version
        )));
    }
    let claimed = match (&report.base_key, &report.request_key) {
        (Some(key), None) | (None, Some(key)) if valid_digest(key) => key.clone(),
        (Some(_), Some(_)) | (None, None) => {
            return Err(unprocessable(
                "a miss gives exactly one of base_key and request_key".to_string(),
            ))
        }
        (_, _) => {
            return Err(unprocessable(
                "the miss's key is not 64 lowercase hex digits".to_string(),
            ))
        }
    };
    if report.reason.is_empty()
        || report.reason.len() > MAX_MISS_REASON
        || report.reason.chars().any(char::is_control)
    {
        return Err(unprocessable(format!(
            "reason must be 1 to {MAX_MISS_REASON} bytes of text on one line"
        )));
    }
    if report.lock.len() > MAX_MISS_LOCK {
        return Err(Refusal::new(
            413,
            format!(
                "the lock is {} bytes, over the limit of {MAX_MISS_LOCK}",
                report.lock.len()
            ),
        ));
    }
    if report.manager.is_empty() {
        return Err(unprocessable(
            "the miss names no manager: it is of key format v1 (a precomp from before key \
             format v2); upgrade precomp fetch"
                .to_string(),
        ));
    }
    let carried_bytes: usize = report
        .compile_env
        .iter()
        .chain(report.closure.iter().flat_map(|m| m.compile_env.iter()))
        .map(|record| record.path.len() + record.value.as_ref().map_or(0, String::len))
        .sum();
    if carried_bytes > MAX_MISS_COMPILE_ENV_BYTES {
        return Err(Refusal::new(
            413,
            format!(
                "the miss carries {carried_bytes} bytes of compile-env paths and values, over \
                 the limit of {MAX_MISS_COMPILE_ENV_BYTES}"
            ),
        ));
    }
    if report.closure.len() > MAX_MISS_MEMBERS {
        return Err(unprocessable(format!(
            "the miss lists {} closure members, more than {MAX_MISS_MEMBERS}",
            report.closure.len()
        )));
    }
    let lock = MixLock::parse(&report.lock)
        .map_err(|e| unprocessable(format!("lock: not a mix.lock: {e}")))?;
    let app = lock
        .hex()
        .find(|(_, entry)| entry.package == report.package && entry.version == report.version)
        .map(|(app, _)| app.to_string())
        .ok_or_else(|| {
            unprocessable(format!(
                "lock: no Hex entry for {} {}",
                report.package, report.version
            ))
        })?;
    let (_, closure) = lock
        .closure_by_app(&app)
        .map_err(|e| unprocessable(format!("lock: {e}")))?;
    let target = miss_target(&report.target)?;
    let releases = locked_releases(&lock)?;

    // What each package's key needs, by app: the package's own, then each member's.
    let mut parts = BTreeMap::new();
    parts.insert(
        app.clone(),
        key_parts(
            &lock,
            &app,
            &report.package,
            &report.manager,
            Some(target.clone()),
            &report.compile_env,
        )?,
    );
    for member in &report.closure {
        let Some((member_app, package)) = closure.iter().find(|(_, p)| p.name == member.name)
        else {
            return Err(unprocessable(format!(
                "closure: {} is not in the closure the lock gives {}",
                member.name, report.package
            )));
        };
        if member.version != package.version {
            return Err(unprocessable(format!(
                "closure: {} is at {} in the lock, not {}",
                member.name, package.version, member.version
            )));
        }
        let member_target = member.target.as_deref().map(miss_target).transpose()?;
        let member_parts = key_parts(
            &lock,
            member_app,
            &member.name,
            &member.manager,
            member_target,
            &member.compile_env,
        )?;
        if parts.insert(member_app.clone(), member_parts).is_some() {
            return Err(unprocessable(format!(
                "closure: {} is listed twice",
                member.name
            )));
        }
    }
    if let Some(package) = closure.iter().find_map(|(member_app, package)| {
        (!parts.contains_key(member_app)).then_some(&package.name)
    }) {
        return Err(unprocessable(format!(
            "closure: the miss carries nothing for {package}, a dependency in the lock's closure \
             of {}",
            report.package
        )));
    }
    let toolchain = KeyToolchain {
        otp_major: report.otp_major.clone(),
        elixir: report.elixir.clone(),
        mix_env: report.mix_env.clone(),
    };
    // The config variants it asks for: the package's own values, and each member's.
    let mut variants = Vec::new();
    for (part_app, part) in &parts {
        if part.compile_env.is_empty() {
            continue;
        }
        let Some(LockEntry::Hex(entry)) = lock.entries.get(part_app) else {
            continue;
        };
        variants.push(VariantRef {
            package: entry.package.clone(),
            version: entry.version.clone(),
            digest: hex::encode(compile_env_digest(&part.compile_env)),
        });
    }
    variants.sort();
    variants.dedup();
    let own_compile_env = parts
        .get(&app)
        .map(|own| own.compile_env.clone())
        .unwrap_or_default();
    let inputs = lock
        .inputs_bottom_up(&app, target, &parts, &toolchain)
        .map_err(|e| unprocessable(format!("build inputs: {e}")))?;
    let request_text = inputs
        .request_text()
        .map_err(|e| unprocessable(format!("build inputs: {e}")))?;
    let every_key_known = inputs.closure.iter().all(|member| member.key.is_some());
    let computed = match (every_key_known, &report.base_key) {
        (true, Some(_)) => inputs.base_key(),
        (false, None) => inputs.request_key(),
        (true, None) => {
            return Err(unprocessable(
                "the miss gives a request_key, but every closure member's key can be computed \
                 from what it carries: give its base_key (docs/protocol.md, \"Misses\")"
                    .to_string(),
            ))
        }
        (false, Some(_)) => {
            let unknown: Vec<&str> = inputs
                .closure
                .iter()
                .filter(|m| m.key.is_none())
                .map(|m| m.package.name.as_str())
                .collect();
            return Err(unprocessable(format!(
                "the miss gives a base_key, but the keys of {} cannot be computed from what it \
                 carries (no target): give its request_key (docs/protocol.md, \"Misses\")",
                unknown.join(", ")
            )));
        }
    }
    .map_err(|e| unprocessable(format!("build inputs: {e}")))?
    .to_string();
    if computed != claimed {
        // Never the computed key: the client must compute it from its own inputs.
        return Err(unprocessable(format!(
            "the miss's {} is not what its lock, toolchain and carried inputs give; compute it \
             as docs/protocol.md (\"The build key\", \"Misses\") says",
            if report.base_key.is_some() {
                "base_key"
            } else {
                "request_key"
            }
        )));
    }
    // A miss carrying the package's own values is a config variant: identified by its
    // variant key (consumers that differ only in those values report different misses).
    let variant_key = if own_compile_env.is_empty() {
        if report.variant_key.is_some() {
            return Err(unprocessable(
                "the miss gives a variant_key but carries no compile_env entries of the \
                 package: a variant key is for a miss that carries them"
                    .to_string(),
            ));
        }
        None
    } else {
        let variant_key = inputs
            .variant_key()
            .map_err(|e| unprocessable(format!("build inputs: {e}")))?
            .to_string();
        if report
            .variant_key
            .as_ref()
            .is_some_and(|claimed| *claimed != variant_key)
        {
            return Err(unprocessable(
                "the miss's variant_key is not what its lock, toolchain and carried inputs \
                 give; compute it as docs/protocol.md (\"Misses\") says"
                    .to_string(),
            ));
        }
        Some(variant_key)
    };
    Ok(CheckedMiss {
        miss_key: variant_key.clone().unwrap_or(claimed),
        request_text,
        variant_key,
        own_compile_env,
        variants,
        releases,
    })
}

/// The request text of a miss (`BuildInputs::request_text`), recomputed from what it carries
/// as the mirror does when it records it; a builder checks with it that what it built
/// satisfies the miss (`precomp_proto::buildkey::request_satisfied_by`).
pub fn miss_request_text(report: &MissReport) -> Result<String, Refusal> {
    check_miss(report).map(|checked| checked.request_text)
}

/// Whether a build whose manifest has base text `base_text` and records `built` satisfies
/// `miss` (docs/protocol.md "Misses", "Which builds satisfy a miss"): its base text satisfies
/// the miss's request text and, for a config variant, every compile-env path it read is
/// carried by the miss with the same value. What builders check before closing a miss.
pub fn miss_satisfied_by(
    miss: &Miss,
    base_text: &str,
    built: &[CompileEnvEntry],
) -> Result<bool, Refusal> {
    let request = miss_request_text(&miss.report())?;
    if !precomp_proto::buildkey::request_satisfied_by(&request, base_text) {
        return Ok(false);
    }
    if miss.variant_key.is_none() {
        return Ok(true);
    }
    let own = miss
        .compile_env
        .iter()
        .map(compile_env_entry)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unprocessable(format!("the miss's compile_env: {e}")))?;
    Ok(precomp_proto::buildkey::compile_env_covers(&own, built))
}

/// Every Hex release `lock` pins: of the default repository (`hexpm`, which the mirror
/// serves; an organisation's `hexpm:ORG` is refused), at most [`MAX_MISS_LOCK_RELEASES`].
fn locked_releases(lock: &MixLock) -> Result<Vec<LockedRelease>, Refusal> {
    let mut releases = Vec::new();
    for (app, entry) in &lock.entries {
        let LockEntry::Hex(entry) = entry else {
            continue;
        };
        if entry.repo != "hexpm" {
            return Err(unprocessable(format!(
                "lock: {app} ({} {}) comes from the Hex repository {:?}, which this mirror does \
                 not serve: no build can be made of it here",
                entry.package, entry.version, entry.repo
            )));
        }
        if releases.len() == MAX_MISS_LOCK_RELEASES {
            return Err(unprocessable(format!(
                "lock: more than {MAX_MISS_LOCK_RELEASES} Hex packages; a miss carries the \
                 package's closure only (as `precomp fetch` sends it)"
            )));
        }
        releases.push(LockedRelease {
            package: entry.package.clone(),
            version: entry.version.clone(),
            inner_checksum: entry.inner_checksum.clone(),
            outer_checksum: entry.outer_checksum.clone(),
        });
    }
    Ok(releases)
}

/// `any` or `ARCH-LIBC`, as a miss names a target.
fn miss_target(text: &str) -> Result<Target, Refusal> {
    Target::parse(text)
        .ok_or_else(|| unprocessable(format!("target {text:?} is neither `any` nor ARCH-LIBC")))
}

/// What a miss carries for one package (`name`, the lock's `app`), checked: a manager Mix
/// could use for it (the one its lock entry's build tools give, when they decide it), and
/// compile-env entries that parse.
fn key_parts(
    lock: &MixLock,
    app: &str,
    name: &str,
    manager: &str,
    target: Option<Target>,
    compile_env: &[CompileEnvJson],
) -> Result<KeyParts, Refusal> {
    let manager = Manager::parse(manager).ok_or_else(|| {
        unprocessable(format!(
            "{name}: manager {manager:?} is not mix, rebar3 or make"
        ))
    })?;
    if let Some(LockEntry::Hex(entry)) = lock.entries.get(app) {
        if let Some(decided) = entry.mix_manager() {
            if decided != manager {
                return Err(unprocessable(format!(
                    "{name}: the lock's build tools make Mix use {decided}, not {manager}"
                )));
            }
        }
    }
    if compile_env.len() > MAX_MISS_COMPILE_ENV {
        return Err(unprocessable(format!(
            "{name}: more than {MAX_MISS_COMPILE_ENV} compile-env entries"
        )));
    }
    let compile_env = compile_env
        .iter()
        .map(|record| {
            if let Some(value) = &record.value {
                if value.len() > MAX_COMPILE_ENV_VALUE {
                    return Err(unprocessable(format!(
                        "{name}: compile_env {} {}: its value is {} bytes of term text, over \
                         the limit of {MAX_COMPILE_ENV_VALUE}: no build is made for it",
                        record.app,
                        record.path,
                        value.len()
                    )));
                }
            }
            let entry = compile_env_entry(record)
                .map_err(|e| unprocessable(format!("{name}: compile_env: {e}")))?;
            if entry
                .value
                .as_ref()
                .is_some_and(precomp_proto::config::holds_opaque)
            {
                return Err(unprocessable(format!(
                    "{name}: compile_env {} {}: the value is not plain data (a fun, pid, \
                     reference or port, shown as '{}'): no build can be given it",
                    record.app,
                    record.path,
                    precomp_proto::config::OPAQUE
                )));
            }
            Ok(entry)
        })
        .collect::<Result<_, _>>()?;
    Ok(KeyParts {
        manager,
        target,
        compile_env,
    })
}

/// A compile-env record (Erlang term text) as an entry.
pub fn compile_env_entry(record: &CompileEnvJson) -> Result<CompileEnvEntry, String> {
    let term = |text: &str| match parse_erlang_terms(&format!("{text}.")) {
        Ok(mut terms) if terms.len() == 1 => Ok(terms.remove(0)),
        Ok(_) => Err(format!("{text:?} is not one term")),
        Err(e) => Err(format!("{text:?}: {e}")),
    };
    let path = match term(&record.path)? {
        Term::List(path) if !path.is_empty() => path,
        _ => return Err(format!("path {:?} is not a non-empty list", record.path)),
    };
    if record.app.is_empty() {
        return Err("an entry names no app".into());
    }
    Ok(CompileEnvEntry {
        app: record.app.clone(),
        path,
        value: record.value.as_deref().map(term).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"%{
  "cfg_macro": {:hex, :cfg_macro, "1.0.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:mix], [], "hexpm", "2222222222222222222222222222222222222222222222222222222222222222"},
  "cfg_macro_user": {:hex, :cfg_macro_user, "1.0.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", [:mix], [{:cfg_macro, "~> 1.0", [hex: :cfg_macro, repo: "hexpm", optional: false]}], "hexpm", "1111111111111111111111111111111111111111111111111111111111111111"},
}
"#;

    /// docs/protocol.md's vectors: the dependent's base key with the leaf built for `any`
    /// with no compile env, and its request key when the leaf has no build.
    const BASE_KEY: &str = "d0aeb167516065b6450ce7e356b3fd4ebed36ae5b13051b7d2aadef93053561d";
    const BLUE_BASE_KEY: &str = "f3a55c56cf8f33dd9aead110bc96ef1d9287c31a60e635bdfadef63872630bef";
    const REQUEST_KEY: &str = "5ca61b692bb6ecc31886233edbccd749a5bc9e0da235393abc1a89c0096a4fa2";

    fn report() -> MissReport {
        MissReport {
            package: "cfg_macro_user".into(),
            version: "1.0.0".into(),
            base_key: Some(BASE_KEY.into()),
            request_key: None,
            variant_key: None,
            reason: "not built".into(),
            otp_major: "25".into(),
            elixir: "1.14.0".into(),
            mix_env: "prod".into(),
            target: "any".into(),
            lock: LOCK.into(),
            manager: "mix".into(),
            compile_env: vec![],
            closure: vec![MissMember {
                name: "cfg_macro".into(),
                version: "1.0.0".into(),
                manager: "mix".into(),
                target: Some("any".into()),
                compile_env: vec![],
            }],
        }
    }

    fn refused(report: &MissReport) -> Refusal {
        let refusal = check_miss(report).unwrap_err();
        for key in [BASE_KEY, BLUE_BASE_KEY, REQUEST_KEY] {
            assert!(
                !refusal.message.contains(key),
                "{refusal:?} hands out a key"
            );
        }
        refusal
    }

    /// The mirror recomputes a miss's key from what it carries and refuses a miss whose key
    /// is not that, without ever saying which key it computed.
    #[test]
    fn misses_are_recomputed_from_what_they_carry() {
        assert_eq!(check_miss(&report()).unwrap().miss_key, BASE_KEY);
        // The leaf's compile env changes the dependent's base key.
        let mut blue = report();
        blue.closure[0].compile_env = vec![CompileEnvJson {
            app: "cfg_macro".into(),
            path: "[label]".into(),
            value: Some("<<\"blue\">>".into()),
        }];
        assert_eq!(refused(&blue).status, 422);
        blue.base_key = Some(BLUE_BASE_KEY.into());
        let checked = check_miss(&blue).unwrap();
        let (key, text) = (checked.miss_key, checked.request_text);
        assert_eq!(key, BLUE_BASE_KEY);
        assert!(text.starts_with("precomp-miss-request-v1\n"), "{text}");
        // No build of the leaf: its target is unknown, the request key identifies the miss.
        let mut unknown = report();
        unknown.closure[0].target = None;
        let refusal = refused(&unknown);
        assert!(refusal.message.contains("request_key"), "{refusal:?}");
        unknown.base_key = None;
        unknown.request_key = Some(REQUEST_KEY.into());
        assert_eq!(check_miss(&unknown).unwrap().miss_key, REQUEST_KEY);
        unknown.request_key = Some(BASE_KEY.into());
        let refusal = refused(&unknown);
        assert!(refusal.message.contains("not what its lock"), "{refusal:?}");
    }

    #[test]
    fn misses_are_checked_against_their_lock() {
        check_miss(&report()).unwrap();
        let mut native = report();
        native.target = "x86_64".into();
        assert_eq!(refused(&native).status, 422);
        native.target = "x86_64-linux-gnu".into();
        let refusal = refused(&native);
        assert!(refusal.message.contains("not what its lock"), "{refusal:?}");
        let mut leaf = report();
        leaf.package = "cfg_macro".into();
        assert_eq!(refused(&leaf).status, 422);
        let mut multiline = report();
        multiline.reason = "a\nb".into();
        assert_eq!(refused(&multiline).status, 422);
        let mut not_a_lock = report();
        not_a_lock.lock = "%{".into();
        assert!(refused(&not_a_lock).message.contains("not a mix.lock"));
        // Key format v1 clients send no manager.
        let mut v1 = report();
        v1.manager.clear();
        v1.closure.clear();
        assert!(refused(&v1).message.contains("key format v1"));
        // Every member of the lock's closure, and only those, with a manager Mix could use.
        let mut missing = report();
        missing.closure.clear();
        assert!(refused(&missing)
            .message
            .contains("carries nothing for cfg_macro"));
        let mut extra = report();
        extra.closure.push(MissMember {
            name: "plain_ex".into(),
            ..extra.closure[0].clone()
        });
        assert!(refused(&extra).message.contains("not in the closure"));
        let mut wrong_manager = report();
        wrong_manager.closure[0].manager = "rebar3".into();
        assert!(refused(&wrong_manager).message.contains("make Mix use mix"));
        let mut both = report();
        both.request_key = Some(REQUEST_KEY.into());
        assert!(refused(&both).message.contains("exactly one"));
    }

    /// A version-4 database (tokens without scopes) is migrated when it is opened: its
    /// tokens keep working, with the scopes their keys give them (an auditor key's token is
    /// an auditor, an unbound token builder and auditor); tokens made with scopes keep them.
    #[test]
    fn a_version_4_database_opens_and_its_tokens_get_their_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("artifacts");
        let auditor = precomp_proto::manifest::ArtifactSigningKey::generate().public_key();
        let builder = precomp_proto::manifest::ArtifactSigningKey::generate().public_key();
        let (audit_token, unbound_token, builder_token) = {
            let store = open_metadata(&data).unwrap();
            (
                store.create_token("a1", Some(&auditor), None).unwrap(),
                store.create_token("u1", None, None).unwrap(),
                store.create_token("b1", Some(&builder), None).unwrap(),
            )
        };
        // As version 4 made it (migrations V1–V4 applied): no scopes column (nor the later
        // manifests' recipe). (Databases of version 4 from before refinery are
        // `store::schema_tests`' fixtures.)
        let db = rusqlite::Connection::open(data.join("artifacts.db")).unwrap();
        db.execute_batch(
            "ALTER TABLE tokens DROP COLUMN scopes; ALTER TABLE manifests DROP COLUMN recipe;
             PRAGMA user_version = 4; DELETE FROM refinery_schema_history WHERE version >= 5;",
        )
        .unwrap();
        drop(db);
        let artifacts = Artifacts::open(ArtifactsConfig {
            data: data.clone(),
            builder_keys: vec![builder.clone()],
            auditor_keys: vec![auditor.clone()],
            ..ArtifactsConfig::default()
        })
        .unwrap();
        let db = rusqlite::Connection::open(data.join("artifacts.db")).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, 6);
        let scopes = |token: &str| {
            artifacts
                .authenticate(Some(&format!("Bearer {token}")))
                .unwrap()
                .scopes
        };
        assert_eq!(scopes(&audit_token), vec![Scope::Reader, Scope::Auditor]);
        assert_eq!(scopes(&builder_token), vec![Scope::Reader, Scope::Builder]);
        assert_eq!(
            scopes(&unbound_token),
            vec![Scope::Reader, Scope::Builder, Scope::Auditor]
        );
        let listed = artifacts.store().list_tokens().unwrap();
        assert!(
            listed.iter().all(|token| token.scopes.is_none()),
            "{listed:?}"
        );
        // A token made now with scopes has those (and reads), whatever its key.
        let reader = artifacts
            .store()
            .create_token("r1", Some(&builder), Some(&[Scope::Reader]))
            .unwrap();
        assert_eq!(scopes(&reader), vec![Scope::Reader]);
        // Hex clients send the bare token.
        assert_eq!(
            artifacts
                .authenticate(Some(&reader))
                .unwrap()
                .publisher
                .name,
            "r1"
        );
    }

    /// Two stores on one directory stand for `precomp serve` and `precomp token`.
    #[test]
    fn tokens_are_seen_and_revoked_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let cli = open_metadata(dir.path()).unwrap();
        let server = open_metadata(dir.path()).unwrap();
        let key = precomp_proto::manifest::ArtifactSigningKey::generate().public_key();
        let token = cli.create_token("b1", Some(&key), None).unwrap();
        match server.lookup_token(&token).unwrap() {
            TokenLookup::Active(publisher) => {
                assert_eq!(publisher.name, "b1");
                assert_eq!(publisher.key, Some(key));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            server.lookup_token(&token::new_token()).unwrap(),
            TokenLookup::Unknown
        ));
        cli.revoke_token("b1").unwrap();
        assert!(matches!(
            server.lookup_token(&token).unwrap(),
            TokenLookup::Revoked { .. }
        ));
        let renewed = cli
            .create_token("b1", None, Some(&[token::Scope::Builder]))
            .unwrap();
        assert!(matches!(
            server.lookup_token(&token).unwrap(),
            TokenLookup::Unknown
        ));
        assert!(matches!(
            server.lookup_token(&renewed).unwrap(),
            TokenLookup::Active(Publisher { key: None, .. })
        ));
    }
}
