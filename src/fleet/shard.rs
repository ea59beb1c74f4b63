//! Which slice of the mailboxes this appliance takes: shard `index` of `count`.

use std::fmt;

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// More shards than this is a typo, not a fleet (and the plan prints one line each).
pub const MAX_SHARDS: u32 = 4096;

impl Shard {
    /// The whole migration on one appliance.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// `"i/N"` or `"ordinal/N"`, where the ordinal is the number after the last `-` of
    /// `host` (a StatefulSet pod is named `<set>-<ordinal>`, and so is its host).
    pub fn parse(text: &str, host: Option<&str>) -> Result<Shard, String> {
        let (i, n) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not \"i/N\" or \"ordinal/N\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} in {text:?} is not a number of shards"))?;
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the number of shards must be 1 to {MAX_SHARDS}, not {count}"
            ));
        }
        let index: u32 = match i.trim() {
            "ordinal" => {
                let host = host.ok_or("\"ordinal\" needs the host name, which is unknown")?;
                ordinal(host).ok_or_else(|| {
                    format!(
                        "\"ordinal\": the host name {host:?} does not end in -<number> \
                         (a StatefulSet pod's does)"
                    )
                })?
            }
            i => i
                .parse()
                .map_err(|_| format!("{i:?} in {text:?} is not a shard number or \"ordinal\""))?,
        };
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist (shards count from 0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether this shard migrates `email`.
    pub fn owns(&self, email: &str) -> bool {
        super::rendezvous::owner(email, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The number after the last `-` of a host name (its first label): `cutover-3` is 3.
fn ordinal(host: &str) -> Option<u32> {
    let first = host.trim().split('.').next()?;
    let (_, n) = first.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The host name: `HOSTNAME` (Kubernetes sets it to the pod's name), else the kernel's.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_index_and_ordinal() {
        assert_eq!(Shard::parse("2/4", None), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(
            Shard::parse(" ordinal / 5 ", Some("cutover-3.cutover.mail.svc")),
            Ok(Shard { index: 3, count: 5 })
        );
        assert!(Shard::parse("4/4", None)
            .unwrap_err()
            .contains("does not exist"));
        assert!(Shard::parse("0/0", None).is_err());
        assert!(Shard::parse("1", None).is_err());
        assert!(Shard::parse("ordinal/4", Some("cutover")).is_err());
        assert!(Shard::parse("ordinal/4", Some("cutover-7")).is_err());
        assert!(Shard::parse("ordinal/4", None).is_err());
        assert!(Shard::parse("x/4", None).is_err());
    }
}
