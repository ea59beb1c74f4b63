//! Exchange's per-mailbox budget: how much of it cutover uses, and how often it is
//! throttled once it has found it.
//!
//! Run it with `bench/budget.sh` (see `bench/README.md`, section "The budget benchmark").
//! One [`cutover::testbed::Testbed`]; its source is seeded with `BUDGET_MESSAGES` small
//! messages for each of `BUDGET_USERS` mailboxes, written straight into the Maildirs. The
//! test proxy (`tests/common/proxy.rs`) sits in front of the destination in its
//! Exchange-like mode with a per-mailbox token bucket (`BUDGET_RATE` APPENDs per second,
//! `BUDGET_BURST` saved up): past it an APPEND gets `NO Request is throttled. Suggested
//! Backoff Time: N milliseconds`. Then, per variant, one `cutover sync --once` into a new,
//! empty destination through a new proxy:
//!
//! * `aimd`: no `messages_per_second`; cutover finds the budget by itself.
//! * `configured`: `messages_per_second = BUDGET_RATE`, the budget told from the start.
//!
//! The proxy records every APPEND it saw, when, on which connection and what it answered.
//! From that the benchmark reports the achieved rate against the allowance (`BUDGET_USERS x
//! BUDGET_RATE`) and the throttles per mailbox per 10 minutes, both after the first
//! `BUDGET_WARMUP_SECS` (default 60), and checks that every message arrived.
//!
//! Environment: `BUDGET_USERS` (20), `BUDGET_RATE` (20), `BUDGET_BURST` (2 x rate),
//! `BUDGET_SECS` (how long the copy should take at the budget, 300; sets the default of
//! `BUDGET_MESSAGES`, rate x secs per mailbox), `BUDGET_VARIANTS` (`aimd,configured`),
//! `BUDGET_WARMUP_SECS` (60), `BUDGET_CUTOVER_BIN` (`target/release/cutover`),
//! `BUDGET_CUTOVER_TOML` (appended to the generated cutover.toml), `BUDGET_TIMEOUT_SECS`.

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cutover::testbed::{Dovecot, DovecotOptions, Flavor, Testbed, MASTER_PASSWORD, MASTER_USER};
use proxy::{Action, AppendEvent, Bucket, Options, Proxy};

struct Settings {
    users: usize,
    rate: f64,
    burst: f64,
    messages: usize,
    warmup: f64,
    variants: Vec<Variant>,
    cutover_bin: PathBuf,
    extra_toml: String,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Aimd,
    Configured,
}

impl Variant {
    fn tag(self) -> &'static str {
        match self {
            Variant::Aimd => "aimd",
            Variant::Configured => "configured",
        }
    }
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_f64(name: &str, default: f64) -> Result<f64> {
    match env_str(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| anyhow!("{name}={v:?} is not a non-negative number")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let users = env_f64("BUDGET_USERS", 20.0)? as usize;
        let rate = env_f64("BUDGET_RATE", 20.0)?;
        let burst = env_f64("BUDGET_BURST", rate * 2.0)?;
        let secs = env_f64("BUDGET_SECS", 300.0)?;
        let messages = env_f64("BUDGET_MESSAGES", (rate * secs).ceil())? as usize;
        if users == 0 || rate <= 0.0 || messages == 0 {
            bail!("BUDGET_USERS, BUDGET_RATE and BUDGET_MESSAGES must be positive");
        }
        let variants = match env_str("BUDGET_VARIANTS") {
            None => vec![Variant::Aimd, Variant::Configured],
            Some(v) => v
                .split(',')
                .map(|t| match t.trim() {
                    "aimd" => Ok(Variant::Aimd),
                    "configured" => Ok(Variant::Configured),
                    other => Err(anyhow!("BUDGET_VARIANTS: unknown variant {other:?}")),
                })
                .collect::<Result<_>>()?,
        };
        let default_timeout = (messages as f64 / rate * 3.0 + 300.0).min(86_400.0);
        Ok(Settings {
            users,
            rate,
            burst,
            messages,
            warmup: env_f64("BUDGET_WARMUP_SECS", 60.0)?,
            variants,
            cutover_bin: env_str("BUDGET_CUTOVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target/release/cutover")),
            extra_toml: env_str("BUDGET_CUTOVER_TOML").unwrap_or_default(),
            timeout: Duration::from_secs_f64(env_f64("BUDGET_TIMEOUT_SECS", default_timeout)?),
        })
    }
}

struct User {
    login: String,
    password: String,
    email: String,
}

