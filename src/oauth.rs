//! OAuth2 app-only tokens for Office 365 (`[upstream] auth = "xoauth2"`).
//!
//! cutover is registered in Entra ID (Azure AD) as an application with the
//! `IMAP.AccessAsApp` application permission. It obtains tokens with the OAuth2
//! client-credentials grant (RFC 6749 §4.4): a POST of `grant_type=client_credentials`,
//! `client_id`, `client_secret` and `scope` to the tenant's token endpoint, answered with
//! `{"access_token": ..., "expires_in": ...}`. One token serves every mailbox (the mailbox
//! is named in the XOAUTH2 `user=` field), so [`TokenProvider`] fetches it once, hands the
//! cached copy to every session and fetches a new one shortly before it expires.
//!
//! A failing token endpoint (wrong secret, no admin consent, unknown tenant) is one error
//! with Microsoft's own explanation, not one per mailbox: the failure is cached for
//! [`ERROR_HOLD`] and every caller gets the same error without another POST.
//!
//! HTTP is hyper's HTTP/1.1 client connection over the same TCP/TLS stream the IMAP client
//! uses (rustls with the system roots plus `tls_ca_file`; verification always on). Plain
//! `http://` is accepted only for a loopback host (tests run their own token endpoint).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{AuthMech, ServerConfig};
use crate::imap::transport::{Stream, TlsSettings};
use crate::secret::Secret;

/// Microsoft's token endpoint; `{tenant}` is replaced by `oauth_tenant`.
pub const DEFAULT_TOKEN_URL: &str = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token";
/// The scope that gives access to Exchange Online's IMAP as the application.
pub const DEFAULT_SCOPE: &str = "https://outlook.office365.com/.default";
/// A failed token request is answered from the cache for this long (one clear error, not
/// one POST and one error per mailbox).
pub const ERROR_HOLD: Duration = Duration::from_secs(60);
/// Largest token response accepted.
const MAX_RESPONSE: usize = 256 * 1024;
/// The lifetime assumed when the endpoint gives none (Entra ID's tokens live an hour).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The shortest lifetime a token is kept for. Short lifetimes are believed (a test
/// endpoint's tokens live seconds); a zero or negative `expires_in` says the token is stale
/// already, so it is used at most this long before a new one is fetched.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);
/// The longest lifetime believed: a huge `expires_in` would otherwise keep a token cached
/// past any real expiry (and overflow the clock arithmetic).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why no token could be had. Never contains the client secret or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    #[error("OAuth token endpoint {url} refused the client-credentials grant (HTTP {status}): {error}{}{}", .description.as_ref().map(|d| format!(": {d}")).unwrap_or_default(), hint(.error, .description.as_deref()))]
    Refused {
        url: String,
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("OAuth token endpoint {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("OAuth token endpoint {url} answered something that is not a token: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("OAuth configuration: {0}")]
    Config(String),
}

/// What the admin should look at for the usual Entra ID errors.
fn hint(error: &str, description: Option<&str>) -> String {
    let d = description.unwrap_or("");
    let h = if error == "invalid_client" || d.contains("AADSTS7000215") {
        "check oauth_client_secret (expired or copied as the secret's ID instead of its value?)"
    } else if d.contains("AADSTS700016") || error == "unauthorized_client" {
        "check oauth_client_id and oauth_tenant: the application is not registered in that tenant"
    } else if d.contains("AADSTS90002") || d.contains("AADSTS900023") {
        "check oauth_tenant (the tenant ID or its domain name)"
    } else if d.contains("AADSTS65001") || d.contains("consent") {
        "an administrator must grant admin consent to IMAP.AccessAsApp"
    } else if error == "invalid_scope" || d.contains("AADSTS70011") {
        "check oauth_scope (https://outlook.office365.com/.default)"
    } else {
        ""
    };
    if h.is_empty() {
        String::new()
    } else {
        format!(" ({h})")
    }
}

/// Everything needed to ask for a token.
#[derive(Clone)]
pub struct OAuthSettings {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: String,
    /// Extra CA for the token endpoint (the upstream's `tls_ca_file`); system roots always.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

impl std::fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scope", &self.scope)
            .finish()
    }
}

