//! `cutover status`, `report`, `complete` and the controls (`retry-errors`, `pause`,
//! `resume`, `sync-now`): what an admin runs beside
//! the daemon. Each works whether the daemon runs (through its snapshot file and request
//! directory, see [`super::report`] and [`super::requests`]) or not (on the spool).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use std::sync::Arc;

use super::report::{self, Snapshot};
use super::requests::{self, Request, RequestKind};
use super::scheduler::{now_ms, Scheduler};
use super::{is_locked, load};
use crate::engine::Engine;
use crate::spool::Spool;

/// Where the rows come from.
enum Source {
    Daemon(Snapshot),
    Spool(Snapshot),
    /// No spool yet: nothing has run.
    Nothing(Vec<String>),
}

fn rows(config: &Path) -> anyhow::Result<Source> {
    let (cfg, accounts) = load(config)?;
    let expected: Vec<String> = accounts.iter().map(|a| a.email.clone()).collect();
    let dir = &cfg.spool.path;
    if !dir.exists() {
        return Ok(Source::Nothing(expected));
    }
    match Spool::open(dir) {
        Ok(spool) => Ok(Source::Spool(report::from_spool(&spool, &expected)?)),
        Err(e) if is_locked(&e) => {
            // A daemon that has just started writes its first snapshot within moments.
            let path = report::snapshot_path(dir);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !path.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let snap = report::read_snapshot(&path).map_err(|e| {
                anyhow::anyhow!(
                    "the spool is in use (by the daemon?) and its status file {} cannot be read: {e}",
                    path.display()
                )
            })?;
            // Rows are rewritten when they change: the current stretch goes on since.
            let mut snap = snap;
            let now = now_ms() / 1000;
            for row in &mut snap.mailboxes {
                Arc::make_mut(row).age_to(now);
            }
            Ok(Source::Daemon(snap))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot open the spool at {}: {e}",
            dir.display()
        )),
    }
}

