//! Maildir as a source, against a real destination Dovecot: the files of the source
//! Dovecot's own Maildir (with its dovecot-uidlist) and hand-made Maildir trees, the
//! byte-identical corpus, deltas, the switch to the IMAP source, the export round trip,
//! and bad input.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use common::*;

const USERS: [(&str, &str, &str); 3] = [
    ("alice", "alice-pw", "alice@example.test"),
    ("bob", "bob-pw", "bob@example.test"),
    ("carol", "carol-pw", "carol@example.test"),
];

/// The home directory the testbed gave `user` on `server`.
fn home(server: &cutover::testbed::Dovecot, user: &str) -> PathBuf {
    std::fs::read_dir(server.dir().join("home"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&format!("-{user}")))
        })
        .unwrap_or_else(|| panic!("no home for {user}"))
}

/// Points `[source]` at Maildir roots `<dir>/{user}` (the directory given).
fn maildir_source(config: &Path, roots: &Path, extra: &str) {
    replace_section(
        config,
        "source",
        &format!(
            "kind = \"maildir\"\npath = \"{}/{{user}}\"\nmax_connections = 4{extra}",
            roots.display()
        ),
    );
}

/// Without `\Recent` (a first session sees it, a later one does not).
fn settled(mut s: Snapshot) -> Snapshot {
    for msgs in s.values_mut() {
        for m in msgs.iter_mut() {
            m.flags.retain(|f| f != "\\Recent");
        }
        msgs.sort();
    }
    s
}

fn ts(date: &str) -> i64 {
    cutover::imap::response::parse_internal_date(date)
        .unwrap_or_else(|| panic!("bad INTERNALDATE {date:?}"))
        .timestamp()
}

/// The UIDs of every message of `user`'s folders over IMAP: folder -> UIDs.
fn imap_uids(tb: &cutover::testbed::Testbed, user: &str) -> BTreeMap<String, Vec<u32>> {
    rt().block_on(async {
        let mut c = session(tb, &tb.source, user).await;
        let mut out = BTreeMap::new();
        for f in c.list().await.unwrap() {
            if !f.selectable() {
                continue;
            }
            let info = c.select(&f.name, true).await.unwrap();
            let mut uids = Vec::new();
            if info.exists > 0 {
                uids = c.uid_search_all().await.unwrap();
            }
            uids.sort_unstable();
            out.insert(f.name, uids);
        }
        c.logout().await;
        out
    })
}

