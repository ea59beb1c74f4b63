//! Exactly once, path by path: each test sets up one way a message could be lost or sent
//! twice, against real Dovecot servers (and the fault proxy in front of one), and checks
//! the destination message by message.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::Arc;

use common::*;
use cutover::spool::{Claim, MessageState, Spool};
use cutover::testbed::Testbed;
use proxy::{Action, Proxy};

/// Reads `folders` of `login` into the spool of `tb`'s demo work dir with the library's
/// source, as a first run would before it is killed.
fn spool_source(tb: &Testbed, login: &str, email: &str, folders: &[&str]) {
    rt().block_on(async {
        let spool = Spool::open(&work_dir(tb).join("spool")).unwrap();
        let mut src = session(tb, &tb.source, login).await;
        let listed: Vec<_> = src
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|f| folders.contains(&f.name.as_str()))
            .collect();
        assert_eq!(listed.len(), folders.len());
        let opts = cutover::source::SourceOptions {
            max_message_bytes: 1 << 20,
            fetch_batch_bytes: 1 << 20,
            fetch_batch_count: 100,
        };
        cutover::source::read_mailbox(&mut src, &spool, email, &listed, "INBOX.", &opts, |_| {})
            .await
            .unwrap();
        src.logout().await;
    });
}

/// Claims every spooled message of `folder` for destination folder `dest` (with the
/// destination's UIDNEXT `uidnext`), as a run does just before it sends them; `dest_uv`
/// is recorded as the destination's UIDVALIDITY.
fn claim_all(tb: &Testbed, email: &str, folder: &str, dest: &str, dest_uv: u32, uidnext: u32) {
    let spool = Spool::open(&work_dir(tb).join("spool")).unwrap();
    let uv = spool.generations(email, folder).unwrap()[0];
    let uids: Vec<u32> = spool
        .messages(email, folder, uv)
        .unwrap()
        .iter()
        .filter(|r| r.state == MessageState::Spooled)
        .map(|r| r.uid)
        .collect();
    let claim = Claim {
        dest_folder: dest.into(),
        dest_uidvalidity: dest_uv,
        dest_uidnext: uidnext,
        marked_ms: 0,
    };
    let claimed = spool.claim(email, folder, uv, &uids, &claim, 0).unwrap();
    assert_eq!(claimed.len(), uids.len());
}

