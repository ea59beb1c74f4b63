//! The Maildir source against the IMAP source, on the same mail: `cutover sync --once`
//! reading a source Dovecot's Maildir files straight from disk, then the same cutover
//! reading the same Dovecot over IMAP (implicit TLS), and mbsync (IMAP to IMAP) as the
//! yardstick, each into its own destination mailboxes of one destination Dovecot.
//!
//! Run with `bench/maildir.sh` (release build); see bench/README.md, "Maildir source".
//! Settings: `BENCH_USERS` (default 3), `BENCH_MESSAGES` per user (default 1000),
//! `BENCH_SEED`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cutover::testbed::Testbed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FOLDERS: [(&str, u32); 4] = [
    ("INBOX", 50),
    ("INBOX.Sent", 25),
    ("INBOX.Work", 15),
    ("INBOX.Lists", 10),
];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A plain-text message of about `size` bytes (2 % of them a large one with a base64
/// attachment of random bytes), CRLF line endings.
fn message(rng: &mut StdRng, user: &str, n: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "migration",
        "mailbox",
        "server",
        "the",
        "and",
        "project",
        "meeting",
        "report",
        "of",
        "to",
        "budget",
        "invoice",
    ];
    let mut s = format!(
        "Received: from mx.example.test by legacy.example.test; Mon, 1 Jan 2024 10:00:00 +0000\r\n\
         From: Sender {n} <sender{n}@example.test>\r\nTo: {user}@example.test\r\n\
         Subject: message {n} for {user}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
         Message-ID: <{n}.{user}@example.test>\r\nMIME-Version: 1.0\r\n"
    );
    let big = rng.gen_range(0..100) < 2;
    let target = if big {
        rng.gen_range(200_000..2_000_000)
    } else {
        rng.gen_range(2_000..50_000)
    };
    if big {
        s.push_str("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        let raw: Vec<u8> = (0..target * 3 / 4).map(|_| rng.gen()).collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for line in b64.as_bytes().chunks(76) {
            s.push_str(std::str::from_utf8(line).unwrap_or(""));
            s.push_str("\r\n");
        }
        s.push_str("--b--\r\n");
    } else {
        s.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
        let mut line = 0;
        while s.len() < target {
            s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
            line += 1;
            s.push_str(if line % 12 == 0 { "\r\n" } else { " " });
        }
        s.push_str("\r\n");
    }
    s.into_bytes()
}

/// Runs `cmd` under /usr/bin/time: (wall seconds, max RSS in KiB).
fn timed(cmd: Command, label: &str, dir: &Path) -> Result<(f64, u64)> {
    let time_out = dir.join(format!("{label}.time"));
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%e %M").arg("-o").arg(&time_out);
    t.arg(cmd.get_program());
    t.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    let log = std::fs::File::create(dir.join(format!("{label}.log")))?;
    let started = Instant::now();
    let status = t
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running {label}"))?;
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "{label} failed: see {}",
            dir.join(format!("{label}.log")).display()
        );
    }
    let text = std::fs::read_to_string(&time_out)?;
    let rss = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((wall, rss))
}

