//! `cutover run`: the appliance daemon.
//!
//! It syncs every mailbox of the CSV once, then again every `[sync] interval` (a delta:
//! the engine only fetches what is new or changed), watches the MX of the `[cutover]`
//! domains, and finishes each mailbox with a final pass once its domain's grace is over.
//! It runs until every mailbox is Completed or it is told to stop (SIGTERM/SIGINT).
//!
//! The pieces:
//! - [`state`]: the statuses and how they follow from a few facts;
//! - [`scheduler`]: the bookkeeping (what is due, what a finished pass means), persisted
//!   in the spool's [`MailboxState`](crate::spool::MailboxState);
//! - this file: the loop that runs passes through the [`Engine`], listens to the MX
//!   watch, signals and `cutover complete` requests, and reports to systemd;
//! - [`report`] and [`commands`]: `cutover status`, `report` and `complete`.
//!
//! Connection limits: a pass holds one source connection at a time, so the daemon runs at
//! most `[source] max_connections` passes at once (the engine enforces the same limit
//! per connection), and at most `max_connections_per_user` passes of mailboxes that log in
//! as the same source user. Mailboxes waiting for a slot keep their status.

pub mod commands;
pub mod files;
pub mod notify;
pub mod report;
pub mod requests;
pub mod scheduler;
pub mod snapshot;
pub mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::accounts::Account;
use crate::config::Config;
use crate::cutover::mx;
use crate::engine::{Engine, MailboxSummary};
use notify::Notifier;
use report::{Problem, ScanProgress};
use scheduler::{now_ms, AfterPass, Scheduler};
use snapshot::SnapshotWriter;

/// How long a stopping daemon lets running passes finish before it aborts them. Short:
/// an aborted pass is safe (the spool records an APPEND in flight as `Appending` and the
/// next pass resolves it), and systemd's stop timeout must not be reached.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How often the loop wakes up without an event: requests, snapshot, watchdog.
const TICK: Duration = Duration::from_millis(500);

/// How many mailboxes' problem lists the start-up scan may have found ahead of the loop.
const SCAN_QUEUE: usize = 256;

/// How long to wait for the spool's lock at start-up: a `cutover status` that opened the
/// spool a moment before holds it briefly.
const SPOOL_LOCK_WAIT: Duration = Duration::from_secs(15);

/// Loads the config and the CSV (printing the CSV's bad rows).
pub fn load(config: &Path) -> anyhow::Result<(Config, Vec<Account>)> {
    crate::cli::load(config).map(|(cfg, accts)| (cfg, accts.accounts))
}

