//! The status page of `cutover run`: HTML, a JSON API, Server-Sent Events and
//! Prometheus metrics, on `[web] listen` (see the README's "Status page").
//!
//! The page only reads: the daemon's [`Snapshot`] (published on a watch channel where it
//! writes `status.json`), the spool (read-only calls), and the process's counters
//! ([`crate::metrics`]). Its controls act like the CLI's: they leave a request file for
//! the daemon ([`crate::daemon::requests`]), which acts on it in the spool.
//!
//! - [`server`]: the listener, the connections and the checks on every request;
//! - [`router`]: which handler answers a path;
//! - [`overview`], [`rows`], [`problems`], [`inventory`]: what the JSON says;
//! - [`events`]: the live stream; [`controls`]: the POST endpoints;
//! - [`downloads`]: the CSV files; [`prom`]: `/metrics`; [`assets`]: the page itself;
//! - [`auth`] and [`tls`]: the password, the sessions and HTTPS, with `password_file`.

pub mod assets;
pub mod auth;
pub mod config;
pub mod controls;
pub mod disk;
pub mod downloads;
pub mod events;
pub mod fleet;
pub mod history;
pub mod http;
pub mod inventory;
pub mod overview;
pub mod password;
pub mod problems;
pub mod prom;
pub mod router;
pub mod rows;
pub mod server;
pub mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use config::WebConfig;

use crate::config::Config;
use crate::daemon::report::Snapshot;
use crate::spool::Spool;

/// The shortest time between two counts of the spool; longer when a count takes long
/// (ten times its own duration), so that a big spool is not rescanned back to back.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What every handler reads.
pub struct Shared {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub spool: Spool,
    pub spool_dir: PathBuf,
    pub config: Arc<Config>,
    pub inventory: RwLock<Arc<inventory::Inventory>>,
    pub history: Mutex<history::History>,
    /// Spool disk (used, free) in bytes, measured with the inventory.
    pub disk: Mutex<(u64, Option<u64>)>,
    /// Bumped after every sample, so that the event streams look again.
    pub ticks: watch::Sender<u64>,
    /// With `[web] password_file`: the password and the sessions.
    pub auth: Option<auth::Auth>,
    /// Why the password file could not be used (then the page is not served at all).
    pub auth_error: Option<String>,
}

impl Shared {
    pub fn new(
        snapshot: watch::Receiver<Arc<Snapshot>>,
        spool: Spool,
        config: Arc<Config>,
    ) -> Arc<Shared> {
        let (auth, auth_error) = match &config.web.password_file {
            Some(f) => match auth::Auth::load(f) {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
            None => (None, None),
        };
        Arc::new(Shared {
            auth,
            auth_error,
            snapshot,
            spool_dir: spool.path().to_path_buf(),
            spool,
            config,
            inventory: RwLock::new(Arc::new(inventory::Inventory::default())),
            history: Mutex::new(history::History::default()),
            disk: Mutex::new((0, None)),
            ticks: watch::channel(0).0,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn inventory(&self) -> Arc<inventory::Inventory> {
        self.inventory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts the spool, measures the disk and samples the counters once.
    pub async fn sample(self: &Arc<Self>) {
        let me = self.clone();
        let ids: Vec<String> = self
            .snapshot()
            .mailboxes
            .iter()
            .map(|r| r.mailbox.clone())
            .collect();
        let done = tokio::task::spawn_blocking(move || {
            let inv = inventory::scan(&me.spool, &ids);
            let disk = (
                disk::used_bytes(&me.spool_dir),
                disk::free_bytes(&me.spool_dir),
            );
            (inv, disk)
        })
        .await;
        if let Ok((inv, disk)) = done {
            *self
                .inventory
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Arc::new(inv);
            *self.disk.lock().unwrap_or_else(PoisonError::into_inner) = disk;
        }
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(history::Sample::now());
        self.ticks.send_modify(|n| *n += 1);
    }
}

/// `<spool>/web.address`: the status page's URL, as bound. Scripts and tests that let
/// the kernel choose the port (`listen = "127.0.0.1:0"`) read it there; it is removed
/// when the daemon starts, so a stale one is never read.
pub fn address_path(spool_dir: &std::path::Path) -> PathBuf {
    spool_dir.join("web.address")
}

fn write_address(spool_dir: &std::path::Path, url: &str) -> std::io::Result<()> {
    let path = address_path(spool_dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n"))?;
    std::fs::rename(tmp, path)
}

/// Starts the page on `[web] listen` unless disabled. A port that cannot be bound is
/// logged and the daemon goes on without the page: the migration matters more.
pub async fn start(cfg: &WebConfig, shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.enabled {
        return None;
    }
    let addr = match cfg.addr() {
        Ok(a) => a,
        Err((key, msg)) => {
            tracing::error!("[web] {key}: {msg}; no status page");
            return None;
        }
    };
    if let Some(e) = &shared.auth_error {
        tracing::error!("[web] password_file: {e}; no status page");
        return None;
    }
    let tls = if cfg.https() {
        match tls::acceptor(cfg, &shared.spool_dir) {
            Ok((acceptor, fingerprint)) => {
                tracing::info!(%fingerprint, "status page certificate (SHA-256)");
                Some(acceptor)
            }
            Err(e) => {
                tracing::error!("[web] HTTPS: {e:#}; no status page");
                return None;
            }
        }
    } else {
        None
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen for the status page; the daemon runs without it");
            return None;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // With port 0 the kernel chose: the address bound is the one to tell.
    let addr = listener.local_addr().unwrap_or(addr);
    let url = format!("{scheme}://{addr}/");
    tracing::info!(login = shared.auth.is_some(), "status page on {url}");
    if let Err(e) = write_address(&shared.spool_dir, &url) {
        tracing::warn!(error = %e, "cannot write the status page's address to the spool directory");
    }
    fleet::start(&shared);
    let sampler = shared.clone();
    tokio::spawn(async move {
        loop {
            let t = Instant::now();
            sampler.sample().await;
            tokio::time::sleep(SAMPLE_EVERY.max(t.elapsed() * 10)).await;
        }
    });
    Some(tokio::spawn(server::serve(listener, tls, shared)))
}
