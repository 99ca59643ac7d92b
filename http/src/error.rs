//! Why a request failed, with the URL and what to do next.

use std::time::Duration;

/// A request that did not give an answer the caller can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{what} URL {url:?}: {reason}")]
    BadUrl {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("{url}: this needs an upload token: pass --token or set PRECOMP_TOKEN (the mirror's operator makes one with `precomp token create --name NAME`)")]
    NoToken { url: String },
    #[error("{url}: {reason}; is {server} running there? (check the URL)")]
    Connect {
        url: String,
        server: &'static str,
        reason: String,
    },
    #[error("{url}: no complete answer within {timeout:?}; {server} may be overloaded or the network slow, try again")]
    Timeout {
        url: String,
        server: &'static str,
        timeout: Duration,
    },
    #[error("{url}: the exchange broke off: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: the token was refused: {message}")]
    Unauthorized { url: String, message: String },
    #[error("{url}: refused without a token: {message} (pass --token or set PRECOMP_TOKEN)")]
    TokenRequired { url: String, message: String },
    #[error("{url}: refused: {message}")]
    Forbidden { url: String, message: String },
    #[error("{url}: refused ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: the answer is over the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: the sha256 of the answer is {actual}, not the {expected} asked for; the server or the network corrupted it: do not use it")]
    Digest {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: the answer is not the JSON docs/protocol.md describes: {reason}; are the server and this precomp the same version?")]
    Json { url: String, reason: String },
    #[error("{url}: {reason}")]
    Sink { url: String, reason: String },
}

impl Error {
    /// The HTTP status of an answer that was an error, if it was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { .. } | Error::TokenRequired { .. } => Some(401),
            Error::Forbidden { .. } => Some(403),
            Error::Refused { status, .. } | Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The URL the failed request was for.
    pub fn url(&self) -> &str {
        match self {
            Error::BadUrl { url, .. }
            | Error::NoToken { url }
            | Error::Connect { url, .. }
            | Error::Timeout { url, .. }
            | Error::Transport { url, .. }
            | Error::Unauthorized { url, .. }
            | Error::TokenRequired { url, .. }
            | Error::Forbidden { url, .. }
            | Error::Refused { url, .. }
            | Error::Status { url, .. }
            | Error::TooLarge { url, .. }
            | Error::Digest { url, .. }
            | Error::Json { url, .. }
            | Error::Sink { url, .. } => url,
        }
    }

    /// Whether the failure may pass by itself (the server or the network, not the request):
    /// what is worth trying again later, after the retries ran out.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::Transport { .. } => true,
            Error::Status { status, .. } => crate::retry::transient_status(*status),
            _ => false,
        }
    }

    /// The error an answer with a failure `status` means (`message`: the start of its body;
    /// `token_sent`: whether the request carried a token, which tells a refused token from a
    /// missing one).
    pub(crate) fn from_status(url: &str, status: u16, message: String, token_sent: bool) -> Error {
        let url = url.to_string();
        match status {
            401 if token_sent => Error::Unauthorized { url, message },
            401 => Error::TokenRequired { url, message },
            403 => Error::Forbidden { url, message },
            400 | 409 | 413 | 422 => Error::Refused {
                url,
                status,
                message,
            },
            status => Error::Status {
                url,
                status,
                message,
            },
        }
    }
}

/// `error` and every cause under it, on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and reqwest often repeat their cause's words; say each once.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