fn users(n: usize) -> Vec<User> {
    (0..n)
        .map(|i| User {
            login: format!("user{i:02}"),
            password: format!("pw-{i:02}"),
            email: format!("user{i:02}@example.test"),
        })
        .collect()
}

/// A small text message (about 1.5 KB), unique per user and number.
fn message(user: &str, n: usize) -> Vec<u8> {
    let mut b = cutover::demo::sample_message(user, n, "budget");
    for line in 0..16 {
        b.extend_from_slice(
            format!("line {line} of message {n}: the quick brown fox jumps over the lazy dog\r\n")
                .as_bytes(),
        );
    }
    b
}

/// Seeds every user's INBOX, users in parallel, then lets Dovecot index the new mail so
/// that the copy does not pay for it.
fn seed(s: &Settings, src: &Dovecot, users: &[User]) -> Result<u64> {
    let bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = users
            .chunks(users.len().div_ceil(2))
            .map(|chunk| {
                let bytes = &bytes;
                scope.spawn(move || -> Result<()> {
                    for u in chunk {
                        for i in 0..s.messages {
                            let m = message(&u.login, i);
                            bytes.fetch_add(m.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            src.deliver(
                                &u.login,
                                "INBOX",
                                &m,
                                &[],
                                Some(1_600_000_000 + i as i64),
                            )?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("seeding panicked"))??;
        }
        Ok(())
    })?;
    for u in users {
        src.doveadm(&["mailbox", "status", "-u", &u.login, "messages", "INBOX"])?;
    }
    Ok(bytes.into_inner())
}

fn messages_at(d: &Dovecot, user: &str) -> Result<u64> {
    let out = d.doveadm(&["mailbox", "status", "-u", user, "-t", "messages", "*"])?;
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix("messages="))
        .ok_or_else(|| anyhow!("no messages= in doveadm's answer {out:?}"))?
        .parse()
        .with_context(|| format!("doveadm's answer {out:?}"))
}

fn new_destination(tb: &Testbed, users: &[User], name: &str) -> Result<Dovecot> {
    let opts = DovecotOptions {
        flavor: Flavor::Destination,
        users: users
            .iter()
            .map(|u| (u.email.clone(), u.password.clone()))
            .collect(),
        master_user: MASTER_USER.into(),
        master_password: MASTER_PASSWORD.into(),
    };
    Dovecot::start_in(&tb.dir.path().join(name), opts, &tb.ca).context("starting a new destination")
}

/// cutover.toml and mailboxes.csv for a run through the proxy on `port`.
fn write_config(
    s: &Settings,
    tb: &Testbed,
    dir: &Path,
    users: &[User],
    port: u16,
    variant: Variant,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for u in users {
        csv.push_str(&format!("{},{},{}\n", u.email, u.login, u.password));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv)?;
    let rate = match variant {
        Variant::Aimd => String::new(),
        Variant::Configured => format!("messages_per_second = {}\n", s.rate),
    };
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
host = "127.0.0.1"
port = {port}
tls = "none"
auth = "plain"
admin_user = "{mu}"
admin_password = "{mp}"
admin_login = "authzid"
# One session per mailbox, all at once: the budget is per mailbox.
max_connections = {conns}
multiappend = false
{rate}
{extra}
"#,
        src_port = tb.source.tls_port(),
        ca = tb.ca.ca_pem_path().display(),
        mu = MASTER_USER,
        mp = MASTER_PASSWORD,
        conns = users.len(),
        extra = s.extra_toml,
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// What one mailbox's APPENDs looked like at the proxy.
#[derive(Default)]
struct MailboxFigures {
    /// Forwarded (saved) after the warm-up.
    saved: u64,
    /// Seconds from the end of the warm-up to the mailbox's last saved APPEND.
    span: f64,
    /// Throttle answers after the warm-up, and in it.
    answers: u64,
    answers_warmup: u64,
    /// Throttle episodes (connections that got a throttle: cutover pauses and reconnects
    /// once per episode, however many pipelined APPENDs the answer covered), likewise.
    episodes: u64,
    episodes_warmup: u64,
}

struct Outcome {
    variant: Variant,
    wall: f64,
    first_to_last: f64,
    allowance: f64,
    /// Saved APPENDs per second after the warm-up, summed over the mailboxes (each over its
    /// own span, so that mailboxes done early do not count as idle).
    achieved: f64,
    /// Per mailbox, as a share of its budget: min and max.
    share_min: f64,
    share_max: f64,
    whole_run: f64,
    episodes_per_10min_mean: f64,
    episodes_per_10min_max: f64,
    answers_per_10min_mean: f64,
    episodes_warmup_mean: f64,
    measured: f64,
    cpu_busy: f64,
    load: (String, String),
}

fn figures<'a>(
    s: &Settings,
    users: &'a [User],
    events: &'a [AppendEvent],
) -> Result<(Vec<MailboxFigures>, f64)> {
    let t0 = events
        .iter()
        .map(|e| e.at)
        .min()
        .ok_or_else(|| anyhow!("the proxy saw no APPEND"))?;
    let warm_end = t0 + Duration::from_secs_f64(s.warmup);
    let mut per: BTreeMap<&'a str, MailboxFigures> = users
        .iter()
        .map(|u| (u.email.as_str(), MailboxFigures::default()))
        .collect();
    let mut seen_conns: HashSet<u64> = HashSet::new();
    let mut last_saved: BTreeMap<&'a str, Instant> = BTreeMap::new();
    for e in events {
        let Some(f) = per.get_mut(e.user.as_str()) else {
            bail!("an APPEND for an unknown user {:?}", e.user);
        };
        let warm = e.at < warm_end;
        match e.action {
            Action::Forward => {
                if !warm {
                    f.saved += 1;
                }
                let l = last_saved.entry(e.user.as_str()).or_insert(e.at);
                *l = (*l).max(e.at);
            }
            Action::Throttle { .. } | Action::ThrottleBye { .. } => {
                let new = seen_conns.insert(e.conn);
                if warm {
                    f.answers_warmup += 1;
                    f.episodes_warmup += u64::from(new);
                } else {
                    f.answers += 1;
                    f.episodes += u64::from(new);
                }
            }
            other => bail!("the proxy answered {other:?}, not part of this benchmark"),
        }
    }
    let mut last = t0;
    for (user, f) in per.iter_mut() {
        if let Some(l) = last_saved.get(user) {
            f.span = l.saturating_duration_since(warm_end).as_secs_f64();
            last = last.max(*l);
        }
    }
    Ok((
        per.into_values().collect(),
        last.duration_since(t0).as_secs_f64(),
    ))
}

fn run_variant(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    tb: &Testbed,
    users: &[User],
    variant: Variant,
) -> Result<Outcome> {
    let dest = new_destination(tb, users, &format!("dest-{}", variant.tag()))?;
    let bucket = Bucket {
        per_second: s.rate,
        burst: s.burst,
        ..Bucket::default()
    };
    let px: Proxy = rt.block_on(Proxy::start_with(
        dest.plain_port(),
        Options::forward_all().exchange().throttle(bucket),
    ));
    let dir = tb.dir.path().join(format!("run-{}", variant.tag()));
    let config = write_config(s, tb, &dir, users, px.port(), variant)?;
    let out = std::fs::File::create(dir.join("stdout"))?;
    let err = std::fs::File::create(dir.join("stderr"))?;
    let load0 = loadavg();
    let cpu0 = cpu_jiffies();
    let start = Instant::now();
    let mut child = Command::new(&s.cutover_bin)
        .arg("--config")
        .arg(&config)
        .args(["sync", "--once"])
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", s.cutover_bin.display()))?;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > s.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{}: cutover did not finish within {:?}",
                variant.tag(),
                s.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = cpu_jiffies();
    let load1 = loadavg();
    if !status.success() {
        let tail = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(20).collect();
        bail!(
            "{}: cutover exited with {status}:\n{}",
            variant.tag(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    for u in users {
        let n = messages_at(&dest, &u.email)?;
        if n != s.messages as u64 {
            bail!(
                "{}: {} holds {n} messages, {} were seeded",
                variant.tag(),
                u.email,
                s.messages
            );
        }
    }
    let events = px.events();
    drop(px);
    let (per, first_to_last) = figures(s, users, &events)?;
    let measured: f64 = per.iter().map(|f| f.span).sum::<f64>() / per.len() as f64;
    if measured < 60.0 {
        bail!(
            "{}: only {measured:.0} s per mailbox after the warm-up; raise BUDGET_SECS",
            variant.tag()
        );
    }
    let rate_of = |f: &MailboxFigures| f.saved as f64 / f.span.max(1e-9);
    let shares: Vec<f64> = per.iter().map(|f| rate_of(f) / s.rate).collect();
    let per10 = |x: u64, f: &MailboxFigures| x as f64 / f.span.max(1e-9) * 600.0;
    let ep: Vec<f64> = per.iter().map(|f| per10(f.episodes, f)).collect();
    let an: Vec<f64> = per.iter().map(|f| per10(f.answers, f)).collect();
    let n = per.len() as f64;
    let cpu_busy = match (cpu0, cpu1) {
        (Some((b0, t0)), Some((b1, t1))) => (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        _ => f64::NAN,
    };
    let total_saved = (s.messages * users.len()) as f64;
    Ok(Outcome {
        variant,
        wall,
        first_to_last,
        allowance: s.rate * n,
        achieved: per.iter().map(rate_of).sum(),
        share_min: shares.iter().cloned().fold(f64::INFINITY, f64::min),
        share_max: shares.iter().cloned().fold(0.0, f64::max),
        whole_run: total_saved / first_to_last.max(1e-9),
        episodes_per_10min_mean: ep.iter().sum::<f64>() / n,
        episodes_per_10min_max: ep.iter().cloned().fold(0.0, f64::max),
        answers_per_10min_mean: an.iter().sum::<f64>() / n,
        episodes_warmup_mean: per.iter().map(|f| f.episodes_warmup as f64).sum::<f64>() / n,
        measured,
        cpu_busy,
        load: (load0, load1),
    })
}

impl Outcome {
    fn lines(&self, s: &Settings) -> String {
        format!(
            "budget ({v}): achieved {a:.1} msg/s = {p:.1} % of the {al:.0} msg/s allowance \
             (per mailbox {mn:.1}-{mx:.1} %); throttles per mailbox per 10 min: {em:.2} \
             (max {ex:.2})  [after the first {w:.0} s]\n  \
             ({v}) cutover ran {wall:.1} s, {ftl:.1} s from the first to the last APPEND, \
             whole run {wr:.1} msg/s = {wp:.1} %; measured {ms:.0} s per mailbox after the \
             warm-up; throttle answers (pipelined APPENDs included) {am:.2} per mailbox per \
             10 min; in the warm-up {ew:.1} throttles per mailbox; machine {cpu:.0} % busy, \
             load {l0} -> {l1}",
            v = self.variant.tag(),
            a = self.achieved,
            p = self.achieved / self.allowance * 100.0,
            al = self.allowance,
            mn = self.share_min * 100.0,
            mx = self.share_max * 100.0,
            em = self.episodes_per_10min_mean,
            ex = self.episodes_per_10min_max,
            w = s.warmup,
            wall = self.wall,
            ftl = self.first_to_last,
            wr = self.whole_run,
            wp = self.whole_run / self.allowance * 100.0,
            ms = self.measured,
            am = self.answers_per_10min_mean,
            ew = self.episodes_warmup_mean,
            cpu = self.cpu_busy * 100.0,
            l0 = self.load.0,
            l1 = self.load.1,
        )
    }
}

fn main() -> Result<()> {
    let mut s = Settings::from_env()?;
    if !s.cutover_bin.is_file() {
        bail!(
            "{} not found: cargo build --release --bins, or set BUDGET_CUTOVER_BIN",
            s.cutover_bin.display()
        );
    }
    // Each run starts in its own directory.
    s.cutover_bin = std::fs::canonicalize(&s.cutover_bin)?;
    let users = users(s.users);
    let tuples: Vec<(&str, &str, &str)> = users
        .iter()
        .map(|u| (u.login.as_str(), u.password.as_str(), u.email.as_str()))
        .collect();
    println!(
        "budget: {} mailboxes x {} APPEND/s (burst {}) = {} msg/s allowance; {} messages per \
         mailbox; {} cores, load {}",
        s.users,
        s.rate,
        s.burst,
        s.rate * s.users as f64,
        s.messages,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let tb = Testbed::start(&tuples).context("starting the testbed")?;
    let t = Instant::now();
    let bytes = seed(&s, &tb.source, &users)?;
    println!(
        "seeded {} messages ({:.1} MB) in {:.1} s",
        s.messages * s.users,
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    let mut failed = false;
    for &v in &s.variants {
        match run_variant(&s, &rt, &tb, &users, v) {
            Ok(o) => {
                println!("{}", o.lines(&s));
                results.push(o);
            }
            Err(e) => {
                println!("budget ({}): FAILED: {e:#}", v.tag());
                failed = true;
            }
        }
    }
    println!();
    for o in &results {
        println!("{}", o.lines(&s).lines().next().unwrap_or_default());
    }
    if failed {
        bail!("a variant failed");
    }
    Ok(())
}