#[test]
fn dovecot_maildir_corpus_then_switch_to_imap_then_export() {
    let Some(tb) = testbed(&USERS) else { return };
    let corpus = corpus();
    // Folders, flags, keywords and dates, written into the source Dovecot's Maildir.
    let seeded: [(&str, usize, &[&str]); 5] = [
        ("INBOX", 5, &["\\Seen"]),
        ("INBOX.Sent", 3, &["\\Seen", "\\Answered"]),
        ("INBOX.Work.Projects", 3, &["Project-X", "\\Flagged"]),
        ("INBOX.Geschäftlich", 2, &["\\Draft", "$Label1"]),
        ("INBOX.My Folder", 2, &[]),
    ];
    let mut n = 0;
    for (folder, count, flags) in seeded {
        if folder != "INBOX" && folder != "INBOX.Sent" {
            tb.source.add_folder("alice", folder).unwrap();
        }
        for _ in 0..count {
            let body = cutover::demo::sample_message("alice", n, folder);
            tb.source
                .deliver(
                    "alice",
                    folder,
                    &body,
                    flags,
                    Some(1_600_000_000 + n as i64 * 3600),
                )
                .unwrap();
            n += 1;
        }
    }
    if let Some(corpus) = &corpus {
        for (i, (_, body)) in corpus.iter().enumerate() {
            let flags: &[&str] = if i % 3 == 0 { &["\\Seen", "Work"] } else { &[] };
            tb.source
                .deliver(
                    "alice",
                    "INBOX",
                    body,
                    flags,
                    Some(1_500_000_000 + i as i64 * 60),
                )
                .unwrap();
        }
    }
    // The source as Dovecot serves it (this also makes Dovecot write its dovecot-uidlist).
    let source = settled(rt().block_on(snapshot(&tb, &tb.source, "alice")));
    let uids_before = imap_uids(&tb, "alice");

    let work = work_dir(&tb);
    let config = demo_config(&tb, &USERS[..1], "");
    let roots = work.join("roots");
    std::fs::create_dir_all(&roots).unwrap();
    let root = home(&tb.source, "alice").join("Maildir");
    std::os::unix::fs::symlink(&root, roots.join("alice")).unwrap();
    maildir_source(&config, &roots, "");
    let files_before = tree_state(&root);

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let dest = settled(rt().block_on(snapshot(&tb, &tb.dest, "alice@example.test")));
    assert_same(&source, &dest);
    assert_eq!(
        tree_state(&root),
        files_before,
        "the source Maildir was not changed"
    );

    // Each message went as the file's exact bytes, with the file's mtime as INTERNALDATE,
    // under the UID Dovecot gave it.
    {
        let spool = cutover::spool::Spool::open(&work.join("spool")).unwrap();
        let mut checked = 0;
        for (folder, dir) in [("INBOX", root.clone()), ("INBOX.Sent", root.join(".Sent"))] {
            let st = spool.folder("alice@example.test", folder).unwrap().unwrap();
            let recs = spool
                .messages("alice@example.test", folder, st.uidvalidity)
                .unwrap();
            let uidlist = std::fs::read_to_string(dir.join("dovecot-uidlist")).unwrap();
            assert!(
                uidlist.contains(&format!("V{} ", st.uidvalidity)),
                "{uidlist}"
            );
            let by_name: BTreeMap<String, PathBuf> = std::fs::read_dir(dir.join("cur"))
                .unwrap()
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name.split(':').next().unwrap().to_string(), e.path())
                })
                .collect();
            for line in uidlist.lines().skip(1) {
                let (uid, rest) = line.split_once(' ').unwrap();
                let uid: u32 = uid.parse().unwrap();
                let base = rest.rsplit_once(':').unwrap().1;
                let path = &by_name[base];
                let rec = recs
                    .iter()
                    .find(|r| r.uid == uid)
                    .expect("record by Dovecot's UID");
                let bytes = std::fs::read(path).unwrap();
                assert_eq!(
                    spool.get_body(&rec.hash).unwrap(),
                    bytes,
                    "{}",
                    path.display()
                );
                assert_eq!(rec.internal_ts, std::fs::metadata(path).unwrap().mtime());
                checked += 1;
            }
        }
        let want = 8 + corpus.as_ref().map_or(0, Vec::len);
        assert_eq!(checked, want, "every INBOX and Sent message checked");
    }

    // New mail and a flag change at the source, then the source is read over IMAP: only
    // the new messages are copied, nothing twice.
    for i in 0..2 {
        let body = cutover::demo::sample_message("alice-new", i, "INBOX");
        tb.source
            .deliver("alice", "INBOX", &body, &[], Some(1_700_000_000 + i as i64))
            .unwrap();
    }
    let sent = root.join(".Sent/cur");
    let one = std::fs::read_dir(&sent)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let renamed = one.to_string_lossy().replace(":2,RS", ":2,FRS");
    std::fs::rename(&one, &renamed).unwrap();
    let source = settled(rt().block_on(snapshot(&tb, &tb.source, "alice")));
    let uids_after = imap_uids(&tb, "alice");
    for (folder, uids) in &uids_before {
        assert!(
            uids.iter().all(|u| uids_after[folder].contains(u)),
            "{folder}: Dovecot kept its UIDs"
        );
    }
    let imap_config = demo_config(&tb, &USERS[..1], "");
    assert_eq!(imap_config, config);
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(copied(&out, "alice@example.test"), 2, "{}", stdout(&out));
    let dest = settled(rt().block_on(snapshot(&tb, &tb.dest, "alice@example.test")));
    assert_same(&source, &dest);

    // The spool as Maildir: bob's empty Maildir gets alice's export, and Dovecot serves
    // it message by message as alice's source: bytes, flags, dates, folder names.
    let bob = home(&tb.source, "bob").join("Maildir");
    assert!(!bob.exists(), "bob's Maildir is made by the export");
    let out = cutover(
        &config,
        &[
            "export",
            "--mailbox",
            "alice@example.test",
            "--to",
            bob.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    give_tree(&bob, &home(&tb.source, "bob"));
    let exported = settled(rt().block_on(snapshot(&tb, &tb.source, "bob")));
    let source: Snapshot = source.into_iter().filter(|(_, m)| !m.is_empty()).collect();
    let exported: Snapshot = exported
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .collect();
    assert_eq!(exported, source, "the export is the source again");
    // Into a directory that holds something: refused, nothing written.
    let out = cutover(
        &config,
        &[
            "export",
            "--mailbox",
            "alice@example.test",
            "--to",
            bob.to_str().unwrap(),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
}

/// Every file below `dir`: path -> (size, mtime in ns, inode). Read-only means none of it
/// changes.
fn tree_state(dir: &Path) -> BTreeMap<PathBuf, (u64, i128, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                out.insert(e.path(), (m.len(), ns, m.ino()));
            }
        }
    }
    out
}

