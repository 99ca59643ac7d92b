//! Property tests: no input makes `read`, `list_contents` or `unpack_contents` panic, and
//! whatever `unpack_contents` accepts stays inside its destination.

use precomp_testkit::gzip;
use std::fs;
use std::path::Path;

use precomp_proto::tarball::{self, create, list_contents, read, unpack_contents, PackageFile};
use proptest::prelude::*;
use tar::EntryType;

fn raw_entry(
    out: &mut Vec<u8>,
    path: &[u8],
    entry_type: EntryType,
    mode: u32,
    data: &[u8],
    link: &[u8],
) {
    let mut header = tar::Header::new_ustar();
    let path = &path[..path.len().min(100)];
    let link = &link[..link.len().min(100)];
    header.as_old_mut().name[..path.len()].copy_from_slice(path);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_entry_type(entry_type);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// A small valid package with every kind of entry.
fn valid_tarball() -> Vec<u8> {
    let files = [
        PackageFile::file("mix.exs", "defmodule X do end"),
        PackageFile::file("lib/x.ex", "x"),
        PackageFile::executable("priv/run", "#!/bin/sh\n"),
        PackageFile::symlink("priv/alias", "run"),
        PackageFile::file(format!("lib/{}/long.ex", "n".repeat(150)), "y"),
    ];
    create(b"{<<\"name\">>,<<\"x\">>}.\n", &files)
        .unwrap()
        .bytes
}

/// An uncompressed contents tar with directories, files, links and a hard link.
fn valid_inner_tar() -> Vec<u8> {
    let mut t = Vec::new();
    raw_entry(&mut t, b"lib/", EntryType::Directory, 0o755, b"", b"");
    raw_entry(&mut t, b"lib/a.ex", EntryType::Regular, 0o644, b"aaaa", b"");
    raw_entry(&mut t, b"bin/tool", EntryType::Regular, 0o755, b"#!", b"");
    raw_entry(&mut t, b"bin/link", EntryType::Symlink, 0o777, b"", b"tool");
    raw_entry(
        &mut t,
        b"bin/hard",
        EntryType::Link,
        0o644,
        b"",
        b"bin/tool",
    );
    raw_entry(&mut t, b"up", EntryType::Symlink, 0o777, b"", b"lib/../bin");
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// Checks that a successful unpack wrote nothing beside `dest` and that every symlink in it
/// that resolves at all resolves inside it.
fn assert_contained(parent: &Path, dest: &Path) {
    let names: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [dest.file_name().unwrap()],
        "something was written beside dest"
    );
    let real_dest = fs::canonicalize(dest).unwrap();
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.permissions_mode() & 0o7000, 0, "{}", path.display());
            if meta.file_type().is_symlink() {
                if let Ok(real) = fs::canonicalize(&path) {
                    assert!(
                        real.starts_with(&real_dest),
                        "{} -> {}",
                        path.display(),
                        real.display()
                    );
                }
            } else if meta.is_dir() {
                stack.push(path);
            }
        }
    }
}

trait Mode {
    fn permissions_mode(&self) -> u32;
}

impl Mode for fs::Metadata {
    fn permissions_mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        self.permissions().mode()
    }
}

/// Runs everything on `contents_tar_gz`; `list_contents` and `unpack_contents` must agree.
fn exercise_contents(contents_tar_gz: &[u8]) {
    let listed = list_contents(contents_tar_gz);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pkg");
    let unpacked = unpack_contents(contents_tar_gz, &dest);
    match (&listed, &unpacked) {
        (Ok(entries), Ok(summary)) => {
            assert_eq!(entries, &summary.entries);
            assert_contained(dir.path(), &dest);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert!(!dest.exists());
        }
        _ => panic!("list_contents {listed:?} but unpack_contents {unpacked:?}"),
    }
}

/// Entry path components: mostly plain names so that archives get accepted and links get
/// chained, sometimes the tricky ones.
fn path_component() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        20 => prop::sample::select(vec!["a", "b", "c"]),
        1 => prop::sample::select(vec![".", "", ".."]),
    ]
}

/// Link target components: `..` and `.` are common, since that is how links escape.
fn target_component() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "c", "..", "..", ".", ""])
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.01),
        prop::collection::vec(path_component(), 1..4),
    )
        .prop_map(|(absolute, parts)| {
            let joined = parts.join("/");
            if absolute {
                format!("/{joined}")
            } else {
                joined
            }
        })
}

fn target() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.01),
        prop::collection::vec(target_component(), 1..5),
    )
        .prop_map(|(absolute, parts)| {
            let joined = parts.join("/");
            if absolute {
                format!("/{joined}")
            } else {
                joined
            }
        })
}

fn entry_type() -> impl Strategy<Value = EntryType> {
    prop_oneof![
        20 => Just(EntryType::Regular),
        10 => Just(EntryType::Directory),
        20 => Just(EntryType::Symlink),
        5 => Just(EntryType::Link),
        1 => Just(EntryType::Fifo),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Integration tests have no lib.rs next to them for the default regression file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = read(&bytes);
        exercise_contents(&bytes);
        // Random bytes behind a valid gzip layer reach the tar parser.
        exercise_contents(&gzip(&bytes));
    }

    #[test]
    fn mutated_tarballs_never_panic(
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let mut bytes = valid_tarball();
        for (index, value) in &mutations {
            let at = index.index(bytes.len());
            bytes[at] = *value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(tarball) = read(&bytes) {
            prop_assert_eq!(tarball.outer_checksum, tarball::outer_checksum(&bytes));
            exercise_contents(&tarball.contents_tar_gz);
        }
    }

    #[test]
    fn mutated_contents_never_panic(
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let mut tar = valid_inner_tar();
        for (index, value) in &mutations {
            let at = index.index(tar.len());
            tar[at] = *value;
        }
        if let Some(cut) = cut {
            tar.truncate(cut.index(tar.len()));
        }
        exercise_contents(&gzip(&tar));
    }

}

proptest! {
    #![proptest_config(ProptestConfig {
        // Cheap cases, and only about one in seven soups is accepted: run plenty.
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever `unpack_contents` accepts out of random mixes of files, directories,
    /// symlinks and hard links with tricky names and targets stays inside the destination.
    #[test]
    fn random_link_soups_stay_inside(
        entries in prop::collection::vec((path(), entry_type(), target(), 0u32..0o10000), 1..10),
    ) {
        let mut tar = Vec::new();
        for (path, kind, target, mode) in &entries {
            let data: &[u8] = if *kind == EntryType::Regular { b"data" } else { b"" };
            raw_entry(&mut tar, path.as_bytes(), *kind, *mode, data, target.as_bytes());
        }
        tar.extend_from_slice(&[0u8; 1024]);
        exercise_contents(&gzip(&tar));
    }
}
