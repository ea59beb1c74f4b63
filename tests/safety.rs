//! What must not leak: the mail in the spool and the files beside it (readable by their
//! owner alone, whatever the umask), the passwords of the CSV (never printed, even from
//! a row that is all wrong); and what must not be copied twice: a mailbox an older
//! version spooled under other capitals.
//!
//! The cutover binary runs for real, under `umask 022` (what a shell usually has), against
//! Dovecot servers on 127.0.0.1.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::accounts::Account;
use cutover::secret::Secret;

/// Starts the binary with `args` after `--config config`, under `umask 022`.
fn spawn_022(config: &Path, args: &[&str]) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CUTOVER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cutover starts")
}

/// Waits for `child` at most `limit`, killing it (by its own handle) past that.
fn finish(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
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
    let out = child.wait_with_output().expect("output");
    eprintln!(
        "--- exit {:?}\n{}\n{}",
        out.status.code(),
        common::stdout(&out),
        common::stderr(&out)
    );
    out
}

fn run_022(config: &Path, args: &[&str]) -> Output {
    finish(spawn_022(config, args), Duration::from_secs(300))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file and directory at or below `root`, symbolic links excluded.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.push(p);
    }
    out
}

/// Nothing at or below `root` may be readable, writable or searchable by anyone but its
/// owner; the spool directory itself is exactly 0700.
fn assert_private(root: &Path, what: &str) {
    assert_eq!(mode(root), 0o700, "{what}: {}", root.display());
    let entries = tree(root);
    assert!(entries.len() > 3, "{what}: the spool holds {entries:?}");
    let open: Vec<String> = entries
        .iter()
        .filter(|p| mode(p) & 0o077 != 0)
        .map(|p| format!("{} {:o}", p.display(), mode(p)))
        .collect();
    assert!(open.is_empty(), "{what}: readable by others: {open:#?}");
}

const USERS: [(&str, &str, &str); 1] = [("alice", "alice-pw", "alice@example.com")];

#[test]
fn the_spool_and_the_files_beside_it_are_private_under_umask_022() {
    let Some(tb) = common::testbed(&USERS) else {
        return;
    };
    common::fill(&tb, "alice", "INBOX", 5, |_| vec![]);
    let config = common::demo_config(&tb, &USERS, "");
    let work = common::work_dir(&tb);
    let spool = work.join("spool");

    let out = run_022(&config, &["sync", "--once"]);
    assert!(out.status.success());
    assert_private(&spool, "after sync --once");
    assert!(
        tree(&spool.join("bodies")).len() > 1,
        "no body segment written"
    );

    let report = work.join("report.csv");
    let out = run_022(
        &config,
        &["report", "--csv", "-o", report.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert_eq!(mode(&report), 0o600, "report -o");

    // `complete` while another process holds the spool: a request file is left.
    {
        let held = cutover::spool::Spool::open(&spool).expect("spool opens");
        let out = run_022(&config, &["complete", "--mailbox", "alice@example.com"]);
        assert!(out.status.success());
        assert!(common::stdout(&out).contains("asked it to complete"));
        drop(held);
    }
    let requests = spool.join("requests");
    assert_eq!(mode(&requests), 0o700, "requests/");
    let files = tree(&requests);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files[1..] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }

    // A spool as an older version left it, readable by all: opening it tightens it.
    for p in tree(&spool) {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let out = run_022(&config, &["status"]);
    assert!(out.status.success());
    assert_private(&spool, "after status on an older spool");

    // The daemon's status file. It takes the request above, completes the mailbox and
    // then stops by itself; stopped by SIGTERM if it has not within the limit.
    let child = spawn_022(&config, &["run"]);
    let pid = child.id().to_string();
    let status = spool.join("status.json");
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(meta) = std::fs::metadata(&status) {
            seen = Some(meta.permissions().mode() & 0o7777);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let out = finish(child, Duration::from_secs(60));
    assert!(out.status.success());
    assert_eq!(seen, Some(0o600), "status.json while the daemon runs");
    assert_eq!(mode(&status), 0o600, "status.json after the daemon stopped");
    assert_private(&spool, "after the daemon");
}

#[test]
fn a_mailbox_spooled_with_other_capitals_is_not_copied_again() {
    let Some(tb) = common::testbed(&USERS) else {
        return;
    };
    common::fill(&tb, "alice", "INBOX", 6, |_| vec![]);
    let config = common::demo_config(&tb, &USERS, "");
    let rt = common::rt();

    // An older version: the address as the CSV spelled it was the spool's id.
    {
        let cfg = cutover::config::Config::load(&config).unwrap();
        let engine = Arc::new(cutover::engine::Engine::new(cfg).unwrap());
        let old = Account {
            line: 2,
            email: "Alice@Example.com".into(),
            username: "alice".into(),
            password: Some(Secret::new("alice-pw")),
        };
        let rows = rt.block_on(engine.sync_once(&[old]));
        assert!(rows[0].ok(), "{rows:?}");
        assert_eq!(rows[0].copied, 6);
    }
    let count = |rt: &tokio::runtime::Runtime| -> usize {
        let snap = rt.block_on(common::snapshot(&tb, &tb.dest, "alice@example.com"));
        snap.values().map(Vec::len).sum()
    };
    assert_eq!(count(&rt), 6);

    // The CSV exported again, with yet other capitals.
    std::fs::write(
        common::work_dir(&tb).join("mailboxes.csv"),
        "EmailAddress,UserName,Password\nALICE@EXAMPLE.COM,alice,alice-pw\n",
    )
    .unwrap();
    let out = common::cutover(&config, &["sync", "--once"]);
    assert!(out.status.success());
    assert_eq!(common::copied(&out, "Alice@Example.com"), 0);
    assert!(
        common::stderr(&out).contains("in the spool as Alice@Example.com"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(count(&rt), 6, "messages copied a second time");

    // And `status` shows the one mailbox, not a second one queued.
    let out = common::cutover(&config, &["status", "--json"]);
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["mailboxes"].as_array().unwrap().len(), 1, "{snap}");
}

#[test]
fn a_row_in_one_quoted_cell_is_named_by_line_and_its_password_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mailboxes.csv"),
        "EmailAddress,UserName,Password\n\"bob@example.com,bob,Tr0ub4dor&3\"\n",
    )
    .unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        "mailboxes = \"mailboxes.csv\"\n[spool]\npath = \"spool\"\n\
         [source]\nhost = \"127.0.0.1\"\nport = 9\n[upstream]\nhost = \"127.0.0.1\"\nport = 9\n",
    )
    .unwrap();
    for args in [&["check"][..], &["sync", "--once"]] {
        let out = common::cutover_log(&config, args, "debug");
        let all = format!("{}{}", common::stdout(&out), common::stderr(&out));
        assert!(
            !all.contains("Tr0ub4dor"),
            "{args:?}: the password was printed"
        );
        assert!(!out.status.success(), "{args:?}");
        assert!(
            all.contains("mailboxes CSV line 2: EmailAddress is not an address"),
            "{args:?}: the line and the problem are not named"
        );
    }
}
