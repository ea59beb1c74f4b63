//! `cutover notify before|after [--mailbox X]... [--again]`.
//!
//! Both run with the daemon stopped: they need the spool, which the daemon holds, and
//! the notice must be recorded before any sync reads the INBOX it lands in. The daemon
//! sends the welcome by itself when a mailbox is Completed; this is for the ones it
//! could not reach, or a template changed afterwards (`--again`).

use std::path::Path;

use super::send::{self, Delivery};
use super::Kind;
use crate::daemon::is_locked;
use crate::engine::Engine;

/// Runs the command; true if every named mailbox has its letter.
pub async fn run(
    config: &Path,
    kind: Kind,
    mailboxes: &[String],
    again: bool,
) -> anyhow::Result<bool> {
    let (cfg, accts) = crate::cli::load(config)?;
    let mut accounts = accts.accounts;
    let template = cfg
        .notify
        .template(kind)
        .map_err(|e| anyhow::anyhow!("[notify] {}: {e}", kind.as_str()))?;
    let Some(template) = template else {
        anyhow::bail!(
            "[notify] {} is not set in {}: there is no letter to send",
            kind.as_str(),
            cfg.file.display()
        );
    };
    let mut wanted = Vec::new();
    for m in mailboxes {
        let m = m.trim().to_lowercase();
        if !accounts.iter().any(|a| a.email.to_lowercase() == m) {
            anyhow::bail!("{m} is not a mailbox of {}", cfg.mailboxes.display());
        }
        wanted.push(m);
    }
    let engine = match Engine::new(cfg) {
        Ok(e) => e,
        Err(e) if is_locked(&e) => anyhow::bail!(
            "the daemon is running (it holds the spool); stop it, run `cutover notify {}`, \
             then start it again",
            kind.as_str()
        ),
        Err(e) => return Err(e),
    };
    crate::cli::adopt_spool_ids(&engine.spool, &mut accounts)?;
    if kind == Kind::After {
        // The welcome goes to Office 365: a token endpoint that refuses us is one error.
        engine.preflight().await?;
    }
    let names = send::display_names(&engine);
    let mut all_ok = true;
    for a in accounts
        .iter()
        .filter(|a| wanted.is_empty() || wanted.contains(&a.email.to_lowercase()))
    {
        let result: anyhow::Result<Option<Delivery>> = match kind {
            Kind::Before => send::before(&engine, &template, a, &names, again)
                .await
                .map(Some),
            Kind::After => {
                let completed = engine
                    .spool
                    .mailbox(&a.email)?
                    .and_then(|st| st.completed_unix);
                match completed {
                    Some(at) => send::after(&engine, &template, a, &names, at, again)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            }
        };
        match result {
            Ok(Some(d)) => println!("{}: {}", a.email, d.describe(kind)),
            Ok(None) => println!(
                "{}: not Completed yet; the welcome goes when it is (`cutover complete`)",
                a.email
            ),
            Err(e) => {
                all_ok = false;
                println!("{}: FAILED: {e:#}", a.email);
            }
        }
    }
    engine.spool.flush()?;
    Ok(all_ok)
}
