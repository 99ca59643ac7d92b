//! Toolchains from container images (`precomp toolchain import`): the CI image a team already
//! runs, pulled from a registry (OCI distribution API), read from an OCI image layout
//! directory or from a `docker save` archive; its layers applied in order into a root with the
//! safety rules of [`layer`]; stored like a built image under `DATA/toolchains/<digest>/`,
//! where the digest is our tree digest ([`crate::tree`]) and the image's manifest digest is
//! provenance (`toolchain.json` `image`); then OTP, Elixir, rebar3, architecture and libc are
//! read by running them in the sandbox.
//!
//! Nothing is stored unless every blob matched its descriptor (size and digest), every layer
//! its `diff_id`, and the root holds a usable toolchain: everything happens in a staging
//! directory of the store, renamed into place at the end. Importing the same manifest again
//! returns the stored toolchain without pulling its layers (`DATA/toolchains/imports/`).

mod layer;
mod registry;
mod source;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use layer::{Applied, Bounds};
pub use registry::is_loopback;

use super::{set_mode, write_json, Kind, Store, Toolchain};
use crate::error::{Error, Result};
use crate::run::{Sandbox, Status};
use crate::spec::{Limits, Root, Spec, IMAGE_PATH};
use crate::tree;
use source::{Blob, Source, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};

/// What `toolchain import` fetches.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    /// `REGISTRY/NAME:TAG`, `REGISTRY/NAME@sha256:…` (optionally `docker://`), an OCI layout
    /// directory (`oci:DIR[:TAG]`), or an archive (`docker-archive:FILE[:TAG]`,
    /// `oci-archive:FILE[:TAG]`); a path that exists is read as a layout or an archive.
    pub image: String,
    /// For a registry that asks (Basic, or a token service that wants them).
    pub credentials: Option<Credentials>,
    pub bounds: Bounds,
    /// Pull and apply the layers even when this manifest was imported before.
    pub reimport: bool,
}

impl ImportRequest {
    pub fn new(image: impl Into<String>) -> ImportRequest {
        ImportRequest {
            image: image.into(),
            credentials: None,
            bounds: Bounds::default(),
            reimport: false,
        }
    }
}

/// A registry user name and password (or token).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

/// Where an imported toolchain came from (`toolchain.json` `image`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOrigin {
    /// The image as given to `toolchain import`.
    pub reference: String,
    /// `registry`, `oci-layout` or `docker-archive`.
    pub format: String,
    /// Digest of the image manifest used (for this platform); `None` for an old-format
    /// `docker save` archive, which holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Digest of the index (manifest list) the platform was picked from, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Digest of the image configuration: Docker's image id.
    pub config_digest: String,
    /// `linux/amd64`.
    pub platform: String,
    pub layers: usize,
    /// Erlang's `system_architecture`: `x86_64-pc-linux-gnu`.
    pub system_architecture: String,
    /// `glibc 2.36` (`getconf GNU_LIBC_VERSION`), or `glibc`.
    pub libc: String,
    /// `PRETTY_NAME` of the image's os-release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Files and directories whose set-uid or set-gid bit was cleared.
    #[serde(default)]
    pub setid_cleared: u64,
}

/// What [`Store::import`] returns.
#[derive(Clone, Debug)]
pub struct Imported {
    pub toolchain: Toolchain,
    /// True when this manifest was imported before and nothing was pulled.
    pub reused: bool,
    pub elapsed: Duration,
}

