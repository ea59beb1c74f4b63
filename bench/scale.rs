//! Benchmark: the daemon with thousands of mailboxes (see bench/README.md, "Scale").
//!
//! Fills a spool with `SCALE_MAILBOXES` mailboxes (default 5,000) that a daemon synced a
//! moment ago, each with `SCALE_RECORDS` message records (default 200; every tenth
//! mailbox has `SCALE_SKIPPED` of them skipped, default 30), then starts the release
//! binary's `cutover run` on it, as systemd would (`$NOTIFY_SOCKET`), and measures:
//!
//! - the time from the start of the process to `READY=1`, and to the end of the scan of
//!   every mailbox's skipped and failed messages that follows it;
//! - how long the runtime thread spent per status-file write (the daemon logs it at
//!   debug level: collecting the changed rows and handing them to the writer thread),
//!   for the first file (every row) and for a change of one mailbox;
//! - how often `status.json` is rewritten over `SCALE_IDLE_SECS` (default 15) while
//!   nothing changes (should be never), and its size;
//! - the daemon's RSS once the scan is done.
//!
//! For comparison it then does, in this process on the same spool, what the daemon did
//! before on its runtime thread: the problem scan of every mailbox (up to 1,000 each)
//! before READY, and a pretty-printed snapshot of every row written every 10 s.
//!
//! No IMAP server is involved: the mailboxes were synced "just now" and the interval is
//! an hour, so no pass is due during the measurement; the servers in the config are
//! closed ports on 127.0.0.1.

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cutover::daemon::report;
use cutover::spool::{FolderState, MailboxState, MessageRecord, MessageState, Spool};

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn email(i: usize) -> String {
    format!("user{i:05}@scale.example")
}

/// The spool a daemon would leave: every mailbox Synced a moment ago, with records.
fn fill_spool(path: &Path, mailboxes: usize, records: usize, skipped: usize) -> Result<()> {
    let spool = Spool::open(path)?;
    let now = chrono::Utc::now().timestamp();
    for m in 0..mailboxes {
        let id = email(m);
        let folder = FolderState {
            name: "INBOX".into(),
            uidvalidity: 1,
            uidnext: records as u32 + 1,
            delimiter: Some('.'),
            ns_prefix: "INBOX.".into(),
            dest_name: Some("Inbox".into()),
            ..Default::default()
        };
        spool.put_folder(&id, &folder)?;
        let recs: Vec<MessageRecord> = (0..records)
            .map(|i| {
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&(m as u64).to_le_bytes());
                hash[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                let skip = m % 10 == 0 && i < skipped;
                MessageRecord {
                    uid: i as u32 + 1,
                    hash,
                    size: 20_000,
                    internal_date: "01-Jan-2024 10:00:00 +0000".into(),
                    internal_ts: 1_704_103_200 + i as i64,
                    flags: vec!["\\Seen".into()],
                    state: if skip {
                        MessageState::Skipped {
                            reason: format!(
                                "36700160 bytes, over max_message_bytes (36700160); date \
                                 01-Jan-2024 10:00:00 +0000; subject \"scan {i} of the \
                                 quarterly report\""
                            ),
                        }
                    } else {
                        MessageState::Spooled
                    },
                }
            })
            .collect();
        spool.record_new(&id, "INBOX", 1, &recs)?;
        let skipped_here = if m % 10 == 0 { skipped } else { 0 } as u64;
        spool.put_mailbox(&MailboxState {
            id: id.clone(),
            status: "Synced".into(),
            last_sync_unix: Some(now),
            items_synced: records as u64 - skipped_here,
            items_skipped: skipped_here,
            bytes: 20_000 * records as u64,
            status_since_unix: now,
            passes: 1,
            ..Default::default()
        })?;
    }
    spool.flush()?;
    Ok(())
}

