//! `mix.lock`: every Hex entry generation, git and other SCMs, validation, and Mix itself as
//! the oracle.

use precomp_proto::lock::{
    GitLockEntry, HexLockEntry, LockDep, LockEntry, LockError, MixLock, MAX_LOCK_SIZE,
};
use precomp_proto::term::Term;
use std::process::Command;

/// Made-up but well-formed checksums.
fn sum(c: char) -> String {
    c.to_string().repeat(64)
}

fn dep(app: &str, requirement: Option<&str>, package: &str, repo: &str, optional: bool) -> LockDep {
    LockDep {
        app: app.into(),
        requirement: requirement.map(str::to_string),
        package: package.into(),
        repo: repo.into(),
        optional,
    }
}

fn realistic_lock() -> String {
    format!(
        r#"%{{
  "acme_auth": {{:hex, :acme_auth, "0.4.2", "{a}", [:mix], [{{:jason, "~> 1.2", [hex: :jason, repo: "hexpm", optional: true]}}], "hexpm:acme", "{b}"}},
  "cowboy": {{:hex, :cowboy, "2.10.0", "{c_upper}", [:make, :rebar3], [{{:cowlib, "2.12.1", [hex: :cowlib, repo: "hexpm", optional: false]}}, {{:ranch, "1.8.0", [hex: :ranch, repo: "hexpm", optional: false]}}], "hexpm", "{d}"}},
  "cowlib": {{:hex, :cowlib, "2.12.1", "{e}", [:make, :rebar3], [], "hexpm", "{f}"}},
  "decimal": {{:hex, :decimal, "1.9.0", "{a}", [:mix], []}},
  "future": {{:hex, :future, "3.0.0", "{b}", [:mix], [], "hexpm", "{c}", %{{newer: "field"}}, :another}},
  "jason": {{:hex, :jason, "1.4.1", "{d}", [:mix], [{{:decimal, "~> 1.0 or ~> 2.0", [hex: :decimal, repo: "hexpm", optional: true]}}], "hexpm", "{e}"}},
  "local_dep": {{:path, "../local_dep", []}},
  "my_fork": {{:git, "https://github.com/acme/my_fork.git", "0123456789abcdef0123456789abcdef01234567", [branch: "main"]}},
  "poison": {{:hex, :poison, "3.1.0", "{f}", [:mix], [], "hexpm"}},
  "ranch": {{:hex, :ranch, "1.8.0", "{a}", [:make, :rebar3], [], "hexpm", "{b}"}},
  "renamed_app": {{:hex, :actual_package, "1.0.0", "{c}", [:rebar3], [{{:telemetry, nil, [hex: :telemetry]}}, {{:dep_app, ">= 0.0.0", [hex: :dep_package, repo: "hexpm:acme", optional: false]}}], "hexpm", "{d}"}},
  "sparse_dep": {{:git, "https://github.com/acme/mono.git", "fedcba9876543210fedcba9876543210fedcba98", [sparse: "apps/sparse_dep", tag: "v1.0.0", submodules: true]}},
  "tagged": {{:git, "git@github.com:acme/tagged.git", "1111111111111111111111111111111111111111", [ref: "1111111"]}},
}}
"#,
        a = sum('a'),
        b = sum('b'),
        c_upper = sum('C'),
        c = sum('c'),
        d = sum('d'),
        e = sum('e'),
        f = sum('f'),
    )
}

