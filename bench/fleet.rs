//! Mailboxes per hour for a fleet of 1, 2 and 4 shards against a destination that
//! throttles per mailbox, where one appliance's connection limits are the bottleneck.
//!
//! Run it with `bench/fleet.sh` (see `bench/README.md`, section "The fleet benchmark").
//! One [`cutover::testbed::Testbed`]; its source holds `FLEET_MESSAGES` messages for each
//! of `FLEET_USERS` mailboxes. Per fleet size k: a new, empty destination behind the test
//! proxy (`tests/common/proxy.rs`) in its Exchange-like mode with a per-mailbox token
//! bucket of `FLEET_RATE` APPENDs per second, and k `cutover sync --once` processes at
//! once, `[fleet] shard = "i/k"`, each with its own spool and `FLEET_CONNECTIONS`
//! connections per side (the per-appliance limit). The figure is mailboxes per hour from
//! the first start to the last exit; every message is checked at the destination.
//!
//! mbsync cannot run against the throttling proxy (a throttled APPEND is an error to it,
//! not a wait), so it is measured copying the same mailboxes straight into a new
//! destination without throttling, one process per user, `FLEET_CONNECTIONS x k` at a
//! time for the largest k: the machine's own speed, next to which the fleet's figures
//! show what the throttle costs.
//!
//! Environment: `FLEET_USERS` (24), `FLEET_MESSAGES` (40), `FLEET_RATE` (4), `FLEET_BURST`
//! (the rate), `FLEET_CONNECTIONS` (2), `FLEET_SHARDS` (`1,2,4`), `FLEET_CUTOVER_BIN`
//! (`target/release/cutover`), `FLEET_TIMEOUT_SECS` (1800).

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cutover::testbed::{Dovecot, DovecotOptions, Flavor, Testbed, MASTER_PASSWORD, MASTER_USER};
use proxy::{Bucket, Options, Proxy};

struct Settings {
    users: usize,
    messages: usize,
    rate: f64,
    burst: f64,
    connections: usize,
    shards: Vec<u32>,
    cutover_bin: PathBuf,
    timeout: Duration,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a number")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let rate = env_num("FLEET_RATE", 4.0)?;
        let shards = std::env::var("FLEET_SHARDS")
            .unwrap_or_else(|_| "1,2,4".into())
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| anyhow!("FLEET_SHARDS: {s:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        if shards.contains(&0) {
            bail!("FLEET_SHARDS: 0 shards");
        }
        Ok(Settings {
            users: env_num("FLEET_USERS", 24)?,
            messages: env_num("FLEET_MESSAGES", 40)?,
            rate,
            burst: env_num("FLEET_BURST", rate)?,
            connections: env_num("FLEET_CONNECTIONS", 2)?,
            shards,
            cutover_bin: std::env::var_os("FLEET_CUTOVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target/release/cutover")),
            timeout: Duration::from_secs(env_num("FLEET_TIMEOUT_SECS", 1800)?),
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
            login: format!("fleet{i:03}"),
            password: format!("pw-{i:03}"),
            email: format!("fleet{i:03}@example.test"),
        })
        .collect()
}

fn message(user: &str, n: usize) -> Vec<u8> {
    let mut b = cutover::demo::sample_message(user, n, "fleet");
    for line in 0..16 {
        b.extend_from_slice(
            format!("line {line} of message {n}: the quick brown fox jumps over the lazy dog\r\n")
                .as_bytes(),
        );
    }
    b
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
    Dovecot::start_in(&tb.dir.path().join(name), opts, &tb.ca).context("starting a destination")
}

