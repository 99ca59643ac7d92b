//! Answering with a stored body, as the mirror's Hex paths and the artifact API both do: a
//! strong ETag (the body's SHA-256), `If-None-Match` answered with 304, HEAD without a body.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use http::{Response, StatusCode};
use http_body_util::Full;

/// `body` with its strong ETag (the quoted hex of `sha256`, its digest): `304 Not Modified`
/// without a body when `headers` carry a matching `If-None-Match` (or `*`), else `200` with
/// `Content-Length` (and no body for HEAD).
pub(crate) fn content(
    body: Bytes,
    sha256: &[u8; 32],
    cache_control: &'static str,
    content_type: &'static str,
    headers: &HeaderMap,
    head: bool,
) -> Response<Full<Bytes>> {
    let etag_bytes = etag(sha256);
    let etag = std::str::from_utf8(&etag_bytes).expect("quotes and hex are ASCII");
    let not_modified = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == etag || tag == "*" || tag.strip_prefix("W/") == Some(etag));
    let size = body.len();
    let mut response = Response::new(Full::new(if head || not_modified {
        Bytes::new()
    } else {
        body
    }));
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

/// Our strong ETag, the same as `ObjectMeta::etag` (the body's sha256 in hex, quoted), written
/// into a stack buffer: every response carries one, and `etag()` allocates three times.
fn etag(sha256: &[u8; 32]) -> [u8; 66] {
    let mut etag = [b'"'; 66];
    hex::encode_to_slice(sha256, &mut etag[1..65]).expect("32 bytes are 64 hex digits");
    etag
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::ObjectMeta;

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
}
