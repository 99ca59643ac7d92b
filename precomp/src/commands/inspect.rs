//! `precomp inspect`: shows a signed manifest or an artifact, with its checks.
//!
//! For a signed manifest (protobuf `SignedManifest`): every field, whether its key matches
//! the inputs it lists (`check_key`), and each signature with its key id and whether it
//! verifies against the `--trust` keys. For an artifact (`.tar.gz`): its SHA-256, size and
//! files, and with `--manifest` whether it is the artifact that manifest describes.
//!
//! Exits non-zero when a check fails: the key check, any `--trust` key that did not sign or
//! whose signature does not verify, or the artifact not matching `--manifest`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use precomp_proto::artifact::{self, ArtifactInfo, MAX_ARTIFACT_SIZE};
use precomp_proto::file::ReadError;
use precomp_proto::manifest::{
    ArtifactPublicKey, FileRecord, Manifest, ManifestError, SignedManifest,
    MAX_SIGNED_MANIFEST_SIZE,
};
use prost::Message;
use serde::Serialize;

use crate::Context;

/// Shows a signed manifest or an artifact (detected from its bytes), with its checks.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// A signed manifest (`<key>.manifest`) or an artifact (`<sha256>.tar.gz`).
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// A trusted public key (SPKI PEM, as `precomp keys generate` writes NAME.pub). Each one
    /// given must have signed the manifest with a signature that verifies. Repeatable.
    #[arg(long = "trust", value_name = "FILE.pub")]
    trust: Vec<PathBuf>,
    /// With an artifact: the signed manifest it must match (files, digests, size).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
}

