//! The memory budget of bodies in flight (`[spool] max_inflight_bytes`) against real
//! Dovecot: every body of both sides goes through it, it is never exceeded, and a message
//! larger than the whole budget still goes (alone).

mod common;

use std::sync::Arc;

use common::*;

const USERS: [(&str, &str, &str); 3] = [
    ("ana", "ana-pw", "ana@example.test"),
    ("ben", "ben-pw", "ben@example.test"),
    ("cai", "cai-pw", "cai@example.test"),
];

const BUDGET: u64 = 512 * 1024;

/// A message of about `size` bytes, CRLF lines of text.
fn weighty(user: &str, i: usize, size: usize) -> Vec<u8> {
    let mut body = cutover::demo::sample_message(user, i, "budget");
    let line = format!("{user} {i} lorem ipsum dolor sit amet consectetur adipiscing\r\n");
    while body.len() < size {
        body.extend_from_slice(line.as_bytes());
    }
    body
}

#[test]
fn bodies_stay_within_the_budget_and_a_larger_message_goes_alone() {
    let Some(tb) = testbed(&USERS) else { return };
    let mut bytes = 0u64;
    let mut count = 0usize;
    for (u, (login, _, _)) in USERS.iter().enumerate() {
        for i in 0..8 {
            // 150-220 KB each: at most three fit the budget at once.
            let body = weighty(login, i, 150_000 + (i * 10_000) + u * 1000);
            bytes += body.len() as u64;
            count += 1;
            tb.source
                .deliver(login, "INBOX", &body, &[], Some(1_700_000_000 + i as i64))
                .unwrap();
        }
    }
    // Three times the budget: it must take all of it, once nothing else is held.
    let big = weighty("ana", 99, 3 * BUDGET as usize);
    bytes += big.len() as u64;
    count += 1;
    tb.source
        .deliver("ana", "INBOX", &big, &[], Some(1_700_001_000))
        .unwrap();

    let config = demo_config(&tb, &USERS, "[sync]\nmax_message_bytes = 10000000\n");
    let mut cfg = cutover::config::Config::load(&config).unwrap();
    cfg.spool.max_inflight_bytes = BUDGET;
    let accounts = cutover::accounts::load(&cfg.mailboxes).unwrap().accounts;
    let engine = Arc::new(cutover::engine::Engine::new(cfg).unwrap());
    let rt = rt();
    let rows = rt.block_on(engine.sync_once(&accounts));
    for r in &rows {
        assert!(r.ok(), "{r:?}");
    }
    assert_eq!(rows.iter().map(|r| r.copied).sum::<u64>(), count as u64);
    for (login, _, email) in USERS {
        let s = rt.block_on(snapshot(&tb, &tb.source, login));
        let d = rt.block_on(snapshot(&tb, &tb.dest, email));
        assert_same(&s, &d);
    }

    let budget = &engine.budget;
    assert_eq!(budget.total(), BUDGET);
    assert_eq!(budget.held_now(), 0, "everything given back");
    // Every body was taken from the budget twice: received from the source, and read
    // from the spool for the destination.
    assert!(
        budget.taken() >= 2 * bytes,
        "taken {} of {} bytes spooled and sent",
        budget.taken(),
        2 * bytes
    );
    assert!(budget.peak() <= BUDGET, "peak {}", budget.peak());
    // The large message held all of it, so nothing else at the same time.
    assert_eq!(budget.peak(), BUDGET);
}
