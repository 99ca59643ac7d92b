//! Images from a registry, over the OCI distribution API, with `oci-client`: anonymous, Basic
//! and bearer-token authentication (the client answers the registry's `WWW-Authenticate`
//! challenge), manifests and blobs checked against their digests. Plain HTTP only for a
//! registry on loopback, as Docker treats `localhost`: HTTPS is tried first there too.

use std::io::Write as _;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::source::{check_descriptor, Blob, Source, Top, Verifier, MAX_MANIFEST_BYTES};
use super::{Credentials, ImportError};

/// Media types asked for when pulling a manifest: OCI and Docker, images and indexes.
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

pub(super) struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    with_credentials: Option<String>,
    runtime: tokio::runtime::Runtime,
    scheme: &'static str,
}

impl Registry {
    pub(super) fn open(
        reference: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Registry, ImportError> {
        let reference: Reference = reference.parse().map_err(|e| {
            ImportError::BadReference(format!(
                "{reference:?} is not an image reference ({e}): write REGISTRY/NAME:TAG or \
                 REGISTRY/NAME@sha256:DIGEST"
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ImportError::io("a tokio runtime", e))?;
        let registry = reference.resolve_registry().to_string();
        let scheme = if is_loopback(&registry) {
            runtime.block_on(loopback_scheme(&registry))
        } else {
            "https"
        };
        let protocol = if scheme == "http" {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            // Platforms are chosen by our own code, which says what an index offers.
            platform_resolver: None,
            ..Default::default()
        });
        let (auth, with_credentials) = match credentials {
            Some(c) => (
                RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                Some(c.username.clone()),
            ),
            None => (RegistryAuth::Anonymous, None),
        };
        Ok(Registry {
            client,
            reference,
            auth,
            with_credentials,
            runtime,
            scheme,
        })
    }

    /// `Registry/name` of the reference, for messages.
    fn repository(&self) -> String {
        format!(
            "{}://{}/{}",
            self.scheme,
            self.reference.resolve_registry(),
            self.reference.repository()
        )
    }

    fn error(&self, error: OciDistributionError) -> ImportError {
        let unauthorized = match &error {
            OciDistributionError::UnauthorizedError { .. } => true,
            OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::RequestError(e) => {
                e.status() == Some(reqwest::StatusCode::UNAUTHORIZED)
            }
            OciDistributionError::ServerError { code, .. } => *code == 401,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Unauthorized)),
            _ => false,
        };
        if unauthorized {
            return ImportError::Unauthorized {
                registry: self.repository(),
                user: self.with_credentials.clone(),
                detail: error.to_string(),
            };
        }
        ImportError::Registry {
            registry: self.repository(),
            detail: error.to_string(),
        }
    }

    fn pull_manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), ImportError> {
        let (bytes, digest) = self
            .runtime
            .block_on(self.client.pull_manifest_raw(reference, &self.auth, ACCEPT))
            .map_err(|e| self.error(e))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ImportError::TooLarge(format!(
                "the manifest is {} bytes (at most {MAX_MANIFEST_BYTES})",
                bytes.len()
            )));
        }
        Ok((bytes, digest))
    }
}

impl Source for Registry {
    fn describe(&self) -> String {
        format!("{}://{}", self.scheme, self.reference.whole())
    }

    fn format(&self) -> &'static str {
        "registry"
    }

    fn top(&mut self) -> Result<Top, ImportError> {
        let (bytes, digest) = self.pull_manifest(&self.reference)?;
        // oci-client checked the bytes against the reference's digest and the registry's
        // Docker-Content-Digest; check again against what we hash ourselves.
        let actual = super::source::digest_of(&digest, &bytes)?;
        if actual != digest {
            return Err(ImportError::DigestMismatch {
                what: "the manifest".into(),
                expected: digest,
                actual,
            });
        }
        if let Some(pinned) = self.reference.digest() {
            if pinned != digest {
                return Err(ImportError::DigestMismatch {
                    what: "the manifest".into(),
                    expected: pinned.to_string(),
                    actual: digest,
                });
            }
        }
        Ok(Top {
            bytes,
            digest: Some(digest),
        })
    }

    fn manifest(&mut self, blob: &Blob) -> Result<Vec<u8>, ImportError> {
        check_descriptor(blob, MAX_MANIFEST_BYTES)?;
        let reference = self.reference.clone_with_digest(blob.digest.clone());
        let (bytes, _) = self.pull_manifest(&reference)?;
        let mut verifier = Verifier::new(blob)?;
        verifier.update(&bytes)?;
        verifier.finish()?;
        Ok(bytes)
    }

    fn blob_to_file(&mut self, blob: &Blob, dest: &Path, limit: u64) -> Result<(), ImportError> {
        check_descriptor(blob, limit)?;
        let file = std::fs::File::create_new(dest).map_err(|e| ImportError::io(dest, e))?;
        let mut writer = VerifyingWriter {
            file,
            verifier: Verifier::new(blob)?,
            failure: None,
        };
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: blob.size as i64,
            ..Default::default()
        };
        let pulled = self.runtime.block_on(self.client.pull_blob(
            &self.reference,
            &descriptor,
            &mut writer,
        ));
        if let Some(failure) = writer.failure.take() {
            return Err(failure);
        }
        pulled.map_err(|e| match e {
            OciDistributionError::DigestError(d) => ImportError::DigestMismatch {
                what: format!("blob {}", blob.digest),
                expected: blob.digest.clone(),
                actual: d.to_string(),
            },
            other => self.error(other),
        })?;
        writer.verifier.finish()?;
        writer.file.flush().map_err(|e| ImportError::io(dest, e))?;
        Ok(())
    }
}

/// Writes a blob to its file while hashing and counting it; fails as soon as it grows past
/// its descriptor's size.
struct VerifyingWriter {
    file: std::fs::File,
    verifier: Verifier,
    failure: Option<ImportError>,
}

impl tokio::io::AsyncWrite for VerifyingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(error) = self.verifier.update(buf) {
            self.failure = Some(error);
            return Poll::Ready(Err(std::io::Error::other(
                "the blob is larger than it should be",
            )));
        }
        // A local file: writing it in place is fine on this single-purpose runtime.
        Poll::Ready(self.file.write_all(buf).map(|()| buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.file.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Whether `registry` (`host[:port]`) is on this machine: `localhost`, `127.0.0.0/8`, `::1`.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// For a loopback registry: `https` when it answers TLS, else `http` (Docker's rule for
/// `localhost`).
async fn loopback_scheme(registry: &str) -> &'static str {
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build();
    let Ok(probe) = probe else {
        return "http";
    };
    match probe.get(format!("https://{registry}/v2/")).send().await {
        Ok(_) => "https",
        Err(_) => "http",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_registries() {
        for yes in [
            "127.0.0.1:5000",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "127.3.2.1",
        ] {
            assert!(super::is_loopback(yes), "{yes}");
        }
        for no in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.example",
        ] {
            assert!(!super::is_loopback(no), "{no}");
        }
    }
}
