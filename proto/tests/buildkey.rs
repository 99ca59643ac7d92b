//! The build key: the canonical text and encodings of docs/protocol.md, byte for byte, and
//! that every input changes the key while input order does not.
//!
//! The expected digests below were computed independently from the documented bytes with
//! `printf '…' | sha256sum` (the commands are in docs/protocol.md), not by this code.

use std::collections::BTreeMap;

use precomp_proto::buildkey::{
    compile_env_covers, compile_env_digest, encode_term, request_satisfied_by, BuildInputs,
    BuildKey, BuildKeyError, ClosureMember, CompileEnvEntry, KeyParts, KeyToolchain, Manager,
    PackageRef, Target,
};
use precomp_proto::lock::MixLock;
use precomp_proto::manager::{lock_roots, mix_managers, Converger};
use precomp_proto::term::Term;

fn package(name: &str, version: &str, fill: u8) -> PackageRef {
    PackageRef {
        name: name.into(),
        version: version.into(),
        outer_checksum: [fill; 32],
    }
}

fn key(hex: &str) -> BuildKey {
    BuildKey::parse(hex).unwrap()
}

fn member(name: &str, version: &str, fill: u8, key_hex: &str) -> ClosureMember {
    ClosureMember {
        package: package(name, version, fill),
        key: Some(key(key_hex)),
    }
}

/// docs/protocol.md's leaf: cfg_macro 1.0.0 (checksum 22…22), no dependencies.
fn leaf() -> BuildInputs {
    BuildInputs {
        package: package("cfg_macro", "1.0.0", 0x22),
        manager: Manager::Mix,
        closure: vec![],
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![],
    }
}

const LEAF_KEY: &str = "4840c6d1b499c197974b55c265f7b1b7213edcfc3934a1557746c3b13f3d63dd";

/// docs/protocol.md's dependent: cfg_macro_user 1.0.0 (11…11) on the leaf.
fn sample() -> BuildInputs {
    BuildInputs {
        package: package("cfg_macro_user", "1.0.0", 0x11),
        closure: vec![member("cfg_macro", "1.0.0", 0x22, LEAF_KEY)],
        ..leaf()
    }
}

