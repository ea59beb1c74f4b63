//! The engine: runs source and upstream for every mailbox, within the connection limits.
//!
//! Each mailbox gets two tasks: the source task reads the legacy server into the spool and
//! releases its connection as soon as it is done (the legacy server is drained at LAN
//! speed); the upstream task pushes what is spooled, woken after every spooled batch.
//! They share nothing but the spool and a wake-up signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::accounts::Account;
use crate::config::{Config, ServerConfig, TlsMode};
use crate::imap::client::{Client, Endpoint, Security};
use crate::imap::transport::TlsSettings;
use crate::imap::{Credentials, ImapError, ListedFolder};
use crate::mapping::{FolderMapper, Mapped, Namespace};
use crate::source::{self, SourceOptions};
use crate::spool::{MailboxState, Spool};
use crate::upstream::{self, UpstreamOptions};

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
    pub errors: Vec<String>,
    /// Set when the mailbox could not be processed at all (login refused...).
    pub fatal: Option<String>,
}

impl MailboxSummary {
    /// Finished: every message is at the destination or deliberately skipped.
    pub fn ok(&self) -> bool {
        self.fatal.is_none() && self.failed == 0 && self.errors.is_empty()
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

/// Everything a pass needs, shared by all mailbox tasks.
pub struct Engine {
    pub config: Arc<Config>,
    pub spool: Spool,
    pub source: Side,
    pub upstream: Side,
}

impl Engine {
    pub fn new(config: Config) -> anyhow::Result<Engine> {
        let spool = Spool::open(&config.spool.path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the spool at {}: {e}",
                config.spool.path.display()
            )
        })?;
        let max = config.sync.max_message_bytes;
        Ok(Engine {
            source: Side::new(&config.source, max)?,
            upstream: Side::new(&config.upstream, max)?,
            spool,
            config: Arc::new(config),
        })
    }

    fn source_options(&self) -> SourceOptions {
        SourceOptions {
            max_message_bytes: self.config.sync.max_message_bytes,
            fetch_batch_bytes: self.config.sync.fetch_batch_bytes,
            fetch_batch_count: 500,
        }
    }

    fn upstream_options(&self) -> UpstreamOptions {
        UpstreamOptions {
            append_batch: self.config.sync.append_batch.max(1),
            append_batch_bytes: self.config.sync.fetch_batch_bytes.max(1 << 20),
            max_attempts: 3,
        }
    }

    /// One pass over every mailbox, several at once within the connection limits.
    pub async fn sync_once(self: &Arc<Self>, accounts: &[Account]) -> Vec<MailboxSummary> {
        let mut tasks = Vec::new();
        for account in accounts {
            let engine = self.clone();
            let account = account.clone();
            tasks.push(tokio::spawn(
                async move { engine.sync_mailbox(&account).await },
            ));
        }
        let mut out = Vec::new();
        for (t, a) in tasks.into_iter().zip(accounts) {
            out.push(t.await.unwrap_or_else(|e| MailboxSummary {
                mailbox: a.email.clone(),
                fatal: Some(format!("internal error: {e}")),
                ..Default::default()
            }));
        }
        out
    }