/// A CONDSTORE source whose HIGHESTMODSEQ goes backwards (its index rebuilt) still gives
/// up the mail that arrived meanwhile: the folder is read whole instead of "changed
/// since" a modseq the server no longer knows.
#[test]
fn highestmodseq_going_backwards_loses_no_new_mail() {
    let users = [("hana", "hana-pw", "hana@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "hana", "INBOX", 6, |_| vec![]);
    let config = demo_config(&tb, &users, "");
    let rt = rt();
    // Flag changes raise the folder's HIGHESTMODSEQ well above its message count.
    rt.block_on(async {
        let mut c = session(&tb, &tb.source, "hana").await;
        c.select("INBOX", false).await.unwrap();
        for round in 0..5 {
            for uid in 1..=6 {
                let f = if round % 2 == 0 { "\\Seen" } else { "$Later" };
                c.uid_store_flags(uid, &[f.to_string()]).await.unwrap();
            }
        }
        c.logout().await;
    });
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = rt.block_on(async {
        let mut c = session(&tb, &tb.source, "hana").await;
        let info = c.select("INBOX", true).await.unwrap();
        c.logout().await;
        info
    });
    assert!(before.highestmodseq > 10, "{before:?}");
    // New mail, then the index is lost and rebuilt from the maildir.
    tb.source
        .deliver(
            "hana",
            "INBOX",
            &message("after-rebuild"),
            &[],
            Some(1_600_100_000),
        )
        .unwrap();
    let dir = tb.source.folder_path("hana", "INBOX").unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("dovecot.index") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let after = rt.block_on(async {
        let mut c = session(&tb, &tb.source, "hana").await;
        let info = c.select("INBOX", true).await.unwrap();
        c.logout().await;
        info
    });
    assert_eq!(after.uidvalidity, before.uidvalidity);
    assert!(
        after.highestmodseq < before.highestmodseq,
        "the rebuilt index starts its modseqs again: {before:?} then {after:?}"
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "hana@example.test"), 1);
    let s = rt.block_on(snapshot(&tb, &tb.source, "hana"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "hana@example.test"));
    assert_same(&s, &d);
}

/// A destination folder the user deleted and made again holds other messages under the
/// UIDs cutover's copies had: flag changes at the source are not stored on them, and the
/// admin is told.
#[test]
fn flags_are_not_stored_into_a_recreated_destination_folder() {
    let users = [("ivan", "ivan-pw", "ivan@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "ivan", "INBOX.Work", 3, |_| vec![]);
    let config = demo_config(&tb, &users, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The user deletes Work at the destination, makes it again and files 3 other
    // messages there (UIDs 1 to 3 again).
    tb.dest
        .doveadm(&["mailbox", "delete", "-u", "ivan@example.test", "Work"])
        .unwrap();
    for i in 0..3 {
        tb.dest
            .deliver(
                "ivan@example.test",
                "Work",
                &message(&format!("other-{i}")),
                &[],
                Some(1_600_200_000),
            )
            .unwrap();
    }
    let rt = rt();
    rt.block_on(async {
        let mut c = session(&tb, &tb.source, "ivan").await;
        c.select("INBOX.Work", false).await.unwrap();
        for uid in 1..=3 {
            c.uid_store_flags(uid, &["\\Flagged".to_string(), "\\Deleted".to_string()])
                .await
                .unwrap();
        }
        c.logout().await;
    });
    let out = cutover(&config, &["sync", "--once"]);
    let err = stderr(&out);
    assert!(
        stdout(&out).contains("recreated at the destination") || err.contains("recreated"),
        "the admin is told:\n{}\n{err}",
        stdout(&out)
    );
    let d = rt.block_on(snapshot(&tb, &tb.dest, "ivan@example.test"));
    let work = &d["Work"];
    assert_eq!(work.len(), 3);
    for m in work {
        assert!(
            m.flags.is_empty(),
            "another message got the source's flags: {m:?}"
        );
    }
}

/// Two source folders mapped to one destination folder, each with the same message: the
/// copy of the first is not taken for the copy of the second, whose APPEND was
/// interrupted before it was sent.
#[test]
fn an_interrupted_append_is_not_matched_to_another_folders_copy() {
    let users = [("jane", "jane-pw", "jane@example.test")];
    let Some(tb) = testbed(&users) else { return };
    for folder in ["INBOX.A", "INBOX.B"] {
        tb.source.add_folder("jane", folder).unwrap();
        tb.source
            .deliver(
                "jane",
                folder,
                &message("the-same"),
                &[],
                Some(1_600_300_000),
            )
            .unwrap();
    }
    let map = "folder_map = { \"INBOX.A\" = \"Merged\", \"INBOX.B\" = \"Merged\" }";
    // First only A is copied.
    let only_a = demo_config(
        &tb,
        &users,
        &format!("[sync]\n{map}\nexclude_folders = [\"INBOX.B\"]\n"),
    );
    let out = cutover(&only_a, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rt = rt();
    let st = rt.block_on(async {
        let mut c = session(&tb, &tb.dest, "jane@example.test").await;
        let st = c.status("Merged").await.unwrap();
        c.logout().await;
        st
    });
    assert_eq!(st.messages, 1);
    // Then a run reads B and claims its message below A's copy, and dies before sending.
    spool_source(&tb, "jane", "jane@example.test", &["INBOX.B"]);
    claim_all(
        &tb,
        "jane@example.test",
        "INBOX.B",
        "Merged",
        st.uidvalidity,
        1,
    );
    let both = demo_config(&tb, &users, &format!("[sync]\n{map}\n"));
    let out = cutover(&both, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "jane@example.test"), 1, "B's message is sent");
    let d = rt.block_on(snapshot(&tb, &tb.dest, "jane@example.test"));
    assert_eq!(d["Merged"].len(), 2, "one copy of each: {d:?}");
}

/// A spooled body that cannot be read back fails that message alone: the others of the
/// mailbox are copied, and the error names the folder and the UID.
#[test]
fn an_unreadable_spooled_body_fails_only_its_message() {
    let users = [("karl", "karl-pw", "karl@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "karl", "INBOX", 3, |_| vec![]);
    let config = demo_config(&tb, &users, "");
    spool_source(&tb, "karl", "karl@example.test", &["INBOX"]);
    // Damage the second message's bytes where the spool keeps them.
    let victim = cutover::demo::sample_message("karl", 1, "INBOX");
    let mut damaged = 0;
    for e in std::fs::read_dir(work_dir(&tb).join("spool/bodies")).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(victim.len()).position(|w| w == victim) {
            bytes[at + victim.len() / 2] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1, "the body is spooled raw, once");
    let out = cutover(&config, &["sync", "--once"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "a message is missing:\n{text}");
    assert_eq!(copied(&out, "karl@example.test"), 2, "{text}");
    assert!(
        text.contains("UID 2") && text.contains("cannot be read"),
        "the error names the message:\n{text}"
    );
}

/// Uncertain APPENDs recorded for a destination folder that can no longer be opened (the
/// user deleted it) are sent again rather than stopping the mailbox.
#[test]
fn uncertain_appends_to_a_vanished_destination_folder_are_sent_again() {
    let users = [("lena", "lena-pw", "lena@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "lena", "INBOX", 2, |_| vec![]);
    fill(&tb, "lena", "INBOX.Work", 3, |_| vec![]);
    let config = demo_config(&tb, &users, "");
    spool_source(&tb, "lena", "lena@example.test", &["INBOX.Work"]);
    claim_all(&tb, "lena@example.test", "INBOX.Work", "Gone", 1, 1);
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let rt = rt();
    let s = rt.block_on(snapshot(&tb, &tb.source, "lena"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "lena@example.test"));
    assert_same(&s, &d);
}

/// A throttle answer in the middle of pipelined batches: the answers to the batch sent
/// behind the throttled one are read before the mailbox pauses, so nothing is left for
/// recovery to guess about, and every message arrives once.
#[test]
fn a_throttle_leaves_no_append_uncertain() {
    let users = [("mona", "mona-pw", "mona@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "mona", "INBOX", 30, |_| vec![]);
    let rt = rt();
    let schedule: proxy::Schedule = Arc::new(|_: &str, n: u64| match n {
        5 => Action::Throttle { ms: 300 },
        _ => Action::Forward,
    });
    let proxy = rt.block_on(Proxy::start(tb.dest.plain_port(), schedule));
    let config = demo_config(&tb, &users, "[sync]\nappend_batch = 4\n");
    upstream_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("throttled"), "the throttle happened:\n{err}");
    assert!(
        !err.contains("interrupted APPEND"),
        "nothing was left uncertain:\n{err}"
    );
    assert_eq!(copied(&out, "mona@example.test"), 30);
    let s = rt.block_on(snapshot(&tb, &tb.source, "mona"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "mona@example.test"));
    assert_same(&s, &d);
}

/// A message that recovery has nothing to recognise by (no Message-ID, Date, From or
/// Subject) is sent again rather than risk losing it, and the possible duplicate is
/// reported, in the run's summary and in the report.
#[test]
fn an_unrecognisable_uncertain_message_is_sent_again_and_reported() {
    let users = [("nina", "nina-pw", "nina@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let bare = b"X-Nothing: at all\r\n\r\nno usual headers here\r\n".to_vec();
    tb.source
        .deliver("nina", "INBOX", &bare, &[], Some(1_600_400_000))
        .unwrap();
    let config = demo_config(&tb, &users, "");
    spool_source(&tb, "nina", "nina@example.test", &["INBOX"]);
    let rt = rt();
    let st = rt.block_on(async {
        let mut c = session(&tb, &tb.dest, "nina@example.test").await;
        let st = c.status("INBOX").await.unwrap();
        // The killed run had sent it.
        let items = [cutover::imap::client::AppendItem {
            flags: &[],
            internal_date: Some("13-Sep-2020 09:46:40 +0000"),
            body: &bare,
        }];
        c.append_batch("INBOX", &items).await.unwrap();
        c.logout().await;
        st
    });
    claim_all(
        &tb,
        "nina@example.test",
        "INBOX",
        "INBOX",
        st.uidvalidity,
        st.uidnext,
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "nina@example.test"), 1);
    assert!(
        stdout(&out).contains("notice:") && stdout(&out).contains("may hold it twice"),
        "{}",
        stdout(&out)
    );
    let d = rt.block_on(snapshot(&tb, &tb.dest, "nina@example.test"));
    assert_eq!(d["INBOX"].len(), 2, "sent again rather than lost");
    let report = cutover(&config, &["report", "--csv"]);
    let text = stdout(&report);
    assert!(
        text.contains("notice") && text.contains("may hold it twice"),
        "{text}"
    );
}

/// Recovery never reads whole destination messages: one far larger than any response
/// cutover accepts, filed by the user above the recorded UIDNEXT, does not stop the
/// mailbox.
#[test]
fn recovery_is_not_stopped_by_a_huge_destination_message() {
    let users = [("olaf", "olaf-pw", "olaf@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "olaf", "INBOX", 3, |_| vec![]);
    let config = demo_config(&tb, &users, "[sync]\nmax_message_bytes = 100000\n");
    spool_source(&tb, "olaf", "olaf@example.test", &["INBOX"]);
    let rt = rt();
    let st = rt.block_on(async {
        let mut c = session(&tb, &tb.dest, "olaf@example.test").await;
        let st = c.status("INBOX").await.unwrap();
        c.logout().await;
        st
    });
    let mut huge = message("huge");
    huge.extend(std::iter::repeat_n(b'y', 3 << 20));
    huge.extend_from_slice(b"\r\n");
    tb.dest
        .deliver(
            "olaf@example.test",
            "INBOX",
            &huge,
            &[],
            Some(1_600_500_000),
        )
        .unwrap();
    claim_all(
        &tb,
        "olaf@example.test",
        "INBOX",
        "INBOX",
        st.uidvalidity,
        st.uidnext,
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "olaf@example.test"), 3);
    let d = rt.block_on(snapshot(&tb, &tb.dest, "olaf@example.test"));
    assert_eq!(d["INBOX"].len(), 4);
}

/// Recovery recognises a message by the fingerprint of its headers: every message of the
/// corpus has something to recognise it by, and the fingerprint of the bytes cutover
/// spooled matches the one of the header fields an Exchange-like destination gives back
/// (re-folded, fields reordered), so an interrupted APPEND of any of them is found, never
/// sent twice.
#[test]
fn every_corpus_message_is_recognised_after_exchange_rendering() {
    use cutover::imap::client::{Endpoint, Security};
    use cutover::upstream::fingerprint::{Fingerprint, FIELDS};
    let users = [("ria", "ria-pw", "ria@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let Some(corpus) = corpus() else { return };
    let rt = rt();
    let proxy = rt.block_on(Proxy::start_with(
        tb.dest.plain_port(),
        proxy::Options::forward_all().exchange(),
    ));
    let mismatched = rt.block_on(async {
        let mut direct = session(&tb, &tb.dest, "ria@example.test").await;
        let mut sent = Vec::new();
        for (name, body) in &corpus {
            if body.contains(&0) {
                continue;
            }
            let items = [cutover::imap::client::AppendItem {
                flags: &[],
                internal_date: Some("13-Sep-2020 09:46:40 +0000"),
                body,
            }];
            direct.append_batch("INBOX", &items).await.unwrap();
            sent.push((name.clone(), Fingerprint::of_message(body)));
        }
        direct.logout().await;
        let ep = Endpoint {
            host: "127.0.0.1".into(),
            port: proxy.port(),
            security: Security::None,
            tls: None,
            timeout: std::time::Duration::from_secs(30),
            max_response_bytes: 64 << 20,
        };
        let mut c = cutover::imap::client::Client::connect(&ep).await.unwrap();
        c.login(&cutover::imap::Credentials::Plain {
            authzid: Some("ria@example.test".into()),
            authcid: cutover::testbed::MASTER_USER.into(),
            password: cutover::secret::Secret::new(cutover::testbed::MASTER_PASSWORD),
        })
        .await
        .unwrap();
        c.select("INBOX", true).await.unwrap();
        let mut got = c.uid_fetch_header_fields("1:*", &FIELDS).await.unwrap();
        got.sort_by_key(|f| f.uid);
        assert_eq!(got.len(), sent.len());
        sent.iter()
            .zip(got)
            .filter_map(|((name, want), f)| {
                let seen = Fingerprint::of_headers(f.section.as_deref().unwrap_or_default());
                let why = if want.is_blank() {
                    "nothing to recognise it by"
                } else if !want.matches(&seen) {
                    "no match"
                } else {
                    return None;
                };
                Some(format!(
                    "{name}: {why}: spooled {want:?}, read back {seen:?}"
                ))
            })
            .collect::<Vec<_>>()
    });
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}