/// Gives `dir` and everything below it the owner of `like` (the mail user the testbed's
/// Dovecot runs as).
fn give_tree(dir: &Path, like: &Path) {
    let m = std::fs::metadata(like).unwrap();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::os::unix::fs::chown(&d, Some(m.uid()), Some(m.gid())).unwrap();
        if d.is_dir() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
}

/// A message file written by hand into `dir/sub` with `name` and `mtime`.
fn put(dir: &Path, sub: &str, name: &str, body: &[u8], mtime: i64) -> PathBuf {
    std::fs::create_dir_all(dir.join(sub)).unwrap();
    let p = dir.join(sub).join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(mtime as u64))
        .unwrap();
    p
}

fn maildir(dir: &Path) {
    for s in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(s)).unwrap();
    }
}

fn body(tag: &str) -> Vec<u8> {
    format!("From: a@example.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@example.test>\r\n\r\nhello {tag}\r\n").into_bytes()
}

/// What the destination holds in `folder`: (sha256 of the body, flags, INTERNALDATE as
/// Unix seconds), sorted.
fn dest_folder(snap: &Snapshot, folder: &str) -> Vec<(String, Vec<String>, i64)> {
    let mut v: Vec<_> = snap
        .get(folder)
        .unwrap_or_else(|| panic!("no {folder} at the destination: {:?}", snap.keys()))
        .iter()
        .map(|m| (m.sha256.clone(), m.flags.clone(), ts(&m.internal_date)))
        .collect();
    v.sort();
    v
}

