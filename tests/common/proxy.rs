//! A fault-injecting IMAP proxy: a real TCP proxy on 127.0.0.1 in front of a real (plain
//! port of a) Dovecot, which on a schedule answers APPENDs the way Exchange Online does when
//! it throttles, drops connections in the middle of a literal, or holds commands back, and
//! which can make the Dovecot behind it look like Exchange Online ([`Options::exchange`]).
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
//!
//! # What Exchange Online does differently, and how the proxy imitates it
//!
//! - It offers neither MULTIAPPEND, CONDSTORE, QRESYNC nor SPECIAL-USE: those capabilities
//!   are taken out of every capability list, special-use attributes out of LIST, and
//!   HIGHESTMODSEQ / MODSEQ out of every response.
//! - It keeps mail in its own store and renders MIME again on FETCH: the `BODY[]` a client
//!   reads back is not the bytes it appended. The proxy adds a header line at the top,
//!   re-folds long header lines at another column and turns bare LF into CRLF, and rewrites
//!   the literal's length; `BODY[HEADER.FIELDS (...)]` keeps its fields (re-folded, equal
//!   once unfolded). `RFC822.SIZE` is an estimate, never the exact size.
//! - It answers `* n FETCH (RFC822.SIZE s UID u ...)`: the size before the UID.
//! - It throttles per mailbox ([`Bucket`]): past the budget an APPEND gets `NO Request is
//!   throttled. Suggested Backoff Time: N milliseconds`, N growing when the client comes
//!   back before the suggested time is over.
//! - It ends a session when its token expires: `* BYE Session invalidated -
//!   AccessTokenExpired` ([`Options::token_lifetime`]).
//!
//! And like any server, it goes on executing what a client sent before it died: when the
//! client side closes, everything already received from it is still forwarded, and the
//! server side stays open until the server has answered every complete command (or
//! [`Options::drain_limit`] passes), so a killed client's pipelined APPENDs really are
//! saved after it is gone. [`Options::hold`] holds every command back a few ms on its way to
//! the server, which widens that window the way a WAN does.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
    /// Answer `NO <text>` (e.g. `[OVERQUOTA] Mailbox is full`).
    RefuseNo(&'static str),
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

/// Exchange's per-mailbox budget: a token bucket per user. An APPEND the bucket has no
/// token for is answered with a throttle; APPENDs that come before the suggested time is
/// over on a new session are throttled again, with a longer suggestion.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// APPENDs per second refilled.
    pub per_second: f64,
    /// Tokens an idle bucket saves up (and starts with).
    pub burst: f64,
    /// The least backoff suggested (it is also at least the time to the next token).
    pub backoff_ms: u64,
    /// The suggestion doubles on each early return, up to this.
    pub max_backoff_ms: u64,
}

impl Default for Bucket {
    fn default() -> Bucket {
        Bucket {
            per_second: 20.0,
            burst: 40.0,
            backoff_ms: 200,
            max_backoff_ms: 30_000,
        }
    }
}

/// Rewrites one whole server response (its literals included) into the responses the
/// client gets instead: none, the same, or several. For servers that answer in ways
/// Dovecot does not (split FETCH items, an odd INTERNALDATE, a wrong RFC822.SIZE).
pub type Respond = Arc<dyn Fn(Vec<u8>) -> Vec<Vec<u8>> + Send + Sync>;

/// How the proxy behaves; [`Options::new`] is a plain proxy following `schedule`.
#[derive(Clone)]
pub struct Options {
    pub schedule: Schedule,
    /// Look like Exchange Online (see the module doc).
    pub exchange: bool,
    /// Throttle each user's APPENDs past this budget (after `schedule`, which wins).
    pub bucket: Option<Bucket>,
    /// End every session this long after it was opened, as Exchange does when the token
    /// a session logged in with expires.
    pub token_lifetime: Option<Duration>,
    /// Hold every command (and literal) back this long on its way to the server.
    pub hold: Duration,
    /// How long a session whose client went away is kept for the server to finish the
    /// commands it already has.
    pub drain_limit: Duration,
    /// Applied to every server response, after the Exchange view.
    pub respond: Option<Respond>,
    /// (what the client sends, what the server gets): a folder name the client sends as
    /// a literal (not in an APPEND) and equal to the first is sent on as the second. With
    /// a `respond` that renames the folder in LIST, the server then looks like one that
    /// names it otherwise.
    pub renames: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Options {
    pub fn new(schedule: Schedule) -> Options {
        Options {
            schedule,
            exchange: false,
            bucket: None,
            token_lifetime: None,
            hold: Duration::ZERO,
            drain_limit: Duration::from_secs(10),
            respond: None,
            renames: Vec::new(),
        }
    }

    /// Adds a rename (see [`Options::renames`]).
    pub fn rename(mut self, client: &[u8], server: &[u8]) -> Options {
        self.renames.push((client.to_vec(), server.to_vec()));
        self
    }

    pub fn respond(mut self, f: Respond) -> Options {
        self.respond = Some(f);
        self
    }

    /// A proxy that forwards every APPEND (the faults come from the other options).
    pub fn forward_all() -> Options {
        Options::new(Arc::new(|_: &str, _| Action::Forward))
    }

    pub fn exchange(mut self) -> Options {
        self.exchange = true;
        self
    }

    pub fn throttle(mut self, bucket: Bucket) -> Options {
        self.bucket = Some(bucket);
        self
    }

    pub fn token_lifetime(mut self, d: Duration) -> Options {
        self.token_lifetime = Some(d);
        self
    }

    pub fn hold(mut self, d: Duration) -> Options {
        self.hold = d;
        self
    }

    pub fn drain_limit(mut self, d: Duration) -> Options {
        self.drain_limit = d;
        self
    }
}

/// Counters over all sessions.
#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    /// Sessions ended with `* BYE Session invalidated - AccessTokenExpired`.
    expired: AtomicU64,
    /// APPENDs the server completed with OK after their client had gone.
    late_appends: AtomicU64,
    /// Sessions whose client went away with commands still at the server.
    drained: AtomicU64,
}

