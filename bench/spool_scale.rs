//! Spool scale: what message records cost the spool, in time, memory and disk, without
//! any server. One process writes `SPOOL_MAILBOXES` x `SPOOL_MESSAGES` records (and a
//! small body each) in batches of `SPOOL_BATCH`, then takes every one of them through
//! the upstream's life cycle (claim, settle) in batches of `SPOOL_APPEND_BATCH`, like an
//! initial copy does, and prints elapsed time, peak RSS (VmHWM) sampled every 100,000
//! records, and the spool's size on disk.
//!
//! `cargo run --release --example spool_scale` (defaults: 100 x 20,000, batches of 4,096
//! and 64; `SPOOL_CACHE_BYTES` sets sled's page cache, default `[spool] cache_bytes`). It does not belong in CI: at the defaults it takes about a minute.

use std::path::Path;
use std::time::Instant;

use cutover::spool::{Claim, MessageRecord, MessageState, Settle, Spool};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (VmRSS, VmHWM) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                total += du(&e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

fn main() -> anyhow::Result<()> {
    let mailboxes = env("SPOOL_MAILBOXES", 100) as u32;
    let per = env("SPOOL_MESSAGES", 20_000) as u32;
    let batch = env("SPOOL_BATCH", 4096).max(1) as usize;
    let append_batch = env("SPOOL_APPEND_BATCH", 64).max(1) as usize;
    let base = std::env::var("SPOOL_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("cutover-spool-scale-")
        .tempdir_in(base)?;
    let cache = env("SPOOL_CACHE_BYTES", cutover::spool::DEFAULT_CACHE_BYTES);
    let spool = Spool::open_with_cache(&dir.path().join("spool"), cache)?;
    let total = u64::from(mailboxes) * u64::from(per);
    let flags = vec!["\\Seen".to_string()];
    let started = Instant::now();
    let mut written = 0u64;
    let mut next_sample = 100_000u64;
    let mut body_bytes = 0u64;
    let sample = |phase: &str, n: u64, started: &Instant| {
        let (rss, hwm) = rss_kib();
        println!(
            "{phase:8} {n:>9} records  {:>7.1} s  RSS {:>7.1} MiB  peak {:>7.1} MiB",
            started.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    };
    for m in 0..mailboxes {
        let mailbox = format!("user{m:04}@example.org");
        let mut uid = 1;
        while uid <= per {
            let end = (uid + batch as u32).min(per + 1);
            let mut recs = Vec::with_capacity(end as usize - uid as usize);
            for u in uid..end {
                let body = format!("Subject: {mailbox} {u}\r\n\r\nmessage {u} of {mailbox}\r\n");
                body_bytes += body.len() as u64;
                let hash = spool.put_body(body.as_bytes())?;
                recs.push(MessageRecord {
                    uid: u,
                    hash,
                    size: body.len() as u64,
                    internal_date: "17-Jul-1996 02:44:25 -0700".into(),
                    internal_ts: 837_596_665 + i64::from(u),
                    flags: flags.clone(),
                    state: MessageState::Spooled,
                });
            }
            spool.record_new(&mailbox, "INBOX", 1, &recs)?;
            written += recs.len() as u64;
            uid = end;
            if written >= next_sample {
                sample("spool", written, &started);
                next_sample += 100_000;
            }
        }
    }
    spool.flush()?;
    let spooled_s = started.elapsed().as_secs_f64();
    sample("spooled", written, &started);
    let spooled_disk = du(dir.path());

    let started2 = Instant::now();
    let mut done = 0u64;
    next_sample = 100_000;
    for m in 0..mailboxes {
        let mailbox = format!("user{m:04}@example.org");
        let uids: Vec<u32> = (1..=per).collect();
        for (i, chunk) in uids.chunks(append_batch).enumerate() {
            let claim = Claim {
                dest_folder: "INBOX".into(),
                dest_uidvalidity: 7,
                dest_uidnext: 1 + (i * append_batch) as u32,
                marked_ms: 1,
            };
            spool.claim(&mailbox, "INBOX", 1, chunk, &claim, 0)?;
            let outcomes: Vec<(u32, Settle)> = chunk
                .iter()
                .map(|u| {
                    (
                        *u,
                        Settle::Appended {
                            dest_uidvalidity: 7,
                            dest_uid: *u,
                            flags: flags.clone(),
                        },
                    )
                })
                .collect();
            spool.settle(&mailbox, "INBOX", 1, &claim, &outcomes, 0)?;
            done += chunk.len() as u64;
            if done >= next_sample {
                sample("append", done, &started2);
                next_sample += 100_000;
            }
        }
    }
    spool.flush()?;
    sample("appended", done, &started2);
    let appended_s = started2.elapsed().as_secs_f64();
    let disk = du(dir.path());
    let segments = du(&dir.path().join("spool").join("bodies"));
    let (_, hwm) = rss_kib();
    println!(
        "on disk: body segments {:.1} MB ({:.0} bytes per message beyond the bodies), sled {:.1} MB ({:.0} bytes per message)",
        segments as f64 / 1e6,
        segments.saturating_sub(body_bytes) as f64 / total as f64,
        (disk - segments) as f64 / 1e6,
        (disk - segments) as f64 / total as f64,
    );
    println!(
        "{total} records ({mailboxes} x {per}), {body_bytes} body bytes: spooled in {spooled_s:.1} s, \
         claimed and settled in {appended_s:.1} s; peak RSS {:.1} MiB; on disk {:.1} MB after \
         spooling ({:.0} bytes per message beyond the bodies), {:.1} MB at the end ({:.0} bytes per message beyond the bodies)",
        hwm as f64 / 1024.0,
        spooled_disk as f64 / 1e6,
        (spooled_disk.saturating_sub(body_bytes)) as f64 / total as f64,
        disk as f64 / 1e6,
        (disk.saturating_sub(body_bytes)) as f64 / total as f64,
    );
    Ok(())
}
