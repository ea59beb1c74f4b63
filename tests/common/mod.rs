//! Shared by the integration tests: real Dovecot servers, the real `cutover` binary, and a
//! way to read back every message of a mailbox (sha256 of BODY[], flags, INTERNALDATE).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cutover::imap::client::{Client, Endpoint, Security};
use cutover::imap::transport::TlsSettings;
use cutover::imap::Credentials;
use cutover::secret::Secret;
use cutover::testbed::{Dovecot, Testbed, MASTER_PASSWORD, MASTER_USER};
use sha2::Digest;

/// One message as a server holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub sha256: String,
    pub flags: Vec<String>,
    pub internal_date: String,
}

/// Folder name -> its messages, sorted (so two servers can be compared regardless of UIDs).
pub type Snapshot = BTreeMap<String, Vec<Seen>>;

/// Starts a testbed, or returns None (after a loud notice) where Dovecot is missing and
/// CI is not set. Under CI=true a missing Dovecot fails the test.
pub fn testbed(users: &[(&str, &str, &str)]) -> Option<Testbed> {
    if !cutover::testbed::require_dovecot() {
        return None;
    }
    Some(Testbed::start(users).expect("testbed starts"))
}

/// The shared corpus; under CI=true its absence fails the test.
pub fn corpus() -> Option<Vec<(String, Vec<u8>)>> {
    match cutover::demo::corpus_dir() {
        Some(d) => Some(cutover::demo::corpus_messages(&d).expect("corpus readable")),
        None => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("../shared/corpus (or $CUTOVER_CORPUS) is missing under CI=true");
            }
            eprintln!("\n*** SKIPPED: ../shared/corpus not found; set CUTOVER_CORPUS ***\n");
            None
        }
    }
}

