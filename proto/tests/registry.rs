//! Registry resources: signing, verification, origin checks, and interop with the real
//! hex_core (embedded in Debian's rebar3) in both directions.

use precomp_testkit::{gunzip, gzip};
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use precomp_proto::registry::{
    self, decode_names, decode_package, decode_versions, encode_signed, Dependency, Names,
    NamesPackage, Package, RegistryError, Release, RepoPublicKey, RepoSigningKey, Resource,
    RetirementReason, RetirementStatus, Signed, Versions, VersionsPackage,
};
use precomp_testkit::{erl_eval, erl_string};
use prost::Message;
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

fn rsa_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap())
}

fn signing_key() -> RepoSigningKey {
    RepoSigningKey::from_pem(&rsa_key().to_pkcs8_pem(LineEnding::LF).unwrap()).unwrap()
}

fn other_signing_key() -> &'static RepoSigningKey {
    static KEY: OnceLock<RepoSigningKey> = OnceLock::new();
    KEY.get_or_init(|| RepoSigningKey::generate(2048).unwrap())
}

fn sample_package(repository: &str) -> Package {
    Package {
        name: "erl_counter".into(),
        repository: repository.into(),
        releases: vec![
            Release {
                version: "1.0.0".into(),
                inner_checksum: Sha256::digest(b"inner").to_vec(),
                outer_checksum: Some(Sha256::digest(b"outer").to_vec()),
                dependencies: vec![Dependency {
                    package: "plain_ex".into(),
                    requirement: "~> 1.0".into(),
                    optional: Some(true),
                    app: Some("plain".into()),
                    repository: None,
                }],
                retired: Some(RetirementStatus {
                    reason: RetirementReason::Security as i32,
                    message: Some("CVE-0000".into()),
                }),
                ..Default::default()
            },
            Release {
                version: "1.1.0-rc.1+build.5".into(),
                inner_checksum: Sha256::digest(b"inner2").to_vec(),
                outer_checksum: Some(Sha256::digest(b"outer2").to_vec()),
                ..Default::default()
            },
        ],
        advisories: vec![],
    }
}

#[test]
fn signed_resources_round_trip() {
    let key = signing_key();
    let public = key.public_key();

    let package = sample_package("acme");
    let body = encode_signed(&package, &key);
    assert_eq!(
        decode_package(&body, &public, "acme", "erl_counter").unwrap(),
        package
    );

    let names = Names {
        repository: "acme".into(),
        packages: vec![NamesPackage {
            name: "erl_counter".into(),
            updated_at: None,
        }],
    };
    let body = encode_signed(&names, &key);
    assert_eq!(decode_names(&body, &public, "acme").unwrap(), names);

    let versions = Versions {
        repository: "acme".into(),
        packages: vec![VersionsPackage {
            name: "erl_counter".into(),
            versions: vec!["1.0.0".into(), "1.1.0-rc.1+build.5".into()],
            retired: vec![0],
            with_advisories: vec![],
        }],
    };
    let body = encode_signed(&versions, &key);
    assert_eq!(decode_versions(&body, &public, "acme").unwrap(), versions);
}

#[test]
fn encoding_is_deterministic() {
    let key = signing_key();
    let a = encode_signed(&sample_package("hexpm"), &key);
    let b = encode_signed(&sample_package("hexpm"), &key);
    assert_eq!(a, b);
}

