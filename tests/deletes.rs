//! `[sync] propagate_deletes` between two real Dovecot servers, with the real binary:
//! off by default, exactly the expunged messages deleted when on, the `max_delete_percent`
//! safety limit, a deletion interrupted after its UID EXPUNGE, a destination without
//! UIDPLUS, and a message expunged before it was copied.

mod common;

use std::path::Path;

use common::*;
use cutover::spool::{MessageState, Spool};
use cutover::testbed::Testbed;

/// The summary row of `mailbox`.
fn row(out: &std::process::Output, mailbox: &str) -> String {
    let text = stdout(out);
    text.lines()
        .find(|l| l.starts_with(mailbox))
        .unwrap_or_else(|| panic!("no summary row for {mailbox} in:\n{text}"))
        .to_string()
}

/// Expunges `uids` (an IMAP UID set such as `3:4`) of `folder` at the source.
fn expunge_at_source(tb: &Testbed, user: &str, folder: &str, uids: &str) {
    tb.source
        .doveadm(&["expunge", "-u", user, "mailbox", folder, "uid", uids])
        .unwrap();
}

fn total(s: &Snapshot) -> usize {
    s.values().map(Vec::len).sum()
}

/// Every record of `mailbox` in the spool, by state name.
fn spool_states(dir: &Path, mailbox: &str) -> std::collections::BTreeMap<String, usize> {
    let spool = Spool::open(&dir.join("spool")).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for f in spool.folders(mailbox).unwrap() {
        for uv in spool.generations(mailbox, &f.name).unwrap() {
            for r in spool.messages(mailbox, &f.name, uv).unwrap() {
                let name = match r.state {
                    MessageState::Spooled => "Spooled",
                    MessageState::Appending { .. } => "Appending",
                    MessageState::Appended { .. } => "Appended",
                    MessageState::Skipped { .. } => "Skipped",
                    MessageState::Failed { .. } => "Failed",
                    MessageState::Expunging { .. } => "Expunging",
                    MessageState::Expunged => "Expunged",
                };
                *out.entry(name.to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Takes the messages of `dst` folder `folder` equal to `m` out of the snapshot; panics
/// unless exactly one is there.
fn take_one(dst: &mut Snapshot, folder: &str, m: &Seen) {
    let msgs = dst.get_mut(folder).unwrap();
    let n = msgs.iter().filter(|x| *x == m).count();
    assert_eq!(n, 1, "{folder}: {m:?} found {n} times in {msgs:#?}");
    msgs.retain(|x| x != m);
}

/// The destination's own message: what a user put into the Office 365 mailbox, marked
/// \Deleted but not expunged (as Outlook leaves them). No deletion may take it along.
fn dest_only_message(tb: &Testbed, email: &str) -> Seen {
    let body = message("written-at-the-destination");
    tb.dest
        .deliver(
            email,
            "INBOX",
            &body,
            &["\\Deleted", "\\Seen"],
            Some(1_650_000_000),
        )
        .unwrap();
    use sha2::Digest;
    let mut flags = vec!["\\Deleted".to_string(), "\\Seen".to_string()];
    flags.sort();
    Seen {
        sha256: hex(&sha2::Sha256::digest(&body)),
        flags,
        internal_date: String::new(),
    }
}

/// Finds `want` (matched by content and flags; the date is filled in) in `dst` `folder`.
fn locate(dst: &Snapshot, folder: &str, want: &Seen) -> Seen {
    dst.get(folder)
        .and_then(|v| {
            v.iter()
                .find(|m| m.sha256 == want.sha256 && m.flags == want.flags)
        })
        .cloned()
        .unwrap_or_else(|| panic!("{want:?} not in {folder}: {:#?}", dst.get(folder)))
}

#[test]
fn deletes_are_not_propagated_by_default() {
    let users = [("gina", "gina-pw", "gina@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "gina", "INBOX", 5, |_| vec!["\\Seen"]);
    fill(&tb, "gina", "INBOX.Work", 3, |_| vec![]);
    let config = demo_config(&tb, &users, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let rt = rt();
    let dst_before = rt.block_on(snapshot(&tb, &tb.dest, "gina@example.test"));
    assert_eq!(total(&dst_before), 8);

    expunge_at_source(&tb, "gina", "INBOX", "2");
    expunge_at_source(&tb, "gina", "INBOX.Work", "1:3");
    for _ in 0..2 {
        let out = cutover(&config, &["sync", "--once"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "an expunge at the source is no error"
        );
        assert_eq!(copied(&out, "gina@example.test"), 0);
        assert!(!stdout(&out).contains("deleted"), "{}", stdout(&out));
        let src = rt.block_on(snapshot(&tb, &tb.source, "gina"));
        assert_eq!(total(&src), 4);
        let dst = rt.block_on(snapshot(&tb, &tb.dest, "gina@example.test"));
        assert_eq!(dst, dst_before, "the destination keeps every message");
    }
    // Nothing about the expunges was even recorded.
    let states = spool_states(&work_dir(&tb), "gina@example.test");
    assert_eq!(states.get("Appended"), Some(&8), "{states:?}");
    assert_eq!(states.len(), 1, "{states:?}");
}

#[test]
fn propagated_delete_removes_exactly_the_expunged_messages() {
    let users = [("hank", "hank-pw", "hank@example.test")];
    let Some(tb) = testbed(&users) else { return };
    // INBOX UID 7 is marked \Deleted at the source but not expunged: it is copied with the
    // flag, and must survive the deletions at the destination.
    fill(&tb, "hank", "INBOX", 10, |i| {
        if i == 6 {
            vec!["\\Deleted"]
        } else {
            vec!["\\Seen"]
        }
    });
    fill(&tb, "hank", "INBOX.Work", 10, |_| vec!["\\Flagged"]);
    fill(&tb, "hank", "INBOX.Quiet", 4, |_| vec![]);
    let own = dest_only_message(&tb, "hank@example.test");
    let config = demo_config(
        &tb,
        &users,
        "[sync]\npropagate_deletes = true\nmax_delete_percent = 20\n",
    );
    let rt = rt();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(copied(&out, "hank@example.test"), 24);
    let mut dst = rt.block_on(snapshot(&tb, &tb.dest, "hank@example.test"));
    let own = locate(&dst, "INBOX", &own);
    take_one(&mut dst, "INBOX", &own);
    let src = rt.block_on(snapshot(&tb, &tb.source, "hank"));
    assert_same(&src, &dst);

    // Two of ten in INBOX (20 %: at the limit, not over it), one of ten in Work; meanwhile
    // a new message and a flag change, which still go through as usual.
    expunge_at_source(&tb, "hank", "INBOX", "3:4");
    expunge_at_source(&tb, "hank", "INBOX.Work", "5");
    tb.source
        .deliver(
            "hank",
            "INBOX.Work",
            &message("after-the-expunge"),
            &[],
            Some(1_700_000_000),
        )
        .unwrap();
    tb.source
        .doveadm(&[
            "flags", "add", "-u", "hank", "$Done", "mailbox", "INBOX", "uid", "1",
        ])
        .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(copied(&out, "hank@example.test"), 1);
    assert!(
        stdout(&out).contains(
            "hank@example.test: deleted 3 message(s) at the destination that the source expunged"
        ),
        "{}",
        stdout(&out)
    );
    let src = rt.block_on(snapshot(&tb, &tb.source, "hank"));
    assert_eq!(src["INBOX"].len(), 8);
    assert_eq!(src["INBOX.Work"].len(), 10);
    let mut dst = rt.block_on(snapshot(&tb, &tb.dest, "hank@example.test"));
    // The destination's own \Deleted message is untouched, and so is the copy of the
    // source's \Deleted one (assert_same checks it with its flag).
    take_one(&mut dst, "INBOX", &own);
    assert!(
        dst["INBOX"]
            .iter()
            .any(|m| m.flags.contains(&"\\Deleted".to_string())),
        "the source's \\Deleted message is still at the destination"
    );
    assert_same(&src, &dst);
    let states = spool_states(&work_dir(&tb), "hank@example.test");
    assert_eq!(states.get("Expunged"), Some(&3), "{states:?}");
    assert_eq!(states.get("Appended"), Some(&22), "{states:?}");
    assert_eq!(states.get("Expunging"), None, "{states:?}");

    // A further pass has nothing to do.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(copied(&out, "hank@example.test"), 0);
    assert!(!stdout(&out).contains("deleted"), "{}", stdout(&out));
    let mut again = rt.block_on(snapshot(&tb, &tb.dest, "hank@example.test"));
    take_one(&mut again, "INBOX", &own);
    assert_eq!(again, dst);
}

#[test]
fn mass_expunge_over_the_limit_deletes_nothing() {
    let users = [("iris", "iris-pw", "iris@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "iris", "INBOX", 10, |_| vec!["\\Seen"]);
    fill(&tb, "iris", "INBOX.Work", 20, |_| vec![]);
    let config_path = demo_config(
        &tb,
        &users,
        "[sync]\npropagate_deletes = true\nmax_delete_percent = 10\n",
    );
    let rt = rt();
    let out = cutover(&config_path, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let dst_before = rt.block_on(snapshot(&tb, &tb.dest, "iris@example.test"));
    assert_eq!(dst_before["Work"].len(), 20);

    // Work is mostly emptied at the source (75 %: refused); INBOX loses one of ten
    // (10 %: allowed, the limit is not exceeded).
    expunge_at_source(&tb, "iris", "INBOX.Work", "1:15");
    expunge_at_source(&tb, "iris", "INBOX", "10");
    let refusal = "mailbox iris@example.test, folder \"INBOX.Work\": refusing to delete 15 of \
                   20 messages (75%) that the source no longer has: over [sync] \
                   max_delete_percent = 10; nothing is deleted in this folder";
    for pass in 0..2 {
        let out = cutover(&config_path, &["sync", "--once"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "pass {pass}: the refusal fails the run"
        );
        assert!(
            row(&out, "iris@example.test").contains("ERRORS: mailbox iris@example.test, folder"),
            "{}",
            stdout(&out)
        );
        assert!(stderr(&out).contains(refusal), "{}", stderr(&out));
        let dst = rt.block_on(snapshot(&tb, &tb.dest, "iris@example.test"));
        assert_eq!(dst["Work"], dst_before["Work"], "nothing deleted in Work");
        assert_eq!(dst["INBOX"].len(), 9, "INBOX, within the limit, is done");
        let spool = Spool::open(&work_dir(&tb).join("spool")).unwrap();
        let st = spool.mailbox("iris@example.test").unwrap().unwrap();
        assert_eq!(st.status, "Failed");
        assert!(
            st.last_error.as_deref().unwrap_or("").contains(refusal),
            "{:?}",
            st.last_error
        );
    }
    let states = spool_states(&work_dir(&tb), "iris@example.test");
    assert_eq!(states.get("Appended"), Some(&29), "{states:?}");
    assert_eq!(states.get("Expunged"), Some(&1), "{states:?}");

    // The admin confirms by raising the limit: now the folder follows the source.
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("max_delete_percent = 10", "max_delete_percent = 100");
    std::fs::write(&config_path, text).unwrap();
    let out = cutover(&config_path, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("deleted 15 message(s)"),
        "{}",
        stdout(&out)
    );
    let src = rt.block_on(snapshot(&tb, &tb.source, "iris"));
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "iris@example.test"));
    assert_eq!(dst["Work"].len(), 5);
    assert_same(&src, &dst);
}

/// A crash after the UID EXPUNGE went out but before the spool recorded it: the message
/// is gone at the destination while its record still says `Expunging`. The next run
/// sends the deletion again, which changes nothing at the destination, and records it.
#[test]
fn interrupted_deletion_is_finished_without_touching_others() {
    let users = [("jack", "jack-pw", "jack@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "jack", "INBOX", 10, |_| vec!["\\Seen"]);
    let own = dest_only_message(&tb, "jack@example.test");
    let config = demo_config(
        &tb,
        &users,
        "[sync]\npropagate_deletes = true\nmax_delete_percent = 10\n",
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let rt = rt();
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "jack@example.test"));
    let own = locate(&dst, "INBOX", &own);
    expunge_at_source(&tb, "jack", "INBOX", "6");

    rt.block_on(async {
        let spool = Spool::open(&work_dir(&tb).join("spool")).unwrap();
        let mut src = session(&tb, &tb.source, "jack").await;
        let inbox = src
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|f| f.name == "INBOX")
            .unwrap();
        let opts = cutover::source::SourceOptions {
            max_message_bytes: 1 << 20,
            fetch_batch_bytes: 1 << 20,
            fetch_batch_count: 100,
        };
        let limits = cutover::source::MailboxLimits {
            deletes: cutover::source::DeletePolicy {
                propagate: true,
                max_percent: 10,
            },
            ..Default::default()
        };
        let report = cutover::source::read_mailbox_with(
            &mut src,
            &spool,
            "jack@example.test",
            &[inbox],
            "INBOX.",
            &opts,
            &limits,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(report.expunged, 1);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let uv = spool.generations("jack@example.test", "INBOX").unwrap()[0];
        let pending: Vec<_> = spool
            .messages("jack@example.test", "INBOX", uv)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.state {
                MessageState::Expunging {
                    dest_folder,
                    dest_uid,
                    ..
                } => Some((r.uid, dest_folder, dest_uid)),
                _ => None,
            })
            .collect();
        assert_eq!(pending.len(), 1, "{pending:?}");
        let (uid, dest_folder, dest_uid) = pending[0].clone();
        assert_eq!(uid, 6);
        assert_eq!(dest_folder, "INBOX");
        spool.flush().unwrap();
        // The deletion goes out, the "crash" comes before it is recorded.
        let mut dst = session(&tb, &tb.dest, "jack@example.test").await;
        assert!(dst.caps().has("UIDPLUS"));
        dst.select("INBOX", false).await.unwrap();
        dst.uid_delete(&[dest_uid]).await.unwrap();
        dst.logout().await;
        src.logout().await;
    });

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the repeated deletion is no error"
    );
    assert_eq!(copied(&out, "jack@example.test"), 0);
    let src = rt.block_on(snapshot(&tb, &tb.source, "jack"));
    let mut dst = rt.block_on(snapshot(&tb, &tb.dest, "jack@example.test"));
    take_one(&mut dst, "INBOX", &own);
    assert_same(&src, &dst);
    assert_eq!(dst["INBOX"].len(), 9);
    let states = spool_states(&work_dir(&tb), "jack@example.test");
    assert_eq!(states.get("Expunged"), Some(&1), "{states:?}");
    assert_eq!(states.get("Appended"), Some(&9), "{states:?}");
}

/// Dovecot's capabilities without UIDPLUS (it still understands the commands, but a
/// client must not use what is not offered).
const CAPS_WITHOUT_UIDPLUS: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT \
     SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND \
     URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE LIST-EXTENDED I18NLEVEL=1 CONDSTORE \
     QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE \
     SPECIAL-USE LITERAL+";

/// Waits (up to 5 s) until new destination sessions do (`want`) or do not offer UIDPLUS
/// after a `doveadm reload`; true once they do as wanted.
fn uidplus_becomes(tb: &Testbed, rt: &tokio::runtime::Runtime, want: bool) -> bool {
    capability_becomes(tb, rt, "kate@example.test", "UIDPLUS", want)
}

#[test]
fn destination_without_uidplus_deletes_nothing() {
    let users = [("kate", "kate-pw", "kate@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "kate", "INBOX", 10, |_| vec!["\\Seen"]);
    let config = demo_config(
        &tb,
        &users,
        "[sync]\npropagate_deletes = true\nmax_delete_percent = 50\n",
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let rt = rt();
    let dst_before = rt.block_on(snapshot(&tb, &tb.dest, "kate@example.test"));

    let conf = tb.dest.config_path().to_path_buf();
    let original = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{original}\nimap_capability = {CAPS_WITHOUT_UIDPLUS}\n"),
    )
    .unwrap();
    tb.dest.doveadm(&["reload"]).unwrap();
    assert!(
        uidplus_becomes(&tb, &rt, false),
        "the destination no longer offers UIDPLUS"
    );

    expunge_at_source(&tb, "kate", "INBOX", "2:3");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the deletion that cannot be done is an error"
    );
    let err = stderr(&out);
    assert!(
        err.contains(
            "folder \"INBOX\": 2 message(s) expunged at the source are not deleted at the \
             destination: 127.0.0.1 does not offer UIDPLUS (UID EXPUNGE)"
        ),
        "{err}"
    );
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "kate@example.test"));
    assert_eq!(dst, dst_before, "nothing deleted, nothing marked \\Deleted");

    // UIDPLUS back: the pending deletions are done.
    std::fs::write(&conf, original).unwrap();
    tb.dest.doveadm(&["reload"]).unwrap();
    assert!(uidplus_becomes(&tb, &rt, true), "UIDPLUS is offered again");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let src = rt.block_on(snapshot(&tb, &tb.source, "kate"));
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "kate@example.test"));
    assert_eq!(dst["INBOX"].len(), 8);
    assert_same(&src, &dst);
}

/// A message the source expunged before it reached the destination is not copied at all
/// (its spooled record becomes `Expunged`), and the rest of the folder is.
#[test]
fn expunged_before_it_was_copied_is_not_copied() {
    let users = [("liam", "liam-pw", "liam@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "liam", "INBOX", 5, |_| vec!["\\Seen"]);
    let config = demo_config(
        &tb,
        &users,
        "[sync]\npropagate_deletes = true\nmax_delete_percent = 20\n",
    );
    let rt = rt();
    // Reads the source into the spool without pushing anything, as a run interrupted
    // after the source's read would have left it.
    let read = |deletes: cutover::source::DeletePolicy| {
        rt.block_on(async {
            let spool = Spool::open(&work_dir(&tb).join("spool")).unwrap();
            let mut src = session(&tb, &tb.source, "liam").await;
            let (folders, prefix) = cutover::source::list_folders(&mut src).await.unwrap();
            let opts = cutover::source::SourceOptions {
                max_message_bytes: 1 << 20,
                fetch_batch_bytes: 1 << 20,
                fetch_batch_count: 100,
            };
            let limits = cutover::source::MailboxLimits {
                deletes,
                ..Default::default()
            };
            let report = cutover::source::read_mailbox_with(
                &mut src,
                &spool,
                "liam@example.test",
                &folders,
                &prefix,
                &opts,
                &limits,
                |_| {},
            )
            .await
            .unwrap();
            src.logout().await;
            spool.flush().unwrap();
            report
        })
    };
    let first = read(Default::default());
    assert_eq!(first.new_messages, 5);
    assert_eq!(
        spool_states(&work_dir(&tb), "liam@example.test").get("Spooled"),
        Some(&5)
    );
    expunge_at_source(&tb, "liam", "INBOX", "4");
    let second = read(cutover::source::DeletePolicy {
        propagate: true,
        max_percent: 20,
    });
    assert_eq!(second.expunged, 1);
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let states = spool_states(&work_dir(&tb), "liam@example.test");
    assert_eq!(states.get("Spooled"), Some(&4), "{states:?}");
    assert_eq!(states.get("Expunged"), Some(&1), "{states:?}");

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        copied(&out, "liam@example.test"),
        4,
        "the expunged one is not copied"
    );
    assert!(!stdout(&out).contains("deleted"), "{}", stdout(&out));
    let src = rt.block_on(snapshot(&tb, &tb.source, "liam"));
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "liam@example.test"));
    assert_eq!(src["INBOX"].len(), 4);
    assert_same(&src, &dst);
    let states = spool_states(&work_dir(&tb), "liam@example.test");
    assert_eq!(states.get("Appended"), Some(&4), "{states:?}");
    assert_eq!(states.get("Expunged"), Some(&1), "{states:?}");
}

/// The flags of every message in `folder` of `user` at `server`, by position in the
/// snapshot (sorted by content).
fn flags_in(s: &Snapshot, folder: &str) -> Vec<Vec<String>> {
    s.get(folder)
        .map(|m| m.iter().map(|m| m.flags.clone()).collect())
        .unwrap_or_default()
}

/// `[sync] deleted_messages`: by default a message flagged \Deleted (not expunged) is
/// copied with its flag; with "skip" it is left at the source while flagged, reported,
/// and copied once it is undeleted.
#[test]
fn messages_flagged_deleted_are_copied_by_default_and_left_behind_with_skip() {
    let users = [("hana", "hana-pw", "hana@example.test")];
    let Some(tb) = testbed(&users) else { return };
    // UIDs 2 and 4 of 5 flagged \Deleted.
    fill(&tb, "hana", "INBOX", 5, |i| {
        if i % 2 == 1 {
            vec!["\\Seen", "\\Deleted"]
        } else {
            vec!["\\Seen"]
        }
    });
    let config = demo_config(&tb, &users, "[sync]\ndeleted_messages = \"skip\"\n");
    let rt = rt();

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "hana@example.test"), 3, "{}", stdout(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("flagged \\Deleted at the source"),
        "the admin is told: {all}"
    );
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "hana@example.test"));
    assert_eq!(total(&dst), 3);
    assert!(
        flags_in(&dst, "INBOX")
            .iter()
            .all(|f| !f.iter().any(|f| f == "\\Deleted")),
        "{dst:#?}"
    );
    // Nothing is recorded for them: not counted as skipped for good.
    let states = spool_states(&work_dir(&tb), "hana@example.test");
    assert_eq!(states.get("Appended"), Some(&3), "{states:?}");
    assert_eq!(states.len(), 1, "{states:?}");

    // Undeleted at the source: copied on the next pass; the other stays behind.
    tb.source
        .doveadm(&[
            "flags",
            "remove",
            "-u",
            "hana",
            "\\Deleted",
            "mailbox",
            "INBOX",
            "uid",
            "2",
        ])
        .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "hana@example.test"), 1, "{}", stdout(&out));
    assert_eq!(
        total(&rt.block_on(snapshot(&tb, &tb.dest, "hana@example.test"))),
        4
    );

    // The default, "copy": the last one comes too, still flagged \Deleted.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "deleted_messages = \"skip\"\n",
            "deleted_messages = \"copy\"\n",
        ),
    )
    .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "hana@example.test"), 1, "{}", stdout(&out));
    let src = rt.block_on(snapshot(&tb, &tb.source, "hana"));
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "hana@example.test"));
    assert_same(&src, &dst);
    assert_eq!(
        flags_in(&dst, "INBOX")
            .iter()
            .filter(|f| f.iter().any(|f| f == "\\Deleted"))
            .count(),
        1,
        "{dst:#?}"
    );
    // A bad value is a config error, not the default.
    std::fs::write(
        &config,
        text.replace(
            "deleted_messages = \"skip\"\n",
            "deleted_messages = \"drop\"\n",
        ),
    )
    .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("deleted_messages"),
        "{}",
        stderr(&out)
    );
}

