//! `cutover fleet plan --shards N`: which appliance would take which mailboxes, and how
//! much mail each would copy, before anything starts.

use std::path::Path;

use super::rendezvous;
use crate::accounts::Account;

/// One shard's share of the migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardPlan {
    pub mailboxes: Vec<String>,
    /// Bytes at the source of the mailboxes measured.
    pub bytes: u64,
    /// Mailboxes whose size could not be measured (login refused, source down).
    pub unmeasured: usize,
}

/// The assignment of `accounts` to `count` shards; `sizes[i]` is the size of
/// `accounts[i]` (None: not measured).
pub fn assign(accounts: &[Account], sizes: &[Option<u64>], count: u32) -> Vec<ShardPlan> {
    let mut plan = vec![ShardPlan::default(); count.max(1) as usize];
    for (i, a) in accounts.iter().enumerate() {
        let p = &mut plan[rendezvous::owner(&a.email, count) as usize];
        p.mailboxes.push(a.email.clone());
        match sizes.get(i).copied().flatten() {
            Some(b) => p.bytes += b,
            None => p.unmeasured += 1,
        }
    }
    plan
}

/// The plan as printed: a line per shard, then with `list` its mailboxes.
pub fn render(plan: &[ShardPlan], measured: bool, list: bool) -> String {
    let mut out = String::new();
    let n = plan.len();
    out.push_str(&format!(
        "{:<8} {:>10} {:>16}\n",
        "shard", "mailboxes", "bytes"
    ));
    for (i, p) in plan.iter().enumerate() {
        let bytes = if !measured {
            "-".to_string()
        } else if p.unmeasured > 0 {
            format!("{} (+{} unmeasured)", p.bytes, p.unmeasured)
        } else {
            p.bytes.to_string()
        };
        out.push_str(&format!(
            "{:<8} {:>10} {:>16}\n",
            format!("{i}/{n}"),
            p.mailboxes.len(),
            bytes
        ));
    }
    if list {
        for (i, p) in plan.iter().enumerate() {
            for m in &p.mailboxes {
                out.push_str(&format!("{i}/{n} {m}\n"));
            }
        }
    }
    out
}

/// `cutover fleet plan`: reads the CSV (every row, whatever this appliance's own shard)
/// and, with `measure`, logs in to the source for each mailbox to add up its folders.
pub async fn run(config: &Path, shards: u32, measure: bool, list: bool) -> anyhow::Result<bool> {
    if shards == 0 || shards > super::shard::MAX_SHARDS {
        anyhow::bail!(
            "--shards must be 1 to {}, not {shards}",
            super::shard::MAX_SHARDS
        );
    }
    let cfg = crate::config::Config::load(config)?;
    let accts = crate::accounts::load(&cfg.mailboxes).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the mailboxes CSV {}: {e}",
            cfg.mailboxes.display()
        )
    })?;
    for e in &accts.errors {
        eprintln!("error: {e}");
    }
    let mut sizes = vec![None; accts.accounts.len()];
    if measure {
        let source = crate::engine::Side::new(&cfg.source, cfg.sync.max_message_bytes)?;
        for (i, a) in accts.accounts.iter().enumerate() {
            let creds = match cfg.source.credentials(&a.username, a.password.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: not measured: {e}", a.email);
                    continue;
                }
            };
            match crate::cli::source_folders(&source, &creds).await {
                Ok(folders) => sizes[i] = Some(folders.iter().map(|f| f.2).sum()),
                Err(e) => eprintln!("{}: not measured: {e}", a.email),
            }
        }
    }
    let plan = assign(&accts.accounts, &sizes, shards);
    print!("{}", render(&plan, measure, list));
    Ok(accts.errors.is_empty() && plan.iter().all(|p| p.unmeasured == 0 || !measure))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(email: &str) -> Account {
        Account {
            line: 1,
            email: email.into(),
            username: email.into(),
            password: None,
        }
    }

    #[test]
    fn every_mailbox_is_in_exactly_one_shard_with_its_bytes() {
        let accounts: Vec<Account> = (0..100).map(|i| account(&format!("u{i}@x.test"))).collect();
        let sizes: Vec<Option<u64>> = (0..100).map(|i| (i != 7).then_some(10)).collect();
        let plan = assign(&accounts, &sizes, 4);
        assert_eq!(plan.len(), 4);
        assert_eq!(plan.iter().map(|p| p.mailboxes.len()).sum::<usize>(), 100);
        assert_eq!(plan.iter().map(|p| p.bytes).sum::<u64>(), 990);
        assert_eq!(plan.iter().map(|p| p.unmeasured).sum::<usize>(), 1);
        for (i, p) in plan.iter().enumerate() {
            for m in &p.mailboxes {
                assert_eq!(rendezvous::owner(m, 4) as usize, i);
            }
        }
        let text = render(&plan, true, true);
        assert!(text.contains("3/4"), "{text}");
        assert_eq!(text.lines().count(), 1 + 4 + 100);
    }
}