#[test]
fn each_check_fails_with_its_own_error() {
    let key = signing_key();
    let public = key.public_key();
    let good = encode_signed(&sample_package("hexpm"), &key);

    // Not gzip at all.
    let err = decode_package(b"not gzip", &public, "hexpm", "erl_counter").unwrap_err();
    assert!(matches!(err, RegistryError::Gunzip { .. }), "{err}");
    assert_eq!(err.resource(), &Resource::Package("erl_counter".into()));
    assert!(
        err.to_string()
            .starts_with("/packages/erl_counter: gunzip failed"),
        "{err}"
    );

    // A flipped byte anywhere in the file is refused, whichever check catches it.
    for i in [0, 10, good.len() / 2, good.len() - 5] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(
            decode_package(&bad, &public, "hexpm", "erl_counter").is_err(),
            "flip at {i}"
        );
    }

    // A payload changed after signing, re-gzipped so that only the signature can catch it.
    let mut signed = Signed::decode(gunzip(&good).as_slice()).unwrap();
    let last = signed.payload.len() - 1;
    signed.payload[last] ^= 0x01;
    let err = decode_package(
        &gzip(&signed.encode_to_vec()),
        &public,
        "hexpm",
        "erl_counter",
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("signature check failed"), "{err}");

    // Signed by another key.
    let err = decode_package(
        &good,
        &other_signing_key().public_key(),
        "hexpm",
        "erl_counter",
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::BadSignature { .. }), "{err}");

    // No signature at all.
    let unsigned = Signed {
        payload: sample_package("hexpm").encode_to_vec(),
        signature: None,
    };
    let err = decode_package(
        &gzip(&unsigned.encode_to_vec()),
        &public,
        "hexpm",
        "erl_counter",
    )
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::MissingSignature { .. }),
        "{err}"
    );

    // Gzipped garbage is not a Signed message.
    let err = decode_package(&gzip(&[0xff; 16]), &public, "hexpm", "erl_counter").unwrap_err();
    assert!(matches!(err, RegistryError::SignedDecode { .. }), "{err}");

    // A correctly signed payload that is not a Package.
    let payload = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let signed = Signed {
        signature: Some(key.sign(&payload)),
        payload,
    };
    let err = decode_package(
        &gzip(&signed.encode_to_vec()),
        &public,
        "hexpm",
        "erl_counter",
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::PayloadDecode { .. }), "{err}");

    // Origin: another repository's record, and another package's record.
    let err = decode_package(&good, &public, "acme", "erl_counter").unwrap_err();
    assert!(
        matches!(err, RegistryError::RepositoryMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("origin check failed"), "{err}");
    let err = decode_package(&good, &public, "hexpm", "other").unwrap_err();
    assert!(
        matches!(err, RegistryError::PackageNameMismatch { .. }),
        "{err}"
    );
    let names = encode_signed(
        &Names {
            repository: "acme".into(),
            packages: vec![],
        },
        &key,
    );
    let err = decode_names(&names, &public, "hexpm").unwrap_err();
    assert!(matches!(
        err,
        RegistryError::RepositoryMismatch {
            resource: Resource::Names,
            ..
        }
    ));
}

#[test]
fn gzip_bombs_are_bounded() {
    // A stream that inflates past the bound; written lazily so the test stays small.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..=(registry::MAX_DECOMPRESSED_SIZE >> 20) {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!((bomb.len() as u64) < registry::MAX_COMPRESSED_SIZE);
    let err = decode_names(&bomb, &signing_key().public_key(), "hexpm").unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
}

#[test]
fn keys_load_from_every_pem_form() {
    let key = rsa_key();
    let payload = b"payload";
    let from_pkcs8 = RepoSigningKey::from_pem(&key.to_pkcs8_pem(LineEnding::LF).unwrap()).unwrap();
    let from_pkcs1 = RepoSigningKey::from_pem(&key.to_pkcs1_pem(LineEnding::LF).unwrap()).unwrap();
    let signature = from_pkcs8.sign(payload);
    assert_eq!(signature, from_pkcs1.sign(payload));

    let public = key.to_public_key();
    let spki = RepoPublicKey::from_pem(&public.to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
    let pkcs1 = RepoPublicKey::from_pem(&public.to_pkcs1_pem(LineEnding::LF).unwrap()).unwrap();
    assert!(spki.verify(payload, &signature));
    assert!(pkcs1.verify(payload, &signature));
    assert!(!spki.verify(b"other payload", &signature));
    assert_eq!(spki, pkcs1);
    assert!(spki
        .to_spki_pem()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));

    let err = RepoPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
        .unwrap_err();
    assert!(err.to_string().contains("not an RSA public key"), "{err}");
    let err = RepoSigningKey::from_pem("garbage").unwrap_err();
    assert!(err.to_string().contains("not an RSA private key"), "{err}");
    let small = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
    let err = RepoSigningKey::from_pem(&small.to_pkcs8_pem(LineEnding::LF).unwrap()).unwrap_err();
    assert!(err.to_string().contains("1024 bits"), "{err}");
}

#[test]
fn fingerprint_matches_hex_core() {
    // hex_core's `fingerprint/1` is `ssh:hostkey_fingerprint(sha256, Key)`.
    let dir = tempfile::tempdir().unwrap();
    let public = signing_key().public_key();
    let pem_path = dir.path().join("public.pem");
    std::fs::write(&pem_path, public.to_spki_pem().unwrap()).unwrap();
    let out = erl_eval(&format!(
        "{{ok, Pem}} = file:read_file({}), [E] = public_key:pem_decode(Pem), \
         K = public_key:pem_entry_decode(E), io:format(\"~s\", [ssh:hostkey_fingerprint(sha256, K)])",
        erl_string(&pem_path.display().to_string())
    ));
    assert_eq!(out, public.fingerprint());
}

