//! What differs between a published artifact and an auditor's rebuild: file by file, and for
//! beams chunk by chunk ([`super::beam`]).

use std::collections::BTreeMap;
use std::path::Path;

use precomp_proto::artifact;
use precomp_proto::manifest::FileRecord;
use precomp_proto::verdict::{
    FileDifference, CHANGED, EXECUTABLE, MAX_EXPLANATION, MAX_FILES, MAX_SUMMARY, ONLY_PUBLISHED,
    ONLY_REBUILT,
};

use super::beam;
use super::AuditError;

/// The files that differ, sorted by path (at most [`MAX_FILES`]). Both artifacts are
/// unpacked (safely, bounded: `proto::artifact::unpack`) under `scratch`, which must exist.
pub fn artifacts(
    published: &[u8],
    rebuilt: &[u8],
    scratch: &Path,
) -> Result<Vec<FileDifference>, AuditError> {
    let published_dir = scratch.join("published");
    let rebuilt_dir = scratch.join("rebuilt");
    let unpack = |bytes: &[u8], dir: &Path, what: &str| {
        artifact::unpack(bytes, dir)
            .map_err(|e| AuditError::Artifact(format!("the {what} artifact: {e}")))
    };
    let published_files = by_path(unpack(published, &published_dir, "published")?);
    let rebuilt_files = by_path(unpack(rebuilt, &rebuilt_dir, "rebuilt")?);
    let mut paths: Vec<&String> = published_files.keys().chain(rebuilt_files.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut differences = Vec::new();
    for path in paths {
        if differences.len() == MAX_FILES {
            break;
        }
        let difference = match (published_files.get(path), rebuilt_files.get(path)) {
            (Some(p), Some(r)) if p.sha256 == r.sha256 && p.executable == r.executable => continue,
            (Some(p), Some(r)) if p.sha256 == r.sha256 => FileDifference {
                change: EXECUTABLE.into(),
                explanation: format!(
                    "the same bytes; executable: published {}, rebuilt {}",
                    p.executable, r.executable
                ),
                ..record(path, Some(p), Some(r))
            },
            (Some(p), Some(r)) => {
                let a = read(&published_dir.join(path))?;
                let b = read(&rebuilt_dir.join(path))?;
                let mut difference = record(path, Some(p), Some(r));
                match (beam::parse(&a), beam::parse(&b)) {
                    (Ok(x), Ok(y)) => {
                        difference.chunks = beam::diff(&x, &y);
                        difference
                            .chunks
                            .truncate(precomp_proto::verdict::MAX_CHUNKS);
                        let ids: Vec<&str> =
                            difference.chunks.iter().map(|c| c.id.as_str()).collect();
                        difference.explanation = if ids.is_empty() {
                            "the same chunks, laid out differently".into()
                        } else {
                            format!("chunks {} differ", ids.join(", "))
                        };
                    }
                    _ => difference.explanation = text_difference(&a, &b),
                }
                difference
            }
            (Some(p), None) => FileDifference {
                explanation: "only in the published artifact".into(),
                ..record(path, Some(p), None)
            },
            (None, Some(r)) => FileDifference {
                explanation: "only in the rebuild".into(),
                ..record(path, None, Some(r))
            },
            (None, None) => unreachable!("the path came from one of them"),
        };
        differences.push(difference);
    }
    Ok(differences)
}

fn by_path(files: Vec<FileRecord>) -> BTreeMap<String, FileRecord> {
    files.into_iter().map(|f| (f.path.clone(), f)).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, AuditError> {
    std::fs::read(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn record(
    path: &str,
    published: Option<&FileRecord>,
    rebuilt: Option<&FileRecord>,
) -> FileDifference {
    FileDifference {
        path: path.to_string(),
        change: match (published, rebuilt) {
            (Some(_), Some(_)) => CHANGED,
            (Some(_), None) => ONLY_PUBLISHED,
            _ => ONLY_REBUILT,
        }
        .into(),
        published_sha256: published.map(|f| f.sha256.clone()).unwrap_or_default(),
        rebuilt_sha256: rebuilt.map(|f| f.sha256.clone()).unwrap_or_default(),
        published_size: published.map_or(0, |f| f.size),
        rebuilt_size: rebuilt.map_or(0, |f| f.size),
        chunks: Vec::new(),
        explanation: String::new(),
    }
}

/// For text files the first differing line, for others the first differing byte.
fn text_difference(published: &[u8], rebuilt: &[u8]) -> String {
    match (as_text(published), as_text(rebuilt)) {
        (Some(a), Some(b)) => {
            let mut lines = a.lines().zip(b.lines()).enumerate();
            match lines.find(|(_, (x, y))| x != y) {
                Some((n, (x, y))) => beam::cut(
                    format!("line {}: published {x:?}, rebuilt {y:?}", n + 1),
                    MAX_EXPLANATION,
                ),
                None => format!(
                    "{} lines published, {} rebuilt",
                    a.lines().count(),
                    b.lines().count()
                ),
            }
        }
        _ => beam::first_byte(published, rebuilt, false),
    }
}

/// `bytes` as text, if it is UTF-8 without control characters other than line breaks and
/// tabs.
fn as_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|text| {
        !text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    })
}

/// One line naming what differs: `ebin/Elixir.X.beam (LitT, Code); ebin/x.app`.
pub fn summary(files: &[FileDifference]) -> String {
    if files.is_empty() {
        return "every file is the same; the archives differ (tar or gzip encoding)".into();
    }
    let parts: Vec<String> = files
        .iter()
        .map(|file| {
            let ids: Vec<&str> = file.chunks.iter().map(|c| c.id.as_str()).collect();
            match (ids.is_empty(), file.change.as_str()) {
                (false, _) => format!("{} ({})", file.path, ids.join(", ")),
                (true, CHANGED) => file.path.clone(),
                (true, change) => format!("{} ({change})", file.path),
            }
        })
        .collect();
    let text = format!(
        "{} file{} differ{}: {}",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        if files.len() == 1 { "s" } else { "" },
        parts.join("; ")
    );
    beam::cut(text.replace(['\n', '\r', '\t'], " "), MAX_SUMMARY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_files_name_the_first_differing_line() {
        assert_eq!(
            text_difference(b"a\nb\n", b"a\nc\n"),
            "line 2: published \"b\", rebuilt \"c\""
        );
        assert!(text_difference(&[0, 1, 2], &[0, 9, 2]).contains("at byte 1"));
    }

    #[test]
    fn the_summary_names_files_and_chunks() {
        let file = FileDifference {
            path: "ebin/Elixir.X.beam".into(),
            change: CHANGED.into(),
            chunks: vec![precomp_proto::verdict::ChunkDifference {
                id: "LitT".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            summary(&[file]),
            "1 file differs: ebin/Elixir.X.beam (LitT)"
        );
        assert!(summary(&[]).contains("archives differ"));
    }
}
