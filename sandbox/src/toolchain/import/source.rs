//! Where an image's manifests and blobs come from — a registry (`registry.rs`), an OCI image
//! layout directory, or a tar archive (`docker save`, skopeo's `docker-archive:` and
//! `oci-archive:`) — and the checks every blob passes before anything uses it: its size and
//! digest against the descriptor that names it, bounded while it is copied.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256, Sha512};

use super::ImportError;

/// Largest manifest or index read (containerd's limit).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image configuration or `docker save` manifest read.
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Most members of an archive indexed.
const MAX_ARCHIVE_MEMBERS: usize = 100_000;

/// What a descriptor says a blob is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blob {
    pub media_type: String,
    /// `sha256:<64 hex>` or `sha512:<128 hex>`.
    pub digest: String,
    pub size: u64,
}

/// The manifest (or index) a source names, and its digest when it has one (a `docker save`
/// archive of the old format holds none: its manifest is made from `manifest.json`).
pub(crate) struct Top {
    pub bytes: Vec<u8>,
    pub digest: Option<String>,
}

pub(crate) trait Source {
    /// Where it comes from, for messages.
    fn describe(&self) -> String;
    /// `registry`, `oci-layout` or `docker-archive`.
    fn format(&self) -> &'static str;
    /// The manifest or index the reference names.
    fn top(&mut self) -> Result<Top, ImportError>;
    /// A manifest an index names, checked against its descriptor.
    fn manifest(&mut self, blob: &Blob) -> Result<Vec<u8>, ImportError>;
    /// Copies a blob into the new file `dest`, checked against its descriptor (at most
    /// `limit` bytes).
    fn blob_to_file(&mut self, blob: &Blob, dest: &Path, limit: u64) -> Result<(), ImportError>;

    /// A small blob (a configuration), checked, in memory.
    fn blob_bytes(
        &mut self,
        blob: &Blob,
        limit: u64,
        scratch: &Path,
    ) -> Result<Vec<u8>, ImportError> {
        let path = scratch.join(format!("blob-{}", blob.digest.replace(':', "-")));
        self.blob_to_file(blob, &path, limit)?;
        let bytes = std::fs::read(&path).map_err(|e| ImportError::io(&path, e))?;
        let _ = std::fs::remove_file(&path);
        Ok(bytes)
    }
}

/// Checks a digest's form (`sha256:` + 64 lowercase hex, or `sha512:` + 128) before it is used
/// as a file name or compared.
pub(crate) fn parse_digest(digest: &str) -> Result<(&str, &str), ImportError> {
    let bad = || ImportError::BadImage(format!("{digest:?} is not a sha256 or sha512 digest"));
    let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != length || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok((algorithm, hex))
}

/// `bytes`' digest with the algorithm of `like` (`sha256:…` or `sha512:…`).
pub(crate) fn digest_of(like: &str, bytes: &[u8]) -> Result<String, ImportError> {
    let (algorithm, _) = parse_digest(like)?;
    Ok(match algorithm {
        "sha512" => format!("sha512:{}", hex::encode(Sha512::digest(bytes))),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
    })
}

/// Refuses a descriptor whose digest is malformed or whose size is past `limit`.
pub(crate) fn check_descriptor(blob: &Blob, limit: u64) -> Result<(), ImportError> {
    parse_digest(&blob.digest)?;
    if blob.size > limit {
        return Err(ImportError::TooLarge(format!(
            "blob {} is {} bytes (at most {limit})",
            blob.digest, blob.size
        )));
    }
    Ok(())
}

