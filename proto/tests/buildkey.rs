//! The build key: the canonical text and encodings of docs/protocol.md, byte for byte, and
//! that every input changes the key while input order does not.
//!
//! The expected digests below were computed independently from the documented bytes with
//! `printf '…' | sha256sum` (the commands are in docs/protocol.md), not by this code.

use precomp_proto::buildkey::{
    compile_env_digest, encode_term, BuildInputs, BuildKeyError, CompileEnvEntry, PackageRef,
    Target,
};
use precomp_proto::lock::MixLock;
use precomp_proto::term::Term;

fn package(name: &str, version: &str, fill: u8) -> PackageRef {
    PackageRef {
        name: name.into(),
        version: version.into(),
        outer_checksum: [fill; 32],
    }
}

fn sample() -> BuildInputs {
    BuildInputs {
        package: package("shape_user", "1.0.0", 0x11),
        closure: vec![package("shapes", "2.0.0", 0x22)],
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![],
    }
}

fn greeting_env() -> Vec<CompileEnvEntry> {
    vec![
        CompileEnvEntry {
            app: "env_reader".into(),
            path: vec![Term::atom("format"), Term::atom("punctuation")],
            value: None,
        },
        CompileEnvEntry {
            app: "env_reader".into(),
            path: vec![Term::atom("greeting")],
            value: Some(Term::binary("hello")),
        },
    ]
}

#[test]
fn canonical_text_and_key_vectors() {
    let inputs = sample();
    assert_eq!(
        inputs.base_text().unwrap(),
        "precomp-build-key-v1\n\
         package shape_user 1.0.0 1111111111111111111111111111111111111111111111111111111111111111\n\
         dep shapes 2.0.0 2222222222222222222222222222222222222222222222222222222222222222\n\
         otp 25\n\
         elixir 1.14.0\n\
         env prod\n\
         target any\n"
    );
    assert_eq!(
        inputs.base_key().unwrap().to_string(),
        "de365659f741db5dc7538b234f688183704aba5bc1cf874159c4ed5dfd0bfe72"
    );
    assert_eq!(
        hex::encode(compile_env_digest(&[])),
        "822cc35c3b7ea7e2477f00e2f8a52c5a4e59781e0fff80229e2e0576f8b4c58d"
    );
    assert_eq!(
        inputs.key().unwrap().to_string(),
        "accc862e852c4afe0c3381732e6c9dc9198602309453f2748e9d96cef7e1bcdd"
    );
    assert_eq!(
        hex::encode(compile_env_digest(&greeting_env())),
        "b39aa0baaaddf2d7e984c860d245460507bbe8c9c192d75d16dfde85eb39923f"
    );
}

#[test]
fn order_never_matters() {
    let mut a = sample();
    a.closure = vec![
        package("b", "1.0.0", 1),
        package("a", "1.0.0", 2),
        package("c", "1.0.0", 3),
    ];
    a.compile_env = greeting_env();
    let mut b = a.clone();
    b.closure.reverse();
    b.compile_env.reverse();
    assert_eq!(a.key().unwrap(), b.key().unwrap());

    // Map entries in any order, and a duplicated compile-env entry, encode the same.
    let map = |pairs: Vec<(Term, Term)>| Term::Map(pairs);
    let mut x = Vec::new();
    let mut y = Vec::new();
    encode_term(
        &map(vec![
            (Term::atom("a"), Term::Integer(1)),
            (Term::atom("b"), Term::Integer(2)),
        ]),
        &mut x,
    );
    encode_term(
        &map(vec![
            (Term::atom("b"), Term::Integer(2)),
            (Term::atom("a"), Term::Integer(1)),
        ]),
        &mut y,
    );
    assert_eq!(x, y);
    let mut doubled = greeting_env();
    doubled.extend(greeting_env());
    assert_eq!(
        compile_env_digest(&doubled),
        compile_env_digest(&greeting_env())
    );
}

