//! The listener: one task per connection (HTTP/1.1), at most [`MAX_CONNECTIONS`] at
//! once, and the checks every request passes before a handler sees it.
//!
//! - Without a password, `Host` must name a loopback address (`localhost`, `127.x.y.z`,
//!   `[::1]`): a page on another site that points its own name at 127.0.0.1 (DNS
//!   rebinding) is refused, so it can read nothing. With a password, the session cookie
//!   is what a rebound page lacks.
//! - With a password, everything but `/login`, `/healthz` and the style sheet needs a
//!   session (or the password by HTTP Basic); see [`super::auth`].
//! - A POST needs `Content-Type: application/json` (but the login form), and an
//!   `Origin`, when the browser sends one, equal to this server's: other sites cannot
//!   press the buttons (CSRF); the session cookie is `SameSite=Strict` besides.
//! - Bodies over [`MAX_BODY`] are refused; a client that sends its headers slowly is cut
//!   off after [`HEADER_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::auth::{self, Check};
use super::http::{self, Resp};
use super::Shared;

pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_BODY: usize = 64 * 1024;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    // A failed handshake (a browser refusing the certificate...) is the
                    // client's business; nothing to log per connection.
                    let shake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(s)) = shake.await {
                        connection(s, shared, "https").await;
                    }
                }
                None => connection(stream, shared, "http").await,
            }
            drop(permit);
        });
    }
}

async fn connection<S>(stream: S, shared: Arc<Shared>, scheme: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(shared, req, scheme).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
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

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `http` or `https`, for the Origin check.
    pub scheme: &'static str,
    /// No password: the Host must be a loopback name.
    pub loopback_only: bool,
    /// A form POST (the login form) rather than JSON.
    pub form: bool,
}

/// Why a request is refused before any handler sees it, if it is.
pub fn refuse(
    method: &Method,
    host: Option<&str>,
    origin: Option<&str>,
    content_type: Option<&str>,
    rules: Rules,
) -> Option<(StatusCode, &'static str)> {
    let Some(host) = host.filter(|h| !rules.loopback_only || loopback_host(h)) else {
        return Some((
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header must name a loopback address",
        ));
    };
    if method == Method::POST {
        if let Some(o) = origin {
            let ok = o
                .strip_prefix(rules.scheme)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host));
            if !ok {
                return Some((StatusCode::FORBIDDEN, "cross-origin request refused"));
            }
        }
        let want = if rules.form {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let typed = content_type.is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
        });
        if !typed {
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

fn redirect(to: &str) -> Resp {
    let mut r = http::full(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn with_cookie(mut r: Resp, cookie: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

/// Paths served without a session when the page has a password.
fn public(path: &str) -> bool {
    matches!(path, "/login" | "/healthz" | "/style.css")
}

/// With a password: None if the request may go on, else the answer (the login page,
/// the login's and logout's own answers, or 401).
fn gate(shared: &Shared, req: &Request<()>, body: &[u8]) -> Option<Resp> {
    let auth = shared.auth.as_ref()?;
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let path = req.uri().path();
    let session = auth::cookie_token(header(COOKIE)).filter(|t| auth.valid(t));
    match (req.method(), path) {
        (&Method::GET, "/login") => {
            let q = http::query(req.uri().query());
            let why = q.first().map(|(k, _)| k.as_str()).unwrap_or("");
            return Some(super::assets::login(why));
        }
        (&Method::POST, "/login") => {
            let password = http::query(std::str::from_utf8(body).ok())
                .into_iter()
                .find(|(k, _)| k == "password")
                .map(|(_, v)| v)
                .unwrap_or_default();
            // argon2 takes tens of milliseconds of CPU: not on the runtime's thread.
            return Some(
                match tokio::task::block_in_place(|| auth.check(&password)) {
                    Check::Ok => {
                        tracing::info!("status page: logged in");
                        with_cookie(redirect("/"), &auth::set_cookie(&auth.open()))
                    }
                    Check::Wrong => {
                        tracing::warn!("status page: wrong password");
                        redirect("/login?wrong")
                    }
                    Check::Wait(_) => redirect("/login?wait"),
                },
            );
        }
        (&Method::POST, "/logout") => {
            if let Some(t) = session {
                auth.close(t);
            }
            let r = http::json(&serde_json::json!({ "logged_out": true }));
            return Some(with_cookie(r, &auth::clear_cookie()));
        }
        _ => {}
    }
    if session.is_some() || public(path) {
        return None;
    }
    if let Some(pw) = auth::basic_password(header(AUTHORIZATION)) {
        match tokio::task::block_in_place(|| auth.check(&pw)) {
            Check::Ok => return None,
            Check::Wait(_) => {
                return Some(http::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many wrong passwords; wait",
                ))
            }
            Check::Wrong => {}
        }
    }
    if req.method() == Method::GET && (path == "/" || path == "/index.html") {
        return Some(redirect("/login"));
    }
    let mut r = http::error(
        StatusCode::UNAUTHORIZED,
        "log in first (POST /login, or HTTP Basic)",
    );
    if path == "/metrics" {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cutover\""),
        );
    }
    Some(r)
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, scheme: &'static str) -> Resp {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let rules = Rules {
        scheme,
        loopback_only: shared.auth.is_none(),
        form: shared.auth.is_some() && req.uri().path() == "/login",
    };
    let refused = refuse(
        req.method(),
        header(HOST),
        header(ORIGIN),
        header(CONTENT_TYPE),
        rules,
    );
    let mut resp = match refused {
        Some((status, why)) => http::error(status, why),
        None => {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().map(str::to_string);
            let (parts, incoming) = req.into_parts();
            let body = if method == Method::POST {
                match Limited::new(incoming, MAX_BODY).collect().await {
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
            let head = Request::from_parts(parts, ());
            match gate(&shared, &head, &body) {
                Some(r) => r,
                None => {
                    let method = if method == Method::HEAD {
                        Method::GET
                    } else {
                        method
                    };
                    super::router::route(&shared, &method, &path, query.as_deref(), &body)
                }
            }
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
        let r = Rules {
            scheme: "http",
            loopback_only: true,
            form: false,
        };
        let refuse = |m: &Method, h, o, t| refuse(m, h, o, t, r);
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
        // With a password: any Host, HTTPS origins, the login form.
        let r = Rules {
            scheme: "https",
            loopback_only: false,
            form: false,
        };
        let host = Some("appliance.example:8443");
        assert!(super::refuse(&get, host, None, None, r).is_none());
        let same = Some("https://appliance.example:8443");
        assert!(super::refuse(&post, host, same, json, r).is_none());
        let plain = Some("http://appliance.example:8443");
        assert_eq!(
            super::refuse(&post, host, plain, json, r).unwrap().0,
            StatusCode::FORBIDDEN
        );
        let form = Rules { form: true, ..r };
        let urlencoded = Some("application/x-www-form-urlencoded");
        assert!(super::refuse(&post, host, None, urlencoded, form).is_none());
        assert!(super::refuse(&post, host, None, json, form).is_some());
    }
}