/// Why an import failed. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    BadReference(String),

    #[error(
        "{registry} refused access ({detail}): {}",
        match user {
            Some(user) => format!("the credentials of {user:?} were not accepted; check the user \
                                   name and password (--username, --password-stdin)"),
            None => "it wants credentials: give --username and --password-stdin, or log in \
                     with `docker login` so that ~/.docker/config.json has them".into(),
        }
    )]
    Unauthorized {
        registry: String,
        user: Option<String>,
        detail: String,
    },

    #[error("{registry}: {detail}")]
    Registry { registry: String, detail: String },

    #[error(
        "{what} does not match its digest: expected {expected}, got {actual}; nothing was stored"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("blob {digest} should be {expected} bytes, it is {actual}; nothing was stored")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: String,
    },

    #[error("not a usable image: {0}")]
    BadImage(String),

    #[error("{0}")]
    Unsupported(String),

    #[error("the image is too large: {0}")]
    TooLarge(String),

    #[error("refused entry {path:?}: {why}")]
    BadEntry { path: String, why: String },

    #[error("layer {index} of {count} ({digest}): {problem}")]
    Layer {
        index: usize,
        count: usize,
        digest: String,
        problem: Box<ImportError>,
    },

    #[error("reading a layer: {error}")]
    LayerIo { error: std::io::Error },

    #[error(
        "no image for {wanted} in {index}: it has {available}. Builds run the image's binaries \
         natively, so import an image built for this machine's platform"
    )]
    NoPlatform {
        wanted: String,
        index: String,
        available: String,
    },

    #[error("{image} is not a toolchain precomp can use: {why}")]
    NotToolchain { image: String, why: String },

    // `error`, not `source`: the message already says it (anyhow would repeat a source).
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl ImportError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> ImportError {
        ImportError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn layer_io(source: std::io::Error) -> ImportError {
        ImportError::LayerIo { error: source }
    }
}

/// The image argument, split into where to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Registry(String),
    Local { path: PathBuf, tag: Option<String> },
}

fn locate(image: &str) -> Location {
    for prefix in ["oci:", "oci-archive:", "docker-archive:"] {
        if let Some(rest) = image.strip_prefix(prefix) {
            return split_local(rest).unwrap_or(Location::Local {
                path: rest.into(),
                tag: None,
            });
        }
    }
    if let Some(rest) = image.strip_prefix("docker://") {
        return Location::Registry(rest.to_string());
    }
    split_local(image).unwrap_or_else(|| Location::Registry(image.to_string()))
}

/// `PATH` or `PATH:TAG` where `PATH` exists (the shortest existing prefix before a `:`; a tag
/// may hold `:` itself, as `docker-archive:FILE:NAME:TAG` does).
fn split_local(text: &str) -> Option<Location> {
    if Path::new(text).exists() {
        return Some(Location::Local {
            path: text.into(),
            tag: None,
        });
    }
    text.match_indices(':').find_map(|(i, _)| {
        let (path, tag) = (&text[..i], &text[i + 1..]);
        (!path.is_empty() && Path::new(path).exists()).then(|| Location::Local {
            path: path.into(),
            tag: Some(tag.to_string()),
        })
    })
}

/// This machine's platform in OCI terms: (`amd64`, variant).
pub fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

/// Picks this machine's image from an index (OCI index or Docker manifest list).
fn select_platform(index: &[u8], describe: &str) -> Result<Blob, ImportError> {
    let index: oci_spec::image::ImageIndex = serde_json::from_slice(index)
        .map_err(|e| ImportError::BadImage(format!("{describe}: the image index: {e}")))?;
    let (arch, variant) = host_platform();
    let mut available = Vec::new();
    let mut matches = Vec::new();
    for entry in index.manifests() {
        let Some(platform) = entry.platform() else {
            continue;
        };
        let (os, architecture) = (
            platform.os().to_string(),
            platform.architecture().to_string(),
        );
        if os == "unknown" {
            continue; // build attestations (buildx), not images
        }
        let name = match platform.variant() {
            Some(v) => format!("{os}/{architecture}/{v}"),
            None => format!("{os}/{architecture}"),
        };
        available.push(name);
        if os == "linux" && architecture == arch {
            matches.push(entry);
        }
    }
    // An exact variant first, then one without a variant, then any.
    let chosen = matches
        .iter()
        .find(|e| e.platform().as_ref().and_then(|p| p.variant().as_deref()) == variant)
        .or_else(|| {
            matches
                .iter()
                .find(|e| e.platform().as_ref().is_some_and(|p| p.variant().is_none()))
        })
        .or_else(|| matches.first())
        .ok_or_else(|| ImportError::NoPlatform {
            wanted: format!("linux/{arch}"),
            index: describe.to_string(),
            available: if available.is_empty() {
                "no platforms".into()
            } else {
                available.join(", ")
            },
        })?;
    Ok(Blob {
        media_type: chosen.media_type().to_string(),
        digest: chosen.digest().to_string(),
        size: chosen.size(),
    })
}

