//! Manifests: they bind an artifact to its inputs, carry several signatures, and refuse any
//! change. Keys and signatures interoperate with OpenSSL.

use std::process::Command;

use precomp_proto::buildkey::{
    BuildInputs, BuildKey, ClosureMember, CompileEnvEntry, Manager, PackageRef, Target,
};
use precomp_proto::manifest::{
    ArtifactPublicKey, ArtifactSigningKey, FileRecord, Manifest, ManifestError, Output, Provenance,
    SignedManifest, SIGNATURE_CONTEXT,
};
use precomp_proto::term::Term;
use prost::Message;

fn inputs() -> BuildInputs {
    BuildInputs {
        package: PackageRef {
            name: "env_reader".into(),
            version: "1.0.0".into(),
            outer_checksum: [7; 32],
        },
        manager: Manager::Mix,
        closure: vec![
            ClosureMember {
                package: PackageRef {
                    name: "b_dep".into(),
                    version: "0.1.0".into(),
                    outer_checksum: [2; 32],
                },
                key: Some(BuildKey([0xb2; 32])),
            },
            ClosureMember {
                package: PackageRef {
                    name: "a_dep".into(),
                    version: "2.0.0-rc.1".into(),
                    outer_checksum: [1; 32],
                },
                key: Some(BuildKey([0xa1; 32])),
            },
        ],
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
        target: Target::Native {
            arch: "x86_64".into(),
            libc: "linux-gnu".into(),
        },
        compile_env: vec![
            CompileEnvEntry {
                app: "env_reader".into(),
                path: vec![Term::atom("greeting")],
                value: Some(Term::binary("héllo")),
            },
            CompileEnvEntry {
                app: "env_reader".into(),
                path: vec![Term::atom("format"), Term::atom("punctuation")],
                value: None,
            },
            CompileEnvEntry {
                app: "env_reader".into(),
                path: vec![Term::atom("opts")],
                value: Some(Term::Map(vec![
                    (Term::atom("limit"), Term::Integer(-3)),
                    (
                        Term::binary("k"),
                        Term::Tuple(vec![Term::atom("ok"), Term::Float(0.5)]),
                    ),
                ])),
            },
        ],
    }
}

fn manifest() -> Manifest {
    let mut manifest = Manifest {
        output: Some(Output {
            artifact_sha256: vec![9; 32],
            artifact_size: 1234,
            files: vec![FileRecord {
                path: "ebin/env_reader.beam".into(),
                sha256: vec![3; 32],
                size: 1000,
                executable: false,
            }],
            native_code: true,
        }),
        provenance: Some(Provenance {
            toolchain_id: "bookworm".into(),
            toolchain_digest: "sha256:abcd".into(),
            builder_id: "builder-1".into(),
            build_duration_ms: 4200,
            build_log_sha256: vec![5; 32],
            recipe: Some("precomp-build-recipe-3".into()),
        }),
        ..Default::default()
    };
    manifest.set_inputs(&inputs()).unwrap();
    manifest
}

#[test]
fn a_signed_manifest_round_trips_and_lists_its_signers() {
    let builder = ArtifactSigningKey::generate();
    let auditor = ArtifactSigningKey::generate();
    let mut signed = SignedManifest::sign(&manifest(), &builder);
    signed.countersign(&auditor);
    signed.countersign(&auditor); // once per key
    assert_eq!(signed.signatures.len(), 2);

    let decoded = SignedManifest::decode(&signed.encode_to_vec()).unwrap();
    let trusted = [builder.public_key(), auditor.public_key()];
    let (read, signers) = decoded.verify(&trusted).unwrap();
    assert_eq!(read, manifest());
    assert_eq!(
        signers,
        [builder.public_key().key_id(), auditor.public_key().key_id()]
    );

    // The manifest reconstructs the exact inputs, hence the key.
    let back = read.check_key().unwrap();
    assert_eq!(back.key().unwrap(), inputs().key().unwrap());
    assert_eq!(read.key, inputs().key().unwrap().to_string());
    assert_eq!(read.base_key, inputs().base_key().unwrap().to_string());
    assert_eq!(read.closure[0].name, "a_dep", "closure is stored sorted");
    // Format 2: the manager and each member's own key are recorded.
    assert_eq!(read.format, 2);
    assert_eq!(read.manager, "mix");
    assert_eq!(read.closure[0].key, "a1".repeat(32));
    assert_eq!(read.closure[1].key, "b2".repeat(32));
    assert!(read.package.as_ref().unwrap().key.is_empty());

    // Trusting only the auditor still verifies, naming only the auditor.
    let (_, signers) = decoded.verify(&[auditor.public_key()]).unwrap();
    assert_eq!(signers, [auditor.public_key().key_id()]);
}