#[test]
fn builtin_hexpm_key_is_hex_cores() {
    let out =
        erl_eval("#{repo_public_key := K} = r3_hex_core:default_config(), io:format(\"~s\", [K])");
    assert_eq!(
        RepoPublicKey::from_pem(&out).unwrap(),
        RepoPublicKey::hexpm()
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    erl_string(&path.display().to_string())
}

#[test]
fn hex_core_reads_what_we_sign() {
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let body = encode_signed(&sample_package("acme"), &key);
    let file = write(dir.path(), "package", &body);
    let pem = write(
        dir.path(),
        "public.pem",
        key.public_key().to_spki_pem().unwrap().as_bytes(),
    );
    let out = erl_eval(&format!(
        "{{ok, Body}} = file:read_file({file}), {{ok, Pem}} = file:read_file({pem}), \
         {{ok, Payload}} = r3_hex_registry:decode_and_verify_signed(zlib:gunzip(Body), Pem), \
         {{ok, [R1, R2]}} = r3_hex_registry:decode_package(Payload, <<\"acme\">>, <<\"erl_counter\">>), \
         #{{version := V1, dependencies := [D], retired := #{{reason := Reason}}, outer_checksum := O}} = R1, \
         #{{version := V2}} = R2, \
         io:format(\"~s ~s ~s ~s ~s ~p\", [V1, V2, maps:get(package, D), maps:get(app, D), \
            binary:encode_hex(O), Reason])"
    ));
    let outer = hex::encode_upper(Sha256::digest(b"outer"));
    assert_eq!(
        out,
        format!("1.0.0 1.1.0-rc.1+build.5 plain_ex plain {outer} 'RETIRED_SECURITY'")
    );

    // And hex_core refuses it for the wrong origin, as a client would.
    let out = erl_eval(&format!(
        "{{ok, Body}} = file:read_file({file}), {{ok, Pem}} = file:read_file({pem}), \
         {{ok, Payload}} = r3_hex_registry:decode_and_verify_signed(zlib:gunzip(Body), Pem), \
         io:format(\"~p\", [r3_hex_registry:decode_package(Payload, <<\"hexpm\">>, <<\"erl_counter\">>)])"
    ));
    assert_eq!(out, "{error,unverified}");
}

#[test]
fn we_read_what_hex_core_signs() {
    let dir = tempfile::tempdir().unwrap();
    let private = write(
        dir.path(),
        "private.pem",
        rsa_key().to_pkcs1_pem(LineEnding::LF).unwrap().as_bytes(),
    );
    let out_file = dir.path().join("package");
    let out = erl_string(&out_file.display().to_string());
    erl_eval(&format!(
        "{{ok, Pem}} = file:read_file({private}), \
         Package = #{{name => <<\"cowlike\">>, repository => <<\"hexpm\">>, releases => [\
            #{{version => <<\"2.0.0\">>, inner_checksum => <<1:256>>, outer_checksum => <<2:256>>, \
              dependencies => [#{{package => <<\"dep\">>, requirement => <<\">= 1.0.0\">>}}]}}]}}, \
         Payload = r3_hex_registry:encode_package(Package), \
         ok = file:write_file({out}, zlib:gzip(r3_hex_registry:sign_protobuf(Payload, Pem)))"
    ));
    let body = std::fs::read(&out_file).unwrap();
    let public = signing_key().public_key();
    let package = decode_package(&body, &public, "hexpm", "cowlike").unwrap();
    assert_eq!(package.releases.len(), 1);
    let release = &package.releases[0];
    assert_eq!(release.version, "2.0.0");
    assert_eq!(release.inner_checksum[31], 1);
    assert_eq!(release.outer_checksum.as_ref().unwrap()[31], 2);
    assert_eq!(release.dependencies[0].package, "dep");
    assert_eq!(release.dependencies[0].requirement, ">= 1.0.0");
    // Origin checks apply to hex_core's bytes too.
    assert!(decode_package(&body, &public, "hexpm", "cowboy").is_err());
    assert!(decode_package(&body, &other_signing_key().public_key(), "hexpm", "cowlike").is_err());
}

/// The one package-name rule: hex.pm's characters, a letter first, at most 128 bytes.
#[test]
fn package_names_follow_hexpms_rule_and_are_bounded() {
    use precomp_proto::registry::{is_package_name, MAX_PACKAGE_NAME};
    for good in ["a", "plug_cowboy", "a_b2", &"a".repeat(MAX_PACKAGE_NAME)] {
        assert!(is_package_name(good), "{good:?}");
    }
    let too_long = "a".repeat(MAX_PACKAGE_NAME + 1);
    for bad in [
        "", "Ab", "2fa", "_a", "a-b", "a/b", "a%2Fb", "a.b", "é", "a b", &too_long,
    ] {
        assert!(!is_package_name(bad), "{bad:?}");
    }
}
