//! `precomp build` with the fixture packages, on the host toolchain (bookworm: OTP 25,
//! Elixir 1.14) and the trixie image (OTP 27, Elixir 1.18; the store under
//! `$PRECOMP_TOOLCHAIN_CACHE`, default `/var/cache/precomp-test`, built there on first use by
//! `common::image_id`).
//!
//! Sources come from a signed static repository of the fixtures (`precomp repo build`), locks
//! from `precomp repo lock`, builds run in the real sandbox.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;
use precomp_proto::manifest::{Manifest, SignedManifest};
use precomp_proto::term::parse_erlang_terms;

/// The fixture repository (with broken_ex) and a builder key, made once per test process.
struct Fixture(FixtureRepo);

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            Fixture(FixtureRepo::new(
                "precomp-build-fixture-",
                &["broken/broken_ex"],
                &["builder"],
            ))
        })
    }

    fn mirror(&self) -> String {
        self.0.repo_url()
    }

    fn key(&self) -> PathBuf {
        self.0.key("builder.key")
    }

    /// A mix.lock of these releases, written to `dir/mix.lock`.
    fn lock(&self, dir: &Path, releases: &[&str]) -> PathBuf {
        let path = dir.join("mix.lock");
        self.0.write_lock(&path, releases);
        path
    }
}

/// Every fixture release that builds, with shapes at 1.0.0.
const ALL: &[&str] = &[
    "counter_ex@1.0.0",
    "env_reader@1.0.0",
    "erl_counter@1.0.0",
    "erl_ids@1.0.0",
    "mk_erl@1.0.0",
    "opt_user@1.0.0",
    "plain_ex@1.0.0",
    "shape_user@1.0.0",
    "shapes@1.0.0",
    "tiny_nif@1.0.0",
];

/// One package's line of `precomp build --json`.
#[derive(Clone, Debug)]
struct Line(serde_json::Value);

impl Line {
    fn str(&self, field: &str) -> &str {
        self.0[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {}", self.0))
    }

    fn manifest(&self) -> Manifest {
        let bytes = std::fs::read(self.str("manifest")).unwrap();
        let (manifest, _) = SignedManifest::decode(&bytes)
            .unwrap()
            .verify(&[builder_public_key()])
            .unwrap();
        manifest.check_key().unwrap();
        manifest
    }

    /// SHA-256 of one file of the artifact, from the manifest.
    fn file_digest(&self, path: &str) -> String {
        let manifest = self.manifest();
        let file = manifest
            .output
            .unwrap()
            .files
            .into_iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} not in the artifact of {}", self.0));
        hex::encode(file.sha256)
    }
}

fn builder_public_key() -> precomp_proto::manifest::ArtifactPublicKey {
    let pem = std::fs::read_to_string(Fixture::get().0.key("builder.pub")).unwrap();
    precomp_proto::manifest::ArtifactPublicKey::from_pem(&pem).unwrap()
}

/// Runs `precomp build --json` and returns its lines by app, with the raw output.
fn build(
    data: &Path,
    toolchain: &str,
    lock: &Path,
    extra: &[&str],
) -> (BTreeMap<String, Line>, Output) {
    build_with_env(data, toolchain, lock, extra, &[])
}

/// [`build`] with `env` set for `precomp`.
fn build_with_env(
    data: &Path,
    toolchain: &str,
    lock: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (BTreeMap<String, Line>, Output) {
    let fixture = Fixture::get();
    let mut command = precomp_command();
    command.envs(env.iter().copied());
    command
        .arg("--data")
        .arg(data)
        .args(["build", "--json", "--lock"])
        .arg(lock)
        .args(["--mirror", &fixture.mirror(), "--toolchain", toolchain])
        .arg("--toolchains")
        .arg(toolchain_cache())
        .arg("--key")
        .arg(fixture.key())
        .args(extra);
    let output = command.output().expect("run precomp build");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{e}: {line}\n{}", describe(&output)));
            (value["app"].as_str().unwrap().to_string(), Line(value))
        })
        .collect();
    (lines, output)
}

fn build_ok(data: &Path, toolchain: &str, lock: &Path, extra: &[&str]) -> BTreeMap<String, Line> {
    let (lines, output) = build(data, toolchain, lock, extra);
    assert!(output.status.success(), "{}", describe(&output));
    lines
}