fn label_blue() -> Vec<CompileEnvEntry> {
    vec![CompileEnvEntry {
        app: "cfg_macro".into(),
        path: vec![Term::atom("label")],
        value: Some(Term::binary("blue")),
    }]
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
    let c1 = "1".repeat(64);
    let c2 = "2".repeat(64);
    assert_eq!(
        hex::encode(compile_env_digest(&[])),
        "822cc35c3b7ea7e2477f00e2f8a52c5a4e59781e0fff80229e2e0576f8b4c58d"
    );
    // The leaf.
    let leaf = leaf();
    assert_eq!(
        leaf.base_text().unwrap(),
        format!(
            "precomp-build-key-v2\npackage cfg_macro 1.0.0 {c2}\nmanager mix\n\
             otp 25\nelixir 1.14.0\nenv prod\ntarget any\n"
        )
    );
    assert_eq!(
        leaf.base_key().unwrap().to_string(),
        "d2daf5b2f5de248229edd1763ad389c741c0b9780b9c99215160c5a64c3acf35"
    );
    assert_eq!(leaf.key().unwrap().to_string(), LEAF_KEY);

    // The dependent: its dep line carries the leaf's key.
    let dependent = sample();
    assert_eq!(
        dependent.base_text().unwrap(),
        format!(
            "precomp-build-key-v2\npackage cfg_macro_user 1.0.0 {c1}\nmanager mix\n\
             dep cfg_macro 1.0.0 {c2} {LEAF_KEY}\n\
             otp 25\nelixir 1.14.0\nenv prod\ntarget any\n"
        )
    );
    assert_eq!(
        dependent.base_key().unwrap().to_string(),
        "d0aeb167516065b6450ce7e356b3fd4ebed36ae5b13051b7d2aadef93053561d"
    );
    assert_eq!(
        dependent.key().unwrap().to_string(),
        "0d210469318637983021e21b18cda5e99e6c7c9227c57bd666a52555932c7c65"
    );

    // The leaf built with cfg_macro's label set to "blue": another leaf key, so another base
    // key for the dependent (its own inputs unchanged).
    assert_eq!(
        hex::encode(compile_env_digest(&label_blue())),
        "9b430cd4d306a298d9e5b652f16948652226f48d57499a0edd5924d8941eb758"
    );
    let blue_leaf = BuildInputs {
        compile_env: label_blue(),
        ..leaf
    };
    let blue_key = blue_leaf.key().unwrap();
    assert_eq!(
        blue_key.to_string(),
        "64e6ea59270b5376c1efc0a8910c7a03c4260dae26338b2ba70b599d602737ad"
    );
    let mut blue_dependent = sample();
    blue_dependent.closure[0].key = Some(blue_key);
    assert_eq!(
        blue_dependent.base_key().unwrap().to_string(),
        "f3a55c56cf8f33dd9aead110bc96ef1d9287c31a60e635bdfadef63872630bef"
    );

    // A miss whose dependency nobody has built yet: the request text.
    let mut unknown = sample();
    unknown.closure[0].key = None;
    assert!(matches!(
        unknown.base_key(),
        Err(BuildKeyError::UnknownMemberKey { .. })
    ));
    assert_eq!(
        unknown.request_text().unwrap(),
        format!(
            "precomp-miss-request-v1\npackage cfg_macro_user 1.0.0 {c1}\nmanager mix\n\
             dep cfg_macro 1.0.0 {c2} unknown\n\
             otp 25\nelixir 1.14.0\nenv prod\ntarget any\n"
        )
    );
    assert_eq!(
        unknown.request_key().unwrap().to_string(),
        "5ca61b692bb6ecc31886233edbccd749a5bc9e0da235393abc1a89c0096a4fa2"
    );

    // Variant keys (misses carrying the package's own compile env): with every member key
    // known, the build key itself; else the request text with the compile_env line.
    assert_eq!(
        blue_leaf.variant_key().unwrap().to_string(),
        "64e6ea59270b5376c1efc0a8910c7a03c4260dae26338b2ba70b599d602737ad"
    );
    let unknown_variant = BuildInputs {
        compile_env: label_blue(),
        ..unknown
    };
    assert_eq!(
        unknown_variant.variant_key().unwrap().to_string(),
        "72abe6c1e740ed7dfb5013b7333e6c185a8481a3e17bb014512062c2f7624803"
    );

    assert_eq!(
        hex::encode(compile_env_digest(&greeting_env())),
        "b39aa0baaaddf2d7e984c860d245460507bbe8c9c192d75d16dfde85eb39923f"
    );
}

const CFG_LOCK: &str = r#"%{
  "cfg_macro": {:hex, :cfg_macro, "1.0.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:mix], [], "hexpm", "2222222222222222222222222222222222222222222222222222222222222222"},
  "cfg_macro_user": {:hex, :cfg_macro_user, "1.0.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", [:mix], [{:cfg_macro, "~> 1.0", [hex: :cfg_macro, repo: "hexpm", optional: false]}], "hexpm", "1111111111111111111111111111111111111111111111111111111111111111"},
}
"#;