/// Whether a manifest's JSON is an index (it has `manifests`) rather than an image.
fn is_index(bytes: &[u8]) -> Result<bool, ImportError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| ImportError::BadImage(format!("the manifest is not JSON: {e}")))?;
    if probe.schema_version == Some(1) {
        return Err(ImportError::Unsupported(
            "a Docker schema 1 manifest (deprecated since 2017): push the image again with a \
             current tool"
                .into(),
        ));
    }
    match (probe.manifests.is_some(), probe.layers.is_some()) {
        (true, _) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(ImportError::BadImage(
            "the manifest has neither `manifests` nor `layers`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_located_by_prefix_or_by_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img.tar");
        std::fs::write(&file, b"").unwrap();
        let f = file.display().to_string();
        let local = |path: &str, tag: Option<&str>| Location::Local {
            path: path.into(),
            tag: tag.map(str::to_string),
        };
        assert_eq!(locate(&f), local(&f, None));
        assert_eq!(
            locate(&format!("docker-archive:{f}:ci:1")),
            local(&f, Some("ci:1"))
        );
        assert_eq!(locate(&format!("oci:{f}:t")), local(&f, Some("t")));
        assert_eq!(locate(&format!("{f}:t")), local(&f, Some("t")));
        assert_eq!(
            locate("127.0.0.1:5000/ci/elixir:1.16"),
            Location::Registry("127.0.0.1:5000/ci/elixir:1.16".into())
        );
        assert_eq!(
            locate("docker://elixir:1.16"),
            Location::Registry("elixir:1.16".into())
        );
    }

    #[test]
    fn glibc_architectures_only() {
        assert_eq!(
            debian_architecture("x86_64-pc-linux-gnu"),
            Some(("amd64".into(), "glibc"))
        );
        assert_eq!(
            debian_architecture("aarch64-unknown-linux-gnu"),
            Some(("arm64".into(), "glibc"))
        );
        assert_eq!(debian_architecture("x86_64-alpine-linux-musl"), None);
        assert_eq!(debian_architecture("aarch64-apple-darwin23.1.0"), None);
    }
}

const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// An image resolved to this platform's manifest: what will be pulled.
struct Resolved {
    source: Box<dyn Source>,
    describe: String,
    manifest_digest: Option<String>,
    index_digest: Option<String>,
    config: Blob,
    layers: Vec<Blob>,
}

impl Resolved {
    /// The manifest digest (the config's for an old `docker save` archive): what a re-import
    /// is recognised by.
    fn identity(&self) -> &str {
        self.manifest_digest
            .as_deref()
            .unwrap_or(&self.config.digest)
    }
}

/// What [`unpack`] made.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// The image's root directory.
    pub root: PathBuf,
    /// `registry`, `oci-layout` or `docker-archive`.
    pub format: String,
    pub manifest_digest: Option<String>,
    pub index_digest: Option<String>,
    pub config_digest: String,
    /// `linux/amd64`, from the image config.
    pub platform: String,
    pub layers: usize,
    pub applied: Applied,
}