fn want(items: &[(&[u8], &[&str], i64)]) -> Vec<(String, Vec<String>, i64)> {
    use sha2::Digest;
    let mut v: Vec<_> = items
        .iter()
        .map(|(b, f, t)| {
            let mut f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            f.sort();
            (hex(&sha2::Sha256::digest(b)), f, *t)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn handmade_maildir_plus_plus_deltas_and_deletes() {
    let Some(tb) = testbed(&USERS) else { return };
    let work = work_dir(&tb);
    let roots = work.join("roots");
    let root = roots.join("carol");
    maildir(&root);
    maildir(&root.join(".Sent"));
    maildir(&root.join(".Work.Projects"));
    maildir(&root.join(".Entw&APw-rfe"));
    std::fs::write(root.join("dovecot-keywords"), "0 Work\n1 $Label1\n").unwrap();
    let kw = root.join(".Work.Projects/courierimapkeywords");
    std::fs::create_dir_all(&kw).unwrap();
    std::fs::write(kw.join(":list"), "Project-X\n\n1700000003.M3P1.host:0\n").unwrap();
    let (a, b, c, d, e) = (body("a"), body("b"), body("c"), body("d"), body("e"));
    put(&root, "new", "1700000001.M1P1.host", &a, 1_600_000_001);
    put(
        &root,
        "cur",
        "1700000002.M2P1.host:2,FSa",
        &b,
        1_600_000_002,
    );
    put(
        &root.join(".Work.Projects"),
        "cur",
        "1700000003.M3P1.host:2,S",
        &c,
        1_600_000_003,
    );
    put(
        &root.join(".Entw&APw-rfe"),
        "cur",
        "1700000004.M4P1.host:2,D",
        &d,
        1_600_000_004,
    );
    put(
        &root.join(".Sent"),
        "cur",
        "1700000005.M5P1.host:2,RS",
        &e,
        1_600_000_005,
    );
    let config = demo_config(
        &tb,
        &USERS[2..],
        "[sync]\npropagate_deletes = true\nmax_delete_percent = 50\n",
    );
    maildir_source(&config, &roots, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let snap = rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test"));
    let snap = settled(snap);
    assert_eq!(
        dest_folder(&snap, "INBOX"),
        want(&[
            (&a, &[], 1_600_000_001),
            (&b, &["\\Flagged", "\\Seen", "Work"], 1_600_000_002)
        ])
    );
    assert_eq!(
        dest_folder(&snap, "Work/Projects"),
        want(&[(&c, &["\\Seen", "Project-X"], 1_600_000_003)])
    );
    assert_eq!(
        // Decoded from modified UTF-7, then mapped as the German name of Drafts.
        dest_folder(&snap, "Drafts"),
        want(&[(&d, &["\\Draft"], 1_600_000_004)])
    );
    assert_eq!(
        dest_folder(&snap, "Sent Items"),
        want(&[(&e, &["\\Answered", "\\Seen"], 1_600_000_005)])
    );

    // Deltas: new mail in new/, the user read a (new/ -> cur/, seen), flagged b, a new
    // folder, and deleted the message of Sent (1 of 1: over 50 %, refused).
    let f = body("f");
    let g = body("g");
    put(&root, "new", "1700000006.M6P1.host", &f, 1_600_000_006);
    std::fs::rename(
        root.join("new/1700000001.M1P1.host"),
        root.join("cur/1700000001.M1P1.host:2,S"),
    )
    .unwrap();
    std::fs::rename(
        root.join("cur/1700000002.M2P1.host:2,FSa"),
        root.join("cur/1700000002.M2P1.host:2,FRSab"),
    )
    .unwrap();
    maildir(&root.join(".Archive"));
    put(
        &root.join(".Archive"),
        "cur",
        "1700000007.M7P1.host:2,",
        &g,
        1_600_000_007,
    );
    std::fs::remove_file(root.join(".Sent/cur/1700000005.M5P1.host:2,RS")).unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(text.contains("refusing to delete 1 of 1"), "{text}");
    assert_eq!(copied(&out, "carol@example.test"), 2, "{text}");
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test")));
    assert_eq!(
        dest_folder(&snap, "INBOX"),
        want(&[
            (&a, &["\\Seen"], 1_600_000_001),
            (
                &b,
                &["\\Answered", "\\Flagged", "\\Seen", "Work", "$Label1"],
                1_600_000_002
            ),
            (&f, &[], 1_600_000_006)
        ])
    );
    assert_eq!(
        dest_folder(&snap, "Archive"),
        want(&[(&g, &[], 1_600_000_007)])
    );
    assert_eq!(
        dest_folder(&snap, "Sent Items").len(),
        1,
        "over the limit: kept"
    );

    // Within the limit: one of INBOX's three is deleted, at the destination too.
    std::fs::remove_file(root.join("new/1700000006.M6P1.host")).unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(text.contains("deleted 1 message"), "{text}");
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test")));
    assert_eq!(dest_folder(&snap, "INBOX").len(), 2, "{text}");
    assert!(!dest_folder(&snap, "INBOX")
        .iter()
        .any(|m| m.2 == 1_600_000_006));
}

#[test]
fn layouts_fs_and_list() {
    let Some(tb) = testbed(&USERS) else { return };
    let work = work_dir(&tb);
    let roots = work.join("roots");
    let root = roots.join("bob");
    maildir(&root.join("INBOX"));
    maildir(&root.join("Work/Projects"));
    maildir(&root.join("Sent"));
    let (a, b, c) = (body("fs-a"), body("fs-b"), body("fs-c"));
    put(&root.join("INBOX"), "cur", "1.M1.h:2,S", &a, 1_600_000_101);
    put(
        &root.join("Work/Projects"),
        "new",
        "2.M2.h",
        &b,
        1_600_000_102,
    );
    put(&root.join("Sent"), "cur", "3.M3.h:2,RS", &c, 1_600_000_103);
    let config = demo_config(&tb, &USERS[1..2], "");
    maildir_source(&config, &roots, "\nlayout = \"fs\"");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "bob@example.test")));
    assert_eq!(
        dest_folder(&snap, "INBOX"),
        want(&[(&a, &["\\Seen"], 1_600_000_101)])
    );
    assert_eq!(
        dest_folder(&snap, "Work/Projects"),
        want(&[(&b, &[], 1_600_000_102)])
    );
    assert_eq!(
        dest_folder(&snap, "Sent Items"),
        want(&[(&c, &["\\Answered", "\\Seen"], 1_600_000_103)])
    );

    // An explicit list: only what it names, under the names it gives.
    let config2 = work.join("list.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config2, text.replace("spool\"", "spool-list\"")).unwrap();
    maildir_source(
        &config2,
        &roots,
        "\nlayout = \"list\"\n[source.folders]\nINBOX = \"Sent\"\n\"Old Work\" = \"Work/Projects\"",
    );
    let out = cutover(&config2, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "bob@example.test")));
    assert_eq!(
        dest_folder(&snap, "Old Work"),
        want(&[(&b, &[], 1_600_000_102)])
    );
    // The INBOX of the list is Sent's directory: c arrives in INBOX beside a.
    assert_eq!(dest_folder(&snap, "INBOX").len(), 2);
}