/// Runs the cutover binary with `args` (after `--config config`), bounded in time.
pub fn cutover(config: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("--config").arg(config).args(args);
    cmd.env("CUTOVER_LOG", "info");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cutover starts");
    let out = wait_bounded(child, Duration::from_secs(300));
    eprintln!(
        "--- cutover {args:?} exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "cutover did not finish within {limit:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A session on `server` as `user`, through the master user (so passwords don't matter).
pub async fn session(tb: &Testbed, server: &Dovecot, user: &str) -> Client {
    try_session(tb, server, user).await.expect("master login")
}

/// [`session`], or why there is none (a server that is reloading drops connections).
#[allow(dead_code)]
pub async fn try_session(
    tb: &Testbed,
    server: &Dovecot,
    user: &str,
) -> Result<Client, cutover::imap::ImapError> {
    let ep = Endpoint {
        host: "127.0.0.1".into(),
        port: server.tls_port(),
        security: Security::Implicit,
        tls: Some(TlsSettings::new(Some(tb.ca.ca_pem_path())).expect("CA loads")),
        timeout: Duration::from_secs(30),
        max_response_bytes: 64 << 20,
    };
    let mut c = Client::connect(&ep).await?;
    c.login(&Credentials::Plain {
        authzid: Some(user.to_string()),
        authcid: MASTER_USER.to_string(),
        password: Secret::new(MASTER_PASSWORD),
    })
    .await?;
    Ok(c)
}

/// Every message of every selectable folder of `user` on `server`.
pub async fn snapshot(tb: &Testbed, server: &Dovecot, user: &str) -> Snapshot {
    let mut c = session(tb, server, user).await;
    let snap = snapshot_session(&mut c, None).await;
    c.logout().await;
    snap
}

/// Every message of every selectable folder the session `c` sees. With `nul_as`, the
/// sha256 is that of the body with each NUL byte replaced by that byte: what a destination
/// that stores no NUL (Dovecot, or cutover without BINARY) holds of a source's message.
pub async fn snapshot_session(c: &mut Client, nul_as: Option<u8>) -> Snapshot {
    let mut snap = Snapshot::new();
    for f in c.list().await.expect("LIST") {
        if !f.selectable() {
            continue;
        }
        let info = c.select(&f.name, true).await.expect("EXAMINE");
        let mut msgs = Vec::new();
        if info.exists > 0 {
            let meta = c.uid_fetch_meta("1:*", None).await.expect("FETCH meta");
            let uids: Vec<u32> = meta.iter().filter_map(|m| m.uid).collect();
            let mut bodies = BTreeMap::new();
            c.uid_fetch_bodies(&uids, |f| {
                bodies.insert(f.uid.unwrap_or(0), f.body.unwrap_or_default());
                Ok(())
            })
            .await
            .expect("FETCH bodies");
            for m in meta {
                let mut body = bodies.get(&m.uid.unwrap_or(0)).cloned().unwrap_or_default();
                if let Some(b) = nul_as {
                    body.iter_mut().filter(|x| **x == 0).for_each(|x| *x = b);
                }
                let mut flags = m.flags.unwrap_or_default();
                flags.sort();
                msgs.push(Seen {
                    sha256: hex(&sha2::Sha256::digest(&body)),
                    flags,
                    internal_date: m.internal_date.unwrap_or_default(),
                });
            }
        }
        msgs.sort();
        snap.insert(f.name.clone(), msgs);
    }
    snap
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How source folder names (Courier style) appear at the Exchange-style destination.
pub fn dest_name(src: &str) -> String {
    match src {
        "INBOX" => "INBOX".into(),
        "INBOX.Sent" => "Sent Items".into(),
        "INBOX.Trash" => "Deleted Items".into(),
        "INBOX.Junk" => "Junk Email".into(),
        "INBOX.Drafts" => "Drafts".into(),
        other => other.trim_start_matches("INBOX.").replace('.', "/"),
    }
}

/// Asserts that every source folder's messages are at the destination exactly once
/// (same sha256 of BODY[], same flags, same INTERNALDATE), after the default mapping.
pub fn assert_same(src: &Snapshot, dst: &Snapshot) {
    let mut total = 0;
    for (folder, msgs) in src {
        let d = dest_name(folder);
        let empty = Vec::new();
        let got = dst.get(&d).unwrap_or(&empty);
        if got.len() != msgs.len() {
            let missing: Vec<_> = msgs.iter().filter(|m| !got.contains(m)).take(3).collect();
            panic!(
                "folder {folder} -> {d}: {} at the source, {} at the destination; missing (first 3): {missing:#?}",
                msgs.len(),
                got.len()
            );
        }
        if got != msgs {
            let missing: Vec<_> = msgs.iter().filter(|m| !got.contains(m)).take(5).collect();
            let extra: Vec<_> = got.iter().filter(|m| !msgs.contains(m)).take(5).collect();
            panic!("folder {folder} -> {d}: messages differ\nmissing at the destination (first 5): {missing:#?}\nonly at the destination (first 5): {extra:#?}");
        }
        total += msgs.len();
    }
    let dest_total: usize = dst.values().map(Vec::len).sum();
    assert_eq!(
        dest_total, total,
        "destination holds messages the source does not have"
    );
}

/// A small message with a unique subject.
pub fn message(tag: &str) -> Vec<u8> {
    cutover::demo::sample_message(tag, 1, tag)
}

pub fn work_dir(tb: &Testbed) -> PathBuf {
    tb.dir.path().join("work")
}

/// Like [`cutover`], but with `CUTOVER_LOG` set to `log` (e.g. `"debug"`). stdout and
/// stderr are drained while the process runs (debug logs can exceed a pipe's buffer), and
/// nothing is echoed: callers that look for secrets must not print them either.
pub fn cutover_log(config: &Path, args: &[&str], log: &str) -> Output {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CUTOVER_LOG", log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cutover starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err_t = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let limit = Duration::from_secs(300);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cutover {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A multi-threaded runtime for the tests' own IMAP sessions.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Column `copied` of the summary row of `mailbox` in a `sync --once` output.
pub fn copied(out: &std::process::Output, mailbox: &str) -> u64 {
    let text = stdout(out);
    let row = text
        .lines()
        .find(|l| l.starts_with(mailbox))
        .unwrap_or_else(|| panic!("no summary row for {mailbox} in:\n{text}"));
    row.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A `cutover.toml` (and CSV) for `users` of the testbed, as `cutover demo` writes it:
/// implicit TLS both ways; `sync` is appended to it.
pub fn demo_config(tb: &Testbed, users: &[(&str, &str, &str)], sync: &str) -> PathBuf {
    cutover::demo::write_config(
        tb,
        &work_dir(tb),
        users,
        cutover::demo::DemoTls {
            source_implicit: true,
            dest_implicit: true,
        },
        sync,
    )
    .unwrap()
}

/// Puts `count` distinct messages into `folder` of `user` at the source (created if
/// needed), the `i`-th with `flags(i)`.
pub fn fill(
    tb: &Testbed,
    user: &str,
    folder: &str,
    count: usize,
    flags: impl Fn(usize) -> Vec<&'static str>,
) {
    if folder != "INBOX" {
        tb.source.add_folder(user, folder).unwrap();
    }
    for i in 0..count {
        let body = cutover::demo::sample_message(user, i, folder);
        tb.source
            .deliver(
                user,
                folder,
                &body,
                &flags(i),
                Some(1_600_000_000 + i as i64 * 60),
            )
            .unwrap();
    }
}

/// Waits (up to 5 s) until new destination sessions of `user` do (`want`) or do not offer
/// `capability`; true once they do as wanted.
pub fn capability_becomes(
    tb: &Testbed,
    rt: &tokio::runtime::Runtime,
    user: &str,
    capability: &str,
    want: bool,
) -> bool {
    rt.block_on(async {
        for _ in 0..50 {
            // A connection the reload cuts off is not an answer; ask again.
            if let Ok(c) = try_session(tb, &tb.dest, user).await {
                let has = c.caps().has(capability);
                c.logout().await;
                if has == want {
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    })
}

/// Replaces the `[name]` section of the config file with `body`.
pub fn replace_section(config: &std::path::Path, name: &str, body: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let start = text.find(&format!("[{name}]\n")).unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    std::fs::write(
        config,
        format!("{}[{name}]\n{body}{}", &text[..start], &text[end..]),
    )
    .unwrap();
}

/// The source through a proxy on `port`, in plain text on loopback.
pub fn source_via(config: &std::path::Path, port: u16) {
    replace_section(
        config,
        "source",
        &format!(
            "host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nauth = \"login\"\n\
             max_connections = 4"
        ),
    );
}

/// The destination through a proxy on `port`, one APPEND a message.
pub fn upstream_via(config: &std::path::Path, port: u16) {
    replace_section(
        config,
        "upstream",
        &format!(
            "host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nauth = \"plain\"\n\
             admin_user = \"{MASTER_USER}\"\nadmin_password = \"{MASTER_PASSWORD}\"\n\
             admin_login = \"authzid\"\nmax_connections = 4\nmultiappend = false"
        ),
    );
}
