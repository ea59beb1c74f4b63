//! The daemon (`cutover run`) against real servers: two Dovecot instances and a real DNS
//! server on 127.0.0.1 (daemon_support/dns.rs) whose MX records the tests move. Every test
//! runs the real binary, bounds each wait, and stops what it started by PID.

mod common;
#[path = "daemon_support/dns.rs"]
mod dns;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cutover::daemon::report::Snapshot as StatusSnapshot;
use cutover::demo::{write_config, DemoTls};
use cutover::testbed::Testbed;

const TLS: DemoTls = DemoTls {
    source_implicit: true,
    dest_implicit: true,
};

/// A `cutover run` process; killed (SIGKILL, by PID) if still running when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = config
            .parent()
            .unwrap()
            .join(format!("daemon-{}-{n}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("CUTOVER_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("cutover run starts");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        for p in [self.log.clone(), self.log.with_extension("err")] {
            let mut f = String::new();
            if let Ok(mut file) = std::fs::File::open(&p) {
                let _ = file.read_to_string(&mut f);
            }
            s.push_str(&f);
        }
        s
    }

    /// Sends a signal by PID.
    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -s {sig}");
    }

    /// Waits for the process to exit; None if it still runs after `limit`.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then the exit status (which must come within `limit`).
    fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        match self.wait(limit) {
            Some(st) => st,
            None => panic!(
                "the daemon did not stop within {limit:?} of SIGTERM\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

/// `cutover status --json`.
fn status(config: &Path) -> StatusSnapshot {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .env("CUTOVER_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// mailbox -> status.
fn statuses(config: &Path) -> BTreeMap<String, String> {
    status(config)
        .mailboxes
        .into_iter()
        .map(|r| (r.mailbox.clone(), r.status.clone()))
        .collect()
}

/// Polls `cond` every 200 ms until it holds; panics with `what` (and the daemon's log)
/// after `limit`.
fn wait_until(d: &Daemon, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for {what}\n{}", d.log());
}

fn all_status(config: &Path, want: &str) -> bool {
    let s = statuses(config);
    !s.is_empty() && s.values().all(|v| v == want)
}

/// The check of `assert_same`, as a bool, for polling.
fn same(src: &common::Snapshot, dst: &common::Snapshot) -> bool {
    let empty = Vec::new();
    let count = |s: &common::Snapshot| s.values().map(Vec::len).sum::<usize>();
    src.iter()
        .all(|(f, msgs)| dst.get(&dest_name(f)).unwrap_or(&empty) == msgs)
        && count(src) == count(dst)
}

fn in_sync(rt: &tokio::runtime::Runtime, tb: &Testbed, login: &str, email: &str) -> bool {
    let s = rt.block_on(snapshot(tb, &tb.source, login));
    let d = rt.block_on(snapshot(tb, &tb.dest, email));
    same(&s, &d)
}

fn check_same(rt: &tokio::runtime::Runtime, tb: &Testbed, login: &str, email: &str) {
    let s = rt.block_on(snapshot(tb, &tb.source, login));
    let d = rt.block_on(snapshot(tb, &tb.dest, email));
    assert_same(&s, &d);
}

/// A few messages in INBOX and in a subfolder, with flags.
fn seed(tb: &Testbed, login: &str, n: usize) {
    tb.source.add_folder(login, "INBOX.Work").unwrap();
    for i in 0..n {
        let folder = if i % 2 == 0 { "INBOX" } else { "INBOX.Work" };
        let flags: &[&str] = if i % 3 == 0 { &["\\Seen"] } else { &[] };
        tb.source
            .deliver(
                login,
                folder,
                &cutover::demo::sample_message(login, i, folder),
                flags,
                Some(1_650_000_000 + i as i64 * 60),
            )
            .unwrap();
    }
}

/// Many weighty messages, so that a first pass takes a few seconds and can be interrupted.
fn seed_bulk(tb: &Testbed, login: &str, n: usize) {
    tb.source.add_folder(login, "INBOX.Archive").unwrap();
    for i in 0..n {
        let mut body = cutover::demo::sample_message(login, i, "bulk");
        body.extend(std::iter::repeat_n(b'x', 20_000 + (i % 7) * 1000));
        body.extend_from_slice(b"\r\n");
        tb.source
            .deliver(
                login,
                "INBOX.Archive",
                &body,
                &[],
                Some(1_600_000_000 + i as i64),
            )
            .unwrap();
    }
}

/// Messages of a destination mailbox (all folders), through doveadm.
fn dest_count(tb: &Testbed, email: &str) -> usize {
    tb.dest
        .doveadm(&[
            "-f", "flow", "mailbox", "status", "-u", email, "-t", "messages", "*",
        ])
        .ok()
        .and_then(|o| o.trim().trim_start_matches("messages=").parse().ok())
        .unwrap_or(0)
}

fn run_cli(config: &Path, args: &[&str]) -> std::process::Output {
    cutover(config, args)
}

/// Reads every datagram the daemon sent to our NOTIFY_SOCKET so far.
fn notifications(sock: &UnixDatagram, seen: &mut String) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
}

/// The whole life of a small migration without DNS: READY, all Synced, deltas (new mail,
/// flag change) within an interval, status and report, `complete` by hand while running
/// and while stopped, SIGTERM, and a restart that has nothing left to do.
#[test]
fn daemon_syncs_deltas_reports_and_completes_by_hand() {
    let users = [
        ("alice", "alice-pw", "alice@example.test"),
        ("bob", "bob-pw", "bob@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    for (login, _, _) in users {
        seed(&tb, login, 8);
    }
    let interval = 2;
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        &format!("[sync]\ninterval = \"{interval}s\"\n"),
    )
    .unwrap();
    let sock_path = work_dir(&tb).join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let rt = rt();

    // Under systemd with WatchdogSec=2: a WATCHDOG=1 every second.
    let mut d = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut notes = String::new();
    wait_until(&d, Duration::from_secs(20), "READY=1", || {
        notifications(&sock, &mut notes);
        notes.contains("READY=1")
    });
    wait_until(&d, Duration::from_secs(30), "every mailbox Synced", || {
        all_status(&config, "Synced")
    });
    for (login, _, email) in users {
        check_same(&rt, &tb, login, email);
    }
    let snap = status(&config);
    for row in &snap.mailboxes {
        assert_eq!(row.items_synced, 8, "{row:?}");
        assert!(row.bytes > 0 && row.last_sync_unix.is_some(), "{row:?}");
        assert!(row.seconds_in_status.contains_key("Syncing"), "{row:?}");
    }
    assert!(snap.pid > 0, "read from the running daemon's snapshot");

    // Deltas: a new message and a flag change reach the destination within an interval
    // (plus the time of a pass).
    tb.source
        .deliver(
            "alice",
            "INBOX",
            &message("while-running"),
            &[],
            Some(1_700_000_000),
        )
        .unwrap();
    tb.source
        .doveadm(&[
            "flags",
            "add",
            "-u",
            "bob",
            "\\Flagged",
            "mailbox",
            "INBOX",
            "uid",
            "1",
        ])
        .unwrap();
    let t = Instant::now();
    wait_until(
        &d,
        Duration::from_secs(20),
        "the deltas at the destination",
        || {
            in_sync(&rt, &tb, "alice", "alice@example.test")
                && in_sync(&rt, &tb, "bob", "bob@example.test")
        },
    );
    assert!(
        t.elapsed() < Duration::from_secs(interval + 12),
        "deltas took {:?}",
        t.elapsed()
    );
    notifications(&sock, &mut notes);
    assert!(notes.contains("STATUS=2 mailboxes"), "{notes}");
    assert!(notes.matches("WATCHDOG=1").count() >= 2, "{notes}");

    // status (table) and report (CSV) while the daemon runs, once the pass is recorded.
    wait_until(&d, Duration::from_secs(10), "the counts updated", || {
        status(&config)
            .mailboxes
            .iter()
            .any(|r| r.mailbox == "alice@example.test" && r.items_synced == 9)
    });
    let out = run_cli(&config, &["status"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("alice@example.test") && text.contains("from the running daemon"),
        "{text}"
    );
    let csv_path = work_dir(&tb).join("report.csv");
    let out = run_cli(
        &config,
        &["report", "--csv", "--output", csv_path.to_str().unwrap()],
    );
    assert!(out.status.success());
    let mut r = csv::Reader::from_path(&csv_path).unwrap();
    let header = r.headers().unwrap().clone();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2, "two mailbox rows, no problem items");
    let alice = rows
        .iter()
        .find(|r| &r[col("mailbox")] == "alice@example.test")
        .unwrap();
    assert_eq!(&alice[col("row_type")], "mailbox");
    assert_eq!(&alice[col("items_synced")], "9");

    // `complete` while running: handed to the daemon, alice gets a final pass.
    tb.source
        .deliver(
            "alice",
            "INBOX",
            &message("before-complete"),
            &[],
            Some(1_700_000_100),
        )
        .unwrap();
    let out = run_cli(&config, &["complete", "--mailbox", "alice@example.test"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("daemon is running"),
        "{}",
        stdout(&out)
    );
    wait_until(&d, Duration::from_secs(20), "alice Completed", || {
        statuses(&config)["alice@example.test"] == "Completed"
    });
    check_same(&rt, &tb, "alice", "alice@example.test");
    // Completed: no longer synced, while bob still is.
    tb.source
        .deliver(
            "alice",
            "INBOX",
            &message("after-complete"),
            &[],
            Some(1_700_000_200),
        )
        .unwrap();
    tb.source
        .deliver(
            "bob",
            "INBOX",
            &message("bob-later"),
            &[],
            Some(1_700_000_300),
        )
        .unwrap();
    wait_until(&d, Duration::from_secs(20), "bob's new message", || {
        in_sync(&rt, &tb, "bob", "bob@example.test")
    });
    assert!(!in_sync(&rt, &tb, "alice", "alice@example.test"));
    assert_eq!(dest_count(&tb, "alice@example.test"), 8 + 2);

    // SIGTERM: a clean exit, systemd told.
    let st = d.stop(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "{}", d.log());
    notifications(&sock, &mut notes);
    assert!(notes.contains("STOPPING=1"), "{notes}");

    // `complete` with the daemon stopped runs the final pass itself.
    let out = run_cli(&config, &["complete"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("bob@example.test: final pass"),
        "{}",
        stdout(&out)
    );
    let snap = status(&config);
    assert_eq!(snap.pid, 0, "read from the spool");
    assert!(
        snap.mailboxes.iter().all(|r| r.status == "Completed"),
        "{snap:?}"
    );
    let out = run_cli(&config, &["status"]);
    assert!(stdout(&out).contains("the daemon is not running"));

    // A restart with everything Completed has nothing to do and says so.
    let mut d = Daemon::start(&config, &[]);
    let st = d.wait(Duration::from_secs(20)).expect("exits by itself");
    assert_eq!(st.code(), Some(0), "{}", d.log());
    assert!(
        d.log().contains("every mailbox is Completed"),
        "{}",
        d.log()
    );
    assert!(
        !in_sync(&rt, &tb, "alice", "alice@example.test"),
        "alice not synced again"
    );
}

/// A crash (SIGKILL) in the middle of the first pass, then a restart: it resumes and every
/// message is at the destination exactly once.
#[test]
fn restart_mid_run_resumes_without_duplicates() {
    let users = [("dave", "dave-pw", "dave@example.test")];
    let Some(tb) = testbed(&users) else { return };
    seed(&tb, "dave", 6);
    seed_bulk(&tb, "dave", 400);
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        "[sync]\ninterval = 60\nappend_batch = 8\nfetch_batch_bytes = 200000\n",
    )
    .unwrap();
    let rt = rt();
    let mut d = Daemon::start(&config, &[]);
    wait_until(
        &d,
        Duration::from_secs(30),
        "the first messages at the destination",
        || dest_count(&tb, "dave@example.test") > 40,
    );
    d.kill();
    let before = dest_count(&tb, "dave@example.test");
    assert!(
        before < 406,
        "the crash came too late to test anything ({before})"
    );

    let mut d = Daemon::start(&config, &[]);
    wait_until(
        &d,
        Duration::from_secs(60),
        "Synced after the restart",
        || all_status(&config, "Synced"),
    );
    check_same(&rt, &tb, "dave", "dave@example.test");
    let row = status(&config).mailboxes.remove(0);
    assert_eq!(row.items_synced, 406, "{row:?}");
    assert_eq!(row.items_failed, 0, "{row:?}");
    assert_eq!(d.stop(Duration::from_secs(15)).code(), Some(0));
}

/// SIGTERM in the middle of the first pass. A second SIGTERM aborts the running pass at
/// once (exit 0, part of the mail copied); after a restart, a single SIGTERM lets the pass
/// finish or aborts it after a few seconds (exit 0 either way). The spool stays
/// consistent: `sync --once` then copies the rest and nothing twice.
#[test]
fn sigterm_mid_run_leaves_a_consistent_spool() {
    let users = [("erin", "erin-pw", "erin@example.test")];
    let Some(tb) = testbed(&users) else { return };
    seed_bulk(&tb, "erin", 500);
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        "[sync]\ninterval = 60\nappend_batch = 8\nfetch_batch_bytes = 200000\n",
    )
    .unwrap();
    let rt = rt();
    let mut d = Daemon::start(&config, &[]);
    wait_until(
        &d,
        Duration::from_secs(30),
        "the first messages at the destination",
        || dest_count(&tb, "erin@example.test") > 40,
    );
    d.signal("TERM");
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let st = d.stop(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", d.log());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the second SIGTERM aborts at once"
    );
    assert!(
        d.log().contains("aborting the running passes"),
        "{}",
        d.log()
    );
    let copied_before = dest_count(&tb, "erin@example.test");
    assert!(
        copied_before < 500,
        "SIGTERM came too late ({copied_before})"
    );
    let row = status(&config).mailboxes.remove(0);
    assert_eq!(
        row.status, "Queued",
        "an aborted first pass is queued again: {row:?}"
    );

    let mut d = Daemon::start(&config, &[]);
    wait_until(
        &d,
        Duration::from_secs(30),
        "more messages at the destination",
        || dest_count(&tb, "erin@example.test") > copied_before + 20,
    );
    let st = d.stop(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "{}", d.log());

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    check_same(&rt, &tb, "erin", "erin@example.test");
    let out = cutover(&config, &["sync", "--once"]);
    let row = stdout(&out);
    let copied: u64 = row
        .lines()
        .find(|l| l.starts_with("erin@"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|c| c.parse().ok())
        .unwrap();
    assert_eq!(copied, 0, "{row}");
}

/// The MX of one domain moves to Office 365: its mailbox goes CutoverPending (the other
/// domain's does not), stays so for the grace (floored by the old record's TTL), gets a
/// final pass that carries a message delivered just before, and is Completed. When the
/// second domain moves too, the daemon ends by itself.
#[test]
fn mx_flip_leads_to_cutover_pending_then_completed() {
    let users = [
        ("alice", "alice-pw", "alice@example.test"),
        ("zed", "zed-pw", "zed@other.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    for (login, _, _) in users {
        seed(&tb, login, 4);
    }
    let dns = dns::DnsServer::start();
    let old_ttl = 5;
    dns.set_mx("example.test", &[(10, "mx.legacy.example")], old_ttl);
    dns.set_mx("other.test", &[(10, "mx.legacy.example")], old_ttl);
    // The lookup the daemon makes, checked directly first.
    let rt = rt();
    let a = rt
        .block_on(cutover::cutover::mx::lookup(
            Some(dns.addr()),
            "example.test",
        ))
        .unwrap();
    assert_eq!(a.exchanges, [(10, "mx.legacy.example".to_string())]);
    assert_eq!(a.ttl, old_ttl);

    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        &format!(
            "[sync]\ninterval = \"60s\"\n\n[cutover]\ndomains = [\"example.test\", \"other.test\"]\n\
             resolver = \"{}\"\ncheck_interval = 1\ngrace = \"1s\"\n",
            dns.addr()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&config, &[]);
    wait_until(&d, Duration::from_secs(30), "every mailbox Synced", || {
        all_status(&config, "Synced")
    });
    let queries = dns.queries();
    assert!(queries >= 2, "the daemon asked our DNS server ({queries})");

    dns.set_mx(
        "example.test",
        &[
            (0, "example-test.mail.protection.outlook.com"),
            (10, "backup.mail.protection.outlook.com"),
        ],
        3600,
    );
    wait_until(&d, Duration::from_secs(10), "alice CutoverPending", || {
        statuses(&config)["alice@example.test"] == "CutoverPending"
    });
    // The message that only the final pass can carry (the interval is a minute).
    tb.source
        .deliver(
            "alice",
            "INBOX",
            &message("just-before-final"),
            &[],
            Some(1_700_000_000),
        )
        .unwrap();
    let row = status(&config)
        .mailboxes
        .into_iter()
        .find(|r| r.mailbox == "alice@example.test")
        .unwrap();
    let since = row.cutover_since_unix.unwrap();
    let after = row.complete_after_unix.unwrap();
    assert!(
        after - since >= old_ttl as i64,
        "grace floored by the old TTL: {row:?}"
    );
    assert_eq!(statuses(&config)["zed@other.test"], "Synced");

    wait_until(&d, Duration::from_secs(20), "alice Completed", || {
        statuses(&config)["alice@example.test"] == "Completed"
    });
    let row = status(&config)
        .mailboxes
        .into_iter()
        .find(|r| r.mailbox == "alice@example.test")
        .unwrap();
    assert!(row.completed_unix.unwrap() >= after, "{row:?}");
    assert!(
        row.seconds_in_status
            .get("CutoverPending")
            .copied()
            .unwrap_or(0)
            >= 3,
        "{row:?}"
    );
    check_same(&rt, &tb, "alice", "alice@example.test");
    assert_eq!(statuses(&config)["zed@other.test"], "Synced");

    // The second domain moves: zed completes too, and the daemon is done.
    dns.set_mx(
        "other.test",
        &[(10, "other-test.mail.protection.outlook.com")],
        60,
    );
    let st = d.wait(Duration::from_secs(30));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", d.log());
    assert!(all_status(&config, "Completed"));
    check_same(&rt, &tb, "zed", "zed@other.test");
}

/// Connections per source user, as the source server counts them (`doveadm who -1`: one
/// line per connection, the user name first).
fn connections_by_user(tb: &Testbed) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Ok(text) = tb.source.doveadm(&["who", "-1"]) {
        for line in text.lines().skip(1) {
            if let Some(user) = line.split_whitespace().next() {
                *out.entry(user.to_string()).or_default() += 1;
            }
        }
    }
    out
}

/// `[source] max_connections` and `max_connections_per_user`, counted at the server while
/// the first passes run: four logins, one of them behind two CSV rows (an archive mailbox
/// migrated from the same legacy account).
#[test]
fn connection_limits_hold_at_the_server() {
    let users = [
        ("u1", "u1-pw", "u1@example.test"),
        ("u2", "u2-pw", "u2@example.test"),
        ("u3", "u3-pw", "u3@example.test"),
        ("u4", "u4-pw", "u4@example.test"),
        // Only the destination account matters: the CSV row below logs in as u1.
        ("u1b", "u1-pw", "u1-archive@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    for (login, _, _) in &users[..4] {
        seed_bulk(&tb, login, 120);
    }
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        "[sync]\ninterval = 60\nappend_batch = 8\nfetch_batch_bytes = 100000\n",
    )
    .unwrap();
    let toml = std::fs::read_to_string(&config).unwrap();
    let toml = toml.replacen(
        "max_connections = 4",
        "max_connections = 2\nmax_connections_per_user = 1",
        1,
    );
    std::fs::write(&config, toml).unwrap();
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for (login, pw, email) in &users[..4] {
        csv.push_str(&format!("{email},{login},{pw}\n"));
    }
    csv.push_str("u1-archive@example.test,u1,u1-pw\n");
    std::fs::write(work_dir(&tb).join("mailboxes.csv"), csv).unwrap();

    let mut d = Daemon::start(&config, &[]);
    let (mut max_total, mut max_user, mut samples) = (0, 0, 0);
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && !all_status(&config, "Synced") {
        for _ in 0..10 {
            let c = connections_by_user(&tb);
            max_total = max_total.max(c.values().sum::<usize>());
            max_user = max_user.max(c.values().copied().max().unwrap_or(0));
            samples += 1;
        }
    }
    eprintln!("{samples} samples: at most {max_total} connections, {max_user} per user");
    assert!(
        all_status(&config, "Synced"),
        "not Synced in time\n{}",
        d.log()
    );
    assert!(
        samples > 10 && max_total >= 1,
        "the count works ({samples} samples)"
    );
    assert!(
        max_total <= 2,
        "{max_total} source connections at once (max_connections = 2)"
    );
    assert!(
        max_user <= 1,
        "{max_user} connections of one user (max_connections_per_user = 1)"
    );
    let rt = rt();
    check_same(&rt, &tb, "u1", "u1-archive@example.test");
    for (login, _, email) in &users[..4] {
        check_same(&rt, &tb, login, email);
    }
    assert_eq!(d.stop(Duration::from_secs(15)).code(), Some(0));
}

/// A mailbox whose source login is refused is Failed with the server's reason, retried
/// every interval, and does not hold up the others.
#[test]
fn failed_mailbox_shows_its_error_and_is_retried() {
    let users = [
        ("gina", "gina-pw", "gina@example.test"),
        ("hal", "hal-pw", "hal@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    seed(&tb, "gina", 3);
    seed(&tb, "hal", 3);
    let csv_users = [users[0], ("hal", "not-hal-pw", "hal@example.test")];
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &csv_users,
        TLS,
        "[sync]\ninterval = 1\n",
    )
    .unwrap();
    let mut d = Daemon::start(&config, &[]);
    let row = |mailbox: &str| {
        status(&config)
            .mailboxes
            .into_iter()
            .find(|r| r.mailbox == mailbox)
            .unwrap()
    };
    wait_until(
        &d,
        Duration::from_secs(30),
        "hal retried after failing",
        || {
            let hal = row("hal@example.test");
            hal.status == "Failed" && hal.passes >= 2
        },
    );
    let hal = row("hal@example.test");
    let error = hal.last_error.clone().unwrap_or_default();
    assert!(error.contains("refused the login"), "{hal:?}");
    assert!(hal.last_sync_unix.is_none(), "{hal:?}");
    assert_eq!(row("gina@example.test").status, "Synced");
    let out = cutover(&config, &["status"]);
    assert!(
        stdout(&out).contains("refused the login"),
        "{}",
        stdout(&out)
    );
    assert_eq!(d.stop(Duration::from_secs(15)).code(), Some(0));
}

/// `cutover pause` stops a mailbox's running pass at once and keeps it Stopped, across a
/// restart too, while the others go on; `resume` lets it finish with every message once;
/// `sync-now` runs a pass before the interval is up.
#[test]
fn pause_resume_and_sync_now_from_the_command_line() {
    let users = [
        ("gus", "gus-pw", "gus@example.test"),
        ("hal", "hal-pw", "hal@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    seed(&tb, "gus", 4);
    seed_bulk(&tb, "gus", 300);
    seed(&tb, "hal", 6);
    // The first line lands in [upstream]: 40 messages a second, so the copy takes a while.
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        "messages_per_second = 40\n[sync]\ninterval = 3600\nappend_batch = 4\n",
    )
    .unwrap();
    let rt = rt();
    let gus = "gus@example.test";
    let mut d = Daemon::start(&config, &[]);
    wait_until(&d, Duration::from_secs(30), "gus under way", || {
        dest_count(&tb, gus) > 20
    });
    let out = run_cli(&config, &["pause", "--mailbox", gus]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(&d, Duration::from_secs(10), "gus Stopped", || {
        statuses(&config).get(gus).map(String::as_str) == Some("Stopped")
    });
    // What the server had already received may still land; then nothing moves.
    std::thread::sleep(Duration::from_secs(2));
    let held = dest_count(&tb, gus);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dest_count(&tb, gus), held, "a paused mailbox does not move");
    assert!(held < 304, "paused before the end ({held})");
    wait_until(&d, Duration::from_secs(30), "hal Synced", || {
        statuses(&config)
            .get("hal@example.test")
            .map(String::as_str)
            == Some("Synced")
    });

    // A restart keeps the pause.
    assert_eq!(d.stop(Duration::from_secs(15)).code(), Some(0));
    let mut d = Daemon::start(&config, &[]);
    wait_until(
        &d,
        Duration::from_secs(10),
        "gus Stopped after the restart",
        || statuses(&config).get(gus).map(String::as_str) == Some("Stopped"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dest_count(&tb, gus), held, "still paused after the restart");

    // sync-now: a delta for hal long before the interval.
    tb.source
        .deliver(
            "hal",
            "INBOX",
            &cutover::demo::sample_message("hal", 99, "INBOX"),
            &[],
            Some(1_700_000_000),
        )
        .unwrap();
    let out = run_cli(&config, &["sync-now", "--mailbox", "hal@example.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(&d, Duration::from_secs(20), "hal's new message", || {
        in_sync(&rt, &tb, "hal", "hal@example.test")
    });

    let out = run_cli(&config, &["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(&d, Duration::from_secs(90), "gus Synced", || {
        all_status(&config, "Synced")
    });
    check_same(&rt, &tb, "gus", gus);
    check_same(&rt, &tb, "hal", "hal@example.test");
    assert_eq!(d.stop(Duration::from_secs(15)).code(), Some(0));

    // Without the daemon: `sync --once` leaves a paused mailbox alone and says so.
    let out = run_cli(&config, &["pause", "--mailbox", gus]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gus@example.test: paused"),
        "{}",
        stderr(&out)
    );
}

/// With a populated spool the daemon says READY before it reads every mailbox's skipped
/// and failed messages (the READY status still shows that scan at 0), lists them once the
/// scan is over, and leaves `status.json` alone while nothing changes; a change (a
/// `complete` request) writes it again, compactly.
#[test]
fn ready_before_the_spool_scan_and_status_json_only_on_change() {
    use std::os::unix::fs::MetadataExt;
    let users = [
        ("ines", "ines-pw", "ines@example.test"),
        ("jon", "jon-pw", "jon@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    for (login, _, _) in users {
        seed(&tb, login, 3);
    }
    // One message over max_message_bytes: skipped, a problem the scan must find.
    let mut big = message("too-big");
    big.extend(std::iter::repeat_n(b'y', 6000));
    big.extend_from_slice(b"\r\n");
    tb.source.deliver("ines", "INBOX", &big, &[], None).unwrap();
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        TLS,
        "[sync]\ninterval = \"1h\"\nmax_message_bytes = 5000\n",
    )
    .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert!(out.status.success(), "{}", stdout(&out));

    let sock_path = work_dir(&tb).join("notify-scan.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut d = Daemon::start(&config, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut notes = String::new();
    wait_until(&d, Duration::from_secs(20), "READY=1", || {
        notifications(&sock, &mut notes);
        notes.contains("READY=1")
    });
    let ready = notes
        .split("READY=1")
        .nth(1)
        .and_then(|r| r.lines().nth(1))
        .unwrap_or_default()
        .to_string();
    assert!(
        ready.contains("reading the spool: 0/2 mailboxes"),
        "READY comes before the scan: {notes:?}"
    );
    let ines = |s: &StatusSnapshot| {
        s.mailboxes
            .iter()
            .find(|r| r.mailbox == "ines@example.test")
            .cloned()
            .unwrap()
    };
    wait_until(&d, Duration::from_secs(20), "the scan to end", || {
        let s = status(&config);
        s.spool_scan.is_none() && !ines(&s).problems.is_empty()
    });
    let row = ines(&status(&config));
    assert_eq!(row.status, "Synced", "{row:?}");
    assert_eq!(row.problems[0].state, "skipped", "{row:?}");
    assert!(
        row.problems[0].reason.contains("max_message_bytes"),
        "{row:?}"
    );
    notifications(&sock, &mut notes);
    assert!(
        notes.contains("STATUS=2 mailboxes: 2 Synced\n"),
        "the status line drops the scan once done: {notes:?}"
    );

    // Nothing changes (the next pass is an hour away): the file stays as it is, over more
    // than the 10 s after which it used to be written again regardless.
    let path = work_dir(&tb).join("spool").join("status.json");
    let meta = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.mtime_nsec(), m.mtime())
    };
    // A write queued just before the scan's end lands within a tick.
    std::thread::sleep(Duration::from_secs(1));
    let before = meta(&path);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        meta(&path),
        before,
        "status.json rewritten with nothing changed"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1, "compact JSON: {text}");

    // A change is written within moments.
    let out = cutover(&config, &["complete", "--mailbox", "jon@example.test"]);
    assert!(out.status.success(), "{}", stdout(&out));
    wait_until(
        &d,
        Duration::from_secs(20),
        "status.json written again",
        || meta(&path) != before,
    );
    wait_until(&d, Duration::from_secs(30), "jon Completed", || {
        statuses(&config)["jon@example.test"] == "Completed"
    });
    assert_eq!(d.stop(Duration::from_secs(15)).code(), Some(0));
}