/// The mirror recomputes a miss's keys from what it carries: bottom-up over the lock, each
/// member with its own target and compile env, giving the documented vectors.
#[test]
fn keys_are_computed_bottom_up_over_the_lock() {
    let lock = MixLock::parse(CFG_LOCK).unwrap();
    let toolchain = KeyToolchain {
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
    };
    let mix = |target: Option<Target>, compile_env| KeyParts {
        manager: Manager::Mix,
        target,
        compile_env,
    };
    let mut parts = BTreeMap::from([
        ("cfg_macro".to_string(), mix(Some(Target::Any), vec![])),
        ("cfg_macro_user".to_string(), mix(None, vec![])),
    ]);
    let inputs = lock
        .inputs_bottom_up("cfg_macro_user", Target::Any, &parts, &toolchain)
        .unwrap();
    assert_eq!(inputs, sample());
    parts.get_mut("cfg_macro").unwrap().compile_env = label_blue();
    let inputs = lock
        .inputs_bottom_up("cfg_macro_user", Target::Any, &parts, &toolchain)
        .unwrap();
    assert_eq!(
        inputs.base_key().unwrap().to_string(),
        "f3a55c56cf8f33dd9aead110bc96ef1d9287c31a60e635bdfadef63872630bef"
    );
    // A member nobody built: its key is unknown, the request key is what identifies it.
    parts.get_mut("cfg_macro").unwrap().target = None;
    let inputs = lock
        .inputs_bottom_up("cfg_macro_user", Target::Any, &parts, &toolchain)
        .unwrap();
    assert_eq!(inputs.closure[0].key, None);
    assert_eq!(
        inputs.request_key().unwrap().to_string(),
        "5ca61b692bb6ecc31886233edbccd749a5bc9e0da235393abc1a89c0096a4fa2"
    );
    // Every member needs its parts.
    parts.remove("cfg_macro");
    assert!(matches!(
        lock.inputs_bottom_up("cfg_macro_user", Target::Any, &parts, &toolchain),
        Err(BuildKeyError::MissingMemberInput { .. })
    ));
}

/// A config variant's miss is satisfied by a build only when every compile-env path the build
/// read is carried with the same value: fewer paths are fine, another value or a path the
/// miss does not know of are not.
#[test]
fn a_variant_is_covered_by_the_builds_that_read_what_it_carries() {
    let entry = |path: &str, value: Option<Term>| CompileEnvEntry {
        app: "env_reader".into(),
        path: vec![Term::atom(path)],
        value,
    };
    let carried = vec![
        entry("greeting", Some(Term::binary("howdy"))),
        entry("format", None),
    ];
    assert!(compile_env_covers(&carried, &[]));
    assert!(compile_env_covers(&carried, &carried));
    assert!(compile_env_covers(
        &carried,
        &[entry("greeting", Some(Term::binary("howdy")))]
    ));
    assert!(!compile_env_covers(
        &carried,
        &[entry("greeting", Some(Term::binary("hello")))]
    ));
    assert!(!compile_env_covers(
        &carried,
        &[entry("format", Some(Term::binary("?")))]
    ));
    assert!(!compile_env_covers(&carried, &[entry("other", None)]));
    // Equal terms, however spelled: a charlist is the list of its code points.
    let charlist = vec![entry("greeting", Some(Term::Charlist("ab".into())))];
    let codes = vec![entry(
        "greeting",
        Some(Term::List(vec![Term::Integer(97), Term::Integer(98)])),
    )];
    assert!(compile_env_covers(&charlist, &codes));
}

/// A miss is satisfied by the builds that agree with everything it knows: the same lines,
/// an unknown member key matching any key, a request for `any` matching a native build.
#[test]
fn a_request_is_satisfied_by_the_builds_that_agree_with_what_it_knows() {
    let mut unknown = sample();
    unknown.closure[0].key = None;
    let request = unknown.request_text().unwrap();
    let built = sample();
    assert!(request_satisfied_by(&request, &built.base_text().unwrap()));
    let mut blue = sample();
    blue.closure[0].key = Some(BuildKey([0x44; 32]));
    assert!(request_satisfied_by(&request, &blue.base_text().unwrap()));
    let native = BuildInputs {
        target: Target::Native {
            arch: "x86_64".into(),
            libc: "linux-gnu".into(),
        },
        ..sample()
    };
    assert!(request_satisfied_by(&request, &native.base_text().unwrap()));
    // A request with every key known is satisfied by exactly its base text (or native).
    let known = sample().request_text().unwrap();
    assert!(request_satisfied_by(&known, &built.base_text().unwrap()));
    assert!(!request_satisfied_by(&known, &blue.base_text().unwrap()));
    // Anything else differs.
    for other in [
        BuildInputs {
            manager: Manager::Rebar3,
            ..sample()
        },
        BuildInputs {
            elixir: "1.18.3".into(),
            ..sample()
        },
        BuildInputs {
            closure: vec![member("cfg_macro", "1.0.1", 0x22, LEAF_KEY)],
            ..sample()
        },
        BuildInputs {
            closure: vec![],
            ..sample()
        },
    ] {
        assert!(!request_satisfied_by(&request, &other.base_text().unwrap()));
    }
    // A native request is not satisfied by an `any` build, nor a text by a request.
    let native_request = BuildInputs {
        closure: unknown.closure.clone(),
        ..native.clone()
    }
    .request_text()
    .unwrap();
    assert!(!request_satisfied_by(
        &native_request,
        &built.base_text().unwrap()
    ));
    assert!(!request_satisfied_by(
        &built.base_text().unwrap(),
        &built.base_text().unwrap()
    ));
}

