//! Throughput benchmark: `cutover sync --once` against mbsync (isync) on the same mail.
//!
//! Run it with `bench/run.sh` (see `bench/README.md`). It starts two
//! [`cutover::testbed::Testbed`]s, one per tool, so that neither tool reads a source whose
//! indexes and caches the other one warmed up, or writes into a destination the other
//! one filled. Both sources are seeded with the same deterministic mail (a seeded RNG,
//! written straight into the Maildirs), then:
//!
//! * cutover copies source A to destination A with `cutover --config ... sync --once`
//!   (one process for all users), run twice: the initial copy and a no-change rerun;
//! * mbsync copies source B to destination B, one process per user, all users in
//!   parallel, each with its own IMAP-to-IMAP channel and `PipelineDepth 50`; also twice.
//!
//! Every run is wrapped in `/usr/bin/time -v` for the peak RSS and CPU time; the wall
//! time is measured here, from the first spawn to the last exit. After every run the
//! message counts at the destination are checked against what was seeded.
//!
//! Both tools' runs are repeated (`BENCH_REPEAT`, default 3), interleaved, each time into
//! a new, empty destination and with a new spool / sync state; the report gives medians.
//!
//! Environment: `BENCH_USERS` (default 3), `BENCH_MESSAGES` per user (default 2000),
//! `BENCH_REPEAT`, `BENCH_SEED`, `BENCH_ORDER` (`cutover-first` or `mbsync-first`),
//! `BENCH_ONLY` (`cutover` or `mbsync`), `BENCH_MBSYNC_SYNC` (the channel's `Sync`,
//! default `All`), `BENCH_CUTOVER_TOML` (appended to the generated cutover.toml),
//! `BENCH_CUTOVER_BIN`, `BENCH_MBSYNC_BIN`, `BENCH_TIMEOUT_SECS` (per run, default 3600).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use cutover::demo::{write_config, DemoTls};
use cutover::testbed::{Dovecot, DovecotOptions, Flavor, Testbed, MASTER_PASSWORD, MASTER_USER};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const TIME_BIN: &str = "/usr/bin/time";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Bytes in the "MB" of MB/s: decimal megabytes.
const MB: f64 = 1_000_000.0;

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Cutover,
    Mbsync,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Cutover => "cutover",
            Tool::Mbsync => "mbsync",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initial,
    Rerun,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Initial => "initial copy",
            Phase::Rerun => "no-change rerun",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Phase::Initial => "initial",
            Phase::Rerun => "rerun",
        }
    }
}

struct Settings {
    users: usize,
    messages: usize,
    seed: u64,
    repeat: usize,
    tools: Vec<Tool>,
    mbsync_sync: String,
    cutover_toml: String,
    cutover_bin: PathBuf,
    mbsync_bin: PathBuf,
    timeout: Duration,
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_num(name: &str, default: u64) -> Result<u64> {
    match env_str(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let users = env_num("BENCH_USERS", 3)? as usize;
        let messages = env_num("BENCH_MESSAGES", 2000)? as usize;
        if users == 0 || messages == 0 {
            bail!("BENCH_USERS and BENCH_MESSAGES must be at least 1");
        }
        let mut tools = match env_str("BENCH_ORDER").as_deref() {
            None | Some("cutover-first") => vec![Tool::Cutover, Tool::Mbsync],
            Some("mbsync-first") => vec![Tool::Mbsync, Tool::Cutover],
            Some(o) => bail!("BENCH_ORDER={o:?}: use cutover-first or mbsync-first"),
        };
        match env_str("BENCH_ONLY").as_deref() {
            None => {}
            Some("cutover") => tools.retain(|t| *t == Tool::Cutover),
            Some("mbsync") => tools.retain(|t| *t == Tool::Mbsync),
            Some(o) => bail!("BENCH_ONLY={o:?}: use cutover or mbsync"),
        }
        let cutover_bin = match env_str("BENCH_CUTOVER_BIN") {
            Some(p) => PathBuf::from(p),
            // target/<profile>/examples/bench -> target/<profile>/cutover
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join("cutover"))
                .ok_or_else(|| anyhow!("cannot locate the cutover binary"))?,
        };
        Ok(Settings {
            users,
            messages,
            seed: env_num("BENCH_SEED", 20_250_301)?,
            repeat: (env_num("BENCH_REPEAT", 3)? as usize).max(1),
            tools,
            mbsync_sync: env_str("BENCH_MBSYNC_SYNC").unwrap_or_else(|| "All".into()),
            cutover_toml: env_str("BENCH_CUTOVER_TOML").unwrap_or_default(),
            cutover_bin,
            mbsync_bin: PathBuf::from(
                env_str("BENCH_MBSYNC_BIN").unwrap_or_else(|| "/usr/bin/mbsync".into()),
            ),
            timeout: Duration::from_secs(env_num("BENCH_TIMEOUT_SECS", 3600)?),
        })
    }
}