#[test]
fn reads_a_realistic_lock() {
    let lock = MixLock::parse(&realistic_lock()).unwrap();
    assert_eq!(lock.entries.len(), 13);

    let hex: Vec<&str> = lock.hex().map(|(name, _)| name).collect();
    assert_eq!(
        hex,
        [
            "acme_auth",
            "cowboy",
            "cowlib",
            "decimal",
            "future",
            "jason",
            "poison",
            "ranch",
            "renamed_app"
        ]
    );
    let others: Vec<&str> = lock.not_from_hex().map(|(name, _)| name).collect();
    assert_eq!(others, ["local_dep", "my_fork", "sparse_dep", "tagged"]);

    let get = |name: &str| match &lock.entries[name] {
        LockEntry::Hex(h) => h.clone(),
        other => panic!("{name} is not from Hex: {other:?}"),
    };

    // 8 elements, uppercase checksum normalised.
    assert_eq!(
        get("cowboy"),
        HexLockEntry {
            package: "cowboy".into(),
            version: "2.10.0".into(),
            inner_checksum: sum('c'),
            managers: vec!["make".into(), "rebar3".into()],
            deps: vec![
                dep("cowlib", Some("2.12.1"), "cowlib", "hexpm", false),
                dep("ranch", Some("1.8.0"), "ranch", "hexpm", false),
            ],
            repo: "hexpm".into(),
            outer_checksum: Some(sum('d')),
            extra: vec![],
        }
    );
    // Organisation repository and optional dep.
    let acme = get("acme_auth");
    assert_eq!(acme.repo, "hexpm:acme");
    assert_eq!(
        acme.deps,
        vec![dep("jason", Some("~> 1.2"), "jason", "hexpm", true)]
    );
    // 6 elements: no repo, no outer checksum.
    let decimal = get("decimal");
    assert_eq!(
        (decimal.repo.as_str(), decimal.outer_checksum),
        ("hexpm", None)
    );
    // 7 elements: repo, no outer checksum.
    let poison = get("poison");
    assert_eq!(
        (poison.repo.as_str(), poison.outer_checksum),
        ("hexpm", None)
    );
    // 9+ elements: the first 8 read, the rest kept.
    let future = get("future");
    assert_eq!(future.outer_checksum, Some(sum('c')));
    assert_eq!(
        future.extra,
        vec![
            Term::Map(vec![(
                Term::Atom("newer".into()),
                Term::Binary(b"field".to_vec())
            )]),
            Term::Atom("another".into()),
        ]
    );
    // Package name differs from the app; nil requirement; hex: option with defaults.
    let renamed = get("renamed_app");
    assert_eq!(renamed.package, "actual_package");
    assert_eq!(
        renamed.deps,
        vec![
            dep("telemetry", None, "telemetry", "hexpm", false),
            dep(
                "dep_app",
                Some(">= 0.0.0"),
                "dep_package",
                "hexpm:acme",
                false
            ),
        ]
    );

    assert_eq!(
        lock.entries["my_fork"],
        LockEntry::Git(GitLockEntry {
            url: "https://github.com/acme/my_fork.git".into(),
            rev: "0123456789abcdef0123456789abcdef01234567".into(),
            opts: vec![("branch".into(), Term::Binary(b"main".to_vec()))],
        })
    );
    let LockEntry::Git(sparse) = &lock.entries["sparse_dep"] else {
        panic!()
    };
    let keys: Vec<&str> = sparse.opts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["sparse", "tag", "submodules"]);
    assert_eq!(sparse.opts[2].1, Term::Atom("true".into()));
    assert_eq!(
        lock.entries["local_dep"],
        LockEntry::Other { scm: "path".into() }
    );
}

#[test]
fn accepts_every_key_spelling_and_empty_locks() {
    let a = sum('a');
    for text in [
        format!("%{{\"x\": {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], []}}}}"),
        format!("%{{x: {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], []}}}}"),
        format!("%{{:x => {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], []}}}}"),
        format!("%{{\"x\" => {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], []}}}}"),
        format!("# comment\n%{{\n\n  \"x\":\n    {{:hex, :x, \"1.0.0\",\n     \"{a}\", [:mix],\n     [],}},\n}}\n"),
    ] {
        let lock = MixLock::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(lock.hex().count(), 1, "{text}");
        assert!(lock.entries.contains_key("x"));
    }
    assert!(MixLock::parse("%{}").unwrap().entries.is_empty());
    assert!(MixLock::parse("%{}\n").unwrap().entries.is_empty());
}

