//! The crash harness: `cutover sync --once` killed with SIGKILL over and over at random
//! moments, each run started again the moment the killed one is reaped, then one run to the
//! end and one that must copy nothing; then every message is checked, one by one, to be at
//! its destination exactly once, byte-identical, with its flags and INTERNALDATE.
//!
//! Two set-ups: (a) straight to the destination Dovecot, MULTIAPPEND on; (b) through the
//! Exchange-like proxy (`proxy::Options::exchange`), which also throttles each mailbox,
//! cuts connections in the middle of a literal, answers `BAD ... * BYE`, ends sessions when
//! their "token" expires and holds every command back a few ms (a killed client's pipelined
//! APPENDs reach the server after it is gone, as they do over a WAN).
//!
//! Kills must land everywhere: in the source read and the spool write, with APPENDs in
//! flight, and in the recovery of the run before. So the destination takes mail at a
//! bounded rate (a fixed rate in (a), the proxy's throttling in (b)) so that the copy spans
//! dozens of runs; new mail keeps arriving at the source while the runs go on; and the kill
//! delay is spread from 0.05 s (still starting up, recovering) to 1.5 s for three runs in
//! four, and from 1.5 s to 6 s for the fourth: a run that finds uncertain APPENDs first
//! waits for the destination to stand still (`upstream/recover.rs`, 3 s), so only the
//! longer runs get past recovery to new APPENDs and are killed with those in flight.
//!
//! `CUTOVER_CRASH_KILLS` (default 50) sets the kills per set-up, `CUTOVER_CRASH_SEED`
//! replays a seed (data, kill delays and faults; timing is the machine's),
//! `CUTOVER_CRASH_MESSAGES` the generated messages per user (default 400). Each set-up
//! prints `N kills: L lost, D duplicated, B not byte-identical, M other flags or date` and
//! fails on anything but zeros.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cutover::testbed::{Testbed, MASTER_PASSWORD, MASTER_USER};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const USERS: [(&str, &str, &str); 2] = [
    ("ann", "ann-pw", "ann@example.test"),
    ("ben", "ben-pw", "ben@example.test"),
];

/// Source folders (Courier style): nested, special-use, non-ASCII, with spaces.
const FOLDERS: [&str; 14] = [
    "INBOX",
    "INBOX.Sent",
    "INBOX.Drafts",
    "INBOX.Trash",
    "INBOX.Work",
    "INBOX.Work.Projects",
    "INBOX.Work.Projects.2024",
    "INBOX.Geschäftlich",
    "INBOX.Проекты",
    "INBOX.日本語 メモ",
    "INBOX.Archive",
    "INBOX.Archive.2019",
    "INBOX.Archive.2020",
    "INBOX.My Folder",
];

/// The folder of the shared corpus (first user).
const CORPUS_FOLDER: &str = "INBOX.Corpus";

/// Bounds of the kill loop of one set-up.
const LOOP_LIMIT: Duration = Duration::from_secs(150);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    let seed = env_u64(
        "CUTOVER_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("crash seed: {seed} (CUTOVER_CRASH_SEED={seed} to replay)");
    seed
}

/// A mix of `seed` and the words, for decisions that must not depend on call order.
fn mix(seed: u64, s: &str, n: u64) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15 ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h ^= h >> 31;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 29)
}

const WORDS: &[&str] = &[
    "migration",
    "mailbox",
    "quarterly",
    "report",
    "meeting",
    "budget",
    "Grüße",
    "naïve",
    "café",
    "проект",
    "会議",
    "schedule",
    "invoice",
    "attached",
    "please",
    "review",
    "the",
    "and",
    "of",
    "deadline",
    "customer",
    "server",
    "update",
    "Straße",
    "résumé",
];

