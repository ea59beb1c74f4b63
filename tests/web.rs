//! The status page's HTTP API, event stream and metrics, against a daemon migrating
//! between real Dovecot servers, with the destination behind the fault-injecting proxy
//! (a throttle and a quota refusal). Every response is kept and searched for secrets.

mod common;
#[path = "common/proxy.rs"]
mod proxy;
mod web_support;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use cutover::testbed::MASTER_PASSWORD;
use proxy::{Action, Proxy};
use web_support::*;

/// Passwords chosen so that any leak is found by a plain search.
const ALICE_PW: &str = "alice-S3cret-pw";
const BOB_WRONG_PW: &str = "bob-Wr0ng-S3cret";
const CAROL_PW: &str = "carol-S3cret-pw";
const DAN_PW: &str = "dan-S3cret-pw";

#[test]
fn api_events_controls_and_metrics_of_a_running_migration() {
    let real = [
        ("alice", ALICE_PW, "alice@example.test"),
        ("bob", "bob-R1ght-S3cret", "bob@example.test"),
        ("carol", CAROL_PW, "carol@example.test"),
        ("dan", DAN_PW, "dan@example.test"),
    ];
    let Some(tb) = testbed(&real) else { return };
    let csv = [
        real[0],
        ("bob", BOB_WRONG_PW, "bob@example.test"),
        real[2],
        real[3],
    ];
    fill(&tb, "alice", "INBOX.Archive", 60, |_| vec![]);
    fill(&tb, "bob", "INBOX", 3, |_| vec![]);
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
        ("alice@example.test", 20) => Action::Throttle { ms: 1500 },
        ("dan@example.test", 0) => Action::RefuseNo("[OVERQUOTA] Mailbox is full"),
        _ => Action::Forward,
    });
    let proxy = rt.block_on(Proxy::start(tb.dest.plain_port(), schedule));
    let web_port = cutover::testbed::free_port();
    // Paced, so that the first pass lasts a few seconds and the counts can be seen moving.
    let config = config_through_proxy(
        &tb,
        &csv,
        proxy.port(),
        web_port,
        "messages_per_second = 15\n",
    );
    let mut d = Daemon::start(&config);
    let c = Client::new(web_port);
    wait_until(&d, Duration::from_secs(20), "the page answers", || {
        std::net::TcpStream::connect(("127.0.0.1", web_port)).is_ok()
    });
    let h = c.get("/healthz");
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(h.json()["ok"], true);

    // The page and its assets, with the headers that keep other sites out.
    let page = c.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("<script src=\"/app.js\""),
        "{}",
        page.text()
    );
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(c.get("/app.js").status, 200);
    assert_eq!(
        c.get("/style.css").header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(c.get("/nothing-here").status, 404);

    // Live: the event stream pushes the status as the counts move, without a request.
    let events = c.events(Duration::from_secs(40), |ev| {
        ev.len() >= 2
            && ev.last().unwrap()["appended_since_start"].as_u64()
                > ev[0]["appended_since_start"].as_u64()
            && ev.last().unwrap()["appended_since_start"].as_u64() > Some(0)
    });
    assert!(events.len() >= 2, "{events:?}");
    let first = events[0]["appended_since_start"].as_u64().unwrap();
    let last = events.last().unwrap()["appended_since_start"]
        .as_u64()
        .unwrap();
    assert!(
        last > first,
        "the counts moved on the stream: {first} -> {last}"
    );
    assert!(events[0]["phase"].is_string(), "{}", events[0]);

    wait_until(
        &d,
        Duration::from_secs(60),
        "alice and carol Synced, bob and dan Failed",
        || {
            let s = |m| status_of(&c, m);
            s("alice@example.test").as_deref() == Some("Synced")
                && s("carol@example.test").as_deref() == Some("Synced")
                && s("bob@example.test").as_deref() == Some("Failed")
                && s("dan@example.test").as_deref() == Some("Failed")
        },
    );
    // The spool is counted every few seconds: wait for the count after the passes.
    wait_until(
        &d,
        Duration::from_secs(15),
        "the counts of the finished passes",
        || {
            let st = c.get("/api/status").json();
            st["totals"]["dest_messages"] == 60 + 3 + 3 && st["totals"]["failed"] == 1
        },
    );
    let st = c.get("/api/status").json();
    assert_eq!(st["phase"], "SyncedWithErrors", "{st}");
    assert_eq!(st["mailboxes"], 4);
    assert_eq!(st["by_status"]["Synced"], 2, "{st}");
    assert_eq!(st["by_status"]["Failed"], 2, "{st}");
    assert_eq!(st["by_status"]["Queued"], 0, "{st}");
    assert_eq!(
        st["totals"]["source_messages"],
        60 + 4 + 4,
        "bob was never read: {st}"
    );
    assert_eq!(st["totals"]["skipped"], 1, "{st}");
    assert_eq!(
        st["totals"]["pending_messages"], 1,
        "dan's refused message: {st}"
    );
    assert_eq!(st["appended_since_start"], 66, "{st}");
    assert_eq!(st["throttling"]["throttled_total"], 1, "{st}");
    assert!(st["disk"]["free_bytes"].as_u64().unwrap() > 0, "{st}");
    // The spool's files are counted (bodies compacted and records packed: well under the
    // 168 KB of mail, but never nothing).
    assert!(
        st["disk"]["spool_used_bytes"].as_u64().unwrap() > 16_384,
        "{st}"
    );

    // The table: filter, search, sort, paging, progress and what each waits on.
    let failed = rows(&c, "status=Failed");
    let names: Vec<&str> = failed
        .iter()
        .map(|r| r["mailbox"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob@example.test", "dan@example.test"]);
    assert_eq!(
        failed[1]["waiting_on"],
        "destination quota (retry errors once fixed)"
    );
    let bob = &failed[0];
    assert_eq!(bob["waiting_on"], "login failing", "{bob}");
    assert!(
        bob["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("auth"),
        "{bob}"
    );
    let found = rows(&c, "q=CAROL");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["progress_messages"], 1.0, "{}", found[0]);
    assert_eq!(found[0]["counts"]["skipped"], 1);
    assert_eq!(found[0]["waiting_on"], "nothing to do");
    let sorted = rows(&c, "sort=items_synced&order=desc");
    assert_eq!(sorted[0]["mailbox"], "alice@example.test");
    assert_eq!(sorted[0]["items_synced"], 60);
    let p = c.get("/api/mailboxes?per_page=3&page=2").json();
    assert_eq!(
        (p["total"].as_u64(), p["pages"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(p["rows"][0]["mailbox"], "dan@example.test");

    // One mailbox: detail, folders (with the destination name and rule), problems.
    let one = c.get("/api/mailboxes/ALICE%40example.test").json();
    assert_eq!(one["mailbox"]["mailbox"], "alice@example.test");
    let throttles = one["throttles"].as_array().unwrap();
    assert_eq!(throttles.len(), 1, "{one}");
    assert!(
        throttles[0]["text"].as_str().unwrap().contains("throttled"),
        "{one}"
    );
    let folders = c.get("/api/mailboxes/alice%40example.test/folders").json();
    let archive = folders
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "INBOX.Archive")
        .unwrap_or_else(|| panic!("{folders}"));
    assert_eq!(archive["source_messages"], 60);
    assert_eq!(archive["dest_messages"], 60);
    assert_eq!(archive["dest_name"], "Archive", "{archive}");
    assert_eq!(archive["rule"], "well-known name", "{archive}");
    let probs = c.get("/api/mailboxes/carol%40example.test/problems").json();
    let items = probs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{probs}");
    let item = &items[0];
    assert_eq!(item["state"], "skipped");
    assert_eq!(item["folder"], "INBOX");
    assert_eq!(item["subject"], "Quarterly-scan", "{item}");
    assert!(item["date"].as_str().unwrap().contains("2024"), "{item}");
    assert!(item["size"].as_u64().unwrap() >= 150_000, "{item}");
    assert!(
        item["reason"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{item}"
    );
    let dan = c.get("/api/mailboxes/dan%40example.test/problems").json();
    let dan_item = &dan["items"][0];
    assert_eq!(dan_item["state"], "failed", "{dan}");
    assert!(
        dan_item["reason"].as_str().unwrap().contains("OVERQUOTA"),
        "{dan}"
    );
    assert!(
        dan_item["sender"].as_str().unwrap().contains('@'),
        "the spooled copy's From: {dan}"
    );
    assert_eq!(c.get("/api/mailboxes/nobody%40example.test").status, 404);

    // Downloads.
    let report = c.get("/api/report.csv");
    assert_eq!(report.status, 200);
    assert!(report
        .header("content-disposition")
        .unwrap()
        .contains("attachment"));
    assert!(
        report.text().starts_with("row_type,mailbox,status"),
        "{}",
        report.text()
    );
    let items_csv = c.get("/api/problems.csv").text();
    let mut r = csv::Reader::from_reader(items_csv.as_bytes());
    let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(recs.len(), 2, "{items_csv}");
    assert!(recs
        .iter()
        .any(|r| &r[0] == "carol@example.test" && &r[3] == "Quarterly-scan" && &r[6] == "skipped"));

    // Metrics.
    let m = c.get("/metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    for want in [
        "cutover_mailboxes{status=\"Failed\"} 2",
        "cutover_mailboxes{status=\"Synced\"} 2",
        "cutover_mailboxes{status=\"Completed\"} 0",
        "cutover_messages_appended_total 66",
        "cutover_messages_skipped_total{reason=\"too_big\"} 1",
        "cutover_messages_failed_total 1",
        "cutover_upstream_throttled_total 1",
        "cutover_upstream_backoff_seconds_total 1.5",
        "cutover_source_messages 68",
        "cutover_destination_messages 66",
        "cutover_spool_pending_messages 1",
        "cutover_oauth_token_expiry_timestamp_seconds 0",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}"))
            .parse()
            .unwrap()
    };
    assert!(value("cutover_appended_bytes_total") > 66.0 * 100.0);
    assert!(value("cutover_spool_disk_free_bytes") > 0.0);
    assert!(value("cutover_last_delta_sync_timestamp_seconds") > 1.7e9);
    assert!(
        !text.contains("example.test"),
        "no per-mailbox label: {text}"
    );

    // Controls: refused from elsewhere, accepted from the page; retry errors sends dan's
    // refused message again (the proxy forwards it this time) and dan becomes Synced.
    let port = web_port;
    let evil = c.raw(&format!("POST /api/controls/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\nContent-Type: application/json"), b"{}");
    assert_eq!(evil.status, 403, "{}", evil.text());
    let form = c.raw(&format!("POST /api/controls/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded"), b"mailboxes=x");
    assert_eq!(form.status, 415, "{}", form.text());
    let rebound = c.raw(
        "GET /api/status HTTP/1.1\r\nHost: rebound.example:8080",
        b"",
    );
    assert_eq!(rebound.status, 421, "{}", rebound.text());
    assert_eq!(c.post_json("/api/controls/explode", "{}").status, 404);
    let unknown = c.post_json(
        "/api/controls/pause",
        r#"{"mailboxes":["nobody@example.test"]}"#,
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(c.post_json("/api/controls/pause", "{not json").status, 400);
    assert_eq!(c.get("/api/controls/pause").status, 405);
    let ok = c.post_json(
        "/api/controls/retry-errors",
        r#"{"mailboxes":["DAN@example.test"]}"#,
    );
    assert_eq!(ok.status, 202, "{}", ok.text());
    assert_eq!(ok.json()["mailboxes"][0], "dan@example.test");
    wait_until(
        &d,
        Duration::from_secs(30),
        "dan Synced after retry errors",
        || status_of(&c, "dan@example.test").as_deref() == Some("Synced"),
    );
    wait_until(
        &d,
        Duration::from_secs(15),
        "dan's message counted at the destination",
        || c.get("/api/status").json()["totals"]["dest_messages"] == 67,
    );
    assert_eq!(
        rt.block_on(snapshot(&tb, &tb.dest, "dan@example.test"))["INBOX"].len(),
        4
    );
    for action in ["pause", "resume", "sync-now"] {
        let r = c.post_json(&format!("/api/controls/{action}"), "");
        assert_eq!(r.status, 202, "{action}: {}", r.text());
    }

    // No password, of the CSV or of the config, in anything the server sent.
    d.stop();
    let seen = String::from_utf8_lossy(&c.seen.lock().unwrap()).into_owned();
    assert!(seen.len() > 10_000, "the responses were kept");
    for secret in [
        ALICE_PW,
        BOB_WRONG_PW,
        CAROL_PW,
        DAN_PW,
        "bob-R1ght-S3cret",
        MASTER_PASSWORD,
    ] {
        assert!(!seen.contains(secret), "a secret reached a response");
    }
}
