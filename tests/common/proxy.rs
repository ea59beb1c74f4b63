//! A fault-injecting IMAP proxy: a real TCP proxy on 127.0.0.1 in front of a real (plain
//! port of a) Dovecot, which on a schedule answers APPENDs the way Exchange Online does when
//! it throttles, drops connections in the middle of a literal, or holds commands back.
//!
//! The proxy frames both directions the way IMAP does (lines, `{N}` / `{N+}` literals,
//! whose bytes are copied through untouched), so it never mistakes message content for
//! protocol. To answer an APPEND itself without breaking the order of pipelined
//! completions, it swallows the APPEND (its literal included: with LITERAL+ the bytes
//! follow the command line without waiting) and sends the server `TAG NOOP` instead; when
//! the server's `TAG OK` comes back, in its proper place among the other completions, the
//! proxy replaces it with the throttle answer.
//!
//! Every APPEND seen is recorded with the time, the connection and the user (from LOGIN or
//! AUTHENTICATE PLAIN), so a test can check that backoffs were honoured.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with one APPEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// Answer `NO Request is throttled. Suggested Backoff Time: N milliseconds` itself.
    Throttle {
        ms: u64,
    },
    /// Answer `BAD Request is throttled. Suggested Backoff Time: N milliseconds`, then
    /// `* BYE` and close the connection.
    ThrottleBye {
        ms: u64,
    },
    /// Answer `BAD User is authenticated but not connected.` (Exchange, when the mailbox
    /// behind a session went away), leaving the connection open.
    NotConnected,
    /// Answer `BAD <text>` (e.g. Exchange's `Command Argument Error. 11`).
    RefuseBad(&'static str),
    /// Forward the command line and half of the literal, then cut both connections.
    DropMidLiteral,
    /// Hold the APPEND back for `ms` before forwarding it.
    Delay {
        ms: u64,
    },
    /// Forward the APPEND at once but hold the server's answer back for `ms` (past the
    /// client's timeout, the message is at the server but the client does not know).
    DelayAnswer {
        ms: u64,
    },
}

/// One APPEND the proxy saw.
#[derive(Debug, Clone)]
pub struct AppendEvent {
    pub at: Instant,
    pub conn: u64,
    pub user: String,
    /// Index of this APPEND among the user's APPENDs (0-based), retries included.
    pub n: u64,
    pub action: Action,
}

/// Decides the action for the `n`-th APPEND (0-based) of `user`.
pub type Schedule = Arc<dyn Fn(&str, u64) -> Action + Send + Sync>;

pub struct Proxy {
    port: u16,
    events: Arc<Mutex<Vec<AppendEvent>>>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Shared {
    /// Per user: APPENDs seen so far.
    counts: HashMap<String, u64>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`upstream_port`.
    /// Must be called inside a tokio runtime that keeps running while the proxy is used.
    pub async fn start(upstream_port: u16, schedule: Schedule) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let events = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = {
            let events = events.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let conn = connections.fetch_add(1, Ordering::SeqCst);
                    let events = events.clone();
                    let schedule = schedule.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                        else {
                            return;
                        };
                        session(conn, client, server, schedule, events, shared).await;
                    });
                }
            })
        };
        Proxy {
            port,
            events,
            connections,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn events(&self) -> Vec<AppendEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A literal announced at the end of a line: `{N}` or `{N+}` before CRLF.
fn literal_len(line: &[u8]) -> Option<(usize, bool)> {
    let l = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let inner = &l[open + 1..];
    let (digits, plus) = match inner.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (inner, false),
    };
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, plus))
}

