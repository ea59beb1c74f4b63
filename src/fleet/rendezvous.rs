//! Rendezvous (highest random weight) hashing of mailboxes onto shards.
//!
//! Every shard gets a score for a mailbox, a hash of the normalised address and the shard
//! number, and the highest score owns the mailbox. Going from N to N+1 shards, a mailbox
//! moves only if the new shard outscores the old owner, which happens for about 1/(N+1)
//! of them, and then it moves to the new shard: no mailbox moves between the old ones.
//! The hash is BLAKE3, fixed by its specification, so every appliance and every release
//! agrees on the assignment.

/// The address as it is compared: `Alice@Example.COM ` and `alice@example.com` are one.
pub fn normalise(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The score of `shard` for a normalised address.
fn score(email: &str, shard: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"cutover fleet v1\0");
    h.update(email.as_bytes());
    h.update(b"\0");
    h.update(&shard.to_le_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The shard (0..`count`) that owns `email`; 0 when `count` is 0 or 1.
pub fn owner(email: &str, count: u32) -> u32 {
    let email = normalise(email);
    (0..count.max(1))
        .max_by_key(|&s| (score(&email, s), std::cmp::Reverse(s)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user{i:05}@example.org")).collect()
    }

    #[test]
    fn growing_moves_about_one_in_n_plus_one_and_only_to_the_new_shard() {
        let all = addresses(20_000);
        for n in [1u32, 2, 3, 4, 7, 10] {
            let moved: Vec<&String> = all
                .iter()
                .filter(|a| owner(a, n) != owner(a, n + 1))
                .collect();
            for a in &moved {
                assert_eq!(owner(a, n + 1), n, "{a} moved between old shards");
            }
            let share = moved.len() as f64 / all.len() as f64;
            let expected = 1.0 / f64::from(n + 1);
            assert!(
                (share - expected).abs() < expected * 0.1,
                "{n} -> {}: {share:.4} moved, expected about {expected:.4}",
                n + 1
            );
        }
    }

    #[test]
    fn shards_are_balanced_and_the_address_is_normalised() {
        let all = addresses(20_000);
        let mut per = [0usize; 4];
        for a in &all {
            per[owner(a, 4) as usize] += 1;
        }
        for c in per {
            assert!((4_500..5_500).contains(&c), "{per:?}");
        }
        assert_eq!(
            owner(" Alice@Example.COM", 4),
            owner("alice@example.com", 4)
        );
        assert_eq!(owner("a@b.c", 1), 0);
        assert_eq!(owner("a@b.c", 0), 0);
    }
}