impl OAuthSettings {
    /// The settings of an `auth = "xoauth2"` server section; None for other mechanisms.
    pub fn from_config(server: &ServerConfig) -> Result<Option<OAuthSettings>, OAuthError> {
        if server.auth != AuthMech::XOAuth2 {
            return Ok(None);
        }
        let client_id = server
            .oauth_client_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| OAuthError::Config("oauth_client_id is not set".into()))?;
        let client_secret = server
            .oauth_client_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                OAuthError::Config(
                    "neither oauth_client_secret nor oauth_client_secret_file is set".into(),
                )
            })?;
        Ok(Some(OAuthSettings {
            token_url: token_url(server)?,
            client_id,
            client_secret,
            scope: server
                .oauth_scope
                .clone()
                .unwrap_or_else(|| DEFAULT_SCOPE.to_string()),
            tls_ca_file: server.tls_ca_file.clone(),
            timeout: server.timeout(),
        }))
    }
}

/// `oauth_token_url`, or Microsoft's endpoint for `oauth_tenant`, checked.
pub fn token_url(server: &ServerConfig) -> Result<String, OAuthError> {
    let url = match &server.oauth_token_url {
        Some(u) => u.clone(),
        None => {
            let tenant = server
                .oauth_tenant
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    OAuthError::Config("oauth_tenant is not set (nor oauth_token_url)".into())
                })?;
            if !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            {
                return Err(OAuthError::Config(format!(
                    "oauth_tenant {tenant:?} is neither a tenant ID nor a domain name"
                )));
            }
            DEFAULT_TOKEN_URL.replace("{tenant}", tenant)
        }
    };
    let url = url.replace(
        "{tenant}",
        server.oauth_tenant.as_deref().unwrap_or("{tenant}"),
    );
    Url::parse(&url)?;
    Ok(url)
}