/// Finds the image, picks this platform's manifest and checks what it names (media types,
/// descriptor sizes) before anything large is fetched.
fn resolve(request: &ImportRequest) -> Result<Resolved, ImportError> {
    let mut source: Box<dyn Source> = match locate(&request.image) {
        Location::Registry(reference) => {
            let credentials = match &request.credentials {
                Some(c) => Some(c.clone()),
                None => docker_config_credentials(&reference),
            };
            Box::new(registry::Registry::open(&reference, credentials.as_ref())?)
        }
        Location::Local { path, tag } => source::open_local(&path, tag)?,
    };
    let describe = source.describe();
    tracing::info!(image = %describe, "resolving");
    let top = source.top()?;
    let (manifest_bytes, manifest_digest, index_digest) = if is_index(&top.bytes)? {
        let chosen = select_platform(&top.bytes, &describe)?;
        let bytes = source.manifest(&chosen)?;
        if is_index(&bytes)? {
            return Err(ImportError::Unsupported(format!(
                "{describe}: an index inside an index ({})",
                chosen.digest
            )));
        }
        (bytes, Some(chosen.digest), top.digest)
    } else {
        (top.bytes, top.digest, None)
    };
    if manifest_bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ImportError::TooLarge("the manifest".into()));
    }
    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| ImportError::BadImage(format!("{describe}: the image manifest: {e}")))?;
    let config = Blob {
        media_type: manifest.config().media_type().to_string(),
        digest: manifest.config().digest().to_string(),
        size: manifest.config().size(),
    };
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(ImportError::BadImage(format!(
            "{describe} is not a container image: its config is {:?} (an artifact, not an image)",
            config.media_type
        )));
    }
    source::check_descriptor(&config, MAX_CONFIG_BYTES)?;
    let layers: Vec<Blob> = manifest
        .layers()
        .iter()
        .map(|d| Blob {
            media_type: d.media_type().to_string(),
            digest: d.digest().to_string(),
            size: d.size(),
        })
        .collect();
    for layer in &layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ImportError::Unsupported(format!(
                "{describe}: layer {} has media type {:?} (foreign and non-distributable layers \
                 are not fetched)",
                layer.digest, layer.media_type
            )));
        }
        source::check_descriptor(layer, request.bounds.max_layer_stream)?;
    }
    let resolved = Resolved {
        source,
        describe,
        manifest_digest,
        index_digest,
        config,
        layers,
    };
    source::parse_digest(resolved.identity())?;
    Ok(resolved)
}

/// Fetches the config and the layers into `dir` (`dir/blobs`, removed at the end) and applies
/// the layers to `dir/root`: each blob checked against its descriptor before it is applied,
/// each layer against its diff_id after.
fn unpack_resolved(
    resolved: &mut Resolved,
    dir: &Path,
    bounds: Bounds,
) -> Result<Unpacked, ImportError> {
    let describe = resolved.describe.clone();
    let blobs = dir.join("blobs");
    std::fs::create_dir(&blobs).map_err(|e| ImportError::io(&blobs, e))?;
    let config_bytes = resolved
        .source
        .blob_bytes(&resolved.config, MAX_CONFIG_BYTES, &blobs)?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImportError::BadImage(format!("{describe}: the image config: {e}")))?;
    let (arch, _) = host_platform();
    let platform = format!("{}/{}", config.os(), config.architecture());
    if platform != format!("linux/{arch}") {
        return Err(ImportError::NoPlatform {
            wanted: format!("linux/{arch}"),
            index: describe,
            available: platform,
        });
    }
    let diff_ids = config.rootfs().diff_ids();
    let count = resolved.layers.len();
    if diff_ids.len() != count {
        return Err(ImportError::BadImage(format!(
            "{describe}: the config lists {} layers, the manifest {count}",
            diff_ids.len(),
        )));
    }
    let root = dir.join("root");
    std::fs::create_dir(&root).map_err(|e| ImportError::io(&root, e))?;
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| ImportError::io(&root, e))?;
    let mut applier = layer::Applier::new(&root, bounds);
    for (index, (layer, diff_id)) in resolved.layers.iter().zip(diff_ids).enumerate() {
        let in_layer = |source: ImportError| ImportError::Layer {
            index: index + 1,
            count,
            digest: layer.digest.clone(),
            problem: Box::new(source),
        };
        tracing::info!(layer = index + 1, of = count, digest = %layer.digest, bytes = layer.size, "layer");
        let file = blobs.join(format!("layer-{index}"));
        resolved
            .source
            .blob_to_file(layer, &file, bounds.max_layer_stream)
            .map_err(in_layer)?;
        let actual = applier.apply_file(&file).map_err(in_layer)?;
        let _ = std::fs::remove_file(&file);
        if format!("sha256:{actual}") != *diff_id {
            return Err(in_layer(ImportError::DigestMismatch {
                what: "the uncompressed layer (its diff_id in the image config)".into(),
                expected: diff_id.clone(),
                actual: format!("sha256:{actual}"),
            }));
        }
    }
    std::fs::remove_dir_all(&blobs).map_err(|e| ImportError::io(&blobs, e))?;
    Ok(Unpacked {
        root,
        format: resolved.source.format().into(),
        manifest_digest: resolved.manifest_digest.clone(),
        index_digest: resolved.index_digest.clone(),
        config_digest: resolved.config.digest.clone(),
        platform,
        layers: count,
        applied: applier.applied.clone(),
    })
}