/// Hashes and counts a blob as it streams; [`Verifier::update`] fails once it passes its
/// descriptor's size, [`Verifier::finish`] unless size and digest are exactly the descriptor's.
pub(crate) struct Verifier {
    expected: Blob,
    hasher: Hasher,
    seen: u64,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Verifier {
    pub(crate) fn new(blob: &Blob) -> Result<Verifier, ImportError> {
        let (algorithm, _) = parse_digest(&blob.digest)?;
        Ok(Verifier {
            expected: blob.clone(),
            hasher: if algorithm == "sha512" {
                Hasher::Sha512(Sha512::new())
            } else {
                Hasher::Sha256(Sha256::new())
            },
            seen: 0,
        })
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) -> Result<(), ImportError> {
        self.seen += bytes.len() as u64;
        if self.seen > self.expected.size {
            return Err(ImportError::SizeMismatch {
                digest: self.expected.digest.clone(),
                expected: self.expected.size,
                actual: format!("more than {}", self.expected.size),
            });
        }
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<(), ImportError> {
        if self.seen != self.expected.size {
            return Err(ImportError::SizeMismatch {
                digest: self.expected.digest.clone(),
                expected: self.expected.size,
                actual: self.seen.to_string(),
            });
        }
        let actual = match self.hasher {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual != self.expected.digest {
            return Err(ImportError::DigestMismatch {
                what: format!("blob {}", self.expected.digest),
                expected: self.expected.digest,
                actual,
            });
        }
        Ok(())
    }
}

/// Copies `reader` into the new file `dest`, verified against `blob`.
fn copy_verified(mut reader: impl Read, blob: &Blob, dest: &Path) -> Result<(), ImportError> {
    let mut verifier = Verifier::new(blob)?;
    let mut out = File::create_new(dest).map_err(|e| ImportError::io(dest, e))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        // Read at most one byte past the expected size: enough to know it is too long.
        let want = (blob.size + 1 - verifier.seen.min(blob.size)).min(buf.len() as u64) as usize;
        let n = match reader.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImportError::io(dest, e)),
        };
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n])?;
        out.write_all(&buf[..n])
            .map_err(|e| ImportError::io(dest, e))?;
    }
    verifier.finish()
}

/// An opened file and its size.
type Opened<'a> = (Box<dyn Read + 'a>, u64);

/// Files by relative path: a directory, or the members of a tar archive.
trait Files {
    /// The file at `path` (relative, `/`-separated) and its size, if there is one.
    fn open(&self, path: &str) -> Result<Option<Opened<'_>>, ImportError>;
    fn describe(&self) -> String;