/// A generated message of about `size` bytes: sometimes without Message-ID, sometimes with
/// a long (folded) Subject or References, always CRLF.
fn generate(rng: &mut StdRng, user: &str, n: usize, size: usize) -> Vec<u8> {
    let mut m = String::new();
    m.push_str(&format!(
        "From: Sender {n} <sender{n}@legacy.example>\r\nTo: {user}@example.test\r\n"
    ));
    let words = rng.gen_range(3..30);
    let mut subject = format!("Subject: #{n}");
    for _ in 0..words {
        subject.push(' ');
        subject.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    if subject.len() > 70 {
        // Fold it as a mail client would, near 70.
        let mut end = 70;
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        let cut = subject[..end].rfind(' ').unwrap_or(end);
        subject.insert_str(cut, "\r\n");
    }
    m.push_str(&subject);
    m.push_str("\r\n");
    m.push_str(&format!(
        "Date: Mon, {} Feb 2025 10:{:02}:{:02} +0100\r\n",
        1 + n % 28,
        n % 60,
        (n * 7) % 60
    ));
    if rng.gen_bool(0.85) {
        m.push_str(&format!(
            "Message-ID: <crash-{user}-{n}@legacy.example>\r\n"
        ));
    }
    if rng.gen_bool(0.2) {
        m.push_str("References:");
        for k in 0..rng.gen_range(2..8) {
            m.push_str(&format!(" <thread-{n}-{k}@legacy.example>\r\n"));
        }
        m.truncate(m.len() - 2);
        m.push_str("\r\n");
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
    let mut line = String::new();
    while m.len() < size {
        let w = WORDS[rng.gen_range(0..WORDS.len())];
        if line.len() + w.len() > 72 {
            m.push_str(&line);
            m.push_str("\r\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    m.push_str(&line);
    m.push_str("\r\n");
    m.into_bytes()
}

fn flags(rng: &mut StdRng) -> Vec<&'static str> {
    let mut f = Vec::new();
    for (flag, p) in [
        ("\\Seen", 0.6),
        ("\\Answered", 0.2),
        ("\\Flagged", 0.1),
        ("\\Draft", 0.03),
        ("$Label1", 0.1),
        ("Project-X", 0.05),
    ] {
        if rng.gen_bool(p) {
            f.push(flag);
        }
    }
    f
}

/// Size of the next message: mostly small, some up to 60 KB.
fn size(rng: &mut StdRng) -> usize {
    if rng.gen_bool(0.7) {
        rng.gen_range(2_000..12_000)
    } else {
        rng.gen_range(12_000..60_000)
    }
}

/// Seeds both users; returns how many messages were delivered.
fn seed_source(tb: &Testbed, rng: &mut StdRng, per_user: usize) -> usize {
    let mut total = 0;
    for (u, (login, _, _)) in USERS.iter().enumerate() {
        for f in FOLDERS.iter().skip(1) {
            tb.source.add_folder(login, f).unwrap();
        }
        let mut earlier: Vec<(usize, Vec<u8>)> = Vec::new();
        for n in 0..per_user {
            let reuse = !earlier.is_empty() && rng.gen_bool(0.06);
            let (folder, body) = if reuse {
                // The same bytes again: mostly in another folder, sometimes in the same.
                let (f, b) = earlier[rng.gen_range(0..earlier.len())].clone();
                let folder = if rng.gen_bool(0.8) {
                    (f + 1 + rng.gen_range(0..FOLDERS.len() - 1)) % FOLDERS.len()
                } else {
                    f
                };
                (folder, b)
            } else {
                let folder = if rng.gen_bool(0.3) {
                    0
                } else {
                    rng.gen_range(0..FOLDERS.len())
                };
                let s = size(rng);
                (folder, generate(rng, login, n, s))
            };
            let date = 1_420_000_000 + rng.gen_range(0..300_000_000i64);
            tb.source
                .deliver(login, FOLDERS[folder], &body, &flags(rng), Some(date))
                .unwrap();
            earlier.push((folder, body));
            total += 1;
        }
        if u == 0 {
            if let Some(corpus) = corpus() {
                tb.source.add_folder(login, CORPUS_FOLDER).unwrap();
                for (i, (_, body)) in corpus.iter().enumerate() {
                    tb.source
                        .deliver(
                            login,
                            CORPUS_FOLDER,
                            body,
                            &flags(rng),
                            Some(1_300_000_000 + i as i64 * 3600),
                        )
                        .unwrap();
                }
                total += corpus.len();
            }
        }
    }
    total
}

/// `cutover.toml` and the CSV: source over implicit TLS with each user's password,
/// destination `upstream` (a TOML fragment), then `[sync]`.
fn config(tb: &Testbed, upstream: &str) -> PathBuf {
    let dir = work_dir(tb);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for (login, pw, email) in USERS {
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
admin_user = "{MASTER_USER}"
admin_password = "{MASTER_PASSWORD}"
admin_login = "authzid"
auth = "plain"
max_connections = 4

[sync]
# Many APPENDs in flight at any moment; the source read in small batches.
append_batch = 16
fetch_batch_bytes = 262144
"#,
        src_port = tb.source.tls_port(),
        ca = tb.ca.ca_pem_path().display(),
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Delivers a few messages now and then while the runs go on (new mail keeps arriving
/// during a migration), until `stop` or `max` per user.
fn feeder(tb: &Testbed, seed: u64, stop: &AtomicBool, max: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
    let mut n = 0;
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && n < max && started.elapsed() < LOOP_LIMIT {
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..600)));
        for (login, _, _) in USERS {
            for _ in 0..rng.gen_range(1..3) {
                let folder = FOLDERS[rng.gen_range(0..FOLDERS.len())];
                let s = size(&mut rng);
                let body = generate(&mut rng, &format!("{login}-late"), n, s);
                let date = 1_700_000_000 + n as i64 * 60;
                tb.source
                    .deliver(login, folder, &body, &flags(&mut rng), Some(date))
                    .unwrap();
            }
        }
        n += 1;
    }
    n
}

/// What the kill loop did.
#[derive(Debug, Default)]
struct Runs {
    kills: u64,
    /// Runs that ended by themselves before their kill time.
    finished: u64,
    /// The first of them (1-based): about where the copy had caught up.
    first_finished: Option<u64>,
}

/// Starts `sync --once` again and again, each killed with SIGKILL after a random delay
/// (0.05-1.5 s, or 1.5-6 s one time in four) and the next started at once; stops after `kills` kills, or 3x as many
/// runs, or [`LOOP_LIMIT`]. Every run's output goes to `log`.
fn kill_loop(cfg: &Path, env: &[(&str, &str)], rng: &mut StdRng, kills: u64, log: &Path) -> Runs {
    let mut runs = Runs::default();
    let started = Instant::now();
    let mut n = 0;
    while runs.kills < kills && n < kills * 3 && started.elapsed() < LOOP_LIMIT {
        n += 1;
        let delay = Duration::from_millis(if rng.gen_bool(0.25) {
            rng.gen_range(1500..=6000)
        } else {
            rng.gen_range(50..=1500)
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        writeln!(f, "\n===== run {n}, kill after {delay:?}").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--config")
            .arg(cfg)
            .args(["sync", "--once"])
            .env("CUTOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cutover starts");
        let t0 = Instant::now();
        let mut exited = None;
        while t0.elapsed() < delay {
            if let Some(st) = child.try_wait().expect("wait") {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match exited {
            Some(_) => {
                runs.finished += 1;
                runs.first_finished.get_or_insert(n);
            }
            None => {
                // SIGKILL, by PID: no chance to flush or clean up.
                let _ = child.kill();
                let _ = child.wait();
                runs.kills += 1;
            }
        }
    }
    runs
}

/// Per folder, source vs destination, message by message.
#[derive(Debug, Default)]
struct Tally {
    messages: usize,
    lost: usize,
    duplicated: usize,
    altered: usize,
    meta: usize,
    examples: Vec<String>,
}

fn tally(src: &Snapshot, dst: &Snapshot) -> Tally {
    let mut t = Tally::default();
    let mut seen_dest = std::collections::BTreeSet::new();
    for (folder, msgs) in src {
        let d = dest_name(folder);
        seen_dest.insert(d.clone());
        let empty = Vec::new();
        let got = dst.get(&d).unwrap_or(&empty);
        t.messages += msgs.len();
        let group = |v: &Vec<Seen>| {
            let mut g: BTreeMap<String, Vec<(Vec<String>, String)>> = BTreeMap::new();
            for m in v {
                g.entry(m.sha256.clone())
                    .or_default()
                    .push((m.flags.clone(), m.internal_date.clone()));
            }
            g
        };
        let (gs, gd) = (group(msgs), group(got));
        for (hash, s) in &gs {
            let dv = gd.get(hash).cloned().unwrap_or_default();
            if dv.len() < s.len() {
                t.lost += s.len() - dv.len();
                if t.examples.len() < 8 {
                    t.examples
                        .push(format!("lost in {folder} -> {d}: {hash} {:?}", s[0]));
                }
            }
            if dv.len() > s.len() {
                t.duplicated += dv.len() - s.len();
                if t.examples.len() < 8 {
                    t.examples.push(format!(
                        "{} copies in {d} of one message of {folder}: {hash}",
                        dv.len()
                    ));
                }
            }
            let mut left = dv.clone();
            let mut exact = 0;
            for m in s {
                if let Some(p) = left.iter().position(|x| x == m) {
                    left.remove(p);
                    exact += 1;
                }
            }
            let matched = s.len().min(dv.len());
            if exact < matched {
                t.meta += matched - exact;
                if t.examples.len() < 8 {
                    t.examples.push(format!(
                        "{folder} -> {d}: {hash}: source {s:?}, destination {dv:?}"
                    ));
                }
            }
        }
        for (hash, dv) in &gd {
            if !gs.contains_key(hash) {
                t.altered += dv.len();
                if t.examples.len() < 8 {
                    t.examples
                        .push(format!("{d}: {hash} is no message of {folder}"));
                }
            }
        }
    }
    for (d, msgs) in dst {
        if !seen_dest.contains(d) && !msgs.is_empty() {
            t.altered += msgs.len();
            t.examples.push(format!(
                "{d}: {} messages no source folder maps to",
                msgs.len()
            ));
        }
    }
    t
}

/// Runs one set-up on a seeded testbed: the kill loop (its runs with `loop_env` set), a
/// run to the end, a run that must copy nothing, then the check. Panics (after printing
/// the figures) unless all is well.
fn crash_setup(
    name: &str,
    tb: &Testbed,
    cfg: &Path,
    loop_env: &[(&str, &str)],
    seed: u64,
    seeded: usize,
    after: impl FnOnce() -> String,
) {
    let kills = env_u64("CUTOVER_CRASH_KILLS", 50);
    let log = work_dir(tb).join("runs.log");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b1115);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (runs, fed) = std::thread::scope(|s| {
        let feed = s.spawn(|| feeder(tb, seed, &stop, 60));
        let runs = kill_loop(cfg, loop_env, &mut rng, kills, &log);
        stop.store(true, Ordering::SeqCst);
        (runs, feed.join().unwrap())
    });
    let loop_time = t0.elapsed();
    let mut problems = Vec::new();
    let full = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--config")
            .arg(cfg)
            .args(args)
            .env("CUTOVER_LOG", "info");
        run_bounded(cmd, Duration::from_secs(240))
    };
    let last = full(&["sync", "--once"]);
    if last.status.code() != Some(0) {
        problems.push(format!(
            "the run to the end exited {:?}:\n{}\n{}",
            last.status.code(),
            stdout(&last),
            tail(&stderr(&last), 60)
        ));
    }
    let again = full(&["sync", "--once"]);
    if again.status.code() != Some(0) {
        problems.push(format!("the rerun exited {:?}", again.status.code()));
    }
    for (_, _, email) in USERS {
        let row = stdout(&again)
            .lines()
            .find(|l| l.starts_with(email))
            .map(str::to_string);
        let copied = row
            .as_deref()
            .and_then(|r| r.split_whitespace().nth(2))
            .and_then(|c| c.parse::<u64>().ok());
        if copied != Some(0) {
            problems.push(format!("the rerun copied something for {email}: {row:?}"));
        }
    }
    let rt = rt();
    let mut total = Tally::default();
    for (login, _, email) in USERS {
        let s = rt.block_on(snapshot(tb, &tb.source, login));
        let d = rt.block_on(snapshot(tb, &tb.dest, email));
        let t = tally(&s, &d);
        total.messages += t.messages;
        total.lost += t.lost;
        total.duplicated += t.duplicated;
        total.altered += t.altered;
        total.meta += t.meta;
        total
            .examples
            .extend(t.examples.into_iter().map(|e| format!("{email}: {e}")));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let found = text.matches("interrupted APPEND found").count();
    let throttled = text.matches("throttled").count();
    eprintln!(
        "\n[{name}] seed {seed}: {} messages ({seeded} seeded, {fed} rounds of late mail), \
         {} runs in {loop_time:.1?} ({} ended by themselves, the first was run {:?}), {} \
         interrupted APPENDs found again, {throttled} throttle lines, extra: {}",
        total.messages,
        runs.kills + runs.finished,
        runs.finished,
        runs.first_finished,
        found,
        after()
    );
    let figures = format!(
        "{} kills: {} lost, {} duplicated, {} not byte-identical, {} other flags or date",
        runs.kills, total.lost, total.duplicated, total.altered, total.meta
    );
    eprintln!("[{name}] {figures}");
    for e in &total.examples {
        eprintln!("[{name}]   {e}");
    }
    if total.lost + total.duplicated + total.altered + total.meta > 0 {
        problems.push(figures);
    }
    if runs.kills < kills {
        problems.push(format!(
            "only {} of {kills} runs were killed before they ended: the copy was too short to \
             be interrupted that often",
            runs.kills
        ));
    }
    if !problems.is_empty() {
        eprintln!(
            "[{name}] the runs' output is in {} (kept with CUTOVER_TESTBED_KEEP=1)",
            log.display()
        );
        panic!("[{name}] {}", problems.join("\n"));
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to its end, bounded in time (killed by PID past the limit); output drained.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cutover starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = drain(Box::new(child.stdout.take().unwrap()));
    let err_t = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// (a) Straight to the destination Dovecot, MULTIAPPEND on (the default), the killed runs
/// at a fixed rate so that the copy spans the kills.
#[test]
fn crash_loop_direct_multiappend() {
    let Some(tb) = testbed(&USERS) else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let per_user = env_u64("CUTOVER_CRASH_MESSAGES", 400) as usize;
    let seeded = seed_source(&tb, &mut rng, per_user);
    let cfg = config(
        &tb,
        &format!(
            "host = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"",
            tb.dest.tls_port()
        ),
    );
    // The killed runs at a bounded rate (so the copy spans them), the last one at full speed.
    crash_setup(
        "direct, MULTIAPPEND",
        &tb,
        &cfg,
        &[("CUTOVER_UPSTREAM__MESSAGES_PER_SECOND", "15.0")],
        seed,
        seeded,
        String::new,
    );
}

/// (b) Through the Exchange-like proxy: no MULTIAPPEND, bodies rendered on FETCH, each
/// mailbox throttled past 20 APPEND/s, now and then a connection cut mid-literal or a
/// `BAD ... * BYE`, sessions ended after 10 s, every command held back 3 ms.
#[test]
fn crash_loop_exchange_proxy() {
    let Some(tb) = testbed(&USERS) else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let per_user = env_u64("CUTOVER_CRASH_MESSAGES", 400) as usize;
    let seeded = seed_source(&tb, &mut rng, per_user);
    let rt = rt();
    let schedule: proxy::Schedule = Arc::new(move |user: &str, n| match mix(seed, user, n) % 89 {
        0 => proxy::Action::DropMidLiteral,
        1 => proxy::Action::ThrottleBye { ms: 400 },
        _ => proxy::Action::Forward,
    });
    let px = rt.block_on(proxy::Proxy::start_with(
        tb.dest.plain_port(),
        proxy::Options::new(schedule)
            .exchange()
            .throttle(proxy::Bucket {
                per_second: 20.0,
                burst: 40.0,
                backoff_ms: 250,
                max_backoff_ms: 5_000,
            })
            .token_lifetime(Duration::from_secs(10))
            .hold(Duration::from_millis(3)),
    ));
    let cfg = config(
        &tb,
        &format!("host = \"127.0.0.1\"\nport = {}\ntls = \"none\"", px.port()),
    );
    let px = &px;
    crash_setup("Exchange-like proxy", &tb, &cfg, &[], seed, seeded, || {
        format!(
            "{} connections, {} + {} throttles, {} sessions expired, {} APPENDs saved after \
             their client was gone",
            px.connections(),
            px.throttles("ann@example.test"),
            px.throttles("ben@example.test"),
            px.expired_sessions(),
            px.late_appends()
        )
    });
}