pub struct Proxy {
    port: u16,
    events: Arc<Mutex<Vec<AppendEvent>>>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A user's bucket state.
#[derive(Debug, Clone)]
struct BucketState {
    tokens: f64,
    last: Instant,
    /// Throttled until then; APPENDs before it are throttled too.
    blocked_until: Option<Instant>,
    /// The connection the current throttle was answered on: APPENDs pipelined behind the
    /// throttled one on it were sent before the answer and are not an early return.
    throttled_conn: u64,
    last_ms: u64,
}

impl BucketState {
    fn new(cfg: &Bucket, now: Instant) -> BucketState {
        BucketState {
            tokens: cfg.burst,
            last: now,
            blocked_until: None,
            throttled_conn: u64::MAX,
            last_ms: 0,
        }
    }

    /// None: the APPEND may go; Some(ms): throttle it, suggesting `ms`.
    fn decide(&mut self, cfg: &Bucket, conn: u64, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * cfg.per_second).min(cfg.burst);
        self.last = now;
        if let Some(until) = self.blocked_until {
            if now < until {
                if conn != self.throttled_conn {
                    // Came back before the suggested time was over: suggest longer.
                    self.last_ms = (self.last_ms.max(1) * 2).min(cfg.max_backoff_ms);
                    self.throttled_conn = conn;
                    self.blocked_until = Some(now + Duration::from_millis(self.last_ms));
                    return Some(self.last_ms);
                }
                return Some((until - now).as_millis().max(1) as u64);
            }
            self.blocked_until = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        let need = ((1.0 - self.tokens) / cfg.per_second.max(0.001) * 1000.0).ceil() as u64;
        self.last_ms = cfg.backoff_ms.max(need).min(cfg.max_backoff_ms);
        self.throttled_conn = conn;
        self.blocked_until = Some(now + Duration::from_millis(self.last_ms));
        Some(self.last_ms)
    }
}

#[derive(Default)]
struct Shared {
    /// Per user: APPENDs seen so far.
    counts: HashMap<String, u64>,
    buckets: HashMap<String, BucketState>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`upstream_port`.
    /// Must be called inside a tokio runtime that keeps running while the proxy is used.
    pub async fn start(upstream_port: u16, schedule: Schedule) -> Proxy {
        Proxy::start_with(upstream_port, Options::new(schedule)).await
    }

    /// [`Proxy::start`] with every option.
    pub async fn start_with(upstream_port: u16, opts: Options) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let events = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let opts = Arc::new(opts);
        let task = {
            let events = events.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let conn = stats.connections.fetch_add(1, Ordering::SeqCst);
                    let ctx = Ctx {
                        conn,
                        opts: opts.clone(),
                        events: events.clone(),
                        shared: shared.clone(),
                        stats: stats.clone(),
                    };
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                        else {
                            return;
                        };
                        session(ctx, client, server).await;
                    });
                }
            })
        };
        Proxy {
            port,
            events,
            stats,
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
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Throttle answers (`NO` or `BAD ... BYE`) given to `user` so far.
    pub fn throttles(&self, user: &str) -> u64 {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e.user == user
                    && matches!(
                        e.action,
                        Action::Throttle { .. } | Action::ThrottleBye { .. }
                    )
            })
            .count() as u64
    }

    /// Sessions ended because their token expired.
    pub fn expired_sessions(&self) -> u64 {
        self.stats.expired.load(Ordering::SeqCst)
    }

    /// APPENDs the server saved (answered OK) after the client that sent them was gone.
    pub fn late_appends(&self) -> u64 {
        self.stats.late_appends.load(Ordering::SeqCst)
    }

    /// Sessions whose client went away while the server still had commands of it.
    pub fn drained_sessions(&self) -> u64 {
        self.stats.drained.load(Ordering::SeqCst)
    }
}

