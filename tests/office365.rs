//! Office 365 behaviour against real Dovecot servers: Exchange's throttling (through a
//! fault-injecting proxy in front of the real destination), the configured rate, Microsoft's
//! limits (items per mailbox, message size, long lines) and XOAUTH2 with app-only tokens
//! from a token endpoint served by the test.
//!
//! The proxy runs in its Exchange-like mode (`proxy::Options::exchange`): no MULTIAPPEND,
//! CONDSTORE or SPECIAL-USE, bodies rendered again on FETCH, RFC822.SIZE estimated. What
//! arrived is therefore always read from the Dovecot behind it, directly, never through it.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cutover::testbed::{Testbed, MASTER_PASSWORD, MASTER_USER};
use proxy::{Action, Options, Proxy};

/// The fault-injecting proxy in front of `upstream_port`, looking like Exchange Online.
async fn exchange_proxy(upstream_port: u16, schedule: proxy::Schedule) -> Proxy {
    Proxy::start_with(upstream_port, Options::new(schedule).exchange()).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `cutover.toml` and `mailboxes.csv`: source over implicit TLS with each user's
/// password, destination `upstream` (a TOML fragment: host, port, tls, auth...), then
/// `extra` (more `[upstream]` keys and other sections).
fn config(
    tb: &Testbed,
    users: &[(&str, &str, &str)],
    upstream: &str,
    extra_upstream: &str,
    extra: &str,
) -> PathBuf {
    let dir = work_dir(tb);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for (login, pw, email) in users {
        csv.push_str(&format!("{email},{login},{pw}\n"));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv).unwrap();
    let toml = format!(
        r#"mailboxes = "mailboxes.csv"

[spool]
path = "spool"

[source]
host = "127.0.0.1"
port = {src_port}
tls = "implicit"
tls_ca_file = "{ca}"
auth = "login"
max_connections = 4

[upstream]
{upstream}
tls_ca_file = "{ca}"
max_connections = 4
# Exchange Online offers no MULTIAPPEND: one APPEND per message, as there.
multiappend = false
{extra_upstream}

{extra}
"#,
        src_port = tb.source.tls_port(),
        ca = tb.ca.ca_pem_path().display(),
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// `[upstream]` through a plain-text proxy port, as the master user.
fn via_proxy(port: u16) -> String {
    format!(
        "host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nauth = \"plain\"\n\
         admin_user = \"{MASTER_USER}\"\nadmin_password = \"{MASTER_PASSWORD}\"\n\
         admin_login = \"authzid\""
    )
}

fn body(user: &str, n: usize, pad: usize) -> Vec<u8> {
    let mut b = cutover::demo::sample_message(user, n, "bulk");
    b.extend(std::iter::repeat_n(b'x', pad));
    b.extend_from_slice(b"\r\n");
    b
}

fn summary_row(out: &std::process::Output, mailbox: &str) -> String {
    let text = stdout(out);
    text.lines()
        .find(|l| l.starts_with(mailbox))
        .unwrap_or_else(|| panic!("no summary row for {mailbox} in:\n{text}"))
        .to_string()
}

fn column(out: &std::process::Output, mailbox: &str, i: usize) -> u64 {
    summary_row(out, mailbox)
        .split_whitespace()
        .nth(i)
        .unwrap()
        .parse()
        .unwrap()
}

/// Throttles (NO, and BAD + BYE), connections cut in the middle of a literal, a delay past
/// the client's timeout and short delays, on one mailbox while another goes on: every
/// message arrives exactly once, each backoff is honoured (no APPEND of that mailbox
/// reaches the server before the suggested time is over), the other mailbox is not
/// paused, and the log and the summary say what happened.
#[test]
fn throttling_and_faults_exactly_once() {
    let users = [
        ("alice", "alice-pw", "alice@example.test"),
        ("bob", "bob-pw", "bob@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    for (login, _, _) in users {
        tb.source.add_folder(login, "INBOX.Projects").unwrap();
        for i in 0..90 {
            let folder = if i % 3 == 0 {
                "INBOX.Projects"
            } else {
                "INBOX"
            };
            tb.source
                .deliver(
                    login,
                    folder,
                    &body(login, i, 2000 + (i % 5) * 700),
                    if i % 2 == 0 { &["\\Seen"] } else { &[] },
                    Some(1_600_000_000 + i as i64 * 60),
                )
                .unwrap();
        }
    }
    let rt = rt();
    // alice's APPENDs (counted from 0, retries included) meet these faults. They are 11
    // apart: with batches of 5, two batches are in flight at once (the next is sent while
    // the answers to one come back), and a fault in the batch behind a failing one would
    // never be answered, so it would need no reconnect of its own.
    let schedule: proxy::Schedule = Arc::new(|user: &str, n: u64| {
        if !user.starts_with("alice") {
            return Action::Forward;
        }
        match n {
            4 => Action::Throttle { ms: 1200 },
            15 => Action::Delay { ms: 300 },
            26 => Action::ThrottleBye { ms: 900 },
            37 => Action::DropMidLiteral,
            48 => Action::Throttle { ms: 600 },
            59 => Action::DelayAnswer { ms: 3500 },
            70 => Action::Throttle { ms: 800 },
            81 => Action::DropMidLiteral,
            92 => Action::NotConnected,
            _ => Action::Forward,
        }
    });
    let proxy = rt.block_on(exchange_proxy(tb.dest.plain_port(), schedule));
    let config = config(
        &tb,
        &users,
        &via_proxy(proxy.port()),
        // A short timeout so that the answer held back 3.5 s is a timeout; a rate that the
        // AIMD halves on each throttle and climbs back to.
        "timeout_secs = 2\nmessages_per_second = 60",
        "[sync]\nappend_batch = 5\n",
    );
    let out = cutover_log(&config, &["sync", "--once"], "info");
    let log = stderr(&out);
    eprintln!("{}\n{}", stdout(&out), log);
    assert_eq!(out.status.code(), Some(0), "the run ends cleanly");

    // Every message exactly once, byte-identical, flags and dates kept.
    for (login, _, email) in users {
        let s = rt.block_on(snapshot(&tb, &tb.source, login));
        let d = rt.block_on(snapshot(&tb, &tb.dest, email));
        assert_same(&s, &d);
        assert_eq!(s.values().map(Vec::len).sum::<usize>(), 90);
    }

    // The backoffs were honoured: after each throttle answer, alice's next APPEND reached
    // the proxy no earlier than the suggested time later.
    let events = proxy.events();
    let alice: Vec<_> = events
        .iter()
        .filter(|e| e.user == "alice@example.test")
        .collect();
    let bob: Vec<_> = events
        .iter()
        .filter(|e| e.user == "bob@example.test")
        .collect();
    let mut checked = 0;
    for (i, e) in alice.iter().enumerate() {
        let ms = match e.action {
            Action::Throttle { ms } | Action::ThrottleBye { ms } => ms,
            _ => continue,
        };
        // APPENDs already pipelined behind the throttled one on the same connection were
        // sent before the answer; the next one on a new connection must wait.
        let next = alice[i + 1..]
            .iter()
            .find(|n| n.conn != e.conn)
            .expect("alice resumed after the throttle");
        let gap = next.at.duration_since(e.at);
        assert!(
            gap >= Duration::from_millis(ms),
            "APPEND {} came {gap:?} after a throttle asking for {ms} ms",
            next.n
        );
        // bob is not paused with alice: if he was appending before and after her pause,
        // he appended during it too.
        let end = e.at + Duration::from_millis(ms);
        let before = bob.iter().any(|b| b.at < e.at);
        let after = bob.iter().any(|b| b.at > end);
        if before && after {
            assert!(
                bob.iter().any(|b| b.at >= e.at && b.at <= end),
                "bob was paused while alice was throttled"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "all four throttles were met");
    assert!(
        proxy.connections() >= 2 + 8,
        "alice reconnected after every throttle and cut"
    );

    // The log shows each backoff honoured, the summary the throttle state.
    for ms in [1200, 900, 600, 800] {
        assert!(
            log.contains(&format!("pausing it for {ms} ms")),
            "no backoff of {ms} ms in the log"
        );
    }
    assert!(
        log.contains("reconnecting in"),
        "transient faults are retried"
    );
    assert!(
        log.contains("authenticated but not connected"),
        "Exchange's lost-session answer is a reconnect"
    );
    assert!(
        log.contains("did not answer within 2 s"),
        "the timeout happened"
    );
    let so = stdout(&out);
    assert!(
        so.contains("alice@example.test: throttled 4 time(s)"),
        "summary shows the throttling:\n{so}"
    );
    assert!(!so.contains("bob@example.test: throttled"), "{so}");
    assert_eq!(column(&out, "bob@example.test", 2), 90);
    assert!(summary_row(&out, "alice@example.test").ends_with("ok"));

    // A rerun finds nothing to do.
    let out = cutover_log(&config, &["sync", "--once"], "info");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(column(&out, "alice@example.test", 2), 0);
    assert_eq!(column(&out, "bob@example.test", 2), 0);
}

/// `messages_per_second` holds: measured from the proxy's timestamps of the APPENDs (after
/// the initial burst), the rate is within 5 % of the configured one.
#[test]
fn configured_rate_holds() {
    let users = [("carol", "carol-pw", "carol@example.test")];
    let Some(tb) = testbed(&users) else { return };
    const N: usize = 120;
    const RATE: f64 = 20.0;
    for i in 0..N {
        tb.source
            .deliver(
                "carol",
                "INBOX",
                &body("carol", i, 500),
                &[],
                Some(1_600_000_000 + i as i64),
            )
            .unwrap();
    }
    let rt = rt();
    let proxy = rt.block_on(exchange_proxy(
        tb.dest.plain_port(),
        Arc::new(|_: &str, _| Action::Forward),
    ));
    let config = config(
        &tb,
        &users,
        &via_proxy(proxy.port()),
        &format!("messages_per_second = {RATE}\nburst = 1"),
        "",
    );
    let out = cutover_log(&config, &["sync", "--once"], "info");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = rt.block_on(snapshot(&tb, &tb.source, "carol"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "carol@example.test"));
    assert_same(&s, &d);

    let times: Vec<Instant> = proxy.events().iter().map(|e| e.at).collect();
    assert_eq!(times.len(), N);
    // The first second's worth (the burst) goes at once; the rest at the rate.
    let burst = RATE as usize;
    let span = times[N - 1].duration_since(times[0]).as_secs_f64();
    let rate = (N - burst) as f64 / span;
    eprintln!("{N} APPENDs, {span:.3} s after the first: {rate:.2} msg/s");
    assert!(
        (rate - RATE).abs() <= RATE * 0.05,
        "measured {rate:.2} msg/s, configured {RATE}"
    );
}

/// The demo's config (no Office 365 features) with `sync` as its `[sync]` section.
fn direct_config(tb: &Testbed, users: &[(&str, &str, &str)], sync: &str) -> PathBuf {
    demo_config(tb, users, &format!("[sync]\n{sync}\n"))
}

/// `max_items_per_mailbox`: the newest messages by INTERNALDATE across folders are copied,
/// the others are skipped and reported; the mailbox still counts as complete.
#[test]
fn max_items_newest_first_across_folders() {
    let users = [("dora", "dora-pw", "dora@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let folders = ["INBOX", "INBOX.A", "INBOX.B"];
    tb.source.add_folder("dora", "INBOX.A").unwrap();
    tb.source.add_folder("dora", "INBOX.B").unwrap();
    for i in 0..12usize {
        tb.source
            .deliver(
                "dora",
                folders[i % 3],
                &cutover::demo::sample_message("dora", i, "item"),
                &[],
                Some(1_600_000_000 + i as i64 * 3600),
            )
            .unwrap();
    }
    let config = direct_config(&tb, &users, "max_items_per_mailbox = 5");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "skipped messages do not fail the mailbox"
    );
    assert_eq!(column(&out, "dora@example.test", 2), 5);
    assert_eq!(column(&out, "dora@example.test", 3), 7);
    let so = stdout(&out);
    assert_eq!(
        so.matches("over max_items_per_mailbox (5)").count(),
        7,
        "{so}"
    );
    let rt = rt();
    let d = rt.block_on(snapshot(&tb, &tb.dest, "dora@example.test"));
    let count = |f: &str| d.get(f).map(Vec::len).unwrap_or(0);
    // The 5 newest are i = 7..=11: A gets 7 and 10, B 8 and 11, INBOX 9.
    assert_eq!(
        (count("INBOX"), count("A"), count("B")),
        (1, 2, 2),
        "{d:#?}"
    );
    let s = rt.block_on(snapshot(&tb, &tb.source, "dora"));
    let mut src_dates: Vec<String> = s
        .values()
        .flatten()
        .map(|m| m.internal_date.clone())
        .collect();
    let parse = |d: &str| chrono::DateTime::parse_from_str(d, "%d-%b-%Y %H:%M:%S %z").unwrap();
    src_dates.sort_by_key(|d| std::cmp::Reverse(parse(d)));
    let mut dst_dates: Vec<String> = d
        .values()
        .flatten()
        .map(|m| m.internal_date.clone())
        .collect();
    dst_dates.sort_by_key(|d| std::cmp::Reverse(parse(d)));
    assert_eq!(dst_dates, src_dates[..5], "exactly the newest five");
    // A rerun copies nothing more.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(column(&out, "dora@example.test", 2), 0);
}

/// Messages over `max_message_bytes` are skipped and reported with mailbox, folder, UID,
/// date, subject (decoded) and size; the rest of the mailbox is copied.
#[test]
fn oversized_messages_reported_with_subject() {
    let users = [("emil", "emil-pw", "emil@example.test")];
    let Some(tb) = testbed(&users) else { return };
    tb.source.add_folder("emil", "INBOX.Reports").unwrap();
    let mut big = b"From: a@legacy.example\r\nTo: emil@example.test\r\n\
        Subject: =?UTF-8?B?UXVhcnRhbHNiZXJpY2h0IGbDvHIgMjAyNA==?=\r\n\
        Date: Mon, 3 Feb 2025 10:00:00 +0100\r\nMessage-ID: <big@legacy.example>\r\n\r\n"
        .to_vec();
    for _ in 0..200 {
        big.extend_from_slice(&[b'y'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    let big_len = big.len();
    tb.source
        .deliver(
            "emil",
            "INBOX.Reports",
            &big,
            &["\\Seen"],
            Some(1_650_000_000),
        )
        .unwrap();
    for i in 0..3 {
        tb.source
            .deliver(
                "emil",
                "INBOX.Reports",
                &cutover::demo::sample_message("emil", i, "small"),
                &[],
                Some(1_650_000_100 + i as i64),
            )
            .unwrap();
    }
    let config = direct_config(&tb, &users, "max_message_bytes = 10000");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(column(&out, "emil@example.test", 2), 3);
    assert_eq!(column(&out, "emil@example.test", 3), 1);
    let so = stdout(&out);
    let line = so
        .lines()
        .find(|l| l.contains("over max_message_bytes"))
        .unwrap_or_else(|| panic!("no report line:\n{so}"));
    for part in [
        "emil@example.test",
        "folder \"INBOX.Reports\"",
        "UID 1",
        &format!("{big_len} bytes"),
        "Quartalsbericht für 2024",
        "2022",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line:?}");
    }
    let d = rt().block_on(snapshot(&tb, &tb.dest, "emil@example.test"));
    assert_eq!(d["Reports"].len(), 3);
}

/// Lines too long for Exchange: skipped and reported before sending with
/// `max_line_length`, and recognised in Exchange's refusal (`BAD Command Argument Error`,
/// from the proxy) without it. Either way the mailbox completes.
#[test]
fn long_lines_are_refused_with_a_clear_report() {
    let users = [
        ("finn", "finn-pw", "finn@example.test"),
        ("gina", "gina-pw", "gina@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    let mut long = b"From: a@legacy.example\r\nSubject: one long line\r\n\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'z', 12_000));
    long.extend_from_slice(b"\r\n");
    for (login, _, _) in users {
        tb.source
            .deliver(login, "INBOX", &long, &[], Some(1_700_000_000))
            .unwrap();
        tb.source
            .deliver(
                login,
                "INBOX",
                &cutover::demo::sample_message(login, 1, "fine"),
                &[],
                Some(1_700_000_100),
            )
            .unwrap();
    }
    let rt = rt();
    // Exchange's answer to gina's long line, from the proxy (APPENDs go in UID order).
    let proxy = rt.block_on(exchange_proxy(
        tb.dest.plain_port(),
        Arc::new(|user: &str, n| {
            if user.starts_with("gina") && n == 0 {
                Action::RefuseBad("Command Argument Error. 11")
            } else {
                Action::Forward
            }
        }),
    ));
    // finn: checked before sending.
    let cfg = config(
        &tb,
        &users[..1],
        &via_proxy(proxy.port()),
        "",
        "[sync]\nmax_line_length = 10000\n",
    );
    let out = cutover(&cfg, &["sync", "--once"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{so}");
    let line = so
        .lines()
        .find(|l| l.contains("finn@example.test: folder"))
        .unwrap_or_else(|| panic!("{so}"));
    assert!(
        line.contains("line of 12000 characters, over max_line_length (10000"),
        "{line}"
    );
    assert!(line.contains("one long line"), "{line}");
    assert_eq!(column(&out, "finn@example.test", 2), 1);
    assert_eq!(column(&out, "finn@example.test", 3), 1);
    let finn_appends = proxy
        .events()
        .iter()
        .filter(|e| e.user == "finn@example.test")
        .count();
    assert_eq!(finn_appends, 1, "the long message was never sent");

    // gina: no check here; Exchange's refusal is recognised as the line-length trap.
    let cfg = config(&tb, &users[1..], &via_proxy(proxy.port()), "", "");
    let out = cutover(&cfg, &["sync", "--once"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{so}");
    let line = so
        .lines()
        .find(|l| l.contains("gina@example.test: folder"))
        .unwrap_or_else(|| panic!("{so}"));
    assert!(line.contains("Command Argument Error"), "{line}");
    assert!(line.contains("a line of 12000 characters"), "{line}");
    assert!(line.contains("one long line"), "{line}");
    assert_eq!(column(&out, "gina@example.test", 2), 1);
    assert_eq!(column(&out, "gina@example.test", 3), 1);
    // Skipped for good: a rerun does not send it again.
    let before = proxy.events().len();
    let out = cutover(&cfg, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(proxy.events().len(), before);
}

// ---------------------------------------------------------------------------------------
// XOAUTH2 with app-only tokens
// ---------------------------------------------------------------------------------------

mod token_endpoint {
    //! A client-credentials token endpoint on 127.0.0.1, like Entra ID's, that mints HS256
    //! JWTs the XOAUTH2 Dovecot validates locally.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
    pub const SECRET: &str = "s3cret~with&odd=chars";
    pub const SCOPE: &str = "IMAP.AccessAsApp";

    #[derive(Default)]
    pub struct State {
        pub requests: Vec<HashMap<String, String>>,
        pub paths: Vec<String>,
        pub tokens: Vec<String>,
    }

    pub struct Endpoint {
        pub port: u16,
        pub state: Arc<Mutex<State>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Endpoint {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = if key.len() > 64 {
            Sha256::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        k.resize(64, 0);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    /// An HS256 JWT for the application, valid for `lifetime` seconds.
    pub fn mint(key: &[u8], domain: &str, scope: &str, lifetime: i64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = chrono::Utc::now().timestamp();
        let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": "https://login.test/tenant/v2.0",
            "sub": CLIENT_ID,
            "email": format!("cutover-app@{domain}"),
            "scope": scope,
            "iat": now - 1,
            "nbf": now - 1,
            "exp": now + lifetime,
        });
        let body = b64.encode(claims.to_string());
        let signed = format!("{header}.{body}");
        let sig = b64.encode(hmac_sha256(key, signed.as_bytes()));
        format!("{signed}.{sig}")
    }

    fn form_decode(s: &str) -> HashMap<String, String> {
        let dec = |v: &str| {
            let b = v.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'+' => out.push(b' '),
                    b'%' if i + 2 < b.len() + 1 => {
                        out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                        i += 2;
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            String::from_utf8(out).unwrap()
        };
        s.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (dec(k), dec(v)))
            .collect()
    }

    /// Serves the endpoint; tokens are signed with `key` and live `lifetime` seconds.
    pub async fn start(key: Vec<u8>, lifetime: i64) -> Endpoint {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, len) = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map(|v| v.trim().parse::<usize>().unwrap())
                                .unwrap_or(0);
                            break (p + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let form =
                        form_decode(&String::from_utf8_lossy(&buf[head_end..head_end + len]));
                    let ok = form.get("grant_type").map(String::as_str)
                        == Some("client_credentials")
                        && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                        && form.get("scope").map(String::as_str)
                            == Some("https://outlook.office365.com/.default");
                    let good_secret = form.get("client_secret").map(String::as_str) == Some(SECRET);
                    let (status, json) = if !ok {
                        (
                            400,
                            serde_json::json!({"error": "invalid_request", "error_description": "AADSTS900144: bad request"}),
                        )
                    } else if !good_secret {
                        (
                            401,
                            serde_json::json!({
                                "error": "invalid_client",
                                "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.\r\nTrace ID: 0000\r\nTimestamp: 2025-01-01 00:00:00Z",
                                "error_codes": [7000215]
                            }),
                        )
                    } else {
                        let token = mint(&key, "example.test", SCOPE, lifetime);
                        st.lock().unwrap().tokens.push(token.clone());
                        (
                            200,
                            serde_json::json!({
                                "token_type": "Bearer",
                                "expires_in": lifetime,
                                "ext_expires_in": lifetime,
                                "access_token": token
                            }),
                        )
                    };
                    {
                        let mut s = st.lock().unwrap();
                        s.requests.push(form);
                        s.paths.push(path);
                    }
                    let body = json.to_string();
                    let reason = if status == 200 { "OK" } else { "Error" };
                    let resp = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Endpoint { port, state, task }
    }
}

fn oauth_upstream(tb: &Testbed, port: u16, implicit_tls: bool, endpoint: u16) -> String {
    let dir = work_dir(tb);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("client-secret"),
        format!("{}\n", token_endpoint::SECRET),
    )
    .unwrap();
    format!(
        "host = \"127.0.0.1\"\nport = {port}\ntls = \"{}\"\nauth = \"xoauth2\"\n\
         oauth_tenant = \"example.test\"\n\
         oauth_client_id = \"{}\"\n\
         oauth_client_secret_file = \"client-secret\"\n\
         oauth_token_url = \"http://127.0.0.1:{endpoint}/{{tenant}}/oauth2/v2.0/token\"",
        if implicit_tls { "implicit" } else { "none" },
        token_endpoint::CLIENT_ID,
    )
}

fn oauth_key() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

/// App-only XOAUTH2 end to end: cutover obtains a token with the client-credentials grant
/// from the test's endpoint, `check` verifies it and a login per mailbox, a sync copies
/// everything through a Dovecot that validates the JWTs itself; one token serves every
/// mailbox; a refused secret is one clear error, not one per mailbox; a token the server
/// cannot validate fails the login; no token ever reaches the log.
#[test]
fn xoauth2_app_only_tokens() {
    let users = [
        ("hana", "hana-pw", "hana@example.test"),
        ("ivan", "ivan-pw", "ivan@example.test"),
        ("jule", "jule-pw", "jule@example.test"),
    ];
    if !cutover::testbed::require_dovecot() {
        return;
    }
    let key = oauth_key();
    let tb = Testbed::start_xoauth2(
        &users,
        cutover::testbed::OAuth2Validation {
            key: key.clone(),
            scope: token_endpoint::SCOPE.into(),
        },
    )
    .expect("testbed with XOAUTH2 starts");
    for (login, _, _) in users {
        for i in 0..4 {
            tb.source
                .deliver(
                    login,
                    "INBOX",
                    &cutover::demo::sample_message(login, i, "oauth"),
                    &[],
                    Some(1_700_000_000 + i as i64),
                )
                .unwrap();
        }
    }
    let rt = rt();
    let ep = rt.block_on(token_endpoint::start(key.clone(), 3600));
    let cfg = config(
        &tb,
        &users,
        &oauth_upstream(&tb, tb.dest.tls_port(), true, ep.port),
        "",
        "",
    );

    // check: the token once, then a login per mailbox.
    let out = cutover_log(&cfg, &["check"], "debug");
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{so}\n{}", stderr(&out));
    assert!(so.contains("OAuth token from http://127.0.0.1:"), "{so}");
    assert!(
        so.contains("/example.test/oauth2/v2.0/token"),
        "tenant in the URL: {so}"
    );
    for (_, _, email) in users {
        assert!(
            so.contains(&format!("destination login as {email}: ok")),
            "{so}"
        );
    }
    assert_eq!(
        ep.state.lock().unwrap().requests.len(),
        1,
        "one token for all mailboxes"
    );
    let mut logs = stderr(&out) + &so;

    // sync: everything arrives; still one POST for the whole run.
    let out = cutover_log(&cfg, &["sync", "--once"], "debug");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (login, _, email) in users {
        let s = rt.block_on(snapshot(&tb, &tb.source, login));
        let d = rt.block_on(snapshot(&tb, &tb.dest, email));
        assert_same(&s, &d);
    }
    assert_eq!(ep.state.lock().unwrap().requests.len(), 2);
    logs += &(stderr(&out) + &stdout(&out));
    {
        let st = ep.state.lock().unwrap();
        let r = &st.requests[1];
        assert_eq!(r["grant_type"], "client_credentials");
        assert_eq!(
            r["client_secret"],
            token_endpoint::SECRET,
            "secret form-encoded"
        );
        for t in &st.tokens {
            assert!(!logs.contains(t.as_str()), "a token reached the output");
            let sig = t.rsplit('.').next().unwrap();
            assert!(!logs.contains(sig), "a token signature reached the output");
        }
        assert!(
            !logs.contains(token_endpoint::SECRET),
            "the client secret reached the output"
        );
    }

    // A wrong secret: one clear error for the run, no per-mailbox failures.
    std::fs::write(work_dir(&tb).join("client-secret"), "wrong\n").unwrap();
    let before = ep.state.lock().unwrap().requests.len();
    let out = cutover(&cfg, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(
        err.matches("AADSTS7000215").count(),
        2,
        "the error line and its log: {err}"
    );
    assert!(err.contains("error: OAuth token endpoint"), "{err}");
    assert!(err.contains("invalid_client"), "{err}");
    assert!(err.contains("check oauth_client_secret"), "{err}");
    assert!(
        !stdout(&out).contains("hana@example.test"),
        "no summary rows"
    );
    assert_eq!(
        ep.state.lock().unwrap().requests.len(),
        before + 1,
        "one POST, not one per mailbox"
    );

    // A token signed with another key: Dovecot refuses the login (real validation).
    std::fs::write(work_dir(&tb).join("client-secret"), token_endpoint::SECRET).unwrap();
    let other = rt.block_on(token_endpoint::start(oauth_key(), 3600));
    let cfg = config(
        &tb,
        &users,
        &oauth_upstream(&tb, tb.dest.tls_port(), true, other.port),
        "",
        "",
    );
    let out = cutover(&cfg, &["check"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains("destination login as hana@example.test: FAILED"),
        "{so}"
    );
}

/// A token that expires during the run is replaced before it expires: after a throttle
/// pause longer than the token's lifetime, the new session logs in with a fresh token
/// (Dovecot checks `exp`), and the run completes.
#[test]
fn xoauth2_token_refreshed_before_expiry() {
    let users = [("kira", "kira-pw", "kira@example.test")];
    if !cutover::testbed::require_dovecot() {
        return;
    }
    let key = oauth_key();
    let tb = Testbed::start_xoauth2(
        &users,
        cutover::testbed::OAuth2Validation {
            key: key.clone(),
            scope: token_endpoint::SCOPE.into(),
        },
    )
    .expect("testbed with XOAUTH2 starts");
    for i in 0..20 {
        tb.source
            .deliver(
                "kira",
                "INBOX",
                &cutover::demo::sample_message("kira", i, "refresh"),
                &[],
                Some(1_700_000_000 + i as i64),
            )
            .unwrap();
    }
    let rt = rt();
    // Tokens live 3 s; the throttle pauses the mailbox for 4 s.
    let ep = rt.block_on(token_endpoint::start(key, 3));
    let proxy = rt.block_on(exchange_proxy(
        tb.dest.plain_port(),
        Arc::new(|_: &str, n| {
            if n == 5 {
                Action::Throttle { ms: 4000 }
            } else {
                Action::Forward
            }
        }),
    ));
    let cfg = config(
        &tb,
        &users,
        &oauth_upstream(&tb, proxy.port(), false, ep.port),
        "",
        "[sync]\nappend_batch = 2\n",
    );
    let out = cutover_log(&cfg, &["sync", "--once"], "info");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let s = rt.block_on(snapshot(&tb, &tb.source, "kira"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "kira@example.test"));
    assert_same(&s, &d);
    let st = ep.state.lock().unwrap();
    assert!(
        st.tokens.len() >= 2,
        "a new token after the first expired: {}",
        st.tokens.len()
    );
    assert!(proxy.connections() >= 2);
}

// ---------------------------------------------------------------------------------------
// The Exchange-like proxy itself, end to end
// ---------------------------------------------------------------------------------------

/// A raw IMAP session through a proxy: lines as sent, for what a client library hides.
struct Raw {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    /// Connects, reads the greeting and logs in as `user` through the master user.
    async fn login(port: u16, user: &str) -> Raw {
        use base64::Engine as _;
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (r, w) = s.into_split();
        let mut raw = Raw {
            r: tokio::io::BufReader::new(r),
            w,
        };
        let greeting = raw.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let ir = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}\0{MASTER_USER}\0{MASTER_PASSWORD}"));
        let done = raw.cmd("l1", &format!("AUTHENTICATE PLAIN {ir}")).await;
        assert!(done.last().unwrap().starts_with("l1 OK"), "{done:?}");
        raw
    }

    /// One response line (literals in it read and kept as text); "" at the end of the
    /// stream.
    async fn line(&mut self) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut text = String::new();
        loop {
            let mut buf = Vec::new();
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.r.read_until(b'\n', &mut buf))
                    .await
                    .expect("the proxy answers")
                    .unwrap_or(0);
            if n == 0 {
                return text;
            }
            let part = String::from_utf8_lossy(&buf).into_owned();
            let literal = part
                .trim_end()
                .strip_suffix('}')
                .and_then(|t| t.rsplit_once('{'))
                .and_then(|(_, d)| d.parse::<usize>().ok());
            text += &part;
            let Some(len) = literal else { return text };
            let mut lit = vec![0u8; len];
            self.r.read_exact(&mut lit).await.unwrap();
            text += &String::from_utf8_lossy(&lit);
        }
    }

    /// Lines up to and including the completion of `tag`.
    async fn until(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let l = self.line().await;
            assert!(
                !l.is_empty(),
                "the stream ended before {tag} completed: {out:?}"
            );
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
        panic!("{tag} never completed");
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.w.write_all(bytes).await.unwrap();
    }

    async fn cmd(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(tag).await
    }
}

/// Messages in `user`'s INBOX at the destination, from a session of its own (a session
/// with the folder selected may answer STATUS from what it last saw).
async fn inbox_count(tb: &Testbed, user: &str) -> u32 {
    let mut c = session(tb, &tb.dest, user).await;
    let n = c.status("INBOX").await.unwrap().messages;
    c.logout().await;
    n
}

fn append_cmd(tag: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{tag} APPEND INBOX {{{}+}}\r\n", body.len()).into_bytes();
    v.extend_from_slice(body);
    v.extend_from_slice(b"\r\n");
    v
}

/// The "Backoff Time" in a throttle answer.
fn suggested_ms(line: &str) -> u64 {
    line.split("Suggested Backoff Time: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suggested backoff in {line:?}"))
}

/// The Exchange-like proxy in front of the real destination, seen by cutover's client and
/// by a raw session: capabilities, special-use attributes and MODSEQ hidden, bodies
/// rendered with their new length (header fields equal once unfolded), RFC822.SIZE an
/// estimate and before UID; per-user throttling with a growing suggestion; the session
/// ended when its token expires; and a client that dies with APPENDs pipelined still gets
/// them saved.
#[test]
fn exchange_proxy_end_to_end() {
    use cutover::imap::client::{Client, Endpoint, Security};
    let email = "lena@example.test";
    let users = [("lena", "lena-pw", email)];
    let Some(tb) = testbed(&users) else { return };
    let mut bodies = Vec::new();
    for i in 0..3 {
        let mut m = format!(
            "From: Colleague {i} <c{i}@legacy.example>\r\nTo: {email}\r\nSubject: a subject long \
             enough for Exchange to fold it somewhere else, number {i}, and then some\r\n \
             more words on a continuation line\r\nMessage-ID: <proxy-{i}@legacy.example>\r\n\r\n"
        )
        .into_bytes();
        m.extend(std::iter::repeat_n(b'b', 500 * (i + 1)));
        m.extend_from_slice(b"\r\n");
        tb.dest
            .deliver(
                email,
                "INBOX",
                &m,
                &["\\Seen"],
                Some(1_700_000_000 + i as i64),
            )
            .unwrap();
        bodies.push(m);
    }
    let rt = rt();
    rt.block_on(async {
        let px = Proxy::start_with(tb.dest.plain_port(), Options::forward_all().exchange()).await;
        let mut direct = session(&tb, &tb.dest, email).await;
        let ep = Endpoint {
            host: "127.0.0.1".into(),
            port: px.port(),
            security: Security::None,
            tls: None,
            timeout: Duration::from_secs(10),
            max_response_bytes: 64 << 20,
        };
        let mut via = Client::connect(&ep).await.unwrap();
        via.login(&cutover::imap::Credentials::Plain {
            authzid: Some(email.to_string()),
            authcid: MASTER_USER.to_string(),
            password: cutover::secret::Secret::new(MASTER_PASSWORD),
        })
        .await
        .unwrap();
        for cap in ["MULTIAPPEND", "CONDSTORE", "SPECIAL-USE"] {
            assert!(direct.caps().has(cap), "Dovecot offers {cap}");
            assert!(!via.caps().has(cap), "{cap} shown through the proxy");
        }
        assert!(via.caps().has("LITERAL+") && via.caps().has("UIDPLUS"));
        let attrs = |l: Vec<cutover::imap::ListedFolder>| {
            l.into_iter()
                .find(|f| f.name == "Sent Items")
                .expect("Sent Items listed")
                .attributes
        };
        assert!(attrs(direct.list().await.unwrap()).contains(&"\\sent".to_string()));
        assert!(!attrs(via.list().await.unwrap()).contains(&"\\sent".to_string()));

        direct.select("INBOX", true).await.unwrap();
        via.select("INBOX", true).await.unwrap();
        let dm = direct.uid_fetch_meta("1:*", None).await.unwrap();
        let vm = via.uid_fetch_meta("1:*", None).await.unwrap();
        assert_eq!(dm.len(), 3);
        for (d, v) in dm.iter().zip(&vm) {
            assert_eq!(
                (d.uid, &d.flags, &d.internal_date),
                (v.uid, &v.flags, &v.internal_date)
            );
            let (ds, vs) = (d.size.unwrap() as i64, v.size.unwrap() as i64);
            assert_ne!(ds, vs, "RFC822.SIZE is an estimate");
            assert!((ds - vs).abs() * 20 <= ds, "{ds} vs {vs}");
            assert!(v.modseq.is_none());
        }
        let uids: Vec<u32> = dm.iter().filter_map(|m| m.uid).collect();
        let mut got = Vec::new();
        via.uid_fetch_bodies(&uids, |f| {
            got.push(f.body.unwrap());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(got.len(), 3);
        for (rendered, original) in got.iter().zip(&bodies) {
            assert_ne!(rendered, original, "the body is rendered again");
            let rest = rendered
                .strip_prefix(proxy::RENDERED_HEADER)
                .expect("the added header line on top");
            assert_ne!(rest, original.as_slice(), "re-folded elsewhere");
            assert_eq!(proxy::unfold(rest), proxy::unfold(original));
        }
        let ds = direct.uid_fetch_subjects(&uids).await.unwrap();
        let vs = via.uid_fetch_subjects(&uids).await.unwrap();
        assert_eq!(ds, vs, "header fields keep their values");
        assert!(ds[0].1.contains("fold it somewhere else"), "{ds:?}");

        // The order Office 365 answers in: RFC822.SIZE before UID.
        let mut raw = Raw::login(px.port(), email).await;
        raw.cmd("s1", "EXAMINE INBOX").await;
        let lines = raw.cmd("f1", "UID FETCH 1:* (UID FLAGS RFC822.SIZE)").await;
        let fetches: Vec<_> = lines.iter().filter(|l| l.contains(" FETCH (")).collect();
        assert_eq!(fetches.len(), 3, "{lines:?}");
        for l in fetches {
            let items = l.split_once("FETCH (").unwrap().1;
            assert!(items.starts_with("RFC822.SIZE "), "{l}");
            assert!(items.split_whitespace().nth(2) == Some("UID"), "{l}");
        }
        via.logout().await;

        // Throttling: 2 APPENDs of budget, 1 per second after; a new session that comes
        // back before the suggested time is over is told to wait longer.
        let px = Proxy::start_with(
            tb.dest.plain_port(),
            Options::forward_all().exchange().throttle(proxy::Bucket {
                per_second: 1.0,
                burst: 2.0,
                backoff_ms: 300,
                max_backoff_ms: 10_000,
            }),
        )
        .await;
        let before = inbox_count(&tb, email).await;
        let mut raw = Raw::login(px.port(), email).await;
        raw.cmd("s1", "SELECT INBOX").await;
        let mut batch = Vec::new();
        for t in ["t1", "t2", "t3", "t4"] {
            batch.extend(append_cmd(t, &message(&format!("throttle-{t}"))));
        }
        raw.send(&batch).await;
        let mut answers = Vec::new();
        for t in ["t1", "t2", "t3", "t4"] {
            answers.push(raw.until(t).await.pop().unwrap());
        }
        assert!(
            answers[0].starts_with("t1 OK") && answers[1].starts_with("t2 OK"),
            "{answers:?}"
        );
        assert!(
            answers[2].starts_with("t3 NO Request is throttled."),
            "{answers:?}"
        );
        assert!(
            answers[3].starts_with("t4 NO Request is throttled."),
            "{answers:?}"
        );
        let first = suggested_ms(&answers[2]);
        assert!((300..=1000).contains(&first), "{first}");
        let mut early = Raw::login(px.port(), email).await;
        early.cmd("s1", "SELECT INBOX").await;
        early.send(&append_cmd("t5", &message("throttle-t5"))).await;
        let again = early.until("t5").await.pop().unwrap();
        assert!(
            suggested_ms(&again) >= 2 * first.min(suggested_ms(&answers[3])),
            "{again}"
        );
        assert_eq!(px.throttles(email), 3);
        assert_eq!(inbox_count(&tb, email).await, before + 2);

        // The token expires: BYE, then the end of the stream.
        let px = Proxy::start_with(
            tb.dest.plain_port(),
            Options::forward_all()
                .exchange()
                .token_lifetime(Duration::from_millis(500)),
        )
        .await;
        let mut raw = Raw::login(px.port(), email).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            raw.line().await,
            "* BYE Session invalidated - AccessTokenExpired\r\n"
        );
        assert_eq!(raw.line().await, "");
        assert_eq!(px.expired_sessions(), 1);

        // A client that dies right after pipelining ten APPENDs (each held back 30 ms on
        // its way): the server still saves all ten.
        let px = Proxy::start_with(
            tb.dest.plain_port(),
            Options::forward_all()
                .exchange()
                .hold(Duration::from_millis(30)),
        )
        .await;
        let before = inbox_count(&tb, email).await;
        let mut raw = Raw::login(px.port(), email).await;
        raw.cmd("s1", "SELECT INBOX").await;
        let mut batch = Vec::new();
        for i in 0..10 {
            batch.extend(append_cmd(&format!("d{i}"), &message(&format!("dead-{i}"))));
        }
        raw.send(&batch).await;
        drop(raw);
        let mut now = before;
        for _ in 0..100 {
            now = inbox_count(&tb, email).await;
            if now >= before + 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(now, before + 10, "the dead client's APPENDs were all saved");
        for _ in 0..100 {
            if px.late_appends() == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(px.late_appends(), 10, "saved after the client was gone");
        direct.logout().await;
    });
}