/// Mix's choice of manager for a declared package (`precomp_proto::manager::mix_managers`, the
/// one rule builders and clients use): mix, else rebar3, from the lock; else from the
/// package's files.
#[test]
fn the_manager_is_mixs_choice() {
    let decide = |lock: &MixLock, app: &str, files: &[&str]| {
        let infer = |_: &str| {
            Ok::<_, std::convert::Infallible>(Manager::infer_from_files(files.iter().copied()))
        };
        let managers = mix_managers(lock, &lock_roots(lock), Converger::Elixir1_15, infer).unwrap();
        managers[app]
    };
    let lock = MixLock::parse(LOCK).unwrap();
    assert_eq!(decide(&lock, "shapes", &[]), Some(Manager::Mix));
    assert_eq!(decide(&lock, "geometry", &[]), Some(Manager::Rebar3));
    let entry = |managers: &str| {
        let text = format!(
            "%{{\"x\": {{:hex, :x, \"1.0.0\", \"{}\", [{managers}], [], \"hexpm\", \"{}\"}}}}",
            "a".repeat(64),
            "1".repeat(64)
        );
        MixLock::parse(&text).unwrap()
    };
    // erlang.mk packages list make and rebar3: Mix takes rebar3, never make from the lock.
    assert_eq!(
        decide(&entry(":make, :rebar3"), "x", &[]),
        Some(Manager::Rebar3)
    );
    assert_eq!(
        decide(&entry(":rebar3, :mix"), "x", &[]),
        Some(Manager::Mix)
    );
    // Otherwise Mix infers it from the files.
    assert_eq!(
        decide(&entry(":make"), "x", &["Makefile"]),
        Some(Manager::Make)
    );
    assert_eq!(
        decide(&entry(""), "x", &["rebar.config"]),
        Some(Manager::Rebar3)
    );
    assert_eq!(
        decide(&entry(""), "x", &["mix.exs", "Makefile"]),
        Some(Manager::Mix)
    );
    assert_eq!(decide(&entry(":make"), "x", &[]), None);
}

#[test]
fn order_never_matters() {
    let mut a = sample();
    a.closure = vec![
        member("b", "1.0.0", 1, LEAF_KEY),
        member("a", "1.0.0", 2, LEAF_KEY),
        member("c", "1.0.0", 3, LEAF_KEY),
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
    v.closure[0].package.version = "1.0.1".into();
    variants.push(("a macro dependency's version", v));
    let mut v = base.clone();
    v.closure[0].package.outer_checksum[0] ^= 1;
    variants.push(("a dependency's checksum", v));
    let mut v = base.clone();
    v.closure[0].key = Some(BuildKey([0x44; 32]));
    variants.push(("what a dependency was built with (its key)", v));
    let mut v = base.clone();
    v.closure.push(member("plain_ex", "1.0.0", 0x33, LEAF_KEY));
    variants.push(("an optional dependency present", v));
    let mut v = base.clone();
    v.manager = Manager::Rebar3;
    variants.push(("manager", v));
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
            Box::new(|i| i.closure[0].package.version = "2.0.0\notp 99".into()),
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
    inputs
        .closure
        .push(member("cfg_macro", "0.9.0", 9, LEAF_KEY));
    assert!(matches!(
        inputs.key(),
        Err(BuildKeyError::DuplicateInClosure { .. })
    ));
    let mut inputs = sample();
    inputs
        .closure
        .push(member("cfg_macro_user", "1.0.0", 9, LEAF_KEY));
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