    fn read_small(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, ImportError> {
        let Some((reader, size)) = self.open(path)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(ImportError::TooLarge(format!(
                "{path} in {} is {size} bytes (at most {limit})",
                self.describe()
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| ImportError::io(path, e))?;
        Ok(Some(bytes))
    }
}

struct DirFiles(PathBuf);

impl Files for DirFiles {
    fn open(&self, path: &str) -> Result<Option<Opened<'_>>, ImportError> {
        let full = self.0.join(path);
        match File::open(&full) {
            Ok(file) => {
                let meta = file.metadata().map_err(|e| ImportError::io(&full, e))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((Box::new(file), meta.len())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImportError::io(&full, e)),
        }
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// A tar archive's members by name (offset and size of their data), read in place.
struct ArchiveFiles {
    path: PathBuf,
    members: BTreeMap<String, Member>,
}

enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link to another member (`docker save` links identical layers).
    Link(String),
}

impl ArchiveFiles {
    fn index(path: &Path) -> Result<ArchiveFiles, ImportError> {
        let failed = |e: io::Error| ImportError::io(path, e);
        let file = File::open(path).map_err(failed)?;
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut members = BTreeMap::new();
        for entry in archive.entries().map_err(failed)? {
            let entry = entry.map_err(failed)?;
            if members.len() >= MAX_ARCHIVE_MEMBERS {
                return Err(ImportError::TooLarge(format!(
                    "{} has more than {MAX_ARCHIVE_MEMBERS} members",
                    path.display()
                )));
            }
            let name = normalize_member(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let target = if kind.is_symlink() {
                    // Relative to the link's directory.
                    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    normalize_member(&format!("{dir}/{target}"))
                } else {
                    normalize_member(&target)
                };
                Member::Link(target)
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(ArchiveFiles {
            path: path.to_path_buf(),
            members,
        })
    }
}

/// `./a/../b//c` → `b/c`.
fn normalize_member(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

impl Files for ArchiveFiles {
    fn open(&self, path: &str) -> Result<Option<Opened<'_>>, ImportError> {
        let mut name = normalize_member(path);
        for _ in 0..8 {
            match self.members.get(&name) {
                None => return Ok(None),
                Some(Member::Link(target)) => name = target.clone(),
                Some(Member::File { offset, size }) => {
                    let failed = |e: io::Error| ImportError::io(&self.path, e);
                    let mut file = File::open(&self.path).map_err(failed)?;
                    file.seek(SeekFrom::Start(*offset)).map_err(failed)?;
                    return Ok(Some((Box::new(file.take(*size)), *size)));
                }
            }
        }
        Err(ImportError::BadImage(format!(
            "{path} in {}: too many links",
            self.path.display()
        )))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// An OCI image layout (`oci-layout`, `index.json`, `blobs/ALG/HEX`), in a directory or an
/// archive.
pub(crate) struct Layout {
    files: Box<dyn Files>,
    /// `org.opencontainers.image.ref.name` to pick from `index.json`.
    tag: Option<String>,
    format: &'static str,
}

/// `docker save`'s own format: `manifest.json` naming each image's config and layer files.
pub(crate) struct DockerArchive {
    files: ArchiveFiles,
    tag: Option<String>,
    /// Digest → member, filled once the manifest is read.
    blobs: BTreeMap<String, String>,
}

/// Opens a local image: an OCI layout directory, or an archive (`docker save`, `oci-archive`).
pub(crate) fn open_local(path: &Path, tag: Option<String>) -> Result<Box<dyn Source>, ImportError> {
    let meta = std::fs::metadata(path).map_err(|e| ImportError::io(path, e))?;
    if meta.is_dir() {
        let files = DirFiles(path.to_path_buf());
        if files.open("oci-layout")?.is_none() {
            return Err(ImportError::BadImage(format!(
                "{} is not an OCI image layout (it has no oci-layout file)",
                path.display()
            )));
        }
        return Ok(Box::new(Layout {
            files: Box::new(files),
            tag,
            format: "oci-layout",
        }));
    }
    let files = ArchiveFiles::index(path)?;
    if files.members.contains_key("oci-layout") && files.members.contains_key("index.json") {
        // Docker 25+ `docker save` and `oci-archive:` hold an OCI layout.
        return Ok(Box::new(Layout {
            files: Box::new(files),
            tag,
            format: "docker-archive",
        }));
    }
    if files.members.contains_key("manifest.json") {
        return Ok(Box::new(DockerArchive {
            files,
            tag,
            blobs: BTreeMap::new(),
        }));
    }
    Err(ImportError::BadImage(format!(
        "{} is neither a `docker save` archive (no manifest.json) nor an OCI layout archive \
         (no oci-layout and index.json)",
        path.display()
    )))
}

#[derive(Deserialize)]
struct LayoutVersion {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

impl Layout {
    fn blob_path(digest: &str) -> Result<String, ImportError> {
        let (algorithm, hex) = parse_digest(digest)?;
        Ok(format!("blobs/{algorithm}/{hex}"))
    }

    fn read_blob(&self, blob: &Blob, limit: u64) -> Result<Vec<u8>, ImportError> {
        check_descriptor(blob, limit)?;
        let path = Self::blob_path(&blob.digest)?;
        let bytes = self.files.read_small(&path, limit)?.ok_or_else(|| {
            ImportError::BadImage(format!(
                "{} has no blob {}",
                self.files.describe(),
                blob.digest
            ))
        })?;
        let mut verifier = Verifier::new(blob)?;
        verifier.update(&bytes)?;
        verifier.finish()?;
        Ok(bytes)
    }
}

impl Source for Layout {
    fn describe(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}", self.files.describe()),
            None => self.files.describe(),
        }
    }

    fn format(&self) -> &'static str {
        self.format
    }

    fn top(&mut self) -> Result<Top, ImportError> {
        let where_ = self.files.describe();
        let version = self
            .files
            .read_small("oci-layout", 4096)?
            .ok_or_else(|| ImportError::BadImage(format!("{where_} has no oci-layout file")))?;
        let version: LayoutVersion = serde_json::from_slice(&version)
            .map_err(|e| ImportError::BadImage(format!("{where_}: oci-layout: {e}")))?;
        if !version.version.starts_with("1.") {
            return Err(ImportError::Unsupported(format!(
                "{where_}: image layout version {}",
                version.version
            )));
        }
        let index_bytes = self
            .files
            .read_small("index.json", MAX_MANIFEST_BYTES)?
            .ok_or_else(|| ImportError::BadImage(format!("{where_} has no index.json")))?;
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(&index_bytes)
            .map_err(|e| ImportError::BadImage(format!("{where_}: index.json: {e}")))?;
        let name_of = |d: &oci_spec::image::Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
        };
        let chosen: Vec<&oci_spec::image::Descriptor> = match &self.tag {
            Some(tag) => index
                .manifests()
                .iter()
                .filter(|d| name_of(d).as_deref() == Some(tag.as_str()))
                .collect(),
            None if index.manifests().len() == 1 => index.manifests().iter().collect(),
            // Several images without a name to pick one: index.json itself is the index to
            // choose a platform from.
            None => {
                return Ok(Top {
                    bytes: index_bytes,
                    digest: None,
                })
            }
        };
        let descriptor = match chosen.as_slice() {
            [one] => *one,
            [] => {
                let names: Vec<String> = index.manifests().iter().filter_map(name_of).collect();
                return Err(ImportError::BadImage(format!(
                    "{where_} has no image named {:?}; it has: {}",
                    self.tag.as_deref().unwrap_or(""),
                    if names.is_empty() {
                        "no names".into()
                    } else {
                        names.join(", ")
                    }
                )));
            }
            _ => {
                return Err(ImportError::BadImage(format!(
                    "{where_} has several images named {:?}",
                    self.tag.as_deref().unwrap_or("")
                )))
            }
        };
        let blob = Blob {
            media_type: descriptor.media_type().to_string(),
            digest: descriptor.digest().to_string(),
            size: descriptor.size(),
        };
        let bytes = self.read_blob(&blob, MAX_MANIFEST_BYTES)?;
        Ok(Top {
            bytes,
            digest: Some(blob.digest),
        })
    }

    fn manifest(&mut self, blob: &Blob) -> Result<Vec<u8>, ImportError> {
        self.read_blob(blob, MAX_MANIFEST_BYTES)
    }

    fn blob_to_file(&mut self, blob: &Blob, dest: &Path, limit: u64) -> Result<(), ImportError> {
        check_descriptor(blob, limit)?;
        let path = Self::blob_path(&blob.digest)?;
        let (reader, _) = self.files.open(&path)?.ok_or_else(|| {
            ImportError::BadImage(format!(
                "{} has no blob {}",
                self.files.describe(),
                blob.digest
            ))
        })?;
        copy_verified(reader, blob, dest)
    }
}

#[derive(Deserialize)]
struct SavedImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl Source for DockerArchive {
    fn describe(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}", self.files.describe()),
            None => self.files.describe(),
        }
    }

    fn format(&self) -> &'static str {
        "docker-archive"
    }

    /// An image manifest made from `manifest.json`: the config named by its digest (the image
    /// id), and each layer by its `diff_id` from the config (the old format's layers are
    /// uncompressed tars, so their digest is their diff_id).
    fn top(&mut self) -> Result<Top, ImportError> {
        let where_ = self.files.describe();
        let bytes = self
            .files
            .read_small("manifest.json", MAX_CONFIG_BYTES)?
            .ok_or_else(|| ImportError::BadImage(format!("{where_} has no manifest.json")))?;
        let images: Vec<SavedImage> = serde_json::from_slice(&bytes)
            .map_err(|e| ImportError::BadImage(format!("{where_}: manifest.json: {e}")))?;
        let tags = |i: &SavedImage| i.repo_tags.clone().unwrap_or_default();
        let chosen: Vec<&SavedImage> = match &self.tag {
            Some(tag) => images
                .iter()
                .filter(|i| {
                    tags(i)
                        .iter()
                        .any(|t| t == tag || t.rsplit_once('/').map(|(_, n)| n) == Some(tag))
                })
                .collect(),
            None => images.iter().collect(),
        };
        let image = match chosen.as_slice() {
            [one] => *one,
            [] => {
                return Err(ImportError::BadImage(format!(
                    "{where_} has no image tagged {:?}; it has: {}",
                    self.tag.as_deref().unwrap_or(""),
                    images.iter().flat_map(tags).collect::<Vec<_>>().join(", ")
                )))
            }
            _ => {
                return Err(ImportError::BadImage(format!(
                    "{where_} holds several images: name one with {where_}:TAG ({})",
                    images.iter().flat_map(tags).collect::<Vec<_>>().join(", ")
                )))
            }
        };
        let config = self
            .files
            .read_small(&image.config, MAX_CONFIG_BYTES)?
            .ok_or_else(|| ImportError::BadImage(format!("{where_} has no {}", image.config)))?;
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        // The file is named after its digest (the image id): `ID.json` or `blobs/sha256/ID`.
        let named = image
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if named.len() == 64 && named.bytes().all(|b| b.is_ascii_hexdigit()) {
            let named = format!("sha256:{named}");
            if named != config_digest {
                return Err(ImportError::DigestMismatch {
                    what: format!("the image config {}", image.config),
                    expected: named,
                    actual: config_digest,
                });
            }
        }
        let parsed: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config)
            .map_err(|e| ImportError::BadImage(format!("{where_}: {}: {e}", image.config)))?;
        let diff_ids = parsed.rootfs().diff_ids();
        if diff_ids.len() != image.layers.len() {
            return Err(ImportError::BadImage(format!(
                "{where_}: the config lists {} layers, manifest.json {}",
                diff_ids.len(),
                image.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (file, diff_id) in image.layers.iter().zip(diff_ids) {
            parse_digest(diff_id)?;
            let (_, size) = self
                .files
                .open(file)?
                .ok_or_else(|| ImportError::BadImage(format!("{where_} has no layer {file}")))?;
            self.blobs.insert(diff_id.clone(), file.clone());
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                "digest": diff_id,
                "size": size,
            }));
        }
        self.blobs
            .insert(config_digest.clone(), image.config.clone());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers,
        });
        Ok(Top {
            bytes: serde_json::to_vec(&manifest).expect("a JSON value"),
            digest: None,
        })
    }

