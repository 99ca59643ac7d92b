//! Artifact tarballs: reproducible packing (checked with GNU tar and gzip), link resolution
//! inside the build project, safe unpacking, and checks against a manifest's output.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use precomp_proto::artifact::{
    check, list, pack, unpack, ArtifactError, ARTIFACT_MTIME, MAX_CONTENT_SIZE,
};
use precomp_proto::manifest::FileRecord;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

// ---------------------------------------------------------------------------------------------
// Helpers

fn write(path: &Path, contents: &[u8], mode: u32, mtime_secs: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = fs::File::create(path).unwrap();
    file.write_all(contents).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs))
        .unwrap();
    drop(file);
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn long_name() -> String {
    format!("{}/{}.txt", "nested_dir_".repeat(12), "f".repeat(120))
}

/// The files of a typical app build dir, as (path, contents, executable).
fn app_files() -> Vec<(String, Vec<u8>, bool)> {
    vec![
        (
            "ebin/demo.app".into(),
            b"{application,demo,[]}.\n".to_vec(),
            false,
        ),
        (
            "ebin/Elixir.Demo.beam".into(),
            b"FOR1\x00\x00beam data".to_vec(),
            false,
        ),
        ("ebin/demo_sup.beam".into(), vec![0, 1, 2, 255, 254], false),
        ("priv/run.sh".into(), b"#!/bin/sh\necho hi\n".to_vec(), true),
        ("priv/static/app.css".into(), b"body{}".to_vec(), false),
        ("priv/static/a-b.txt".into(), b"dash".to_vec(), false),
        ("priv/static/a/b.txt".into(), b"slash".to_vec(), false),
        (format!("priv/{}", long_name()), b"long".to_vec(), false),
        (
            "include/demo.hrl".into(),
            b"-define(X, 1).\n".to_vec(),
            false,
        ),
    ]
}