/// Runs `code` on `toolchain` (in the sandbox: an image's beams need its own OTP) with the
/// artifacts unpacked into `dir` and their ebin directories on the code path; its stdout.
fn run_with_artifacts(
    dir: &Path,
    toolchain: &str,
    lines: &BTreeMap<String, Line>,
    code: &str,
) -> String {
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(toolchain_cache())
        .args(["toolchain", "run", toolchain, "--output"])
        .arg(dir)
        .args(["--", "elixir"]);
    for (app, line) in lines {
        let dest = dir.join(app);
        std::fs::create_dir_all(&dest).unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(line.str("artifact"))
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success());
        command.arg("-pa").arg(format!("{app}/ebin"));
    }
    let output = command.args(["-e", code]).output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The same inputs in two host directories give the same bytes; the artifacts load and run.
fn reproducible_and_runnable(toolchain: &str) {
    let fixture = Fixture::get();
    let scratch = data_dir("precomp-build-scratch-");
    let lock = fixture.lock(scratch.path(), ALL);
    let first = data_dir("precomp-build-a-");
    let second_parent = data_dir("precomp-build-b-");
    let second = second_parent.path().join("somewhere/else");
    std::fs::create_dir_all(&second).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [second.parent().unwrap(), second.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let a = build_ok(first.path(), toolchain, &lock, &[]);
    let b = build_ok(&second, toolchain, &lock, &["--jobs", "1"]);
    assert_eq!(a.len(), ALL.len(), "{a:?}");
    for (app, line) in &a {
        assert_eq!(line.str("status"), "built", "{app}: {:?}", line.0);
        assert_eq!(
            (line.str("key"), line.str("artifact_sha256")),
            (b[app].str("key"), b[app].str("artifact_sha256")),
            "{app} differs between host directories"
        );
        let bytes = std::fs::read(line.str("artifact")).unwrap();
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            line.str("artifact_sha256")
        );
    }
    // rebar3 packages without parse transforms, plugins or hooks compile once (their beams
    // are the same although atom order is not fixed); these Mix packages once too, from an
    // atom list predicted from their inputs that held every atom their compile created (a
    // record (Record.extract of a closure header), macros and a struct of the closure, a
    // custom Mix compiler), and still bit-identical across host directories.
    let log = |app: &str| {
        let key = a[app].str("key");
        std::fs::read_to_string(first.path().join("builds/logs").join(format!("{key}.log")))
            .unwrap()
    };
    for app in ["erl_counter", "erl_ids", "mk_erl"] {
        let log = log(app);
        assert!(
            log.contains("== precomp: one pass (rebar3") && !log.contains("pass 2 of 2"),
            "{app}: {log}"
        );
    }
    for app in ["shape_user", "shapes", "tiny_nif", "counter_ex", "plain_ex"] {
        let log = log(app);
        assert!(
            log.contains("== precomp: one pass, with the atom list predicted")
                && log.contains("; created later: 0")
                && !log.contains("pass 2 of 2"),
            "{app}: {log}"
        );
    }
    assert_eq!(a["tiny_nif"].str("target"), "x86_64-linux-gnu");
    assert_eq!(a["shapes"].str("target"), "any");
    assert!(a["tiny_nif"].manifest().output.unwrap().native_code);

    // erlang.mk-style: Mix symlinks _build/.../mk_erl/ebin into deps/; the artifact holds the
    // real files.
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(a["mk_erl"].str("artifact"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("ebin/mk_erl.beam"), "{listing}");
    assert!(!listing.lines().any(|l| l.starts_with('l')), "{listing}");

    let run = data_dir("precomp-build-run-");
    let out = run_with_artifacts(
        run.path(),
        toolchain,
        &a,
        "IO.inspect({ShapeUser.summary(), :erl_ids.default_step(), TinyNif.add(40, 2), :mk_erl.version(), EnvReader.greet(\"ci\"), CounterEx.ids(\"a\", 2), OptUser.mode()})",
    );
    for expected in [
        "compiled_against: \"1.0.0\"",
        "square_area: 9",
        ", 1, 42, ",
        "\"hello, ci!\"",
        "[\"a-1\", \"a-2\"]",
        ":with_plain_ex",
    ] {
        assert!(out.contains(expected), "{expected} not in {out}");
    }

    // A second run in the same data directory reuses every artifact.
    let again = build_ok(first.path(), toolchain, &lock, &[]);
    for (app, line) in &again {
        assert_eq!(line.str("status"), "reused", "{app}");
        assert_eq!(line.str("key"), a[app].str("key"));
    }
}

#[test]
fn host_builds_are_reproducible_and_run() {
    reproducible_and_runnable("host");
}

#[test]
fn trixie_builds_are_reproducible_and_run() {
    reproducible_and_runnable(&image_id(Suite::Trixie));
}

/// atom_maps (tests/fixtures/packages/atom_maps) generates code by iterating atom-keyed maps at
/// compile time while its other files create the same atoms in parallel: without the
/// builder's two passes (builder/src/atoms.rs) its beams differ in nearly every build. Five
/// builds in five data directories at different host paths must give one artifact, each
/// build's second pass must have found every atom it needed created at boot, and the code
/// must still work.
fn atom_order_is_reproducible(toolchain: &str) {
    let fixture = Fixture::get();
    let lock_dir = data_dir("lock-atoms-");
    let lock = fixture.lock(lock_dir.path(), &["atom_maps@1.0.0"]);
    let mut builds = Vec::new();
    for round in 1..=5 {
        let parent = data_dir(&format!("precomp-build-atoms-{round}-"));
        // Paths of different lengths and depths, so nothing can depend on where DATA is.
        let data = parent.path().join("d".repeat(round)).join("data");
        std::fs::create_dir_all(&data).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            for dir in [data.parent().unwrap(), data.as_path()] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let lines = build_ok(&data, toolchain, &lock, &[]);
        let line = lines["atom_maps"].clone();
        assert_eq!(line.str("status"), "built", "{:?}", line.0);
        let log_path = data
            .join("builds/logs")
            .join(format!("{}.log", line.str("key")));
        let log = std::fs::read_to_string(&log_path).unwrap();
        // Its parts make atoms of computed names (`:"watch_01_#{k}"`) no input spells: the
        // predicted pass finds them created later and becomes pass 1 of 2.
        assert!(
            log.contains("== precomp: pass 1 of 2, with the atom list predicted")
                && log.contains(":watch_"),
            "round {round}: the prediction was expected to miss atom_maps' computed atoms: {log}"
        );
        assert!(
            log.split("== precomp: pass 2 of 2")
                .nth(1)
                .is_some_and(|pass2| pass2.contains("; created later: 0")),
            "round {round}: pass 2 created atoms pass 1 did not: {log}"
        );
        builds.push((parent, line));
    }
    let first = &builds[0].1;
    for (round, (_, line)) in builds.iter().enumerate() {
        if line.str("artifact_sha256") == first.str("artifact_sha256") {
            continue;
        }
        // Name the beams that differ, for whoever has to find out why.
        let files = |line: &Line| -> BTreeMap<String, Vec<u8>> {
            let output = line.manifest().output.unwrap();
            output
                .files
                .into_iter()
                .map(|f| (f.path, f.sha256))
                .collect()
        };
        let (a, b) = (files(first), files(line));
        let differing: Vec<&String> = a
            .keys()
            .filter(|path| a.get(*path) != b.get(*path))
            .collect();
        panic!(
            "build {} of atom_maps differs from build 1 ({} vs {}): {differing:?}",
            round + 1,
            line.str("artifact_sha256"),
            first.str("artifact_sha256")
        );
    }

    let run = data_dir("precomp-build-atoms-run-");
    let lines = BTreeMap::from([("atom_maps".to_string(), first.clone())]);
    let out = run_with_artifacts(
        run.path(),
        toolchain,
        &lines,
        "IO.inspect({length(AtomMaps.classes()), AtomMaps.names_in(:jade_vole), length(AtomMaps.Severity.levels()), map_size(AtomMaps.Ledgers.blank()), AtomMaps.Tags.blank?(%AtomMaps.Tag{})})",
    );
    assert!(
        out.contains(
            "{40, [:jade_vole_drifted, :jade_vole_refused, :jade_vole_stalled], 12, 41, true}"
        ),
        "{out}"
    );
}

/// The predicted pass's phase checks that nothing but its own names came after the boot
/// script's atoms. An atom made before them (here by the hook itself, told by the
/// test-only `PRECOMP_TEST_PHASE_ATOM`, which only a debug build of the builder passes into
/// the sandbox) fails that check: the build falls back to two passes and gives the same
/// artifact as the one pass without it.
#[test]
fn host_an_atom_made_before_the_phase_sends_the_build_to_two_passes() {
    let fixture = Fixture::get();
    let lock_dir = data_dir("lock-phase-");
    let lock = fixture.lock(lock_dir.path(), &["plain_ex@1.0.0"]);
    let log = |data: &Path, line: &Line| {
        std::fs::read_to_string(
            data.join("builds/logs")
                .join(format!("{}.log", line.str("key"))),
        )
        .unwrap()
    };
    let plain = data_dir("precomp-build-phase-a-");
    let one = build_ok(plain.path(), "host", &lock, &[])["plain_ex"].clone();
    let one_log = log(plain.path(), &one);
    assert!(
        one_log.contains("== precomp: one pass, with the atom list predicted")
            && one_log.contains(" by the phase; created later: 0"),
        "{one_log}"
    );

    let provoked = data_dir("precomp-build-phase-b-");
    let (lines, output) = build_with_env(
        provoked.path(),
        "host",
        &lock,
        &[],
        &[(
            "PRECOMP_TEST_PHASE_ATOM",
            "precomp_test_phase_atom_made_early",
        )],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let two = lines["plain_ex"].clone();
    let two_log = log(provoked.path(), &two);
    assert!(
        two_log.contains("== precomp: pass 1 of 2, with the atom list predicted")
            && two_log.contains("(the phase's check failed); created later: ")
            && two_log.contains(":precomp_test_phase_atom_made_early"),
        "{two_log}"
    );
    assert!(
        two_log
            .split("== precomp: pass 2 of 2")
            .nth(1)
            .is_some_and(|pass2| pass2.contains("; created later: 0")),
        "{two_log}"
    );
    assert_eq!(
        (two.str("key"), two.str("artifact_sha256")),
        (one.str("key"), one.str("artifact_sha256"))
    );
}

#[test]
fn host_atom_order_is_reproducible() {
    atom_order_is_reproducible("host");
}

#[test]
fn trixie_atom_order_is_reproducible() {
    atom_order_is_reproducible("trixie");
}

/// Inputs that change compilation change the key and the beams: the macro package's version,
/// an optional dependency present or not, the compile-time config.
fn inputs_change_keys_and_beams(toolchain: &str) {
    let fixture = Fixture::get();
    let data = data_dir("precomp-build-inputs-");
    let (v1_dir, v2_dir) = (data_dir("lock-v1-"), data_dir("lock-v2-"));
    let v1 = build_ok(
        data.path(),
        toolchain,
        &fixture.lock(v1_dir.path(), &["shapes@1.0.0", "shape_user@1.0.0"]),
        &[],
    );
    let v2 = build_ok(
        data.path(),
        toolchain,
        &fixture.lock(v2_dir.path(), &["shapes@2.0.0", "shape_user@1.0.0"]),
        &[],
    );
    assert_ne!(v1["shape_user"].str("key"), v2["shape_user"].str("key"));
    assert_ne!(
        v1["shape_user"].file_digest("ebin/Elixir.ShapeUser.beam"),
        v2["shape_user"].file_digest("ebin/Elixir.ShapeUser.beam")
    );
    assert_eq!(
        v1["shape_user"].manifest().closure[0].version,
        "1.0.0",
        "the closure records the macro package's version"
    );

    let (alone_dir, with_dir) = (data_dir("lock-alone-"), data_dir("lock-with-"));
    let alone = build_ok(
        data.path(),
        toolchain,
        &fixture.lock(alone_dir.path(), &["opt_user@1.0.0"]),
        &[],
    );
    let with = build_ok(
        data.path(),
        toolchain,
        &fixture.lock(with_dir.path(), &["opt_user@1.0.0", "plain_ex@1.0.0"]),
        &[],
    );
    assert_ne!(alone["opt_user"].str("key"), with["opt_user"].str("key"));
    assert_ne!(
        alone["opt_user"].file_digest("ebin/Elixir.OptUser.beam"),
        with["opt_user"].file_digest("ebin/Elixir.OptUser.beam")
    );

    // compile_env: the manifest lists what the .app records, with the config's values.
    let config_dir = data_dir("config-");
    let config = config_dir.path().join("config.exs");
    std::fs::write(
        &config,
        "import Config\nconfig :env_reader, greeting: \"howdy\", format: [punctuation: \"?\"]\n",
    )
    .unwrap();
    let env_lock_dir = data_dir("lock-env-");
    let env_lock = fixture.lock(env_lock_dir.path(), &["env_reader@1.0.0"]);
    let plain = build_ok(data.path(), toolchain, &env_lock, &[]);
    let configured = build_ok(
        data.path(),
        toolchain,
        &env_lock,
        &["--config", config.to_str().unwrap()],
    );
    let manifest = configured["env_reader"].manifest();
    let entries: Vec<(String, String, Option<String>)> = manifest
        .compile_env
        .iter()
        .map(|e| (e.app.clone(), e.path.clone(), e.value.clone()))
        .collect();
    assert!(
        entries.contains(&(
            "env_reader".into(),
            "[greeting]".into(),
            Some("<<\"howdy\">>".into())
        )),
        "{entries:?}"
    );
    assert!(
        entries.contains(&(
            "env_reader".into(),
            "[format,punctuation]".into(),
            Some("<<\"?\">>".into())
        )),
        "{entries:?}"
    );
    assert_eq!(
        plain["env_reader"].str("base_key"),
        configured["env_reader"].str("base_key")
    );
    assert_ne!(
        plain["env_reader"].str("key"),
        configured["env_reader"].str("key")
    );
    assert_ne!(
        plain["env_reader"].file_digest("ebin/Elixir.EnvReader.beam"),
        configured["env_reader"].file_digest("ebin/Elixir.EnvReader.beam")
    );
    // The same config again: its values are evaluated (in the sandbox) and the build reused.
    let again = build_ok(
        data.path(),
        toolchain,
        &env_lock,
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(again["env_reader"].str("status"), "reused");
    assert_eq!(
        again["env_reader"].str("key"),
        configured["env_reader"].str("key")
    );

    // A dependency's config reaches its dependent through its macro (cfg_macro_user reads no
    // config): key format v2 names cfg_macro by its own key, so cfg_macro_user's base key,
    // key and beam follow cfg_macro's label, and reuse compares the whole key.
    let cfg_lock_dir = data_dir("lock-cfg-");
    let cfg_lock = fixture.lock(
        cfg_lock_dir.path(),
        &["cfg_macro@1.0.0", "cfg_macro_user@1.0.0"],
    );
    let label = |name: &str, label: &str| {
        let path = config_dir.path().join(name);
        std::fs::write(
            &path,
            format!("import Config\nconfig :cfg_macro, label: {label:?}\n"),
        )
        .unwrap();
        path
    };
    let (red_config, blue_config) = (label("red.exs", "red"), label("blue.exs", "blue"));
    let with = |config: &Path| {
        build_ok(
            data.path(),
            toolchain,
            &cfg_lock,
            &["--config", config.to_str().unwrap()],
        )
    };
    let red = with(&red_config);
    let blue = with(&blue_config);
    let user = |lines: &BTreeMap<String, Line>| lines["cfg_macro_user"].clone();
    assert_ne!(user(&red).str("base_key"), user(&blue).str("base_key"));
    assert_ne!(user(&red).str("key"), user(&blue).str("key"));
    assert!(user(&blue).manifest().compile_env.is_empty());
    assert_eq!(
        user(&blue).manifest().closure[0].key,
        blue["cfg_macro"].str("key"),
        "the dependent's manifest names the build of its dependency it was made against"
    );
    assert_ne!(
        user(&red).file_digest("ebin/Elixir.CfgMacroUser.beam"),
        user(&blue).file_digest("ebin/Elixir.CfgMacroUser.beam")
    );
    let again = with(&red_config);
    for app in ["cfg_macro", "cfg_macro_user"] {
        assert_eq!(again[app].str("status"), "reused", "{app}");
        assert_eq!(again[app].str("key"), red[app].str("key"), "{app}");
    }
}

#[test]
fn host_inputs_change_keys_and_beams() {
    inputs_change_keys_and_beams("host");
}

#[test]
fn trixie_inputs_change_keys_and_beams() {
    inputs_change_keys_and_beams(&image_id(Suite::Trixie));
}

#[test]
fn a_compile_error_is_recorded_with_its_log_and_nothing_is_stored() {
    let fixture = Fixture::get();
    let data = data_dir("precomp-build-broken-");
    let lock_dir = data_dir("lock-broken-");
    let lock = fixture.lock(lock_dir.path(), &["broken_ex@1.0.0", "plain_ex@1.0.0"]);
    let (lines, output) = build(data.path(), "host", &lock, &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    let broken = &lines["broken_ex"];
    assert_eq!(broken.str("status"), "failed", "{:?}", broken.0);
    assert!(broken.0.get("artifact").is_none());
    let log = std::fs::read_to_string(broken.str("log")).unwrap();
    assert!(log.contains("BrokenEx.NoSuchStruct"), "{log}");
    assert_eq!(lines["plain_ex"].str("status"), "built");
    let manifests: Vec<_> = std::fs::read_dir(data.path().join("builds/manifests"))
        .unwrap()
        .collect();
    assert_eq!(manifests.len(), 1, "only plain_ex's manifest is stored");
}

#[test]
fn build_names_a_tampered_source_and_a_missing_release() {
    let fixture = Fixture::get();
    let lock_dir = data_dir("lock-tamper-");
    let lock = fixture.lock(lock_dir.path(), &["plain_ex@1.0.0"]);
    let text = std::fs::read_to_string(&lock).unwrap();
    let outer = text.rsplit('"').nth(1).unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if outer.starts_with('0') { '1' } else { '0' },
        &outer[1..]
    );
    std::fs::write(&lock, text.replace(&outer, &flipped)).unwrap();
    let data = data_dir("precomp-build-tamper-");
    let (_, output) = build(data.path(), "host", &lock, &[]);
    assert!(!output.status.success());
    let message = text_of(&output);
    assert!(
        message.contains("plain_ex 1.0.0") && message.contains("refusing"),
        "{message}"
    );

    let (_, output) = build(data.path(), "host", &lock, &["plain_ex@9.9.9"]);
    assert!(!output.status.success());
    assert!(
        text_of(&output).contains("not 9.9.9"),
        "{}",
        text_of(&output)
    );
}

fn text_of(output: &Output) -> String {
    text(output)
}

/// Check the .app the artifact carries is a real application file.
#[test]
fn artifact_app_file_parses() {
    let fixture = Fixture::get();
    let lock_dir = data_dir("lock-app-");
    let lock = fixture.lock(lock_dir.path(), &["plain_ex@1.0.0"]);
    let data = data_dir("precomp-build-app-");
    let lines = build_ok(data.path(), "host", &lock, &[]);
    let dir = data_dir("unpacked-");
    run_with_artifacts(dir.path(), "host", &lines, "IO.puts(:ok)");
    let app = std::fs::read_to_string(dir.path().join("plain_ex/ebin/plain_ex.app")).unwrap();
    let terms = parse_erlang_terms(&app).unwrap();
    assert_eq!(terms.len(), 1);
}

/// `precomp serve` (with `extra` arguments) in front of the fixture repository, in a data
/// directory of its own, with an upload token bound to the builder key: the directory, the
/// server and the token.
fn serve_with_builder_token(
    fixture: &Fixture,
    extra: &[&str],
) -> (tempfile::TempDir, ServeProcess, String) {
    let mirror_data = data_dir("precomp-build-mirror-");
    let token = ok(precomp(&[
        "--data",
        mirror_data.path().to_str().unwrap(),
        "token",
        "create",
        "--name",
        "builder",
        "--key",
        fixture.0.key("builder.pub").to_str().unwrap(),
    ]))
    .trim()
    .to_string();
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(mirror_data.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--upstream")
        .arg(fixture.mirror())
        .arg("--upstream-key")
        .arg(fixture.0.path("repo.pem.pub"));
    let server = ServeProcess::spawn(command);
    (mirror_data, server, token)
}

/// Builds fetched through `precomp serve` and published to it with a token: the mirror serves
/// the same manifest and artifact bytes and indexes the keys; a compile error is recorded
/// there with its log and nothing published; `--missing` builds what a client reported.
#[test]
fn builds_are_published_to_the_mirror_and_misses_are_built() {
    let fixture = Fixture::get();
    let (_mirror_data, server, token) = serve_with_builder_token(fixture, &[]);

    let lock_dir = data_dir("lock-publish-");
    let lock = fixture.lock(
        lock_dir.path(),
        &["shapes@1.0.0", "shape_user@1.0.0", "broken_ex@1.0.0"],
    );
    let data = data_dir("precomp-build-publish-");
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data.path())
        .args(["build", "--json", "--publish", "--lock"])
        .arg(&lock)
        .args(["--mirror", server.base(), "--token", &token, "--key"])
        .arg(fixture.key());
    let output = command.output().unwrap();
    assert!(
        !output.status.success(),
        "broken_ex fails: {}",
        describe(&output)
    );
    let lines: BTreeMap<String, serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["app"].as_str().unwrap().to_string(), v)
        })
        .collect();
    // What the mirror did with each, truly: two manifests created, broken_ex's failure
    // recorded (nothing published for it).
    for app in ["shapes", "shape_user"] {
        assert_eq!(lines[app]["published"], true, "{}", describe(&output));
        assert_eq!(
            lines[app]["publish_result"],
            "created",
            "{}",
            describe(&output)
        );
    }
    assert_eq!(
        lines["broken_ex"]["published"],
        false,
        "{}",
        describe(&output)
    );
    assert_eq!(
        lines["broken_ex"]["publish_result"],
        "failure_recorded",
        "{}",
        describe(&output)
    );

    let client = reqwest::blocking::Client::new();
    let get = |path: &str| {
        let response = client.get(server.url(path)).send().unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.bytes().unwrap().to_vec()
    };
    let user = &lines["shape_user"];
    let key = user["key"].as_str().unwrap();
    assert_eq!(
        get(&format!("/precomp/v1/manifests/{key}")),
        std::fs::read(user["manifest"].as_str().unwrap()).unwrap()
    );
    assert_eq!(
        get(&format!(
            "/precomp/v1/artifacts/{}",
            user["artifact_sha256"].as_str().unwrap()
        )),
        std::fs::read(user["artifact"].as_str().unwrap()).unwrap()
    );
    let index: serde_json::Value =
        serde_json::from_slice(&get("/precomp/v1/index/shape_user")).unwrap();
    assert!(index.to_string().contains(key), "{index}");
    let failures = String::from_utf8(get("/precomp/v1/failures/broken_ex")).unwrap();
    assert!(failures.contains("BrokenEx.NoSuchStruct"), "{failures}");
    let index: serde_json::Value =
        serde_json::from_slice(&get("/precomp/v1/index/broken_ex")).unwrap();
    assert_eq!(index["builds"].as_array().unwrap().len(), 0, "{index}");

    // A client reports that opt_user (with plain_ex in its lock) has no artifact.
    let miss_lock_dir = data_dir("lock-miss-");
    let miss_lock = fixture.lock(miss_lock_dir.path(), &["opt_user@1.0.0", "plain_ex@1.0.0"]);
    let miss_lock_text = std::fs::read_to_string(&miss_lock).unwrap();
    let toolchains = ok(precomp(&[
        "--data",
        data.path().to_str().unwrap(),
        "toolchain",
        "list",
        "--json",
    ]));
    let host: serde_json::Value = serde_json::from_str(&toolchains).unwrap();
    let host = host
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "host")
        .unwrap()
        .clone();
    // Nobody has built plain_ex: its key is unknown, so the miss is named by its request key
    // (docs/protocol.md, "Misses"), computed here with proto's build key.
    let request_key = {
        use precomp_proto::buildkey::{KeyParts, KeyToolchain, Manager, Target};
        let parsed = precomp_proto::lock::MixLock::parse(&miss_lock_text).unwrap();
        let parts = |target| KeyParts {
            manager: Manager::Mix,
            target,
            compile_env: Vec::new(),
        };
        let parts = BTreeMap::from([
            ("opt_user".to_string(), parts(Some(Target::Any))),
            ("plain_ex".to_string(), parts(None)),
        ]);
        let toolchain = KeyToolchain {
            otp_major: host["otp"].as_str().unwrap().into(),
            elixir: host["elixir"].as_str().unwrap().into(),
            mix_env: "prod".into(),
        };
        let inputs = parsed
            .inputs_bottom_up("opt_user", Target::Any, &parts, &toolchain)
            .unwrap();
        assert_eq!(inputs.closure[0].key, None);
        inputs.request_key().unwrap().to_string()
    };
    let report = serde_json::json!({
        "package": "opt_user", "version": "1.0.0", "request_key": request_key,
        "reason": "not built", "otp_major": host["otp"], "elixir": host["elixir"],
        "mix_env": "prod", "target": "any", "lock": miss_lock_text, "manager": "mix",
        "compile_env": [],
        "closure": [{"name": "plain_ex", "version": "1.0.0", "manager": "mix", "compile_env": []}],
    });
    let response = client
        .post(server.url("/precomp/v1/misses"))
        .body(report.to_string())
        .send()
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().unwrap()
    );

    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data.path())
        .args(["build", "--json", "--publish", "--missing"])
        .args(["--mirror", server.base(), "--token", &token, "--key"])
        .arg(fixture.key());
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let built = String::from_utf8_lossy(&output.stdout);
    assert!(built.contains("\"app\":\"opt_user\""), "{built}");
    let misses = client
        .get(server.url("/precomp/v1/misses"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!misses.contains("opt_user"), "the miss is closed: {misses}");
    // Closed by the publish of the build that satisfies it, plain_ex's key now known.
    let index: serde_json::Value =
        serde_json::from_slice(&get("/precomp/v1/index/opt_user")).unwrap();
    assert_eq!(index["builds"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(index["builds"][0]["key_format"], 2, "{index}");
    let failures = String::from_utf8(get("/precomp/v1/failures/opt_user")).unwrap();
    assert!(!failures.contains(&request_key), "{failures}");
}

/// A package whose closure has a git dependency cannot be keyed: it is reported as not
/// buildable, the rest of the lock still builds, and the run succeeds.
#[test]
fn a_closure_with_a_git_dependency_is_not_buildable_and_the_rest_builds() {
    let fixture = Fixture::get();
    let lock_dir = data_dir("lock-git-");
    let lock = fixture.lock(lock_dir.path(), &["plain_ex@1.0.0", "shapes@1.0.0"]);
    let text = std::fs::read_to_string(&lock).unwrap();
    let text: String = text
        .lines()
        .map(|line| {
            let line = if line.contains("\"plain_ex\":") {
                line.replace(
                    "[:mix], [], \"hexpm\"",
                    "[:mix], [{:my_fork, \"~> 1.0\", [hex: :my_fork, repo: \"hexpm\", optional: false]}], \"hexpm\"",
                )
            } else {
                line.to_string()
            };
            format!("{line}\n")
        })
        .collect::<String>()
        .replacen(
            "%{\n",
            "%{\n  \"my_fork\": {:git, \"https://example.invalid/my_fork.git\", \"0123456789abcdef0123456789abcdef01234567\", []},\n",
            1,
        );
    std::fs::write(&lock, &text).unwrap();
    let data = data_dir("precomp-build-git-");
    let (lines, output) = build(data.path(), "host", &lock, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let plain = &lines["plain_ex"];
    assert_eq!(
        plain.str("status"),
        "not_buildable",
        "{text}\n{:?}",
        plain.0
    );
    assert!(plain.str("reason").contains("my_fork"), "{:?}", plain.0);
    assert_eq!(
        lines["shapes"].str("status"),
        "built",
        "{:?}",
        lines["shapes"].0
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
}

/// A mirror that requires a token to read (`serve --require-read-token`): `precomp build`
/// downloads its sources with its token and publishes; without the token the same download is
/// refused (401), and the error says a token is needed.
#[test]
fn a_mirror_that_requires_a_read_token_gets_the_builders_token_for_sources() {
    let fixture = Fixture::get();
    let (_mirror_data, server, token) =
        serve_with_builder_token(fixture, &["--require-read-token"]);
    let lock_dir = data_dir("lock-read-token-");
    let lock = fixture.lock(lock_dir.path(), &["plain_ex@1.0.0"]);

    // Without a token: the source download is refused.
    let data = data_dir("precomp-build-read-token-none-");
    let output = precomp_command()
        .arg("--data")
        .arg(data.path())
        .args(["build", "--json", "--lock"])
        .arg(&lock)
        .args(["--mirror", server.base(), "--key"])
        .arg(fixture.key())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("needs a token").count(),
        1,
        "the refusal is named, once: {}",
        describe(&output)
    );

    // With the builder's token: fetched, built and published.
    let data = data_dir("precomp-build-read-token-");
    let output = precomp_command()
        .arg("--data")
        .arg(data.path())
        .args(["build", "--json", "--publish", "--lock"])
        .arg(&lock)
        .args(["--mirror", server.base(), "--token", &token, "--key"])
        .arg(fixture.key())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["app"], "plain_ex", "{}", describe(&output));
    assert_eq!(line["published"], true, "{}", describe(&output));
}
