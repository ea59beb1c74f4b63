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
//! Then the throttle phase (with cutover; `BENCH_THROTTLE=0` skips it): cutover copies
//! `BENCH_THROTTLE_MESSAGES` of the first user's messages into a new, empty destination
//! with `[upstream] messages_per_second = BENCH_THROTTLE_RATE` and a small burst, and the
//! rate at which the messages arrived there (from the microseconds in Dovecot's Maildir
//! file names), from the first one that had to wait for the token bucket, must be within
//! 5 % of the configured one; the same with `bytes_per_second =
//! BENCH_THROTTLE_BYTES_RATE` (0 skips that variant).
//!
//! Environment: `BENCH_USERS` (default 3), `BENCH_MESSAGES` per user (default 2000),
//! `BENCH_LARGE_PERCENT` (large messages, default 2 %), `BENCH_LARGE_MIB` (their size; default
//! 0.2-2 MiB at random),
//! `BENCH_REPEAT`, `BENCH_SEED`, `BENCH_ORDER` (`alternate`, `cutover-first` or `mbsync-first`),
//! `BENCH_ONLY` (`cutover` or `mbsync`), `BENCH_MBSYNC_SYNC` (the channel's `Sync`,
//! default `All`), `BENCH_CUTOVER_TOML` (appended to the generated cutover.toml),
//! `BENCH_CUTOVER_BIN`, `BENCH_MBSYNC_BIN`, `BENCH_TIMEOUT_SECS` (per run, default 3600),
//! `BENCH_THROTTLE` (`0` skips the throttle phase), `BENCH_THROTTLE_RATE` (messages/s,
//! default 100), `BENCH_THROTTLE_MESSAGES` (default 1000), `BENCH_THROTTLE_BYTES_RATE`
//! (bytes/s, default 4000000; 0 skips the bytes variant), `BENCH_STATE_DIR` (see below).
//!
//! Where things live: the testbeds (the Dovecot servers' mail, configs and sockets, and
//! the tools' configs and output) in the temporary directory (`TMPDIR`; `run.sh` picks a
//! tmpfs, see bench/README.md), the tools' own state (cutover's spool, mbsync's
//! `SyncState`) in a new directory under `BENCH_STATE_DIR` (default `/var/tmp`), on disk,
//! because writing it is part of what each tool costs. Both filesystems are printed.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Percent of the messages that are large (`BENCH_LARGE_PERCENT`, default 2).
    large_percent: usize,
    /// Size of a large message in bytes (`BENCH_LARGE_MIB`); None: 0.2-2 MiB at random.
    large_bytes: Option<usize>,
    seed: u64,
    repeat: usize,
    tools: Vec<Tool>,
    /// Who goes first changes every round (`BENCH_ORDER=alternate`, the default).
    alternate: bool,
    mbsync_sync: String,
    cutover_toml: String,
    cutover_bin: PathBuf,
    mbsync_bin: PathBuf,
    timeout: Duration,
    /// The throttle phase; None: skipped (`BENCH_THROTTLE=0`, or cutover not benchmarked).
    throttle: Option<ThrottleSettings>,
    /// Where the tools' own state goes (cutover's spool, mbsync's SyncState).
    state: StateDir,
    /// `BENCH_SIZE=small`: every message 0.5-3 KiB of text, none large (the scale runs:
    /// many messages, little data).
    small: bool,
    /// `BENCH_FOLDERS=inbox`: every message in INBOX (one big folder).
    inbox_only: bool,
}

/// A new directory for the tools' own state, under `BENCH_STATE_DIR` (default
/// `/var/tmp`): on disk, since writing the spool (with fsync) and the sync state is part
/// of what each tool costs. Removed when dropped (at the end, also after an error),
/// unless `CUTOVER_TESTBED_KEEP` is set.
struct StateDir {
    dir: tempfile::TempDir,
    fs: FsInfo,
}

impl StateDir {
    const DEFAULT_PARENT: &'static str = "/var/tmp";