fn write_config(dir: &Path, mailboxes: usize) -> Result<PathBuf> {
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for m in 0..mailboxes {
        csv.push_str(&format!("{},u{m},pw{m}\n", email(m)));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv)?;
    let toml = r#"mailboxes = "mailboxes.csv"

[spool]
path = "spool"

[source]
host = "127.0.0.1"
port = 9
tls = "none"
auth = "login"
max_connections = 8

[upstream]
host = "127.0.0.1"
port = 9
tls = "none"
auth = "plain"
admin_user = "admin"
admin_password = "admin-pw"
admin_login = "authzid"
max_connections = 8

[sync]
interval = "1h"
"#;
    let path = dir.join("cutover.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (rows, wall micros, CPU micros) of each "status snapshot handed to the writer" line in
/// the log.
fn snapshot_writes(log: &Path) -> Vec<(u64, u64, u64)> {
    let Ok(f) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let field = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .map(|l| strip_ansi(&l))
        .filter(|l| l.contains("status snapshot handed to the writer"))
        .filter_map(|l| {
            Some((
                field(&l, "rows=")?,
                field(&l, " micros=")?,
                field(&l, "cpu_micros=")?,
            ))
        })
        .collect()
}

/// The log line without the terminal colours tracing puts around field names.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn file_id(p: &Path) -> Option<(u64, i64, i64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec()))
}

fn main() -> Result<()> {
    let mailboxes = env_num("SCALE_MAILBOXES", 5000)? as usize;
    let records = env_num("SCALE_RECORDS", 200)? as usize;
    let skipped = env_num("SCALE_SKIPPED", 30)? as usize;
    let idle = Duration::from_secs(env_num("SCALE_IDLE_SECS", 15)?);
    if mailboxes == 0 || records == 0 || skipped > records {
        bail!("SCALE_MAILBOXES and SCALE_RECORDS must be at least 1, SCALE_SKIPPED at most SCALE_RECORDS");
    }
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("cutover"))
        .ok_or_else(|| anyhow!("cannot locate the cutover binary"))?;
    if !bin.is_file() {
        bail!("{} not found: cargo build --release --bins", bin.display());
    }
    let parent = std::env::var("BENCH_STATE_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("cutover-scale-")
        .tempdir_in(&parent)?;
    let spool_dir = dir.path().join("spool");
    println!(
        "scale: {mailboxes} mailboxes x {records} records (every tenth with {skipped} skipped), \
         spool in {}",
        spool_dir.display()
    );
    let t = Instant::now();
    fill_spool(&spool_dir, mailboxes, records, skipped)?;
    println!("  spool filled in {:.1} s", t.elapsed().as_secs_f64());
    let config = write_config(dir.path(), mailboxes)?;
    let _ = Command::new("sync").status();

    // The daemon, as systemd starts it.
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let log = dir.path().join("daemon.log");
    let started = Instant::now();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("CUTOVER_LOG", "info,cutover::daemon=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let mut daemon = Daemon(child);
    let mut ready = None;
    let mut scanned = None;
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(300);
    while scanned.is_none() {
        if Instant::now() > deadline {
            bail!(
                "no READY and scan end within 300 s; log in {}",
                log.display()
            );
        }
        if let Some(st) = daemon.0.try_wait()? {
            bail!(
                "the daemon exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") && ready.is_none() {
            ready = Some((started.elapsed(), msg.clone()));
        }
        if ready.is_some() && msg.contains("STATUS=") && !msg.contains("reading the spool") {
            scanned = Some(started.elapsed());
        }
    }
    let (ready, ready_msg) = ready.expect("set before the scan's end");
    let scanned = scanned.expect("loop ends when set");
    println!(
        "  READY after {:.3} s ({}), scan of every mailbox's problems done after {:.3} s",
        ready.as_secs_f64(),
        ready_msg.replace('\n', " "),
        scanned.as_secs_f64()
    );

    // Idle: the last write after the scan lands within a tick, then nothing changes.
    let status = spool_dir.join("status.json");
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kib(pid).unwrap_or(0);
    let size = std::fs::metadata(&status).map(|m| m.len()).unwrap_or(0);
    let mut last = file_id(&status);
    let mut rewrites = 0;
    let idle_end = Instant::now() + idle;
    while Instant::now() < idle_end {
        std::thread::sleep(Duration::from_millis(100));
        let now = file_id(&status);
        if now != last {
            rewrites += 1;
            last = now;
        }
    }
    println!(
        "  idle {} s: status.json ({:.2} MB, compact) rewritten {rewrites} time(s); daemon RSS {:.1} MiB",
        idle.as_secs(),
        size as f64 / 1e6,
        rss as f64 / 1024.0
    );

    // One change: `complete` for one mailbox (its final pass fails: no server).
    let before = snapshot_writes(&log).len();
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["complete", "--mailbox", &email(7)])
        .env("CUTOVER_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!("complete failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let change_deadline = Instant::now() + Duration::from_secs(20);
    while file_id(&status) == last && Instant::now() < change_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if file_id(&status) == last {
        bail!("status.json not rewritten after a change");
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait()?.is_none() && Instant::now() < stop_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if daemon.0.try_wait()?.is_none() {
        bail!(
            "the daemon did not stop within 30 s of SIGTERM: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    println!(
        "  stopped {:.2} s after SIGTERM",
        (Instant::now() + Duration::from_secs(30) - stop_deadline).as_secs_f64()
    );
    drop(daemon);
    let writes = snapshot_writes(&log);
    let full: Vec<(u64, u64, u64)> = writes
        .iter()
        .filter(|w| w.0 as usize >= mailboxes)
        .copied()
        .collect();
    let small: Vec<(u64, u64, u64)> = writes[before.min(writes.len())..]
        .iter()
        .filter(|w| w.0 <= 2)
        .copied()
        .collect();
    let max = |v: &[(u64, u64, u64)], cpu: bool| {
        v.iter()
            .map(|w| if cpu { w.2 } else { w.1 })
            .max()
            .unwrap_or(0)
    };
    println!(
        "  runtime-thread time per status write ({} logged): after a change of one mailbox, \
         over {} write(s): max {} us CPU ({} us wall); every row, over {} write(s): max {} us \
         CPU ({} us wall)",
        writes.len(),
        small.len(),
        max(&small, true),
        max(&small, false),
        full.len(),
        max(&full, true),
        max(&full, false),
    );

    // What the daemon did before, on its runtime thread: a scan of every mailbox's
    // problems before READY, and every 10 s a pretty snapshot with up to 1,000 each.
    let spool = Spool::open(&spool_dir)?;
    let t = Instant::now();
    let problems: Vec<(Vec<report::Problem>, u64)> = (0..mailboxes)
        .map(|m| report::problems(&spool, &email(m), report::MAX_PROBLEMS))
        .collect();
    let old_scan = t.elapsed();
    let now = chrono::Utc::now().timestamp();
    let states = spool.mailboxes()?;
    let t = Instant::now();
    let snap = report::Snapshot {
        written_unix: now,
        pid: 0,
        spool_scan: None,
        domains: Vec::new(),
        mailboxes: states
            .iter()
            .zip(&problems)
            .map(|(st, p)| std::sync::Arc::new(report::MailboxRow::new(st, p.clone(), now)))
            .collect(),
    };
    let old_path = dir.path().join("old-status.json");
    report::write_snapshot(&old_path, &snap)?;
    let old_write = t.elapsed();
    let old_size = std::fs::metadata(&old_path)?.len();
    println!(
        "  before: the problem scan (before READY) took {:.3} s; one pretty snapshot ({:.2} MB) \
         took {:.1} ms, every 10 s",
        old_scan.as_secs_f64(),
        old_size as f64 / 1e6,
        old_write.as_secs_f64() * 1000.0
    );
    println!(
        "scale: READY {:.3} s (scan done {:.3} s); status write on the runtime thread: {} us \
         CPU (one mailbox changed), {} us CPU (all {mailboxes}); idle rewrites: {rewrites} in \
         {} s; RSS {:.1} MiB",
        ready.as_secs_f64(),
        scanned.as_secs_f64(),
        max(&small, true),
        max(&full, true),
        idle.as_secs(),
        rss as f64 / 1024.0
    );
    Ok(())
}