/// Fetches, verifies and applies an image into the new directory `dir/root`, without storing
/// or running anything: what [`Store::import`] does before it checks the toolchain. On error,
/// `dir` may hold a partial root for the caller to remove.
pub fn unpack(request: &ImportRequest, dir: &Path) -> Result<Unpacked, ImportError> {
    let mut resolved = resolve(request)?;
    unpack_resolved(&mut resolved, dir, request.bounds)
}

pub(super) fn import(
    store: &Store,
    sandbox: &Sandbox,
    request: &ImportRequest,
) -> Result<Imported> {
    let started = Instant::now();
    std::fs::create_dir_all(store.dir()).map_err(|e| Error::io(store.dir(), e))?;
    // The root is checked and used from inside the sandbox.
    sandbox.check_readable(store.dir())?;
    let mut resolved = resolve(request)?;
    let index_file = store
        .dir()
        .join("imports")
        .join(resolved.identity().replace(':', "-"));
    if !request.reimport {
        if let Some(toolchain) = lookup(store, &index_file)? {
            return Ok(Imported {
                toolchain,
                reused: true,
                elapsed: started.elapsed(),
            });
        }
    }
    if !crate::run::is_root() {
        return Err(Error::NeedsRoot);
    }
    let locks = store.dir().join(".locks");
    std::fs::create_dir_all(&locks).map_err(|e| Error::io(&locks, e))?;
    let _lock = super::image::lock(&locks.join(format!(
        "import-{}.lock",
        resolved.identity().replace(':', "-")
    )))?;
    if !request.reimport {
        if let Some(toolchain) = lookup(store, &index_file)? {
            return Ok(Imported {
                toolchain,
                reused: true,
                elapsed: started.elapsed(),
            });
        }
    }
    // Private while blobs are fetched and layers applied; removed on any error.
    let staging = tempfile::Builder::new()
        .prefix(".staging-import-")
        .tempdir_in(store.dir())
        .map_err(|e| Error::io(store.dir(), e))?;
    let unpacked = unpack_resolved(&mut resolved, staging.path(), request.bounds)?;
    // The toolchain is checked by running it, in the sandbox, before anything is stored: the
    // staging directory must be searchable by the sandbox user from here on.
    set_mode(staging.path(), 0o755)?;
    let detected = detect_imported(sandbox, &unpacked.root, &resolved.describe)?;

    let manifest_text = tree::manifest(&unpacked.root)?;
    let digest = manifest_text.digest.clone();
    write_file(&staging.path().join("manifest"), &manifest_text.text)?;
    let dir = store.dir().join(&digest);
    if dir.join("toolchain.json").exists() {
        tracing::info!(%digest, "an identical tree is already stored");
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, &dir).map_err(|e| Error::io(&dir, e))?;
        let toolchain = Toolchain {
            id: digest[..12].to_string(),
            kind: Kind::Imported,
            suite: IMPORTED_SUITE.into(),
            digest: digest.clone(),
            otp: detected.otp,
            otp_full: detected.otp_full,
            elixir: detected.elixir,
            rebar3: detected.rebar3,
            architecture: detected.architecture,
            packages: Default::default(),
            input_key: None,
            recipe_key: None,
            release_sha256: None,
            files: manifest_text.files,
            bytes: manifest_text.bytes,
            root: None,
            rebar3_path: detected.rebar3_path,
            image: Some(ImageOrigin {
                reference: request.image.clone(),
                format: unpacked.format,
                manifest_digest: unpacked.manifest_digest,
                index_digest: unpacked.index_digest,
                config_digest: unpacked.config_digest,
                platform: unpacked.platform,
                layers: unpacked.layers,
                system_architecture: detected.system_architecture,
                libc: detected.libc,
                os: detected.os,
                setid_cleared: unpacked.applied.setid_cleared,
            }),
        };
        write_json(&dir.join("toolchain.json"), &toolchain)?;
    }
    write_file(&index_file, &format!("{digest}\n"))?;
    let toolchain = store
        .load_image(&digest)?
        .expect("the record was just written");
    tracing::info!(id = %toolchain.id, elapsed = ?started.elapsed(), applied = ?unpacked.applied, "imported");
    Ok(Imported {
        toolchain,
        reused: false,
        elapsed: started.elapsed(),
    })
}

