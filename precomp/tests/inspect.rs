//! `precomp inspect`: a signed manifest shows every field and which signatures verify against
//! the trusted keys; a changed byte, or a key that did not sign, fails. An artifact shows its
//! files and, with --manifest, the first file that differs.

mod common;

use std::path::{Path, PathBuf};

use common::{describe, ok, precomp, text};
use precomp_proto::artifact::{pack, PackedArtifact};
use precomp_proto::buildkey::{
    BuildInputs, BuildKey, ClosureMember, CompileEnvEntry, Manager, PackageRef, Target,
};
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Provenance, SignedManifest};
use precomp_proto::term::Term;
use prost::Message;
use serde_json::Value;

/// `precomp keys generate --name NAME --out DIR`: (private key file, public key file, key id).
fn artifact_key(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let stdout = ok(precomp(&[
        "keys",
        "generate",
        "--name",
        name,
        "--out",
        dir.to_str().unwrap(),
    ]));
    let key_id = stdout.split_whitespace().next().unwrap().to_string();
    assert!(key_id.starts_with("ed25519:"), "{stdout}");
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
        key_id,
    )
}

fn signing_key(path: &Path) -> ArtifactSigningKey {
    ArtifactSigningKey::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A small app build dir packed as an artifact.
fn artifact(dir: &Path, beam: &[u8]) -> PackedArtifact {
    let app = dir.join("_build/prod/lib/env_reader");
    std::fs::create_dir_all(app.join("ebin")).unwrap();
    std::fs::create_dir_all(app.join("priv")).unwrap();
    std::fs::write(
        app.join("ebin/env_reader.app"),
        "{application,env_reader,[{vsn,\"1.0.0\"}]}.\n",
    )
    .unwrap();
    std::fs::write(app.join("ebin/Elixir.EnvReader.beam"), beam).unwrap();
    std::fs::write(app.join("priv/greeting.txt"), "hello\n").unwrap();
    pack(&app, dir).unwrap()
}

fn manifest(packed: &PackedArtifact) -> Manifest {
    let inputs = BuildInputs {
        package: PackageRef {
            name: "env_reader".into(),
            version: "1.0.0".into(),
            outer_checksum: [0x11; 32],
        },
        manager: Manager::Mix,
        closure: vec![ClosureMember {
            package: PackageRef {
                name: "shapes".into(),
                version: "2.0.0".into(),
                outer_checksum: [0x22; 32],
            },
            key: Some(BuildKey([0x44; 32])),
        }],
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![
            CompileEnvEntry {
                app: "env_reader".into(),
                path: vec![Term::atom("greeting")],
                value: Some(Term::binary("hello")),
            },
            CompileEnvEntry {
                app: "env_reader".into(),
                path: vec![Term::atom("format"), Term::atom("punctuation")],
                value: None,
            },
        ],
    };
    let mut manifest = Manifest {
        output: Some(packed.output()),
        provenance: Some(Provenance {
            toolchain_id: "bookworm-otp25".into(),
            toolchain_digest: "sha256:abcdef".into(),
            builder_id: "builder-1".into(),
            build_duration_ms: 4321,
            build_log_sha256: vec![0x33; 32],
            recipe: Some(precomp_builder::RECIPE.into()),
        }),
        ..Manifest::default()
    };
    manifest.set_inputs(&inputs).unwrap();
    manifest
}

struct Fixture {
    dir: tempfile::TempDir,
    builder_pub: PathBuf,
    builder_id: String,
    auditor_pub: PathBuf,
    auditor_id: String,
    manifest: Manifest,
    manifest_file: PathBuf,
    artifact_file: PathBuf,
}

/// An artifact and its manifest, signed by a builder and countersigned by an auditor.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (builder_key, builder_pub, builder_id) = artifact_key(&keys, "builder");
    let (auditor_key, auditor_pub, auditor_id) = artifact_key(&keys, "auditor");
    let packed = artifact(&dir.path().join("build"), b"FOR1 original beam");
    let manifest = manifest(&packed);
    let mut signed = SignedManifest::sign(&manifest, &signing_key(&builder_key));
    signed.countersign(&signing_key(&auditor_key));
    let manifest_file = dir.path().join(format!("{}.manifest", manifest.key));
    std::fs::write(&manifest_file, signed.encode_to_vec()).unwrap();
    let artifact_file = dir
        .path()
        .join(format!("{}.tar.gz", hex::encode(packed.sha256)));
    std::fs::write(&artifact_file, &packed.bytes).unwrap();
    Fixture {
        dir,
        builder_pub,
        builder_id,
        auditor_pub,
        auditor_id,
        manifest,
        manifest_file,
        artifact_file,
    }
}

