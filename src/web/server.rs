//! The listener: one task per connection (HTTP/1.1), at most [`MAX_CONNECTIONS`] at
//! once, and the checks every request passes before a handler sees it.
//!
//! - `Host` must name a loopback address (`localhost`, `127.x.y.z`, `[::1]`): a page on
//!   another site that points its own name at 127.0.0.1 (DNS rebinding) is refused, so
//!   it can read nothing.
//! - A POST needs `Content-Type: application/json`, and an `Origin`, when the browser
//!   sends one, equal to this server's: other sites cannot press the buttons (CSRF).
//! - Bodies over [`MAX_BODY`] are refused; a client that sends its headers slowly is cut
//!   off after [`HEADER_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::http::{self, Resp};
use super::Shared;

pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_BODY: usize = 64 * 1024;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "status page: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(permit);
        });
    }
}

/// True for `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
pub fn loopback_host(host: &str) -> bool {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        h.rsplit_once(':').map(|(n, _)| n).unwrap_or(h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Why a request is refused before any handler sees it, if it is.
pub fn refuse(
    method: &Method,
    host: Option<&str>,
    origin: Option<&str>,
    content_type: Option<&str>,
) -> Option<(StatusCode, &'static str)> {
    let Some(host) = host.filter(|h| loopback_host(h)) else {
        return Some((
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header must name a loopback address",
        ));
    };
    if method == Method::POST {
        if let Some(o) = origin {
            let ok = o
                .strip_prefix("http://")
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host));
            if !ok {
                return Some((StatusCode::FORBIDDEN, "cross-origin request refused"));
            }
        }
        let json = content_type.is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Some((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "controls take Content-Type: application/json",
            ));
        }
    } else if method != Method::GET && method != Method::HEAD {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    None
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
    };
    let mut resp = match refuse(
        req.method(),
        header(HOST),
        header(ORIGIN),
        header(CONTENT_TYPE),
    ) {
        Some((status, why)) => http::error(status, why),
        None => {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().map(str::to_string);
            let body = if method == Method::POST {
                match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        let mut r =
                            http::error(StatusCode::PAYLOAD_TOO_LARGE, "body too large or cut off");
                        http::harden(&mut r);
                        return r;
                    }
                }
            } else {
                bytes::Bytes::new()
            };
            let get_method = if method == Method::HEAD {
                Method::GET
            } else {
                method
            };
            super::router::route(&shared, &get_method, &path, query.as_deref(), &body)
        }
    };
    http::harden(&mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_and_same_origin_json_posts() {
        for h in [
            "localhost:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "LOCALHOST",
            "127.5.5.5",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:8080",
            "10.0.0.1:80",
            "[::1",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
        let get = Method::GET;
        let post = Method::POST;
        assert!(refuse(&get, Some("127.0.0.1:8080"), None, None).is_none());
        assert_eq!(
            refuse(&get, Some("rebound.example:8080"), None, None)
                .unwrap()
                .0,
            StatusCode::MISDIRECTED_REQUEST
        );
        assert_eq!(
            refuse(&get, None, None, None).unwrap().0,
            StatusCode::MISDIRECTED_REQUEST
        );
        let json = Some("application/json; charset=utf-8");
        assert!(refuse(
            &post,
            Some("127.0.0.1:8080"),
            Some("http://127.0.0.1:8080"),
            json
        )
        .is_none());
        assert!(refuse(&post, Some("127.0.0.1:8080"), None, json).is_none());
        assert_eq!(
            refuse(
                &post,
                Some("127.0.0.1:8080"),
                Some("http://evil.example"),
                json
            )
            .unwrap()
            .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            refuse(&post, Some("127.0.0.1:8080"), Some("null"), json)
                .unwrap()
                .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            refuse(
                &post,
                Some("127.0.0.1:8080"),
                None,
                Some("application/x-www-form-urlencoded")
            )
            .unwrap()
            .0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            refuse(&post, Some("127.0.0.1:8080"), None, Some("text/plain"))
                .unwrap()
                .0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            refuse(&Method::DELETE, Some("127.0.0.1:8080"), None, None)
                .unwrap()
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
