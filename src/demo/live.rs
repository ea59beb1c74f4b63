//! `cutover demo`: the daemon and its status page on a local migration, until Ctrl-C.
//!
//! What a newcomer should see on the page: the counts move (the destination takes a
//! paced number of messages per second per mailbox), a throttle happen and recover (the
//! proxy in front of the destination answers every [`THROTTLE_EVERY`]-th APPEND of a
//! mailbox as Exchange does when it throttles), the statuses reach Synced, and then a
//! message delivered during the demo carried by the next delta pass.
//!
//! Everything runs in this process but the two Dovecot servers, whose PIDs are printed;
//! Ctrl-C (SIGINT) or SIGTERM stops the daemon, then the proxy, then both servers by
//! PID.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::proxy::{Action, Proxy};
use super::{fill_source, write_config, DemoTls, DEMO_USERS};
use crate::daemon::report::{snapshot_path, Snapshot};
use crate::testbed::Testbed;

/// Every this many APPENDs of a mailbox, the proxy answers with a throttle.
pub const THROTTLE_EVERY: u64 = 70;
/// The backoff the throttle answer suggests.
pub const THROTTLE_MS: u64 = 4000;
/// How often the daemon runs a delta pass in the demo.
pub const DELTA_INTERVAL_S: u64 = 15;
/// The subject of the message delivered during the demo.
pub const DELTA_SUBJECT: &str = "Delivered during the demo";

/// What `cutover demo` was asked.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The status page's `[web] listen`.
    pub listen: String,
    /// Messages per second per mailbox toward the destination.
    pub rate: f64,
    /// More INBOX messages per user than `demo --once` has, so that there is something
    /// to watch.
    pub extra_inbox: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            listen: "127.0.0.1:8080".into(),
            rate: 10.0,
            extra_inbox: 60,
        }
    }
}

/// Runs the live demo until SIGINT or SIGTERM; true if it stopped cleanly.
pub async fn run(opts: LiveOptions) -> anyhow::Result<bool> {
    // From here on SIGINT is the daemon's to handle (tokio tells every listener): a
    // Ctrl-C while the servers start must not kill the process and leave them running.
    let mut early_int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    println!("starting a source and a destination Dovecot on 127.0.0.1 ...");
    let extra = opts.extra_inbox;
    let tb = tokio::task::spawn_blocking(move || -> anyhow::Result<Testbed> {
        let tb = Testbed::start(&DEMO_USERS)?;
        fill_source(&tb, extra)?;
        Ok(tb)
    })
    .await??;
    let tb = Arc::new(tb);
    println!(
        "source Dovecot pid {} (imaps 127.0.0.1:{}), destination Dovecot pid {} (imap 127.0.0.1:{})",
        tb.source.pid(),
        tb.source.tls_port(),
        tb.dest.pid(),
        tb.dest.plain_port()
    );
    let schedule: super::proxy::Schedule = Arc::new(|_user: &str, n: u64| {
        if n > 0 && n % THROTTLE_EVERY == 0 {
            Action::Throttle { ms: THROTTLE_MS }
        } else {
            Action::Forward
        }
    });
    let proxy = Proxy::start(tb.dest.plain_port(), schedule).await;
    println!(
        "destination reached through a proxy on 127.0.0.1:{} that throttles every {}th APPEND of a mailbox",
        proxy.port(),
        THROTTLE_EVERY
    );
    let config = live_config(&tb, proxy.port(), &opts)?;
    println!("config: {}", config.display());
    let stopped_early = futures_now(early_int.recv()).await;
    let result = if stopped_early {
        println!("interrupted before the daemon started");
        Ok(true)
    } else {
        drive(tb.clone(), &config).await
    };
    drop(early_int);
    println!("stopping the proxy and both Dovecot servers ...");
    drop(proxy);
    // The story's copies went with it: this is the last, and dropping it stops both
    // servers by PID.
    tokio::task::spawn_blocking(move || drop(tb)).await?;
    println!("demo stopped");
    result
}

/// True if `f` is ready at once (a signal that came while the servers started).
async fn futures_now<F: std::future::Future>(f: F) -> bool {
    tokio::select! {
        biased;
        _ = f => true,
        _ = std::future::ready(()) => false,
    }
}

/// The daemon, and beside it the story told on standard output, until the daemon stops.
async fn drive(tb: Arc<Testbed>, config: &Path) -> anyhow::Result<bool> {
    let daemon = crate::daemon::run(config);
    tokio::pin!(daemon);
    let spool = config.parent().map(|d| d.join("spool")).unwrap_or_default();
    let story = narrate(tb, spool);
    tokio::pin!(story);
    let mut told = false;
    loop {
        tokio::select! {
            r = &mut daemon => return r,
            r = &mut story, if !told => {
                told = true;
                if let Err(e) = r {
                    println!("the demo's story stopped: {e:#}");
                }
            }
        }
    }
}