/// True if `e` says that another process holds the spool (sled's lock).
pub fn is_locked(e: &dyn std::fmt::Display) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// Opens the engine (and with it the spool), waiting a little if the spool is locked.
async fn open_engine(cfg: Config) -> anyhow::Result<Engine> {
    let deadline = Instant::now() + SPOOL_LOCK_WAIT;
    loop {
        match Engine::new(cfg.clone()) {
            Ok(e) => return Ok(e),
            Err(e) if is_locked(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) if is_locked(&e) => {
                anyhow::bail!("{e:#} (is another `cutover run` using this spool?)")
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a pass task returns.
struct PassDone {
    mailbox: String,
    summary: MailboxSummary,
    is_final: bool,
    after: AfterPass,
}

/// `cutover run`. Returns Ok(true) when stopped by a signal or when every mailbox is
/// Completed.
pub async fn run(config: &Path) -> anyhow::Result<bool> {
    let (cfg, accts, own) = crate::cli::load_sharded(config)?;
    let mut accounts = accts.accounts;
    // A shard that owns none of the CSV's mailboxes (more shards than mailboxes, or an
    // unlucky split) stays up with its page, idle: exiting would make Kubernetes restart
    // it over and over, and a later CSV or shard count may give it work.
    let idle_shard = accounts.is_empty() && own.total > 0;
    if idle_shard {
        tracing::warn!(
            "{} of {}: this shard owns none of them (more shards than needed?); idle until stopped",
            own.line(),
            cfg.mailboxes.display()
        );
    }
    if accounts.is_empty() && !idle_shard {
        anyhow::bail!("no mailboxes to migrate in {}", cfg.mailboxes.display());
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let interval = cfg.sync.interval;
    let cutover = cfg.cutover.clone();
    let per_user = cfg.source.max_connections_per_user;
    let max_passes = cfg.source.max_connections.max(1);
    let web = cfg.web.clone();
    let fleet = cfg.fleet.enabled();
    let engine = Arc::new(open_engine(cfg).await?);
    crate::cli::adopt_spool_ids(&engine.spool, &mut accounts)?;
    crate::fleet::owner::record(&engine.spool, fleet, &accounts)?;
    // Compresses the bodies spooled raw while the daemon waits between passes.
    let _compactor = crate::spool::Compactor::start(engine.spool.clone());
    let spool_dir = engine.spool.path().to_path_buf();
    let snapshot_path = report::snapshot_path(&spool_dir);
    // The last daemon's snapshot is stale; `status` waits for this one's first.
    let _ = std::fs::remove_file(&snapshot_path);
    let mut sched = Scheduler::new(
        engine.spool.clone(),
        &accounts,
        interval,
        &cutover,
        now_ms(),
    )?;

    // The status page reads what the loop publishes here, where it writes status.json.
    let (snap_tx, snap_rx) = watch::channel(Arc::new(sched.snapshot(now_ms())));
    let _ = std::fs::remove_file(crate::web::address_path(&spool_dir));
    let _page = crate::web::start(
        &web,
        crate::web::Shared::new(snap_rx, engine.spool.clone(), engine.config.clone()),
    )
    .await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (mx_tx, mut mx_rx) = mpsc::channel(64);
    if !cutover.domains.is_empty() {
        tokio::spawn(mx::watch(cutover.clone(), mx_tx, stop_rx.clone()));
    } else {
        drop(mx_tx);
    }

    let pass_slots = Arc::new(Semaphore::new(max_passes));
    let mut user_slots: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut passes: JoinSet<PassDone> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    // To stop a pass when its mailbox is paused.
    let mut aborts: HashMap<String, tokio::task::AbortHandle> = HashMap::new();

    // The welcome letters of mailboxes just Completed (`[notify] after`), sent beside
    // the loop: a slow or failing destination must not hold the migration up.
    let mut welcomes: JoinSet<()> = JoinSet::new();
    let notifier = Notifier::from_env();
    let writer = SnapshotWriter::start(snapshot_path.clone())?;
    // The skipped and failed messages of every mailbox are read after READY: a scan of
    // every record of a large spool could outlast systemd's start timeout. Until it is
    // done, the status says how far it got.
    let mut scan = Some(ScanProgress {
        done: 0,
        total: sched.entries.len(),
    });
    let mut scan_rx = start_scan(&engine, &sched);
    // A welcome lost to a stop between Completed and its delivery (a crash, a kill, the
    // 30 s wait running out) is sent now: the spool says Completed and no delivery.
    // `send::after` first looks for one that was appended but not recorded, so it still
    // arrives once.
    let ids: Vec<String> = sched.entries.keys().cloned().collect();
    for id in ids {
        welcome_if_completed(&engine, &sched, &id, &mut welcomes);
    }
    let mut last_status = hand_over(&writer, &mut sched, scan, &snap_tx);
    tracing::info!(
        mailboxes = accounts.len(),
        interval = %crate::duration::format(interval),
        domains = ?cutover.domains,
        "daemon started"
    );
    notifier.ready(&last_status);

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_snapshot = Instant::now();
    let mut last_watchdog = Instant::now();
    let mut stopping: Option<Instant> = None;
    let mut mx_open = !cutover.domains.is_empty();

    loop {
        if stopping.is_none() {
            for id in sched.due(now_ms()) {
                let Ok(slot) = pass_slots.clone().try_acquire_owned() else {
                    break;
                };
                let user_slot = match per_user {
                    Some(n) => {
                        let key = sched.entries[&id].account.username.to_lowercase();
                        let sem = user_slots
                            .entry(key)
                            .or_insert_with(|| Arc::new(Semaphore::new(n)));
                        match sem.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => continue,
                        }
                    }
                    None => None,
                };
                let is_final = sched.start(&id, now_ms());
                let account = sched.entries[&id].account.clone();
                let handle = passes.spawn(pass(engine.clone(), account, is_final, slot, user_slot));
                running.insert(handle.id(), id.clone());
                aborts.insert(id, handle);
            }
            if passes.is_empty() && !idle_shard && sched.all_completed() {
                tracing::info!("every mailbox is Completed: the migration is over");
                break;
            }
        } else if passes.is_empty() {
            break;
        }

        tokio::select! {
            Some(done) = passes.join_next_with_id(), if !passes.is_empty() => match done {
                Ok((id, d)) => {
                    running.remove(&id);
                    aborts.remove(&d.mailbox);
                    sched.finish(&d.mailbox, &d.summary, d.is_final, now_ms(), d.after);
                    welcome_if_completed(&engine, &sched, &d.mailbox, &mut welcomes);
                }
                Err(e) => {
                    let Some(mailbox) = running.remove(&e.id()) else { continue };
                    aborts.remove(&mailbox);
                    if e.is_cancelled() {
                        sched.abandon(&mailbox, now_ms());
                    } else {
                        let summary = MailboxSummary {
                            mailbox: mailbox.clone(),
                            fatal: Some(format!("internal error: {e}")),
                            ..Default::default()
                        };
                        sched.finish(&mailbox, &summary, false, now_ms(), AfterPass::default());
                    }
                }
            },
            Some(obs) = mx_rx.recv(), if mx_open => sched.observe_mx(&obs, now_ms()),
            found = scan_rx.recv(), if scan.is_some() => match found {
                Some((mailbox, problems)) => {
                    sched.set_problems(&mailbox, problems);
                    if let Some(p) = &mut scan {
                        p.done += 1;
                    }
                    sched.dirty = true;
                }
                None => {
                    tracing::info!(mailboxes = sched.entries.len(), "spool read: every mailbox's skipped and failed messages are listed");
                    scan = None;
                    sched.dirty = true;
                }
            },
            _ = tick.tick() => {
                for req in requests::take(&spool_dir) {
                    match req.kind {
                        requests::RequestKind::Complete => {
                            for m in sched.request_complete(&req.mailboxes, now_ms()) {
                                tracing::warn!(mailbox = %m, "`cutover complete` names a mailbox that is not in the CSV");
                            }
                        }
                        requests::RequestKind::RetryErrors => {
                            for m in sched.request_retry(&req.mailboxes, now_ms()) {
                                tracing::warn!(mailbox = %m, "`cutover retry-errors` names a mailbox that is not in the CSV");
                            }
                        }
                        kind @ (requests::RequestKind::Pause | requests::RequestKind::Resume) => {
                            let paused = kind == requests::RequestKind::Pause;
                            match sched.request_pause(&req.mailboxes, paused, now_ms()) {
                                Ok((stop, unknown)) => {
                                    for m in unknown {
                                        tracing::warn!(mailbox = %m, "`cutover {}` names a mailbox that is not in the CSV", kind.as_str());
                                    }
                                    for m in stop {
                                        if let Some(h) = aborts.get(&m) {
                                            tracing::info!(mailbox = %m, "stopping its pass: paused");
                                            h.abort();
                                        }
                                    }
                                }
                                Err(e) => tracing::error!(error = %e, "cannot record the pause"),
                            }
                        }
                        requests::RequestKind::SyncNow => {
                            for m in sched.request_sync_now(&req.mailboxes, now_ms()) {
                                tracing::warn!(mailbox = %m, "`cutover sync-now` names a mailbox that is not in the CSV");
                            }
                        }
                    }
                }
                if let Some(since) = stopping {
                    if since.elapsed() >= SHUTDOWN_WAIT && !passes.is_empty() {
                        tracing::warn!(passes = passes.len(), "aborting the passes still running; the next start resumes them");
                        passes.abort_all();
                    }
                }
            }
            _ = term.recv() => stopping = begin_stop(stopping, &notifier, &mut passes, "SIGTERM"),
            _ = int.recv() => stopping = begin_stop(stopping, &notifier, &mut passes, "SIGINT"),
        }
        if mx_rx.is_closed() && mx_rx.is_empty() {
            mx_open = false;
        }

        if let Some(every) = notifier.watchdog_every() {
            if last_watchdog.elapsed() >= every {
                notifier.watchdog();
                last_watchdog = Instant::now();
            }
        }
        // Only when something changed, and at most once a tick: the rows that changed
        // go to the writer thread, which serialises and writes.
        if sched.dirty && last_snapshot.elapsed() >= TICK {
            let line = hand_over(&writer, &mut sched, scan, &snap_tx);
            last_snapshot = Instant::now();
            if line != last_status {
                notifier.status(&line);
                last_status = line;
            }
        }
    }

    let _ = stop_tx.send(true);
    notifier.stopping();
    wait_for_welcomes(&mut welcomes).await;
    // Passes aborted above were never finished: forget them, they resume next time.
    for mailbox in running.into_values() {
        sched.abandon(&mailbox, now_ms());
    }
    sched.close_all(now_ms());
    hand_over(&writer, &mut sched, scan, &snap_tx);
    writer.finish();
    engine.spool.flush()?;
    tracing::info!("{}; stopped", sched.status_line());
    Ok(true)
}

/// The first signal stops scheduling; a second one aborts the running passes at once.
fn begin_stop(
    stopping: Option<Instant>,
    notifier: &Notifier,
    passes: &mut JoinSet<PassDone>,
    what: &str,
) -> Option<Instant> {
    match stopping {
        None => {
            tracing::info!(
                running = passes.len(),
                "{what}: stopping; running passes get {}s to finish",
                SHUTDOWN_WAIT.as_secs()
            );
            notifier.stopping();
            Some(Instant::now())
        }
        Some(since) => {
            tracing::warn!("{what} again: aborting the running passes");
            passes.abort_all();
            Some(since)
        }
    }
}

/// One pass of one mailbox; the slots are released when it ends.
async fn pass(
    engine: Arc<Engine>,
    account: Account,
    is_final: bool,
    _slot: OwnedSemaphorePermit,
    _user_slot: Option<OwnedSemaphorePermit>,
) -> PassDone {
    let summary = engine.sync_mailbox(&account).await;
    // Counting and listing the mailbox's records is a scan: not on the runtime's thread.
    let (spool, mailbox) = (engine.spool.clone(), account.email.clone());
    let after = tokio::task::spawn_blocking(move || AfterPass::scan(&spool, &mailbox))
        .await
        .unwrap_or_default();
    PassDone {
        mailbox: account.email,
        summary,
        is_final,
        after,
    }
}

/// How long a stopping daemon waits for the welcome letters still being appended.
const WELCOME_WAIT: Duration = Duration::from_secs(30);

/// Starts the welcome of `mailbox` if its pass just made it Completed.
fn welcome_if_completed(
    engine: &Arc<Engine>,
    sched: &Scheduler,
    mailbox: &str,
    welcomes: &mut JoinSet<()>,
) {
    if engine.config.notify.after.is_none()
        || sched.status_of(mailbox) != Some(state::Status::Completed)
    {
        return;
    }
    let Some(entry) = sched.entries.get(mailbox) else {
        return;
    };
    let delivered = engine
        .spool
        .notified(mailbox, crate::notify::Kind::After.as_str())
        .ok()
        .flatten()
        .is_some_and(|n| n.delivered_unix.is_some());
    if delivered {
        return;
    }
    let at = entry.st.completed_unix.unwrap_or_else(|| now_ms() / 1000);
    welcomes.spawn(crate::notify::send::welcome_completed(
        engine.clone(),
        entry.account.clone(),
        at,
    ));
}

/// Lets the welcomes under way finish, for at most [`WELCOME_WAIT`]; the rest are
/// reported (and `cutover notify after` sends them).
async fn wait_for_welcomes(welcomes: &mut JoinSet<()>) {
    if welcomes.is_empty() {
        return;
    }
    let all = async { while welcomes.join_next().await.is_some() {} };
    if tokio::time::timeout(WELCOME_WAIT, all).await.is_err() {
        tracing::warn!(
            left = welcomes.len(),
            "stopping before every welcome was delivered; `cutover notify after` sends the rest"
        );
        welcomes.abort_all();
    }
}

/// Lists every mailbox's skipped and failed messages on a blocking thread, one mailbox
/// after the other, sending each list as it is found. Ends when all are sent, or when the
/// loop stops listening.
fn start_scan(
    engine: &Arc<Engine>,
    sched: &Scheduler,
) -> mpsc::Receiver<(String, (Vec<Problem>, u64))> {
    let (tx, rx) = mpsc::channel(SCAN_QUEUE);
    let ids: Vec<String> = sched.entries.keys().cloned().collect();
    let spool = engine.spool.clone();
    tokio::task::spawn_blocking(move || {
        for id in ids {
            let problems = report::problems(&spool, &id, report::LIVE_PROBLEMS);
            if tx.blocking_send((id, problems)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Hands the rows that changed to the snapshot writer (and the whole snapshot to the status
/// page) and returns the STATUS line; logs
/// (debug) what that cost the runtime's thread, which the scale benchmark reads
/// (bench/scale.rs).
fn hand_over(
    writer: &SnapshotWriter,
    sched: &mut Scheduler,
    scan: Option<ScanProgress>,
    page: &watch::Sender<Arc<report::Snapshot>>,
) -> String {
    let started = Instant::now();
    let cpu = thread_cpu();
    // The status page reads the whole snapshot; it is made only when something changed.
    page.send_replace(Arc::new(sched.page_snapshot(now_ms())));
    let rows = sched.take_changed();
    let changed = rows.len();
    writer.write(rows, now_ms() / 1000, scan);
    let line = status_line(sched, scan);
    tracing::debug!(
        rows = changed,
        micros = started.elapsed().as_micros() as u64,
        cpu_micros = thread_cpu().saturating_sub(cpu).as_micros() as u64,
        "status snapshot handed to the writer"
    );
    line
}

/// CPU time of the calling thread: what a step cost it, without the time the machine
/// gave to others meanwhile.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given, nothing else.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The STATUS line for systemd: the statuses, and the start-up scan while it runs.
fn status_line(sched: &Scheduler, scan: Option<ScanProgress>) -> String {
    let mut line = sched.status_line();
    if let Some(p) = scan {
        line.push_str(&format!(
            "; reading the spool: {}/{} mailboxes",
            p.done, p.total
        ));
    }
    line
}