struct User {
    login: String,
    password: String,
    email: String,
}

// ---------------------------------------------------------------------------------------
// Mail
// ---------------------------------------------------------------------------------------

/// Source folders (path components below the personal namespace; empty is INBOX) and
/// the percentage of the messages each gets.
const FOLDERS: &[(&[&str], u32)] = &[
    (&[], 45),
    (&["Sent"], 20),
    (&["Work"], 12),
    (&["Work", "Projects"], 8),
    (&["Lists"], 15),
];
const SENT: usize = 1;

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "that",
    "on",
    "with",
    "as",
    "we",
    "this",
    "be",
    "are",
    "it",
    "by",
    "at",
    "from",
    "will",
    "have",
    "not",
    "or",
    "can",
    "our",
    "all",
    "please",
    "meeting",
    "report",
    "budget",
    "project",
    "team",
    "customer",
    "invoice",
    "schedule",
    "review",
    "attached",
    "draft",
    "version",
    "update",
    "server",
    "migration",
    "mailbox",
    "deadline",
    "next",
    "week",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "morning",
    "afternoon",
    "thanks",
    "regards",
    "question",
    "answer",
    "issue",
    "ticket",
    "release",
    "contract",
    "offer",
    "price",
    "order",
    "delivery",
    "warehouse",
    "quarter",
    "figures",
    "forecast",
    "sales",
    "marketing",
    "design",
    "proposal",
    "agenda",
    "minutes",
    "decision",
    "approval",
    "office",
    "holiday",
    "travel",
    "hotel",
    "flight",
    "conference",
    "presentation",
    "slides",
    "document",
    "spreadsheet",
    "network",
    "backup",
    "password",
    "account",
    "access",
    "printer",
    "laptop",
    "phone",
    "call",
    "discuss",
    "confirm",
    "remind",
    "send",
    "receive",
    "check",
    "change",
    "plan",
    "support",
    "service",
    "quality",
    "training",
    "new",
    "old",
    "first",
    "last",
    "short",
    "long",
    "important",
    "urgent",
    "soon",
    "later",
    "today",
    "tomorrow",
    "yesterday",
    "about",
    "after",
    "before",
    "because",
    "could",
    "would",
    "should",
    "which",
    "there",
    "their",
    "other",
    "some",
    "more",
    "most",
    "only",
    "also",
    "just",
    "like",
    "time",
    "year",
    "work",
    "people",
    "company",
    "group",
    "number",
    "part",
    "point",
    "case",
    "result",
    "problem",
    "fact",
    "idea",
    "information",
    "process",
    "system",
    "program",
    "level",
    "list",
    "note",
];
const FIRST: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hans", "Ines", "Jonas", "Katrin",
    "Lukas", "Marie", "Nils", "Olga", "Paul", "Rita", "Stefan", "Tina", "Uwe",
];
const LAST: &[&str] = &[
    "Becker",
    "Fischer",
    "Hoffmann",
    "Koch",
    "Meyer",
    "Neumann",
    "Richter",
    "Schmidt",
    "Schulz",
    "Wagner",
    "Weber",
    "Wolf",
    "Zimmermann",
    "Brown",
    "Smith",
    "Martin",
];
const DOMAINS: &[&str] = &[
    "legacy.example",
    "supplier.example",
    "customer.example",
    "partner.example.org",
    "lists.example.net",
];
const MAILERS: &[&str] = &[
    "Microsoft Outlook 16.0",
    "Mozilla Thunderbird 115.6.0",
    "Apple Mail (2.3731)",
    "Roundcube Webmail/1.6.5",
];

/// One seeded message.
struct Message {
    folder: usize,
    body: Vec<u8>,
    flags: Vec<&'static str>,
    date: i64,
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list.choose(rng).copied().unwrap_or("x")
}

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(pick(rng, WORDS));
    }
    s
}