/// Writes an app build dir at `app`: `variant` changes everything that must not matter
/// (creation order, mtimes, permission bits a different umask would give, where `priv`
/// really lives).
fn make_app(project: &Path, app: &Path, variant: bool) {
    let mut files = app_files();
    if variant {
        files.reverse();
    }
    let priv_root = if variant {
        // priv is a relative symlink into deps/, as Mix makes it.
        let real = project.join("deps/demo/priv");
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(app).unwrap();
        symlink("../../../../deps/demo/priv", app.join("priv")).unwrap();
        real
    } else {
        app.join("priv")
    };
    for (i, (path, contents, executable)) in files.iter().enumerate() {
        let target = match path.strip_prefix("priv/") {
            Some(rest) => priv_root.join(rest),
            None => app.join(path),
        };
        let mode = match (executable, variant) {
            (true, false) => 0o755,
            (true, true) => 0o700,
            (false, false) => 0o644,
            (false, true) => 0o600,
        };
        let mtime = if variant {
            1_700_000_000 + i as u64
        } else {
            1_000_000_000
        };
        write(&target, contents, mode, mtime);
    }
    // An empty directory is kept; what is not ebin/priv/include is left out.
    fs::create_dir_all(priv_root.join("empty")).unwrap();
    write(&app.join(".mix/compile.fetch"), b"", 0o644, 0);
    write(&app.join("consolidated/x.beam"), b"x", 0o644, 0);
    if variant {
        fs::set_permissions(app.join("ebin"), fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// A project with an app build dir at `_build/prod/lib/demo`; returns (project, app dir).
fn project(variant: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("_build/prod/lib/demo");
    make_app(dir.path(), &app, variant);
    (dir, app)
}

fn record(path: &str, contents: &[u8], executable: bool) -> FileRecord {
    FileRecord {
        path: path.into(),
        sha256: Sha256::digest(contents).to_vec(),
        size: contents.len() as u64,
        executable,
    }
}

/// What a directory holds: relative path → (contents or None for a directory, mode).
fn snapshot(root: &Path) -> BTreeMap<String, (Option<Vec<u8>>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Option<Vec<u8>>, u32)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            assert!(!meta.file_type().is_symlink(), "{rel} is a symlink");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, (None, mode));
                walk(root, &path, out);
            } else {
                out.insert(rel, (Some(fs::read(&path).unwrap()), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn gnu_tar(args: &[&str], artifact: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.tar.gz");
    fs::write(&file, artifact).unwrap();
    let output = Command::new("tar")
        .args(args)
        .arg(&file)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect("run GNU tar");
    assert!(
        output.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Packing

#[test]
fn identical_trees_give_identical_bytes() {
    let (one, app_one) = project(false);
    let (two, app_two) = project(true);
    let a = pack(&app_one, one.path()).unwrap();
    let b = pack(&app_two, two.path()).unwrap();
    assert_eq!(a.sha256, b.sha256);
    assert!(a.bytes == b.bytes, "the two trees packed differently");
    assert_eq!(a.files, b.files);
    assert_eq!(a.sha256.as_slice(), Sha256::digest(&a.bytes).as_slice());
    assert!(!a.native_code);

    let mut expected: Vec<FileRecord> = app_files()
        .iter()
        .map(|(path, contents, executable)| record(path, contents, *executable))
        .collect();
    expected.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(a.files, expected);
    assert_eq!(list(&a.bytes).unwrap(), expected);
    let output = a.output();
    assert_eq!(output.artifact_size, a.bytes.len() as u64);
    assert_eq!(output.files, expected);
    check(&a.bytes, &output).unwrap();

    // Packing again gives the same bytes too.
    assert!(pack(&app_one, one.path()).unwrap().bytes == a.bytes);

    // A third copy made under a real umask 077 (cp without -p: new mtimes, modes masked).
    let three = tempfile::tempdir().unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && cp -R \"$0/_build\" \"$1/_build\"")
        .arg(one.path())
        .arg(three.path())
        .status()
        .unwrap();
    assert!(status.success());
    let app_three = three.path().join("_build/prod/lib/demo");
    let mode = fs::metadata(app_three.join("ebin/demo.app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "umask applied");
    assert!(pack(&app_three, three.path()).unwrap().bytes == a.bytes);
}

#[test]
fn gnu_tar_and_gzip_see_sorted_entries_owned_by_root_at_a_fixed_time() {
    let (dir, app) = project(true);
    let packed = pack(&app, dir.path()).unwrap();

    // gzip header: no name or other flags, mtime 0, fixed level 9 ("max compression" XFL),
    // OS 255.
    assert_eq!(&packed.bytes[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(packed.bytes[3], 0, "gzip flags (no file name)");
    assert_eq!(&packed.bytes[4..8], &[0, 0, 0, 0], "gzip mtime");
    assert_eq!(packed.bytes[8], 2, "gzip XFL for level 9");
    assert_eq!(packed.bytes[9], 255, "gzip OS");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("demo.tar.gz");
    fs::write(&file, &packed.bytes).unwrap();
    let gzip = Command::new("gzip").arg("-t").arg(&file).output().unwrap();
    assert!(gzip.status.success(), "gzip -t failed");

    let listing = gnu_tar(&["--full-time", "-tvzf"], &packed.bytes);
    let mut names = Vec::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [perms, owner, _size, date, time, name] = fields[..] else {
            panic!("unexpected tar line {line:?}");
        };
        assert_eq!(owner, "0/0", "{line}");
        assert_eq!((date, time), ("1980-01-01", "00:00:00"), "{line}");
        if let Some(dir) = name.strip_suffix('/') {
            assert_eq!(perms, "drwxr-xr-x", "{line}");
            names.push(dir.to_string());
        } else if name == "priv/run.sh" {
            assert_eq!(perms, "-rwxr-xr-x", "{line}");
            names.push(name.to_string());
        } else {
            assert_eq!(perms, "-rw-r--r--", "{line}");
            names.push(name.to_string());
        }
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted by path bytes");
    assert_eq!(names[0], "ebin");
    assert!(names.contains(&"priv/empty".to_string()));
    assert!(names.contains(&format!("priv/{}", long_name())));
    assert!(!names
        .iter()
        .any(|n| n.starts_with(".mix") || n.starts_with("consolidated")));
    assert_eq!(
        ARTIFACT_MTIME, 315_532_800,
        "1980-01-01T00:00:00Z, as tar shows"
    );

    // GNU tar extracts the same tree precomp unpacks.
    let by_tar = tmp.path().join("by_tar");
    fs::create_dir(&by_tar).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&file)
        .arg("-C")
        .arg(&by_tar)
        .output()
        .unwrap();
    assert!(out.status.success());
    let by_us = tmp.path().join("by_us");
    unpack(&packed.bytes, &by_us).unwrap();
    let (tar_tree, our_tree) = (snapshot(&by_tar), snapshot(&by_us));
    assert_eq!(
        tar_tree.iter().map(|(k, v)| (k, &v.0)).collect::<Vec<_>>(),
        our_tree.iter().map(|(k, v)| (k, &v.0)).collect::<Vec<_>>()
    );
}

#[test]
fn symlinked_directories_and_files_are_packed_as_real_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // erlang.mk style: ebin itself is a symlink into deps/.
    write(
        &root.join("deps/cowlib/ebin/cowlib.app"),
        b"{application,cowlib,[]}.",
        0o644,
        5,
    );
    write(
        &root.join("deps/cowlib/ebin/cow_http.beam"),
        b"beam",
        0o644,
        5,
    );
    write(&root.join("deps/cowlib/priv/data.txt"), b"data", 0o644, 5);
    write(&root.join("shared/assets/logo.svg"), b"<svg/>", 0o644, 5);
    symlink(
        "../../../shared/assets",
        root.join("deps/cowlib/priv/assets"),
    )
    .unwrap();
    symlink("data.txt", root.join("deps/cowlib/priv/alias.txt")).unwrap();
    let app = root.join("_build/prod/lib/cowlib");
    fs::create_dir_all(&app).unwrap();
    symlink("../../../../deps/cowlib/ebin", app.join("ebin")).unwrap();
    symlink(root.join("deps/cowlib/priv"), app.join("priv")).unwrap();

    let packed = pack(&app, root).unwrap();
    let paths: Vec<&str> = packed.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "ebin/cow_http.beam",
            "ebin/cowlib.app",
            "priv/alias.txt",
            "priv/assets/logo.svg",
            "priv/data.txt"
        ]
    );
    let listing = gnu_tar(&["-tvzf"], &packed.bytes);
    assert!(
        listing
            .lines()
            .all(|l| l.starts_with('-') || l.starts_with('d')),
        "only files and directories:\n{listing}"
    );
    let out = dir.path().join("out");
    unpack(&packed.bytes, &out).unwrap();
    let tree = snapshot(&out);
    assert_eq!(tree["priv/alias.txt"].0.as_deref(), Some(&b"data"[..]));
    assert_eq!(tree["priv/assets"].0, None);
    assert_eq!(
        tree["priv/assets/logo.svg"].0.as_deref(),
        Some(&b"<svg/>"[..])
    );
    assert_eq!(tree["ebin"].1, 0o755);
}

#[test]
fn links_leaving_the_project_and_special_files_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("secret"), b"s", 0o644, 0);

    let setup = || {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("_build/prod/lib/demo");
        write(&app.join("ebin/demo.app"), b"{}", 0o644, 0);
        fs::create_dir_all(app.join("priv")).unwrap();
        (dir, app)
    };

    // A top-level link out of the project.
    let (dir, app) = setup();
    fs::remove_dir(app.join("priv")).unwrap();
    symlink(outside.path(), app.join("priv")).unwrap();
    let err = pack(&app, dir.path()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::LinkEscapes { ref path, .. } if path == "priv"),
        "{err}"
    );
    assert!(err.to_string().contains("outside"), "{err}");

    // A relative link climbing out of the project to a file that exists beside it.
    let scratch = tempfile::tempdir().unwrap();
    let project = scratch.path().join("project");
    let app = project.join("_build/prod/lib/demo");
    write(&app.join("ebin/demo.app"), b"{}", 0o644, 0);
    write(&scratch.path().join("outside/secret"), b"s", 0o644, 0);
    fs::create_dir_all(app.join("priv/sub")).unwrap();
    symlink(
        "../../../../../../../outside/secret",
        app.join("priv/sub/up"),
    )
    .unwrap();
    assert_eq!(fs::read(app.join("priv/sub/up")).unwrap(), b"s");
    let err = pack(&app, &project).unwrap_err();
    assert!(
        matches!(err, ArtifactError::LinkEscapes { ref path, .. } if path == "priv/sub/up"),
        "{err}"
    );
    let (dir, app) = setup();
    symlink(outside.path().join("secret"), app.join("priv/abs")).unwrap();
    let err = pack(&app, dir.path()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::LinkEscapes { ref path, .. } if path == "priv/abs"),
        "{err}"
    );

    // The link root itself bounds links: an app-local link is fine only inside it.
    let (dir, app) = setup();
    symlink("../ebin", app.join("priv/ebin_again")).unwrap();
    assert!(pack(&app, dir.path()).is_ok());
    let err = pack(&app, &app.join("priv")).unwrap_err();
    assert!(matches!(err, ArtifactError::LinkEscapes { .. }), "{err}");

    // Dangling link.
    let (dir, app) = setup();
    symlink("nowhere", app.join("priv/dangling")).unwrap();
    let err = pack(&app, dir.path()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::LinkUnresolvable { ref path, .. } if path == "priv/dangling"),
        "{err}"
    );

    // Cycle.
    let (dir, app) = setup();
    fs::create_dir(app.join("priv/sub")).unwrap();
    symlink("..", app.join("priv/sub/loop")).unwrap();
    let err = pack(&app, dir.path()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::LinkCycle { ref path, .. } if path == "priv/sub/loop"),
        "{err}"
    );

    // A fifo.
    let (dir, app) = setup();
    let status = Command::new("mkfifo")
        .arg(app.join("priv/pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = pack(&app, dir.path()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::SpecialFile { ref path, kind: "fifo" } if path == "priv/pipe"),
        "{err}"
    );

    // No ebin: not a built app.
    let (dir, app) = setup();
    fs::remove_dir_all(app.join("ebin")).unwrap();
    assert!(matches!(
        pack(&app, dir.path()),
        Err(ArtifactError::NoEbin { .. })
    ));

    // priv that is a file.
    let (dir, app) = setup();
    fs::remove_dir(app.join("priv")).unwrap();
    write(&app.join("priv"), b"", 0o644, 0);
    assert!(matches!(
        pack(&app, dir.path()),
        Err(ArtifactError::TopLevelNotDirectory { .. })
    ));
}