pub fn run(_context: &Context, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let limit = MAX_ARTIFACT_SIZE.max(MAX_SIGNED_MANIFEST_SIZE as u64);
    let bytes = read_bounded(&args.file, limit)?;
    let trusted = args
        .trust
        .iter()
        .map(|path| Ok((path.clone(), load_public_key(path)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (report, failures) = if bytes.starts_with(&[0x1f, 0x8b]) {
        inspect_artifact(&args, &bytes, &trusted)?
    } else {
        if args.manifest.is_some() {
            bail!(
                "--manifest is for checking an artifact, and {} is not one (it is no gzip file)",
                args.file.display()
            );
        }
        let signed = SignedManifest::decode(&bytes).with_context(|| {
            format!(
                "{} is neither an artifact (.tar.gz) nor a signed manifest",
                args.file.display()
            )
        })?;
        let checked = check_manifest(&signed, &trusted).with_context(|| {
            format!(
                "{}: the signed bytes are not a manifest",
                args.file.display()
            )
        })?;
        let mut report = ManifestReport::new(&checked, &args.file);
        report.kind = Some("manifest");
        report.ok = Some(checked.failures.is_empty());
        if !args.json {
            print!("{}", manifest_text(&args.file, &checked));
        }
        (Report::Manifest(Box::new(report)), checked.failures)
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The file at `path`, at most `limit` bytes ([`precomp_proto::file::read_bounded`]).
fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    precomp_proto::file::read_bounded(path, limit).map_err(|e| match e {
        ReadError::TooLarge { .. } => {
            anyhow::anyhow!("{e}: neither a manifest nor an artifact precomp accepts")
        }
        ReadError::Io { .. } => anyhow::anyhow!("reading {e}"),
    })
}

fn load_public_key(path: &Path) -> anyhow::Result<ArtifactPublicKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ArtifactPublicKey::from_pem(&pem).with_context(|| {
        format!(
            "{} is not an ed25519 public key (SPKI PEM, as `precomp keys generate` writes NAME.pub)",
            path.display()
        )
    })
}

/// How one signature fared.
enum SignatureStatus {
    Verified(PathBuf),
    Invalid(PathBuf),
    /// No `--trust` key has its key id.
    Unchecked,
}

struct CheckedManifest {
    manifest: Manifest,
    key_check: Result<(), ManifestError>,
    signatures: Vec<(String, SignatureStatus)>,
    /// Per `--trust` key: its file, key id, and `None` if it verified or why not.
    trust: Vec<(PathBuf, String, Option<String>)>,
    failures: Vec<String>,
}

/// Decodes the manifest, checks its key and every signature against `trusted`.
fn check_manifest(
    signed: &SignedManifest,
    trusted: &[(PathBuf, ArtifactPublicKey)],
) -> anyhow::Result<CheckedManifest> {
    let manifest = Manifest::decode(signed.manifest.as_slice())?;
    let key_check = manifest.check_key().map(|_| ());
    let mut failures = Vec::new();
    match &key_check {
        // A manifest of key format v1 is shown as it is: its key is not computed any more,
        // which is no sign of tampering.
        Ok(()) | Err(ManifestError::OldKeyFormat) => {}
        Err(e) => failures.push(format!("key check failed: {e}")),
    }
    let mut signatures = Vec::new();
    for signature in &signed.signatures {
        let status = match trusted
            .iter()
            .find(|(_, key)| key.key_id() == signature.key_id)
        {
            None => SignatureStatus::Unchecked,
            Some((path, key)) => {
                // Verify this one signature alone; errors after the signature check (the
                // manifest's key) are reported by the key check above.
                let alone = SignedManifest {
                    manifest: signed.manifest.clone(),
                    signatures: vec![signature.clone()],
                };
                match alone.verify(std::slice::from_ref(key)) {
                    Err(ManifestError::BadSignature { .. } | ManifestError::Untrusted { .. }) => {
                        SignatureStatus::Invalid(path.clone())
                    }
                    _ => SignatureStatus::Verified(path.clone()),
                }
            }
        };
        signatures.push((signature.key_id.clone(), status));
    }
    let mut trust = Vec::new();
    for (path, key) in trusted {
        let id = key.key_id();
        let mine: Vec<&SignatureStatus> = signatures
            .iter()
            .filter(|(key_id, _)| *key_id == id)
            .map(|(_, status)| status)
            .collect();
        let problem = if mine.is_empty() {
            Some(format!(
                "{} ({id}) did not sign this manifest",
                path.display()
            ))
        } else if mine
            .iter()
            .any(|s| matches!(s, SignatureStatus::Invalid(_)))
        {
            Some(format!(
                "the signature by {} ({id}) does not verify: the manifest or the signature was changed",
                path.display()
            ))
        } else {
            None
        };
        if let Some(problem) = &problem {
            failures.push(problem.clone());
        }
        trust.push((path.clone(), id, problem));
    }
    Ok(CheckedManifest {
        manifest,
        key_check,
        signatures,
        trust,
        failures,
    })
}

fn manifest_text(file: &Path, checked: &CheckedManifest) -> String {
    use std::fmt::Write as _;
    let m = &checked.manifest;
    let mut out = String::new();
    let _ = writeln!(out, "signed manifest  {}", file.display());
    let key_note = match &checked.key_check {
        Ok(()) => "matches its inputs".to_string(),
        Err(ManifestError::OldKeyFormat) => {
            "key format v1: not checked, this precomp computes key format v2 only".to_string()
        }
        Err(e) => format!("KEY CHECK FAILED: {e}"),
    };
    let _ = writeln!(out, "key              {} ({key_note})", m.key);
    let _ = writeln!(out, "base key         {}", m.base_key);
    let _ = writeln!(
        out,
        "format           {} (key format v{})",
        m.format, m.format
    );
    match &m.package {
        Some(p) => {
            let _ = writeln!(
                out,
                "package          {} {} {}",
                p.name,
                p.version,
                hex::encode(&p.outer_checksum)
            );
        }
        None => {
            let _ = writeln!(out, "package          (none)");
        }
    }
    if !m.manager.is_empty() {
        let _ = writeln!(out, "manager          {}", m.manager);
    }
    let _ = writeln!(out, "closure          {} packages", m.closure.len());
    for p in &m.closure {
        let key = if p.key.is_empty() {
            String::new()
        } else {
            format!(" key {}", p.key)
        };
        let _ = writeln!(
            out,
            "  {} {} {}{key}",
            p.name,
            p.version,
            hex::encode(&p.outer_checksum)
        );
    }
    let _ = writeln!(out, "otp              {}", m.otp_major);
    let _ = writeln!(out, "elixir           {}", m.elixir);
    let _ = writeln!(out, "mix env          {}", m.mix_env);
    let _ = writeln!(out, "target           {}", m.target);
    let _ = writeln!(out, "compile env      {} entries", m.compile_env.len());
    for e in &m.compile_env {
        let value = e.value.as_deref().unwrap_or("(unset)");
        let _ = writeln!(out, "  {} {} = {value}", e.app, e.path);
    }
    match &m.output {
        Some(o) => {
            let _ = writeln!(out, "artifact sha256  {}", hex::encode(&o.artifact_sha256));
            let _ = writeln!(out, "artifact size    {} bytes", o.artifact_size);
            let _ = writeln!(out, "files            {}", o.files.len());
            let _ = writeln!(
                out,
                "native code      {}",
                if o.native_code { "yes" } else { "no" }
            );
        }
        None => {
            let _ = writeln!(out, "output           (none)");
        }
    }
    if let Some(p) = &m.provenance {
        let _ = writeln!(
            out,
            "toolchain        {} {}",
            p.toolchain_id, p.toolchain_digest
        );
        let _ = writeln!(out, "builder          {}", p.builder_id);
        let _ = writeln!(out, "build duration   {} ms", p.build_duration_ms);
        let _ = writeln!(out, "build log sha256 {}", hex::encode(&p.build_log_sha256));
        let _ = writeln!(out, "recipe           {}", recipe_text(p.recipe.as_deref()));
    }
    let _ = writeln!(out, "signatures       {}", checked.signatures.len());
    for (key_id, status) in &checked.signatures {
        let status = match status {
            SignatureStatus::Verified(p) => format!("verified with {}", p.display()),
            SignatureStatus::Invalid(p) => {
                format!("INVALID: does not verify with {}", p.display())
            }
            SignatureStatus::Unchecked => "not checked (no --trust key with this id)".into(),
        };
        let _ = writeln!(out, "  {key_id}  {status}");
    }
    for (path, id, problem) in &checked.trust {
        let status = match problem {
            None => "trusted: verified".to_string(),
            Some(problem) => format!("trusted: FAILED: {problem}"),
        };
        let _ = writeln!(out, "trust            {} ({id}) {status}", path.display());
    }
    out
}

fn inspect_artifact(
    args: &InspectArgs,
    bytes: &[u8],
    trusted: &[(PathBuf, ArtifactPublicKey)],
) -> anyhow::Result<(Report, Vec<String>)> {
    let info: ArtifactInfo = artifact::info(bytes)
        .with_context(|| format!("{} is not a valid artifact", args.file.display()))?;
    let mut failures = Vec::new();
    let mut manifest_report = None;
    let mut manifest_lines = String::new();
    match &args.manifest {
        None if !trusted.is_empty() => {
            bail!("--trust checks a manifest's signatures: give the artifact's --manifest too")
        }
        None => {}
        Some(path) => {
            let manifest_bytes = read_bounded(path, MAX_SIGNED_MANIFEST_SIZE as u64)?;
            let signed = SignedManifest::decode(&manifest_bytes)
                .with_context(|| format!("{} is not a signed manifest", path.display()))?;
            let mut checked = check_manifest(&signed, trusted).with_context(|| {
                format!("{}: the signed bytes are not a manifest", path.display())
            })?;
            failures.append(&mut checked.failures);
            let check = match &checked.manifest.output {
                None => Err("the manifest has no output".to_string()),
                Some(output) => artifact::check(bytes, output).map_err(|e| e.to_string()),
            };
            manifest_lines = manifest_text(path, &checked);
            match &check {
                Ok(()) => manifest_lines.push_str("artifact         matches the manifest\n"),
                Err(e) => {
                    manifest_lines.push_str(&format!("artifact         DOES NOT MATCH: {e}\n"));
                    failures.push(format!(
                        "the artifact does not match {}: {e}",
                        path.display()
                    ));
                }
            }
            let mut report = ManifestReport::new(&checked, path);
            report.check = Some(Check::of(check.as_ref().err()));
            manifest_report = Some(report);
        }
    }
    let report = Report::Artifact(Box::new(ArtifactReport {
        file: args.file.display().to_string(),
        file_count: info.files.len(),
        files: info.files.iter().map(FileJson::new).collect(),
        kind: "artifact",
        manifest: manifest_report,
        native_code: info.native_code,
        ok: failures.is_empty(),
        sha256: hex::encode(info.sha256),
        size: info.size,
    }));
    if !args.json {
        println!("artifact         {}", args.file.display());
        println!("sha256           {}", hex::encode(info.sha256));
        println!("size             {} bytes", info.size);
        println!(
            "native code      {}",
            if info.native_code { "yes" } else { "no" }
        );
        println!("files            {}", info.files.len());
        for file in &info.files {
            println!(
                "  {} {:>10} {} {}",
                hex::encode(&file.sha256),
                file.size,
                if file.executable { "x" } else { "-" },
                file.path
            );
        }
        if !manifest_lines.is_empty() {
            println!();
            print!("{manifest_lines}");
        }
    }
    Ok((report, failures))
}

// The `--json` report: one object, fields in name order (as always printed). A manifest's
// optional parts (`manager`, `package`, `output`, `provenance`) are null when absent.

/// What `precomp inspect --json` prints.
#[derive(Serialize)]
#[serde(untagged)]
enum Report {
    Manifest(Box<ManifestReport>),
    Artifact(Box<ArtifactReport>),
}

/// An artifact: its digest, size and files, and with `--manifest` that manifest's report
/// (with `check`: whether the artifact is the one it describes).
#[derive(Serialize)]
struct ArtifactReport {
    file: String,
    file_count: usize,
    files: Vec<FileJson>,
    kind: &'static str,
    manifest: Option<ManifestReport>,
    native_code: bool,
    ok: bool,
    sha256: String,
    size: u64,
}

/// A signed manifest: every field, the key check, each signature, each `--trust` key.
/// `kind` and `ok` on the top-level report; `check` when it is an artifact's `--manifest`.
#[derive(Serialize)]
struct ManifestReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<Check>,
    file: String,
    key_check: KeyCheck,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    manifest: ManifestJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    signatures: Vec<SignatureJson>,
    trust: Vec<TrustJson>,
}

/// A check that passed, or why not.
#[derive(Serialize)]
struct Check {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ok: bool,
}

impl Check {
    fn of(error: Option<&String>) -> Check {
        Check {
            error: error.cloned(),
            ok: error.is_none(),
        }
    }
}

/// The key check; `old_key_format` for a manifest of key format v1 (shown as it is).
#[derive(Serialize)]
struct KeyCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_key_format: Option<bool>,
}

#[derive(Serialize)]
struct ManifestJson {
    base_key: String,
    closure: Vec<PackageJson>,
    compile_env: Vec<CompileEnvJson>,
    elixir: String,
    format: u32,
    key: String,
    key_format: u32,
    manager: Option<String>,
    mix_env: String,
    otp_major: String,
    output: Option<OutputJson>,
    package: Option<PackageJson>,
    provenance: Option<ProvenanceJson>,
    target: String,
}

/// A package; closure members of format 2 with their own `key`.
#[derive(Serialize)]
struct PackageJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    name: String,
    outer_checksum: String,
    version: String,
}