/// Plain text of about `target` bytes: CRLF lines of at most 76 characters in
/// paragraphs.
fn text(rng: &mut StdRng, target: usize) -> String {
    let mut out = String::with_capacity(target + 100);
    let mut line = String::new();
    let mut lines_left = rng.gen_range(2..8);
    while out.len() + line.len() < target {
        let w = pick(rng, WORDS);
        if line.len() + w.len() + 1 > 76 {
            out.push_str(&line);
            out.push_str(".\r\n");
            line.clear();
            lines_left -= 1;
            if lines_left == 0 {
                out.push_str("\r\n");
                lines_left = rng.gen_range(2..8);
            }
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out.push_str(&line);
    out.push_str(".\r\n");
    out
}

fn rfc2822(secs: i64) -> String {
    let offset = chrono::FixedOffset::east_opt(3600).expect("valid offset");
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("timestamp in range")
        .with_timezone(&offset)
        .to_rfc2822()
}

fn person(rng: &mut StdRng) -> (String, String) {
    let (f, l) = (pick(rng, FIRST), pick(rng, LAST));
    let domain = pick(rng, DOMAINS);
    (
        format!("{f} {l}"),
        format!("{}.{}@{domain}", f.to_lowercase(), l.to_lowercase()),
    )
}

/// A message of about `size` bytes (CRLF line ends); `large` ones carry a base64
/// attachment of random bytes, the others are text/plain.
fn make_message(
    rng: &mut StdRng,
    user: &User,
    n: usize,
    folder: usize,
    size: usize,
    large: bool,
    date: i64,
) -> Vec<u8> {
    let (other_name, other_addr) = person(rng);
    let me = (format!("User {}", user.login), user.email.clone());
    let sent = folder == SENT;
    let (from, to) = if sent {
        (me.clone(), (other_name, other_addr))
    } else {
        ((other_name, other_addr), me.clone())
    };
    let reply = rng.gen_bool(0.3);
    let subject_words = rng.gen_range(3..9);
    let subject = format!(
        "{}{}",
        if reply { "Re: " } else { "" },
        words(rng, subject_words)
    );
    let from_domain = from.1.split('@').nth(1).unwrap_or("legacy.example");
    let msgid = format!("<{:016x}.{n}@{from_domain}>", rng.gen::<u64>());
    let mut h = String::new();
    if !sent {
        let relay = pick(rng, DOMAINS);
        let _ = write!(
            h,
            "Return-Path: <{}>\r\nReceived: from mail.{relay} (mail.{relay} [198.51.100.{}])\r\n\
             \tby mx.legacy.example (Postfix) with ESMTPS id {:010X}\r\n\tfor <{}>; {}\r\n",
            from.1,
            rng.gen_range(1..255),
            rng.gen::<u64>() & 0xff_ffff_ffff,
            to.1,
            rfc2822(date)
        );
    }
    let _ = write!(
        h,
        "Date: {}\r\nFrom: \"{}\" <{}>\r\nTo: \"{}\" <{}>\r\n",
        rfc2822(date - rng.gen_range(2..600)),
        from.0,
        from.1,
        to.0,
        to.1
    );
    if rng.gen_bool(0.3) {
        let (cn, ca) = person(rng);
        let _ = write!(h, "Cc: \"{cn}\" <{ca}>\r\n");
    }
    let _ = write!(h, "Subject: {subject}\r\nMessage-ID: {msgid}\r\n");
    if reply {
        let parent = format!("<{:016x}@{}>", rng.gen::<u64>(), pick(rng, DOMAINS));
        let _ = write!(h, "In-Reply-To: {parent}\r\nReferences: {parent}\r\n");
    }
    let _ = write!(
        h,
        "MIME-Version: 1.0\r\nX-Mailer: {}\r\n",
        pick(rng, MAILERS)
    );
    if !large {
        h.push_str(
            "Content-Type: text/plain; charset=utf-8; format=flowed\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n",
        );
        let body = text(rng, size.saturating_sub(h.len()).max(64));
        h.push_str(&body);
        return h.into_bytes();
    }
    let boundary = format!("=_part_{:016x}", rng.gen::<u64>());
    let _ = write!(
        h,
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    );
    let intro_len = rng.gen_range(500..3000);
    h.push_str(&text(rng, intro_len));
    let name = format!(
        "{}-{n}.pdf",
        pick(rng, &["report", "scan", "offer", "slides"])
    );
    let _ = write!(
        h,
        "\r\n--{boundary}\r\nContent-Type: application/pdf; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    );
    let closing = format!("\r\n--{boundary}--\r\n");
    // 57 raw bytes make one base64 line of 76 characters plus CRLF.
    let room = size.saturating_sub(h.len() + closing.len());
    let mut raw = vec![0u8; (room / 78 * 57).max(57)];
    rng.fill(&mut raw[..]);
    let mut out = h.into_bytes();
    out.reserve(raw.len() * 78 / 57 + closing.len());
    for (i, chunk) in raw.chunks(57).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(chunk)
                .as_bytes(),
        );
    }
    out.extend_from_slice(closing.as_bytes());
    out
}

/// The messages of user number `u`, in delivery (and internal date) order. Depends only
/// on the seed and the settings, never on which tools run.
fn user_messages(s: &Settings, u: usize, user: &User) -> Vec<Message> {
    let mut rng = StdRng::seed_from_u64(s.seed ^ ((u as u64 + 1) << 32));
    let n = s.messages;
    let large_count = (n * 2 + 50) / 100;
    let mut large = vec![false; n];
    for i in rand::seq::index::sample(&mut rng, n, large_count) {
        large[i] = true;
    }
    let total_weight: u32 = FOLDERS.iter().map(|(_, w)| w).sum();
    // Distinct internal dates: one slot of 15 minutes per message, all users apart.
    let base = 1_640_995_200 + (u * n) as i64 * 900;
    (0..n)
        .map(|i| {
            let mut r = rng.gen_range(0..total_weight);
            let folder = FOLDERS
                .iter()
                .position(|(_, w)| {
                    if r < *w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
                .unwrap_or(0);
            let size = if large[i] {
                rng.gen_range(MIB / 5..=2 * MIB)
            } else {
                rng.gen_range(2 * KIB..=50 * KIB)
            };
            let date = base + i as i64 * 900 + rng.gen_range(0..900);
            let body = make_message(&mut rng, user, i, folder, size, large[i], date);
            let mut flags = Vec::new();
            if folder == SENT || rng.gen_bool(0.8) {
                flags.push("\\Seen");
                if folder != SENT && rng.gen_bool(0.15) {
                    flags.push("\\Answered");
                }
            }
            if rng.gen_bool(0.04) {
                flags.push("\\Flagged");
            }
            if rng.gen_bool(0.03) {
                flags.push("$label1");
            }
            Message {
                folder,
                body,
                flags,
                date,
            }
        })
        .collect()
}

/// What was seeded, for the rates and the checks.
#[derive(Default)]
struct Seeded {
    messages: u64,
    large: u64,
    bytes: u64,
}

fn seed(s: &Settings, users: &[User], sources: &[&Dovecot]) -> Result<Seeded> {
    let mut seeded = Seeded::default();
    for (u, user) in users.iter().enumerate() {
        let names: Vec<String> = FOLDERS
            .iter()
            .map(|(c, _)| {
                if c.is_empty() {
                    "INBOX".to_string()
                } else {
                    Flavor::Source.folder_name(c)
                }
            })
            .collect();
        for m in user_messages(s, u, user) {
            for src in sources {
                src.deliver(
                    &user.login,
                    &names[m.folder],
                    &m.body,
                    &m.flags,
                    Some(m.date),
                )
                .with_context(|| format!("seeding {}", user.login))?;
            }
            seeded.messages += 1;
            seeded.bytes += m.body.len() as u64;
            if m.body.len() > 100 * KIB {
                seeded.large += 1;
            }
        }
    }
    Ok(seeded)
}

/// doveadm mailbox masks for every folder: Dovecot 2.3's `*` matches nothing in a
/// namespace with a prefix (the source's `INBOX.`).
fn all_folders(d: &Dovecot) -> Vec<&'static str> {
    match d.flavor() {
        Flavor::Source => vec!["INBOX", "INBOX.*"],
        Flavor::Destination => vec!["*"],
    }
}

/// (messages, vsize) over all folders of `user`, from `doveadm mailbox status -t`.
fn totals(d: &Dovecot, user: &str) -> Result<(u64, u64)> {
    let mut args = vec!["mailbox", "status", "-u", user, "-t", "messages vsize"];
    args.extend(all_folders(d));
    let out = d.doveadm(&args)?;
    let field = |name: &str| -> Result<u64> {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("no {name} in doveadm's answer {out:?}"))?
            .parse()
            .with_context(|| format!("doveadm's answer {out:?}"))
    };
    Ok((field("messages")?, field("vsize")?))
}

/// Fails unless every user's destination holds exactly the seeded messages; notes a
/// destination whose total size differs from the source's (`source_vsize`, per user).
fn verify(
    tool: Tool,
    phase: Phase,
    d: &Dovecot,
    users: &[User],
    s: &Settings,
    source_vsize: &[u64],
    note_size: bool,
) -> Result<()> {
    let mut problems = Vec::new();
    let (mut have, mut want) = (0i64, 0i64);
    for (u, want_vsize) in users.iter().zip(source_vsize) {
        let (count, vsize) = totals(d, &u.email)?;
        have += vsize as i64;
        want += *want_vsize as i64;
        if count != s.messages as u64 {
            let mut args = vec!["mailbox", "status", "-u", &u.email, "messages"];
            args.extend(all_folders(d));
            let folders = d.doveadm(&args).unwrap_or_else(|e| format!("({e:#})"));
            problems.push(format!(
                "{}: {count} messages at the destination, {} seeded; per folder:\n{}",
                u.email, s.messages, folders
            ));
        }
    }
    if problems.is_empty() && have != want && note_size {
        let per_message = (have - want) as f64 / (s.messages * users.len()) as f64;
        println!(
            "  note: the destination holds {:+} bytes more than the source ({per_message:+.1} \
             per message)",
            have - want
        );
    }
    if !problems.is_empty() {
        bail!(
            "{} {}: WRONG MESSAGE COUNT AT THE DESTINATION\n{}",
            tool.name(),
            phase.name(),
            problems.join("\n")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Running and measuring
// ---------------------------------------------------------------------------------------

/// One process to run under `/usr/bin/time -v`.
struct Job {
    label: String,
    argv: Vec<OsString>,
    cwd: PathBuf,
    /// Prefix of the files that get stdout, stderr and time's report.
    out: PathBuf,
}

impl Job {
    fn file(&self, ext: &str) -> PathBuf {
        let mut p = self.out.clone().into_os_string();
        p.push(".");
        p.push(ext);
        PathBuf::from(p)
    }
}

/// What `/usr/bin/time -v` reported for one process.
#[derive(Debug, Default, Clone, Copy)]
struct TimeReport {
    cpu_secs: f64,
    max_rss_kib: u64,
}

fn parse_time(text: &str) -> Result<TimeReport> {
    let value = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {key:?} in /usr/bin/time's report:\n{text}"))
    };
    Ok(TimeReport {
        cpu_secs: value("User time (seconds):")? + value("System time (seconds):")?,
        max_rss_kib: value("Maximum resident set size (kbytes):")? as u64,
    })
}

/// One measured run of one tool: one process or several in parallel.
#[derive(Debug, Clone, Copy)]
struct Measure {
    wall: Duration,
    cpu_secs: f64,
    /// The largest peak RSS of the processes.
    max_rss_kib: u64,
    /// The sum of the processes' peak RSS.
    sum_rss_kib: u64,
    processes: usize,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kill_group(child: &Child) {
    // Each job leads its own process group (time and the tool under it).
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// Starts all jobs at once and waits for the last; the wall time runs from the first
/// spawn to the last exit.
fn run_jobs(jobs: &[Job], timeout: Duration) -> Result<Measure> {
    // Write back what seeding (or the run before) left dirty, so that it does not land
    // on whichever run comes next.
    let _ = Command::new("sync").status();
    let mut children: Vec<(Child, Option<ExitStatus>)> = Vec::new();
    let start = Instant::now();
    for j in jobs {
        let spawned = Command::new(TIME_BIN)
            .arg("-v")
            .arg("-o")
            .arg(j.file("time"))
            .args(&j.argv)
            .current_dir(&j.cwd)
            .stdin(Stdio::null())
            .stdout(File::create(j.file("stdout"))?)
            .stderr(File::create(j.file("stderr"))?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {TIME_BIN} for {}", j.label));
        match spawned {
            Ok(c) => children.push((c, None)),
            Err(e) => {
                for (c, _) in &mut children {
                    kill_group(c);
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    let mut last_exit = start;
    loop {
        let mut running = 0;
        for (c, status) in &mut children {
            if status.is_none() {
                match c.try_wait()? {
                    Some(st) => {
                        *status = Some(st);
                        last_exit = Instant::now();
                    }
                    None => running += 1,
                }
            }
        }
        if running == 0 {
            break;
        }
        if start.elapsed() > timeout {
            for (c, status) in &mut children {
                if status.is_none() {
                    kill_group(c);
                    let _ = c.wait();
                }
            }
            bail!(
                "{} did not finish within {timeout:?} (BENCH_TIMEOUT_SECS); killed",
                jobs.iter()
                    .map(|j| j.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = last_exit - start;
    let mut failures = Vec::new();
    let mut m = Measure {
        wall,
        cpu_secs: 0.0,
        max_rss_kib: 0,
        sum_rss_kib: 0,
        processes: jobs.len(),
    };
    for (j, (_, status)) in jobs.iter().zip(&children) {
        let status = status.expect("every job has exited");
        if !status.success() {
            failures.push(format!(
                "{} exited with {status}\n--- {} ---\n{}\n--- stdout (last lines) ---\n{}\n\
                 --- stderr (last lines) ---\n{}",
                j.label,
                j.argv
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                tail(&j.file("time"), 3),
                tail(&j.file("stdout"), 40),
                tail(&j.file("stderr"), 60),
            ));
            continue;
        }
        let report = std::fs::read_to_string(j.file("time"))
            .with_context(|| format!("reading {}", j.file("time").display()))?;
        let t = parse_time(&report)?;
        m.cpu_secs += t.cpu_secs;
        m.max_rss_kib = m.max_rss_kib.max(t.max_rss_kib);
        m.sum_rss_kib += t.max_rss_kib;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// The tools
// ---------------------------------------------------------------------------------------

fn user_tuples(users: &[User]) -> Vec<(&str, &str, &str)> {
    users
        .iter()
        .map(|u| (u.login.as_str(), u.password.as_str(), u.email.as_str()))
        .collect()
}

/// The cutover run: one process for all users, implicit TLS on both sides.
fn cutover_job(
    s: &Settings,
    tb: &Testbed,
    users: &[User],
    round: usize,
) -> Result<impl Fn(Phase) -> Job> {
    if !s.cutover_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --bins), or set \
             BENCH_CUTOVER_BIN",
            s.cutover_bin.display()
        );
    }
    let dir = tb.dir.path().join(format!("bench-cutover-{round}"));
    let tls = DemoTls {
        source_implicit: true,
        dest_implicit: true,
    };
    let config = write_config(tb, &dir, &user_tuples(users), tls, &s.cutover_toml)?;
    let bin = s.cutover_bin.clone();
    Ok(move |phase: Phase| Job {
        label: format!("cutover ({})", phase.tag()),
        argv: vec![
            bin.clone().into(),
            "--config".into(),
            config.clone().into(),
            "sync".into(),
            "--once".into(),
        ],
        cwd: dir.clone(),
        out: dir.join(format!("cutover-{}", phase.tag())),
    })
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An mbsync config for one user: source (far) to destination (near), both over
/// implicit TLS with the test CA, the same folders as cutover copies.
fn mbsync_config(s: &Settings, tb: &Testbed, user: &User, state: &Path) -> String {
    let ca = tb.ca.ca_pem_path().display().to_string();
    // `Host localhost`, not 127.0.0.1: mbsync 1.4 checks the certificate's DNS names
    // only, and the test certificate has 127.0.0.1 as an IP address.
    let account = |name: &str, port: u16, login: &str| {
        format!(
            "IMAPAccount {name}\nHost localhost\nPort {port}\nUser {}\nPass {}\n\
             SSLType IMAPS\nSystemCertificates no\nCertificateFile {}\nPipelineDepth 50\n\n\
             IMAPStore {name}\nAccount {name}\n\n",
            quote(login),
            quote(&user.password),
            quote(&ca),
        )
    };
    // The destination's own special folders (Exchange names) that the source lacks: not
    // mbsync's business, and it could not create them at the source anyway.
    let source_names: Vec<&str> = Flavor::Source
        .special_folders()
        .iter()
        .map(|(n, _)| n.strip_prefix(Flavor::Source.prefix()).unwrap_or(n))
        .collect();
    let mut patterns = String::from("INBOX *");
    for (name, _) in Flavor::Destination.special_folders() {
        if !source_names.contains(name) {
            let _ = write!(patterns, " !{}", quote(name));
        }
    }
    format!(
        "# mbsync channel for {login}, written by bench/bench.rs\n\n{far}{near}\
         Channel {login}\nFar :far:\nNear :near:\nPatterns {patterns}\nCreate Near\n\
         Expunge None\nSync {sync}\nCopyArrivalDate yes\nSyncState {state}\n",
        login = user.login,
        far = account("far", tb.source.tls_port(), &user.login),
        near = account("near", tb.dest.tls_port(), &user.email),
        sync = s.mbsync_sync,
        state = quote(&format!("{}/", state.display())),
    )
}

/// The mbsync runs: one process per user, all in parallel.
fn mbsync_jobs(
    s: &Settings,
    tb: &Testbed,
    users: &[User],
    round: usize,
) -> Result<impl Fn(Phase) -> Vec<Job>> {
    if !s.mbsync_bin.is_file() {
        bail!(
            "{} not found: apt-get install isync, or set BENCH_MBSYNC_BIN",
            s.mbsync_bin.display()
        );
    }
    let dir = tb.dir.path().join(format!("bench-mbsync-{round}"));
    let mut configs = Vec::new();
    for u in users {
        let state = dir.join(format!("state-{}", u.login));
        std::fs::create_dir_all(&state)?;
        let rc = dir.join(format!("mbsyncrc-{}", u.login));
        std::fs::write(&rc, mbsync_config(s, tb, u, &state))?;
        configs.push((u.login.clone(), rc));
    }
    let bin = s.mbsync_bin.clone();
    Ok(move |phase: Phase| {
        configs
            .iter()
            .map(|(login, rc)| Job {
                label: format!("mbsync {login} ({})", phase.tag()),
                argv: vec![
                    bin.clone().into(),
                    "-q".into(),
                    "-c".into(),
                    rc.clone().into(),
                    "-a".into(),
                ],
                cwd: dir.clone(),
                out: dir.join(format!("mbsync-{login}-{}", phase.tag())),
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

struct Row {
    tool: Tool,
    phase: Phase,
    m: Measure,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The medians over the rounds of one tool and phase.
struct Summary {
    runs: usize,
    wall: f64,
    wall_min: f64,
    wall_max: f64,
    cpu: f64,
    max_rss_kib: f64,
    sum_rss_kib: f64,
    processes: usize,
}

fn summarize(rows: &[Row], tool: Tool, phase: Phase) -> Option<Summary> {
    let ms: Vec<&Measure> = rows
        .iter()
        .filter(|r| r.tool == tool && r.phase == phase)
        .map(|r| &r.m)
        .collect();
    let first = ms.first()?;
    let walls: Vec<f64> = ms.iter().map(|m| m.wall.as_secs_f64()).collect();
    Some(Summary {
        runs: ms.len(),
        wall: median(walls.clone()).max(1e-9),
        wall_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        wall_max: walls.iter().copied().fold(0.0, f64::max),
        cpu: median(ms.iter().map(|m| m.cpu_secs).collect()),
        max_rss_kib: median(ms.iter().map(|m| m.max_rss_kib as f64).collect()),
        sum_rss_kib: median(ms.iter().map(|m| m.sum_rss_kib as f64).collect()),
        processes: first.processes,
    })
}

fn table(rows: &[Row], seeded: &Seeded, tools: &[Tool]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<8} {:<16} {:>8} {:>14} {:>9} {:>8} {:>7} {:>13} {:>12}",
        "tool",
        "phase",
        "wall s",
        "(min-max)",
        "msgs/s",
        "MB/s",
        "CPU s",
        "peak RSS MiB",
        "RSS sum MiB"
    );
    for tool in tools {
        for phase in [Phase::Initial, Phase::Rerun] {
            let Some(x) = summarize(rows, *tool, phase) else {
                continue;
            };
            let _ = writeln!(
                t,
                "{:<8} {:<16} {:>8.2} {:>14} {:>9.1} {:>8.2} {:>7.2} {:>13.1} {:>12}",
                tool.name(),
                phase.name(),
                x.wall,
                format!("({:.2}-{:.2})", x.wall_min, x.wall_max),
                seeded.messages as f64 / x.wall,
                seeded.bytes as f64 / MB / x.wall,
                x.cpu,
                x.max_rss_kib / 1024.0,
                if x.processes > 1 {
                    format!("{:.1} ({}x)", x.sum_rss_kib / 1024.0, x.processes)
                } else {
                    format!("{:.1}", x.sum_rss_kib / 1024.0)
                },
            );
        }
    }
    if let Some(runs) = summarize(rows, tools[0], Phase::Initial).map(|x| x.runs) {
        let _ = writeln!(
            t,
            "(medians of {runs} run(s) each; MB = 10^6 bytes; CPU = user + system time of the \
             tool's processes)"
        );
    }
    t
}

fn ratios(rows: &[Row]) -> String {
    let mut t = String::new();
    for phase in [Phase::Initial, Phase::Rerun] {
        let (Some(c), Some(m)) = (
            summarize(rows, Tool::Cutover, phase),
            summarize(rows, Tool::Mbsync, phase),
        ) else {
            continue;
        };
        // /usr/bin/time counts in 10 ms steps: tiny CPU times make no ratio.
        let cpu = if c.cpu >= 0.05 && m.cpu >= 0.05 {
            format!("{:.2}x", c.cpu / m.cpu)
        } else {
            format!("n/a ({:.2} s / {:.2} s)", c.cpu, m.cpu)
        };
        let _ = writeln!(
            t,
            "{}: cutover/mbsync wall time {:.2}x, msgs/s and MB/s {:.2}x, CPU time {cpu}, \
             peak RSS {:.2}x (of mbsync's largest process; {:.2}x of its {} processes' sum)",
            phase.name(),
            c.wall / m.wall,
            m.wall / c.wall,
            c.max_rss_kib / m.max_rss_kib.max(1.0),
            c.max_rss_kib / m.sum_rss_kib.max(1.0),
            m.processes,
        );
    }
    t
}

fn version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/// Replaces the testbed's destination with a new, empty Dovecot (for the next round).
fn fresh_destination(tb: &mut Testbed, users: &[User], round: usize) -> Result<()> {
    let opts = DovecotOptions {
        flavor: Flavor::Destination,
        users: users
            .iter()
            .map(|u| (u.email.clone(), u.password.clone()))
            .collect(),
        master_user: MASTER_USER.into(),
        master_password: MASTER_PASSWORD.into(),
    };
    let dir = tb.dir.path().join(format!("dest-{round}"));
    let new = Dovecot::start_in(&dir, opts, &tb.ca).context("starting a new destination")?;
    drop(std::mem::replace(&mut tb.dest, new));
    Ok(())
}

/// Runs one tool's two phases into an empty destination, verifying it after each.
fn measure_tool(
    tool: Tool,
    s: &Settings,
    tb: &mut Testbed,
    users: &[User],
    source_vsize: &[u64],
    round: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    if round > 0 {
        fresh_destination(tb, users, round)?;
    }
    let jobs: Box<dyn Fn(Phase) -> Vec<Job>> = match tool {
        Tool::Cutover => {
            let f = cutover_job(s, tb, users, round)?;
            Box::new(move |p| vec![f(p)])
        }
        Tool::Mbsync => Box::new(mbsync_jobs(s, tb, users, round)?),
    };
    for phase in [Phase::Initial, Phase::Rerun] {
        let m = run_jobs(&jobs(phase), s.timeout)
            .with_context(|| format!("{} {} failed", tool.name(), phase.name()))?;
        let first = round == 0 && phase == Phase::Initial;
        verify(tool, phase, &tb.dest, users, s, source_vsize, first)?;
        println!(
            "  round {}: {:<7} {:<16} {:>7.2} s, CPU {:.2} s, peak RSS {:.1} MiB; all {} \
             messages of every user at the destination",
            round + 1,
            tool.name(),
            phase.name(),
            m.wall.as_secs_f64(),
            m.cpu_secs,
            mib(m.max_rss_kib),
            s.messages
        );
        rows.push(Row { tool, phase, m });
    }
    Ok(())
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// How busy the machine is while this program does nothing (one second's sample), and
/// a warning if other processes keep the CPUs busy: the figures are then noise.
fn idle_check(when: &str) -> Option<String> {
    let (b0, t0) = cpu_jiffies()?;
    std::thread::sleep(Duration::from_secs(1));
    let (b1, t1) = cpu_jiffies()?;
    let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    (busy > 0.1).then(|| {
        format!(
            "WARNING: other processes kept the CPUs {:.0} % busy {when}: the figures are \
             noisy; run the benchmark on an otherwise idle machine",
            busy * 100.0
        )
    })
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    if !Path::new(TIME_BIN).is_file() {
        bail!("{TIME_BIN} not found: apt-get install time");
    }
    if !cutover::testbed::dovecot_available() {
        bail!("Dovecot not found: apt-get install dovecot-imapd");
    }
    let busy_before = idle_check("before the benchmark");
    if let Some(w) = &busy_before {
        println!("{w}");
    }
    let users: Vec<User> = (1..=s.users)
        .map(|i| User {
            login: format!("user{i}"),
            password: format!("pw-user{i}"),
            email: format!("user{i}@example.test"),
        })
        .collect();
    let tuples = user_tuples(&users);

    println!(
        "starting Dovecot testbeds for {} (source + destination each) ...",
        s.tools
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let mut testbeds = Vec::new();
    for tool in &s.tools {
        let tb = Testbed::start(&tuples)
            .with_context(|| format!("starting the testbed for {}", tool.name()))?;
        testbeds.push((*tool, tb));
    }

    println!(
        "seeding {} users x {} messages (seed {}) ...",
        s.users, s.messages, s.seed
    );
    let t0 = Instant::now();
    let sources: Vec<&Dovecot> = testbeds.iter().map(|(_, tb)| &tb.source).collect();
    let seeded = seed(&s, &users, &sources)?;
    // Let Dovecot index the new Maildirs now (and check them), so that neither tool's
    // first run pays for it.
    let mut source_vsize = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        for (j, u) in users.iter().enumerate() {
            let (count, vsize) = totals(src, &u.login)?;
            if count != s.messages as u64 {
                bail!(
                    "source holds {count} messages for {}, seeded {}",
                    u.login,
                    s.messages
                );
            }
            if i == 0 {
                source_vsize.push(vsize);
            } else if source_vsize[j] != vsize {
                bail!("the two sources differ for {}", u.login);
            }
        }
    }
    println!(
        "  {} messages ({} of them 0.2-2 MiB with an attachment), {:.1} MB, in {:.1} s",
        seeded.messages,
        seeded.large,
        seeded.bytes as f64 / MB,
        t0.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut failed: Vec<Tool> = Vec::new();
    for round in 0..s.repeat {
        for (tool, tb) in &mut testbeds {
            if failed.contains(tool) {
                continue;
            }
            let r = measure_tool(*tool, &s, tb, &users, &source_vsize, round, &mut rows);
            if let Err(e) = r {
                eprintln!("\n!!!! {} FAILED: {e:#}\n", tool.name());
                errors.push(format!("{} (round {}): {e:#}", tool.name(), round + 1));
                failed.push(*tool);
            }
        }
    }

    println!(
        "\n{} users x {} messages = {} messages, {:.1} MB (MB = 10^6 bytes); {} CPUs; \
         dovecot {}; {}",
        s.users,
        s.messages,
        seeded.messages,
        seeded.bytes as f64 / MB,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version(cutover::testbed::DOVECOT_BIN, &["--version"]),
        version(&s.mbsync_bin.to_string_lossy(), &["--version"]),
    );
    print!("{}", table(&rows, &seeded, &s.tools));
    let r = ratios(&rows);
    if !r.is_empty() {
        println!();
        print!("{r}");
    }
    drop(testbeds);
    for w in [busy_before, idle_check("after it")].into_iter().flatten() {
        println!("{w}");
    }
    if !errors.is_empty() {
        bail!("{} run(s) failed:\n{}", errors.len(), errors.join("\n"));
    }
    Ok(())
}