#[test]
fn elf_objects_make_native_code() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("_build/prod/lib/nif");
    write(
        &app.join("ebin/nif.app"),
        b"{application,nif,[]}.",
        0o644,
        0,
    );
    let plain = pack(&app, dir.path()).unwrap();
    assert!(!plain.native_code);

    let so = app.join("priv/nif.so");
    fs::create_dir_all(so.parent().unwrap()).unwrap();
    let source = dir.path().join("nif.c");
    fs::write(&source, "int precomp_answer(void) { return 42; }\n").unwrap();
    let compiled = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    if !compiled {
        fs::copy("/bin/true", &so).unwrap();
    }
    assert_eq!(&fs::read(&so).unwrap()[..4], b"\x7fELF");
    let native = pack(&app, dir.path()).unwrap();
    assert!(native.native_code);
    assert!(native
        .files
        .iter()
        .any(|f| f.path == "priv/nif.so" && f.executable));
    check(&native.bytes, &native.output()).unwrap();

    // The manifest must say so.
    let mut output = native.output();
    output.native_code = false;
    let err = check(&native.bytes, &output).unwrap_err();
    assert!(
        matches!(err, ArtifactError::NativeCodeMismatch { actual: true }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Unpacking

#[test]
fn unpack_writes_the_recorded_files_and_modes() {
    let (dir, app) = project(true);
    let packed = pack(&app, dir.path()).unwrap();
    let dest = dir.path().join("install/_build/prod/lib/demo");
    let files = unpack(&packed.bytes, &dest).unwrap();
    assert_eq!(files, packed.files);
    let tree = snapshot(&dest);
    for (path, contents, executable) in app_files() {
        let (data, mode) = &tree[&path];
        assert_eq!(data.as_deref(), Some(contents.as_slice()), "{path}");
        assert_eq!(*mode, if executable { 0o755 } else { 0o644 }, "{path}");
    }
    for (path, (data, mode)) in &tree {
        if data.is_none() {
            assert_eq!(*mode, 0o755, "{path}");
        }
    }
    assert_eq!(tree["priv/empty"], (None, 0o755));
    assert!(!tree.contains_key(".mix"));
    assert_eq!(
        fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // No staging directory is left behind.
    let siblings: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
    assert_eq!(siblings.len(), 1);

    // The destination must not exist.
    let err = unpack(&packed.bytes, &dest).unwrap_err();
    assert!(matches!(err, ArtifactError::Destination { .. }), "{err}");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(
        unpack(&packed.bytes, &empty),
        Err(ArtifactError::Destination { .. })
    ));
}

/// A hand-made tar.gz; `name` bytes go into the header as they are, so it can hold what the
/// tar crate's path setters refuse.
struct Crafted {
    builder: tar::Builder<Vec<u8>>,
}

impl Crafted {
    fn new() -> Crafted {
        Crafted {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn entry(mut self, name: &str, kind: EntryType, mode: u32, data: &[u8], link: &str) -> Crafted {
        let mut header = Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(ARTIFACT_MTIME);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn dir(self, name: &str) -> Crafted {
        self.entry(name, EntryType::Directory, 0o755, b"", "")
    }

    fn file(self, name: &str, data: &[u8]) -> Crafted {
        self.entry(name, EntryType::Regular, 0o644, data, "")
    }

    fn gz(self) -> Vec<u8> {
        let tar = self.builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }
}

#[test]
fn unpack_refuses_crafted_archives() {
    let ok = Crafted::new().dir("ebin/").file("ebin/a.beam", b"a").gz();
    assert_eq!(list(&ok).unwrap(), vec![record("ebin/a.beam", b"a", false)]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "parent component",
            Crafted::new()
                .dir("ebin/")
                .file("ebin/../../evil", b"x")
                .gz(),
            "`..`",
        ),
        (
            "absolute path",
            Crafted::new()
                .dir("ebin/")
                .file("/tmp/precomp-evil", b"x")
                .gz(),
            "absolute",
        ),
        (
            "symlink",
            Crafted::new()
                .dir("ebin/")
                .entry("ebin/link", EntryType::Symlink, 0o777, b"", "/etc/passwd")
                .gz(),
            "link",
        ),
        (
            "hard link",
            Crafted::new()
                .dir("ebin/")
                .file("ebin/a", b"a")
                .entry("ebin/b", EntryType::Link, 0o644, b"", "ebin/a")
                .gz(),
            "link",
        ),
        (
            "fifo",
            Crafted::new()
                .dir("ebin/")
                .entry("ebin/fifo", EntryType::Fifo, 0o644, b"", "")
                .gz(),
            "entry type",
        ),
        (
            "outside the top-level directories",
            Crafted::new().dir("src/").file("src/x.erl", b"x").gz(),
            "top-level",
        ),
        (
            "top-level file",
            Crafted::new().file("ebin", b"x").gz(),
            "must be a directory",
        ),
        (
            "no directory entry first",
            Crafted::new().dir("ebin/").file("ebin/sub/x", b"x").gz(),
            "no entry before it",
        ),
        (
            "out of order",
            Crafted::new()
                .dir("ebin/")
                .file("ebin/b", b"b")
                .file("ebin/a", b"a")
                .gz(),
            "sorted",
        ),
        (
            "duplicate",
            Crafted::new()
                .dir("ebin/")
                .file("ebin/a", b"a")
                .file("ebin/a", b"b")
                .gz(),
            "sorted",
        ),
        (
            "odd mode",
            Crafted::new()
                .dir("ebin/")
                .entry("ebin/a", EntryType::Regular, 0o4755, b"a", "")
                .gz(),
            "mode",
        ),
        (
            "dot component",
            Crafted::new().dir("ebin/").file("ebin/./a", b"a").gz(),
            "`.`",
        ),
    ];
    let scratch = tempfile::tempdir().unwrap();
    for (what, bytes, needle) in cases {
        let err = list(&bytes).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{what}: {err} (wanted {needle:?})"
        );
        let dest = scratch.path().join("lib/demo");
        let err = unpack(&bytes, &dest).unwrap_err();
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert!(!dest.exists(), "{what}: destination was created");
        assert_eq!(
            fs::read_dir(scratch.path().join("lib")).unwrap().count(),
            0,
            "{what}: staging left behind"
        );
    }
    assert!(!scratch.path().join("evil").exists());
    assert!(!Path::new("/tmp/precomp-evil").exists());

    // Data after the gzip stream, a corrupt stream, a header claiming more than the bound.
    let mut trailing = ok.clone();
    trailing.extend_from_slice(b"junk");
    assert!(list(&trailing)
        .unwrap_err()
        .to_string()
        .contains("follow the gzip stream"));
    let mut corrupt = ok.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x55;
    assert!(matches!(
        list(&corrupt),
        Err(ArtifactError::Malformed { .. } | ArtifactError::BadEntry { .. })
    ));
    let mut header = Header::new_ustar();
    header.set_path("ebin/").unwrap();
    header.set_entry_type(EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_cksum();
    let mut big = Header::new_ustar();
    big.set_path("ebin/huge").unwrap();
    big.set_entry_type(EntryType::Regular);
    big.set_mode(0o644);
    big.set_size(MAX_CONTENT_SIZE + 1);
    big.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(big.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let err = list(&gz.finish().unwrap()).unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Checking against a manifest

#[test]
fn check_names_the_first_difference() {
    let (dir, app) = project(false);
    let original = pack(&app, dir.path()).unwrap();
    let output = original.output();
    check(&original.bytes, &output).unwrap();

    // One byte flipped in one file.
    let beam = app.join("ebin/demo_sup.beam");
    let mut data = fs::read(&beam).unwrap();
    data[2] ^= 0xff;
    fs::write(&beam, &data).unwrap();
    let changed = pack(&app, dir.path()).unwrap();
    let err = check(&changed.bytes, &output).unwrap_err();
    assert!(
        matches!(err, ArtifactError::FileMismatch { ref path, what: "SHA-256", .. } if path == "ebin/demo_sup.beam"),
        "{err}"
    );
    assert!(err.to_string().contains("ebin/demo_sup.beam"), "{err}");

    // A file gone, a file added, an executable bit changed.
    fs::remove_file(app.join("include/demo.hrl")).unwrap();
    let err = check(&pack(&app, dir.path()).unwrap().bytes, &changed.output()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::FileMissing { ref path } if path == "include/demo.hrl"),
        "{err}"
    );
    write(&app.join("include/demo.hrl"), b"-define(X, 1).\n", 0o644, 0);
    write(&app.join("ebin/extra.beam"), b"extra", 0o644, 0);
    let err = check(&pack(&app, dir.path()).unwrap().bytes, &changed.output()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::FileUnexpected { ref path } if path == "ebin/extra.beam"),
        "{err}"
    );
    fs::remove_file(app.join("ebin/extra.beam")).unwrap();
    fs::set_permissions(app.join("ebin/demo.app"), fs::Permissions::from_mode(0o755)).unwrap();
    let err = check(&pack(&app, dir.path()).unwrap().bytes, &changed.output()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::FileMismatch { ref path, what: "mode", .. } if path == "ebin/demo.app"),
        "{err}"
    );

    // Same files, different digest or size in the manifest.
    let mut wrong = original.output();
    wrong.artifact_sha256[0] ^= 1;
    let err = check(&original.bytes, &wrong).unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::DigestMismatch {
                files_match: true,
                ..
            }
        ),
        "{err}"
    );
    let mut wrong = original.output();
    wrong.artifact_size += 1;
    assert!(matches!(
        check(&original.bytes, &wrong),
        Err(ArtifactError::SizeMismatch { .. })
    ));

    // A byte flipped in the compressed stream is caught too.
    let mut flipped = original.bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    assert!(check(&flipped, &output).is_err());
}