/// `Provenance` as builders wrote it before the build recipe (field 6) existed.
#[derive(Clone, PartialEq, Message)]
struct ProvenanceBeforeRecipe {
    #[prost(string, tag = "1")]
    toolchain_id: String,
    #[prost(string, tag = "2")]
    toolchain_digest: String,
    #[prost(string, tag = "3")]
    builder_id: String,
    #[prost(uint64, tag = "4")]
    build_duration_ms: u64,
    #[prost(bytes = "vec", tag = "5")]
    build_log_sha256: Vec<u8>,
}

#[test]
fn the_build_recipe_round_trips_and_older_manifests_have_none() {
    let builder = ArtifactSigningKey::generate();
    let trusted = [builder.public_key()];
    // With a recipe: signed, decoded, the same.
    let signed = SignedManifest::sign(&manifest(), &builder);
    let (read, _) = SignedManifest::decode(&signed.encode_to_vec())
        .unwrap()
        .verify(&trusted)
        .unwrap();
    let recipe = read.provenance.as_ref().unwrap().recipe.as_deref();
    assert_eq!(recipe, Some("precomp-build-recipe-3"));

    // Without one: absent after decoding too (not an empty string), and the bytes are those
    // of a builder from before the field: nothing is written for it.
    let mut without = manifest();
    without.provenance.as_mut().unwrap().recipe = None;
    let signed = SignedManifest::sign(&without, &builder);
    let (read, _) = SignedManifest::decode(&signed.encode_to_vec())
        .unwrap()
        .verify(&trusted)
        .unwrap();
    assert_eq!(read.provenance.as_ref().unwrap().recipe, None);
    assert_eq!(read, without);

    // An older builder's provenance bytes decode, as an unknown recipe.
    let old = ProvenanceBeforeRecipe {
        toolchain_id: "bookworm".into(),
        toolchain_digest: "sha256:abcd".into(),
        builder_id: "builder-1".into(),
        build_duration_ms: 4200,
        build_log_sha256: vec![5; 32],
    };
    let decoded = Provenance::decode(old.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, without.provenance.clone().unwrap());
    assert_eq!(old.encode_to_vec(), decoded.encode_to_vec());
    // And an older reader (a client or mirror from before) reads a new one, recipe aside.
    let new = manifest().provenance.unwrap();
    let read_by_old = ProvenanceBeforeRecipe::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!(read_by_old, old);

    // The recipe is signed: changing it breaks the builder's signature.
    let mut signed = SignedManifest::sign(&manifest(), &builder);
    let mut changed = Manifest::decode(signed.manifest.as_slice()).unwrap();
    changed.provenance.as_mut().unwrap().recipe = Some("precomp-build-recipe-4".into());
    signed.manifest = changed.encode_to_vec();
    assert!(matches!(
        signed.verify(&trusted),
        Err(ManifestError::BadSignature { .. })
    ));
}