/// `cutover status [--json]`.
pub fn status(config: &Path, json: bool) -> anyhow::Result<bool> {
    let (snap, note) = match rows(config)? {
        Source::Daemon(s) => {
            let mut note = format!(
                "from the running daemon (pid {}), last change {}",
                s.pid,
                report::time(Some(s.written_unix))
            );
            if let Some(p) = s.spool_scan {
                note.push_str(&format!(
                    "; still reading the spool: {}/{} mailboxes, the others' skipped and \
                     failed items are not listed yet",
                    p.done, p.total
                ));
            }
            (s, note)
        }
        Source::Spool(s) => (s, "from the spool; the daemon is not running".to_string()),
        Source::Nothing(expected) => {
            let snap = Snapshot {
                written_unix: now_ms() / 1000,
                pid: 0,
                spool_scan: None,
                domains: Vec::new(),
                mailboxes: expected
                    .iter()
                    .map(|m| {
                        report::MailboxRow::new(
                            &crate::spool::MailboxState {
                                id: m.clone(),
                                status: "Queued".into(),
                                ..Default::default()
                            },
                            (Vec::new(), 0),
                            0,
                        )
                    })
                    .map(Arc::new)
                    .collect(),
            };
            (snap, "nothing has run yet (no spool)".to_string())
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", report::table(&snap));
        println!("({note})");
    }
    Ok(true)
}

/// `cutover report --csv [--output FILE]`.
pub fn report(config: &Path, output: Option<&PathBuf>) -> anyhow::Result<bool> {
    let snap = match rows(config)? {
        Source::Daemon(s) | Source::Spool(s) => s,
        Source::Nothing(_) => anyhow::bail!("nothing to report: no spool yet"),
    };
    match output {
        Some(path) => {
            let tmp = path.with_extension("tmp");
            // Names every mailbox and its problems: private like the spool it comes from.
            let file = super::files::create(&tmp)
                .with_context(|| format!("cannot write the report to {}", tmp.display()))?;
            report::write_csv(&snap, file)
                .with_context(|| format!("cannot write the report to {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
            eprintln!(
                "wrote {} ({} mailboxes)",
                path.display(),
                snap.mailboxes.len()
            );
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            report::write_csv(&snap, &mut lock)?;
            lock.flush()?;
        }
    }
    Ok(true)
}

/// `cutover complete [--mailbox X]...`: final pass, then Completed.
///
/// With the daemon running, the request is handed to it and this returns at once (watch
/// `cutover status`). With the daemon stopped, the final passes run here, one mailbox
/// after the other; true if all of them succeeded.
pub async fn complete(config: &Path, mailboxes: &[String]) -> anyhow::Result<bool> {
    let (cfg, mut accounts) = load(config)?;
    for m in mailboxes {
        let m = m.trim().to_lowercase();
        if !accounts.iter().any(|a| a.email == m) {
            anyhow::bail!("{m} is not a mailbox of {}", cfg.mailboxes.display());
        }
    }
    let spool_dir = cfg.spool.path.clone();
    let interval = cfg.sync.interval;
    let cutover = cfg.cutover.clone();
    let engine = match Engine::new(cfg) {
        Ok(e) => Arc::new(e),
        Err(e) if is_locked(&e) => {
            let file = requests::submit(
                &spool_dir,
                &Request {
                    kind: RequestKind::Complete,
                    mailboxes: mailboxes.to_vec(),
                },
            )?;
            println!(
                "the daemon is running: asked it to complete {} ({}); follow with `cutover status`",
                if mailboxes.is_empty() {
                    "every mailbox".to_string()
                } else {
                    mailboxes.join(", ")
                },
                file.display()
            );
            return Ok(true);
        }
        Err(e) => return Err(e),
    };
    crate::cli::adopt_spool_ids(&engine.spool, &mut accounts)?;
    let mut sched = Scheduler::new(
        engine.spool.clone(),
        &accounts,
        interval,
        &cutover,
        now_ms(),
    )?;
    sched.request_complete(mailboxes, now_ms());
    let mut all_ok = true;
    for id in sched.due(now_ms()) {
        if !sched.entries[&id].st.cutover_manual {
            continue;
        }
        let account = sched.entries[&id].account.clone();
        let is_final = sched.start(&id, now_ms());
        let summary = engine.sync_mailbox(&account).await;
        let after = super::scheduler::AfterPass::scan(&engine.spool, &id);
        sched.finish(&id, &summary, is_final, now_ms(), after);
        let status = sched.status_of(&id).map(|s| s.as_str()).unwrap_or("?");
        if sched.status_of(&id) == Some(super::state::Status::Completed) {
            if let Some(at) = sched.entries[&id].st.completed_unix {
                // The welcome (`[notify] after`); its failure is logged, not the pass's.
                crate::notify::send::welcome_completed(engine.clone(), account.clone(), at).await;
            }
        }
        match (&summary.fatal, summary.errors.first()) {
            (None, None) if summary.ok() => {
                println!("{id}: final pass copied {}; {status}", summary.copied)
            }
            (f, e) => {
                all_ok = false;
                println!(
                    "{id}: final pass FAILED ({}); {status}",
                    f.as_deref()
                        .or(e.map(String::as_str))
                        .unwrap_or("messages left")
                );
            }
        }
    }
    sched.close_all(now_ms());
    engine.spool.flush()?;
    Ok(all_ok)
}

/// For a control (`retry-errors`, `pause`, `resume`, `sync-now`): checks the names, then
/// hands the request to the running daemon (None), or opens the spool for the command to
/// act on it itself, with the accounts it names (every one when none is named).
fn control(
    config: &Path,
    kind: RequestKind,
    mailboxes: &[String],
) -> anyhow::Result<Option<(Spool, Vec<String>)>> {
    let (cfg, mut accounts) = load(config)?;
    let mut wanted = Vec::new();
    for m in mailboxes {
        let m = m.trim().to_lowercase();
        if !accounts.iter().any(|a| a.email == m) {
            anyhow::bail!("{m} is not a mailbox of {}", cfg.mailboxes.display());
        }
        wanted.push(m);
    }
    let spool_dir = cfg.spool.path.clone();
    let spool = match Spool::open_with_cache(&spool_dir, cfg.spool.cache_bytes) {
        Ok(s) => s,
        Err(e) if is_locked(&e) => {
            let file = requests::submit(
                &spool_dir,
                &Request {
                    kind,
                    mailboxes: mailboxes.to_vec(),
                },
            )?;
            println!(
                "the daemon is running: handed it the request ({}); follow with `cutover status`",
                file.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    crate::cli::adopt_spool_ids(&spool, &mut accounts)?;
    let ids = accounts
        .into_iter()
        .filter(|a| wanted.is_empty() || wanted.contains(&a.email.to_lowercase()))
        .map(|a| a.email)
        .collect();
    Ok(Some((spool, ids)))
}

/// `cutover retry-errors [--mailbox X]...`: the failed messages of the named mailboxes (or
/// every one) go on the next pass instead of waiting out their backoff, and get their
/// attempts back. For when the admin has fixed what they failed on (a quota raised, a
/// folder allowed). With the daemon running, the request is handed to it.
pub async fn retry_errors(config: &Path, mailboxes: &[String]) -> anyhow::Result<bool> {
    let Some((spool, ids)) = control(config, RequestKind::RetryErrors, mailboxes)? else {
        return Ok(true);
    };
    let mut total = 0;
    let mut boxes = 0;
    for id in &ids {
        let n = spool
            .retry_failed(id)
            .with_context(|| format!("{id}: cannot retry its failed messages"))?;
        if n > 0 {
            println!("{id}: {n} failed message{} to retry", plural(n));
            boxes += 1;
        }
        total += n;
    }
    spool.flush()?;
    println!(
        "{total} failed message{} of {boxes} mailbox{} go on the next pass",
        plural(total),
        if boxes == 1 { "" } else { "es" }
    );
    Ok(true)
}

/// `cutover pause` / `cutover resume [--mailbox X]...`: with no mailbox named, the whole
/// migration. Kept in the spool: a daemon started later, or restarted, keeps it; `sync
/// --once` leaves paused mailboxes alone too. A running daemon stops a paused mailbox's
/// pass at once (recovery makes that as safe as a crash).
pub async fn pause(config: &Path, mailboxes: &[String], paused: bool) -> anyhow::Result<bool> {
    let kind = if paused {
        RequestKind::Pause
    } else {
        RequestKind::Resume
    };
    let Some((spool, ids)) = control(config, kind, mailboxes)? else {
        return Ok(true);
    };
    if mailboxes.is_empty() {
        spool.set_paused(None, paused)?;
        println!(
            "the whole migration is {}",
            if paused { "paused" } else { "resumed" }
        );
    } else {
        for id in &ids {
            spool.set_paused(Some(id), paused)?;
            println!("{id}: {}", if paused { "paused" } else { "resumed" });
        }
    }
    Ok(true)
}

/// `cutover sync-now [--mailbox X]...`: asks the daemon for a pass now.
pub async fn sync_now(config: &Path, mailboxes: &[String]) -> anyhow::Result<bool> {
    match control(config, RequestKind::SyncNow, mailboxes)? {
        None => Ok(true),
        Some(_) => {
            println!("the daemon is not running: `cutover sync --once` runs a pass now");
            Ok(false)
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
