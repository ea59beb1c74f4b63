//! Headless chromium for the status page's browser tests: Debian's chromium, driven
//! through chromedriver (WebDriver) by fantoccini. Screenshots go to `target/browser/`.
//!
//! chromium and chromium-driver come from Debian (`.ci/run` installs them); nothing is
//! downloaded. Without them a test skips loudly, and under CI=true it fails.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port; killed by PID when dropped.
pub struct Driver {
    child: Child,
    pub port: u16,
}

impl Driver {
    pub fn start(dir: &Path) -> Driver {
        let port = cutover::testbed::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("chromedriver.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let end = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < end,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if the browser is there; false (after a loud notice) if not and CI is not set.
pub fn require_chromium() -> bool {
    let have = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !have {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{CHROMIUM} or {CHROMEDRIVER} is missing under CI=true (apt-get install chromium chromium-driver)");
        }
        eprintln!("\n*** SKIPPED: {CHROMIUM} / {CHROMEDRIVER} not installed (apt-get install chromium chromium-driver) ***\n");
    }
    have
}

pub fn shots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub async fn shot(b: &Browser, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Evaluates `js` (a function body that returns a value) until it returns true.
pub async fn until(b: &Browser, limit: Duration, what: &str, js: &str) {
    let end = Instant::now() + limit;
    let mut last = json!(null);
    while Instant::now() < end {
        last = b.execute(js, vec![]).await.unwrap_or(json!(null));
        if last == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shot(b, &format!("timeout-{}", what.replace(' ', "-"))).await;
    panic!("timed out after {limit:?} waiting for {what} (last: {last})");
}

pub async fn text(b: &Browser, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn number(s: &str) -> u64 {
    s.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// A headless chromium session through `driver`.
pub async fn browser(driver: &Driver) -> Browser {
    let caps = json!({
        // The self-signed certificate of a page with a password.
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-sync", "--lang=en-US"]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let b = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session");
    b.set_window_size(1280, 800).await.unwrap();
    b
}