    fn create() -> Result<StateDir> {
        let explicit = env_str("BENCH_STATE_DIR");
        let parent = PathBuf::from(explicit.as_deref().unwrap_or(Self::DEFAULT_PARENT));
        let fs = FsInfo::of(&parent)
            .with_context(|| format!("{} (BENCH_STATE_DIR)", parent.display()))?;
        if explicit.is_none() && fs.in_memory() {
            bail!(
                "{} is on {}, in memory: the tools' state (cutover's spool, mbsync's \
                 SyncState) must be on disk, writing it is part of what each tool costs; set \
                 BENCH_STATE_DIR to a directory on a disk filesystem",
                parent.display(),
                fs.fstype
            );
        }
        let mut dir = tempfile::Builder::new()
            .prefix("cutover-bench-state-")
            .tempdir_in(&parent)
            .with_context(|| {
                format!(
                    "creating the state directory under {} (BENCH_STATE_DIR)",
                    parent.display()
                )
            })?;
        let keep = std::env::var_os(cutover::testbed::KEEP_ENV);
        if keep.is_some_and(|v| !v.is_empty() && v != "0") {
            dir.disable_cleanup(true);
            eprintln!("bench: keeping {}", dir.path().display());
        }
        Ok(StateDir { dir, fs })
    }