/// Tells where the page is, waits for every mailbox to be Synced, delivers a message and
/// waits for the delta pass to carry it.
async fn narrate(tb: Arc<Testbed>, spool: PathBuf) -> anyhow::Result<()> {
    let address = crate::web::address_path(&spool);
    let url = wait_for(Duration::from_secs(60), move || {
        std::fs::read_to_string(&address)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .await
    .context("the status page did not start (see the log)")?;
    println!("\nstatus page: {url}\n(Ctrl-C stops the daemon, the proxy and both servers)\n");
    let status = spool.clone();
    let snap = wait_for(Duration::from_secs(1800), move || {
        read_snapshot(&status)
            .filter(|s| !s.mailboxes.is_empty() && s.mailboxes.iter().all(|r| r.status == "Synced"))
    })
    .await
    .context("the mailboxes did not all reach Synced")?;
    let copied: u64 = snap.mailboxes.iter().map(|r| r.items_synced).sum();
    println!("every mailbox is Synced ({copied} messages at the destination)");
    let (login, _, email) = DEMO_USERS[0];
    let body = format!(
        "From: Late Sender <late@legacy.example>\r\nTo: {email}\r\nSubject: {DELTA_SUBJECT}\r\n\
         Date: {}\r\nMessage-ID: <demo-delta-{}@legacy.example>\r\n\r\nThis arrived at the \
         legacy server after the first pass.\r\n",
        chrono::Utc::now().to_rfc2822(),
        std::process::id()
    );
    let src = tb.clone();
    tokio::task::spawn_blocking(move || {
        src.source
            .deliver(login, "INBOX", body.as_bytes(), &[], None)
    })
    .await??;
    println!(
        "delivered \"{DELTA_SUBJECT}\" to {email}'s INBOX at the source; the next delta pass \
         (every {DELTA_INTERVAL_S} s) carries it"
    );
    let started = Instant::now();
    let dest = tb.clone();
    let user = email.to_string();
    wait_for(Duration::from_secs(300), move || {
        let found = dest
            .dest
            .doveadm(&[
                "search",
                "-u",
                &user,
                "mailbox",
                "INBOX",
                "subject",
                DELTA_SUBJECT,
            ])
            .unwrap_or_default();
        (!found.trim().is_empty()).then_some(())
    })
    .await
    .context("the delta pass did not carry the message")?;
    println!(
        "\"{DELTA_SUBJECT}\" is in {email}'s INBOX at the destination, carried as a delta after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Polls `f` every half second (on a blocking thread: it may run doveadm) until it
/// gives a value, for `limit` at most.
async fn wait_for<T: Send + 'static>(
    limit: Duration,
    f: impl Fn() -> Option<T> + Send + Sync + 'static,
) -> Option<T> {
    let f = Arc::new(f);
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let g = f.clone();
        if let Ok(Some(v)) = tokio::task::spawn_blocking(move || g()).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

fn read_snapshot(spool: &Path) -> Option<Snapshot> {
    let text = std::fs::read(snapshot_path(spool)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The demo's config: the destination through the proxy (plain IMAP on loopback), paced,
/// deltas every [`DELTA_INTERVAL_S`], the page on `opts.listen`.
fn live_config(tb: &Testbed, proxy_port: u16, opts: &LiveOptions) -> anyhow::Result<PathBuf> {
    let work = tb.dir.path().join("demo");
    let config = write_config(
        tb,
        &work,
        &DEMO_USERS,
        DemoTls {
            source_implicit: true,
            dest_implicit: false,
        },
        &format!(
            "[sync]\ninterval = \"{DELTA_INTERVAL_S}s\"\n\n[web]\nlisten = \"{}\"\n",
            opts.listen
        ),
    )?;
    let text = std::fs::read_to_string(&config)?;
    let start = text
        .find("[upstream]\n")
        .context("no [upstream] in the demo config")?;
    let end = start
        + text[start..]
            .find("\n\n")
            .context("no end of [upstream] in the demo config")?;
    let upstream = format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {proxy_port}\ntls = \"none\"\nauth = \"plain\"\n\
         admin_user = \"{}\"\nadmin_password = \"{}\"\nadmin_login = \"authzid\"\n\
         max_connections = 4\nmultiappend = false\nmessages_per_second = {}",
        crate::testbed::MASTER_USER,
        crate::testbed::MASTER_PASSWORD,
        opts.rate
    );
    std::fs::write(
        &config,
        format!("{}{upstream}{}", &text[..start], &text[end..]),
    )?;
    Ok(config)
}
