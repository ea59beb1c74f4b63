//! The engine: runs source and upstream for every mailbox, within the connection limits.
//!
//! Each mailbox gets two tasks: the source task reads the legacy server into the spool and
//! releases its connection as soon as it is done (the legacy server is drained at LAN
//! speed); the upstream task pushes what is spooled, woken after every spooled batch.
//! They share nothing but the spool and a [`Handoff`]: a wake-up signal, two flags and
//! the folders the source wrote to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::accounts::Account;
use crate::budget::Budget;
use crate::config::{Config, ServerConfig, SourceKind, TlsMode};
use crate::details::Details;
use crate::imap::client::{Client, Endpoint, Security};
use crate::imap::transport::TlsSettings;
use crate::imap::{Credentials, ImapError, ListedFolder};
use crate::mapping::{FolderMapper, Mapped, Namespace};
use crate::oauth::TokenProvider;
use crate::source::{self, SourceOptions};
use crate::spool::{MailboxState, Spool};
use crate::throttle::{self, Backoff, Fault, Limits, MailboxLimiter, RateSettings};
use crate::upstream::{self, UpstreamOptions};

/// Reconnects after a lost destination connection before the mailbox is given up (the
/// count starts again whenever a message gets through).
pub const UPSTREAM_RETRY_LIMIT: u32 = 5;
/// First and longest wait between those reconnects (plus up to 50 % jitter).
pub const UPSTREAM_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const UPSTREAM_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Throttle answers in a row without a single message getting through before the
/// mailbox is given up for this pass.
pub const THROTTLE_LIMIT: u32 = 30;

/// What happened to one mailbox in one pass: a row of the summary table.
#[derive(Debug, Clone, Default)]
pub struct MailboxSummary {
    pub mailbox: String,
    pub folders: usize,
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Problems, each naming the folder (and UID) concerned.
    pub errors: Details,
    /// Set when the mailbox could not be processed at all (login refused...).
    pub fatal: Option<String>,
    /// Throttle answers from the destination for this mailbox in this pass.
    pub throttled: u64,
    /// Seconds spent paused for them.
    pub backoff_seconds: f64,
    /// The mailbox's message rate limit at the end of the pass (messages/s), if any.
    pub rate: Option<f64>,
    /// Messages skipped in this pass (Microsoft's limits), one line each: folder, UID,
    /// why, date, subject, size. Not errors: the mailbox is still complete. The first
    /// ones only (see [`Details`]): `skipped` counts them all, the spool names them all.
    pub skipped_details: Details,
    /// Messages deleted at the destination in this pass because the source expunged them
    /// (`[sync] propagate_deletes`).
    pub deleted: u64,
    /// What the admin should know although nothing failed (a message sent again after
    /// an interrupted APPEND that recovery could not find for sure), one line each.
    pub notices: Details,
}

impl MailboxSummary {
    /// Finished: every message is at the destination or deliberately skipped.
    pub fn ok(&self) -> bool {
        self.fatal.is_none() && self.failed == 0 && self.errors.is_empty()
    }
}

/// Aborts a pass's own tasks when the pass is dropped before they end: the daemon stops
/// a paused mailbox's pass (or gives up on it at shutdown) by aborting it, and spawned
/// tasks would otherwise run on. Stopping them mid-APPEND is as safe as a crash.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Connection setup for one side.
#[derive(Clone)]
pub struct Side {
    pub endpoint: Endpoint,
    pub config: ServerConfig,
    pub slots: Arc<Semaphore>,
}

impl Side {
    pub fn new(config: &ServerConfig, max_response: u64) -> anyhow::Result<Side> {
        let security = match config.tls {
            TlsMode::Implicit => Security::Implicit,
            TlsMode::Starttls => Security::StartTls,
            TlsMode::None => Security::None,
        };
        let tls = if security == Security::None {
            None
        } else {
            Some(TlsSettings::with_verification(
                config.tls_ca_file.as_deref(),
                config.tls_verify,
            )?)
        };
        Ok(Side {
            endpoint: Endpoint {
                host: config.host.clone(),
                port: config.port(),
                security,
                tls,
                timeout: Duration::from_secs(config.timeout_secs),
                max_response_bytes: u32::try_from(max_response.saturating_add(1 << 20))
                    .unwrap_or(u32::MAX),
            },
            config: config.clone(),
            slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
        })
    }

    /// Connects and logs in, retrying transient failures with capped exponential backoff.
    pub async fn session(&self, creds: &Credentials) -> Result<Client, ImapError> {
        retry(
            &format!("{} as {}", self.endpoint.host, creds.identity()),
            || async {
                let mut c = Client::connect(&self.endpoint).await?;
                c.login(creds).await?;
                c.set_multiappend(self.config.multiappend);
                Ok(c)
            },
        )
        .await
    }
}