impl PackageJson {
    fn new(package: &precomp_proto::manifest::PackageId, with_key: bool) -> PackageJson {
        PackageJson {
            key: (with_key && !package.key.is_empty()).then(|| package.key.clone()),
            name: package.name.clone(),
            outer_checksum: hex::encode(&package.outer_checksum),
            version: package.version.clone(),
        }
    }
}

#[derive(Serialize)]
struct CompileEnvJson {
    app: String,
    path: String,
    value: Option<String>,
}

#[derive(Serialize)]
struct OutputJson {
    artifact_sha256: String,
    artifact_size: u64,
    file_count: usize,
    files: Vec<FileJson>,
    native_code: bool,
}

#[derive(Serialize)]
struct ProvenanceJson {
    build_duration_ms: u64,
    build_log_sha256: String,
    builder_id: String,
    /// The build recipe (`precomp_builder::RECIPE`); null when the builder recorded none.
    recipe: Option<String>,
    toolchain_digest: String,
    toolchain_id: String,
}

#[derive(Serialize)]
struct FileJson {
    executable: bool,
    path: String,
    sha256: String,
    size: u64,
}

impl FileJson {
    fn new(file: &FileRecord) -> FileJson {
        FileJson {
            executable: file.executable,
            path: file.path.clone(),
            sha256: hex::encode(&file.sha256),
            size: file.size,
        }
    }
}

