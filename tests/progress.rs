//! What `sync --once` and `check` print while they run, without a terminal (a pipe, as
//! under journald): one summary line per mailbox per pass on standard error, and standard
//! output with the final table alone. The terminal's bars are tested by drawing them into
//! a buffer (src/progress/terminal.rs).

mod common;

use common::*;

#[test]
fn without_a_terminal_one_line_per_mailbox_per_pass() {
    let users = [
        ("alice", "alice-pw", "alice@example.test"),
        ("bob", "bob-pw", "bob@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "alice", "INBOX", 3, |_| vec![]);
    fill(&tb, "alice", "INBOX.Work", 2, |_| vec![]);
    let csv = [users[0], ("bob", "not-bobs-password", "bob@example.test")];
    let config = demo_config(&tb, &csv, "");
    for pass in 1..=2 {
        let out = cutover(&config, &["sync", "--once"]);
        assert_eq!(out.status.code(), Some(1), "bob fails: {}", stderr(&out));
        let err = stderr(&out);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| {
                l.starts_with("alice@example.test: ") || l.starts_with("bob@example.test: ")
            })
            .filter(|l| l.contains(" copied, "))
            .collect();
        assert_eq!(lines.len(), 2, "pass {pass}: one line each:\n{err}");
        let want = if pass == 1 { 5 } else { 0 };
        let alice = lines.iter().find(|l| l.starts_with("alice")).unwrap();
        assert!(
            alice.starts_with(&format!(
                "alice@example.test: Synced: {want} copied, 0 skipped, 0 failed, "
            )),
            "{alice}"
        );
        assert!(alice.contains(" in ") && alice.ends_with(" s"), "{alice}");
        let bob = lines.iter().find(|l| l.starts_with("bob")).unwrap();
        assert!(
            bob.starts_with("bob@example.test: Failed: 0 copied, 0 skipped, 0 failed, 0 B in "),
            "{bob}"
        );
        assert!(
            bob.to_lowercase().contains("authentication failed"),
            "{bob}"
        );
        // Nothing of it on standard output: the table alone, as scripts read it.
        let table = stdout(&out);
        assert!(!table.contains(" copied, "), "{table}");
        assert_eq!(copied(&out, "alice@example.test"), want);
        // No bar was drawn into the pipe.
        assert!(!err.contains("msgs/s"), "{err}");
        // The folder mapping is at debug, not in the INFO log.
        assert!(!err.contains("folder mapping"), "{err}");
    }
    let out = cutover(&config, &["check"]);
    let text = stdout(&out);
    assert!(
        text.contains("alice@example.test (source login alice): ok"),
        "{text}"
    );
    assert!(
        !stderr(&out).contains("mailboxes checked"),
        "{}",
        stderr(&out)
    );
}
