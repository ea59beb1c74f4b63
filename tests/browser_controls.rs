//! The status page's controls, letters, MX cutover and a 5,000-mailbox table in headless
//! chromium, against daemons migrating between real Dovecot servers (see
//! `web_support/chromium.rs` for the browser; screenshots in `target/browser/`).

mod common;
#[path = "daemon_support/dns.rs"]
#[allow(dead_code)]
mod dns;
#[path = "common/proxy.rs"]
mod proxy;
mod web_support;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proxy::Proxy;
use serde_json::json;
use web_support::chromium::*;
use web_support::*;

/// `appended_since_start` of `/api/status`.
fn appended(api: &Client) -> u64 {
    api.get("/api/status").json()["appended_since_start"]
        .as_u64()
        .unwrap()
}

fn row_of(api: &Client, mailbox: &str) -> serde_json::Value {
    rows(api, "")
        .into_iter()
        .find(|r| r["mailbox"] == mailbox)
        .unwrap_or_else(|| panic!("no row for {mailbox}"))
}

/// The mailbox's row on the page: its status as the table shows it.
fn row_status_js(mailbox: &str, status: &str) -> String {
    format!(
        "const r = document.querySelector(\"#mailboxes tbody tr[data-mailbox='{mailbox}']\"); \
         return !!r && r.dataset.status === '{status}';"
    )
}

