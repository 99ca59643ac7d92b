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
use serde_json::{json, Value};

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
        let mut checked = check_manifest(&signed, &trusted).with_context(|| {
            format!(
                "{}: the signed bytes are not a manifest",
                args.file.display()
            )
        })?;
        let mut report = checked.report.take().unwrap_or(Value::Null);
        report["file"] = json!(args.file.display().to_string());
        report["kind"] = json!("manifest");
        report["ok"] = json!(checked.failures.is_empty());
        if !args.json {
            print!("{}", manifest_text(&args.file, &checked));
        }
        (report, checked.failures)
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
    report: Option<Value>,
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
    let mut checked = CheckedManifest {
        manifest,
        key_check,
        signatures,
        trust,
        failures,
        report: None,
    };
    checked.report = Some(manifest_json(&checked));
    Ok(checked)
}

fn hex_or_empty(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn file_json(file: &FileRecord) -> Value {
    json!({
        "path": file.path,
        "sha256": hex::encode(&file.sha256),
        "size": file.size,
        "executable": file.executable,
    })
}

fn manifest_json(checked: &CheckedManifest) -> Value {
    let m = &checked.manifest;
    let package = |p: &precomp_proto::manifest::PackageId| json!({"name": p.name, "version": p.version, "outer_checksum": hex::encode(&p.outer_checksum)});
    // Format 2: each closure member with its own key.
    let member = |p: &precomp_proto::manifest::PackageId| {
        let mut value = package(p);
        if !p.key.is_empty() {
            value["key"] = p.key.clone().into();
        }
        value
    };
    json!({
        "manifest": {
            "format": m.format,
            "key_format": m.format,
            "key": m.key,
            "base_key": m.base_key,
            "package": m.package.as_ref().map(package),
            "manager": (!m.manager.is_empty()).then_some(&m.manager),
            "closure": m.closure.iter().map(member).collect::<Vec<_>>(),
            "otp_major": m.otp_major,
            "elixir": m.elixir,
            "mix_env": m.mix_env,
            "target": m.target,
            "compile_env": m.compile_env.iter().map(|e| json!({
                "app": e.app, "path": e.path, "value": e.value,
            })).collect::<Vec<_>>(),
            "output": m.output.as_ref().map(|o| json!({
                "artifact_sha256": hex_or_empty(&o.artifact_sha256),
                "artifact_size": o.artifact_size,
                "file_count": o.files.len(),
                "native_code": o.native_code,
                "files": o.files.iter().map(file_json).collect::<Vec<_>>(),
            })),
            "provenance": m.provenance.as_ref().map(|p| json!({
                "toolchain_id": p.toolchain_id,
                "toolchain_digest": p.toolchain_digest,
                "builder_id": p.builder_id,
                "build_duration_ms": p.build_duration_ms,
                "build_log_sha256": hex_or_empty(&p.build_log_sha256),
            })),
        },
        "key_check": match &checked.key_check {
            Ok(()) => json!({"ok": true}),
            Err(e @ ManifestError::OldKeyFormat) => json!({"ok": false, "old_key_format": true, "error": e.to_string()}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        "signatures": checked.signatures.iter().map(|(key_id, status)| {
            let (status, key) = match status {
                SignatureStatus::Verified(p) => ("verified", Some(p.display().to_string())),
                SignatureStatus::Invalid(p) => ("invalid", Some(p.display().to_string())),
                SignatureStatus::Unchecked => ("unchecked", None),
            };
            json!({"key_id": key_id, "status": status, "trusted_key": key})
        }).collect::<Vec<_>>(),
        "trust": checked.trust.iter().map(|(path, id, problem)| json!({
            "file": path.display().to_string(),
            "key_id": id,
            "ok": problem.is_none(),
            "error": problem,
        })).collect::<Vec<_>>(),
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
            let _ = writeln!(out, "artifact sha256  {}", hex_or_empty(&o.artifact_sha256));
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
        let _ = writeln!(
            out,
            "build log sha256 {}",
            hex_or_empty(&p.build_log_sha256)
        );
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
) -> anyhow::Result<(Value, Vec<String>)> {
    let info: ArtifactInfo = artifact::info(bytes)
        .with_context(|| format!("{} is not a valid artifact", args.file.display()))?;
    let mut failures = Vec::new();
    let mut manifest_report = Value::Null;
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
            let mut report = checked.report.take().unwrap_or(Value::Null);
            report["file"] = json!(path.display().to_string());
            report["check"] = match &check {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e}),
            };
            manifest_report = report;
        }
    }
    let report = json!({
        "file": args.file.display().to_string(),
        "kind": "artifact",
        "sha256": hex::encode(info.sha256),
        "size": info.size,
        "native_code": info.native_code,
        "file_count": info.files.len(),
        "files": info.files.iter().map(file_json).collect::<Vec<_>>(),
        "manifest": manifest_report,
        "ok": failures.is_empty(),
    });
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