#[test]
fn equal_erlang_terms_encode_equally_and_different_ones_do_not() {
    let enc = |t: &Term| {
        let mut out = Vec::new();
        encode_term(t, &mut out);
        out
    };
    // "ab" and [97, 98] are the same Erlang term.
    assert_eq!(
        enc(&Term::Charlist("ab".into())),
        enc(&Term::List(vec![Term::Integer(97), Term::Integer(98)]))
    );
    assert_eq!(
        enc(&Term::Charlist("ab".into())),
        b"l\0\0\0\x02i\0\0\0\x0297i\0\0\0\x0298"
    );
    // A binary is not a charlist, an atom is not a binary, 1 is not 1.0.
    assert_ne!(enc(&Term::binary("ab")), enc(&Term::Charlist("ab".into())));
    assert_ne!(enc(&Term::atom("ok")), enc(&Term::binary("ok")));
    assert_ne!(enc(&Term::Integer(1)), enc(&Term::Float(1.0)));
    assert_eq!(enc(&Term::Integer(-12)), b"i\0\0\0\x03-12");
    assert_eq!(enc(&Term::Float(1.5)), [b'f', 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    // [a | b] is not [a, b].
    assert_ne!(
        enc(&Term::ImproperList(
            vec![Term::atom("a")],
            Box::new(Term::atom("b"))
        )),
        enc(&Term::List(vec![Term::atom("a"), Term::atom("b")]))
    );
}

#[test]
fn every_input_changes_the_key() {
    let base = sample();
    let key = base.key().unwrap();
    let mut variants: Vec<(&str, BuildInputs)> = Vec::new();
    let mut v = base.clone();
    v.package.version = "1.0.1".into();
    variants.push(("package version", v));
    let mut v = base.clone();
    v.package.outer_checksum[31] ^= 1;
    variants.push(("package checksum", v));
    let mut v = base.clone();
    v.closure[0].version = "1.0.0".into();
    variants.push(("a macro dependency's version", v));
    let mut v = base.clone();
    v.closure[0].outer_checksum[0] ^= 1;
    variants.push(("a dependency's checksum", v));
    let mut v = base.clone();
    v.closure.push(package("plain_ex", "1.0.0", 0x33));
    variants.push(("an optional dependency present", v));
    let mut v = base.clone();
    v.otp_major = "27".into();
    variants.push(("OTP", v));
    let mut v = base.clone();
    v.elixir = "1.18.3".into();
    variants.push(("Elixir", v));
    let mut v = base.clone();
    v.mix_env = "test".into();
    variants.push(("Mix env", v));
    let mut v = base.clone();
    v.target = Target::Native {
        arch: "x86_64".into(),
        libc: "linux-gnu".into(),
    };
    variants.push(("target", v));
    let mut v = base.clone();
    v.compile_env = greeting_env();
    variants.push(("compile env", v));
    let mut w = base.clone();
    w.compile_env = greeting_env();
    w.compile_env[1].value = Some(Term::binary("howdy"));
    variants.push(("a compile-env value", w));

    let mut keys = vec![key];
    for (what, inputs) in variants {
        let k = inputs.key().unwrap();
        assert!(
            !keys.contains(&k),
            "changing the {what} did not give a new key"
        );
        keys.push(k);
    }
    // The base key ignores the compile env, and only it.
    let mut v = base.clone();
    v.compile_env = greeting_env();
    assert_eq!(v.base_key().unwrap(), base.base_key().unwrap());
}

#[test]
fn ambiguous_inputs_are_refused() {
    type Change = Box<dyn Fn(&mut BuildInputs)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|i| i.package.name = "shape user".into()),
            "package name",
        ),
        (
            Box::new(|i| i.package.name = "Shape".into()),
            "package name",
        ),
        (
            Box::new(|i| i.package.version = "1.0".into()),
            "package version",
        ),
        (
            Box::new(|i| i.closure[0].version = "2.0.0\notp 99".into()),
            "dependency version",
        ),
        (
            Box::new(|i| i.otp_major = "25.3".into()),
            "OTP major release",
        ),
        (Box::new(|i| i.elixir = "".into()), "Elixir version"),
        (Box::new(|i| i.mix_env = "Prod".into()), "Mix env"),
        (
            Box::new(|i| {
                i.target = Target::Native {
                    arch: "x86 64".into(),
                    libc: "gnu".into(),
                }
            }),
            "target architecture",
        ),
    ];
    for (change, field) in cases {
        let mut inputs = sample();
        change(&mut inputs);
        match inputs.key() {
            Err(BuildKeyError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected {field} to be refused, got {other:?}"),
        }
    }
    let mut inputs = sample();
    inputs.closure.push(package("shapes", "1.0.0", 9));
    assert!(matches!(
        inputs.key(),
        Err(BuildKeyError::DuplicateInClosure { .. })
    ));
    let mut inputs = sample();
    inputs.closure.push(package("shape_user", "1.0.0", 9));
    assert!(matches!(
        inputs.key(),
        Err(BuildKeyError::SelfInClosure { .. })
    ));
}