/// The `suite` of imported toolchains (they are not Debian suites; `resolve("imported")`
/// gives the newest).
pub const IMPORTED_SUITE: &str = "imported";

fn lookup(store: &Store, index_file: &Path) -> Result<Option<Toolchain>> {
    let Ok(digest) = std::fs::read_to_string(index_file) else {
        return Ok(None);
    };
    store.load_image(digest.trim())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Credentials for `reference`'s registry from Docker's `config.json` (`$DOCKER_CONFIG` or
/// `~/.docker`), `auths` entries only (what `docker login` writes without a credential helper).
fn docker_config_credentials(reference: &str) -> Option<Credentials> {
    use base64::Engine as _;
    let parsed: oci_client::Reference = reference.parse().ok()?;
    let registry = parsed.resolve_registry().to_string();
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let wanted = [
        registry.clone(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        // `docker login` records Docker Hub under its v1 index URL.
        if registry.ends_with("docker.io") {
            "https://index.docker.io/v1/".to_string()
        } else {
            registry.clone()
        },
    ];
    let entry = wanted.iter().find_map(|key| auths.get(key))?;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some(Credentials {
        username: username.into(),
        password: password.into(),
    })
}

/// What running the image's tools told.
struct Detected {
    otp: String,
    otp_full: String,
    system_architecture: String,
    elixir: String,
    rebar3: String,
    rebar3_path: Option<String>,
    architecture: String,
    libc: String,
    os: Option<String>,
}

/// Runs `erl`, `elixir`, `rebar3`, `getconf` and reads `/etc/os-release` in the sandbox on
/// `root`; refuses an image without OTP or Elixir, or whose Erlang is not built for glibc.
fn detect_imported(sandbox: &Sandbox, root: &Path, image: &str) -> Result<Detected> {
    let scratch = crate::scratch_dir("precomp-detect-")?;
    let not_toolchain = |why: String| -> Error {
        ImportError::NotToolchain {
            image: image.to_string(),
            why,
        }
        .into()
    };
    let sees = "the sandbox sees only the image's /usr, /etc, /bin, /sbin and /lib*, with \
                PATH=";
    // Ok(None): the program is not there.
    let run = |command: &[&str]| -> Result<Option<String>> {
        let mut spec = Spec::build(
            Root::Image(root.to_path_buf()),
            scratch.path(),
            command.iter().copied(),
        );
        spec.limits = Limits {
            wall_time: Duration::from_secs(120),
            memory_bytes: 2 << 30,
            processes: 256,
            ..Limits::build()
        };
        let outcome = match sandbox.run(&spec) {
            Ok(outcome) => outcome,
            Err(Error::Exec { .. }) => return Ok(None),
            Err(other) => return Err(other),
        };
        if outcome.status == Status::Exited(127) {
            return Ok(None);
        }
        if outcome.status != Status::Exited(0) {
            return Err(Error::StepFailed {
                step: format!("`{}` in {image}", command.join(" ")),
                status: outcome.status.to_string(),
                output: outcome.output_text(),
            });
        }
        Ok(Some(outcome.stdout.text()))
    };
    let erl = run(&[
        "erl",
        "-noshell",
        "-eval",
        "R = erlang:system_info(otp_release), \
         {ok, V} = file:read_file(filename:join([code:root_dir(), \"releases\", R, \"OTP_VERSION\"])), \
         io:format(\"~s ~s ~s~n\", [R, string:trim(V), erlang:system_info(system_architecture)]), halt().",
    ])?
    .ok_or_else(|| not_toolchain(format!("it has no Erlang/OTP: `erl` was not found ({sees}{IMAGE_PATH})")))?;
    let words: Vec<&str> = erl.split_whitespace().collect();
    let [otp, otp_full, system_architecture] = words.as_slice() else {
        return Err(Error::Detect {
            what: image.to_string(),
            field: "OTP release",
            output: erl,
        });
    };
    let elixir_out = run(&["elixir", "-e", "IO.puts(System.version())"])?.ok_or_else(|| {
        not_toolchain(format!(
            "it has no Elixir: `elixir` was not found ({sees}{IMAGE_PATH})"
        ))
    })?;
    let elixir = elixir_out.trim().to_string();
    if !elixir.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Error::Detect {
            what: image.to_string(),
            field: "Elixir version",
            output: elixir_out,
        });
    }
    let (rebar3, rebar3_path) = match run(&[
        "sh",
        "-c",
        "command -v rebar3 >/dev/null || exit 127; command -v rebar3; rebar3 version",
    ])? {
        Some(out) => {
            let mut lines = out.lines();
            let path = lines.next().unwrap_or("").trim().to_string();
            let version = lines
                .find_map(|l| l.strip_prefix("rebar "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("")
                .to_string();
            (version, (!path.is_empty()).then_some(path))
        }
        None => (String::new(), None),
    };
    let (architecture, libc_family) =
        debian_architecture(system_architecture).ok_or_else(|| {
            not_toolchain(format!(
                "its Erlang is built for {system_architecture}: precomp builds on glibc Linux \
             (Debian, Ubuntu, the official erlang/elixir images), not musl (Alpine) or others \
             yet, because a native artifact's target must say which C library it links"
            ))
        })?;
    let libc = match run(&["getconf", "GNU_LIBC_VERSION"]).ok().flatten() {
        Some(out) if out.trim().starts_with("glibc") => out.trim().to_string(),
        _ => libc_family.to_string(),
    };
    let os = run(&["cat", "/etc/os-release"])
        .ok()
        .flatten()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
    Ok(Detected {
        otp: otp.to_string(),
        otp_full: otp_full.to_string(),
        system_architecture: system_architecture.to_string(),
        elixir,
        rebar3,
        rebar3_path,
        architecture,
        libc,
        os,
    })
}

/// The Debian architecture name for Erlang's `system_architecture` on glibc Linux (what the
/// builder derives a native target from), and the libc family; `None` for anything else.
fn debian_architecture(system_architecture: &str) -> Option<(String, &'static str)> {
    let lower = system_architecture.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('-').collect();
    let (cpu, rest) = parts.split_first()?;
    let abi = rest.last()?;
    if !(rest.contains(&"linux") && abi.starts_with("gnu")) {
        return None;
    }
    let arch = match (*cpu, *abi) {
        ("x86_64", "gnu") => "amd64",
        ("aarch64", "gnu") => "arm64",
        ("arm" | "armv7l", "gnueabihf") => "armhf",
        ("arm", "gnueabi") => "armel",
        ("i386" | "i486" | "i586" | "i686", "gnu") => "i386",
        ("powerpc64le", "gnu") => "ppc64el",
        ("s390x", "gnu") => "s390x",
        ("riscv64", "gnu") => "riscv64",
        _ => return None,
    };
    Some((arch.to_string(), "glibc"))
}