/// Messages at the destination for `email`, over every folder.
fn dest_count(tb: &Testbed, email: &str) -> Result<u64> {
    let out = tb
        .dest
        .doveadm(&["mailbox", "status", "-u", email, "-t", "messages", "*"])?;
    Ok(out
        .trim()
        .strip_prefix("messages=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

fn main() -> Result<()> {
    let users = env_num("BENCH_USERS", 3) as usize;
    let per_user = env_num("BENCH_MESSAGES", 1000) as usize;
    let mut rng = StdRng::seed_from_u64(env_num("BENCH_SEED", 14));
    let logins: Vec<String> = (0..users).map(|u| format!("user{u}")).collect();
    // One source user each; three destination mailboxes each (one per run).
    let mut tuples: Vec<(String, String, String)> = Vec::new();
    for l in &logins {
        for kind in ["maildir", "imap", "mbsync"] {
            tuples.push((
                format!("{l}-{kind}"),
                format!("{l}-pw"),
                format!("{l}@{kind}.test"),
            ));
        }
        tuples.push((l.clone(), format!("{l}-pw"), format!("{l}@source.test")));
    }
    let refs: Vec<(&str, &str, &str)> = tuples
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    let tb = Testbed::start(&refs)?;
    let work = tb.dir.path().join("bench");
    std::fs::create_dir_all(&work)?;

    // Seed the source Maildirs, then let Dovecot index them (and write dovecot-uidlist).
    let mut bytes = 0u64;
    for l in &logins {
        for f in FOLDERS
            .iter()
            .filter(|f| f.0 != "INBOX" && f.0 != "INBOX.Sent")
        {
            tb.source.add_folder(l, f.0)?;
        }
        for n in 0..per_user {
            let pick = rng.gen_range(0..100);
            let mut acc = 0;
            let folder = FOLDERS
                .iter()
                .find(|f| {
                    acc += f.1;
                    pick < acc
                })
                .map_or("INBOX", |f| f.0);
            let body = message(&mut rng, l, n);
            bytes += body.len() as u64;
            let flags: &[&str] = match n % 4 {
                0 => &["\\Seen"],
                1 => &["\\Seen", "\\Answered"],
                2 => &["\\Flagged", "Work"],
                _ => &[],
            };
            tb.source.deliver(
                l,
                folder,
                &body,
                flags,
                Some(1_600_000_000 + n as i64 * 900),
            )?;
        }
        tb.source
            .doveadm(&["mailbox", "status", "-u", l, "messages", "*"])?;
    }
    let total = (users * per_user) as u64;
    eprintln!(
        "seeded {users} users x {per_user} messages, {:.1} MiB",
        bytes as f64 / 1048576.0
    );
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/cutover");
    let bin = std::env::var_os("CUTOVER_BIN").map_or(bin, PathBuf::from);

    // cutover configs: the demo's (IMAP source, implicit TLS), one with a Maildir source.
    let rows = |kind: &str| -> Vec<(String, String, String)> {
        logins
            .iter()
            .map(|l| (l.clone(), format!("{l}-pw"), format!("{l}@{kind}.test")))
            .collect()
    };
    let write = |kind: &str| -> Result<PathBuf> {
        let r = rows(kind);
        let refs: Vec<(&str, &str, &str)> = r
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        let tls = cutover::demo::DemoTls {
            source_implicit: true,
            dest_implicit: true,
        };
        cutover::demo::write_config(&tb, &work.join(kind), &refs, tls, "")
    };
    let imap_cfg = write("imap")?;
    let md_cfg = write("maildir")?;
    let roots = work.join("roots");
    std::fs::create_dir_all(&roots)?;
    for l in &logins {
        let out = tb.source.doveadm(&["mailbox", "path", "-u", l, "INBOX"])?;
        std::os::unix::fs::symlink(out.trim(), roots.join(l))?;
    }
    let text = std::fs::read_to_string(&md_cfg)?;
    let start = text.find("[source]\n").context("[source] in the config")?;
    let end = start + text[start..].find("\n\n").context("end of [source]")?;
    let mut new = text[..start].to_string();
    write!(
        new,
        "[source]\nkind = \"maildir\"\npath = \"{}/{{user}}\"\nmax_connections = 4{}",
        roots.display(),
        &text[end..]
    )?;
    std::fs::write(&md_cfg, new)?;

    // mbsync: one process per user, in parallel, as in bench.rs.
    let ca = tb.ca.ca_pem_path().display().to_string();
    let mut mbsync_cmds = Vec::new();
    for l in &logins {
        let state = work.join(format!("mbsync-state-{l}"));
        std::fs::create_dir_all(&state)?;
        let account = |name: &str, port: u16, login: &str| {
            format!(
                "IMAPAccount {name}\nHost localhost\nPort {port}\nUser \"{login}\"\nPass \"{l}-pw\"\n\
                 SSLType IMAPS\nSystemCertificates no\nCertificateFile \"{ca}\"\nPipelineDepth 50\n\n\
                 IMAPStore {name}\nAccount {name}\n\n"
            )
        };
        let rc = format!(
            "{}{}Channel {l}\nFar :far:\nNear :near:\nPatterns INBOX * !Archive \"!Sent Items\" \
             \"!Deleted Items\" \"!Junk Email\" !Drafts\nCreate Near\nExpunge None\nSync All\n\
             CopyArrivalDate yes\nSyncState \"{}/\"\n",
            account("far", tb.source.tls_port(), l),
            account("near", tb.dest.tls_port(), &format!("{l}@mbsync.test")),
            state.display()
        );
        let path = work.join(format!("mbsyncrc-{l}"));
        std::fs::write(&path, rc)?;
        mbsync_cmds.push((l.clone(), path));
    }

    // The source files once through the page cache, so that no run pays for the first read.
    for l in &logins {
        let mut stack = vec![roots.join(l).canonicalize()?];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else {
                    let _ = std::fs::read(&p)?;
                }
            }
        }
    }

    let cutover_cmd = |cfg: &Path| {
        let mut c = Command::new(&bin);
        c.arg("--config").arg(cfg).args(["sync", "--once"]);
        c.env("CUTOVER_LOG", "warn");
        c
    };
    let mut rows_out: Vec<(&str, f64, u64, u64)> = Vec::new();
    let (t, rss) = timed(cutover_cmd(&md_cfg), "cutover-maildir", &work)?;
    let n: u64 = logins
        .iter()
        .map(|l| dest_count(&tb, &format!("{l}@maildir.test")))
        .sum::<Result<u64>>()?;
    rows_out.push(("cutover, Maildir source", t, rss, n));
    let (t, rss) = timed(cutover_cmd(&imap_cfg), "cutover-imap", &work)?;
    let n: u64 = logins
        .iter()
        .map(|l| dest_count(&tb, &format!("{l}@imap.test")))
        .sum::<Result<u64>>()?;
    rows_out.push(("cutover, IMAP source", t, rss, n));
    // mbsync: all users at once; wall time of the slowest, RSS of the largest.
    let started = Instant::now();
    let mut children = Vec::new();
    for (l, rc) in &mbsync_cmds {
        let log = std::fs::File::create(work.join(format!("mbsync-{l}.log")))?;
        children.push(
            Command::new("/usr/bin/time")
                .arg("-f")
                .arg("%e %M")
                .arg("-o")
                .arg(work.join(format!("mbsync-{l}.time")))
                .arg("/usr/bin/mbsync")
                .arg("-c")
                .arg(rc)
                .arg("-a")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
    }
    let mut rss = 0u64;
    for (mut c, (l, _)) in children.into_iter().zip(&mbsync_cmds) {
        let st = c.wait()?;
        if !st.success() {
            bail!(
                "mbsync {l} failed: see {}",
                work.join(format!("mbsync-{l}.log")).display()
            );
        }
        let t = std::fs::read_to_string(work.join(format!("mbsync-{l}.time")))?;
        rss = rss.max(
            t.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        );
    }
    let t = started.elapsed().as_secs_f64();
    let n: u64 = logins
        .iter()
        .map(|l| dest_count(&tb, &format!("{l}@mbsync.test")))
        .sum::<Result<u64>>()?;
    rows_out.push(("mbsync (IMAP to IMAP)", t, rss, n));

    let mbsync_t = rows_out[2].1;
    println!(
        "\n{users} users x {per_user} messages ({:.1} MiB), initial copy, same machine, same run\n",
        bytes as f64 / 1048576.0
    );
    println!(
        "{:<26} {:>9} {:>12} {:>11} {:>10} {:>12}",
        "tool", "seconds", "msgs/s", "MiB/s", "max RSS", "time/mbsync"
    );
    for (name, t, rss, n) in &rows_out {
        println!(
            "{name:<26} {t:>9.2} {:>12.0} {:>11.1} {:>7} MiB {:>12.2}",
            *n as f64 / t,
            bytes as f64 / 1048576.0 / t,
            rss / 1024,
            t / mbsync_t
        );
        if *n != total {
            println!("  WARNING: {n} of {total} messages at the destination");
        }
    }
    println!(
        "\nMaildir source / IMAP source, time: {:.2}",
        rows_out[0].1 / rows_out[1].1
    );
    Ok(())
}
