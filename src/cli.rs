//! What the subcommands do, kept out of `main.rs` so tests can call them.

use std::path::Path;
use std::sync::Arc;

use crate::accounts;
use crate::config::Config;
use crate::engine::{summary_table, Engine};

/// `println!` above the progress bar `$bar`, which is redrawn after.
macro_rules! say {
    ($bar:expr, $($t:tt)*) => {
        $bar.suspend(|| println!($($t)*))
    };
}

/// Loads the config and the CSV (printing the CSV's bad rows), keeping the mailboxes of
/// this appliance's shard (`[fleet] shard`).
pub(crate) fn load(config: &Path) -> anyhow::Result<(Config, accounts::Accounts)> {
    load_sharded(config).map(|(cfg, accts, _)| (cfg, accts))
}

/// [`load`], with what this shard took of the CSV.
pub(crate) fn load_sharded(
    config: &Path,
) -> anyhow::Result<(Config, accounts::Accounts, crate::fleet::owner::Ownership)> {
    let cfg = Config::load(config)?;
    let accts = accounts::load(&cfg.mailboxes).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the mailboxes CSV {}: {e}",
            cfg.mailboxes.display()
        )
    })?;
    for e in &accts.errors {
        eprintln!("error: {e}");
    }
    let mut accts = accts;
    let shard = cfg
        .fleet
        .shard()
        .map_err(|e| anyhow::anyhow!("[fleet] shard: {e}"))?;
    let own = crate::fleet::owner::keep_owned(shard, &mut accts.accounts);
    if cfg.fleet.enabled() {
        tracing::info!("{}", own.line());
    }
    Ok((cfg, accts, own))
}

/// Points each account at the id the spool already uses for its mailbox, where an
/// older version wrote it with other capitals (see [`accounts::adopt_spool_ids`]).
/// Must run before anything is written for the accounts.
pub(crate) fn adopt_spool_ids(
    spool: &crate::spool::Spool,
    accounts: &mut [accounts::Account],
) -> anyhow::Result<()> {
    let known = spool.mailboxes().map_err(|e| {
        anyhow::anyhow!(
            "cannot read the mailboxes of the spool at {}: {e}",
            spool.path().display()
        )
    })?;
    for note in accounts::adopt_spool_ids(accounts, &known) {
        tracing::info!("{note}");
    }
    Ok(())
}

/// `cutover sync --once`: one pass; true if every mailbox (and every CSV row) is fine.
pub async fn sync_once(config: &Path) -> anyhow::Result<bool> {
    let (cfg, mut accts) = load(config)?;
    let fleet = cfg.fleet.enabled();
    let engine = Arc::new(Engine::new(cfg)?);
    adopt_spool_ids(&engine.spool, &mut accts.accounts)?;
    crate::fleet::owner::record(&engine.spool, fleet, &accts.accounts)?;
    // Compresses what earlier runs spooled raw, on CPU time nothing else wants; stopped
    // (after the body at hand) when this returns.
    let _compactor = crate::spool::Compactor::start(engine.spool.clone());
    // A token endpoint that refuses us is one error for the run, not one per mailbox.
    engine.preflight().await?;
    // Paused by the admin: left alone here too, and said so.
    let pauses = engine.spool.pauses()?;
    let (paused, active): (Vec<_>, Vec<_>) = accts
        .accounts
        .into_iter()
        .partition(|a| pauses.of(&a.email).is_some());
    for a in &paused {
        eprintln!(
            "{}: paused, not synced (`cutover resume --mailbox {}` to go on)",
            a.email, a.email
        );
    }
    let progress = crate::progress::for_this_process();
    engine.observe(progress.clone().observer());
    let rows = engine.sync_once(&active).await;
    progress.finish();
    print!("{}", summary_table(&rows));
    for r in &rows {
        for e in &r.errors {
            eprintln!("{}: {e}", r.mailbox);
        }
        if r.errors.omitted() > 0 {
            eprintln!(
                "{}: {} more error(s) not listed here (`cutover report` lists every failed message)",
                r.mailbox,
                r.errors.omitted()
            );
        }
    }
    Ok(accts.errors.is_empty() && paused.is_empty() && rows.iter().all(|r| r.ok()))
}