const LOCK: &str = r#"%{
  "shape_user": {:hex, :shape_user, "1.0.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:mix], [{:shapes, ">= 1.0.0", [hex: :shapes, repo: "hexpm", optional: false]}], "hexpm", "1111111111111111111111111111111111111111111111111111111111111111"},
  "shapes": {:hex, :shapes, "2.0.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", [:mix], [{:geometry, "~> 1.0", [hex: :geometry_pkg, repo: "hexpm", optional: false]}], "hexpm", "2222222222222222222222222222222222222222222222222222222222222222"},
  "geometry": {:hex, :geometry_pkg, "1.2.0", "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", [:rebar3], [], "hexpm", "3333333333333333333333333333333333333333333333333333333333333333"},
  "opt_user": {:hex, :opt_user, "1.0.0", "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", [:mix], [{:plain_ex, ">= 1.0.0", [hex: :plain_ex, repo: "hexpm", optional: true]}], "hexpm", "4444444444444444444444444444444444444444444444444444444444444444"},
  "plain_ex": {:hex, :plain_ex, "1.0.0", "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", [:mix], [], "hexpm", "5555555555555555555555555555555555555555555555555555555555555555"},
  "old": {:hex, :old, "0.1.0", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", [:mix], [], "hexpm"},
  "uses_git": {:hex, :uses_git, "1.0.0", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", [:mix], [{:gitdep, "~> 1.0", [hex: :gitdep, repo: "hexpm", optional: false]}], "hexpm", "6666666666666666666666666666666666666666666666666666666666666666"},
  "gitdep": {:git, "https://example.invalid/gitdep.git", "0123456789abcdef0123456789abcdef01234567", []},
  "broken": {:hex, :broken, "1.0.0", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", [:mix], [{:absent, "~> 1.0", [hex: :absent, repo: "hexpm", optional: false]}], "hexpm", "7777777777777777777777777777777777777777777777777777777777777777"},
}
"#;

#[test]
fn closures_come_from_the_lock() {
    let lock = MixLock::parse(LOCK).unwrap();
    let (root, closure) = lock.closure("shape_user").unwrap();
    assert_eq!(
        (root.name.as_str(), root.version.as_str()),
        ("shape_user", "1.0.0")
    );
    let names: Vec<(&str, &str)> = closure
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    // Transitive, by Hex package name (geometry's package is geometry_pkg).
    assert_eq!(names, [("geometry_pkg", "1.2.0"), ("shapes", "2.0.0")]);
    assert_eq!(closure[0].outer_checksum, [0x33; 32]);

    // An optional dependency counts when the lock has it...
    let (_, closure) = lock.closure("opt_user").unwrap();
    assert_eq!(closure.len(), 1);
    // ...and is skipped when it does not.
    let without: String = LOCK
        .lines()
        .filter(|line| !line.trim_start().starts_with("\"plain_ex\":"))
        .map(|line| format!("{line}\n"))
        .collect();
    let (_, closure) = MixLock::parse(&without)
        .unwrap()
        .closure("opt_user")
        .unwrap();
    assert!(closure.is_empty());

    assert!(matches!(
        lock.closure("old"),
        Err(BuildKeyError::NoOuterChecksum { .. })
    ));
    assert!(matches!(
        lock.closure("uses_git"),
        Err(BuildKeyError::NotFromHex { .. })
    ));
    assert!(matches!(
        lock.closure("gitdep"),
        Err(BuildKeyError::NotFromHex { .. })
    ));
    assert!(matches!(
        lock.closure("nope"),
        Err(BuildKeyError::NotInLock { .. })
    ));
    let err = lock.closure("broken").unwrap_err();
    assert!(
        err.to_string().contains("broken depends on absent"),
        "{err}"
    );
}

/// Builders name a native target from the toolchain's Debian architecture, clients from
/// Erlang's system architecture; on the same machine both must give the same target.
#[test]
fn builder_and_client_name_the_same_native_target() {
    use precomp_proto::buildkey::Target;
    for (debian, erlang, expected) in [
        ("amd64", "x86_64-pc-linux-gnu", "x86_64-linux-gnu"),
        ("arm64", "aarch64-unknown-linux-gnu", "aarch64-linux-gnu"),
        (
            "armhf",
            "arm-unknown-linux-gnueabihf",
            "arm-linux-gnueabihf",
        ),
        ("i386", "i686-pc-linux-gnu", "i686-linux-gnu"),
    ] {
        let from_debian = Target::from_debian_architecture(debian).unwrap();
        let from_erlang = Target::from_system_architecture(erlang).unwrap();
        assert_eq!(from_debian, from_erlang, "{debian} / {erlang}");
        assert_eq!(from_debian.to_string(), expected);
    }
    assert_eq!(Target::from_debian_architecture("pdp11"), None);
    assert_eq!(
        Target::from_system_architecture("aarch64-apple-darwin23.1.0")
            .unwrap()
            .to_string(),
        "aarch64-darwin"
    );
}