    /// Source and upstream of one mailbox.
    pub async fn sync_mailbox(self: &Arc<Self>, account: &Account) -> MailboxSummary {
        let started = Instant::now();
        let mailbox = account.email.clone();
        let mut summary = MailboxSummary {
            mailbox: mailbox.clone(),
            ..Default::default()
        };
        let creds = self
            .config
            .source
            .credentials(&account.username, account.password.as_ref())
            .and_then(|s| {
                self.config
                    .upstream
                    .credentials(&account.email, None)
                    .map(|d| (s, d))
            });
        let (src_creds, dst_creds) = match creds {
            Ok(c) => c,
            Err(e) => {
                summary.fatal = Some(format!("{e}"));
                return summary;
            }
        };
        self.set_status(&mailbox, "Syncing", None);

        let wake = Arc::new(Notify::new());
        let source_done = Arc::new(AtomicBool::new(false));
        let src_task = {
            let engine = self.clone();
            let wake = wake.clone();
            let done = source_done.clone();
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let r = engine.run_source(&mailbox, &src_creds, &wake).await;
                done.store(true, Ordering::SeqCst);
                wake.notify_one();
                r
            })
        };
        let up_task = {
            let engine = self.clone();
            let wake = wake.clone();
            let done = source_done.clone();
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                engine
                    .run_upstream(&mailbox, &dst_creds, &wake, &done)
                    .await
            })
        };
        let (src, up) = tokio::join!(src_task, up_task);
        match src {
            Ok(Ok(r)) => {
                summary.folders = r.folders;
                summary.errors.extend(r.errors);
            }
            Ok(Err(e)) => summary.fatal = Some(format!("source: {e}")),
            Err(e) => summary.fatal = Some(format!("source task: {e}")),
        }
        match up {
            Ok(Ok(r)) => {
                summary.copied = r.appended;
                summary.bytes = r.bytes;
                summary.errors.extend(r.errors);
            }
            Ok(Err(e)) => {
                let e = format!("destination: {e}");
                summary.fatal = Some(match summary.fatal.take() {
                    Some(s) => format!("{s}; {e}"),
                    None => e,
                });
            }
            Err(e) => summary.fatal = Some(format!("upstream task: {e}")),
        }
        if let Ok(c) = self.spool.counts(&mailbox) {
            summary.skipped = c.skipped;
            summary.failed = c.failed + c.spooled + c.appending;
        }
        summary.seconds = started.elapsed().as_secs_f64();
        let status = if summary.ok() { "Synced" } else { "Failed" };
        let error = summary
            .fatal
            .clone()
            .or_else(|| summary.errors.first().cloned());
        self.set_status(&mailbox, status, error);
        let _ = self.spool.flush();
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

    /// True if `f` is excluded by `[sync] exclude_folders`, judged with the source's own
    /// namespace so that both `INBOX.Junk` and `Junk` match on a Courier-style server.
    fn excluded(&self, f: &ListedFolder, source_prefix: &str) -> bool {
        let mapper = FolderMapper::new(
            Namespace {
                prefix: source_prefix.to_string(),
                delimiter: f.delimiter,
            },
            Namespace::exchange(),
            &[],
            &self.config.sync.folder_map,
            &self.config.sync.exclude_folders,
        );
        matches!(mapper.map(|m| m.map(f)), Ok(Mapped::Excluded { .. }))
    }

    async fn run_source(
        &self,
        mailbox: &str,
        creds: &Credentials,
        wake: &Notify,
    ) -> anyhow::Result<source::SourceReport> {
        let _slot = self.source.slots.acquire().await?;
        let opts = self.source_options();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.source.session(creds).await?;
            let r = async {
                let (folders, prefix) = source::list_folders(&mut client).await?;
                let folders: Vec<ListedFolder> = folders
                    .into_iter()
                    .filter(|f| !self.excluded(f, &prefix))
                    .collect();
                source::read_mailbox(
                    &mut client,
                    &self.spool,
                    mailbox,
                    &folders,
                    &prefix,
                    &opts,
                    || wake.notify_one(),
                )
                .await
            }
            .await;
            match r {
                Ok(report) => {
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

    async fn run_upstream(
        &self,
        mailbox: &str,
        creds: &Credentials,
        wake: &Notify,
        source_done: &AtomicBool,
    ) -> anyhow::Result<upstream::PushReport> {
        let _slot = self.upstream.slots.acquire().await?;
        let opts = self.upstream_options();
        let mut total = upstream::PushReport::default();
        let mut attempt = 0;
        'session: loop {
            attempt += 1;
            let mut client = self.upstream.session(creds).await?;
            let mut created: HashMap<String, String> = HashMap::new();
            loop {
                // Read the flag before the pass: a pass that started after the source finished
                // has seen everything it spooled.
                let finished = source_done.load(Ordering::SeqCst);
                match self
                    .push_pass(&mut client, mailbox, &opts, &mut created, &mut total)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) && attempt < 5 => {
                        tracing::warn!(mailbox, error = %e, attempt, "destination connection lost; resuming");
                        tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                        continue 'session;
                    }
                    Err(e) => return Err(e),
                }
                if finished {
                    client.logout().await;
                    return Ok(total);
                }
                wake.notified().await;
            }
        }
    }

    /// One pass over every spooled folder of the mailbox.
    async fn push_pass(
        &self,
        client: &mut Client,
        mailbox: &str,
        opts: &UpstreamOptions,
        created: &mut HashMap<String, String>,
        total: &mut upstream::PushReport,
    ) -> anyhow::Result<()> {
        let folders = self.spool.folders(mailbox)?;
        if folders.is_empty() {
            return Ok(());
        }
        let dest_list = client.list().await?;
        let dest_prefix = client
            .namespace()
            .await?
            .map(|(p, _)| p)
            .unwrap_or_default();
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
            &dest_list,
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
        for (src, mapped) in mapper.map_all(&listed) {
            let dest = match mapped {
                Mapped::Excluded { .. } => continue,
                Mapped::To { dest, .. } => dest,
            };
            if !created.contains_key(&dest)
                && !dest_list.iter().any(|d| d.name.eq_ignore_ascii_case(&dest))
            {
                client.create(&dest).await?;
                tracing::info!(mailbox, folder = %src.name, dest = %dest, "created destination folder");
            }
            created.insert(dest.clone(), src.name.clone());
            let r =
                upstream::push_folder(client, &self.spool, mailbox, &src.name, &dest, opts).await?;
            total.appended += r.appended;
            total.bytes += r.bytes;
            total.recovered += r.recovered;
            total.flags_updated += r.flags_updated;
            total.failed += r.failed;
            total.errors.extend(r.errors);
        }
        Ok(())
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    if let Some(upstream::UpstreamError::Imap(i)) = e.downcast_ref::<upstream::UpstreamError>() {
        return i.is_transient();
    }
    e.downcast_ref::<ImapError>()
        .is_some_and(|i| i.is_transient())
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
                if r.errors.len() > 1 {
                    format!(" (+{} more)", r.errors.len() - 1)
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
    s
}
