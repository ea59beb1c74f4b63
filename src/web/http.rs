//! Responses: bodies, JSON, errors, and the headers every response carries.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

/// The page loads nothing from elsewhere and is never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json<T: Serialize>(v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => full(StatusCode::OK, "application/json", b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

pub fn json_status<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let mut r = json(v);
    *r.status_mut() = status;
    r
}

pub fn error(status: StatusCode, message: &str) -> Resp {
    let b = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    full(status, "application/json", b)
}

/// Headers for every response: no caching (the page is live), no sniffing, no framing,
/// nothing loaded from another origin.
pub fn harden(r: &mut Resp) {
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under the latter browsers send `Origin: null`
    // with the page's own form POSTs, which the CSRF check must then refuse.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
}

/// `%40` -> `@`, `+` -> space (in queries); None for bad escapes or non-UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query string's pairs, decoded; bad pairs are dropped.
pub fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths_and_queries() {
        assert_eq!(
            percent_decode("alice%40example.test", false).unwrap(),
            "alice@example.test"
        );
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert!(percent_decode("%zz", false).is_none());
        assert!(percent_decode("%4", false).is_none());
        assert!(percent_decode("%ff", false).is_none());
        let q = query(Some("status=Failed&q=bob+x%40y&page=2&bad=%&flag"));
        assert_eq!(
            q,
            vec![
                ("status".into(), "Failed".into()),
                ("q".into(), "bob x@y".into()),
                ("page".into(), "2".into()),
                ("flag".into(), "".into()),
            ]
        );
    }
}
