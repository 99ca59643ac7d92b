//! The Hex registry v2 protobuf messages (proto2), written out as prost structs.
//!
//! Field numbers, labels and packing follow hexpm/specifications `registry/*.proto` (identical to
//! hex_core's `proto/hex_pb_*.proto`). Unknown fields are dropped on decode, which is why the
//! mirror serves upstream bytes verbatim and only decodes them to verify.

/// `signed.proto`: the envelope of every registry resource.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Signed {
    /// The encoded inner message; the signature covers exactly these bytes.
    #[prost(bytes = "vec", required, tag = "1")]
    pub payload: Vec<u8>,
    /// RSA PKCS#1 v1.5 signature over SHA-512 of `payload`.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub signature: Option<Vec<u8>>,
}

/// `names.proto`: every package name in a repository.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Names {
    #[prost(message, repeated, tag = "1")]
    pub packages: Vec<NamesPackage>,
    /// The repository these names belong to; checked against the configured name (origin).
    #[prost(string, required, tag = "2")]
    pub repository: String,
}

/// One entry of [`Names`]. Field 2 (repository) was never used and is deprecated.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamesPackage {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub updated_at: Option<Timestamp>,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, required, tag = "1")]
    pub seconds: i64,
    #[prost(int32, required, tag = "2")]
    pub nanos: i32,
}

/// `versions.proto`: every package with its versions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Versions {
    #[prost(message, repeated, tag = "1")]
    pub packages: Vec<VersionsPackage>,
    #[prost(string, required, tag = "2")]
    pub repository: String,
}

/// One entry of [`Versions`]. Field 4 is deprecated.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionsPackage {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    /// Zero-based indexes into `versions` of retired releases.
    #[prost(int32, repeated, packed = "true", tag = "3")]
    pub retired: Vec<i32>,
    /// Zero-based indexes into `versions` of releases with security advisories.
    #[prost(int32, repeated, packed = "true", tag = "5")]
    pub with_advisories: Vec<i32>,
}

/// `package.proto`: the releases of one package.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Package {
    #[prost(message, repeated, tag = "1")]
    pub releases: Vec<Release>,
    /// Checked against the requested package name (origin).
    #[prost(string, required, tag = "2")]
    pub name: String,
    /// Checked against the configured repository name (origin).
    #[prost(string, required, tag = "3")]
    pub repository: String,
    #[prost(message, repeated, tag = "4")]
    pub advisories: Vec<SecurityAdvisory>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Release {
    #[prost(string, required, tag = "1")]
    pub version: String,
    /// Raw 32-byte SHA-256 of VERSION ‖ metadata.config ‖ contents.tar.gz (deprecated by Hex).
    #[prost(bytes = "vec", required, tag = "2")]
    pub inner_checksum: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub dependencies: Vec<Dependency>,
    #[prost(message, optional, tag = "4")]
    pub retired: Option<RetirementStatus>,
    /// Raw 32-byte SHA-256 of the whole tarball. Required when encoding, optional when decoding.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub outer_checksum: Option<Vec<u8>>,
    #[prost(uint32, repeated, packed = "false", tag = "6")]
    pub advisory_indexes: Vec<u32>,
    #[prost(message, optional, tag = "7")]
    pub published_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Dependency {
    /// The Hex package name.
    #[prost(string, required, tag = "1")]
    pub package: String,
    #[prost(string, required, tag = "2")]
    pub requirement: String,
    #[prost(bool, optional, tag = "3")]
    pub optional: Option<bool>,
    /// The OTP application name; absent when it equals the package name.
    #[prost(string, optional, tag = "4")]
    pub app: Option<String>,
    /// The dependency's repository; absent when it is the same repository.
    #[prost(string, optional, tag = "5")]
    pub repository: Option<String>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RetirementStatus {
    /// A [`RetirementReason`]; unknown values must be tolerated, so this stays an `i32`.
    #[prost(enumeration = "RetirementReason", required, tag = "1")]
    pub reason: i32,
    #[prost(string, optional, tag = "2")]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RetirementReason {
    Other = 0,
    Invalid = 1,
    Security = 2,
    Deprecated = 3,
    Renamed = 4,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SecurityAdvisory {
    #[prost(string, required, tag = "1")]
    pub id: String,
    #[prost(string, required, tag = "2")]
    pub summary: String,
    #[prost(string, required, tag = "3")]
    pub html_url: String,
    #[prost(enumeration = "AdvisorySeverity", optional, tag = "4")]
    pub severity: Option<i32>,
    #[prost(float, optional, tag = "5")]
    pub cvss_score: Option<f32>,
    #[prost(string, required, tag = "6")]
    pub api_url: String,
    #[prost(string, repeated, tag = "7")]
    pub aliases: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AdvisorySeverity {
    None = 0,
    Low = 1,
    Moderate = 2,
    High = 3,
    Critical = 4,
}