/// The user a LOGIN or AUTHENTICATE PLAIN (with initial response) acts as.
fn login_user(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let _tag = words.next()?;
    match words.next()?.to_ascii_uppercase().as_str() {
        "LOGIN" => Some(words.next()?.trim_matches('"').to_string()),
        "AUTHENTICATE" => {
            let mech = words.next()?.to_ascii_uppercase();
            let ir = base64::engine::general_purpose::STANDARD
                .decode(words.next()?)
                .ok()?;
            let text = String::from_utf8_lossy(&ir).into_owned();
            match mech.as_str() {
                "PLAIN" => {
                    let mut parts = text.split('\0');
                    let authzid = parts.next()?;
                    let authcid = parts.next()?;
                    Some(if authzid.is_empty() { authcid } else { authzid }.to_string())
                }
                "XOAUTH2" => text
                    .split('\x01')
                    .find_map(|p| p.strip_prefix("user="))
                    .map(str::to_string),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What to do with the server's completion of a tag.
#[derive(Debug, Clone)]
enum Rewrite {
    /// Replace it with this text; close the connection afterwards if `close`.
    Replace { answer: String, close: bool },
    /// Forward it after this long.
    Delay(Duration),
}

type Rewrites = Arc<Mutex<HashMap<String, Rewrite>>>;

async fn session(
    conn: u64,
    client: TcpStream,
    server: TcpStream,
    schedule: Schedule,
    events: Arc<Mutex<Vec<AppendEvent>>>,
    shared: Arc<Mutex<Shared>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let rewrites: Rewrites = Arc::new(Mutex::new(HashMap::new()));
    let mut up = tokio::spawn(client_to_server(
        conn,
        BufReader::new(cr),
        sw,
        schedule,
        events,
        shared,
        rewrites.clone(),
    ));
    let mut down = tokio::spawn(server_to_client(BufReader::new(sr), cw, rewrites));
    // Whichever side ends first ends the session: both sockets are closed.
    tokio::select! {
        _ = &mut up => down.abort(),
        _ = &mut down => up.abort(),
    }
}

async fn client_to_server(
    conn: u64,
    mut cr: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut sw: tokio::net::tcp::OwnedWriteHalf,
    schedule: Schedule,
    events: Arc<Mutex<Vec<AppendEvent>>>,
    shared: Arc<Mutex<Shared>>,
    rewrites: Rewrites,
) -> std::io::Result<()> {
    let mut user = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if cr.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some(u) = login_user(&text) {
            user = u;
        }
        let mut words = text.split_whitespace();
        let tag = words.next().unwrap_or("").to_string();
        let is_append = words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("APPEND"));
        let literal = literal_len(&line);
        let action = match (is_append, literal) {
            (true, Some((_, true))) => {
                let n = {
                    let mut sh = shared.lock().unwrap();
                    let c = sh.counts.entry(user.clone()).or_insert(0);
                    *c += 1;
                    *c - 1
                };
                let action = schedule(&user, n);
                events.lock().unwrap().push(AppendEvent {
                    at: Instant::now(),
                    conn,
                    user: user.clone(),
                    n,
                    action,
                });
                action
            }
            _ => Action::Forward,
        };
        match action {
            Action::Forward | Action::Delay { .. } | Action::DelayAnswer { .. } => {
                if let Action::Delay { ms } = action {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if let Action::DelayAnswer { ms } = action {
                    rewrites
                        .lock()
                        .unwrap()
                        .insert(tag.clone(), Rewrite::Delay(Duration::from_millis(ms)));
                }
                sw.write_all(&line).await?;
                if let Some((n, _)) = literal {
                    copy_exact(&mut cr, &mut sw, n).await?;
                }
            }
            Action::DropMidLiteral => {
                let (n, _) = literal.expect("APPEND with a literal");
                sw.write_all(&line).await?;
                copy_exact(&mut cr, &mut sw, n / 2).await?;
                sw.flush().await?;
                // Give the server the bytes, then cut both connections.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Ok(());
            }
            Action::Throttle { ms: _ }
            | Action::ThrottleBye { ms: _ }
            | Action::NotConnected
            | Action::RefuseBad(_) => {
                let (n, _) = literal.expect("APPEND with a literal");
                // Swallow the literal and the rest of the command (its CRLF).
                let mut sink = vec![0u8; n];
                cr.read_exact(&mut sink).await?;
                let mut rest = Vec::new();
                cr.read_until(b'\n', &mut rest).await?;
                let bye = matches!(action, Action::ThrottleBye { .. });
                let ms = match action {
                    Action::Throttle { ms } | Action::ThrottleBye { ms } => ms,
                    _ => 0,
                };
                let answer = if let Action::RefuseBad(text) = action {
                    format!("{tag} BAD {text}\r\n")
                } else if action == Action::NotConnected {
                    format!("{tag} BAD User is authenticated but not connected.\r\n")
                } else if bye {
                    format!(
                        "{tag} BAD Request is throttled. Suggested Backoff Time: {ms} milliseconds\r\n\
                         * BYE Connection closed. 14.3.0.0\r\n"
                    )
                } else {
                    format!(
                        "{tag} NO Request is throttled. Suggested Backoff Time: {ms} milliseconds\r\n"
                    )
                };
                rewrites
                    .lock()
                    .unwrap()
                    .insert(tag.clone(), Rewrite::Replace { answer, close: bye });
                sw.write_all(format!("{tag} NOOP\r\n").as_bytes()).await?;
            }
        }
    }
}

async fn copy_exact(
    from: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut n: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while n > 0 {
        let k = from.read(&mut buf[..n.min(64 * 1024)]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(&buf[..k]).await?;
        n -= k;
    }
    Ok(())
}

async fn server_to_client(
    mut sr: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut cw: tokio::net::tcp::OwnedWriteHalf,
    rewrites: Rewrites,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    // True while the next line continues a response after a literal.
    let mut continuation = false;
    loop {
        line.clear();
        if sr.read_until(b'\n', &mut line).await? == 0 {
            cw.flush().await?;
            return Ok(());
        }
        if !continuation {
            let text = String::from_utf8_lossy(&line);
            let tag = text.split(' ').next().unwrap_or("");
            if tag != "*" && tag != "+" {
                let hit = rewrites.lock().unwrap().remove(tag);
                match hit {
                    Some(Rewrite::Replace { answer, close }) => {
                        cw.write_all(answer.as_bytes()).await?;
                        cw.flush().await?;
                        if close {
                            return Ok(());
                        }
                        continue;
                    }
                    Some(Rewrite::Delay(d)) => {
                        cw.flush().await?;
                        tokio::time::sleep(d).await;
                    }
                    None => {}
                }
            }
        }
        cw.write_all(&line).await?;
        match literal_len(&line) {
            Some((n, _)) => {
                copy_exact(&mut sr, &mut cw, n).await?;
                continuation = true;
            }
            None => {
                continuation = false;
                cw.flush().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_helpers() {
        assert_eq!(
            literal_len(b"a1 APPEND INBOX {123+}\r\n"),
            Some((123, true))
        );
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {5}\r\n"), Some((5, false)));
        assert_eq!(literal_len(b"a1 OK done\r\n"), None);
        let ir = base64::engine::general_purpose::STANDARD.encode("alice\0master\0pw");
        assert_eq!(
            login_user(&format!("c2 AUTHENTICATE PLAIN {ir}\r\n")).as_deref(),
            Some("alice")
        );
        assert_eq!(
            login_user("c1 LOGIN \"bob\" \"x\"\r\n").as_deref(),
            Some("bob")
        );
    }
}