/// One appliance's cutover.toml (and the shared CSV) in `dir`.
fn write_config(
    s: &Settings,
    tb: &Testbed,
    dir: &Path,
    users: &[User],
    port: u16,
    shard: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for u in users {
        csv.push_str(&format!("{},{},{}\n", u.email, u.login, u.password));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv)?;
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
max_connections = {conns}

[upstream]
host = "127.0.0.1"
port = {port}
tls = "none"
auth = "plain"
admin_user = "{mu}"
admin_password = "{mp}"
admin_login = "authzid"
max_connections = {conns}
multiappend = false
messages_per_second = {rate}

[web]
enabled = false

[fleet]
shard = "{shard}"
"#,
        src_port = tb.source.tls_port(),
        ca = tb.ca.ca_pem_path().display(),
        mu = MASTER_USER,
        mp = MASTER_PASSWORD,
        conns = s.connections,
        rate = s.rate,
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// Waits for every child, within the timeout; the seconds from `start` to the last exit.
fn wait_all(s: &Settings, children: &mut [Child], start: Instant, what: &str) -> Result<f64> {
    let mut last = 0.0;
    for c in children.iter_mut() {
        loop {
            if let Some(st) = c.try_wait()? {
                if !st.success() {
                    bail!("{what}: a process exited with {st}");
                }
                last = start.elapsed().as_secs_f64();
                break;
            }
            if start.elapsed() > s.timeout {
                for c in children.iter_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                bail!("{what}: not done within {:?}", s.timeout);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(last)
}

fn check_all(s: &Settings, dest: &Dovecot, users: &[User], what: &str) -> Result<()> {
    for u in users {
        let n = messages_at(dest, &u.email)?;
        if n != s.messages as u64 {
            bail!("{what}: {} has {n} messages, not {}", u.email, s.messages);
        }
    }
    Ok(())
}

/// k shards at once; the wall seconds.
fn run_fleet(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    tb: &Testbed,
    users: &[User],
    k: u32,
) -> Result<f64> {
    let dest = new_destination(tb, users, &format!("dest-{k}"))?;
    let bucket = Bucket {
        per_second: s.rate,
        burst: s.burst,
        ..Bucket::default()
    };
    let px: Proxy = rt.block_on(Proxy::start_with(
        dest.plain_port(),
        Options::forward_all().exchange().throttle(bucket),
    ));
    let mut children = Vec::new();
    let start = Instant::now();
    for i in 0..k {
        let dir = tb.dir.path().join(format!("fleet-{k}/shard-{i}"));
        let config = write_config(s, tb, &dir, users, px.port(), &format!("{i}/{k}"))?;
        children.push(
            Command::new(&s.cutover_bin)
                .arg("--config")
                .arg(&config)
                .args(["sync", "--once"])
                .env("CUTOVER_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("stdout"))?)
                .stderr(std::fs::File::create(dir.join("stderr"))?)
                .spawn()
                .with_context(|| format!("starting {}", s.cutover_bin.display()))?,
        );
    }
    let wall = wait_all(s, &mut children, start, &format!("{k} shards"))?;
    check_all(s, &dest, users, &format!("{k} shards"))?;
    let throttled: u64 = users.iter().map(|u| px.throttles(&u.email)).sum();
    eprintln!("{k} shard(s): {wall:.1} s, {throttled} throttle answers");
    Ok(wall)
}

/// mbsync straight into a new destination, `parallel` processes at a time; wall seconds.
fn run_mbsync(s: &Settings, tb: &Testbed, users: &[User], parallel: usize) -> Result<f64> {
    let dest = new_destination(tb, users, "dest-mbsync")?;
    let ca = tb.ca.ca_pem_path().display().to_string();
    let dir = tb.dir.path().join("mbsync");
    std::fs::create_dir_all(&dir)?;
    let start = Instant::now();
    let mut running: Vec<Child> = Vec::new();
    for u in users {
        while running.len() >= parallel.max(1) {
            let mut i = 0;
            while i < running.len() {
                if let Some(st) = running[i].try_wait()? {
                    if !st.success() {
                        bail!("mbsync exited with {st}");
                    }
                    // Exited already: wait() only reaps it.
                    let _ = running.remove(i).wait();
                } else {
                    i += 1;
                }
            }
            if start.elapsed() > s.timeout {
                bail!("mbsync: not done within {:?}", s.timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = dir.join(format!("state-{}", u.login));
        std::fs::create_dir_all(&state)?;
        let account = |name: &str, port: u16, login: &str| {
            format!(
                "IMAPAccount {name}\nHost localhost\nPort {port}\nUser \"{login}\"\nPass \"{}\"\n\
                 SSLType IMAPS\nSystemCertificates no\nCertificateFile \"{ca}\"\nPipelineDepth 50\n\n\
                 IMAPStore {name}\nAccount {name}\n\n",
                u.password
            )
        };
        let rc = format!(
            "{}{}Channel c\nFar :far:\nNear :near:\nPatterns INBOX\nCreate Near\nExpunge None\n\
             Sync Pull\nCopyArrivalDate yes\nSyncState \"{}/\"\n",
            account("far", tb.source.tls_port(), &u.login),
            account("near", dest.tls_port(), &u.email),
            state.display()
        );
        let rc_path = dir.join(format!("mbsyncrc-{}", u.login));
        std::fs::write(&rc_path, rc)?;
        running.push(
            Command::new("/usr/bin/mbsync")
                .arg("-c")
                .arg(&rc_path)
                .arg("-q")
                .arg("c")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("err-{}", u.login)))?)
                .spawn()
                .context("starting /usr/bin/mbsync")?,
        );
    }
    let wall = wait_all(s, &mut running, start, "mbsync")?;
    check_all(s, &dest, users, "mbsync")?;
    Ok(wall)
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    if !s.cutover_bin.is_file() {
        bail!(
            "{} is missing: cargo build --release",
            s.cutover_bin.display()
        );
    }
    let us = users(s.users);
    let refs: Vec<(&str, &str, &str)> = us
        .iter()
        .map(|u| (u.login.as_str(), u.password.as_str(), u.email.as_str()))
        .collect();
    let tb = Testbed::start(&refs).context("starting the testbed")?;
    for u in &us {
        for i in 0..s.messages {
            tb.source.deliver(
                &u.login,
                "INBOX",
                &message(&u.login, i),
                &[],
                Some(1_600_000_000 + i as i64),
            )?;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &k in &s.shards {
        rows.push((k, run_fleet(&s, &rt, &tb, &us, k)?));
    }
    let widest = s.shards.iter().copied().max().unwrap_or(1) as usize;
    let mbsync = run_mbsync(&s, &tb, &us, widest * s.connections)?;
    let per_hour = |wall: f64| s.users as f64 / wall * 3600.0;
    println!(
        "\n{} mailboxes x {} messages; destination throttled to {}/s per mailbox (burst {}); \
         {} connections per side per appliance\n",
        s.users, s.messages, s.rate, s.burst, s.connections
    );
    println!("| shards | wall s | mailboxes/hour | vs 1 shard | vs mbsync (unthrottled) |");
    println!("| --- | --- | --- | --- | --- |");
    let one = rows.first().map(|r| r.1).unwrap_or(1.0);
    for (k, wall) in &rows {
        println!(
            "| {k} | {wall:.1} | {:.0} | {:.2}x | {:.2}x |",
            per_hour(*wall),
            one / wall,
            mbsync / wall
        );
    }
    println!(
        "| mbsync, {} at once, no throttle | {mbsync:.1} | {:.0} | | 1.00x |",
        widest * s.connections,
        per_hour(mbsync)
    );
    Ok(())
}
