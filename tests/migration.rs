//! End-to-end migrations between two real Dovecot servers: full copy, byte-identical
//! corpus, idempotent reruns, deltas (new mail, flag changes, new folders) and exactly-once
//! after kill -9.

mod common;

use common::*;
use cutover::demo::{write_config, DemoTls};

const USERS: [(&str, &str, &str); 3] = [
    ("alice", "alice-pw", "alice@example.test"),
    ("bob", "bob-pw", "bob@example.test"),
    ("carol", "carol-pw", "carol@example.test"),
];

/// Seeds a user with nested, special-use, non-ASCII and spaced folders, flags, keywords
/// and internal dates.
fn seed(tb: &cutover::testbed::Testbed, user: &str, base_ts: i64) -> usize {
    let src = &tb.source;
    let folders: [(&str, usize, &[&str]); 7] = [
        ("INBOX", 6, &["\\Seen"]),
        ("INBOX.Sent", 4, &["\\Seen", "\\Answered"]),
        ("INBOX.Work", 3, &["\\Flagged", "$Label1"]),
        ("INBOX.Work.Projects", 3, &["Project-X", "\\Seen"]),
        ("INBOX.Work.Projects.2024", 2, &[]),
        ("INBOX.Geschäftlich", 2, &["\\Draft"]),
        ("INBOX.My Folder", 2, &["\\Seen", "$Forwarded"]),
    ];
    let mut n = 0;
    for (folder, count, flags) in folders {
        if folder != "INBOX" && folder != "INBOX.Sent" {
            src.add_folder(user, folder).unwrap();
        }
        for i in 0..count {
            let body = cutover::demo::sample_message(user, n, folder);
            src.deliver(
                user,
                folder,
                &body,
                flags,
                Some(base_ts + (n as i64) * 3600 + i as i64),
            )
            .unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn full_copy_corpus_reruns_and_deltas() {
    let Some(tb) = testbed(&USERS) else { return };
    let corpus = corpus();
    let mut expected = 0;
    for (i, (login, _, _)) in USERS.iter().enumerate() {
        expected += seed(&tb, login, 1_600_000_000 + i as i64 * 1_000_000);
    }
    if let Some(corpus) = &corpus {
        for (i, (_, body)) in corpus.iter().enumerate() {
            tb.source
                .deliver(
                    "alice",
                    "INBOX",
                    body,
                    &[],
                    Some(1_500_000_000 + i as i64 * 60),
                )
                .unwrap();
        }
        expected += corpus.len();
    }
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &USERS,
        DemoTls {
            source_implicit: true,
            dest_implicit: false,
        },
        "",
    )
    .unwrap();

    // First pass: everything arrives, byte-identical, with flags and dates.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "first pass failed");
    let rt = rt();
    let mut total = 0;
    for (login, _, email) in USERS {
        let s = rt.block_on(snapshot(&tb, &tb.source, login));
        let d = rt.block_on(snapshot(&tb, &tb.dest, email));
        assert_same(&s, &d);
        total += s.values().map(Vec::len).sum::<usize>();
        assert!(
            d.contains_key("Sent Items"),
            "Sent went to Exchange's Sent Items: {:?}",
            d.keys()
        );
        assert!(
            d.contains_key("Work/Projects/2024"),
            "hierarchy translated: {:?}",
            d.keys()
        );
        assert!(
            d.contains_key("Geschäftlich"),
            "non-ASCII folder: {:?}",
            d.keys()
        );
        assert!(
            d.contains_key("My Folder"),
            "folder with a space: {:?}",
            d.keys()
        );
    }
    assert_eq!(total, expected, "the source holds what was seeded");
    if let Some(corpus) = &corpus {
        // Every corpus message is at the destination: compare against the source's view of
        // each (Dovecot serves bare LF as CRLF on both sides alike).
        let s = rt.block_on(snapshot(&tb, &tb.source, "alice"));
        let d = rt.block_on(snapshot(&tb, &tb.dest, "alice@example.test"));
        assert!(s["INBOX"].len() >= corpus.len());
        assert_eq!(s["INBOX"], d["INBOX"]);
    }

    // Second pass: nothing is appended again, and with nothing to push the destination
    // is not even logged in to (its log counts the logins).
    let logins = |tb: &cutover::testbed::Testbed| tb.dest.log().matches("Login: user=<").count();
    let before = logins(&tb);
    assert!(
        before > 0,
        "the destination log records logins:\n{}",
        tb.dest.log()
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    for (_, _, email) in USERS {
        assert_eq!(copied(&out, email), 0, "rerun copied nothing for {email}");
    }
    assert_eq!(
        logins(&tb),
        before,
        "a pass with nothing to push logged in upstream"
    );

    // Deltas: a new message, a flag change, a new folder.
    tb.source
        .deliver(
            "bob",
            "INBOX",
            &message("late-arrival"),
            &[],
            Some(1_700_000_000),
        )
        .unwrap();
    tb.source
        .doveadm(&[
            "flags",
            "add",
            "-u",
            "alice",
            "\\Flagged $Important",
            "mailbox",
            "INBOX",
            "uid",
            "1",
        ])
        .unwrap();
    tb.source
        .doveadm(&[
            "flags", "remove", "-u", "carol", "\\Seen", "mailbox", "INBOX", "uid", "2",
        ])
        .unwrap();
    tb.source.add_folder("carol", "INBOX.Brand New").unwrap();
    tb.source
        .deliver(
            "carol",
            "INBOX.Brand New",
            &message("in-new-folder"),
            &["\\Seen"],
            Some(1_700_000_100),
        )
        .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(copied(&out, "bob@example.test"), 1);
    assert_eq!(copied(&out, "carol@example.test"), 1);
    assert_eq!(copied(&out, "alice@example.test"), 0);
    for (login, _, email) in USERS {
        let s = rt.block_on(snapshot(&tb, &tb.source, login));
        let d = rt.block_on(snapshot(&tb, &tb.dest, email));
        assert_same(&s, &d);
    }
}

/// kill -9 at several points of a run, then a rerun: every message exactly once.
#[test]
fn kill_nine_then_rerun_is_exactly_once() {
    let users = [("dave", "dave-pw", "dave@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let mut n = 0;
    if let Some(corpus) = corpus() {
        for (_, body) in &corpus {
            tb.source
                .deliver("dave", "INBOX", body, &["\\Seen"], Some(1_500_000_000 + n))
                .unwrap();
            n += 1;
        }
    }
    tb.source.add_folder("dave", "INBOX.Archive2020").unwrap();
    for i in 0..600 {
        let mut body = cutover::demo::sample_message("dave", i, "bulk");
        // Some weight, so the run takes long enough to be interrupted mid-way.
        body.extend(std::iter::repeat_n(b'x', 8_000 + (i % 7) * 1000));
        body.extend_from_slice(b"\r\n");
        tb.source
            .deliver(
                "dave",
                "INBOX.Archive2020",
                &body,
                &[],
                Some(1_600_000_000 + i as i64),
            )
            .unwrap();
    }
    // A batch of 8 keeps many APPENDs in flight at any moment.
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        DemoTls {
            source_implicit: false,
            dest_implicit: true,
        },
        "[sync]\nappend_batch = 8\nfetch_batch_bytes = 200000\n",
    )
    .unwrap();
    let rt = rt();
    // Kill when the destination has reached a given count, so the kills land mid-copy
    // however fast or loaded the machine is.
    let dest_count = || -> usize {
        tb.dest
            .doveadm(&[
                "-f",
                "flow",
                "mailbox",
                "status",
                "-u",
                "dave@example.test",
                "-t",
                "messages",
                "*",
            ])
            .ok()
            .and_then(|o| o.trim().trim_start_matches("messages=").parse().ok())
            .unwrap_or(0)
    };
    for target in [60usize, 300, 550] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(&config)
            .args(["sync", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while dest_count() < target
            && child.try_wait().unwrap().is_none()
            && start.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SIGKILL: no chance to flush or clean up.
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "rerun after kill -9 failed");
    // The kills really landed mid-way: part of the mail was already there, part was not.
    let rest = copied(&out, "dave@example.test");
    assert!(rest > 0 && rest < n as u64 + 600, "rerun copied {rest}");
    let s = rt.block_on(snapshot(&tb, &tb.source, "dave"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "dave@example.test"));
    assert_same(&s, &d);
    assert_eq!(s.values().map(Vec::len).sum::<usize>(), n as usize + 600);
    // And a further run still adds nothing.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(copied(&out, "dave@example.test"), 0);
}

/// The source recreates a folder (new UIDVALIDITY) holding the same mail plus one new
/// message: the rerun matches by content and appends only the new one.
#[test]
fn uidvalidity_change_does_not_duplicate() {
    let users = [("erin", "erin-pw", "erin@example.test")];
    let Some(tb) = testbed(&users) else { return };
    tb.source.add_folder("erin", "INBOX.Old").unwrap();
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| cutover::demo::sample_message("erin", i, "old"))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        tb.source
            .deliver(
                "erin",
                "INBOX.Old",
                b,
                &["\\Seen"],
                Some(1_600_000_000 + i as i64),
            )
            .unwrap();
    }
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        DemoTls {
            source_implicit: true,
            dest_implicit: true,
        },
        "",
    )
    .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(copied(&out, "erin@example.test"), 5);
    let uv = |tb: &cutover::testbed::Testbed| {
        tb.source
            .doveadm(&[
                "-f",
                "flow",
                "mailbox",
                "status",
                "-u",
                "erin",
                "uidvalidity",
                "INBOX.Old",
            ])
            .unwrap()
    };
    let before = uv(&tb);
    tb.source
        .doveadm(&["mailbox", "delete", "-u", "erin", "INBOX.Old"])
        .unwrap();
    // UIDVALIDITY is time-based in Dovecot: make sure the new folder gets another one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    tb.source.add_folder("erin", "INBOX.Old").unwrap();
    for (i, b) in bodies.iter().enumerate() {
        tb.source
            .deliver(
                "erin",
                "INBOX.Old",
                b,
                &["\\Seen"],
                Some(1_600_000_000 + i as i64),
            )
            .unwrap();
    }
    tb.source
        .deliver(
            "erin",
            "INBOX.Old",
            &message("after-recreate"),
            &[],
            Some(1_600_000_100),
        )
        .unwrap();
    assert_ne!(before, uv(&tb), "the folder really has a new UIDVALIDITY");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("UIDVALIDITY changed"),
        "the change was noticed"
    );
    assert_eq!(
        copied(&out, "erin@example.test"),
        1,
        "only the new message is appended"
    );
    let rt = rt();
    let s = rt.block_on(snapshot(&tb, &tb.source, "erin"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "erin@example.test"));
    assert_same(&s, &d);
}

/// A crash after APPEND but before its outcome was recorded: the messages are at the
/// destination while the spool still says `Appending`. The next run must find them there
/// (by content, above the recorded UIDNEXT) and not append them again.
#[test]
fn interrupted_append_is_found_not_repeated() {
    use cutover::imap::client::AppendItem;
    use cutover::spool::{MessageState, Spool};
    let users = [("frank", "frank-pw", "frank@example.test")];
    let Some(tb) = testbed(&users) else { return };
    for i in 0..4 {
        tb.source
            .deliver(
                "frank",
                "INBOX",
                &cutover::demo::sample_message("frank", i, "first"),
                &[],
                Some(1_600_000_000 + i as i64),
            )
            .unwrap();
    }
    let config = write_config(
        &tb,
        &work_dir(&tb),
        &users,
        DemoTls {
            source_implicit: true,
            dest_implicit: true,
        },
        "",
    )
    .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(copied(&out, "frank@example.test"), 4);
    // Three new messages, one of them twice (same bytes): duplicates must be matched as a
    // multiset, not collapsed.
    let dup = message("duplicate-content");
    tb.source
        .deliver(
            "frank",
            "INBOX",
            &message("new-1"),
            &[],
            Some(1_600_001_000),
        )
        .unwrap();
    tb.source
        .deliver("frank", "INBOX", &dup, &[], Some(1_600_001_001))
        .unwrap();
    tb.source
        .deliver("frank", "INBOX", &dup, &[], Some(1_600_001_002))
        .unwrap();

    let rt = rt();
    rt.block_on(async {
        let spool = Spool::open(&work_dir(&tb).join("spool")).unwrap();
        let mut src = session(&tb, &tb.source, "frank").await;
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
        cutover::source::read_mailbox(
            &mut src,
            &spool,
            "frank@example.test",
            &[inbox],
            "INBOX.",
            &opts,
            |_| {},
        )
        .await
        .unwrap();
        let uv = spool.generations("frank@example.test", "INBOX").unwrap()[0];
        let uids: Vec<u32> = spool
            .messages("frank@example.test", "INBOX", uv)
            .unwrap()
            .into_iter()
            .filter(|r| r.state == MessageState::Spooled)
            .map(|r| r.uid)
            .collect();
        assert_eq!(uids.len(), 3);
        let mut dst = session(&tb, &tb.dest, "frank@example.test").await;
        let st = dst.status("INBOX").await.unwrap();
        // Claimed just now, as by a run that is killed right after sending.
        let claim = cutover::spool::Claim {
            dest_folder: "INBOX".into(),
            dest_uidvalidity: st.uidvalidity,
            dest_uidnext: st.uidnext,
            marked_ms: chrono::Utc::now().timestamp_millis(),
        };
        let pending = spool
            .claim("frank@example.test", "INBOX", uv, &uids, &claim, 0)
            .unwrap();
        assert_eq!(pending.len(), 3);
        let bodies: Vec<Vec<u8>> = pending
            .iter()
            .map(|r| spool.get_body(&r.hash).unwrap())
            .collect();
        let items: Vec<AppendItem<'_>> = pending
            .iter()
            .zip(&bodies)
            .map(|(r, b)| AppendItem {
                flags: &r.flags,
                internal_date: Some(&r.internal_date),
                body: b,
            })
            .collect();
        dst.append_batch("INBOX", &items).await.unwrap();
        // "Crash": the outcome is never recorded.
        dst.logout().await;
        src.logout().await;
    });

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        copied(&out, "frank@example.test"),
        0,
        "nothing appended twice"
    );
    assert_eq!(stderr(&out).matches("interrupted APPEND found").count(), 3);
    let s = rt.block_on(snapshot(&tb, &tb.source, "frank"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "frank@example.test"));
    assert_same(&s, &d);
}
