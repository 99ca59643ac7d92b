//! How answers look on the wire, for every route: one-line `text/plain` errors, JSON, stored
//! bodies with their strong ETag; and the one place where domain errors (the mirror's
//! [`Outcome`], the artifact service's [`Refusal`]) become HTTP statuses.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    WWW_AUTHENTICATE,
};
use http::StatusCode;
use precomp_artifacts::Refusal;
use precomp_registry::mirror::{Outcome, Route};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The metrics label of the route that answered, carried on the response to the layer that
/// counts it ([`crate::layers`]).
#[derive(Clone, Copy, Debug)]
pub struct RouteName(pub &'static str);

/// `response`, labelled with its route for the metrics.
pub fn labelled(route: &'static str, mut response: Response) -> Response {
    response.extensions_mut().insert(RouteName(route));
    response
}

/// A one-line `text/plain` answer (`message` and a newline). Anything but 200 is `no-store`.
/// For HEAD, the headers of the GET answer without its body.
pub fn text(status: StatusCode, message: &str, head: bool) -> Response {
    let body = format!("{message}\n");
    let size = body.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    out.insert(CONTENT_LENGTH, HeaderValue::from(size));
    if status != StatusCode::OK {
        out.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A JSON answer.
pub fn json<T: Serialize>(
    status: StatusCode,
    value: &T,
    cache_control: &'static str,
    head: bool,
) -> Response {
    let body = serde_json::to_vec(value).expect("plain data serialises");
    let size = body.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    out.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

/// A JSON answer clients revalidate with its ETag (`no-cache`).
pub fn json_revalidated<T: Serialize>(value: &T, headers: &HeaderMap, head: bool) -> Response {
    let body = serde_json::to_vec(value).expect("plain data serialises");
    let digest: [u8; 32] = Sha256::digest(&body).into();
    content(
        Bytes::from(body),
        &digest,
        crate::routes::REVALIDATE,
        "application/json",
        headers,
        head,
    )
}

/// `body` with its strong ETag (the quoted hex of `sha256`, its digest): `304 Not Modified`
/// without a body when `headers` carry a matching `If-None-Match` (or `*`), else `200` with
/// `Content-Length` (and no body for HEAD).
pub fn content(
    body: Bytes,
    sha256: &[u8; 32],
    cache_control: &'static str,
    content_type: &'static str,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    let size = body.len() as u64;
    stored(
        size,
        sha256,
        cache_control,
        content_type,
        headers,
        head,
        move || Body::from(body),
    )
}

/// A stored body of `size` bytes whose SHA-256 is `sha256`, made by `body` only when it is
/// sent (so a 304 or a HEAD opens nothing): as [`content`].
pub fn stored(
    size: u64,
    sha256: &[u8; 32],
    cache_control: &'static str,
    content_type: &'static str,
    headers: &HeaderMap,
    head: bool,
    body: impl FnOnce() -> Body,
) -> Response {
    let etag_bytes = etag(sha256);
    let etag = std::str::from_utf8(&etag_bytes).expect("quotes and hex are ASCII");
    let not_modified = not_modified(headers, etag);
    let mut response = Response::new(if head || not_modified {
        Body::empty()
    } else {
        body()
    });
    let out = response.headers_mut();
    out.insert(
        ETAG,
        HeaderValue::from_bytes(&etag_bytes).expect("hex is a valid header"),
    );
    out.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    out.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    } else {
        out.insert(CONTENT_LENGTH, HeaderValue::from(size));
    }
    response
}

/// Whether `If-None-Match` names `etag` (strong or weak) or is `*`.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == etag || tag == "*" || tag.strip_prefix("W/") == Some(etag))
}

/// Our strong ETag (the body's sha256 in hex, quoted, as `ObjectMeta::etag`), written into a
/// stack buffer: every response carries one.
pub fn etag(sha256: &[u8; 32]) -> [u8; 66] {
    let mut etag = [b'"'; 66];
    hex::encode_to_slice(sha256, &mut etag[1..65]).expect("32 bytes are 64 hex digits");
    etag
}

/// The mirror's failures: not found (404), upstream failed or sent what failed verification
/// (502), our storage failed (500).
pub fn mirror_failure(route: &Route, outcome: Outcome, head: bool) -> Response {
    match outcome {
        Outcome::NotFound => text(StatusCode::NOT_FOUND, &format!("{route}: not found"), head),
        Outcome::BadGateway(reason) => text(StatusCode::BAD_GATEWAY, &reason, head),
        Outcome::Internal(reason) => text(StatusCode::INTERNAL_SERVER_ERROR, &reason, head),
        Outcome::Found { .. } => unreachable!("a found object is content, not a failure"),
    }
}

/// The artifact service's refusals: the status it names, the message as one line of text;
/// `401` asks for a bearer token.
pub fn refused(refusal: Refusal, head: bool) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = text(status, &refusal.message, head);
    if let Some(seconds) = refusal.retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"precomp\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use precomp_registry::mirror::ObjectMeta;

    #[test]
    fn etag_is_the_quoted_sha256() {
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
        }
        let meta = ObjectMeta {
            sha256,
            size: 0,
            upstream_etag: None,
            checked_at: 0,
        };
        assert_eq!(etag(&sha256).as_slice(), meta.etag().as_bytes());
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let tag = "\"abc\"";
        let mut headers = HeaderMap::new();
        assert!(!not_modified(&headers, tag));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        assert!(not_modified(&headers, tag));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&headers, tag));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"abcd\""));
        assert!(!not_modified(&headers, tag));
    }
}