#[test]
fn any_change_is_refused() {
    let builder = ArtifactSigningKey::generate();
    let trusted = [builder.public_key()];
    let signed = SignedManifest::sign(&manifest(), &builder);

    for i in [0, signed.manifest.len() / 2, signed.manifest.len() - 1] {
        let mut tampered = signed.clone();
        tampered.manifest[i] ^= 0x01;
        assert!(
            matches!(
                tampered.verify(&trusted),
                Err(ManifestError::BadSignature { .. })
            ),
            "flipped manifest byte {i}"
        );
    }
    let mut tampered = signed.clone();
    tampered.signatures[0].signature[10] ^= 0x01;
    assert!(matches!(
        tampered.verify(&trusted),
        Err(ManifestError::BadSignature { .. })
    ));
    let mut tampered = signed.clone();
    tampered.signatures[0].signature.truncate(10);
    assert!(matches!(
        tampered.verify(&trusted),
        Err(ManifestError::BadSignature { .. })
    ));

    // Untrusted signers, or none at all.
    let stranger = ArtifactSigningKey::generate();
    let err = signed.verify(&[stranger.public_key()]).unwrap_err();
    assert!(matches!(err, ManifestError::Untrusted { .. }));
    assert!(
        err.to_string().contains(&builder.public_key().key_id()),
        "{err}"
    );
    let mut unsigned = signed.clone();
    unsigned.signatures.clear();
    assert!(unsigned
        .verify(&trusted)
        .unwrap_err()
        .to_string()
        .contains("nobody"));

    // A validly signed manifest whose inputs do not give its key (a builder bug).
    let mut wrong = manifest();
    wrong.elixir = "1.18.3".into();
    let err = SignedManifest::sign(&wrong, &builder)
        .verify(&trusted)
        .unwrap_err();
    assert!(matches!(err, ManifestError::KeyMismatch { .. }), "{err}");

    let mut future = manifest();
    future.format = 3;
    let err = SignedManifest::sign(&future, &builder)
        .verify(&trusted)
        .unwrap_err();
    assert!(matches!(err, ManifestError::Format(3)), "{err}");

    // A member key that is not a key, or no manager: refused.
    let mut no_key = manifest();
    no_key.closure[0].key.clear();
    assert!(matches!(
        no_key.check_key(),
        Err(ManifestError::Field {
            field: "closure key",
            ..
        })
    ));
    let mut no_manager = manifest();
    no_manager.manager = "cmake".into();
    assert!(matches!(
        no_manager.check_key(),
        Err(ManifestError::Field {
            field: "manager",
            ..
        })
    ));

    assert!(matches!(
        SignedManifest::decode(b"\xff\xff\xff"),
        Err(ManifestError::DecodeEnvelope(_))
    ));
}

/// A manifest written by a precomp of key format v1 (format 1: no manager, closure members
/// without keys) still decodes and its releases read, but its key is never checked or used:
/// it is refused as of the old key format, which clients report as a miss.
#[test]
fn a_format_1_manifest_is_of_the_old_key_format() {
    let builder = ArtifactSigningKey::generate();
    let mut old = manifest();
    old.format = 1;
    old.manager.clear();
    for member in &mut old.closure {
        member.key.clear();
    }
    let signed = SignedManifest::sign(&old, &builder);
    let decoded = SignedManifest::decode(&signed.encode_to_vec()).unwrap();
    let err = decoded.verify(&[builder.public_key()]).unwrap_err();
    assert!(matches!(err, ManifestError::OldKeyFormat), "{err}");
    assert!(err.to_string().contains("key format v1"), "{err}");
    let read = Manifest::decode(decoded.manifest.as_slice()).unwrap();
    let (package, closure) = read.releases().unwrap();
    assert_eq!(package.name, "env_reader");
    assert_eq!(closure.len(), 2);
}

#[test]
fn keys_and_signatures_interoperate_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let key = ArtifactSigningKey::generate();
    let private = dir.path().join("builder.key");
    std::fs::write(&private, key.to_pem().unwrap()).unwrap();
    let reread = ArtifactSigningKey::from_pem(&std::fs::read_to_string(&private).unwrap()).unwrap();
    assert_eq!(reread.public_key(), key.public_key());

    // OpenSSL derives the same public key from our private key file.
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let openssl_public = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        ArtifactPublicKey::from_pem(&openssl_public).unwrap(),
        key.public_key()
    );
    assert_eq!(openssl_public, key.public_key().to_pem().unwrap());

    // OpenSSL verifies our signature over the context-prefixed manifest bytes.
    let signed = SignedManifest::sign(&manifest(), &key);
    let message = dir.path().join("message");
    std::fs::write(&message, [SIGNATURE_CONTEXT, &signed.manifest].concat()).unwrap();
    let signature = dir.path().join("signature");
    std::fs::write(&signature, &signed.signatures[0].signature).unwrap();
    let public = dir.path().join("builder.pub");
    std::fs::write(&public, key.public_key().to_pem().unwrap()).unwrap();
    let verify = |message: &std::path::Path| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&public)
            .arg("-in")
            .arg(message)
            .arg("-sigfile")
            .arg(&signature)
            .output()
            .unwrap()
    };
    let out = verify(&message);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And refuses it over other bytes.
    let other = dir.path().join("other");
    std::fs::write(&other, &signed.manifest).unwrap();
    assert!(!verify(&other).status.success());

    assert!(ArtifactSigningKey::from_pem("garbage").is_err());
    assert!(key.public_key().key_id().starts_with("ed25519:"));
    assert_eq!(key.public_key().key_id().len(), "ed25519:".len() + 16);
}