#[test]
fn errors_name_the_dependency() {
    let a = sum('a');
    let err = |text: String| MixLock::parse(&text).unwrap_err().to_string();
    assert_eq!(
        err("%{\"x\": {:hex, :x, \"1.0.0\", \"abc\", [:mix], []}}".into()),
        "mix.lock: dependency x: inner checksum must be 64 hexadecimal digits, found <<\"abc\">>"
    );
    assert_eq!(
        err(format!(
            "%{{\"x\": {{:hex, :x, \"1.0.0\", \"{}\", [:mix], []}}}}",
            "g".repeat(64)
        )),
        format!(
            "mix.lock: dependency x: inner checksum must be 64 hexadecimal digits, found <<\"{}...",
            "g".repeat(54)
        )
    );
    assert_eq!(
        err(format!(
            "%{{\"x\": {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], [], \"hexpm\", \"nope\"}}}}"
        )),
        "mix.lock: dependency x: outer checksum must be 64 hexadecimal digits, found <<\"nope\">>"
    );
    assert_eq!(
        err(format!(
            "%{{\"x\": {{:hex, :x, \"\", \"{a}\", [:mix], []}}}}"
        )),
        "mix.lock: dependency x: version must not be empty"
    );
    assert_eq!(
        err(format!("%{{\"x\": {{:hex, :x, \"1.0.0\", \"{a}\"}}}}")),
        "mix.lock: dependency x: a :hex entry has 4 elements, expected at least 6 (:hex, package, version, checksum, managers, deps)"
    );
    assert_eq!(
        err(format!(
            "%{{\"x\": {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], [{{:y, 1, []}}]}}}}"
        )),
        "mix.lock: dependency x: requirement of dep y must be a string, found 1"
    );
    assert_eq!(
        err(format!(
            "%{{\"x\": {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], [{{:y, nil}}]}}}}"
        )),
        "mix.lock: dependency x: dep 1 must be {:app, requirement, opts}, found {y,nil}"
    );
    assert_eq!(
        err(format!(
            "%{{\"x\": {{:hex, :x, \"1.0.0\", \"{a}\", [:mix], [{{:y, nil, [optional: 1]}}]}}}}"
        )),
        "mix.lock: dependency x: optional: option of dep y must be true or false, found 1"
    );
    assert_eq!(
        err("%{\"x\": \"1.0.0\"}".into()),
        "mix.lock: dependency x: expected a tuple such as {:hex, ...}, found <<\"1.0.0\">>"
    );
    assert_eq!(
        err("%{\"x\": {\"hex\", :x}}".into()),
        "mix.lock: dependency x: expected a tuple starting with an SCM atom such as :hex, found {<<\"hex\">>,x}"
    );
    assert_eq!(
        err("%{\"x\": {:git, 1, \"abc\", []}}".into()),
        "mix.lock: dependency x: git URL must be a string"
    );
    assert_eq!(
        err("[1]".into()),
        "mix.lock: expected a map %{...} at the top level, found [1]"
    );
    assert_eq!(
        err("%{1 => {:path, \"x\"}}".into()),
        "mix.lock: a dependency name must be an atom or a string, found 1"
    );
    assert_eq!(
        err("%{\n  \"x\": {:hex, :x, \"1.0.0\"\n".into()),
        "mix.lock: line 3, column 1: unexpected end of input, expected ',' or '}' in a tuple"
    );
    assert_eq!(
        err("%{\"x\": {:git, \"u#{1}\", \"r\", []}}".into()),
        "mix.lock: line 1, column 17: string interpolation #{...} is not allowed in a literal term"
    );
    let big = " ".repeat(MAX_LOCK_SIZE + 1);
    assert_eq!(
        MixLock::parse(&big).unwrap_err(),
        LockError::TooLarge {
            size: MAX_LOCK_SIZE + 1,
            max: MAX_LOCK_SIZE
        }
    );
}

/// Several MiB of entries parse without quadratic blow-up.
#[test]
fn large_locks_parse_in_linear_time() {
    let mut text = String::from("%{\n");
    let a = sum('a');
    let mut n = 0;
    while text.len() < 8 * 1024 * 1024 {
        text.push_str(&format!(
            "  \"dep_{n}\": {{:hex, :dep_{n}, \"1.0.{n}\", \"{a}\", [:mix], [{{:other, \"~> 1.0\", [hex: :other, repo: \"hexpm\", optional: false]}}], \"hexpm\", \"{a}\"}},\n"
        ));
        n += 1;
    }
    text.push('}');
    let start = std::time::Instant::now();
    let lock = MixLock::parse(&text).unwrap();
    assert_eq!(lock.hex().count(), n);
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}

// ---------------------------------------------------------------------------------------------
// Oracle: Elixir and Mix

/// The lock the oracle builds in Elixir, and what we must read from it.
const ELIXIR_LOCK: &str = r#"
a = String.duplicate("a", 64)
b = String.duplicate("B", 64)
lock = %{
  cowboy: {:hex, :cowboy, "2.10.0", a, [:make, :rebar3],
           [{:cowlib, "2.12.1", [hex: :cowlib, repo: "hexpm", optional: false]},
            {:ranch, nil, [hex: :ranch, repo: "hexpm:acme", optional: true]}], "hexpm", b},
  "my-dep": {:git, "https://github.com/acme/my-dep.git", "0123456789abcdef0123456789abcdef01234567",
             [branch: "feature/\u00e9t\u00e9", submodules: true]},
  old: {:hex, :old, "0.1.0", a, [:mix], []},
  mid: {:hex, :mid_package, "1.0.0-rc.1", b, [:mix], [{:old, "~> 0.1", [hex: :old]}], "hexpm:acme"},
  newer: {:hex, :newer, "9.9.9", a, [:mix], [], "hexpm", a, %{future: [1, 2.5, :x]}},
  local: {:path, "../local", [in_umbrella: true]}
}
"#;