/// Retries `f` on transient errors: 5 attempts, backoff 1 s doubling to 30 s, with jitter.
pub async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, ImapError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ImapError>>,
{
    const ATTEMPTS: u32 = 5;
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                let jitter = Duration::from_millis(rand::random::<u64>() % 500);
                tracing::warn!(%what, attempt, error = %e, "transient failure; retrying in {:?}", delay + jitter);
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// True if `f` is excluded by `[sync] exclude_folders` (see [`Engine::excluded`]).
fn excluded(config: &Config, f: &ListedFolder, source_prefix: &str) -> bool {
    let mapper = FolderMapper::new(
        Namespace {
            prefix: source_prefix.to_string(),
            delimiter: f.delimiter,
        },
        Namespace::exchange(),
        &[],
        &config.sync.folder_map,
        &config.sync.exclude_folders,
    );
    matches!(mapper.map(|m| m.map(f)), Ok(Mapped::Excluded { .. }))
}

/// How a mailbox's source is read: IMAP with a login, or a Maildir on disk.
enum SourceAccess {
    Imap(Credentials),
    Maildir(std::path::PathBuf),
}

/// How the destination session of a mailbox logs in: fixed credentials, or an OAuth token
/// fetched (or taken from the cache) for each new session.
#[derive(Clone)]
pub enum DestLogin {
    Static(Credentials),
    OAuth {
        user: String,
        tokens: Arc<TokenProvider>,
    },
}

impl DestLogin {
    pub async fn credentials(&self) -> anyhow::Result<Credentials> {
        match self {
            DestLogin::Static(c) => Ok(c.clone()),
            DestLogin::OAuth { user, tokens } => Ok(Credentials::XOAuth2 {
                user: user.clone(),
                token: tokens.token().await?,
            }),
        }
    }
}

/// Everything a pass needs, shared by all mailbox tasks.
pub struct Engine {
    pub config: Arc<Config>,
    pub spool: Spool,
    pub source: Side,
    pub upstream: Side,
    /// The destination's token source with `auth = "xoauth2"`.
    pub tokens: Option<Arc<TokenProvider>>,
    /// Rate limits toward the destination (global buckets; each mailbox gets its own).
    pub limits: Arc<Limits>,
    /// The bytes of message bodies all connections may hold at once (`[spool]
    /// max_inflight_bytes`, see [`crate::budget`]).
    pub budget: Budget,
    /// Told when a mailbox starts and ends (the progress of `sync --once` and `demo`).
    observer: std::sync::OnceLock<Arc<dyn crate::progress::Observer>>,
}

impl Engine {
    pub fn new(config: Config) -> anyhow::Result<Engine> {
        let spool =
            Spool::open_with_cache(&config.spool.path, config.spool.cache_bytes).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the spool at {}: {e}",
                    config.spool.path.display()
                )
            })?;
        spool.set_compress_inline(config.spool.compress == crate::config::Compress::Inline);
        let max = config.sync.max_message_bytes;
        let up = &config.upstream;
        let limits = Limits::new(RateSettings {
            messages_per_second: up.messages_per_second,
            bytes_per_second: up.bytes_per_second as f64,
            global_messages_per_second: up.global_messages_per_second,
            global_bytes_per_second: up.global_bytes_per_second as f64,
            burst: up.burst,
        });
        Ok(Engine {
            source: Side::new(&config.source, max)?,
            upstream: Side::new(&config.upstream, max)?,
            tokens: TokenProvider::from_config(&config.upstream)?,
            limits,
            spool,
            budget: Budget::new(config.spool.max_inflight_bytes),
            config: Arc::new(config),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Tells `observer` of every mailbox's start and end from now on (once per engine).
    pub fn observe(&self, observer: Arc<dyn crate::progress::Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Checks what every mailbox depends on before any is started: with `auth =
    /// "xoauth2"`, that the token endpoint gives a token. Its failure is one clear error
    /// for the whole run instead of one per mailbox. Returns a line for the admin.
    pub async fn preflight(&self) -> anyhow::Result<Option<String>> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        tokens.token().await?;
        Ok(Some(format!(
            "OAuth token from {} for client {}: ok",
            tokens.settings().token_url,
            tokens.settings().client_id
        )))
    }

    /// How the destination session of `email` logs in.
    pub fn dest_login(&self, email: &str) -> anyhow::Result<DestLogin> {
        Ok(match &self.tokens {
            Some(tokens) => DestLogin::OAuth {
                user: email.to_string(),
                tokens: tokens.clone(),
            },
            None => DestLogin::Static(self.config.upstream.credentials(email, None)?),
        })
    }

    fn source_options(&self) -> SourceOptions {
        SourceOptions {
            max_message_bytes: self.config.sync.max_message_bytes,
            fetch_batch_bytes: self.config.sync.fetch_batch_bytes,
            fetch_batch_count: 500,
        }
    }

    /// Runs `scan`, a pass over every record of `mailbox`, on a blocking thread, so that
    /// the runtime's thread serves the other mailboxes' connections meanwhile.
    async fn scan_blocking<T: Send + 'static>(
        &self,
        mailbox: &str,
        scan: impl FnOnce(&Spool, &str) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let (spool, mailbox) = (self.spool.clone(), mailbox.to_string());
        tokio::task::spawn_blocking(move || scan(&spool, &mailbox)).await
    }

    /// [`Spool::needs_push`], off the runtime's thread.
    async fn needs_push(&self, mailbox: &str) -> anyhow::Result<bool> {
        let now = chrono::Utc::now().timestamp();
        Ok(self
            .scan_blocking(mailbox, move |spool, m| spool.needs_push(m, now))
            .await??)
    }

    fn upstream_options(&self, limiter: Option<Arc<MailboxLimiter>>) -> UpstreamOptions {
        UpstreamOptions {
            append_batch: self.config.sync.append_batch.max(1),
            append_batch_bytes: self.config.sync.fetch_batch_bytes.max(1 << 20),
            limiter,
            propagate_deletes: self.config.sync.propagate_deletes,
            session_timeout: Duration::from_secs(self.config.upstream.timeout_secs),
            budget: Some(self.budget.clone()),
        }
    }

    /// How many mailboxes a pass works on at once: enough to keep every connection of
    /// both sides busy (a mailbox whose source is done may still be pushing), and no
    /// more, so that 5,000 mailboxes are not 10,000 tasks and 5,000 spool scans at once.
    pub fn mailboxes_in_flight(&self) -> usize {
        (self.config.source.max_connections.max(1) + self.config.upstream.max_connections.max(1))
            .max(2)
    }

    /// One pass over every mailbox, several at once within the connection limits. A
    /// mailbox's tasks are started when one in flight ends, in the CSV's order.
    pub async fn sync_once(self: &Arc<Self>, accounts: &[Account]) -> Vec<MailboxSummary> {
        let mut out: Vec<Option<MailboxSummary>> = vec![None; accounts.len()];
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = HashMap::new();
        let mut next = accounts.iter().enumerate();
        loop {
            while tasks.len() < self.mailboxes_in_flight() {
                let Some((i, account)) = next.next() else {
                    break;
                };
                let engine = self.clone();
                let account = account.clone();
                let h = tasks.spawn(async move { engine.sync_mailbox(&account).await });
                ids.insert(h.id(), i);
            }
            let Some(done) = tasks.join_next_with_id().await else {
                break;
            };
            let (i, summary) = match done {
                Ok((id, s)) => (ids.remove(&id), s),
                Err(e) => (
                    ids.remove(&e.id()),
                    MailboxSummary {
                        fatal: Some(format!("internal error: {e}")),
                        ..Default::default()
                    },
                ),
            };
            if let Some(i) = i {
                let mut summary = summary;
                summary.mailbox = accounts[i].email.clone();
                out[i] = Some(summary);
            }
        }
        let (from_memory, from_spool) = self.spool.take_body_stats();
        tracing::debug!(from_memory, from_spool, "bodies handed to the upstream");
        out.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// Source and upstream of one mailbox.
    pub async fn sync_mailbox(self: &Arc<Self>, account: &Account) -> MailboxSummary {
        let started = Instant::now();
        let mailbox = account.email.clone();
        let mut summary = MailboxSummary {
            mailbox: mailbox.clone(),
            ..Default::default()
        };
        let source = &self.config.source;
        let creds = match source.kind {
            SourceKind::Imap => source
                .credentials(&account.username, account.password.as_ref())
                .map(SourceAccess::Imap),
            SourceKind::Maildir => source
                .maildir_root(&account.username, &account.email)
                .map(SourceAccess::Maildir),
        }
        .map_err(anyhow::Error::from)
        .and_then(|s| self.dest_login(&account.email).map(|d| (s, d)));
        let (src_creds, dst_creds) = match creds {
            Ok(c) => c,
            Err(e) => {
                summary.fatal = Some(format!("{e}"));
                if let Some(o) = self.observer.get() {
                    o.finished(&summary);
                }
                return summary;
            }
        };
        self.set_status(&mailbox, "Syncing", None);
        if let Some(o) = self.observer.get() {
            o.started(&mailbox);
        }

        let handoff = Arc::new(Handoff::default());
        let src_task = {
            let engine = self.clone();
            let handoff = handoff.clone();
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let r = engine.run_source(&mailbox, &src_creds, &handoff).await;
                tracing::debug!(
                    mailbox,
                    seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "source read done"
                );
                handoff.done.store(true, Ordering::SeqCst);
                handoff.wake.notify_one();
                r
            })
        };
        let limiter = Arc::new(self.limits.mailbox());
        let up_task = {
            let engine = self.clone();
            let handoff = handoff.clone();
            let mailbox = mailbox.clone();
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut total = upstream::PushReport::default();
                let r = engine
                    .run_upstream(&mailbox, &dst_creds, &handoff, limiter, &mut total)
                    .await;
                (total, r)
            })
        };
        let _stop_both = AbortOnDrop(vec![src_task.abort_handle(), up_task.abort_handle()]);
        let (src, up) = tokio::join!(src_task, up_task);
        match src {
            Ok(Ok(r)) => {
                summary.folders = r.folders;
                summary.errors.extend(r.errors);
                summary.skipped_details.extend(r.skipped_details);
                summary.notices.extend(r.notices);
            }
            Ok(Err(e)) => summary.fatal = Some(format!("source: {e}")),
            Err(e) => summary.fatal = Some(format!("source task: {e}")),
        }
        match up {
            Ok((r, result)) => {
                summary.copied = r.appended;
                summary.deleted = r.deleted;
                summary.bytes = r.bytes;
                summary.errors.extend(r.errors);
                summary.skipped_details.extend(r.skipped_details);
                summary.notices.extend(r.notices);
                if let Err(e) = result {
                    let e = format!("destination: {e:#}");
                    summary.fatal = Some(match summary.fatal.take() {
                        Some(s) => format!("{s}; {e}"),
                        None => e,
                    });
                }
            }
            Err(e) => summary.fatal = Some(format!("upstream task: {e}")),
        }
        let stats = limiter.stats();
        summary.throttled = stats.throttled;
        summary.backoff_seconds = stats.backoff.as_secs_f64();
        summary.rate = stats.rate;
        let counts = self
            .scan_blocking(&mailbox, |spool, m| spool.counts(m))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(c) = &counts {
            summary.skipped = c.skipped;
            summary.failed = c.failed + c.spooled + c.appending;
        }
        summary.seconds = started.elapsed().as_secs_f64();
        // A mailbox taken over from another shard: after a whole pass without a fault,
        // every message at the source has been paired with its copy or sent.
        if summary.ok() {
            if let Err(e) = self.spool.adopted(&mailbox) {
                tracing::warn!(mailbox, error = %e, "cannot record the first pass of a mailbox new to this shard");
            }
        }
        let status = if summary.ok() { "Synced" } else { "Failed" };
        let error = summary
            .fatal
            .clone()
            .or_else(|| summary.errors.first().cloned());
        self.set_status(&mailbox, status, error);
        if let Some(c) = &counts {
            self.set_counters(&mailbox, c);
        }
        let _ = self.spool.flush();
        if let Some(o) = self.observer.get() {
            o.finished(&summary);
        }
        summary
    }

    fn set_status(&self, mailbox: &str, status: &str, error: Option<String>) {
        let mut st = self
            .spool
            .mailbox(mailbox)
            .ok()
            .flatten()
            .unwrap_or_else(|| MailboxState {
                id: mailbox.to_string(),
                ..Default::default()
            });
        st.status = status.to_string();
        st.last_error = error;
        if status == "Synced" {
            st.last_sync_unix = Some(chrono::Utc::now().timestamp());
        }
        if let Err(e) = self.spool.put_mailbox(&st) {
            tracing::error!(mailbox, error = %e, "cannot record the mailbox status");
        }
    }

    /// Tells the admin, once per folder (when the spool first sees it), of a source folder
    /// whose name is not modified UTF-7 on the wire: it is read by the server's bytes and
    /// copied under those bytes read as UTF-8, which may not be what the user sees.
    fn note_raw_names(
        &self,
        mailbox: &str,
        folders: &[ListedFolder],
        raw: &std::collections::HashSet<String>,
    ) {
        for f in folders.iter().filter(|f| raw.contains(&f.name)) {
            if matches!(self.spool.folder(mailbox, &f.name), Ok(Some(_))) {
                continue;
            }
            let text = format!(
                "source folder {:?} is not named in modified UTF-7 on the wire (the server \
                 sent {}): it is read by those bytes and copied under that name",
                f.name,
                f.name.as_bytes().escape_ascii()
            );
            tracing::warn!(mailbox, "{text}");
            if let Err(e) = self.spool.add_notice(mailbox, &text) {
                tracing::error!(mailbox, error = %e, "cannot record the notice");
            }
        }
    }

    /// Records what the spool holds for `mailbox` after a pass, for `cutover status` and
    /// the report. The daemon's scheduler keeps the same counters, but `sync --once` has
    /// no scheduler: without this, its status would show 0 items.
    fn set_counters(&self, mailbox: &str, c: &crate::spool::MessageCounts) {
        let Ok(Some(mut st)) = self.spool.mailbox(mailbox) else {
            return;
        };
        st.items_synced = c.appended;
        st.items_skipped = c.skipped;
        st.items_failed = c.failed + c.spooled + c.appending;
        st.bytes = c.bytes_appended;
        if let Err(e) = self.spool.put_mailbox(&st) {
            tracing::error!(mailbox, error = %e, "cannot record the mailbox counters");
        }
    }

    /// True if `f` is excluded by `[sync] exclude_folders`, judged with the source's own
    /// namespace so that both `INBOX.Junk` and `Junk` match on a Courier-style server.
    fn excluded(&self, f: &ListedFolder, source_prefix: &str) -> bool {
        excluded(&self.config, f, source_prefix)
    }

    fn mailbox_limits(&self) -> source::MailboxLimits {
        source::MailboxLimits {
            max_items: self.config.sync.max_items_per_mailbox,
            max_line_length: self.config.sync.max_line_length,
            deletes: source::DeletePolicy {
                propagate: self.config.sync.propagate_deletes,
                max_percent: self.config.sync.max_delete_percent,
            },
            deleted: self.config.sync.deleted_messages,
        }
    }

    /// `[source]`'s Maildir layout.
    pub fn maildir_layout(&self) -> source::maildir::Layout {
        let s = &self.config.source;
        source::maildir::Layout {
            layout: s.layout,
            list: s
                .folders
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            prefix: s.folder_prefix.clone(),
        }
    }

    async fn run_source(
        &self,
        mailbox: &str,
        access: &SourceAccess,
        handoff: &Arc<Handoff>,
    ) -> anyhow::Result<source::SourceReport> {
        let creds = match access {
            SourceAccess::Imap(c) => c,
            SourceAccess::Maildir(root) => {
                return self.run_maildir_source(mailbox, root, handoff).await
            }
        };
        let _slot = self.source.slots.acquire().await?;
        let opts = self.source_options();
        let limits = self.mailbox_limits();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.source.session(creds).await?;
            client.set_budget(Some(self.budget.clone()));
            let r = async {
                let (folders, prefix) =
                    source::list_folders_with(&mut client, self.config.sync.other_namespaces)
                        .await?;
                let folders: Vec<ListedFolder> = folders
                    .into_iter()
                    .filter(|f| !self.excluded(f, &prefix))
                    .collect();
                self.note_raw_names(mailbox, &folders, client.raw_names());
                source::read_mailbox_with(
                    &mut client,
                    &self.spool,
                    mailbox,
                    &folders,
                    &prefix,
                    &opts,
                    &limits,
                    |p| {
                        match p {
                            source::Progress::Fetching => {
                                handoff.fetching.store(true, Ordering::SeqCst)
                            }
                            source::Progress::Spooled { folder } => handoff.dirty(folder),
                        }
                        handoff.wake.notify_one()
                    },
                )
                .await
            }
            .await;
            match r {
                Ok(mut report) => {
                    // A folder LIST showed but imap-codec could not read is in no list:
                    // the pass must not look complete without it.
                    for line in client.unreadable_folders() {
                        let msg = format!(
                            "the source lists a folder that cannot be read ({line}): its name \
                             is not valid IMAP (raw 8-bit bytes instead of modified UTF-7); \
                             that folder is not copied"
                        );
                        tracing::error!(mailbox, "{msg}");
                        report.errors.push(msg);
                    }
                    client.logout().await;
                    return Ok(report);
                }
                Err(source::SourceError::Imap(e)) if e.is_transient() && attempt < 5 => {
                    tracing::warn!(mailbox, error = %e, attempt, "source connection lost; resuming");
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The source of a mailbox read from its Maildir at `root`, on a blocking thread
    /// (it reads the disk); `[source] max_connections` mailboxes are read at once.
    async fn run_maildir_source(
        &self,
        mailbox: &str,
        root: &std::path::Path,
        handoff: &Arc<Handoff>,
    ) -> anyhow::Result<source::SourceReport> {
        let _slot = self.source.slots.acquire().await?;
        let (opts, limits, layout) = (
            self.source_options(),
            self.mailbox_limits(),
            self.maildir_layout(),
        );
        let (spool, config, handoff) = (self.spool.clone(), self.config.clone(), handoff.clone());
        let (mailbox, root) = (mailbox.to_string(), root.to_path_buf());
        let r = tokio::task::spawn_blocking(move || {
            source::maildir::read_mailbox(
                &spool,
                &mailbox,
                &root,
                &layout,
                &|f, prefix| !excluded(&config, f, prefix),
                &opts,
                &limits,
                &mut |p| {
                    match p {
                        source::Progress::Fetching => {
                            handoff.fetching.store(true, Ordering::SeqCst)
                        }
                        source::Progress::Spooled { folder } => handoff.dirty(folder),
                    }
                    handoff.wake.notify_one()
                },
            )
        })
        .await?;
        Ok(r?)
    }

    /// Pushes the mailbox's spool to the destination until the source is done and
    /// everything is pushed. Counts into `total` (kept even when this fails).
    ///
    /// - A throttle answer pauses this mailbox for the suggested time (its connection slot
    ///   is released meanwhile, so other mailboxes go on), lowers its rate (AIMD), then a
    ///   new session resumes; the throttled messages are `Spooled` again.
    /// - A lost connection, a timeout or `BAD User is authenticated but not connected`
    ///   gets a new session after a capped exponential backoff with jitter; after
    ///   [`UPSTREAM_RETRY_LIMIT`] reconnects without progress the mailbox fails.
    /// - Anything else fails the mailbox for this pass.
    async fn run_upstream(
        &self,
        mailbox: &str,
        login: &DestLogin,
        handoff: &Handoff,
        limiter: Arc<MailboxLimiter>,
        total: &mut upstream::PushReport,
    ) -> anyhow::Result<()> {
        let opts = self.upstream_options(Some(limiter.clone()));
        let mut backoff = Backoff::new(UPSTREAM_BACKOFF_BASE, UPSTREAM_BACKOFF_CAP);
        let mut throttles = 0u32;
        // No session until there is something to push: a pass where nothing changed then
        // costs the destination nothing (no TLS, no login; Exchange counts both). As soon
        // as the source finds new mail, though, the session is opened, so that it is up
        // when the first batch lands.
        //
        // The spool is looked at once for what earlier runs left to do (a scan of the
        // mailbox's records), then again only when the source says it wrote something.
        let mut look = true;
        loop {
            let finished = handoff.done.load(Ordering::SeqCst);
            // The first session's first pass looks at every folder: what was written
            // so far needs no other record.
            look |= !handoff.take_dirty().is_empty();
            if handoff.fetching.load(Ordering::SeqCst) || (look && self.needs_push(mailbox).await?)
            {
                break;
            }
            look = false;
            if finished {
                return Ok(());
            }
            handoff.wake.notified().await;
        }
        loop {
            let slot = self.upstream.slots.acquire().await?;
            let progress_mark = total.appended + total.recovered;
            let r = async {
                let creds = login.credentials().await?;
                let mut client = self.upstream.session(&creds).await?;
                let mut dest: Option<DestView> = None;
                // A session's first pass looks at every folder (an earlier one may have
                // left work anywhere); the next ones at the folders the source wrote to.
                let mut first = true;
                loop {
                    // Read the flags before the pass: a pass that started after the source
                    // finished has seen everything it spooled.
                    let finished = handoff.done.load(Ordering::SeqCst);
                    let dirty = handoff.take_dirty();
                    let only = (!first).then_some(dirty);
                    first = false;
                    self.push_pass(&mut client, mailbox, &opts, &mut dest, only.as_ref(), total)
                        .await?;
                    if finished {
                        client.logout().await;
                        return Ok::<(), anyhow::Error>(());
                    }
                    handoff.wake.notified().await;
                }
            }
            .await;
            drop(slot);
            let Err(e) = r else { return Ok(()) };
            if total.appended + total.recovered > progress_mark {
                backoff.reset();
                throttles = 0;
            }
            match fault(&e) {
                Fault::Throttled {
                    backoff: pause,
                    text,
                } => {
                    throttles += 1;
                    if throttles > THROTTLE_LIMIT {
                        return Err(e.context(format!(
                            "throttled {throttles} times in a row without progress; giving up \
                             for this pass"
                        )));
                    }
                    let rate = limiter.on_throttle(pause);
                    crate::metrics::get().throttle(
                        mailbox,
                        chrono::Utc::now().timestamp(),
                        pause.as_millis() as u64,
                        &text,
                    );
                    tracing::warn!(
                        mailbox,
                        backoff_ms = pause.as_millis() as u64,
                        rate = format!("{rate:.2}"),
                        "destination throttled the mailbox ({text}); pausing it for {} ms, \
                         then reconnecting at {rate:.2} msg/s",
                        pause.as_millis()
                    );
                    tokio::time::sleep(pause).await;
                    tracing::info!(
                        mailbox,
                        backoff_ms = pause.as_millis() as u64,
                        "throttle backoff over; reconnecting"
                    );
                }
                Fault::Transient => {
                    // The reconnect and the recovery after it are no rate the destination
                    // set: the limiter measures afresh from the next send.
                    limiter.on_interrupted();
                    if backoff.attempts() >= UPSTREAM_RETRY_LIMIT {
                        return Err(e.context(format!(
                            "destination connection lost {} times without progress; giving up",
                            backoff.attempts() + 1
                        )));
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        mailbox,
                        error = %format!("{e:#}"),
                        attempt = backoff.attempts(),
                        delay_ms = delay.as_millis() as u64,
                        "destination connection lost; reconnecting in {} ms",
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                }
                Fault::Fatal => {
                    if let (Some(tokens), Some(ImapError::Auth { .. })) =
                        (&self.tokens, e.downcast_ref::<ImapError>())
                    {
                        // The token may have been revoked: the next session fetches anew.
                        tokens.invalidate().await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One pass over the spooled folders of the mailbox: all of them, or those in `only`.
    async fn push_pass(
        &self,
        client: &mut Client,
        mailbox: &str,
        opts: &UpstreamOptions,
        view: &mut Option<DestView>,
        only: Option<&HashSet<String>>,
        total: &mut upstream::PushReport,
    ) -> anyhow::Result<()> {
        if only.is_some_and(|o| o.is_empty()) {
            return Ok(());
        }
        let folders = self.spool.folders(mailbox)?;
        if folders.is_empty() {
            return Ok(());
        }
        let view = match view {
            Some(v) => v,
            None => view.insert(DestView {
                list: client.list().await?,
                prefix: client
                    .namespace()
                    .await?
                    .map(|(p, _)| p)
                    .unwrap_or_default(),
            }),
        };
        let dest_prefix = view.prefix.clone();
        let dest_list = &mut view.list;
        let dest_delim = dest_list.iter().find_map(|f| f.delimiter);
        let first = &folders[0];
        let mapper = FolderMapper::new(
            Namespace {
                prefix: first.ns_prefix.clone(),
                delimiter: first.delimiter,
            },
            Namespace {
                prefix: dest_prefix,
                delimiter: dest_delim,
            },
            dest_list,
            &self.config.sync.folder_map,
            &self.config.sync.exclude_folders,
        )?;
        let listed: Vec<ListedFolder> = folders
            .iter()
            .map(|f| ListedFolder {
                name: f.name.clone(),
                delimiter: f.delimiter,
                attributes: f.attributes.clone(),
            })
            .collect();
        let by_name: HashMap<&str, &crate::spool::FolderState> =
            folders.iter().map(|f| (f.name.as_str(), f)).collect();
        let all = mapper.map_all(&listed);
        drop(mapper);
        for (src, mapped) in all {
            if only.is_some_and(|o| !o.contains(&src.name)) {
                continue;
            }
            let Some(state) = by_name.get(src.name.as_str()) else {
                continue;
            };
            let dest = match (mapped, &state.dest_name) {
                (Mapped::Excluded { .. }, _) => continue,
                // A folder keeps the destination it was first copied to: a later folder
                // (or a clash rename it causes) must not send its mail somewhere new.
                (_, Some(fixed)) => fixed.clone(),
                (Mapped::To { dest, rule }, None) => {
                    tracing::debug!(mailbox, folder = %src.name, dest = %dest, ?rule, "folder mapping");
                    let mut st = (*state).clone();
                    st.dest_name = Some(dest.clone());
                    self.spool.put_folder(mailbox, &st)?;
                    dest
                }
            };
            if !dest_list.iter().any(|d| d.name.eq_ignore_ascii_case(&dest)) {
                // A folder the destination will not create is that folder's problem: it
                // is reported with the server's words and the other folders go on.
                if let Err(e) = client.create(&dest).await {
                    let ImapError::Refused { text, .. } = &e else {
                        return Err(e.into());
                    };
                    tracing::warn!(mailbox, folder = %src.name, dest = %dest, "destination refused CREATE: {text}");
                    total.errors.push(format!(
                        "folder {:?}: the destination refused to create {dest:?}: {text}",
                        src.name
                    ));
                    continue;
                }
                tracing::info!(mailbox, folder = %src.name, dest = %dest, "created destination folder");
                dest_list.push(ListedFolder {
                    name: dest.clone(),
                    delimiter: dest_delim,
                    attributes: Vec::new(),
                });
            }
            upstream::push_folder_into(client, &self.spool, mailbox, &src.name, &dest, opts, total)
                .await?;
        }
        Ok(())
    }
}

/// The destination's folders and namespace prefix as one upstream session knows them:
/// asked on its first pass, then kept, with the folders it creates added.
struct DestView {
    list: Vec<ListedFolder>,
    prefix: String,
}

/// What the source task of a mailbox tells its upstream task; they share nothing else
/// but the spool.
#[derive(Default)]
struct Handoff {
    /// Notified when the source finds new mail, after each batch it makes durable in
    /// the spool, and when it ends.
    wake: Notify,
    /// The source found messages to fetch: the upstream may open its session now.
    fetching: AtomicBool,
    /// The folders the source wrote to (records, a folder's state) since the upstream
    /// last looked.
    dirty: Mutex<HashSet<String>>,
    /// The source is done, successfully or not.
    done: AtomicBool,
}

impl Handoff {
    fn dirty_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.dirty.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The source wrote to `folder`.
    fn dirty(&self, folder: &str) {
        let mut set = self.dirty_set();
        if !set.contains(folder) {
            set.insert(folder.to_string());
        }
    }

    /// The folders written to since the last call.
    fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty_set())
    }
}

/// How the upstream reacts to `e` (see [`throttle::Fault`]).
fn fault(e: &anyhow::Error) -> Fault {
    if let Some(u) = e.downcast_ref::<upstream::UpstreamError>() {
        return u.fault();
    }
    if let Some(i) = e.downcast_ref::<ImapError>() {
        return throttle::classify(i);
    }
    Fault::Fatal
}

/// The summary table printed at the end of a pass.
pub fn summary_table(rows: &[MailboxSummary]) -> String {
    let mut s = format!(
        "{:<32} {:>7} {:>8} {:>8} {:>7} {:>12} {:>8}  {}\n",
        "mailbox", "folders", "copied", "skipped", "failed", "bytes", "seconds", "result"
    );
    for r in rows {
        let result = match (&r.fatal, r.errors.first()) {
            (Some(f), _) => format!("FAILED: {f}"),
            (None, Some(e)) => format!(
                "ERRORS: {e}{}",
                if r.errors.total() > 1 {
                    format!(" (+{} more)", r.errors.total() - 1)
                } else {
                    String::new()
                }
            ),
            (None, None) if r.failed > 0 => "INCOMPLETE".to_string(),
            _ => "ok".to_string(),
        };
        s.push_str(&format!(
            "{:<32} {:>7} {:>8} {:>8} {:>7} {:>12} {:>8.1}  {}\n",
            r.mailbox, r.folders, r.copied, r.skipped, r.failed, r.bytes, r.seconds, result
        ));
    }
    // Skipped messages and throttling, below the table (its columns stay as they are).
    for r in rows {
        for d in r.skipped_details.lines() {
            s.push_str(&format!("  {}: {d}\n", r.mailbox));
        }
        if r.skipped_details.omitted() > 0 {
            s.push_str(&format!(
                "  {}: {} more skipped message(s) not listed here (the spool keeps each with its reason: `cutover report`)\n",
                r.mailbox,
                r.skipped_details.omitted()
            ));
        }
        for d in &r.notices {
            s.push_str(&format!("  {}: notice: {d}\n", r.mailbox));
        }
        if r.notices.omitted() > 0 {
            s.push_str(&format!(
                "  {}: {} more notice(s) not listed here (the spool keeps them: `cutover report`)\n",
                r.mailbox,
                r.notices.omitted()
            ));
        }
    }
    for r in rows.iter().filter(|r| r.deleted > 0) {
        s.push_str(&format!(
            "  {}: deleted {} message(s) at the destination that the source expunged\n",
            r.mailbox, r.deleted
        ));
    }
    for r in rows.iter().filter(|r| r.throttled > 0) {
        s.push_str(&format!(
            "  {}: throttled {} time(s) by the destination, {:.1} s in backoff, rate now {}\n",
            r.mailbox,
            r.throttled,
            r.backoff_seconds,
            match r.rate {
                Some(rate) => format!("{rate:.2} msg/s"),
                None => "unlimited".to_string(),
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::details::MAX_DETAILS;

    /// A mailbox whose every message fails keeps a bounded summary, and the table still
    /// says how many problems there were.
    #[test]
    fn a_pass_with_many_problems_keeps_a_bounded_summary() {
        let mut row = MailboxSummary {
            mailbox: "a@example.com".into(),
            ..Default::default()
        };
        for uid in 1..=10_000 {
            row.errors
                .push(format!("folder \"INBOX\" UID {uid}: refused"));
            row.notices
                .push(format!("folder \"INBOX\" UID {uid}: sent again"));
        }
        assert_eq!(row.errors.lines().len(), MAX_DETAILS);
        assert_eq!(row.errors.total(), 10_000);
        assert!(!row.ok());
        let table = summary_table(&[row]);
        assert!(
            table.contains("ERRORS: folder \"INBOX\" UID 1: refused (+9999 more)"),
            "{table}"
        );
        assert_eq!(table.matches(": notice: ").count(), MAX_DETAILS, "{table}");
        assert!(table.contains("9900 more notice(s) not listed"), "{table}");
    }
}