/// What one session needs to know.
#[derive(Clone)]
struct Ctx {
    conn: u64,
    opts: Arc<Options>,
    events: Arc<Mutex<Vec<AppendEvent>>>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<Stats>,
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

/// State the two directions of a session share.
#[derive(Default)]
struct Flow {
    rewrites: Mutex<HashMap<String, Rewrite>>,
    /// Tags of complete commands the server has not answered yet.
    outstanding: Mutex<HashSet<String>>,
    /// Tags of APPENDs forwarded to the server.
    appends: Mutex<HashSet<String>>,
    /// The client side has closed.
    client_gone: AtomicBool,
}

/// From the client reader to the server writer.
enum Up {
    /// Bytes to write once `due`.
    Data(Instant, Vec<u8>),
    /// Cut both connections (after writing what came before).
    Cut,
    /// The client has gone: finish what the server has, then half-close.
    Gone,
}

/// How the server writer ended.
enum WriterEnd {
    Cut,
    ClientGone,
    ServerGone,
}

async fn session(ctx: Ctx, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let flow = Arc::new(Flow::default());
    let (tx, rx) = mpsc::channel(256);
    let mut reader = tokio::spawn(client_to_server(
        ctx.clone(),
        BufReader::new(cr),
        tx,
        flow.clone(),
    ));
    let mut writer = tokio::spawn(server_writer(
        rx,
        BufWriter::new(sw),
        flow.clone(),
        ctx.opts.drain_limit,
    ));
    let mut down = tokio::spawn(server_to_client(ctx.clone(), BufReader::new(sr), cw, flow));
    tokio::select! {
        end = &mut writer => {
            if let Ok(WriterEnd::ClientGone) = end {
                // The server has answered everything (or the bound passed) and saw the
                // half-close: let it say goodbye, within the bound.
                let _ = tokio::time::timeout(ctx.opts.drain_limit, &mut down).await;
            }
        }
        _ = &mut down => {}
    }
    reader.abort();
    writer.abort();
    down.abort();
    let _ = (&mut reader).await;
}

async fn send(tx: &mpsc::Sender<Up>, hold: Duration, bytes: Vec<u8>) -> std::io::Result<()> {
    tx.send(Up::Data(Instant::now() + hold, bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
}

/// Reads `n` bytes from the client and queues them for the server in chunks; what was
/// read before the client closed is queued too.
async fn forward_exact(
    from: &mut BufReader<OwnedReadHalf>,
    tx: &mpsc::Sender<Up>,
    hold: Duration,
    mut n: usize,
) -> std::io::Result<()> {
    while n > 0 {
        let mut buf = vec![0u8; n.min(64 * 1024)];
        let k = from.read(&mut buf).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.truncate(k);
        send(tx, hold, buf).await?;
        n -= k;
    }
    Ok(())
}

async fn client_to_server(
    ctx: Ctx,
    mut cr: BufReader<OwnedReadHalf>,
    tx: mpsc::Sender<Up>,
    flow: Arc<Flow>,
) {
    let r = client_to_server_inner(&ctx, &mut cr, &tx, &flow).await;
    flow.client_gone.store(true, Ordering::SeqCst);
    if !matches!(r, Ok(true)) {
        let _ = tx.send(Up::Gone).await;
    }
}

/// Ok(true) if the session is to be cut.
async fn client_to_server_inner(
    ctx: &Ctx,
    cr: &mut BufReader<OwnedReadHalf>,
    tx: &mpsc::Sender<Up>,
    flow: &Flow,
) -> std::io::Result<bool> {
    let hold = ctx.opts.hold;
    let mut user = String::new();
    let mut line = Vec::new();
    // The tag of the command whose line ended in a literal (its next line goes on with it).
    let mut open_command: Option<String> = None;
    loop {
        line.clear();
        if cr.read_until(b'\n', &mut line).await? == 0 {
            return Ok(false);
        }
        let literal = literal_len(&line);
        if let Some(tag) = open_command.take() {
            // More of a command (e.g. the next message of a MULTIAPPEND).
            send(tx, hold, line.clone()).await?;
            match literal {
                Some((n, _)) => {
                    forward_exact(cr, tx, hold, n).await?;
                    open_command = Some(tag);
                }
                None => {
                    flow.outstanding.lock().unwrap().insert(tag);
                }
            }
            continue;
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
        let action = match (is_append, literal) {
            (true, Some((_, true))) => decide(ctx, &user),
            _ => Action::Forward,
        };
        match action {
            Action::Forward | Action::Delay { .. } | Action::DelayAnswer { .. } => {
                if let Action::Delay { ms } = action {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if let Action::DelayAnswer { ms } = action {
                    flow.rewrites
                        .lock()
                        .unwrap()
                        .insert(tag.clone(), Rewrite::Delay(Duration::from_millis(ms)));
                }
                if is_append {
                    flow.appends.lock().unwrap().insert(tag.clone());
                }
                let rename = match literal {
                    Some((n, _)) if !is_append => ctx
                        .opts
                        .renames
                        .iter()
                        .find(|(client, _)| client.len() == n)
                        .cloned(),
                    _ => None,
                };
                if let Some((client, server)) = rename {
                    let open = line.iter().rposition(|&b| b == b'{').unwrap_or(line.len());
                    let mut head = line[..open].to_vec();
                    head.extend_from_slice(format!("{{{}}}\r\n", server.len()).as_bytes());
                    send(tx, hold, head).await?;
                    let mut got = vec![0u8; client.len()];
                    cr.read_exact(&mut got).await?;
                    send(tx, hold, if got == client { server } else { got }).await?;
                    open_command = Some(tag);
                    continue;
                }
                send(tx, hold, line.clone()).await?;
                match literal {
                    Some((n, _)) => {
                        forward_exact(cr, tx, hold, n).await?;
                        open_command = Some(tag);
                    }
                    None => {
                        if !tag.is_empty() {
                            flow.outstanding.lock().unwrap().insert(tag);
                        }
                    }
                }
            }
            Action::DropMidLiteral => {
                let (n, _) = literal.expect("APPEND with a literal");
                send(tx, hold, line.clone()).await?;
                forward_exact(cr, tx, hold, n / 2).await?;
                let _ = tx.send(Up::Cut).await;
                return Ok(true);
            }
            Action::Throttle { ms: _ }
            | Action::ThrottleBye { ms: _ }
            | Action::NotConnected
            | Action::RefuseBad(_)
            | Action::RefuseNo(_) => {
                let (mut n, _) = literal.expect("APPEND with a literal");
                // Swallow the literal(s) and the rest of the command (its CRLF).
                loop {
                    let mut sink = vec![0u8; n];
                    cr.read_exact(&mut sink).await?;
                    let mut rest = Vec::new();
                    if cr.read_until(b'\n', &mut rest).await? == 0 {
                        return Ok(false);
                    }
                    match literal_len(&rest) {
                        Some((m, _)) => n = m,
                        None => break,
                    }
                }
                let bye = matches!(action, Action::ThrottleBye { .. });
                let ms = match action {
                    Action::Throttle { ms } | Action::ThrottleBye { ms } => ms,
                    _ => 0,
                };
                let answer = if let Action::RefuseBad(text) = action {
                    format!("{tag} BAD {text}\r\n")
                } else if let Action::RefuseNo(text) = action {
                    format!("{tag} NO {text}\r\n")
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
                flow.rewrites
                    .lock()
                    .unwrap()
                    .insert(tag.clone(), Rewrite::Replace { answer, close: bye });
                flow.outstanding.lock().unwrap().insert(tag.clone());
                send(tx, hold, format!("{tag} NOOP\r\n").into_bytes()).await?;
            }
        }
    }
}

/// The action for the next APPEND of `user`: the schedule's, else the bucket's.
fn decide(ctx: &Ctx, user: &str) -> Action {
    let now = Instant::now();
    let (n, action) = {
        let mut sh = ctx.shared.lock().unwrap();
        let c = sh.counts.entry(user.to_string()).or_insert(0);
        *c += 1;
        let n = *c - 1;
        let mut action = (ctx.opts.schedule)(user, n);
        if let (Action::Forward, Some(cfg)) = (action, ctx.opts.bucket.as_ref()) {
            let st = sh
                .buckets
                .entry(user.to_string())
                .or_insert_with(|| BucketState::new(cfg, now));
            if let Some(ms) = st.decide(cfg, ctx.conn, now) {
                action = Action::Throttle { ms };
            }
        }
        (n, action)
    };
    ctx.events.lock().unwrap().push(AppendEvent {
        at: now,
        conn: ctx.conn,
        user: user.to_string(),
        n,
        action,
    });
    action
}

/// Writes what the client reader queued, each piece once due; when the client has gone,
/// waits (within `drain_limit`) until the server has answered every complete command, then
/// half-closes so the server sees the end.
async fn server_writer(
    mut rx: mpsc::Receiver<Up>,
    mut sw: BufWriter<OwnedWriteHalf>,
    flow: Arc<Flow>,
    drain_limit: Duration,
) -> WriterEnd {
    while let Some(m) = rx.recv().await {
        match m {
            Up::Data(due, bytes) => {
                if due > Instant::now() {
                    if sw.flush().await.is_err() {
                        return WriterEnd::ServerGone;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                if sw.write_all(&bytes).await.is_err() {
                    return WriterEnd::ServerGone;
                }
                if rx.is_empty() && sw.flush().await.is_err() {
                    return WriterEnd::ServerGone;
                }
            }
            Up::Cut => {
                let _ = sw.flush().await;
                // Give the server the bytes, then cut both connections.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return WriterEnd::Cut;
            }
            Up::Gone => {
                let _ = sw.flush().await;
                let deadline = Instant::now() + drain_limit;
                while !flow.outstanding.lock().unwrap().is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = sw.shutdown().await;
                return WriterEnd::ClientGone;
            }
        }
    }
    WriterEnd::ClientGone
}

/// Reads one line into `buf` (cleared first); Ok(None) at the end of the stream.
async fn read_line(sr: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    Ok(sr.read_until(b'\n', buf).await? > 0)
}

/// The next whole response (lines and literals) from the server, or None at its end;
/// `Err(true)` when `deadline` passed between two responses.
async fn next_response(
    sr: &mut BufReader<OwnedReadHalf>,
    deadline: Option<Instant>,
) -> Result<Option<Vec<u8>>, bool> {
    let mut resp = Vec::new();
    match deadline {
        Some(d) if Instant::now() >= d => return Err(true),
        Some(d) => {
            tokio::select! {
                biased;
                r = sr.read_until(b'\n', &mut resp) => {
                    if r.map_err(|_| false)? == 0 {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(d.into()) => {
                    if resp.is_empty() {
                        return Err(true);
                    }
                    // Part of a line had come: finish the response, expire after it.
                    if sr.read_until(b'\n', &mut resp).await.map_err(|_| false)? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
        None => {
            if sr.read_until(b'\n', &mut resp).await.map_err(|_| false)? == 0 {
                return Ok(None);
            }
        }
    }
    let mut last_line_start = 0;
    while let Some((n, _)) = literal_len(&resp[last_line_start..]) {
        let at = resp.len();
        resp.resize(at + n, 0);
        sr.read_exact(&mut resp[at..]).await.map_err(|_| false)?;
        last_line_start = resp.len();
        let mut more = Vec::new();
        if !read_line(sr, &mut more).await.map_err(|_| false)? {
            return Ok(None);
        }
        resp.extend_from_slice(&more);
    }
    Ok(Some(resp))
}

async fn server_to_client(
    ctx: Ctx,
    mut sr: BufReader<OwnedReadHalf>,
    cw: OwnedWriteHalf,
    flow: Arc<Flow>,
) {
    let mut cw = BufWriter::new(cw);
    // Writes to a client that has gone fail; the server is still read to the end.
    let mut client_ok = true;
    let deadline = ctx.opts.token_lifetime.map(|d| Instant::now() + d);
    let mut counted_drain = false;
    loop {
        let resp = match next_response(&mut sr, deadline).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(false) => {
                let _ = cw.flush().await;
                return;
            }
            Err(true) => {
                ctx.stats.expired.fetch_add(1, Ordering::SeqCst);
                let _ = cw
                    .write_all(b"* BYE Session invalidated - AccessTokenExpired\r\n")
                    .await;
                let _ = cw.flush().await;
                return;
            }
        };
        let first = resp.split(|&b| b == b' ').next().unwrap_or(b"");
        let tag = String::from_utf8_lossy(first).into_owned();
        let tagged = tag != "*" && tag != "+";
        let mut out = Some(resp);
        if tagged {
            let resp = out.as_ref().unwrap();
            let was_outstanding = flow.outstanding.lock().unwrap().remove(&tag);
            let gone = flow.client_gone.load(Ordering::SeqCst);
            if gone && was_outstanding && !counted_drain {
                counted_drain = true;
                ctx.stats.drained.fetch_add(1, Ordering::SeqCst);
            }
            let was_append = flow.appends.lock().unwrap().remove(&tag);
            if gone
                && was_append
                && resp
                    .get(tag.len() + 1..tag.len() + 3)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"OK"))
            {
                ctx.stats.late_appends.fetch_add(1, Ordering::SeqCst);
            }
            let hit = flow.rewrites.lock().unwrap().remove(&tag);
            match hit {
                Some(Rewrite::Replace { answer, close }) => {
                    if client_ok {
                        let _ = cw.write_all(answer.as_bytes()).await;
                        let _ = cw.flush().await;
                    }
                    if close {
                        return;
                    }
                    continue;
                }
                Some(Rewrite::Delay(d)) => {
                    let _ = cw.flush().await;
                    tokio::time::sleep(d).await;
                }
                None => {}
            }
        }
        if ctx.opts.exchange {
            out = exchange_response(out.unwrap());
        }
        let Some(bytes) = out else { continue };
        let bytes = match &ctx.opts.respond {
            Some(f) => f(bytes).concat(),
            None => bytes,
        };
        if client_ok {
            client_ok = cw.write_all(&bytes).await.is_ok();
            // Flush at the end of what the server has sent so far.
            if client_ok && sr.buffer().is_empty() {
                client_ok = cw.flush().await.is_ok();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Exchange's view of responses (pure functions of the bytes)
// ---------------------------------------------------------------------------------------

/// Capabilities Exchange Online does not offer.
const HIDDEN_CAPS: &[&str] = &[
    "MULTIAPPEND",
    "CONDSTORE",
    "QRESYNC",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
];

/// RFC 6154 attributes Exchange does not report.
const SPECIAL_USE: &[&str] = &[
    "\\All",
    "\\Archive",
    "\\Drafts",
    "\\Flagged",
    "\\Junk",
    "\\Sent",
    "\\Trash",
    "\\Important",
];

/// Where a header line is folded when rendered (Dovecot keeps what was appended, commonly
/// folded near 76).
const FOLD_AT: usize = 60;

/// The header line a rendered message starts with.
pub const RENDERED_HEADER: &[u8] = b"X-Rendered: exchange-like\r\n";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// A whole server response as Exchange would send it; None to leave it out.
pub fn exchange_response(resp: Vec<u8>) -> Option<Vec<u8>> {
    let mut words = resp.splitn(4, |&b| b == b' ');
    let tag = words.next().unwrap_or(b"");
    let second = words.next().unwrap_or(b"").to_ascii_uppercase();
    let third = words.next().unwrap_or(b"").to_ascii_uppercase();
    if tag == b"*" {
        match second.as_slice() {
            b"CAPABILITY" | b"CAPABILITY\r\n" => return Some(strip_caps(&resp)),
            b"LIST" | b"LSUB" => return Some(strip_list_attrs(&resp)),
            b"STATUS" => return Some(strip_status_modseq(&resp)),
            b"OK" if third.starts_with(b"[HIGHESTMODSEQ") || third.starts_with(b"[NOMODSEQ]") => {
                return None
            }
            _ => {}
        }
        if third.starts_with(b"FETCH") && second.iter().all(u8::is_ascii_digit) {
            return Some(rewrite_fetch(&resp).unwrap_or(resp));
        }
    }
    if find(&resp, b"[CAPABILITY ").is_some() {
        return Some(strip_caps(&resp));
    }
    Some(resp)
}

/// Takes [`HIDDEN_CAPS`] out of `* CAPABILITY ...` or a `[CAPABILITY ...]` code.
pub fn strip_caps(line: &[u8]) -> Vec<u8> {
    let (start, end) = if let Some(p) = find(line, b"[CAPABILITY ") {
        let s = p + b"[CAPABILITY ".len();
        let Some(e) = line[s..].iter().position(|&b| b == b']') else {
            return line.to_vec();
        };
        (s, s + e)
    } else if let Some(p) = find(line, b"* CAPABILITY ") {
        let s = p + b"* CAPABILITY ".len();
        let e = line.len()
            - line
                .iter()
                .rev()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
        (s, e.max(s))
    } else {
        return line.to_vec();
    };
    let kept: Vec<&[u8]> = line[start..end]
        .split(|&b| b == b' ')
        .filter(|c| {
            !c.is_empty()
                && !HIDDEN_CAPS
                    .iter()
                    .any(|h| c.eq_ignore_ascii_case(h.as_bytes()))
        })
        .collect();
    let mut out = line[..start].to_vec();
    out.extend_from_slice(&kept.join(&b' '));
    out.extend_from_slice(&line[end..]);
    out
}

/// Takes special-use attributes out of a LIST/LSUB response's attribute list.
pub fn strip_list_attrs(resp: &[u8]) -> Vec<u8> {
    let Some(open) = resp.iter().position(|&b| b == b'(') else {
        return resp.to_vec();
    };
    let Some(close) = resp[open..].iter().position(|&b| b == b')') else {
        return resp.to_vec();
    };
    let close = open + close;
    let kept: Vec<&[u8]> = resp[open + 1..close]
        .split(|&b| b == b' ')
        .filter(|a| {
            !a.is_empty()
                && !SPECIAL_USE
                    .iter()
                    .any(|s| a.eq_ignore_ascii_case(s.as_bytes()))
        })
        .collect();
    let mut out = resp[..=open].to_vec();
    out.extend_from_slice(&kept.join(&b' '));
    out.extend_from_slice(&resp[close..]);
    out
}

/// Takes `HIGHESTMODSEQ n` out of a STATUS response's item list (the last parenthesis).
pub fn strip_status_modseq(resp: &[u8]) -> Vec<u8> {
    let Some(open) = resp.iter().rposition(|&b| b == b'(') else {
        return resp.to_vec();
    };
    let Some(close) = resp[open..].iter().position(|&b| b == b')') else {
        return resp.to_vec();
    };
    let close = open + close;
    let words: Vec<&[u8]> = resp[open + 1..close]
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i].eq_ignore_ascii_case(b"HIGHESTMODSEQ") {
            i += 2;
            continue;
        }
        kept.push(words[i]);
        i += 1;
    }
    let mut out = resp[..=open].to_vec();
    out.extend_from_slice(&kept.join(&b' '));
    out.extend_from_slice(&resp[close..]);
    out
}

/// A FETCH item's value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    /// An atom, number, NIL or parenthesised list, as sent.
    Raw(Vec<u8>),
    /// A string (literal or quoted): as sent, and its content.
    Str(Vec<u8>, Vec<u8>),
    /// A string rewritten by the proxy, sent as a literal.
    Lit(Vec<u8>),
}

/// A cursor over a response, with literals in line.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// `{N}` / `{N+}` then CRLF then N bytes; returns the content.
    fn literal(&mut self) -> Option<&[u8]> {
        if self.peek()? != b'{' {
            return None;
        }
        let close = self.i + self.b[self.i..].iter().position(|&b| b == b'}')?;
        let digits = &self.b[self.i + 1..close];
        let digits = digits.strip_suffix(b"+").unwrap_or(digits);
        let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        if self.b.get(close + 1..close + 3)? != b"\r\n" {
            return None;
        }
        let start = close + 3;
        let end = start.checked_add(n)?;
        let content = self.b.get(start..end)?;
        self.i = end;
        Some(content)
    }

    /// A quoted string; returns its content unescaped.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(out),
                b'\\' => {
                    out.push(self.peek()?);
                    self.i += 1;
                }
                b'\r' | b'\n' => return None,
                c => out.push(c),
            }
        }
    }

    /// A parenthesised list (nested, with strings and literals inside), as sent.
    fn list(&mut self) -> Option<&[u8]> {
        let start = self.i;
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'(' => {
                    depth += 1;
                    self.i += 1;
                }
                b')' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                    if depth == 0 {
                        return Some(&self.b[start..self.i]);
                    }
                }
                b'"' => {
                    self.quoted()?;
                }
                b'{' => {
                    self.literal()?;
                }
                b'\r' | b'\n' => return None,
                _ => self.i += 1,
            }
        }
    }

    /// An item name: up to a space, a `[...]` section (spaces and parentheses allowed in
    /// it) and a `<origin>` included.
    fn name(&mut self) -> Option<&[u8]> {
        let start = self.i;
        let mut in_section = false;
        loop {
            match self.peek()? {
                b'[' => in_section = true,
                b']' => in_section = false,
                b' ' if !in_section => break,
                b'\r' | b'\n' => return None,
                _ => {}
            }
            self.i += 1;
        }
        (self.i > start).then(|| &self.b[start..self.i])
    }

    fn value(&mut self) -> Option<Val> {
        match self.peek()? {
            b'(' => Some(Val::Raw(self.list()?.to_vec())),
            b'"' => {
                let start = self.i;
                let content = self.quoted()?;
                Some(Val::Str(self.b[start..self.i].to_vec(), content))
            }
            b'{' => {
                let start = self.i;
                let content = self.literal()?.to_vec();
                Some(Val::Str(self.b[start..self.i].to_vec(), content))
            }
            _ => {
                let start = self.i;
                while !matches!(self.peek()?, b' ' | b')' | b'\r' | b'\n') {
                    self.i += 1;
                }
                (self.i > start).then(|| Val::Raw(self.b[start..self.i].to_vec()))
            }
        }
    }
}

/// A FETCH item: its name (`UID`, `BODY[HEADER.FIELDS (SUBJECT)]`...) and value.
type Item = (Vec<u8>, Val);

/// Splits `* n FETCH (items)\r\n` into its prefix (`* n FETCH `) and items.
fn parse_fetch(resp: &[u8]) -> Option<(&[u8], Vec<Item>)> {
    let open = find(resp, b" FETCH (")? + b" FETCH ".len();
    let prefix = &resp[..open];
    let mut c = Cursor {
        b: resp,
        i: open + 1,
    };
    let mut items = Vec::new();
    loop {
        while c.peek()? == b' ' {
            c.i += 1;
        }
        if c.peek()? == b')' {
            c.i += 1;
            break;
        }
        let name = c.name()?.to_vec();
        if c.peek()? != b' ' {
            return None;
        }
        c.i += 1;
        let v = c.value()?;
        items.push((name, v));
    }
    (&resp[c.i..] == b"\r\n").then_some((prefix, items))
}

/// RFC822.SIZE as Exchange reports it: an estimate a few percent off, never exact.
pub fn size_estimate(n: u64) -> u64 {
    let d = (n / 40).max(1);
    if n % 2 == 0 || n <= d {
        n + d
    } else {
        n - d
    }
}

/// The FETCH response Exchange would give: bodies rendered again, RFC822.SIZE estimated and
/// first, then UID, then the rest in order; MODSEQ left out. None if it does not parse
/// (then it is forwarded as it is).
pub fn rewrite_fetch(resp: &[u8]) -> Option<Vec<u8>> {
    let (prefix, items) = parse_fetch(resp)?;
    let mut size = Vec::new();
    let mut uid = Vec::new();
    let mut rest = Vec::new();
    for (name, v) in items {
        let upper = name.to_ascii_uppercase();
        let v = match (upper.as_slice(), v) {
            (b"MODSEQ", _) => continue,
            (b"RFC822.SIZE", Val::Raw(n)) => {
                let n: u64 = std::str::from_utf8(&n).ok()?.parse().ok()?;
                Val::Raw(size_estimate(n).to_string().into_bytes())
            }
            (b"BODY[]" | b"RFC822" | b"BINARY[]", Val::Str(_, s)) => Val::Lit(render_message(&s)),
            (b"BODY[HEADER]" | b"RFC822.HEADER", Val::Str(_, s)) => Val::Lit(render_message(&s)),
            (b"BODY[TEXT]" | b"RFC822.TEXT", Val::Str(_, s)) => Val::Lit(crlf(&s)),
            (n, Val::Str(_, s)) if n.starts_with(b"BODY[HEADER.FIELDS") && !n.contains(&b'<') => {
                Val::Lit(render_header(&crlf(&s)))
            }
            (_, v) => v,
        };
        match upper.as_slice() {
            b"RFC822.SIZE" => size.push((name, v)),
            b"UID" => uid.push((name, v)),
            _ => rest.push((name, v)),
        }
    }
    let mut out = prefix.to_vec();
    out.push(b'(');
    for (k, (name, v)) in size.into_iter().chain(uid).chain(rest).enumerate() {
        if k > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(&name);
        out.push(b' ');
        match v {
            Val::Raw(r) | Val::Str(r, _) => out.extend_from_slice(&r),
            Val::Lit(s) => {
                out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
                out.extend_from_slice(&s);
            }
        }
    }
    out.extend_from_slice(b")\r\n");
    Some(out)
}

/// Bare LF and bare CR become CRLF.
pub fn crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 50);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// A message as Exchange renders it on FETCH: [`RENDERED_HEADER`] on top, header lines
/// re-folded at [`FOLD_AT`], line ends CRLF.
pub fn render_message(body: &[u8]) -> Vec<u8> {
    let mut out = RENDERED_HEADER.to_vec();
    out.extend_from_slice(&render_header(&crlf(body)));
    out
}

/// Re-folds every field of the header block at the start of `b` (CRLF line ends); the
/// rest (from the empty line on) is kept.
pub fn render_header(b: &[u8]) -> Vec<u8> {
    let end = if b.starts_with(b"\r\n") {
        0
    } else {
        match find(b, b"\r\n\r\n") {
            Some(p) => p + 2,
            None => b.len(),
        }
    };
    let (head, tail) = b.split_at(end);
    let mut out = Vec::with_capacity(b.len() + 64);
    // Fields: a line not starting with a space or tab begins one.
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in head.split_inclusive(|&c| c == b'\n') {
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(f)) => f.extend_from_slice(content),
            _ => fields.push(content.to_vec()),
        }
    }
    for f in fields {
        out.extend_from_slice(&fold(&f, FOLD_AT));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(tail);
    out
}

/// Folds one unfolded field (no CRLF) before whitespace so that lines stay within `width`
/// where the field allows it; unfolding the result gives back `field`.
pub fn fold(field: &[u8], width: usize) -> Vec<u8> {
    if field.len() <= width {
        return field.to_vec();
    }
    let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
    let mut out = Vec::with_capacity(field.len() + 16);
    let mut line_start = 0;
    let mut last_break: Option<usize> = None;
    let is_ws = |b: u8| b == b' ' || b == b'\t';
    let mut i = colon + 2;
    while i < field.len() {
        // A break before whitespace at i, with something other than whitespace on both sides.
        if is_ws(field[i]) && !is_ws(field[i - 1]) && field[i..].iter().any(|&b| !is_ws(b)) {
            if i - line_start > width {
                if let Some(bp) = last_break {
                    out.extend_from_slice(&field[line_start..bp]);
                    out.extend_from_slice(b"\r\n");
                    line_start = bp;
                }
            }
            last_break = Some(i).filter(|&bp| bp > line_start);
        }
        i += 1;
    }
    if field.len() - line_start > width {
        if let Some(bp) = last_break {
            out.extend_from_slice(&field[line_start..bp]);
            out.extend_from_slice(b"\r\n");
            line_start = bp;
        }
    }
    out.extend_from_slice(&field[line_start..]);
    out
}

/// Removes folding: CRLF followed by a space or tab.
pub fn unfold(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"\r\n") && matches!(b.get(i + 2), Some(b' ' | b'\t')) {
            i += 2;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
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

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn capabilities_are_stripped_everywhere() {
        let greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n";
        assert_eq!(
            s(&exchange_response(greeting.to_vec()).unwrap()),
            "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
        );
        let tagged = b"a1 OK [CAPABILITY IMAP4rev1 UIDPLUS MULTIAPPEND CONDSTORE QRESYNC SPECIAL-USE LIST-EXTENDED LIST-STATUS MOVE] Logged in\r\n";
        assert_eq!(
            s(&exchange_response(tagged.to_vec()).unwrap()),
            "a1 OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Logged in\r\n"
        );
        let untagged = b"* CAPABILITY IMAP4rev1 multiappend LITERAL+ Condstore SPECIAL-USE\r\n";
        assert_eq!(
            s(&exchange_response(untagged.to_vec()).unwrap()),
            "* CAPABILITY IMAP4rev1 LITERAL+\r\n"
        );
        // Text that merely mentions a capability is not a capability list.
        let other = b"a2 OK Select completed (0.001 + 0.000 secs).\r\n";
        assert_eq!(exchange_response(other.to_vec()).unwrap(), other.to_vec());
    }

    #[test]
    fn special_use_and_modseq_are_stripped() {
        assert_eq!(
            s(&exchange_response(
                b"* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"\r\n".to_vec()
            )
            .unwrap()),
            "* LIST (\\HasNoChildren) \"/\" \"Sent Items\"\r\n"
        );
        assert_eq!(
            s(
                &exchange_response(b"* LIST (\\Trash) \"/\" {13}\r\nDeleted Items\r\n".to_vec())
                    .unwrap()
            ),
            "* LIST () \"/\" {13}\r\nDeleted Items\r\n"
        );
        assert_eq!(
            exchange_response(b"* OK [HIGHESTMODSEQ 17] Highest\r\n".to_vec()),
            None
        );
        assert_eq!(
            s(&exchange_response(
                b"* STATUS \"a (b)\" (MESSAGES 3 HIGHESTMODSEQ 9 UIDNEXT 4)\r\n".to_vec()
            )
            .unwrap()),
            "* STATUS \"a (b)\" (MESSAGES 3 UIDNEXT 4)\r\n"
        );
        assert_eq!(
            s(
                &exchange_response(b"* 2 FETCH (UID 5 MODSEQ (12) FLAGS (\\Seen))\r\n".to_vec())
                    .unwrap()
            ),
            "* 2 FETCH (UID 5 FLAGS (\\Seen))\r\n"
        );
    }

    #[test]
    fn fetch_is_reordered_and_sized_as_an_estimate() {
        let r = b"* 3 FETCH (UID 17 FLAGS (\\Seen $Label1) INTERNALDATE \"03-Feb-2025 10:00:00 +0100\" RFC822.SIZE 1234)\r\n";
        assert_eq!(
            s(&rewrite_fetch(r).unwrap()),
            "* 3 FETCH (RFC822.SIZE 1264 UID 17 FLAGS (\\Seen $Label1) INTERNALDATE \"03-Feb-2025 10:00:00 +0100\")\r\n"
        );
        for n in [1u64, 2, 3, 39, 40, 41, 1000, 1001, 60_000] {
            let e = size_estimate(n);
            assert_ne!(e, n, "{n}");
            assert!(e.abs_diff(n) <= (n / 40).max(1), "{n} -> {e}");
        }
    }

    #[test]
    fn fetch_bodies_are_rendered_with_their_new_length() {
        let body = b"From: a@b.example\nSubject: a subject long enough to be folded at another column than before, surely\r\n\tand continued\r\nMessage-ID: <x@y>\r\n\r\nline one\nline two\r\n";
        let mut r = format!("* 1 FETCH (UID 9 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r.extend_from_slice(b" FLAGS ())\r\n");
        let out = rewrite_fetch(&r).unwrap();
        let rendered = render_message(body);
        let mut want = format!("* 1 FETCH (UID 9 BODY[] {{{}}}\r\n", rendered.len()).into_bytes();
        want.extend_from_slice(&rendered);
        want.extend_from_slice(b" FLAGS ())\r\n");
        assert_eq!(s(&out), s(&want));
        assert_ne!(rendered.len(), body.len());
        assert!(rendered.starts_with(RENDERED_HEADER));
        let text = s(&rendered);
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "bare LF left: {text:?}"
        );
        assert!(
            text.ends_with("\r\n\r\nline one\r\nline two\r\n"),
            "{text:?}"
        );
        // The long Subject is folded elsewhere, but is the same once unfolded.
        let subject_at = text.find("Subject:").unwrap();
        let subject =
            &text[subject_at..text[subject_at..].find("\r\nMessage-ID").unwrap() + subject_at];
        assert!(subject.lines().all(|l| l.len() <= FOLD_AT), "{subject:?}");
        assert_eq!(
            s(&unfold(subject.as_bytes())),
            "Subject: a subject long enough to be folded at another column than before, surely\tand continued"
        );
        // A quoted-string body becomes a literal too, with the right length.
        let q = b"* 2 FETCH (BODY[] \"Subject: x\\\"y\" UID 3)\r\n";
        let out = s(&rewrite_fetch(q).unwrap());
        let rendered = render_message(b"Subject: x\"y");
        assert!(rendered.ends_with(b"Subject: x\"y\r\n"));
        assert_eq!(
            out,
            format!(
                "* 2 FETCH (UID 3 BODY[] {{{}}}\r\n{})\r\n",
                rendered.len(),
                s(&rendered)
            )
        );
    }

    #[test]
    fn header_fields_stay_equal_once_unfolded() {
        let fields = b"Message-ID: <a-very-long-message-id-that-goes-on@and-on.example.org>\r\n\
            Subject: short\r\nTo: one@example.org, two@example.org,\r\n three@example.org, four@example.org\r\n\r\n";
        let mut r = format!(
            "* 4 FETCH (UID 8 BODY[HEADER.FIELDS (MESSAGE-ID SUBJECT)] {{{}}}\r\n",
            fields.len()
        )
        .into_bytes();
        r.extend_from_slice(fields);
        r.extend_from_slice(b")\r\n");
        let out = rewrite_fetch(&r).unwrap();
        let mut c = Cursor { b: &out, i: 0 };
        c.i = find(&out, b"{").unwrap();
        let got = c.literal().unwrap().to_vec();
        assert!(!got.starts_with(RENDERED_HEADER));
        assert_ne!(got, fields.to_vec(), "the To field is folded elsewhere");
        assert_eq!(unfold(&got), unfold(fields));
        // A field without whitespace to fold at stays whole.
        assert_eq!(
            fold(
                b"X:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                20
            )
            .len(),
            70
        );
        let long = b"To: aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm nnnn";
        let f = fold(long, 20);
        assert_eq!(unfold(&f), long.to_vec());
        assert!(s(&f).split("\r\n").all(|l| l.len() <= 20), "{}", s(&f));
        assert!(s(&f).split("\r\n").skip(1).all(|l| l.starts_with(' ')));
    }

    #[test]
    fn fetch_with_literals_inside_lists_and_junk_are_handled() {
        // An ENVELOPE with a literal inside, then BODY[]: both framed right.
        let r = b"* 5 FETCH (ENVELOPE (NIL {3}\r\na)b NIL) BODY[] {4}\r\nab\r\n UID 2)\r\n";
        let out = s(&rewrite_fetch(r).unwrap());
        assert!(
            out.starts_with("* 5 FETCH (UID 2 ENVELOPE (NIL {3}\r\na)b NIL) BODY[] {"),
            "{out}"
        );
        // Not parseable: left alone (never a panic).
        for bad in [
            &b"* 5 FETCH (UID\r\n"[..],
            b"* 5 FETCH (BODY[] {999}\r\nab)\r\n",
            b"* 5 FETCH (UID 1))\r\n",
            b"* 5 FETCH (FLAGS (\\Seen)\r\n",
        ] {
            assert_eq!(rewrite_fetch(bad), None, "{}", s(bad));
            assert_eq!(exchange_response(bad.to_vec()).unwrap(), bad.to_vec());
        }
    }

    #[test]
    fn bucket_throttles_past_the_budget_and_grows_on_early_return() {
        let cfg = Bucket {
            per_second: 10.0,
            burst: 3.0,
            backoff_ms: 50,
            max_backoff_ms: 1000,
        };
        let t0 = Instant::now();
        let mut b = BucketState::new(&cfg, t0);
        for _ in 0..3 {
            assert_eq!(b.decide(&cfg, 1, t0), None);
        }
        // Out of tokens: one token takes 100 ms.
        assert_eq!(b.decide(&cfg, 1, t0), Some(100));
        // Pipelined behind it on the same connection: the rest of the same wait.
        assert_eq!(b.decide(&cfg, 1, t0 + Duration::from_millis(30)), Some(70));
        // A new session before the time is over: longer.
        assert_eq!(b.decide(&cfg, 2, t0 + Duration::from_millis(60)), Some(200));
        assert_eq!(
            b.decide(&cfg, 3, t0 + Duration::from_millis(100)),
            Some(400)
        );
        // Back after the suggested time: tokens have refilled.
        assert_eq!(b.decide(&cfg, 4, t0 + Duration::from_millis(600)), None);
    }
}