fn inspect(args: &[&Path], flags: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = vec!["inspect"];
    all.extend(args.iter().map(|p| p.to_str().unwrap()));
    all.extend(flags);
    precomp(&all)
}

fn json(output: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().next().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {}", describe(output)))
}

#[test]
fn a_signed_manifest_shows_every_field_and_which_signatures_verify() {
    let f = fixture();
    let m = &f.manifest;
    let output = m.output.as_ref().unwrap();
    let builder_pub = f.builder_pub.to_str().unwrap();
    let stdout = ok(inspect(&[&f.manifest_file], &["--trust", builder_pub]));
    for expected in [
        format!("key              {} (matches its inputs)", m.key),
        format!("base key         {}", m.base_key),
        format!("package          env_reader 1.0.0 {}", "11".repeat(32)),
        "format           2 (key format v2)".to_string(),
        "manager          mix".to_string(),
        "closure          1 packages".to_string(),
        format!("  shapes 2.0.0 {} key {}", "22".repeat(32), "44".repeat(32)),
        "otp              25".into(),
        "elixir           1.14.0".into(),
        "mix env          prod".into(),
        "target           any".into(),
        "compile env      2 entries".into(),
        "  env_reader [greeting] = <<\"hello\">>".into(),
        "  env_reader [format,punctuation] = (unset)".into(),
        format!("artifact sha256  {}", hex::encode(&output.artifact_sha256)),
        format!("artifact size    {} bytes", output.artifact_size),
        "files            3".into(),
        "native code      no".into(),
        "toolchain        bookworm-otp25 sha256:abcdef".into(),
        "builder          builder-1".into(),
        "build duration   4321 ms".into(),
        format!("build log sha256 {}", "33".repeat(32)),
        format!(
            "recipe           {} (this precomp's)",
            precomp_builder::RECIPE
        ),
        "signatures       2".into(),
        format!("  {}  verified with {builder_pub}", f.builder_id),
        format!(
            "  {}  not checked (no --trust key with this id)",
            f.auditor_id
        ),
        format!(
            "trust            {builder_pub} ({}) trusted: verified",
            f.builder_id
        ),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // Both keys trusted: both verified. As one JSON object.
    let out = inspect(
        &[&f.manifest_file],
        &[
            "--json",
            "--trust",
            builder_pub,
            "--trust",
            f.auditor_pub.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let report = json(&out);
    assert_eq!(report["kind"], "manifest");
    assert_eq!(report["ok"], true);
    assert_eq!(report["key_check"]["ok"], true);
    assert_eq!(report["manifest"]["key"], m.key.as_str());
    assert_eq!(report["manifest"]["base_key"], m.base_key.as_str());
    assert_eq!(report["manifest"]["package"]["name"], "env_reader");
    assert_eq!(report["manifest"]["closure"][0]["name"], "shapes");
    assert_eq!(report["manifest"]["closure"][0]["key"], "44".repeat(32));
    assert_eq!(report["manifest"]["manager"], "mix");
    assert_eq!(report["manifest"]["key_format"], 2);
    assert_eq!(report["manifest"]["otp_major"], "25");
    assert_eq!(report["manifest"]["compile_env"][0]["path"], "[greeting]");
    assert_eq!(report["manifest"]["compile_env"][1]["value"], Value::Null);
    assert_eq!(report["manifest"]["output"]["file_count"], 3);
    assert_eq!(
        report["manifest"]["output"]["artifact_sha256"],
        hex::encode(&output.artifact_sha256)
    );
    assert_eq!(report["manifest"]["output"]["native_code"], false);
    assert_eq!(report["manifest"]["provenance"]["builder_id"], "builder-1");
    assert_eq!(
        report["manifest"]["provenance"]["recipe"],
        precomp_builder::RECIPE
    );
    let signatures = report["signatures"].as_array().unwrap();
    assert_eq!(signatures.len(), 2);
    for (signature, id) in signatures.iter().zip([&f.builder_id, &f.auditor_id]) {
        assert_eq!(signature["key_id"], id.as_str());
        assert_eq!(signature["status"], "verified");
    }
    assert_eq!(report["trust"].as_array().unwrap().len(), 2);
    assert!(report["trust"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["ok"] == true));

    // No --trust: shown, nothing verified, key check still made.
    let report = json(&inspect(&[&f.manifest_file], &["--json"]));
    assert_eq!(report["ok"], true);
    assert_eq!(report["signatures"][0]["status"], "unchecked");
}

#[test]
fn the_build_recipe_is_shown_against_this_precomps() {
    let f = fixture();
    let key = signing_key(&f.dir.path().join("keys/builder.key"));
    for (name, recipe, text_line, json_value) in [
        (
            "other",
            Some("precomp-build-recipe-2"),
            format!(
                "recipe           precomp-build-recipe-2 (this precomp builds with {}: audit it \
                 with a precomp of precomp-build-recipe-2)",
                precomp_builder::RECIPE
            ),
            Value::from("precomp-build-recipe-2"),
        ),
        (
            "unknown",
            None,
            format!(
                "recipe           unknown (built before recipes were recorded; this precomp \
                 builds with {})",
                precomp_builder::RECIPE
            ),
            Value::Null,
        ),
    ] {
        let mut manifest = f.manifest.clone();
        manifest.provenance.as_mut().unwrap().recipe = recipe.map(str::to_string);
        let file = f.dir.path().join(format!("{name}.manifest"));
        std::fs::write(&file, SignedManifest::sign(&manifest, &key).encode_to_vec()).unwrap();
        let stdout = ok(inspect(&[&file], &[]));
        assert!(
            stdout.contains(&text_line),
            "missing {text_line:?} in:\n{stdout}"
        );
        let report = json(&inspect(&[&file], &["--json"]));
        assert_eq!(report["manifest"]["provenance"]["recipe"], json_value);
    }
}

#[test]
fn a_changed_manifest_byte_fails_with_a_clear_error() {
    let f = fixture();
    let bytes = std::fs::read(&f.manifest_file).unwrap();
    let builder_pub = f.builder_pub.to_str().unwrap();

    // The Elixir version changed: still decodes, but the key no longer matches and the
    // signature no longer verifies.
    let at = bytes.windows(6).position(|w| w == b"1.14.0").unwrap();
    let mut changed = bytes.clone();
    changed[at + 5] = b'1';
    let tampered = f.dir.path().join("tampered.manifest");
    std::fs::write(&tampered, &changed).unwrap();
    let out = inspect(&[&tampered], &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let all = text(&out);
    assert!(all.contains("key check failed"), "{all}");
    assert!(all.contains("claims key"), "{all}");
    assert!(all.contains("elixir           1.14.1"), "{all}");
    let out = inspect(&[&tampered], &["--trust", builder_pub]);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("does not verify"), "{all}");
    assert!(all.contains(&format!("{}  INVALID", f.builder_id)), "{all}");
    let report = json(&inspect(&[&tampered], &["--json", "--trust", builder_pub]));
    assert_eq!(report["ok"], false);
    assert_eq!(report["key_check"]["ok"], false);
    assert_eq!(report["signatures"][0]["status"], "invalid");

    // A signature byte changed: the key still matches, the signature does not verify.
    let signed = SignedManifest::decode(bytes.as_slice()).unwrap();
    let mut forged = signed.clone();
    forged.signatures[0].signature[10] ^= 0x40;
    let forged_file = f.dir.path().join("forged.manifest");
    std::fs::write(&forged_file, forged.encode_to_vec()).unwrap();
    assert!(inspect(&[&forged_file], &[]).status.success());
    let out = inspect(&[&forged_file], &["--trust", builder_pub]);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("does not verify"), "{all}");
    assert!(!all.contains("key check failed"), "{all}");

    // Not a manifest at all.
    let junk = f.dir.path().join("junk");
    std::fs::write(&junk, b"\xff\xff\xff not protobuf").unwrap();
    let out = inspect(&[&junk], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("neither an artifact"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_key_that_did_not_sign_fails() {
    let f = fixture();
    let (_, stranger_pub, stranger_id) = artifact_key(&f.dir.path().join("keys"), "stranger");
    let out = inspect(
        &[&f.manifest_file],
        &["--trust", stranger_pub.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let all = text(&out);
    assert!(
        all.contains(&format!("({stranger_id}) did not sign this manifest")),
        "{all}"
    );
    // The signatures there were not checked against anything.
    assert!(all.contains("not checked"), "{all}");

    // One trusted key that signed and one that did not: still a failure.
    let out = inspect(
        &[&f.manifest_file],
        &[
            "--trust",
            f.builder_pub.to_str().unwrap(),
            "--trust",
            stranger_pub.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());

    // A private key given as a trusted key is refused with a hint.
    let out = inspect(
        &[&f.manifest_file],
        &[
            "--trust",
            f.dir.path().join("keys/builder.key").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not an ed25519 public key"),
        "{}",
        describe(&out)
    );
}

#[test]
fn an_artifact_shows_its_files_and_names_the_file_its_manifest_disagrees_on() {
    let f = fixture();
    let stdout = ok(inspect(&[&f.artifact_file], &[]));
    let output = f.manifest.output.as_ref().unwrap();
    assert!(
        stdout.contains(&format!(
            "sha256           {}",
            hex::encode(&output.artifact_sha256)
        )),
        "{stdout}"
    );
    for file in &output.files {
        assert!(
            stdout.contains(&format!("{} ", hex::encode(&file.sha256)))
                && stdout.contains(&file.path),
            "{} missing:\n{stdout}",
            file.path
        );
    }

    // The matching manifest, its signature checked too.
    let stdout = ok(inspect(
        &[&f.artifact_file],
        &[
            "--manifest",
            f.manifest_file.to_str().unwrap(),
            "--trust",
            f.builder_pub.to_str().unwrap(),
        ],
    ));
    assert!(stdout.contains("matches the manifest"), "{stdout}");

    // The same build with one beam changed: named.
    let other = artifact(&f.dir.path().join("other"), b"FOR1 changed beam!");
    let other_file = f.dir.path().join("other.tar.gz");
    std::fs::write(&other_file, &other.bytes).unwrap();
    let out = inspect(
        &[&other_file],
        &["--manifest", f.manifest_file.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let all = text(&out);
    assert!(
        all.contains("ebin/Elixir.EnvReader.beam") && all.contains("does not match"),
        "{all}"
    );
    let report = json(&inspect(
        &[&other_file],
        &["--json", "--manifest", f.manifest_file.to_str().unwrap()],
    ));
    assert_eq!(report["kind"], "artifact");
    assert_eq!(report["ok"], false);
    assert_eq!(report["file_count"], 3);
    assert_eq!(report["sha256"], hex::encode(other.sha256));
    assert_eq!(report["manifest"]["check"]["ok"], false);
    assert!(report["manifest"]["check"]["error"]
        .as_str()
        .unwrap()
        .contains("ebin/Elixir.EnvReader.beam"));

    // --trust without --manifest has nothing to check.
    let out = inspect(
        &[&f.artifact_file],
        &["--trust", f.builder_pub.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("--manifest"), "{}", describe(&out));
}

/// A manifest of key format v1 (written before key format v2) is shown as it is, its
/// signatures checked; its key is not computed, which is said, not reported as tampering.
#[test]
fn a_format_1_manifest_is_shown_with_its_key_format() {
    let f = fixture();
    let dir = f.dir.path();
    let (key, public, _) = artifact_key(&dir.join("old-keys"), "old-builder");
    let mut old = f.manifest.clone();
    old.format = 1;
    old.manager.clear();
    for member in &mut old.closure {
        member.key.clear();
    }
    let file = dir.join("old.manifest");
    std::fs::write(
        &file,
        SignedManifest::sign(&old, &signing_key(&key)).encode_to_vec(),
    )
    .unwrap();
    let stdout = ok(inspect(&[&file], &["--trust", public.to_str().unwrap()]));
    for expected in [
        format!(
            "key              {} (key format v1: not checked, this precomp computes key format v2 only)",
            old.key
        ),
        "format           1 (key format v1)".to_string(),
        format!("  shapes 2.0.0 {}\n", "22".repeat(32)),
        "trusted: verified".to_string(),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("manager "), "{stdout}");
    let out = inspect(&[&file], &["--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let report = json(&out);
    assert_eq!(report["manifest"]["key_format"], 1);
    assert_eq!(report["key_check"]["old_key_format"], true);
    assert!(report["manifest"]["closure"][0].get("key").is_none());
}
