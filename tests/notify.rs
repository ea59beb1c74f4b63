//! The letters to the users (`[notify]`), against real Dovecot servers: the notice lands
//! in the source INBOX once, filled and correctly encoded, and is not migrated; the
//! welcome lands in the destination INBOX once, at completion, unread and dated then; a
//! broken template stops the start with its line number.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;

const USERS: [(&str, &str, &str); 2] = [
    ("alice", "alice-pw", "alice@example.test"),
    ("bob", "bob-pw", "bob@example.test"),
];

const NOTICE: &str = "From: IT-afdelingen <it@example.test>\n\
To: {display_name} <{email}>\n\
Subject: Din e-mail flytter til Office 365 {cutover_date}\n\
\n\
Kære {display_name},\n\
\n\
Din postkasse {email} (login {username}) med {items} elementer ({bytes}) flytter\n\
{cutover_date}. Status: {skipped}\n";

const WELCOME: &str = "From: IT-afdelingen <it@example.test>\n\
To: {display_name} <{email}>\n\
Subject: Velkommen til Office 365, {display_name}\n\
\n\
{items} elementer ({bytes}) er flyttet. {skipped}\n";

/// The config of the testbed with `[notify]` and a CSV with a DisplayName column.
fn setup(tb: &cutover::testbed::Testbed) -> std::path::PathBuf {
    let config = demo_config(tb, &USERS, "");
    let dir = config.parent().unwrap();
    std::fs::write(dir.join("notice.eml"), NOTICE).unwrap();
    std::fs::write(dir.join("welcome.eml"), WELCOME).unwrap();
    let mut csv = String::from("EmailAddress,UserName,Password,DisplayName\n");
    for (login, pw, email) in USERS {
        let name = if login == "alice" {
            "Ærø, Jørgen"
        } else {
            ""
        };
        csv.push_str(&format!("{email},{login},{pw},\"{name}\"\n"));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[notify]\nbefore = \"notice.eml\"\nafter = \"welcome.eml\"\n\
         cutover_date = \"fredag den 11. december\"\nlanguage = \"da\"\n",
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// (UID, flags, INTERNALDATE, body) of every message in INBOX of `user` on `server`.
fn inbox(
    tb: &cutover::testbed::Testbed,
    server: &cutover::testbed::Dovecot,
    user: &str,
) -> Vec<(u32, Vec<String>, String, Vec<u8>)> {
    rt().block_on(async {
        let mut c = session(tb, server, user).await;
        let info = c.select("INBOX", true).await.unwrap();
        let mut out = Vec::new();
        if info.exists > 0 {
            let meta = c.uid_fetch_meta("1:*", None).await.unwrap();
            let uids: Vec<u32> = meta.iter().filter_map(|m| m.uid).collect();
            let mut bodies = std::collections::HashMap::new();
            c.uid_fetch_bodies(&uids, |f| {
                bodies.insert(f.uid.unwrap_or(0), f.body.unwrap_or_default());
                Ok(())
            })
            .await
            .unwrap();
            for m in meta {
                let uid = m.uid.unwrap_or(0);
                out.push((
                    uid,
                    m.flags.unwrap_or_default(),
                    m.internal_date.unwrap_or_default(),
                    bodies.remove(&uid).unwrap_or_default(),
                ));
            }
        }
        c.logout().await;
        out
    })
}

fn is_letter(body: &[u8], kind: &str) -> bool {
    String::from_utf8_lossy(body).contains(&format!("Message-ID: <cutover-{kind}-"))
}

/// A header value of `msg`, unfolded, with its RFC 2047 encoded-words decoded.
fn header(msg: &str, name: &str) -> String {
    let head = msg.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
    let line = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .unwrap_or_else(|| panic!("no {name} in {head}"));
    let value = line[name.len() + 1..].trim();
    let mut out = String::new();
    let mut last_encoded = false;
    for word in value.split(' ') {
        // RFC 2047: the space between two encoded-words is not part of the text.
        match word
            .strip_prefix("=?UTF-8?B?")
            .and_then(|w| w.strip_suffix("?="))
        {
            Some(b) => {
                if !out.is_empty() && !last_encoded {
                    out.push(' ');
                }
                let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                out.push_str(&String::from_utf8(bytes).unwrap());
                last_encoded = true;
            }
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
                last_encoded = false;
            }
        }
    }
    out
}

fn csv_col(report: &str, mailbox: &str, col: &str) -> String {
    let mut r = csv::Reader::from_reader(report.as_bytes());
    let headers = r.headers().unwrap().clone();
    let i = headers.iter().position(|h| h == col).unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        if &rec[0] == "mailbox" && &rec[1] == mailbox {
            return rec[i].to_string();
        }
    }
    panic!("no row for {mailbox}");
}