    /// The state directory of one run's configuration (`bench-cutover-0`, ...).
    fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The filesystem a path lives on, from `df` (and whether an ext4 has a journal).
struct FsInfo {
    fstype: String,
    mount: String,
    /// ext4 only: Some(false) when it has no journal (no entry in /proc/fs/jbd2).
    journal: Option<bool>,
}

impl FsInfo {
    fn of(path: &Path) -> Result<FsInfo> {
        let out = Command::new("df")
            .args(["--output=source,fstype,target", "--"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .context("running df")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().nth(1).filter(|_| out.status.success());
        let mut f = line.map(|l| l.split_whitespace()).ok_or_else(|| {
            anyhow!(
                "df {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        let (source, fstype) = (f.next().unwrap_or("?"), f.next().unwrap_or("?"));
        let mount = f.collect::<Vec<_>>().join(" ");
        // jbd2 names a journal `<device>-<journal inode>`, e.g. `sda1-8`.
        let journal = (fstype == "ext4")
            .then(|| {
                let dev = source.rsplit('/').next()?;
                let entries = std::fs::read_dir("/proc/fs/jbd2").ok()?;
                Some(entries.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{dev}-"))
                }))
            })
            .flatten();
        Ok(FsInfo {
            fstype: fstype.to_string(),
            mount,
            journal,
        })
    }

    fn in_memory(&self) -> bool {
        matches!(self.fstype.as_str(), "tmpfs" | "ramfs")
    }

    /// `tmpfs`, or `ext4 without journal`.
    fn kind(&self) -> String {
        match self.journal {
            Some(false) => format!("{} without journal", self.fstype),
            _ => self.fstype.clone(),
        }
    }

    /// `tmpfs on /dev/shm`.
    fn shown(&self) -> String {
        format!("{} on {}", self.kind(), self.mount)
    }
}

/// The throttle phase's settings (`BENCH_THROTTLE_*`).
struct ThrottleSettings {
    /// `[upstream] messages_per_second`.
    rate: f64,
    /// Messages copied (of the first user), in each variant.
    messages: usize,
    /// `[upstream] bytes_per_second` of the bytes variant; 0: no bytes variant.
    bytes_rate: u64,
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The number in environment variable `name` (`_` allowed between digits), or `default`.
fn env_parse<T>(name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match env_str(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
    }
}

fn env_f64(name: &str, default: f64) -> Result<f64> {
    env_parse(name, default)
}

fn env_num(name: &str, default: u64) -> Result<u64> {
    env_parse(name, default)
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let users = env_num("BENCH_USERS", 3)? as usize;
        let messages = env_num("BENCH_MESSAGES", 2000)? as usize;
        if users == 0 || messages == 0 {
            bail!("BENCH_USERS and BENCH_MESSAGES must be at least 1");
        }
        let order = env_str("BENCH_ORDER");
        let mut tools = match order.as_deref() {
            None | Some("alternate") | Some("cutover-first") => vec![Tool::Cutover, Tool::Mbsync],
            Some("mbsync-first") => vec![Tool::Mbsync, Tool::Cutover],
            Some(o) => bail!("BENCH_ORDER={o:?}: use alternate, cutover-first or mbsync-first"),
        };
        let alternate = matches!(order.as_deref(), None | Some("alternate"));
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
        let throttle = match env_str("BENCH_THROTTLE").as_deref().map(str::trim) {
            Some("0" | "no" | "off" | "false") => None,
            None | Some("1" | "yes" | "on" | "true") => {
                let rate = env_f64("BENCH_THROTTLE_RATE", 100.0)?;
                if !rate.is_finite() || rate <= 0.0 {
                    bail!("BENCH_THROTTLE_RATE must be a positive number of messages/s");
                }
                let messages = env_num("BENCH_THROTTLE_MESSAGES", 1000)? as usize;
                if messages < 20 {
                    bail!("BENCH_THROTTLE_MESSAGES must be at least 20");
                }
                Some(ThrottleSettings {
                    rate,
                    messages,
                    bytes_rate: env_num("BENCH_THROTTLE_BYTES_RATE", 4_000_000)?,
                })
            }
            Some(o) => bail!("BENCH_THROTTLE={o:?}: use 1 or 0"),
        }
        .filter(|_| tools.contains(&Tool::Cutover));
        let large_percent = env_num("BENCH_LARGE_PERCENT", 2)? as usize;
        if large_percent > 100 {
            bail!("BENCH_LARGE_PERCENT must be 0 to 100");
        }
        let large_bytes = match env_num("BENCH_LARGE_MIB", 0)? as usize {
            0 => None,
            mib if mib > 150 => bail!("BENCH_LARGE_MIB must be at most 150"),
            mib => Some(mib * MIB),
        };
        Ok(Settings {
            users,
            messages,
            small: env_str("BENCH_SIZE").as_deref() == Some("small"),
            inbox_only: env_str("BENCH_FOLDERS").as_deref() == Some("inbox"),
            large_percent,
            large_bytes,
            seed: env_num("BENCH_SEED", 20_250_301)?,
            repeat: (env_num("BENCH_REPEAT", 3)? as usize).max(1),
            tools,
            alternate,
            mbsync_sync: env_str("BENCH_MBSYNC_SYNC").unwrap_or_else(|| "All".into()),
            cutover_toml: env_str("BENCH_CUTOVER_TOML").unwrap_or_default(),
            cutover_bin,
            mbsync_bin: PathBuf::from(
                env_str("BENCH_MBSYNC_BIN").unwrap_or_else(|| "/usr/bin/mbsync".into()),
            ),
            timeout: Duration::from_secs(env_num("BENCH_TIMEOUT_SECS", 3600)?),
            throttle,
            state: StateDir::create()?,
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
    let large_count = if s.small {
        0
    } else {
        (n * s.large_percent + 50) / 100
    };
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
            let folder = if s.inbox_only {
                0
            } else {
                FOLDERS
                    .iter()
                    .position(|(_, w)| {
                        if r < *w {
                            true
                        } else {
                            r -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            let size = if large[i] {
                s.large_bytes
                    .unwrap_or_else(|| rng.gen_range(MIB / 5..=2 * MIB))
            } else if s.small {
                rng.gen_range(KIB / 2..=3 * KIB)
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
    /// Extra environment variables (e.g. `CUTOVER_SYNC__...` overrides).
    env: Vec<(String, String)>,
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
    /// CPU time of the whole machine during the run (the tool, both Dovecot servers,
    /// the kernel's writeback...), from /proc/stat: with every core busy, this is what
    /// the wall time follows.
    machine_cpu_secs: f64,
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
    let busy_before = cpu_jiffies();
    let start = Instant::now();
    for j in jobs {
        let spawned = Command::new(TIME_BIN)
            .arg("-v")
            .arg("-o")
            .arg(j.file("time"))
            .args(&j.argv)
            .envs(j.env.clone())
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
    let mut samples: Vec<u64> = Vec::new();
    let mut next_sample = start;
    loop {
        if Instant::now() >= next_sample {
            let pids: Vec<u32> = children
                .iter()
                .filter(|(_, st)| st.is_none())
                .map(|(c, _)| c.id())
                .collect();
            samples.push(pids.iter().map(|p| tool_rss_kib(*p)).sum());
            next_sample += Duration::from_secs(1);
        }
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
    if samples.len() >= 3 {
        // RSS of the tool's processes (summed) once a second, to show whether it grows
        // with the run or stays flat.
        let step = samples.len().div_ceil(40);
        let series: Vec<String> = samples
            .iter()
            .step_by(step)
            .map(|k| format!("{:.0}", mib(*k)))
            .collect();
        println!(
            "  {}: RSS MiB every {step} s: {}",
            jobs.first().map_or("", |j| j.label.as_str()),
            series.join(" ")
        );
    }
    let machine_cpu_secs = match (busy_before, cpu_jiffies()) {
        (Some((b0, _)), Some((b1, _))) => b1.saturating_sub(b0) as f64 / clock_ticks(),
        _ => 0.0,
    };
    let mut failures = Vec::new();
    let mut m = Measure {
        wall,
        cpu_secs: 0.0,
        machine_cpu_secs,
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

/// A cutover run: one process for all `users`, implicit TLS on both sides, its config
/// (with `extra` appended) and output files in `dir_name` under the testbed, its spool in
/// `dir_name` under the state directory (on disk).
fn cutover_job(
    s: &Settings,
    tb: &Testbed,
    users: &[User],
    dir_name: &str,
    extra: &str,
    env: Vec<(String, String)>,
) -> Result<impl Fn(Phase) -> Job> {
    if !s.cutover_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --bins), or set \
             BENCH_CUTOVER_BIN",
            s.cutover_bin.display()
        );
    }
    let dir = tb.dir.path().join(dir_name);
    let tls = DemoTls {
        source_implicit: true,
        dest_implicit: true,
    };
    let config = write_config(tb, &dir, &user_tuples(users), tls, extra)?;
    set_spool_path(&config, &s.state.join(dir_name).join("spool"))?;
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
        env: env.clone(),
    })
}

/// Points `[spool] path` of the cutover.toml that `write_config` wrote (`path =
/// "spool"`, next to the config) at `spool`.
fn set_spool_path(config: &Path, spool: &Path) -> Result<()> {
    const WRITTEN: &str = "[spool]\npath = \"spool\"\n";
    let text = std::fs::read_to_string(config)?;
    if text.matches(WRITTEN).count() != 1 {
        bail!(
            "{}: no `{}` to point at the state directory (has cutover::demo::write_config \
             changed?)",
            config.display(),
            WRITTEN.escape_debug()
        );
    }
    std::fs::create_dir_all(spool)?;
    let spool = spool
        .to_str()
        .ok_or_else(|| anyhow!("{spool:?} is not UTF-8"))?;
    let line = format!(
        "[spool]\n# On disk (BENCH_STATE_DIR), not in the testbed: see bench/README.md.\n\
         path = {}\n",
        quote(spool)
    );
    std::fs::write(config, text.replacen(WRITTEN, &line, 1))?;
    Ok(())
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
    let name = format!("bench-mbsync-{round}");
    let dir = tb.dir.path().join(&name);
    std::fs::create_dir_all(&dir)?;
    let mut configs = Vec::new();
    for u in users {
        // On disk, in the state directory; the config and output stay in the testbed.
        let state = s.state.join(&name).join(format!("state-{}", u.login));
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
                env: Vec::new(),
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
    round: usize,
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
    machine_cpu: f64,
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
        machine_cpu: median(ms.iter().map(|m| m.machine_cpu_secs).collect()),
        max_rss_kib: median(ms.iter().map(|m| m.max_rss_kib as f64).collect()),
        sum_rss_kib: median(ms.iter().map(|m| m.sum_rss_kib as f64).collect()),
        processes: first.processes,
    })
}

fn table(rows: &[Row], seeded: &Seeded, tools: &[Tool]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<8} {:<16} {:>8} {:>14} {:>9} {:>8} {:>7} {:>9} {:>13} {:>12}",
        "tool",
        "phase",
        "wall s",
        "(min-max)",
        "msgs/s",
        "MB/s",
        "CPU s",
        "machine s",
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
                "{:<8} {:<16} {:>8.2} {:>14} {:>9.1} {:>8.2} {:>7.2} {:>9.2} {:>13.1} {:>12}",
                tool.name(),
                phase.name(),
                x.wall,
                format!("({:.2}-{:.2})", x.wall_min, x.wall_max),
                seeded.messages as f64 / x.wall,
                seeded.bytes as f64 / MB / x.wall,
                x.cpu,
                x.machine_cpu,
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
             tool's processes; machine = CPU time of the whole machine during the run: the \
             tool, the Dovecot servers, the kernel)"
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
        // Each round's two runs follow each other, so their ratio is less affected by
        // the machine's drift than the ratio of the medians.
        let paired: Vec<f64> = rows
            .iter()
            .filter(|r| r.tool == Tool::Cutover && r.phase == phase)
            .filter_map(|c| {
                let m = rows
                    .iter()
                    .find(|r| r.tool == Tool::Mbsync && r.phase == phase && r.round == c.round)?;
                Some(c.m.wall.as_secs_f64() / m.m.wall.as_secs_f64().max(1e-9))
            })
            .collect();
        if paired.len() > 1 {
            let _ = writeln!(
                t,
                "{}: per-round wall time ratios {}; median {:.2}x",
                phase.name(),
                paired
                    .iter()
                    .map(|r| format!("{r:.2}x"))
                    .collect::<Vec<_>>()
                    .join(" "),
                median(paired.clone()),
            );
        }
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
// Throttle
// ---------------------------------------------------------------------------------------

/// `[upstream] burst` of the messages variant, seconds. `burst` is in seconds of the rate
/// (`src/throttle.rs`): a bucket holds `rate * burst` tokens (at least 1) and is full at
/// the start. Small (20 messages at 100 msg/s), but a pause of cutover shorter than this
/// (waiting for the source in the first second, a busy machine) costs no tokens.
const THROTTLE_MESSAGES_BURST_SECS: f64 = 0.2;
/// `burst` of the bytes variant, seconds: more, because small messages leave faster than
/// cutover appends them one by one, and the bucket saves what they leave over for the
/// next large one.
const THROTTLE_BYTES_BURST_SECS: f64 = 0.5;
/// How far the achieved rate may be from the configured one (issue 3).
const THROTTLE_TOLERANCE: f64 = 0.05;

/// What the throttle phase limits.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// `messages_per_second`
    Messages(f64),
    /// `bytes_per_second`
    Bytes(u64),
}

impl Limit {
    fn tag(self) -> &'static str {
        match self {
            Limit::Messages(_) => "messages",
            Limit::Bytes(_) => "bytes",
        }
    }

    /// The configured rate, as configured.
    fn configured_shown(self) -> String {
        match self {
            Limit::Messages(r) => format!("{r} msg/s"),
            Limit::Bytes(b) => format!("{} MB/s", b as f64 / MB),
        }
    }

    /// An achieved rate (messages or bytes per second) in the same unit.
    fn shown(self, per_second: f64) -> String {
        match self {
            Limit::Messages(_) => format!("{per_second:.1} msg/s"),
            Limit::Bytes(_) => format!("{:.3} MB/s", per_second / MB),
        }
    }

    fn configured(self) -> f64 {
        match self {
            Limit::Messages(r) => r,
            Limit::Bytes(b) => b as f64,
        }
    }
}

/// One message as it arrived at the destination.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// Unix time, seconds with microseconds, when Dovecot began saving it.
    at: f64,
    /// Its size with CRLF line ends: the literal cutover appended.
    vsize: u64,
}

/// When Dovecot began saving a message, from its Maildir file name (which is its GUID on
/// a Maildir without GUIDs in the uidlist): `<secs>.M<usecs>P<pid>.<host>`, the time of
/// the save in microseconds (Dovecot's ioloop time, kept unique per process).
/// `date.saved` has only whole seconds, too coarse for 5 % over a few seconds.
fn maildir_time(name: &str) -> Option<f64> {
    let (secs, rest) = name.split_once('.')?;
    let usecs = rest.strip_prefix('M')?.split_once('P')?.0;
    let secs: u64 = secs.parse().ok()?;
    let usecs: u64 = usecs.parse().ok()?;
    (usecs < 1_000_000).then(|| secs as f64 + usecs as f64 / 1e6)
}

/// Every message of `user` at the destination `d`, in the order they arrived.
fn arrivals(d: &Dovecot, user: &str) -> Result<Vec<Arrival>> {
    let out = d.doveadm(&[
        "-f",
        "tab",
        "fetch",
        "-u",
        user,
        "guid size.virtual",
        "mailbox",
        "*",
    ])?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    if header != ["guid", "size.virtual"] {
        bail!("unexpected header from doveadm fetch: {header:?}");
    }
    let mut v = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (guid, vsize) = line
            .split_once('\t')
            .ok_or_else(|| anyhow!("doveadm fetch gave {line:?}"))?;
        v.push(Arrival {
            at: maildir_time(guid).ok_or_else(|| {
                anyhow!("GUID {guid:?} is not a Maildir file name with the time of the save")
            })?,
            vsize: vsize
                .trim()
                .parse()
                .with_context(|| format!("doveadm fetch gave {line:?}"))?,
        });
    }
    v.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(v)
}

/// The result of one throttle variant.
struct ThrottleResult {
    limit: Limit,
    achieved: f64,
}

impl ThrottleResult {
    fn deviation(&self) -> f64 {
        self.achieved / self.limit.configured() - 1.0
    }

    fn ok(&self) -> bool {
        self.deviation().abs() <= THROTTLE_TOLERANCE
    }

    fn line(&self) -> String {
        format!(
            "throttle: configured {}, achieved {} ({:+.1} %), within {:.0} %: {}",
            self.limit.configured_shown(),
            self.limit.shown(self.achieved),
            self.deviation() * 100.0,
            THROTTLE_TOLERANCE * 100.0,
            if self.ok() { "yes" } else { "NO" }
        )
    }
}

/// One throttle variant: `user`'s newest `n` messages with `limit`, by one `cutover sync
/// --once` into a new, empty destination; the achieved rate from when they arrived.
fn throttle_variant(
    s: &Settings,
    tb: &mut Testbed,
    user: &[User],
    n: usize,
    limit: Limit,
) -> Result<ThrottleResult> {
    // `user`: one user (a slice for the helpers).
    let name = format!("throttle-{}", limit.tag());
    fresh_destination(tb, user, &format!("dest-{name}"))?;
    // `burst` as written is parsed back to the same f64 (shortest round-trip form), so
    // the bucket's capacity here is the one cutover computes.
    let (keys, burst) = match limit {
        Limit::Messages(rate) => (
            format!("messages_per_second = {rate}\nburst = {THROTTLE_MESSAGES_BURST_SECS}\n"),
            THROTTLE_MESSAGES_BURST_SECS,
        ),
        Limit::Bytes(rate) => (
            format!("bytes_per_second = {rate}\nburst = {THROTTLE_BYTES_BURST_SECS}\n"),
            THROTTLE_BYTES_BURST_SECS,
        ),
    };
    let cap = (limit.configured() * burst).max(1.0);
    if let Limit::Messages(_) = limit {
        if n as f64 <= cap + 10.0 {
            bail!(
                "throttle: {n} messages are too few for a burst of {cap:.1} (BENCH_THROTTLE_RATE \
                 x {burst} s); raise BENCH_THROTTLE_MESSAGES"
            );
        }
    }
    // write_config appends `extra` right after the [upstream] keys.
    let extra = format!("{keys}{}", s.cutover_toml);
    let mut env = Vec::new();
    if n < s.messages {
        // The newest n by internal date, over all folders; the rest is skipped.
        env.push(("CUTOVER_SYNC__MAX_ITEMS_PER_MAILBOX".into(), n.to_string()));
    }
    // One message per APPEND batch, so that every message leaves when the bucket lets it
    // go and arrives right then: a batch waits for the tokens of all its messages, and
    // then its last message arrives after the others have been sent.
    env.push(("CUTOVER_SYNC__APPEND_BATCH".into(), "1".into()));
    let job = cutover_job(s, tb, user, &format!("bench-{name}"), &extra, env)?;
    let mut job = job(Phase::Initial);
    job.label = format!("cutover ({name})");
    let before = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let m = run_jobs(&[job], s.timeout).with_context(|| format!("cutover {name} failed"))?;
    let after = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let login = &user[0].email;
    let arr = arrivals(&tb.dest, login)?;
    if arr.len() != n {
        bail!(
            "throttle ({}): {} messages at the destination, {n} expected",
            limit.tag(),
            arr.len()
        );
    }
    let (first, last) = (arr[0].at, arr[n - 1].at);
    if first < before - 1.0 || last > after + 1.0 {
        bail!(
            "throttle ({}): the save times in the Maildir file names ({first:.3} to \
             {last:.3}) are not within the run ({before:.3} to {after:.3})",
            limit.tag()
        );
    }
    let rate = limit.configured();
    // What the bucket charges for a message: a token, or its size.
    let cost = |a: &Arrival| match limit {
        Limit::Messages(_) => 1.0,
        Limit::Bytes(_) => a.vsize as f64,
    };
    // How the bucket behaves (src/throttle.rs): full when the first message leaves (it
    // was created full and nothing took from it before); a message leaves once the
    // bucket holds its cost, or the whole capacity if the cost is larger (then the bucket
    // goes into debt). So once cutover has had to wait for the bucket, every message
    // leaves exactly when the bucket has earned it, and between two such messages j < k
    // the bucket earned, at the configured rate,
    //   earned(j, k) = cost(j..k-1) + min(cost k, capacity) - min(cost j, capacity)
    // unless it overflowed in between (cutover paused longer than the bucket takes to
    // fill). Before that, the bucket's content at the start (the burst) goes unpaced.
    let earned = |j: usize, k: usize| {
        arr[j..k].iter().map(cost).sum::<f64>() + cost(&arr[k]).min(cap) - cost(&arr[j]).min(cap)
    };
    // Replay the bucket over the arrivals: the first message that found it (nearly)
    // empty, i.e. had to wait, starts the paced part; tokens that did not fit into the
    // bucket afterwards were lost to pauses of cutover.
    let slack = rate * 0.005;
    let (mut tokens, mut prev) = (cap, first);
    let (mut paced_from, mut lost) = (None, 0.0);
    for (k, a) in arr.iter().enumerate() {
        tokens += rate * (a.at - prev);
        prev = a.at;
        if tokens > cap {
            if paced_from.is_some() {
                lost += tokens - cap;
            }
            tokens = cap;
        }
        if k > 0 && paced_from.is_none() && tokens < cost(a).min(cap) + slack {
            paced_from = Some(k);
        }
        tokens -= cost(a);
    }
    let Some(k0) = paced_from.filter(|k| *k < n / 2) else {
        bail!(
            "throttle ({}): cutover did not have to wait for the bucket {}: it cannot reach \
             {} on this machine",
            limit.tag(),
            if paced_from.is_some() {
                "before the second half of the run"
            } else {
                "at all"
            },
            limit.configured_shown(),
        );
    };
    let paced_span = last - arr[k0].at;
    if paced_span <= 0.0 {
        bail!(
            "throttle ({}): the messages arrived all at once",
            limit.tag()
        );
    }
    let achieved = earned(k0, n - 1) / paced_span;
    // The same over the whole run, burst excluded: with no pause the last message leaves
    // earned(0, last) - capacity + min(cost first, capacity) after the first.
    let span = last - first;
    let whole = (earned(0, n - 1) + cost(&arr[0]).min(cap) - cap) / span;
    let (total, burst_shown) = match limit {
        Limit::Messages(_) => (format!("{n} messages"), format!("{cap:.1} messages")),
        Limit::Bytes(_) => (
            format!(
                "{n} messages, {:.1} MB",
                arr.iter().map(cost).sum::<f64>() / MB
            ),
            format!("{:.2} MB", cap / MB),
        ),
    };
    println!(
        "  throttle ({}): {total}, one per APPEND, the bucket {burst_shown} (burst = {burst} \
         s); {span:.3} s from the first to the last arrival (cutover ran {:.2} s)",
        limit.tag(),
        m.wall.as_secs_f64(),
    );
    println!(
        "  throttle ({}): paced from message {} on (the first to find the bucket empty, \
         {:.3} s after the first): {}; tokens lost to pauses after that: {:.3} s worth; over \
         the whole run, burst excluded: {} ({:+.1} %)",
        limit.tag(),
        k0 + 1,
        arr[k0].at - first,
        limit.shown(achieved),
        lost / rate,
        limit.shown(whole),
        (whole / rate - 1.0) * 100.0,
    );
    let r = ThrottleResult { limit, achieved };
    println!("  {}", r.line());
    Ok(r)
}

/// The throttle phase: the messages variant, then the bytes variant (unless
/// `BENCH_THROTTLE_BYTES_RATE=0`). Each into a new, empty destination, with the first
/// user's mail.
fn throttle_phase(
    s: &Settings,
    t: &ThrottleSettings,
    tb: &mut Testbed,
    users: &[User],
) -> Vec<Result<ThrottleResult>> {
    let n = t.messages.min(s.messages);
    println!(
        "\nthrottle phase: cutover sync --once, {n} messages of {} into an empty destination",
        users[0].login
    );
    if n < t.messages {
        println!(
            "  note: {} messages per user seeded, fewer than BENCH_THROTTLE_MESSAGES={}",
            s.messages, t.messages
        );
    }
    let mut limits = vec![Limit::Messages(t.rate)];
    if t.bytes_rate > 0 {
        limits.push(Limit::Bytes(t.bytes_rate));
    }
    limits
        .into_iter()
        .map(|limit| throttle_variant(s, tb, &users[..1], n, limit))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/// Replaces the testbed's destination with a new, empty Dovecot in `dir_name` under the
/// testbed, with `users` (for the next round, or the throttle phase).
fn fresh_destination(tb: &mut Testbed, users: &[User], dir_name: &str) -> Result<()> {
    let opts = DovecotOptions {
        flavor: Flavor::Destination,
        users: users
            .iter()
            .map(|u| (u.email.clone(), u.password.clone()))
            .collect(),
        master_user: MASTER_USER.into(),
        master_password: MASTER_PASSWORD.into(),
    };
    let dir = tb.dir.path().join(dir_name);
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
        fresh_destination(tb, users, &format!("dest-{round}"))?;
    }
    let jobs: Box<dyn Fn(Phase) -> Vec<Job>> = match tool {
        Tool::Cutover => {
            let f = cutover_job(
                s,
                tb,
                users,
                &format!("bench-cutover-{round}"),
                &s.cutover_toml,
                Vec::new(),
            )?;
            Box::new(move |p| vec![f(p)])
        }
        Tool::Mbsync => Box::new(mbsync_jobs(s, tb, users, round)?),
    };
    for phase in [Phase::Initial, Phase::Rerun] {
        let m = run_jobs(&jobs(phase), s.timeout)
            .with_context(|| format!("{} {} failed", tool.name(), phase.name()))?;
        let first = round == 0 && phase == Phase::Initial;
        verify(tool, phase, &tb.dest, users, s, source_vsize, first)?;
        if tool == Tool::Cutover {
            let spool = s
                .state
                .join(&format!("bench-cutover-{round}"))
                .join("spool");
            let bytes = du_bytes(&spool);
            let (n, src) = (
                (s.users * s.messages) as f64,
                source_vsize.iter().sum::<u64>() as f64,
            );
            println!(
                "  round {}: cutover spool after the {}: {:.1} MB on disk, {:.3} x the \
                 messages' bytes, or 1.1 x them + {:.0} bytes per message",
                round + 1,
                phase.name(),
                bytes as f64 / 1e6,
                bytes as f64 / src.max(1.0),
                (bytes as f64 - 1.1 * src) / n.max(1.0),
            );
        }
        println!(
            "  round {}: {:<7} {:<16} {:>7.2} s, CPU {:.2} s (machine {:.2} s), peak RSS {:.1} \
             MiB; all {} messages of every user at the destination",
            round + 1,
            tool.name(),
            phase.name(),
            m.wall.as_secs_f64(),
            m.cpu_secs,
            m.machine_cpu_secs,
            mib(m.max_rss_kib),
            s.messages
        );
        rows.push(Row {
            tool,
            phase,
            round,
            m,
        });
    }
    Ok(())
}

/// VmRSS (KiB) of the children of process `pid` (the tool under /usr/bin/time).
fn tool_rss_kib(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| {
            let status = std::fs::read_to_string(format!("/proc/{c}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// Bytes of the files under `path`.
fn du_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Clock ticks per second, the unit of /proc/stat.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
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
    // The testbeds go where tempfile puts them: TMPDIR (run.sh picks a tmpfs).
    let tb_parent = std::env::temp_dir();
    let tb_fs = FsInfo::of(&tb_parent);
    let places = format!(
        "testbeds (the Dovecot servers' mail, configs and sockets; the tools' configs and \
         output) under {}: {}\ntools' state (cutover's spool, mbsync's SyncState) in {}: {}",
        tb_parent.display(),
        tb_fs
            .as_ref()
            .map_or_else(|e| format!("? ({e:#})"), FsInfo::shown),
        s.state.dir.path().display(),
        s.state.fs.shown(),
    );
    println!("{places}");
    if let Some(f) = tb_fs.as_ref().ok().filter(|f| !f.in_memory()) {
        println!(
            "note: the testbeds are not on a tmpfs but on {}: creating and deleting the \
             servers' files can cost more than the tools (see bench/README.md); set \
             BENCH_TMPDIR to a tmpfs",
            f.kind()
        );
    }
    if s.state.fs.in_memory() {
        println!(
            "note: the tools' state is in memory ({}, BENCH_STATE_DIR): cutover's fsyncs \
             cost nothing there",
            s.state.fs.fstype
        );
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
        // The machine's speed drifts over minutes (other guests of the host, turbo
        // budgets): taking turns at going first spreads that over both tools.
        if s.alternate && round > 0 {
            testbeds.reverse();
        }
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

    let mut throttled = Vec::new();
    if let Some(t) = &s.throttle {
        if let Some((_, tb)) = testbeds.iter_mut().find(|(tool, _)| *tool == Tool::Cutover) {
            for r in throttle_phase(&s, t, tb, &users) {
                match r {
                    Ok(r) => throttled.push(r),
                    Err(e) => {
                        eprintln!("\n!!!! THROTTLE PHASE FAILED: {e:#}\n");
                        errors.push(format!("throttle phase: {e:#}"));
                    }
                }
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
    println!("{places}");
    print!("{}", table(&rows, &seeded, &s.tools));
    let r = ratios(&rows);
    if !r.is_empty() {
        println!();
        print!("{r}");
    }
    if !throttled.is_empty() {
        println!();
    }
    for r in &throttled {
        println!("{}", r.line());
        if !r.ok() {
            errors.push(format!(
                "THROTTLE OUTSIDE {:.0} %: {}",
                THROTTLE_TOLERANCE * 100.0,
                r.line()
            ));
        }
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
