//! The fleet on the status page: this appliance's shard, and with `[fleet] peers` what
//! the other appliances' `/api/status` says, read every [`POLL`] by one task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::Serialize;
use tokio::net::TcpStream;

use super::Shared;
use crate::imap::transport::{Stream, TlsSettings};

/// How often the peers are asked.
const POLL: Duration = Duration::from_secs(15);
/// How long one peer may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `/api/status` read from a peer.
const MAX_BODY: usize = 1 << 20;

/// `fleet` in `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// `i/N`.
    pub shard: String,
    /// Mailboxes this appliance owns.
    pub owned: usize,
    /// Mailboxes in the CSV, every shard's.
    pub total: Option<usize>,
    /// The other appliances, as last read.
    pub peers: Vec<Peer>,
}

/// One peer's status, as last read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    pub url: String,
    /// Why it could not be read, the last time.
    pub error: Option<String>,
    pub shard: Option<String>,
    pub phase: Option<serde_json::Value>,
    pub mailboxes: Option<u64>,
    pub by_status: Option<serde_json::Value>,
    pub appended_since_start: Option<u64>,
    pub read_unix: Option<i64>,
}

fn peers() -> &'static Mutex<Vec<Peer>> {
    static PEERS: OnceLock<Mutex<Vec<Peer>>> = OnceLock::new();
    PEERS.get_or_init(|| Mutex::new(Vec::new()))
}

/// The fleet section of the overview.
pub fn build(shared: &Shared, owned: usize) -> Fleet {
    // The CSV is read once per file: the daemon reads it only at start-up too.
    static TOTALS: OnceLock<Mutex<HashMap<PathBuf, Option<usize>>>> = OnceLock::new();
    let path = &shared.config.mailboxes;
    let total = *TOTALS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(path.clone())
        .or_insert_with(|| crate::accounts::load(path).ok().map(|a| a.accounts.len()));
    Fleet {
        shard: shared
            .config
            .fleet
            .shard()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        owned,
        total,
        peers: peers()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    }
}

/// Starts the task that reads the peers, if there are any.
pub fn start(shared: &Arc<Shared>) {
    let fleet = &shared.config.fleet;
    if fleet.peers.is_empty() {
        return;
    }
    let tls = match TlsSettings::new(fleet.peer_ca_file.as_deref()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::error!(error = %e, "[fleet] peer_ca_file: cannot be used; the fleet view stays empty");
            return;
        }
    };
    let password = match &fleet.peer_password_file {
        None => None,
        Some(f) => match std::fs::read_to_string(f) {
            Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                tracing::error!(file = %f.display(), error = %e,
                    "[fleet] peer_password_file cannot be read; peers are asked without it");
                None
            }
        },
    };
    let urls = fleet.peers.clone();
    tokio::spawn(async move {
        loop {
            let mut out = Vec::with_capacity(urls.len());
            for url in &urls {
                let peer = match tokio::time::timeout(TIMEOUT, read(url, &tls, password.as_deref()))
                    .await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => failed(url, e),
                    Err(_) => failed(url, format!("no answer within {} s", TIMEOUT.as_secs())),
                };
                out.push(peer);
            }
            *peers().lock().unwrap_or_else(PoisonError::into_inner) = out;
            tokio::time::sleep(POLL).await;
        }
    });
}

fn failed(url: &str, error: String) -> Peer {
    Peer {
        url: url.to_string(),
        error: Some(error),
        ..Default::default()
    }
}

/// A peer's base URL: HTTPS or not, host, port.
fn parse(url: &str) -> Result<(bool, String, u16), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("not an http:// or https:// URL".into());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
        }
        _ => (authority, if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((https, host.to_string(), port))
}

/// GET `<url>/api/status`, and what the fleet view shows of it.
async fn read(url: &str, tls: &TlsSettings, password: Option<&str>) -> Result<Peer, String> {
    let (https, host, port) = parse(url)?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut stream = Stream::Plain(tcp);
    if https {
        stream = stream
            .upgrade(tls, &host)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get("/api/status")
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(p) = password {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("fleet:{p}"));
        req = req.header(hyper::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        Ok(Peer {
            url: url.to_string(),
            error: None,
            shard: v["fleet"]["shard"].as_str().map(str::to_string),
            phase: v.get("phase").cloned(),
            mailboxes: v["mailboxes"].as_u64(),
            by_status: v.get("by_status").cloned(),
            appended_since_start: v["appended_since_start"].as_u64(),
            read_unix: Some(chrono::Utc::now().timestamp()),
        })
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls() {
        assert_eq!(
            parse("https://cutover-1.cutover:8443/"),
            Ok((true, "cutover-1.cutover".into(), 8443))
        );
        assert_eq!(parse("http://10.0.0.5"), Ok((false, "10.0.0.5".into(), 80)));
        assert_eq!(parse("http://[::1]:9000"), Ok((false, "::1".into(), 9000)));
        assert!(parse("ftp://x").is_err());
        assert!(parse("http://:80").is_err());
        assert!(parse("http://x:port").is_err());
    }
}
