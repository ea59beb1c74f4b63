//! Shared by the status page tests: a `cutover run` process, a small HTTP/1.1 client over
//! a loopback socket (no client crate: the tests see the bytes the server sends), and a
//! testbed with a wrong password, an oversized message and a quota refusal.
#![allow(dead_code)]

pub mod chromium;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::demo_config;
use cutover::testbed::{MASTER_PASSWORD, MASTER_USER};

/// A `cutover run` process; killed by PID when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let log = config.parent().unwrap().join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("CUTOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("cutover run starts");
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default());
        s
    }

    /// SIGTERM by PID, then waits (10 s at most) for the exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Every response the tests received, to search them all for secrets at the end.
pub type Seen = Arc<Mutex<Vec<u8>>>;

/// A client of the page at `port`, over HTTPS when `tls` is set.
#[derive(Clone)]
pub struct Client {
    pub port: u16,
    pub seen: Seen,
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A TLS client configuration that trusts only the CA in `ca_pem`.
pub fn tls_trusting(ca_pem: &Path) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(ca_pem).unwrap(),
    )) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap().trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            port,
            seen: Arc::new(Mutex::new(Vec::new())),
            tls: None,
        }
    }

    fn connect(&self) -> Box<dyn Stream> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the page");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        match &self.tls {
            None => Box::new(s),
            Some(cfg) => {
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let conn = tokio_rustls::rustls::ClientConnection::new(cfg.clone(), name).unwrap();
                Box::new(tokio_rustls::rustls::StreamOwned::new(conn, s))
            }
        }
    }

    /// Sends a raw request (the header block without the final empty line) and reads the
    /// whole response (the server closes: `Connection: close`).
    pub fn raw(&self, head: &str, body: &[u8]) -> Response {
        let mut s = self.connect();
        let mut req = format!(
            "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        // A TLS peer that closes without close_notify is an error to rustls; what was
        // read until then is the response.
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if buf.is_empty() => panic!("read the response: {e}"),
                Err(_) => break,
            }
        }
        self.seen.lock().unwrap().extend_from_slice(&buf);
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(&buf)));
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut body = buf[end + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.raw(
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}", self.port),
            b"",
        )
    }

    pub fn post_json(&self, path: &str, body: &str) -> Response {
        self.raw(
            &format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nOrigin: http://127.0.0.1:{p}\r\n\
                 Content-Type: application/json",
                p = self.port
            ),
            body.as_bytes(),
        )
    }

    /// Reads the event stream for up to `limit`, until `enough` says so; returns the
    /// `data` of each `status` event.
    pub fn events(
        &self,
        limit: Duration,
        mut enough: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: text/event-stream\r\n\r\n",
            self.port
        )
        .unwrap();
        let end = Instant::now() + limit;
        let mut buf = Vec::new();
        let mut events = Vec::new();
        let mut chunk = [0u8; 8192];
        while Instant::now() < end {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            events = text
                .split("event: status\n")
                .skip(1)
                .filter_map(|e| {
                    let line = e.lines().find(|l| l.starts_with("data: "))?;
                    serde_json::from_str(&line["data: ".len()..]).ok()
                })
                .collect();
            if enough(&events) {
                break;
            }
        }
        self.seen.lock().unwrap().extend_from_slice(&buf);
        events
    }
}

/// Polls `cond` every 250 ms until it holds; panics with `what` and the log after `limit`.
pub fn wait_until(d: &Daemon, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {limit:?} waiting for {what}\n{}", d.log());
}

/// The rows of `/api/mailboxes` (every mailbox) by address.
pub fn rows(c: &Client, query: &str) -> Vec<serde_json::Value> {
    let r = c.get(&format!("/api/mailboxes?per_page=1000&{query}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rows"].as_array().unwrap().clone()
}

pub fn status_of(c: &Client, mailbox: &str) -> Option<String> {
    rows(c, "")
        .into_iter()
        .find(|r| r["mailbox"] == mailbox)
        .map(|r| r["status"].as_str().unwrap().to_string())
}

/// The config `write_config` makes, with the destination through the proxy on
/// `proxy_port` and the page on `web_port`.
pub fn config_through_proxy(
    tb: &cutover::testbed::Testbed,
    users: &[(&str, &str, &str)],
    proxy_port: u16,
    web_port: u16,
    upstream_extra: &str,
) -> std::path::PathBuf {
    let config = demo_config(
        tb,
        users,
        &format!(
            "[sync]\ninterval = \"1h\"\nmax_message_bytes = 100000\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n"
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[upstream]\n").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let upstream = format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {proxy_port}\ntls = \"none\"\nauth = \"plain\"\n\
         admin_user = \"{MASTER_USER}\"\nadmin_password = \"{MASTER_PASSWORD}\"\n\
         admin_login = \"authzid\"\nmax_connections = 4\nmultiappend = false\n{upstream_extra}"
    );
    std::fs::write(
        &config,
        format!("{}{upstream}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    config
}

/// A message of about `size` bytes with a known subject and sender.
pub fn big_message(subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Big Sender <big@example.test>\r\nTo: carol@example.test\r\nSubject: {subject}\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@x.test>\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    m
}
