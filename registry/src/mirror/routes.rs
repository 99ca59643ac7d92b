//! The paths the mirror answers, parsed and validated before anything touches the store or
//! upstream (hexpm/specifications endpoints.md; `../shared/design/hex-protocol.md` §1).

use std::fmt;

/// A request path, understood.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Names,
    Versions,
    Package(String),
    Tarball {
        name: String,
        version: String,
    },
    Docs {
        name: String,
        version: String,
    },
    PublicKey,
    /// `/installs/...`: Hex and Rebar installers for `mix local.hex` / `mix local.rebar`.
    Installs(String),
    Healthz,
    Metrics,
}

impl Route {
    /// Parses a request path. Leading, trailing and repeated slashes are tolerated (Mix's
    /// `HEX_MIRROR=http://m/` yields `//packages/x`), percent-escapes decoded, `+` kept.
    pub fn parse(raw_path: &str) -> Option<Route> {
        // Every request of the mirror comes through here: no allocation for a path without
        // escapes and with at most `MAX_SEGMENTS` segments (every Hex path has 1–3).
        const MAX_SEGMENTS: usize = 8;
        let decoded = percent_decode(raw_path)?;
        let mut segments = [""; MAX_SEGMENTS];
        let mut count = 0;
        for segment in decoded.split('/').filter(|s| !s.is_empty()) {
            if count == MAX_SEGMENTS {
                let all: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
                return Route::from_segments(&all);
            }
            segments[count] = segment;
            count += 1;
        }
        Route::from_segments(&segments[..count])
    }

    /// The route of a path already split into its non-empty, percent-decoded segments (as
    /// the server's router hands them over): the same validation as [`Route::parse`].
    pub fn from_segments(segments: &[&str]) -> Option<Route> {
        if segments
            .iter()
            .any(|s| *s == "." || *s == ".." || s.is_empty())
        {
            return None;
        }
        match segments {
            ["names"] => Some(Route::Names),
            ["versions"] => Some(Route::Versions),
            ["public_key"] => Some(Route::PublicKey),
            ["healthz"] => Some(Route::Healthz),
            ["metrics"] => Some(Route::Metrics),
            ["packages", name] if valid_name(name) => Some(Route::Package(name.to_string())),
            ["tarballs", file] => {
                let (name, version) = split_release(file.strip_suffix(".tar")?)?;
                Some(Route::Tarball { name, version })
            }
            ["docs", file] => {
                let (name, version) = split_release(file.strip_suffix(".tar.gz")?)?;
                Some(Route::Docs { name, version })
            }
            ["installs", rest @ ..]
                if !rest.is_empty() && rest.iter().all(|s| valid_install_segment(s)) =>
            {
                Some(Route::Installs(rest.join("/")))
            }
            _ => None,
        }
    }

    /// The object's path in the repository and in the store, without a leading slash.
    pub fn object_path(&self) -> String {
        match self {
            Route::Names => "names".into(),
            Route::Versions => "versions".into(),
            Route::Package(name) => format!("packages/{name}"),
            Route::Tarball { name, version } => format!("tarballs/{name}-{version}.tar"),
            Route::Docs { name, version } => format!("docs/{name}-{version}.tar.gz"),
            Route::PublicKey => "public_key".into(),
            Route::Installs(rest) => format!("installs/{rest}"),
            Route::Healthz => "healthz".into(),
            Route::Metrics => "metrics".into(),
        }
    }

    /// A low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Names => "names",
            Route::Versions => "versions",
            Route::Package(_) => "packages",
            Route::Tarball { .. } => "tarballs",
            Route::Docs { .. } => "docs",
            Route::PublicKey => "public_key",
            Route::Installs(_) => "installs",
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
        }
    }

    /// `Cache-Control` as hex.pm sets it (hexpm registry_builder.ex, assets.ex).
    pub fn cache_control(&self) -> &'static str {
        match self {
            Route::Names | Route::Versions | Route::Package(_) => "public, max-age=3600",
            Route::Tarball { .. } => "public, max-age=604800",
            Route::Docs { .. } => "public, max-age=86400",
            Route::PublicKey | Route::Installs(_) => "public, max-age=3600",
            Route::Healthz | Route::Metrics => "no-store",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.object_path())
    }
}

/// Hex package names ([`precomp_proto::registry::is_package_name`]).
pub fn valid_name(name: &str) -> bool {
    precomp_proto::registry::is_package_name(name)
}

/// `NAME-VERSION`: names hold no `-`, so the first one separates them; the version must be
/// SemVer (pre-release and `+` build metadata included).
fn split_release(stem: &str) -> Option<(String, String)> {
    let (name, version) = stem.split_once('-')?;
    (valid_name(name) && semver::Version::parse(version).is_ok())
        .then(|| (name.to_string(), version.to_string()))
}

fn valid_install_segment(segment: &str) -> bool {
    segment.len() <= 128
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
fn percent_decode(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hex_paths() {
        assert_eq!(Route::parse("/names"), Some(Route::Names));
        assert_eq!(
            Route::parse("//packages/jason"),
            Some(Route::Package("jason".into()))
        );
        assert_eq!(
            Route::parse("/packages/jason/"),
            Some(Route::Package("jason".into()))
        );
        assert_eq!(
            Route::parse("/tarballs/cowboy-2.10.0.tar"),
            Some(Route::Tarball {
                name: "cowboy".into(),
                version: "2.10.0".into()
            })
        );
        assert_eq!(
            Route::parse("/tarballs/a_b-1.0.0-rc.1+build-7.tar"),
            Some(Route::Tarball {
                name: "a_b".into(),
                version: "1.0.0-rc.1+build-7".into()
            })
        );
        assert_eq!(
            Route::parse("/tarballs/x-1.0.0%2Bb.tar"),
            Some(Route::Tarball {
                name: "x".into(),
                version: "1.0.0+b".into()
            })
        );
        assert_eq!(
            Route::parse("/docs/jason-1.4.0.tar.gz"),
            Some(Route::Docs {
                name: "jason".into(),
                version: "1.4.0".into()
            })
        );
        assert_eq!(
            Route::parse("/installs/1.14.0/hex-2.0.6.ez"),
            Some(Route::Installs("1.14.0/hex-2.0.6.ez".into()))
        );
    }

    #[test]
    fn refuses_everything_else() {
        for path in [
            "/",
            "/packages",
            "/packages/Jason",
            "/packages/../names",
            "/packages/a%2F..%2Fb",
            "/tarballs/jason.tar",
            "/tarballs/jason-1.0.tar",
            "/tarballs/jason-1.0.0.tgz",
            "/installs/../../etc/passwd",
            "/installs",
            "/repos/acme/names",
            "/names%",
            "/names%zz",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }
}