fn check_elixir_lock(lock: &MixLock, text: &str) {
    let names: Vec<&str> = lock.entries.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["cowboy", "local", "mid", "my-dep", "newer", "old"],
        "{text}"
    );
    let LockEntry::Hex(cowboy) = &lock.entries["cowboy"] else {
        panic!("{text}")
    };
    assert_eq!(cowboy.inner_checksum, sum('a'));
    assert_eq!(cowboy.outer_checksum, Some(sum('b')));
    assert_eq!(
        cowboy.deps,
        vec![
            dep("cowlib", Some("2.12.1"), "cowlib", "hexpm", false),
            dep("ranch", None, "ranch", "hexpm:acme", true),
        ]
    );
    let LockEntry::Hex(mid) = &lock.entries["mid"] else {
        panic!("{text}")
    };
    assert_eq!(
        (
            mid.package.as_str(),
            mid.version.as_str(),
            mid.repo.as_str(),
            mid.outer_checksum.as_deref()
        ),
        ("mid_package", "1.0.0-rc.1", "hexpm:acme", None)
    );
    assert_eq!(
        mid.deps,
        vec![dep("old", Some("~> 0.1"), "old", "hexpm", false)]
    );
    let LockEntry::Hex(old) = &lock.entries["old"] else {
        panic!("{text}")
    };
    assert_eq!(
        (old.repo.as_str(), old.outer_checksum.as_deref()),
        ("hexpm", None)
    );
    let LockEntry::Hex(newer) = &lock.entries["newer"] else {
        panic!("{text}")
    };
    assert_eq!(newer.extra.len(), 1);
    let LockEntry::Git(git) = &lock.entries["my-dep"] else {
        panic!("{text}")
    };
    assert_eq!(git.url, "https://github.com/acme/my-dep.git");
    assert_eq!(
        git.opts[0],
        (
            "branch".into(),
            Term::Binary("feature/été".as_bytes().to_vec())
        )
    );
    assert_eq!(
        git.opts[1],
        ("submodules".into(), Term::Atom("true".into()))
    );
    assert_eq!(
        lock.entries["local"],
        LockEntry::Other { scm: "path".into() }
    );
}

fn elixir(dir: &std::path::Path, script: &str) -> String {
    let out = Command::new("elixir")
        .arg("-e")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run elixir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn elixir_inspect_pretty_lock() {
    let dir = tempfile::tempdir().unwrap();
    for opts in [
        "limit: :infinity, pretty: true",
        "limit: :infinity",
        "limit: :infinity, pretty: true, width: 20",
    ] {
        let text = elixir(
            dir.path(),
            &format!("{ELIXIR_LOCK}\nIO.write(inspect(lock, {opts}))"),
        );
        let lock = MixLock::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        check_elixir_lock(&lock, &text);
    }
}

/// Mix's own writer (`Mix.Dep.Lock.write/2`), which raises only after writing, when it
/// tries to mark the (missing) project for recompilation.
#[test]
fn mix_written_lock() {
    let dir = tempfile::tempdir().unwrap();
    elixir(
        dir.path(),
        &format!(
            "{ELIXIR_LOCK}\nMix.start()\ntry do\n  Mix.Dep.Lock.write(\"mix.lock\", lock)\nrescue\n  _ -> :ok\nend"
        ),
    );
    let text = std::fs::read_to_string(dir.path().join("mix.lock")).expect("Mix wrote mix.lock");
    assert!(
        text.starts_with("%{\n  \"cowboy\": {:hex, :cowboy,"),
        "{text}"
    );
    let lock = MixLock::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    check_elixir_lock(&lock, &text);
}

/// `MixLock::to_text` writes what Mix's own writer writes, byte for byte, and reads back.
#[test]
fn to_text_matches_mix_written_lock() {
    let dir = tempfile::tempdir().unwrap();
    let hex_only = r#"
a = String.duplicate("a", 64)
b = String.duplicate("b", 64)
lock = %{
  cowboy: {:hex, :cowboy, "2.10.0", a, [:make, :rebar3],
           [{:cowlib, "2.12.1", [hex: :cowlib, repo: "hexpm", optional: false]},
            {:ranch, nil, [hex: :ranch, repo: "hexpm:acme", optional: true]}], "hexpm", b},
  mid: {:hex, :mid_package, "1.0.0-rc.1", b, [:mix], [{:old, "~> 0.1 or \"x\"", [hex: :old, repo: "hexpm", optional: false]}], "hexpm:acme", a},
  old: {:hex, :old, "0.1.0", a, [:mix], [], "hexpm"}
}
"#;
    elixir(
        dir.path(),
        &format!(
            "{hex_only}\nMix.start()\ntry do\n  Mix.Dep.Lock.write(\"mix.lock\", lock)\nrescue\n  _ -> :ok\nend"
        ),
    );
    let written = std::fs::read_to_string(dir.path().join("mix.lock")).unwrap();
    let lock = MixLock::parse(&written).unwrap();
    assert_eq!(lock.to_text().unwrap(), written);
    assert_eq!(MixLock::parse(&lock.to_text().unwrap()).unwrap(), lock);

    let with_git = MixLock::parse(
        r#"%{"g": {:git, "https://example.invalid/g.git", "0123456789abcdef0123456789abcdef01234567", []}}"#,
    )
    .unwrap();
    assert!(with_git.to_text().is_err());
}