    fn manifest(&mut self, blob: &Blob) -> Result<Vec<u8>, ImportError> {
        Err(ImportError::BadImage(format!(
            "{}: a `docker save` archive has no manifest {}",
            self.files.describe(),
            blob.digest
        )))
    }

    fn blob_to_file(&mut self, blob: &Blob, dest: &Path, limit: u64) -> Result<(), ImportError> {
        check_descriptor(blob, limit)?;
        let member = self.blobs.get(&blob.digest).ok_or_else(|| {
            ImportError::BadImage(format!(
                "{} has no blob {}",
                self.files.describe(),
                blob.digest
            ))
        })?;
        let (reader, _) = self.files.open(member)?.ok_or_else(|| {
            ImportError::BadImage(format!("{} has no {member}", self.files.describe()))
        })?;
        copy_verified(reader, blob, dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_use() {
        let hex = "a".repeat(64);
        assert!(parse_digest(&format!("sha256:{hex}")).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("md5:{hex}"),
            format!("sha256:{hex}0"),
            hex.clone(),
        ] {
            assert!(parse_digest(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verifier_refuses_wrong_size_and_digest() {
        let data = b"hello";
        let blob = Blob {
            media_type: String::new(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(data))),
            size: 5,
        };
        let mut ok = Verifier::new(&blob).unwrap();
        ok.update(data).unwrap();
        ok.finish().unwrap();

        let mut long = Verifier::new(&blob).unwrap();
        assert!(matches!(
            long.update(b"hello!"),
            Err(ImportError::SizeMismatch { .. })
        ));
        let mut short = Verifier::new(&blob).unwrap();
        short.update(b"hell").unwrap();
        assert!(matches!(
            short.finish(),
            Err(ImportError::SizeMismatch { .. })
        ));
        let mut other = Verifier::new(&blob).unwrap();
        other.update(b"jello").unwrap();
        assert!(matches!(
            other.finish(),
            Err(ImportError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn copy_stops_one_byte_past_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let blob = Blob {
            media_type: String::new(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(b"abc"))),
            size: 3,
        };
        // An endless source: the copy must stop, not fill the disk.
        let endless = io::repeat(b'x');
        let error = copy_verified(endless, &blob, &dir.path().join("out")).unwrap_err();
        assert!(matches!(error, ImportError::SizeMismatch { .. }), "{error}");
        assert!(std::fs::metadata(dir.path().join("out")).unwrap().len() <= 3);
    }

    #[test]
    fn archive_member_names_are_normalized() {
        assert_eq!(normalize_member("./a/../b//c"), "b/c");
        assert_eq!(normalize_member("../../x"), "x");
    }
}
