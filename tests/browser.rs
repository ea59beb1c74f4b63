//! The status page in a real browser: Debian's chromium, headless, driven through
//! chromedriver (WebDriver) by fantoccini, against a daemon migrating between real
//! Dovecot servers. Screenshots go to `target/browser/`; look at them after a change to
//! the page.
//!
//! chromium and chromium-driver come from Debian (`.ci/run` installs them); nothing is
//! downloaded. Without them the test skips loudly, and under CI=true it fails.

mod common;
#[path = "common/proxy.rs"]
mod proxy;
mod web_support;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fantoccini::Locator;
use proxy::{Action, Proxy};
use serde_json::json;
use web_support::chromium::*;
use web_support::*;

/// With a password (and so HTTPS with a self-signed certificate): the page sends to the
/// login form, a wrong password is told, the right one opens the page, and the API
/// refuses a request without the session.
#[test]
fn logging_in_to_the_page_in_headless_chromium() {
    if !require_chromium() {
        return;
    }
    let users = [("erin", "erin-pw-1", "erin@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "erin", "INBOX", 5, |_| vec![]);
    let port = cutover::testbed::free_port();
    let pw_file = work_dir(&tb).join("web-password");
    cutover::web::password::write(&pw_file, "browser-S3cret-pw").unwrap();
    let config = demo_config(
        &tb,
        &users,
        &format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\npassword_file = \"{}\"\n",
            pw_file.display()
        ),
    );
    let mut daemon = Daemon::start(&config);
    wait_until(&daemon, Duration::from_secs(20), "the page answers", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let driver = Driver::start(config.parent().unwrap());
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    rt().block_on(async {
        let b = browser(&driver).await;
        b.goto(&format!("https://127.0.0.1:{port}/")).await.unwrap();
        assert!(b.current_url().await.unwrap().as_str().ends_with("/login"));
        // Without the session the API answers 401, even from the page's origin.
        let status = b
            .execute_async(
                "const done = arguments[0]; fetch('/api/status').then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(401));
        b.find(Locator::Css("#password")).await.unwrap().send_keys("not it").await.unwrap();
        b.find(Locator::Css("#login")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(15), "wrong password told", "return document.getElementById('login-message') && document.getElementById('login-message').textContent.includes('Wrong password')").await;
        shot(&b, "login-wrong-1280x800").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        b.find(Locator::Css("#password")).await.unwrap().send_keys("browser-S3cret-pw").await.unwrap();
        b.find(Locator::Css("#login")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(20), "the page, live", "return !!document.getElementById('live') && document.getElementById('live').textContent === 'live'").await;
        until(&b, Duration::from_secs(30), "erin Synced", "return !!document.querySelector(\"#mailboxes tbody tr[data-status='Synced']\")").await;
        let cookie_visible = b.execute("return document.cookie.includes('cutover_session')", vec![]).await.unwrap();
        assert_eq!(cookie_visible, json!(false), "HttpOnly: scripts cannot read the session");
        assert_eq!(
            b.execute("return document.getElementById('logout').hidden", vec![]).await.unwrap(),
            json!(false)
        );
        shot(&b, "logged-in-1280x800").await;
        b.find(Locator::Css("#logout")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(10), "back at the login", "return location.pathname === '/login'").await;
        b.close().await.unwrap();
    });
    daemon.stop();
}

#[test]
fn the_page_in_headless_chromium() {
    if !require_chromium() {
        return;
    }
    let users = [
        ("alice", "alice-pw-1", "alice@example.test"),
        ("bob", "bob-pw-1", "bob@example.test"),
        ("carol", "carol-pw-1", "carol@example.test"),
        ("dan", "dan-pw-1", "dan@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    let csv = [
        users[0],
        ("bob", "not-bobs-password", "bob@example.test"),
        users[2],
        users[3],
    ];
    fill(&tb, "alice", "INBOX.Archive", 150, |_| vec![]);
    fill(&tb, "carol", "INBOX", 3, |_| vec![]);
    tb.source
        .deliver(
            "carol",
            "INBOX",
            &big_message("Quarterly-scan", 150_000),
            &[],
            Some(1_704_103_200),
        )
        .unwrap();
    fill(&tb, "dan", "INBOX", 4, |_| vec![]);
    let rt = rt();
    let schedule: proxy::Schedule = Arc::new(|user: &str, n: u64| match (user, n) {
        ("alice@example.test", 40) => Action::Throttle { ms: 2000 },
        ("dan@example.test", 0) => Action::RefuseNo("[OVERQUOTA] Mailbox is full"),
        _ => Action::Forward,
    });
    let proxy = rt.block_on(Proxy::start(tb.dest.plain_port(), schedule));
    let web_port = cutover::testbed::free_port();
    // Paced: alice's first pass takes about 15 s, long enough to watch.
    let config = config_through_proxy(
        &tb,
        &csv,
        proxy.port(),
        web_port,
        "messages_per_second = 10\n",
    );
    let mut daemon = Daemon::start(&config);
    let api = Client::new(web_port);
    wait_until(&daemon, Duration::from_secs(20), "the page answers", || {
        TcpStream::connect(("127.0.0.1", web_port)).is_ok()
    });
    let driver = Driver::start(config.parent().unwrap());
    let url = format!("http://127.0.0.1:{web_port}/");

    // The WebDriver client's TLS (unused on this plain loopback link) needs a provider.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let b = browser(&driver).await;
        b.goto(&url).await.unwrap();
        until(&b, Duration::from_secs(15), "live stream", "return document.getElementById('live').textContent === 'live'").await;

        // The counts move without a reload: a marker set on the page survives.
        b.execute("window.__same_page = 7; return true;", vec![]).await.unwrap();
        until(&b, Duration::from_secs(20), "messages appended", "return Number(document.getElementById('appended').textContent.replace(/\\D/g,'')) > 0").await;
        let before = number(&text(&b, "#appended").await);
        until(
            &b,
            Duration::from_secs(20),
            "the count to move",
            &format!("return Number(document.getElementById('appended').textContent.replace(/\\D/g,'')) > {before}"),
        )
        .await;
        let after = number(&text(&b, "#appended").await);
        assert!(after > before, "{before} -> {after}");
        assert_eq!(b.execute("return window.__same_page", vec![]).await.unwrap(), json!(7), "no reload");
        assert_eq!(text(&b, "#phase").await, "Syncing");
        shot(&b, "overview-1280x800-syncing").await;

        // Filter to Failed: the mailbox with the wrong password is there, saying why.
        wait_until(&daemon, Duration::from_secs(60), "bob Failed and alice Synced", || {
            status_of(&api, "bob@example.test").as_deref() == Some("Failed")
                && status_of(&api, "alice@example.test").as_deref() == Some("Synced")
        });
        b.find(Locator::Css("#status-filter")).await.unwrap().select_by_value("Failed").await.unwrap();
        until(
            &b,
            Duration::from_secs(10),
            "only Failed rows",
            "const r = [...document.querySelectorAll('#mailboxes tbody tr')]; \
             return r.length > 0 && r.every(t => t.dataset.status === 'Failed') && \
             r.some(t => t.dataset.mailbox === 'bob@example.test');",
        )
        .await;
        let bob = text(&b, "#mailboxes tbody tr[data-mailbox='bob@example.test']").await;
        assert!(bob.contains("login failing"), "{bob}");
        assert!(bob.to_lowercase().contains("authentication failed"), "{bob}");
        assert!(!text(&b, "#mailboxes tbody").await.contains("carol@example.test"));
        shot(&b, "table-failed-1280x800").await;

        // A search, then carol's detail: the skipped message with its date, subject and why.
        b.find(Locator::Css("#status-filter")).await.unwrap().select_by_value("").await.unwrap();
        b.find(Locator::Css("#search")).await.unwrap().send_keys("carol").await.unwrap();
        until(
            &b,
            Duration::from_secs(10),
            "the search",
            "const r = [...document.querySelectorAll('#mailboxes tbody tr')]; \
             return r.length === 1 && r[0].dataset.mailbox === 'carol@example.test';",
        )
        .await;
        b.find(Locator::Css("#mailboxes tbody tr[data-mailbox='carol@example.test']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(10), "carol's skipped item", "return document.querySelectorAll('#problems tbody tr').length === 1").await;
        let item = text(&b, "#problems tbody tr").await;
        for want in ["skipped", "INBOX", "01-Jan-2024", "Quarterly-scan", "max_message_bytes"] {
            assert!(item.contains(want), "{want:?} in {item:?}");
        }
        let folders = text(&b, "#folders tbody").await;
        assert!(folders.contains("INBOX") && folders.contains("Sent Items"), "{folders}");
        b.execute("document.getElementById('detail').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "detail-carol-1280x800").await;

        // Retry errors on dan, whose message the destination refused (over quota) once:
        // it goes through, and the page says Synced without a reload.
        wait_until(&daemon, Duration::from_secs(30), "dan Failed", || {
            status_of(&api, "dan@example.test").as_deref() == Some("Failed")
        });
        let search = b.find(Locator::Css("#search")).await.unwrap();
        search.clear().await.unwrap();
        search.send_keys("dan@").await.unwrap();
        until(&b, Duration::from_secs(10), "dan's row", "return !!document.querySelector(\"#mailboxes tbody tr[data-mailbox='dan@example.test']\")").await;
        b.find(Locator::Css("#mailboxes tbody tr[data-mailbox='dan@example.test']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(10), "dan's failed item", "return [...document.querySelectorAll('#problems tbody tr')].some(t => t.dataset.state === 'failed' && t.textContent.includes('OVERQUOTA'))").await;
        b.find(Locator::Css("#detail-controls button[data-action='retry-errors']")).await.unwrap().click().await.unwrap();
        until(&b, Duration::from_secs(10), "the request accepted", "return document.getElementById('detail-result').textContent.includes('retry-errors requested')").await;
        until(
            &b,
            Duration::from_secs(30),
            "dan Synced on the page",
            "return document.querySelector('#detail-summary .st').textContent === 'Synced' && \
             document.getElementById('detail-summary').textContent.includes('4 of 4 messages') && \
             document.querySelectorAll('#problems tbody tr').length === 0",
        )
        .await;
        assert_eq!(b.execute("return window.__same_page", vec![]).await.unwrap(), json!(7), "no reload");
        b.execute("document.getElementById('detail').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "detail-dan-after-retry-1280x800").await;

        // The overview once settled, and a phone's width.
        search.clear().await.unwrap();
        b.execute("window.scrollTo(0, 0); return true;", vec![]).await.unwrap();
        until(&b, Duration::from_secs(20), "SyncedWithErrors", "return document.getElementById('phase').textContent === 'SyncedWithErrors'").await;
        until(&b, Duration::from_secs(40), "a chart", "return document.querySelectorAll('#chart path').length === 2").await;
        shot(&b, "overview-1280x800-synced").await;
        b.set_window_size(390, 844).await.unwrap();
        b.execute("window.scrollTo(0, 0); return true;", vec![]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let wide = b
            .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![])
            .await
            .unwrap();
        assert_eq!(wide, json!(true), "no sideways scrolling of the page at a phone's width");
        shot(&b, "overview-phone-390").await;
        b.execute("document.getElementById('mailboxes').scrollIntoView(); return true;", vec![]).await.unwrap();
        shot(&b, "table-phone-390").await;
        b.close().await.unwrap();
    });
    assert_eq!(
        rt.block_on(snapshot(&tb, &tb.dest, "dan@example.test"))["INBOX"].len(),
        4
    );
    daemon.stop();
}