#[test]
fn bad_input_is_reported_and_the_other_mailboxes_go_on() {
    let Some(tb) = testbed(&USERS) else { return };
    let work = work_dir(&tb);
    let roots = work.join("roots");
    // alice: no directory at all. bob: a directory that is not a Maildir.
    std::fs::create_dir_all(roots.join("bob/stuff")).unwrap();
    // carol: a Maildir with server files, leftovers, links, a big file and a directory
    // where a message should be.
    let root = roots.join("carol");
    maildir(&root);
    let ok = body("good");
    put(&root, "cur", "1.M1.h:2,S", &ok, 1_600_000_201);
    for f in [
        "dovecot.index",
        "dovecot.index.log",
        "dovecot-uidlist.lock",
        "dovecot.index.cache",
    ] {
        std::fs::write(root.join(f), b"not mail").unwrap();
    }
    put(&root, "tmp", "2.M2.h", &body("leftover"), 1_600_000_202);
    put(&root, "cur", "3.M3.h.lock", b"lock", 1_600_000_203);
    put(&root, "cur", ".4.M4.h", b"hidden", 1_600_000_204);
    let outside = work.join("outside.eml");
    std::fs::write(&outside, body("outside")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("cur/5.M5.h:2,S")).unwrap();
    maildir(&work.join("elsewhere"));
    put(
        &work.join("elsewhere"),
        "cur",
        "6.M6.h:2,",
        &body("elsewhere"),
        1_600_000_206,
    );
    std::os::unix::fs::symlink(work.join("elsewhere"), root.join(".Linked")).unwrap();
    let mut big = body("big");
    big.extend(std::iter::repeat_n(b'x', 300 * 1024));
    big.extend_from_slice(b"\r\n");
    put(&root, "cur", "7.M7.h:2,S", &big, 1_600_000_207);
    std::fs::create_dir(root.join("cur/8.M8.h:2,S")).unwrap();

    let config = demo_config(&tb, &USERS, "[sync]\nmax_message_bytes = 100000\n");
    maildir_source(&config, &roots, "");
    let out = cutover(&config, &["sync", "--once"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "{text}");
    let alice_root = roots.join("alice");
    assert!(
        text.contains(&format!("Maildir {}", alice_root.display()))
            && text.contains("No such file"),
        "the missing directory is named: {text}"
    );
    assert!(
        text.contains(&format!("{} is not a Maildir", roots.join("bob").display())),
        "{text}"
    );
    // carol's one good message is there, and nothing else.
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test")));
    assert_eq!(
        dest_folder(&snap, "INBOX"),
        want(&[(&ok, &["\\Seen"], 1_600_000_201)]),
        "{text}"
    );
    let total: usize = snap.values().map(Vec::len).sum();
    assert_eq!(total, 1, "nothing but the message copied: {snap:?}\n{text}");
    // Reported: the big one skipped with its size, the links and lock file as notices,
    // the directory with the OS's error.
    assert!(
        text.contains("over max_message_bytes (100000)") && text.contains("subject \"big\""),
        "{text}"
    );
    assert!(text.contains("5.M5.h:2,S: a symbolic link"), "{text}");
    assert!(text.contains(".Linked: a symbolic link"), "{text}");
    assert!(text.contains("3.M3.h.lock: a lock file"), "{text}");
    assert!(
        text.contains("8.M8.h:2,S: cannot be read") && text.contains("os error 21"),
        "{text}"
    );
    assert!(
        !text.contains("hidden") && !text.contains("leftover"),
        "{text}"
    );

    // `cutover check` lists what it would read, and names the same problems.
    let out = cutover(&config, &["check"]);
    let text = stdout(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("alice@example.test (Maildir): FAILED"),
        "{text}"
    );
    assert!(text.contains("carol@example.test (Maildir): ok"), "{text}");
    assert!(
        text.contains("notice:") && text.contains(".Linked"),
        "{text}"
    );
}

/// `cutover run` with a Maildir source: the daemon's passes, statuses and status file
/// are the same as over IMAP. The mailbox reaches Synced, a message filed while the daemon
/// runs is carried by its next pass, and SIGTERM stops it.
#[test]
fn the_daemon_migrates_from_maildir_and_carries_deltas() {
    let Some(tb) = testbed(&USERS) else { return };
    let work = work_dir(&tb);
    let roots = work.join("roots");
    let root = roots.join("carol");
    maildir(&root);
    maildir(&root.join(".Sent"));
    let (a, b, c) = (body("da"), body("db"), body("dc"));
    put(&root, "cur", "1700000101.M1P1.host:2,S", &a, 1_600_000_101);
    put(
        &root.join(".Sent"),
        "cur",
        "1700000102.M2P1.host:2,S",
        &b,
        1_600_000_102,
    );
    let config = demo_config(&tb, &USERS[2..], "[sync]\ninterval = \"2s\"\n");
    maildir_source(&config, &roots, "");
    let log = work.join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("CUTOVER_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(work.join("daemon.err")).unwrap())
        .spawn()
        .unwrap();
    let read_log = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(work.join("daemon.err")).unwrap_or_default()
        )
    };
    let status = || -> serde_json::Value {
        let out = cutover(&config, &["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let carol = |s: &serde_json::Value| -> serde_json::Value {
        s["mailboxes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["mailbox"] == "carol@example.test"))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let wait = |what: &str, cond: &mut dyn FnMut() -> bool| {
        let ok = (0..600).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            cond()
        });
        assert!(ok, "timed out waiting for {what}\n{}", read_log());
    };
    wait("Synced", &mut || carol(&status())["status"] == "Synced");
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test")));
    assert_eq!(
        dest_folder(&snap, "INBOX"),
        want(&[(&a, &["\\Seen"], 1_600_000_101)])
    );
    assert_eq!(
        dest_folder(&snap, "Sent Items"),
        want(&[(&b, &["\\Seen"], 1_600_000_102)])
    );
    assert_eq!(carol(&status())["items_synced"], 2, "{}", read_log());

    // Filed while the daemon runs: the next pass carries it.
    put(&root, "new", "1700000103.M3P1.host", &c, 1_600_000_103);
    wait("the delta at the destination", &mut || {
        let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test")));
        snap.get("INBOX").is_some_and(|m| m.len() == 2)
    });
    let snap = settled(rt().block_on(snapshot(&tb, &tb.dest, "carol@example.test")));
    assert_eq!(
        dest_folder(&snap, "INBOX"),
        want(&[(&a, &["\\Seen"], 1_600_000_101), (&c, &[], 1_600_000_103)])
    );
    wait("items_synced 3", &mut || {
        carol(&status())["items_synced"] == 3
    });

    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
    let stopped = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !stopped {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        stopped,
        "the daemon did not stop on SIGTERM\n{}",
        read_log()
    );
}