#[test]
fn notice_at_the_source_once_not_migrated_and_welcome_once_at_completion() {
    let Some(tb) = testbed(&USERS) else { return };
    fill(&tb, "alice", "INBOX", 3, |_| vec!["\\Seen"]);
    fill(&tb, "bob", "INBOX", 2, |_| vec![]);
    let config = setup(&tb);

    // The notice: once per mailbox, filled, headers encoded.
    let out = cutover(&config, &["notify", "before"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("alice@example.test: notice delivered"));
    let alice = inbox(&tb, &tb.source, "alice");
    assert_eq!(alice.len(), 4);
    let notices: Vec<_> = alice.iter().filter(|m| is_letter(&m.3, "before")).collect();
    assert_eq!(notices.len(), 1);
    let (_, flags, _, body) = notices[0];
    assert!(
        !flags.iter().any(|f| f == "\\Seen"),
        "the notice is unread: {flags:?}"
    );
    let msg = String::from_utf8(body.clone()).unwrap();
    let (head, text) = msg.split_once("\r\n\r\n").unwrap();
    assert!(head.is_ascii(), "headers not encoded:\n{head}");
    assert!(head.contains("=?UTF-8?B?"), "{head}");
    assert_eq!(
        header(&msg, "Subject"),
        "Din e-mail flytter til Office 365 fredag den 11. december"
    );
    assert_eq!(header(&msg, "To"), "Ærø, Jørgen <alice@example.test>");
    assert!(
        head.contains("Content-Type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert!(text.starts_with("Kære Ærø, Jørgen,\r\n"), "{text}");
    assert!(
        text.contains("Din postkasse alice@example.test (login alice) med 3 elementer ("),
        "{text}"
    );
    assert!(
        text.contains("Status: Indtil nu skal intet element blive tilbage."),
        "{text}"
    );
    assert!(!text.contains('{'), "placeholders left: {text}");
    // Without a display name, the address stands in for it.
    let bob = inbox(&tb, &tb.source, "bob");
    let bob_notice = bob.iter().find(|m| is_letter(&m.3, "before")).unwrap();
    assert!(String::from_utf8_lossy(&bob_notice.3).contains("Kære bob@example.test,"));

    // Again: nothing new, unless asked.
    let out = cutover(&config, &["notify", "before"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("already delivered"),
        "{}",
        stdout(&out)
    );
    assert_eq!(inbox(&tb, &tb.source, "alice").len(), 4);
    let out = cutover(
        &config,
        &[
            "notify",
            "before",
            "--again",
            "--mailbox",
            "bob@example.test",
        ],
    );
    assert!(out.status.success());
    assert_eq!(inbox(&tb, &tb.source, "bob").len(), 4);
    assert_eq!(inbox(&tb, &tb.source, "alice").len(), 4);

    // The migration leaves the notices behind, and does not count them as skipped.
    let out = cutover(&config, &["sync", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dest_alice = inbox(&tb, &tb.dest, "alice@example.test");
    assert_eq!(dest_alice.len(), 3);
    assert!(!dest_alice.iter().any(|m| is_letter(&m.3, "before")));
    let dest_bob = inbox(&tb, &tb.dest, "bob@example.test");
    assert_eq!(dest_bob.len(), 2);
    let status = stdout(&cutover(&config, &["status", "--json"]));
    let snap: serde_json::Value = serde_json::from_str(&status).unwrap();
    for row in snap["mailboxes"].as_array().unwrap() {
        assert_eq!(row["items_skipped"], 0, "{row}");
        assert!(row["problems"].as_array().unwrap().is_empty(), "{row}");
        assert!(row["notice_delivered_unix"].is_i64(), "{row}");
        assert!(row["welcome_delivered_unix"].is_null(), "{row}");
    }
    // New mail after the notice still comes; the notice still does not.
    fill(&tb, "alice", "INBOX", 1, |_| vec![]);
    let out = cutover(&config, &["sync", "--once"]);
    assert!(out.status.success());
    assert_eq!(inbox(&tb, &tb.dest, "alice@example.test").len(), 4);

    // Completion: the welcome, unread, dated at the completion.
    let out = cutover(&config, &["complete", "--mailbox", "alice@example.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dest_alice = inbox(&tb, &tb.dest, "alice@example.test");
    assert_eq!(dest_alice.len(), 5);
    let welcomes: Vec<_> = dest_alice
        .iter()
        .filter(|m| is_letter(&m.3, "after"))
        .collect();
    assert_eq!(welcomes.len(), 1);
    let (_, flags, date, body) = welcomes[0];
    assert!(
        !flags.iter().any(|f| f == "\\Seen"),
        "the welcome is unread: {flags:?}"
    );
    let status = stdout(&cutover(&config, &["status", "--json"]));
    let snap: serde_json::Value = serde_json::from_str(&status).unwrap();
    let row = snap["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == "alice@example.test")
        .unwrap()
        .clone();
    let completed = row["completed_unix"].as_i64().expect("completed");
    let at = cutover::imap::response::parse_internal_date(date).unwrap();
    assert_eq!(at.timestamp(), completed, "INTERNALDATE {date}");
    assert!(row["welcome_delivered_unix"].as_i64().unwrap() >= completed);
    let msg = String::from_utf8(body.clone()).unwrap();
    assert_eq!(
        header(&msg, "Subject"),
        "Velkommen til Office 365, Ærø, Jørgen"
    );
    assert!(
        msg.contains("4 elementer (") && msg.contains("Alle dine elementer blev flyttet."),
        "{msg}"
    );
    // Bob is not Completed: no welcome for him.
    assert_eq!(inbox(&tb, &tb.dest, "bob@example.test").len(), 2);

    // Once: by hand it is not sent again.
    let out = cutover(&config, &["notify", "after"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("alice@example.test: welcome already delivered"));
    assert!(stdout(&out).contains("bob@example.test: not Completed yet"));
    assert_eq!(inbox(&tb, &tb.dest, "alice@example.test").len(), 5);

    let report = stdout(&cutover(&config, &["report", "--csv"]));
    assert!(!csv_col(&report, "alice@example.test", "notice_delivered_utc").is_empty());
    assert!(!csv_col(&report, "alice@example.test", "welcome_delivered_utc").is_empty());
    assert!(csv_col(&report, "bob@example.test", "welcome_delivered_utc").is_empty());
    let table = stdout(&cutover(&config, &["status"]));
    assert!(table.contains("letters to the users"), "{table}");
}

fn refused(config: &Path, template: &str, line: usize, what: &str) {
    std::fs::write(config.parent().unwrap().join("notice.eml"), template).unwrap();
    let out = cutover(config, &["notify", "before"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("notify.before"), "{err}");
    assert!(err.contains(&format!("line {line}:")), "{err}");
    assert!(err.contains(what), "{err}");
    // Refused at start by every command that loads the config, not only by notify.
    let out = cutover(config, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_broken_template_is_refused_at_start_with_its_line() {
    let Some(tb) = testbed(&USERS) else { return };
    let config = setup(&tb);
    refused(
        &config,
        "From: it@example.test\nSubject: hi\n\nHello {dispaly_name}\n",
        4,
        "{dispaly_name}",
    );
    refused(
        &config,
        "From: it@example.test\nSubject: hi\nthis line is no header\n\nbody\n",
        3,
        "not a header field",
    );
    // Nothing was written to the source.
    assert_eq!(inbox(&tb, &tb.source, "alice").len(), 0);
    // Fixed, it goes.
    std::fs::write(config.parent().unwrap().join("notice.eml"), NOTICE).unwrap();
    let out = cutover(
        &config,
        &["notify", "before", "--mailbox", "alice@example.test"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(inbox(&tb, &tb.source, "alice").len(), 1);
    assert_eq!(inbox(&tb, &tb.source, "bob").len(), 0);
}

/// `cutover run`, killed by its PID if the test ends before it does.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn statuses(config: &Path) -> Vec<String> {
    let out = cutover(config, &["status", "--json"]);
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    snap["mailboxes"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r["status"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_daemon_welcomes_each_mailbox_once_when_it_completes() {
    let Some(tb) = testbed(&USERS) else { return };
    fill(&tb, "alice", "INBOX", 2, |_| vec![]);
    fill(&tb, "bob", "INBOX", 1, |_| vec![]);
    let config = setup(&tb);
    let log = config.parent().unwrap().join("daemon.log");
    let mut daemon = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("CUTOVER_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let synced = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = statuses(&config);
        s.len() == 2 && s.iter().all(|s| s == "Synced" || s == "IncrementalSyncing")
    });
    assert!(synced, "{}", std::fs::read_to_string(&log).unwrap());
    let out = cutover(&config, &["complete"]);
    assert!(out.status.success());
    // Every mailbox Completed: the daemon ends by itself, after its welcomes.
    let exited = (0..1200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        matches!(daemon.0.try_wait(), Ok(Some(_)))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(exited, "the daemon did not finish\n{text}");
    assert!(text.contains("welcome delivered"), "{text}");
    for (email, n) in [("alice@example.test", 2), ("bob@example.test", 1)] {
        let dest = inbox(&tb, &tb.dest, email);
        assert_eq!(dest.len(), n + 1, "{email}");
        let welcome: Vec<_> = dest.iter().filter(|m| is_letter(&m.3, "after")).collect();
        assert_eq!(welcome.len(), 1, "{email}");
        assert!(!welcome[0].1.iter().any(|f| f == "\\Seen"));
    }
    let report = stdout(&cutover(&config, &["report", "--csv"]));
    assert!(!csv_col(&report, "bob@example.test", "welcome_delivered_utc").is_empty());
    // The notice was never sent: that is only ever done by hand.
    assert!(csv_col(&report, "bob@example.test", "notice_delivered_utc").is_empty());
    assert!(!inbox(&tb, &tb.source, "bob")
        .iter()
        .any(|m| is_letter(&m.3, "before")));
}

#[test]
fn a_notice_appended_by_a_run_that_stopped_is_found_not_sent_again_and_not_migrated() {
    let Some(tb) = testbed(&USERS) else { return };
    fill(&tb, "alice", "INBOX", 2, |_| vec![]);
    let config = setup(&tb);
    // A run that recorded the Message-ID, APPENDed, and was killed before it recorded
    // the UID: the spool says "pending", the INBOX holds the notice.
    let spool_dir = config.parent().unwrap().join("spool");
    let id = "cutover-before-0123456789abcdef0123456789abcdef@example.test";
    {
        let spool = cutover::spool::Spool::open(&spool_dir).unwrap();
        let pending = cutover::spool::Notified {
            message_id: id.into(),
            ..Default::default()
        };
        spool
            .set_notified("alice@example.test", "before", &pending)
            .unwrap();
    }
    let body =
        format!("From: it@example.test\r\nSubject: notice\r\nMessage-ID: <{id}>\r\n\r\nhello\r\n");
    tb.source
        .deliver("alice", "INBOX", body.as_bytes(), &[], Some(1_700_000_000))
        .unwrap();

    let out = cutover(
        &config,
        &["notify", "before", "--mailbox", "alice@example.test"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("notice of an interrupted run found in the INBOX"),
        "{}",
        stdout(&out)
    );
    assert_eq!(inbox(&tb, &tb.source, "alice").len(), 3, "not sent twice");
    let out = cutover(&config, &["sync", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dest = inbox(&tb, &tb.dest, "alice@example.test");
    assert_eq!(dest.len(), 2, "the notice is not migrated");
    let out = cutover(
        &config,
        &["notify", "before", "--mailbox", "alice@example.test"],
    );
    assert!(
        stdout(&out).contains("already delivered"),
        "{}",
        stdout(&out)
    );
}

/// A daemon migrating to the destination through a proxy that, once [`Held::hold`] is
/// called, answers every APPEND (the welcomes: the final pass has nothing left to append)
/// with `held`; returned once both mailboxes are Synced.
struct Held {
    px: proxy::Proxy,
    switch: Arc<AtomicBool>,
    daemon: Daemon,
    log: std::path::PathBuf,
}

fn daemon_behind_holding_proxy(
    rt: &tokio::runtime::Runtime,
    dest_port: u16,
    config: &Path,
    held: proxy::Action,
    drain: Duration,
) -> Held {
    let switch = Arc::new(AtomicBool::new(false));
    let schedule: proxy::Schedule = {
        let switch = switch.clone();
        Arc::new(move |_: &str, _| {
            if switch.load(Ordering::SeqCst) {
                held
            } else {
                proxy::Action::Forward
            }
        })
    };
    let px = rt.block_on(proxy::Proxy::start_with(
        dest_port,
        proxy::Options::new(schedule).drain_limit(drain),
    ));
    upstream_via(config, px.port());
    let log = config.parent().unwrap().join("daemon.log");
    let daemon = start_daemon(config, &log);
    let synced = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let s = statuses(config);
        s.len() == 2 && s.iter().all(|s| s == "Synced" || s == "IncrementalSyncing")
    });
    assert!(synced, "{}", std::fs::read_to_string(&log).unwrap());
    Held {
        px,
        switch,
        daemon,
        log,
    }
}

impl Held {
    /// `cutover complete`, then SIGKILL as soon as both welcomes' APPENDs are held; the
    /// proxy forwards APPENDs again afterwards.
    fn complete_and_kill_while_held(&mut self, config: &Path) {
        self.switch.store(true, Ordering::SeqCst);
        let out = cutover(config, &["complete"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let held = (0..1500).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            self.px
                .events()
                .iter()
                .filter(|e| matches!(e.action, proxy::Action::Delay { .. }))
                .count()
                >= 2
        });
        assert!(held, "{}", std::fs::read_to_string(&self.log).unwrap());
        let _ = self.daemon.0.kill();
        let _ = self.daemon.0.wait();
        self.switch.store(false, Ordering::SeqCst);
    }
}

/// Starts a daemon logging to `log` beside the config and waits, at most `limit`, for it
/// to end by itself (every mailbox Completed); returns its log.
fn daemon_to_the_end(config: &Path, log: &str, limit: Duration) -> String {
    let log = config.parent().unwrap().join(log);
    let mut daemon = start_daemon(config, &log);
    let end = std::time::Instant::now() + limit;
    let mut exited = false;
    while !exited && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        exited = matches!(daemon.0.try_wait(), Ok(Some(_)));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(exited, "the daemon did not finish\n{text}");
    text
}

fn start_daemon(config: &Path, log: &Path) -> Daemon {
    Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("CUTOVER_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// `cutover notify` while the daemon holds the spool is refused with what to do, and
/// writes nothing; a welcome whose delivery a kill cut short (Completed is recorded, the
/// welcome is not) is sent by the next daemon by itself, once.
#[test]
fn notify_is_refused_while_the_daemon_runs_and_a_welcome_lost_to_a_kill_is_sent_once() {
    let Some(tb) = testbed(&USERS) else { return };
    fill(&tb, "alice", "INBOX", 2, |_| vec![]);
    fill(&tb, "bob", "INBOX", 1, |_| vec![]);
    let config = setup(&tb);
    let rt = rt();
    // Held back and forgotten when the client is gone, as a crash during the APPEND
    // would leave it.
    let mut held = daemon_behind_holding_proxy(
        &rt,
        tb.dest.plain_port(),
        &config,
        proxy::Action::Delay { ms: 600_000 },
        Duration::from_millis(500),
    );

    // While it runs: refused, with what to do, and nothing written.
    for kind in ["before", "after"] {
        let out = cutover(&config, &["notify", kind]);
        assert!(!out.status.success(), "{}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("the daemon is running"), "{err}");
        assert!(err.contains("stop it"), "{err}");
        assert!(err.contains(&format!("cutover notify {kind}")), "{err}");
    }
    assert!(!inbox(&tb, &tb.source, "alice")
        .iter()
        .any(|m| is_letter(&m.3, "before")));
    assert_eq!(inbox(&tb, &tb.dest, "alice@example.test").len(), 2);

    held.complete_and_kill_while_held(&config);
    // The kill left both Completed, without a welcome.
    let snap: serde_json::Value =
        serde_json::from_slice(&cutover(&config, &["status", "--json"]).stdout).unwrap();
    for row in snap["mailboxes"].as_array().unwrap() {
        assert_eq!(row["status"], "Completed", "{row}");
        assert!(row["welcome_delivered_unix"].is_null(), "{row}");
    }
    for email in ["alice@example.test", "bob@example.test"] {
        assert!(!inbox(&tb, &tb.dest, email)
            .iter()
            .any(|m| is_letter(&m.3, "after")));
    }

    // The next daemon sends them by itself, and ends: every mailbox is Completed.
    let text = daemon_to_the_end(&config, "daemon2.log", Duration::from_secs(60));
    assert!(text.contains("welcome delivered"), "{text}");
    for (email, n) in [("alice@example.test", 2), ("bob@example.test", 1)] {
        let dest = inbox(&tb, &tb.dest, email);
        assert_eq!(dest.len(), n + 1, "{email}");
        assert_eq!(
            dest.iter().filter(|m| is_letter(&m.3, "after")).count(),
            1,
            "{email}"
        );
    }
    // Once: a third start sends nothing.
    daemon_to_the_end(&config, "daemon3.log", Duration::from_secs(60));
    assert_eq!(inbox(&tb, &tb.dest, "alice@example.test").len(), 3);
    assert_eq!(inbox(&tb, &tb.dest, "bob@example.test").len(), 2);
}

/// The notice is excluded by its UID; when the source gives the INBOX a new UIDVALIDITY
/// every UID is new, and the notice is still known by its Message-ID and left behind.
#[test]
fn a_new_uidvalidity_at_the_source_does_not_migrate_the_notice() {
    let Some(tb) = testbed(&USERS) else { return };
    fill(&tb, "alice", "INBOX", 2, |_| vec![]);
    let config = setup(&tb);
    let out = cutover(
        &config,
        &["notify", "before", "--mailbox", "alice@example.test"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cutover(&config, &["sync", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(inbox(&tb, &tb.dest, "alice@example.test").len(), 2);

    let uv = || {
        tb.source
            .doveadm(&[
                "-f",
                "flow",
                "mailbox",
                "status",
                "-u",
                "alice",
                "uidvalidity",
                "INBOX",
            ])
            .unwrap()
            .trim()
            .to_string()
    };
    let before = uv();
    let digits: String = before.chars().filter(char::is_ascii_digit).collect();
    let new = digits
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("{before:?}: {e}"))
        + 1000;
    tb.source
        .doveadm(&[
            "mailbox",
            "update",
            "-u",
            "alice",
            "--uid-validity",
            &new.to_string(),
            "INBOX",
        ])
        .unwrap();
    assert_ne!(before, uv(), "the INBOX really has a new UIDVALIDITY");
    tb.source
        .deliver("alice", "INBOX", &message("after-uidvalidity"), &[], None)
        .unwrap();

    let out = cutover(&config, &["sync", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("UIDVALIDITY changed"),
        "{}",
        stderr(&out)
    );
    let dest = inbox(&tb, &tb.dest, "alice@example.test");
    assert_eq!(dest.len(), 3, "the new message, nothing twice");
    assert!(!dest.iter().any(|m| is_letter(&m.3, "before")));
    let snap: serde_json::Value =
        serde_json::from_slice(&cutover(&config, &["status", "--json"]).stdout).unwrap();
    let row = snap["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == "alice@example.test")
        .unwrap()
        .clone();
    assert_eq!(row["items_skipped"], 0, "the notice is not counted: {row}");
}

/// A welcome whose APPEND the server executes only after the daemon that sent it was
/// killed, and after the next daemon first looked for it, is found, not sent again: a
/// server goes on with a dead session's commands, so the next daemon looks again once the
/// INBOX has stood still.
#[test]
fn a_welcome_still_on_its_way_after_a_kill_is_found_not_sent_twice() {
    let Some(tb) = testbed(&USERS) else { return };
    fill(&tb, "alice", "INBOX", 2, |_| vec![]);
    fill(&tb, "bob", "INBOX", 1, |_| vec![]);
    let config = setup(&tb);
    let rt = rt();
    // Held 1.5 s and then forwarded, whether its client is still there or not.
    let mut held = daemon_behind_holding_proxy(
        &rt,
        tb.dest.plain_port(),
        &config,
        proxy::Action::Delay { ms: 1_500 },
        Duration::from_secs(10),
    );
    held.complete_and_kill_while_held(&config);
    // At once: the held APPENDs reach the server while the next daemon starts.
    let text = daemon_to_the_end(&config, "daemon2.log", Duration::from_secs(90));
    // The held APPENDs landed after the next daemon first looked, and were found.
    assert!(
        text.contains("of an interrupted run found in the INBOX"),
        "{text}"
    );
    for (email, n) in [("alice@example.test", 2), ("bob@example.test", 1)] {
        let dest = inbox(&tb, &tb.dest, email);
        assert_eq!(
            dest.iter().filter(|m| is_letter(&m.3, "after")).count(),
            1,
            "{email}: {text}"
        );
        assert_eq!(dest.len(), n + 1, "{email}");
    }
    let snap: serde_json::Value =
        serde_json::from_slice(&cutover(&config, &["status", "--json"]).stdout).unwrap();
    for row in snap["mailboxes"].as_array().unwrap() {
        assert!(!row["welcome_delivered_unix"].is_null(), "{row}");
    }
}