/// The parts of an `http(s)://host[:port]/path` URL that a POST needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, OAuthError> {
        let bad = |why: &str| OAuthError::Config(format!("oauth_token_url {url:?}: {why}"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let end = h.find(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = h[end + 1..].strip_prefix(':');
            (h[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if https => 443,
            None => 80,
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(bad(
                "plain http:// is only allowed for a loopback address (the client secret \
                 would cross the network in clear text); use https://",
            ));
        }
        Ok(Url {
            https,
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A token and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: Secret,
    pub expires_in: Duration,
}

/// Fetches, caches and refreshes the application's token.
pub struct TokenProvider {
    settings: OAuthSettings,
    tls: Option<TlsSettings>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The token and the moment to replace it (before it actually expires).
    token: Option<(Secret, Instant)>,
    /// The last failure and when it happened.
    error: Option<(OAuthError, Instant)>,
    fetched: u64,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("settings", &self.settings)
            .finish()
    }
}

/// How long before its expiry a token is replaced: a fifth of its lifetime, at most 5 min.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(300))
}

/// When a token obtained at `now` with `lifetime` is to be replaced. Never panics: a
/// lifetime the clock cannot add is taken as [`MAX_TOKEN_LIFETIME`], then as none.
fn refresh_at(now: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    now.checked_add(lifetime - refresh_margin(lifetime))
        .unwrap_or(now)
}

/// `expires_in` of a token response (a number, or a string as some endpoints send it),
/// within [`MIN_TOKEN_LIFETIME`] and [`MAX_TOKEN_LIFETIME`]; absent or unreadable, the
/// default lifetime.
fn token_lifetime(value: Option<&serde_json::Value>) -> Duration {
    let secs = match value {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_nan() => DEFAULT_TOKEN_LIFETIME,
        Some(s) if s <= MIN_TOKEN_LIFETIME.as_secs_f64() => MIN_TOKEN_LIFETIME,
        Some(s) if s >= MAX_TOKEN_LIFETIME.as_secs_f64() => MAX_TOKEN_LIFETIME,
        Some(s) => Duration::from_secs(s as u64),
        None => DEFAULT_TOKEN_LIFETIME,
    }
}

impl TokenProvider {
    pub fn new(settings: OAuthSettings) -> Result<Arc<TokenProvider>, OAuthError> {
        let url = Url::parse(&settings.token_url)?;
        let tls = if url.https {
            Some(
                TlsSettings::new(settings.tls_ca_file.as_deref())
                    .map_err(|e| OAuthError::Config(format!("TLS setup: {e}")))?,
            )
        } else {
            None
        };
        Ok(Arc::new(TokenProvider {
            settings,
            tls,
            state: Mutex::new(State::default()),
        }))
    }

    /// The provider for an `auth = "xoauth2"` server section; None for other mechanisms.
    pub fn from_config(server: &ServerConfig) -> Result<Option<Arc<TokenProvider>>, OAuthError> {
        OAuthSettings::from_config(server)?
            .map(TokenProvider::new)
            .transpose()
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// How many tokens were fetched so far (for the tests and the status page).
    pub async fn fetched(&self) -> u64 {
        self.state.lock().await.fetched
    }

    /// A valid token: the cached one, or a new one if it is about to expire. Concurrent
    /// callers wait for one POST rather than sending one each.
    pub async fn token(&self) -> Result<Secret, OAuthError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        if let Some((t, refresh_at)) = &st.token {
            if now < *refresh_at {
                return Ok(t.clone());
            }
        }
        if let Some((e, at)) = &st.error {
            if now.duration_since(*at) < ERROR_HOLD {
                return Err(e.clone());
            }
        }
        match self.fetch().await {
            Ok(t) => {
                let refresh_at = refresh_at(Instant::now(), t.expires_in);
                tracing::info!(
                    url = %self.settings.token_url,
                    expires_in = t.expires_in.as_secs(),
                    "obtained an OAuth token for the destination"
                );
                crate::metrics::get().oauth_token_expiry.set(
                    chrono::Utc::now().timestamp()
                        + i64::try_from(t.expires_in.as_secs()).unwrap_or(i64::MAX / 2),
                );
                st.token = Some((t.access_token.clone(), refresh_at));
                st.error = None;
                st.fetched += 1;
                Ok(t.access_token)
            }
            Err(e) => {
                tracing::error!(error = %e, "no OAuth token for the destination");
                st.token = None;
                st.error = Some((e.clone(), Instant::now()));
                Err(e)
            }
        }
    }

    /// Forgets the cached token (after the server refused it), so the next call fetches.
    pub async fn invalidate(&self) {
        self.state.lock().await.token = None;
    }

    /// One client-credentials POST, uncached.
    pub async fn fetch(&self) -> Result<Token, OAuthError> {
        let s = &self.settings;
        let body = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
            form_encode(&s.client_id),
            form_encode(s.client_secret.expose()),
            form_encode(&s.scope)
        );
        let (status, bytes) = tokio::time::timeout(s.timeout, self.post(body))
            .await
            .map_err(|_| OAuthError::Transport {
                url: s.token_url.clone(),
                detail: format!("no answer within {} s", s.timeout.as_secs()),
            })??;
        parse_token_response(&s.token_url, status, &bytes)
    }

    async fn post(&self, body: String) -> Result<(u16, Bytes), OAuthError> {
        let url_text = &self.settings.token_url;
        let url = Url::parse(url_text)?;
        let transport = |detail: String| OAuthError::Transport {
            url: url_text.clone(),
            detail,
        };
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| transport(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = Stream::Plain(tcp);
        if let Some(tls) = &self.tls {
            stream = stream
                .upgrade(tls, &url.host)
                .await
                .map_err(|e| transport(e.to_string()))?;
        }
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let default_port = if url.https { 443 } else { 80 };
        let host_header = match (url.port == default_port, url.host.contains(':')) {
            (true, false) => url.host.clone(),
            (true, true) => format!("[{}]", url.host),
            (false, false) => format!("{}:{}", url.host, url.port),
            (false, true) => format!("[{}]:{}", url.host, url.port),
        };
        let req = hyper::Request::post(url.path.as_str())
            .header(hyper::header::HOST, host_header)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("cutover/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(format!("request: {e}")))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transport(format!("HTTP: {e}")))?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        conn.abort();
        result
    }
}

/// Reads the endpoint's JSON: a token, or Microsoft's error.
fn parse_token_response(url: &str, status: u16, body: &[u8]) -> Result<Token, OAuthError> {
    let json: Result<serde_json::Value, _> = serde_json::from_slice(body);
    let bad = |detail: String| OAuthError::BadResponse {
        url: url.to_string(),
        detail,
    };
    let Ok(json) = json else {
        let head: String = String::from_utf8_lossy(&body[..body.len().min(200)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        return Err(bad(format!("HTTP {status}, not JSON: {head:?}")));
    };
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        let description = json
            .get("error_description")
            .and_then(|d| d.as_str())
            .map(|d| d.lines().next().unwrap_or("").trim().to_string())
            .filter(|d| !d.is_empty());
        return Err(OAuthError::Refused {
            url: url.to_string(),
            status,
            error: error.to_string(),
            description,
        });
    }
    if !(200..300).contains(&status) {
        return Err(bad(format!("HTTP {status} without an error field")));
    }
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token".into()))?;
    if let Some(tt) = json.get("token_type").and_then(|t| t.as_str()) {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(bad(format!("token_type {tt:?} is not Bearer")));
        }
    }
    Ok(Token {
        access_token: Secret::new(token),
        expires_in: token_lifetime(json.get("expires_in")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse(
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
        )
        .unwrap();
        assert!(u.https);
        assert_eq!(u.host, "login.microsoftonline.com");
        assert_eq!(u.port, 443);
        assert_eq!(u.path, "/contoso.onmicrosoft.com/oauth2/v2.0/token");
        let u = Url::parse("http://127.0.0.1:8080/token").unwrap();
        assert_eq!((u.https, u.port, u.path.as_str()), (false, 8080, "/token"));
        assert!(Url::parse("http://[::1]:99/t").is_ok());
        assert!(Url::parse("http://localhost/t").is_ok());
        let e = Url::parse("http://login.example.com/token").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("https://u:p@x/").is_err());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
        assert_eq!(
            form_encode("https://outlook.office365.com/.default"),
            "https%3A%2F%2Foutlook.office365.com%2F.default"
        );
    }

    #[test]
    fn token_responses() {
        let t = parse_token_response(
            "u",
            200,
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0"}"#,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "eyJ0");
        assert_eq!(t.expires_in, Duration::from_secs(3599));
        let e = parse_token_response(
            "u",
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("invalid_client: AADSTS7000215: Invalid client secret provided."),
            "{e}"
        );
        assert!(e.contains("oauth_client_secret"), "{e}");
        assert!(!e.contains("Trace ID"), "{e}");
        let e = parse_token_response(
            "u",
            400,
            br#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("admin consent"), "{e}");
        assert!(parse_token_response("u", 502, b"<html>").is_err());
        assert!(parse_token_response("u", 200, br#"{"expires_in":1}"#).is_err());
    }

    /// Whatever `expires_in` says, the lifetime is within bounds and the refresh time
    /// can be computed (a huge value used to overflow `Instant`).
    #[test]
    fn token_lifetimes_are_clamped() {
        let lifetime = |expires_in: &str| {
            let body = format!(r#"{{"access_token":"t","expires_in":{expires_in}}}"#);
            let t = parse_token_response("u", 200, body.as_bytes()).unwrap();
            // Must not panic.
            let at = refresh_at(Instant::now(), t.expires_in);
            assert!(at <= Instant::now() + MAX_TOKEN_LIFETIME);
            t.expires_in
        };
        assert_eq!(lifetime("3599"), Duration::from_secs(3599));
        assert_eq!(lifetime("\"3599\""), Duration::from_secs(3599));
        assert_eq!(lifetime("18446744073709551615"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("1e300"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("\"99999999999999999999999\""), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("0"), MIN_TOKEN_LIFETIME);
        assert_eq!(lifetime("-5"), MIN_TOKEN_LIFETIME);
        assert_eq!(lifetime("\"-5\""), MIN_TOKEN_LIFETIME);
        assert_eq!(lifetime("null"), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("\"soon\""), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("599.9"), Duration::from_secs(599));
        assert_eq!(lifetime("3"), Duration::from_secs(3));
        // Even a lifetime that never came through the parser.
        let now = Instant::now();
        assert!(refresh_at(now, Duration::MAX) > now);
        assert_eq!(refresh_at(now, Duration::ZERO), now);
    }

    #[test]
    fn margin() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }
}