/// Pause and resume, for the whole migration and then for one mailbox, pressed on the
/// page: the mailboxes stop (nothing more is appended), go on, and finish. The notice of
/// `[notify] before`, sent to alice only, shows in her row, her detail, the API and the
/// CSV report; the welcome is shown as not set up.
#[test]
fn pause_and_resume_on_the_page_and_the_letters_shown() {
    if !require_chromium() {
        return;
    }
    let users = [
        ("alice", "alice-pw-1", "alice@example.test"),
        ("bob", "bob-pw-1", "bob@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "alice", "INBOX", 200, |_| vec![]);
    fill(&tb, "bob", "INBOX", 200, |_| vec![]);
    let rt = rt();
    let proxy = rt.block_on(Proxy::start_with(
        tb.dest.plain_port(),
        proxy::Options::forward_all(),
    ));
    let web_port = cutover::testbed::free_port();
    // Paced: a mailbox's pass takes some 25 s, long enough to pause it half-way.
    let config = config_through_proxy(
        &tb,
        &users,
        proxy.port(),
        web_port,
        "messages_per_second = 8\n",
    );
    let notice = Path::new(env!("CARGO_MANIFEST_DIR")).join("letters/notice.en.eml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[notify]\nbefore = \"{}\"\ncutover_date = \"Friday 11 December\"\n",
        notice.display()
    ));
    std::fs::write(&config, toml).unwrap();
    let out = cutover(
        &config,
        &["notify", "before", "--mailbox", "alice@example.test"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let mut daemon = Daemon::start(&config);
    let api = Client::new(web_port);
    wait_until(&daemon, Duration::from_secs(20), "the page answers", || {
        TcpStream::connect(("127.0.0.1", web_port)).is_ok()
    });
    let driver = Driver::start(config.parent().unwrap());
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let b = browser(&driver).await;
        b.goto(&format!("http://127.0.0.1:{web_port}/")).await.unwrap();
        until(&b, Duration::from_secs(15), "live stream", "return document.getElementById('live').textContent === 'live'").await;
        until(&b, Duration::from_secs(30), "messages appended", "return Number(document.getElementById('appended').textContent.replace(/\\D/g,'')) > 10").await;

        // The whole migration: both stop, and nothing more reaches the destination.
        b.find(Locator::Css("#global-controls button[data-action='pause']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(10), "the pause accepted", "return document.getElementById('control-result').textContent.includes('pause requested')").await;
        until(&b, Duration::from_secs(20), "alice Stopped", &row_status_js("alice@example.test", "Stopped")).await;
        until(&b, Duration::from_secs(20), "bob Stopped", &row_status_js("bob@example.test", "Stopped")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let still = appended(&api);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(appended(&api), still, "nothing appended while paused");
        assert!(still < 400, "paused before the end ({still} appended)");
        let alice = text(&b, "#mailboxes tbody tr[data-mailbox='alice@example.test']").await;
        assert!(alice.contains("paused by the admin"), "{alice}");
        shot(&b, "paused-all-1280x800").await;

        b.find(Locator::Css("#global-controls button[data-action='resume']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(20), "alice moving again", &format!(
            "return Number(document.getElementById('appended').textContent.replace(/\\D/g,'')) > {still}")).await;

        // One mailbox: alice stops while bob goes on.
        b.find(Locator::Css("#mailboxes tbody tr[data-mailbox='alice@example.test']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(10), "alice's detail", "return document.getElementById('detail-title').textContent === 'alice@example.test'").await;
        b.find(Locator::Css("#detail-controls button[data-action='pause']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(20), "alice Stopped alone", "return document.querySelector('#detail-summary .st').textContent === 'Stopped'").await;
        let alice_dest = row_of(&api, "alice@example.test")["items_synced"].as_u64().unwrap();
        assert!(alice_dest < 200, "alice paused half-way ({alice_dest})");
        let bob_before = appended(&api);
        wait_until(&daemon, Duration::from_secs(20), "bob going on without alice", || {
            appended(&api) > bob_before + 5
        });
        assert_eq!(status_of(&api, "alice@example.test").as_deref(), Some("Stopped"));
        assert_ne!(status_of(&api, "bob@example.test").as_deref(), Some("Stopped"));
        b.execute("document.getElementById('detail').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "paused-alice-1280x800").await;

        b.find(Locator::Css("#detail-controls button[data-action='resume']")).await.unwrap().click().await.unwrap();
        until(
            &b,
            Duration::from_secs(90),
            "alice Synced with every message",
            "return document.querySelector('#detail-summary .st').textContent === 'Synced' && \
             document.getElementById('detail-summary').textContent.includes('200 of 200 messages') && \
             document.getElementById('detail-summary').textContent.includes(' 0 skipped') && \
             document.querySelectorAll('#problems tbody tr').length === 0",
        )
        .await;
        until(&b, Duration::from_secs(60), "bob Synced", &row_status_js("bob@example.test", "Synced")).await;

        // The letters: alice had the notice, bob not; no welcome is set up.
        let letters = text(&b, "#detail-letters").await;
        assert!(letters.contains("notice delivered 20"), "{letters}");
        assert!(letters.contains("welcome not set up"), "{letters}");
        let cell = |m: &str| format!("#mailboxes tbody tr[data-mailbox='{m}'] td.letters");
        let a = text(&b, &cell("alice@example.test")).await;
        let bo = text(&b, &cell("bob@example.test")).await;
        assert!(a.contains("notice delivered"), "{a}");
        assert!(bo.contains("notice not delivered"), "{bo}");
        // Nothing failed: the detail says so, outside the red box.
        assert_eq!(text(&b, "#detail-no-error").await, "none");
        assert_eq!(
            b.execute("return document.getElementById('detail-error').offsetParent === null", vec![]).await.unwrap(),
            json!(true),
            "no empty error box"
        );
        shot(&b, "letters-detail-1280x800").await;
        b.close().await.unwrap();
    });
    let alice = row_of(&api, "alice@example.test");
    let bob = row_of(&api, "bob@example.test");
    assert!(alice["notice_delivered_unix"].is_i64(), "{alice}");
    assert!(bob["notice_delivered_unix"].is_null(), "{bob}");
    assert!(alice["welcome_delivered_unix"].is_null(), "{alice}");
    let status = api.get("/api/status").json();
    assert_eq!(status["letters"], json!({ "before": true, "after": false }));
    let csv = api.get("/api/report.csv").text();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "notice_delivered_utc")
        .unwrap();
    let line = csv
        .lines()
        .find(|l| l.starts_with("mailbox,alice@example.test,"))
        .unwrap();
    assert!(
        line.split(',').nth(col).unwrap().starts_with("20"),
        "{line}"
    );
    // Both at the destination in full, the notice left behind at the source.
    assert_eq!(
        rt.block_on(snapshot(&tb, &tb.dest, "alice@example.test"))["INBOX"].len(),
        200
    );
    assert_eq!(
        rt.block_on(snapshot(&tb, &tb.dest, "bob@example.test"))["INBOX"].len(),
        200
    );
    daemon.stop();
}

/// A domain whose MX points at Office 365 puts its mailboxes in their cutover grace: the
/// page shows CutoverPending, the domain's MX and the grace left; another domain still on
/// the legacy MX is shown as such.
#[test]
fn mx_state_and_grace_left_on_the_page() {
    if !require_chromium() {
        return;
    }
    let users = [
        ("erin", "erin-pw-1", "erin@example.test"),
        ("otto", "otto-pw-1", "otto@other.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "erin", "INBOX", 5, |_| vec![]);
    fill(&tb, "otto", "INBOX", 5, |_| vec![]);
    let dns = dns::DnsServer::start();
    dns.set_mx(
        "example.test",
        &[(10, "example-test.mail.protection.outlook.com")],
        300,
    );
    dns.set_mx("other.test", &[(10, "mx.legacy.example")], 300);
    let web_port = cutover::testbed::free_port();
    let config = demo_config(
        &tb,
        &users,
        &format!(
            "[sync]\ninterval = \"1h\"\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\n\
             [cutover]\ndomains = [\"example.test\", \"other.test\"]\nresolver = \"{}\"\n\
             check_interval = 2\ngrace = \"1h\"\n",
            dns.addr()
        ),
    );
    let mut daemon = Daemon::start(&config);
    let api = Client::new(web_port);
    wait_until(&daemon, Duration::from_secs(20), "the page answers", || {
        TcpStream::connect(("127.0.0.1", web_port)).is_ok()
    });
    wait_until(
        &daemon,
        Duration::from_secs(60),
        "erin in cutover, otto Synced",
        || {
            status_of(&api, "erin@example.test").as_deref() == Some("CutoverPending")
                && status_of(&api, "otto@other.test").as_deref() == Some("Synced")
        },
    );
    let status = api.get("/api/status").json();
    assert_eq!(status["phase"], "CutoverPending");
    let domains = status["domains"].as_array().unwrap();
    assert_eq!(domains.len(), 2, "{status}");
    let moved = &domains[0];
    assert_eq!(moved["domain"], "example.test");
    assert_eq!(moved["mx"], "Office365");
    assert_eq!(
        moved["exchanges"],
        json!(["example-test.mail.protection.outlook.com"])
    );
    assert_eq!(
        (moved["mailboxes"].as_u64(), moved["in_cutover"].as_u64()),
        (Some(1), Some(1))
    );
    let left = moved["grace_left_seconds"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "grace left {left}");
    assert!(moved["moved_since_unix"].is_i64());
    let legacy = &domains[1];
    assert_eq!(
        (legacy["domain"].as_str(), legacy["mx"].as_str()),
        (Some("other.test"), Some("Legacy"))
    );
    assert!(legacy["grace_left_seconds"].is_null());

    let driver = Driver::start(config.parent().unwrap());
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    rt().block_on(async {
        let b = browser(&driver).await;
        b.goto(&format!("http://127.0.0.1:{web_port}/")).await.unwrap();
        until(&b, Duration::from_secs(15), "the cutover card", "return !document.getElementById('cutover-card').hidden && document.querySelectorAll('#domains tbody tr').length === 2").await;
        assert_eq!(text(&b, "#phase").await, "CutoverPending");
        let note = text(&b, "#phase-note").await;
        assert!(note.starts_with("grace left 59m") || note.starts_with("grace left 1h"), "{note}");
        let moved = text(&b, "#domains tbody tr[data-domain='example.test']").await;
        for want in ["Office 365", "example-test.mail.protection.outlook.com", "59m", "final pass"] {
            assert!(moved.contains(want), "{want:?} in {moved:?}");
        }
        let legacy = text(&b, "#domains tbody tr[data-domain='other.test']").await;
        assert!(legacy.contains("legacy server") && legacy.contains("mx.legacy.example"), "{legacy}");
        let erin = text(&b, "#mailboxes tbody tr[data-mailbox='erin@example.test']").await;
        assert!(erin.contains("cutover grace until"), "{erin}");
        b.execute("document.getElementById('cutover-card').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "cutover-pending-1280x800").await;
        b.set_window_size(390, 844).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.execute("document.getElementById('cutover-card').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "cutover-pending-phone-390").await;
        b.close().await.unwrap();
    });
    daemon.stop();
}

/// 5,000 mailboxes, the whole migration paused before the daemon starts (so that no
/// login is tried): the table's first page renders, a search and a status filter answer,
/// and the pages turn, each within generous bounds; and the table stays usable at a
/// phone's width.
#[test]
fn five_thousand_mailboxes_in_the_table() {
    if !require_chromium() {
        return;
    }
    let users = [("alice", "alice-pw-1", "alice@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let web_port = cutover::testbed::free_port();
    let config = demo_config(
        &tb,
        &users,
        &format!("[sync]\ninterval = \"1h\"\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n"),
    );
    let dir = config.parent().unwrap();
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for i in 0..5000 {
        csv.push_str(&format!("user{i:04}@example.test,user{i:04},pw-{i}\n"));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv).unwrap();
    let out = cutover(&config, &["pause"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut daemon = Daemon::start(&config);
    let api = Client::new(web_port);
    wait_until(&daemon, Duration::from_secs(60), "5,000 rows", || {
        TcpStream::connect(("127.0.0.1", web_port)).is_ok()
            && api.get("/api/mailboxes?per_page=1").json()["total"] == 5000
    });
    let driver = Driver::start(dir);
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    rt().block_on(async {
        let b = browser(&driver).await;
        let t = Instant::now();
        b.goto(&format!("http://127.0.0.1:{web_port}/")).await.unwrap();
        until(&b, Duration::from_secs(5), "the first page of rows", "return document.querySelectorAll('#mailboxes tbody tr').length === 100").await;
        let first = t.elapsed();
        assert!(first < Duration::from_secs(5), "first render took {first:?}");
        assert_eq!(text(&b, "#row-count").await, "5,000 mailbox(es)");
        assert_eq!(text(&b, "#page-info").await, "page 1 of 50");
        let paused = text(&b, "#by-status").await;
        assert!(paused.contains("Stopped 5,000"), "{paused}");
        shot(&b, "table-5000-1280x800").await;

        let t = Instant::now();
        b.find(Locator::Css("#search")).await.unwrap().send_keys("user4").await.unwrap();
        until(&b, Duration::from_secs(5), "the search", "return document.getElementById('row-count').textContent === '1,000 mailbox(es)' && [...document.querySelectorAll('#mailboxes tbody tr')].every(r => r.dataset.mailbox.startsWith('user4'))").await;
        let searched = t.elapsed();
        let t = Instant::now();
        b.find(Locator::Css("#next")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(5), "page 2", "return document.getElementById('page-info').textContent === 'page 2 of 10' && document.querySelector('#mailboxes tbody tr').dataset.mailbox === 'user4100@example.test'").await;
        let paged = t.elapsed();
        let t = Instant::now();
        b.find(Locator::Css("#status-filter")).await.unwrap().select_by_value("Failed").await.unwrap();
        until(&b, Duration::from_secs(5), "no Failed rows", "return document.getElementById('row-count').textContent === '0 mailbox(es)'").await;
        b.find(Locator::Css("#status-filter")).await.unwrap().select_by_value("Stopped").await.unwrap();
        until(&b, Duration::from_secs(5), "the Stopped ones", "return document.getElementById('row-count').textContent === '1,000 mailbox(es)'").await;
        let filtered = t.elapsed();
        eprintln!("5,000 mailboxes: first page {first:?}, search {searched:?}, next page {paged:?}, two filters {filtered:?}");
        for (what, d) in [("search", searched), ("next page", paged), ("filters", filtered)] {
            assert!(d < Duration::from_secs(5), "{what} took {d:?}");
        }
        shot(&b, "table-5000-searched-1280x800").await;
        b.set_window_size(390, 844).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fits = b
            .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![])
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "no sideways scrolling at a phone's width");
        // A row is a card: its status and address are on screen without scrolling sideways.
        let inside = b
            .execute(
                "const t = document.querySelector('#mailboxes tbody tr'); const r = t.getBoundingClientRect(); \
                 return r.width > 0 && r.right <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(inside, json!(true), "a mailbox row fits the phone's width");
        b.execute("document.getElementById('mailboxes').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "table-5000-phone-390").await;
        b.close().await.unwrap();
    });
    daemon.stop();
}