/// A signature: `verified` or `invalid` against the `--trust` key it names, or `unchecked`.
#[derive(Serialize)]
struct SignatureJson {
    key_id: String,
    status: &'static str,
    trusted_key: Option<String>,
}

/// A `--trust` key: whether it signed and its signature verifies, or why not.
#[derive(Serialize)]
struct TrustJson {
    error: Option<String>,
    file: String,
    key_id: String,
    ok: bool,
}

impl ManifestReport {
    /// The report of the manifest in `file`.
    fn new(checked: &CheckedManifest, file: &Path) -> ManifestReport {
        let m = &checked.manifest;
        ManifestReport {
            check: None,
            file: file.display().to_string(),
            key_check: match &checked.key_check {
                Ok(()) => KeyCheck {
                    error: None,
                    ok: true,
                    old_key_format: None,
                },
                Err(e) => KeyCheck {
                    error: Some(e.to_string()),
                    ok: false,
                    old_key_format: matches!(e, ManifestError::OldKeyFormat).then_some(true),
                },
            },
            kind: None,
            manifest: ManifestJson {
                base_key: m.base_key.clone(),
                closure: m
                    .closure
                    .iter()
                    .map(|p| PackageJson::new(p, true))
                    .collect(),
                compile_env: m
                    .compile_env
                    .iter()
                    .map(|e| CompileEnvJson {
                        app: e.app.clone(),
                        path: e.path.clone(),
                        value: e.value.clone(),
                    })
                    .collect(),
                elixir: m.elixir.clone(),
                format: m.format,
                key: m.key.clone(),
                key_format: m.format,
                manager: (!m.manager.is_empty()).then(|| m.manager.clone()),
                mix_env: m.mix_env.clone(),
                otp_major: m.otp_major.clone(),
                output: m.output.as_ref().map(|o| OutputJson {
                    artifact_sha256: hex::encode(&o.artifact_sha256),
                    artifact_size: o.artifact_size,
                    file_count: o.files.len(),
                    files: o.files.iter().map(FileJson::new).collect(),
                    native_code: o.native_code,
                }),
                package: m.package.as_ref().map(|p| PackageJson::new(p, false)),
                provenance: m.provenance.as_ref().map(|p| ProvenanceJson {
                    build_duration_ms: p.build_duration_ms,
                    build_log_sha256: hex::encode(&p.build_log_sha256),
                    builder_id: p.builder_id.clone(),
                    recipe: p.recipe.clone(),
                    toolchain_digest: p.toolchain_digest.clone(),
                    toolchain_id: p.toolchain_id.clone(),
                }),
                target: m.target.clone(),
            },
            ok: None,
            signatures: checked
                .signatures
                .iter()
                .map(|(key_id, status)| {
                    let (status, key) = match status {
                        SignatureStatus::Verified(p) => ("verified", Some(p.display().to_string())),
                        SignatureStatus::Invalid(p) => ("invalid", Some(p.display().to_string())),
                        SignatureStatus::Unchecked => ("unchecked", None),
                    };
                    SignatureJson {
                        key_id: key_id.clone(),
                        status,
                        trusted_key: key,
                    }
                })
                .collect(),
            trust: checked
                .trust
                .iter()
                .map(|(path, id, problem)| TrustJson {
                    error: problem.clone(),
                    file: path.display().to_string(),
                    key_id: id.clone(),
                    ok: problem.is_none(),
                })
                .collect(),
        }
    }
}

/// The manifest's build recipe, and whether this precomp builds (and audits) with it.
fn recipe_text(recipe: Option<&str>) -> String {
    match recipe {
        Some(recipe) if recipe == precomp_builder::RECIPE => format!("{recipe} (this precomp's)"),
        Some(recipe) => format!(
            "{recipe} (this precomp builds with {}: audit it with a precomp of {recipe})",
            precomp_builder::RECIPE
        ),
        None => format!(
            "unknown (built before recipes were recorded; this precomp builds with {})",
            precomp_builder::RECIPE
        ),
    }
}