/// `cutover check`: logs in to both sides for every mailbox and lists the source folders
/// with their message counts and sizes. Changes nothing (EXAMINE only).
pub async fn check(config: &Path) -> anyhow::Result<bool> {
    let (cfg, accts, own) = load_sharded(config)?;
    let engine = Engine::new(cfg)?;
    let mut all_ok = accts.errors.is_empty();
    // On a terminal, a bar over the mailboxes; the lines print above it.
    let bar =
        crate::progress::terminal::count_bar(accts.accounts.len() as u64, "mailboxes checked");
    say!(bar, "fleet: {}", own.line());
    // With xoauth2, the token first: without it no destination login can work.
    if let Some(line) = engine.preflight().await? {
        say!(bar, "{line}");
    }
    for a in &accts.accounts {
        bar.set_message(a.email.clone());
        bar.inc(1);
        if engine.config.source.kind == crate::config::SourceKind::Maildir {
            match check_maildir(&engine, a) {
                Ok(lines) => {
                    say!(bar, "{} (Maildir): ok", a.email);
                    for l in lines {
                        say!(bar, "  {l}");
                    }
                }
                Err(e) => {
                    say!(bar, "{} (Maildir): FAILED: {e}", a.email);
                    all_ok = false;
                    continue;
                }
            }
            let dst = match engine.dest_login(&a.email) {
                Ok(login) => login.credentials().await,
                Err(e) => Err(e),
            };
            match dst {
                Ok(dst) => match engine.upstream.session(&dst).await {
                    Ok(c) => {
                        say!(bar, "  destination login as {}: ok", a.email);
                        c.logout().await;
                    }
                    Err(e) => {
                        say!(bar, "  destination login as {}: FAILED: {e}", a.email);
                        all_ok = false;
                    }
                },
                Err(e) => {
                    say!(bar, "  destination login as {}: FAILED: {e}", a.email);
                    all_ok = false;
                }
            }
            continue;
        }
        let src = engine
            .config
            .source
            .credentials(&a.username, a.password.as_ref());
        let dst = match engine.dest_login(&a.email) {
            Ok(login) => login.credentials().await,
            Err(e) => Err(e),
        };
        let (src, dst) = match (src.map_err(anyhow::Error::from), dst) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                say!(bar, "{}: FAILED: {e}", a.email);
                all_ok = false;
                continue;
            }
        };
        match check_source(&engine.source, &src).await {
            Ok(lines) => {
                say!(bar, "{} (source login {}): ok", a.email, a.username);
                for l in lines {
                    say!(bar, "  {l}");
                }
            }
            Err(e) => {
                say!(
                    bar,
                    "{} (source login {}): FAILED: {e}",
                    a.email,
                    a.username
                );
                all_ok = false;
                continue;
            }
        }
        match engine.upstream.session(&dst).await {
            Ok(c) => {
                say!(bar, "  destination login as {}: ok", a.email);
                c.logout().await;
            }
            Err(e) => {
                say!(bar, "  destination login as {}: FAILED: {e}", a.email);
                all_ok = false;
            }
        }
    }
    bar.finish_and_clear();
    Ok(all_ok)
}

/// `cutover check` of a Maildir source: its folders with their file counts and sizes.
fn check_maildir(engine: &Engine, a: &accounts::Account) -> anyhow::Result<Vec<String>> {
    let root = engine.config.source.maildir_root(&a.username, &a.email)?;
    let mut problems = Vec::new();
    let folders =
        crate::source::maildir::tree::folders(&root, &engine.maildir_layout(), &mut problems)
            .map_err(anyhow::Error::msg)?;
    let mut lines = vec![format!("root {}", root.display())];
    for f in folders {
        let (mut count, mut bytes) = (0u64, 0u64);
        for sub in ["cur", "new"] {
            for e in std::fs::read_dir(f.dir.join(sub))?.flatten() {
                let name = e.file_name();
                let is_mail = name
                    .to_str()
                    .is_some_and(|n| crate::source::maildir::names::not_mail(n).is_none());
                if is_mail && e.file_type().is_ok_and(|t| t.is_file()) {
                    count += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        lines.push(format!(
            "{:<40} {:>8} messages {:>14} bytes",
            f.name, count, bytes
        ));
    }
    lines.extend(problems.into_iter().map(|p| format!("notice: {p}")));
    Ok(lines)
}

/// `cutover export`: the spool's copy of a mailbox as a Maildir++ tree at `to`.
pub fn export(
    config: &Path,
    mailbox: &str,
    to: &Path,
    folder: Option<&str>,
) -> anyhow::Result<bool> {
    let (cfg, _) = load(config)?;
    let spool = crate::spool::Spool::open(&cfg.spool.path).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the spool at {} (is the daemon running? stop it for the export): {e}",
            cfg.spool.path.display()
        )
    })?;
    let id = mailbox.trim().to_ascii_lowercase();
    let id = if spool.mailbox(&id)?.is_some() || spool.folders(&id).map(|f| !f.is_empty())? {
        id
    } else {
        mailbox.to_string()
    };
    let r = crate::export::export(&spool, &id, to, folder)?;
    for (name, dir, n) in &r.folders {
        println!("{name:<40} {n:>8} messages  {}", dir.display());
    }
    println!(
        "{} messages, {} bytes written to {}",
        r.messages,
        r.bytes,
        to.display()
    );
    if r.without_body > 0 {
        println!(
            "{} message(s) skipped during the migration have no body in the spool and are not in the export",
            r.without_body
        );
    }
    for n in &r.notes {
        println!("notice: {n}");
    }
    Ok(true)
}

async fn check_source(
    source: &crate::engine::Side,
    creds: &crate::imap::Credentials,
) -> Result<Vec<String>, crate::imap::ImapError> {
    Ok(source_folders(source, creds)
        .await?
        .into_iter()
        .map(|(name, count, bytes)| format!("{name:<40} {count:>8} messages {bytes:>14} bytes"))
        .collect())
}

/// The selectable folders of a source mailbox: name, messages and bytes (EXAMINE only).
pub(crate) async fn source_folders(
    source: &crate::engine::Side,
    creds: &crate::imap::Credentials,
) -> Result<Vec<(String, usize, u64)>, crate::imap::ImapError> {
    let mut c = source.session(creds).await?;
    let mut lines = Vec::new();
    for f in c.list().await? {
        if !f.selectable() {
            continue;
        }
        let info = c.select(&f.name, true).await?;
        let (count, bytes) = if info.exists == 0 {
            (0, 0u64)
        } else {
            let meta = c.uid_fetch_meta("1:*", None).await?;
            (
                meta.len(),
                meta.iter().map(|m| m.size.unwrap_or(0) as u64).sum(),
            )
        };
        lines.push((f.name.clone(), count, bytes));
    }
    c.logout().await;
    Ok(lines)
}