/// `cutover status` after `sync --once` (no daemon) shows what the spool holds: items,
/// skipped and bytes, as the daemon's would.
#[test]
fn status_after_sync_once_shows_the_counters() {
    let users = [("ines", "ines-pw", "ines@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "ines", "INBOX", 4, |_| vec![]);
    fill(&tb, "ines", "INBOX.Work", 2, |_| vec![]);
    // One over the size limit: skipped.
    let mut big = cutover::demo::sample_message("ines", 99, "big");
    big.extend(std::iter::repeat_n(b'x', 300_000));
    big.extend_from_slice(b"\r\n");
    tb.source
        .deliver("ines", "INBOX", &big, &[], Some(1_600_000_000))
        .unwrap();
    let config = demo_config(&tb, &users, "[sync]\nmax_message_bytes = 200000\n");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let rt = rt();
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "ines@example.test"));
    assert_eq!(total(&dst), 6);
    let bytes: u64 = {
        let spool = Spool::open(&work_dir(&tb).join("spool")).unwrap();
        spool.counts("ines@example.test").unwrap().bytes_appended
    };
    assert!(bytes > 0);
    let status = cutover(&config, &["status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let snap: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let row = &snap["mailboxes"][0];
    assert_eq!(row["mailbox"], "ines@example.test", "{row}");
    assert_eq!(row["items_synced"], 6, "{row}");
    assert_eq!(row["items_skipped"], 1, "{row}");
    assert_eq!(row["items_failed"], 0, "{row}");
    assert_eq!(row["bytes"], bytes, "{row}");
    // And in the table.
    let table = stdout(&cutover(&config, &["status"]));
    let line = table
        .lines()
        .find(|l| l.contains("ines@example.test"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.split_whitespace().any(|w| w == "6"), "{table}");
}
