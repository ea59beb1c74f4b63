//! Real Cyrus IMAP and Courier IMAP servers as *sources* for the integration tests.
//!
//! Debian 12's `cyrus-imapd` and `courier-imap` conflict with `dovecot-imapd`, so they are
//! not installed: `.ci/legacy-servers.sh` unpacks their packages into a private tree
//! ([`legacy_root`]). From there:
//! * Cyrus takes every path from its own config (`-C imapd.conf`, `-M cyrus.conf`), so it
//!   runs straight from the tree with `LD_LIBRARY_PATH`, as `nobody` (`cyrus_user`), with
//!   passwords in a private sasldb.
//! * Courier's paths are compiled in (`/etc/courier`, `/usr/lib/courier`,
//!   `/run/courier/authdaemon`). It runs in a private mount namespace (`unshare -m`) in
//!   which the tree and the instance's own files are overlaid on `/usr` and `/etc` and a
//!   tmpfs covers `/run`; the host sees none of it. Users come from a private userdb.
//!
//! Each instance listens on a free 127.0.0.1 port without TLS (loopback only), keeps its
//! files under the caller's directory, and is stopped by its PID. Both need root (Cyrus to
//! become `nobody`, Courier for the mount namespace); [`require`] says why a test skips.
//!
//! Messages are put in through the server's own APPEND ([`LegacyServer::append`]), so the
//! server stores them as it would any client's. A message the server itself would refuse
//! (NUL bytes) can be written into Courier's Maildir directly ([`LegacyServer::write_raw`]),
//! as Courier's local delivery would.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use sha2::Digest;

use crate::testbed::free_port;

/// Environment variable naming the unpacked tree (default `target/legacy-servers/root`).
pub const ROOT_ENV: &str = "CUTOVER_LEGACY_ROOT";
/// The administrator every instance has: Cyrus `admins` (and `proxyservers`, so it may log
/// in as a user with an authzid), Courier the target of the `{user}*admin` aliases.
pub const ADMIN_USER: &str = "admin";
/// The administrator's password.
pub const ADMIN_PASSWORD: &str = "adminpw";
/// Cyrus and Courier run mail as this uid/gid (Debian's `nobody`/`nogroup`).
const MAIL_ID: u32 = 65534;
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one command of the seeding session.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cyrus,
    Courier,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cyrus => "Cyrus",
            Kind::Courier => "Courier",
        }
    }

    /// The binaries of the tree this server needs.
    fn binaries(self) -> &'static [&'static str] {
        match self {
            Kind::Cyrus => &[
                "usr/lib/cyrus/bin/master",
                "usr/lib/cyrus/bin/imapd",
                "usr/sbin/saslpasswd2",
            ],
            Kind::Courier => &[
                "usr/sbin/couriertcpd",
                "usr/bin/imapd",
                "usr/lib/courier/courier/imaplogin",
                "usr/lib/courier/courier-authlib/authdaemond",
                "usr/sbin/makeuserdb",
            ],
        }
    }

    /// How the admin logs in as a user, where the server can: Cyrus takes an authzid
    /// (SASL proxy authorisation), Courier a userdb alias `user*admin`.
    pub fn admin_login(self) -> &'static str {
        match self {
            Kind::Cyrus => "authzid",
            Kind::Courier => "{user}*{admin}",
        }
    }
}

/// The unpacked packages: `$CUTOVER_LEGACY_ROOT`, else `target/legacy-servers/root` of
/// this checkout.
pub fn legacy_root() -> PathBuf {
    match std::env::var_os(ROOT_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/legacy-servers/root"),
    }
}

/// Why `kind` cannot run here, or None if it can.
pub fn unavailable(kind: Kind) -> Option<String> {
    let root = legacy_root();
    if let Some(missing) = kind.binaries().iter().find(|b| !root.join(b).exists()) {
        return Some(format!(
            "{} not found in {} (run .ci/legacy-servers.sh, or set {ROOT_ENV})",
            missing,
            root.display()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(format!(
            "{} needs root (a private mount namespace, mail owned by nobody)",
            kind.name()
        ));
    }
    None
}

/// For tests that need `kind`: true if it can run. If not, panics under `CI=true` (CI
/// must not skip silently) and otherwise prints a loud notice and returns false.
pub fn require(kind: Kind) -> bool {
    let Some(why) = unavailable(kind) else {
        return true;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci {
        panic!("CI=true but {} cannot run: {why}", kind.name());
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {} cannot run: {why} !!!!!!!!\n",
        kind.name()
    );
    false
}

/// A running Cyrus or Courier instance.
#[derive(Debug)]
pub struct LegacyServer {
    kind: Kind,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    pid: u32,
    /// (login, password)
    users: Vec<(String, String)>,
    layout: Layout,
}

/// How the server names folders. Only Cyrus has a choice; Courier is always
/// [`Layout::Standard`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Debian's default: personal folders under `INBOX.`, `.` separator, other users'
    /// under `user.`, shared ones at the top.
    #[default]
    Standard,
    /// Cyrus with `altnamespace` and `unixhierarchysep`, as Cyrus 3 upstream defaults:
    /// personal folders at the top beside INBOX, `/` separator, other users' under
    /// `Other Users/`, shared ones under `Shared Folders/`.
    CyrusAlt,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl LegacyServer {
    /// Starts `kind` with its files in `dir` (created; must be reachable by `nobody`) and
    /// the given users (login, password), plus [`ADMIN_USER`]. Waits until the port answers.
    pub fn start(kind: Kind, dir: &Path, users: &[(&str, &str)]) -> Result<LegacyServer> {
        Self::start_with(kind, dir, users, Layout::Standard)
    }

    /// [`LegacyServer::start`] with the folder naming `layout` (Cyrus only).
    pub fn start_with(
        kind: Kind,
        dir: &Path,
        users: &[(&str, &str)],
        layout: Layout,
    ) -> Result<LegacyServer> {
        if layout == Layout::CyrusAlt && kind != Kind::Cyrus {
            bail!("{} has no other folder naming", kind.name());
        }
        if let Some(why) = unavailable(kind) {
            bail!("{} cannot run: {why}", kind.name());
        }
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let port = free_port();
        let users: Vec<(String, String)> = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        for (u, p) in &users {
            if u.is_empty() || !u.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("login {u:?}: letters, digits and _ only");
            }
            if p.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
                bail!("password of {u:?}: no control characters, quotes or backslashes");
            }
        }
        let child = match kind {
            Kind::Cyrus => start_cyrus(&dir, port, &users, layout)?,
            Kind::Courier => start_courier(&dir, port, &users)?,
        };
        let pid = child.id();
        let mut server = LegacyServer {
            kind,
            dir,
            port,
            child: Some(child),
            pid,
            users,
            layout,
        };
        server.wait_ready()?;
        if kind == Kind::Cyrus {
            // Cyrus has no mailbox for a user until an admin creates it.
            let mut admin = server.session(ADMIN_USER, ADMIN_PASSWORD)?;
            let sep = server.separator();
            for (u, _) in server.users.clone() {
                admin.command(&format!("CREATE {}", quote(&format!("user{sep}{u}"))))?;
            }
            admin.logout();
        }
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{} exited at start ({status}):\n{}",
                        self.kind.name(),
                        self.log()
                    );
                }
            }
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut line = String::new();
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("* OK") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer on port {} within {START_TIMEOUT:?}:\n{}",
                    self.kind.name(),
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The plain (no TLS) port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's own output: its stderr, and Courier's `syslog` file (imapd's lines).
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(self.dir.join("syslog")).unwrap_or_default());
        text
    }

    /// A personal folder's full name, from its path below the personal namespace.
    pub fn folder_name(&self, components: &[&str]) -> String {
        match self.layout {
            Layout::Standard => format!("INBOX.{}", components.join(".")),
            Layout::CyrusAlt => components.join("/"),
        }
    }

    /// The hierarchy separator.
    pub fn separator(&self) -> char {
        match self.layout {
            Layout::Standard => '.',
            Layout::CyrusAlt => '/',
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// A seeding session as `user` (LOGIN).
    pub fn session(&self, user: &str, password: &str) -> Result<Seeder> {
        Seeder::login(self.port, user, password)
    }

    /// A session as `user`, with the password given at start.
    pub fn user_session(&self, user: &str) -> Result<Seeder> {
        let pw = self
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| anyhow!("no user {user:?}"))?;
        self.session(user, &pw)
    }

    /// Creates `folder` (a full server name such as `INBOX.a.b`) for `user`.
    pub fn add_folder(&self, user: &str, folder: &str) -> Result<()> {
        let mut s = self.user_session(user)?;
        s.command(&format!("CREATE {}", quote(folder)))?;
        s.logout();
        Ok(())
    }

    /// APPENDs `body` to `folder` of `user` with `flags` and INTERNALDATE `date` (Unix
    /// seconds). Err carries the server's refusal.
    pub fn append(
        &self,
        user: &str,
        folder: &str,
        body: &[u8],
        flags: &[&str],
        date: Option<i64>,
    ) -> Result<()> {
        let mut s = self.user_session(user)?;
        let r = s.append(folder, body, flags, date);
        s.logout();
        r
    }

    /// Writes `body` as it is into `folder` of `user`'s Maildir (Courier only), with
    /// `flags` as Maildir info letters (`S`, `F`, ...) and `mtime` (INTERNALDATE).
    pub fn write_raw(
        &self,
        user: &str,
        folder: &str,
        body: &[u8],
        letters: &str,
        mtime: i64,
    ) -> Result<()> {
        if self.kind != Kind::Courier {
            bail!("write_raw: only Courier keeps a Maildir here");
        }
        let mut path = self.dir.join("home").join(user).join("Maildir");
        if folder != "INBOX" {
            let sub = folder
                .strip_prefix("INBOX.")
                .ok_or_else(|| anyhow!("folder {folder:?} is not under INBOX."))?;
            path = path.join(format!(".{sub}"));
        }
        if !path.join("cur").is_dir() {
            bail!(
                "{} has no Maildir (create the folder first)",
                path.display()
            );
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{mtime}.M{n}P{}.cutover-test:2,{letters}",
            std::process::id()
        );
        let tmp = path.join("tmp").join(&name);
        // Courier keeps messages with bare LF line ends and serves them with CRLF.
        let mut stored = Vec::with_capacity(body.len());
        for (i, b) in body.iter().enumerate() {
            if !(*b == b'\r' && body.get(i + 1) == Some(&b'\n')) {
                stored.push(*b);
            }
        }
        std::fs::write(&tmp, stored)?;
        let t = std::time::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
        std::fs::File::options()
            .write(true)
            .open(&tmp)?
            .set_modified(t)?;
        std::os::unix::fs::chown(&tmp, Some(MAIL_ID), Some(MAIL_ID))?;
        std::fs::rename(&tmp, path.join("cur").join(&name))?;
        Ok(())
    }

    /// Opens `folder` of `user` read-write once, so that Courier assigns and records UIDs
    /// for files written by [`Self::write_raw`]. Until a read-write session has done so,
    /// read-only sessions (EXAMINE) number them afresh each time, in directory order, under
    /// the same UIDVALIDITY: a live server's users have long done it.
    pub fn record_uids(&self, user: &str, folder: &str) -> Result<()> {
        let mut s = self.user_session(user)?;
        s.command(&format!("SELECT {}", quote(folder)))?;
        s.logout();
        Ok(())
    }

    /// Stops the server by PID: SIGTERM, up to 10 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.wait();
    }
}

impl Drop for LegacyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lib_path(root: &Path) -> String {
    [
        "usr/lib/x86_64-linux-gnu",
        "usr/lib",
        "lib/x86_64-linux-gnu",
        "usr/lib/courier-authlib",
    ]
    .iter()
    .map(|p| root.join(p).display().to_string())
    .collect::<Vec<_>>()
    .join(":")
}

fn chown_tree(path: &Path) -> Result<()> {
    std::os::unix::fs::chown(path, Some(MAIL_ID), Some(MAIL_ID))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path())?;
        }
    }
    Ok(())
}

fn log_file(dir: &Path) -> Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(dir.join("server.log"))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

/// Cyrus: Debian's default hierarchy (`.` separator, personal folders under `INBOX.`) or
/// the upstream one ([`Layout::CyrusAlt`]), plaintext logins allowed (loopback), the admin
/// may act for users (authzid).
fn start_cyrus(dir: &Path, port: u16, users: &[(String, String)], layout: Layout) -> Result<Child> {
    let alt = if layout == Layout::CyrusAlt {
        "yes"
    } else {
        "no"
    };
    let root = legacy_root();
    for sub in ["conf", "part", "sock", "run"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let conf = dir.join("imapd.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}/conf\n\
             defaultpartition: default\n\
             partition-default: {d}/part\n\
             servername: cutover-test\n\
             admins: {ADMIN_USER}\n\
             proxyservers: {ADMIN_USER}\n\
             cyrus_user: nobody\n\
             cyrus_group: nogroup\n\
             sasl_pwcheck_method: auxprop\n\
             sasl_auxprop_plugin: sasldb\n\
             sasl_sasldb_path: {d}/sasldb2\n\
             sasl_mech_list: PLAIN LOGIN\n\
             allowplaintext: yes\n\
             unixhierarchysep: {alt}\n\
             altnamespace: {alt}\n\
             specialusealways: yes\n\
             lmtpsocket: {d}/sock/lmtp\n\
             idlesocket: {d}/sock/idle\n\
             notifysocket: {d}/sock/notify\n\
             syslog_prefix: cutover-test-cyrus\n"
        ),
    )?;
    let bin = root.join("usr/lib/cyrus/bin");
    std::fs::write(
        dir.join("cyrus.conf"),
        format!(
            "START {{\n  recover cmd=\"{b}/ctl_cyrusdb -C {c} -r\"\n}}\n\
             SERVICES {{\n  imap cmd=\"{b}/imapd -C {c}\" listen=\"127.0.0.1:{port}\" prefork=0 maxchild=50\n}}\n\
             EVENTS {{\n}}\n",
            b = bin.display(),
            c = conf.display()
        ),
    )?;
    let libs = lib_path(&root);
    for (u, p) in users
        .iter()
        .cloned()
        .chain(std::iter::once((ADMIN_USER.into(), ADMIN_PASSWORD.into())))
    {
        let mut child = Command::new(root.join("usr/sbin/saslpasswd2"))
            .args(["-p", "-c", "-u", "cutover-test", "-f"])
            .arg(dir.join("sasldb2"))
            .arg(&u)
            .env("LD_LIBRARY_PATH", &libs)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("saslpasswd2")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("saslpasswd2 stdin"))?
            .write_all(p.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "saslpasswd2 {u}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    chown_tree(dir)?;
    let (out, err) = log_file(dir)?;
    Command::new(bin.join("master"))
        .current_dir(dir)
        .arg("-C")
        .arg(&conf)
        .arg("-M")
        .arg(dir.join("cyrus.conf"))
        .arg("-p")
        .arg(dir.join("run/master.pid"))
        .arg("-D")
        .env("LD_LIBRARY_PATH", &libs)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting Cyrus master")
}

/// The script that runs Courier in its mount namespace: overlays, authdaemond, then
/// couriertcpd in the foreground. SIGTERM to the script stops both by PID.
const COURIER_RUN: &str = r#"#!/bin/sh
set -e
L=$1; D=$2; P=$3
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$D/etc:$L/etc:/etc,upperdir=$D/ov/etc-u,workdir=$D/ov/etc-w" /etc
mount -t overlay overlay -o "lowerdir=$L/usr:/usr,upperdir=$D/ov/usr-u,workdir=$D/ov/usr-w" /usr
mount -t tmpfs tmpfs /run
mkdir -p /run/courier/authdaemon
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/usr/lib:/usr/lib/courier-authlib
/usr/sbin/makeuserdb
/usr/lib/courier/courier-authlib/authdaemond &
AUTH=$!
TCPD=
trap 'kill $AUTH $TCPD 2>/dev/null; exit 0' TERM INT
i=0
while [ ! -S /run/courier/authdaemon/socket ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
set -a
. /etc/courier/imapd
IMAP_CAPABILITY="IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE AUTH=PLAIN"
set +a
/usr/sbin/couriertcpd -address=127.0.0.1 -maxprocs=50 -maxperip=50 -nodnslookup -noidentlookup -stderr=syslog "$P" /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir &
TCPD=$!
wait $TCPD || true
kill $AUTH 2>/dev/null || true
"#;

/// Courier: userdb users with `{SHA256}` passwords, and for each user an alias
/// `user*admin` with the admin's password (Courier's way to let an admin in; it has no
/// SASL authzid).
fn start_courier(dir: &Path, port: u16, users: &[(String, String)]) -> Result<Child> {
    let root = legacy_root();
    let etc = dir.join("etc/courier");
    std::fs::create_dir_all(&etc)?;
    for sub in ["etc-u", "etc-w", "usr-u", "usr-w"] {
        std::fs::create_dir_all(dir.join("ov").join(sub))?;
    }
    std::fs::write(
        etc.join("authdaemonrc"),
        "authmodulelist=\"authuserdb\"\ndaemons=3\nauthdaemonvar=/run/courier/authdaemon\n\
         DEBUG_LOGIN=0\nDEFAULTOPTIONS=\"\"\nLOGGEROPTS=\"\"\n",
    )?;
    let hash = |pw: &str| {
        format!(
            "{{SHA256}}{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(pw.as_bytes()))
        )
    };
    let mut userdb = String::new();
    for (u, p) in users {
        let home = dir.join("home").join(u);
        let maildir = home.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub))?;
        }
        let entry = |name: &str, pw: &str| {
            format!(
                "{name}\tuid={MAIL_ID}|gid={MAIL_ID}|home={}|mail={}|systempw={}\n",
                home.display(),
                maildir.display(),
                hash(pw)
            )
        };
        userdb.push_str(&entry(u, p));
        userdb.push_str(&entry(&format!("{u}*{ADMIN_USER}"), ADMIN_PASSWORD));
    }
    let userdb_path = etc.join("userdb");
    std::fs::write(&userdb_path, userdb)?;
    std::fs::set_permissions(&userdb_path, std::fs::Permissions::from_mode(0o600))?;
    let script = dir.join("run.sh");
    std::fs::write(&script, COURIER_RUN)?;
    if dir.join("home").exists() {
        chown_tree(&dir.join("home"))?;
    }
    let (out, err) = log_file(dir)?;
    // imapd's log lines go to `syslog` (`-stderr=syslog`, a path relative to the working
    // directory): that must be the instance's directory, never the caller's (a test's
    // is the checkout).
    Command::new("unshare")
        .current_dir(dir)
        .arg("-m")
        .arg("sh")
        .arg(&script)
        .arg(&root)
        .arg(dir)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting Courier (unshare -m)")
}

/// An IMAP string for a seeding command.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A minimal blocking IMAP session for putting test mail into a server: LOGIN, commands
/// answered by a tagged OK, APPEND with a synchronising literal.
pub struct Seeder {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Seeder {
    fn login(port: u16, user: &str, password: &str) -> Result<Seeder> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut seeder = Seeder {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            tag: 0,
        };
        let greeting = seeder.line()?;
        if !greeting.starts_with("* OK") {
            bail!("greeting: {greeting}");
        }
        seeder.command(&format!("LOGIN {} {}", quote(user), quote(password)))?;
        Ok(seeder)
    }

    fn line(&mut self) -> Result<String> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            bail!("connection closed");
        }
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    }

    /// Reads to the completion of `tag`; Err unless OK. Returns the untagged lines.
    fn complete(&mut self, tag: &str) -> Result<Vec<String>> {
        let mut untagged = Vec::new();
        for _ in 0..100_000 {
            let line = self.line()?;
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                if rest.starts_with("OK") {
                    return Ok(untagged);
                }
                bail!("{rest}");
            }
            untagged.push(line);
        }
        bail!("no completion for {tag}")
    }

    /// Sends one command line (no literals) and waits for its OK; returns untagged lines.
    pub fn command(&mut self, cmd: &str) -> Result<Vec<String>> {
        self.tag += 1;
        let tag = format!("s{}", self.tag);
        self.writer
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())?;
        self.complete(&tag)
    }

    /// APPENDs one message; Err carries the server's refusal.
    pub fn append(
        &mut self,
        folder: &str,
        body: &[u8],
        flags: &[&str],
        date: Option<i64>,
    ) -> Result<()> {
        self.tag += 1;
        let tag = format!("s{}", self.tag);
        let date = date
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|d| format!(" \"{}\"", d.format("%d-%b-%Y %H:%M:%S +0000")))
            .unwrap_or_default();
        self.writer.write_all(
            format!(
                "{tag} APPEND {} ({}){date} {{{}}}\r\n",
                quote(folder),
                flags.join(" "),
                body.len()
            )
            .as_bytes(),
        )?;
        let go = self.line()?;
        if !go.starts_with('+') {
            bail!("APPEND to {folder}: {go}");
        }
        self.writer.write_all(body)?;
        self.writer.write_all(b"\r\n")?;
        self.complete(&tag).map(|_| ())
    }

    pub fn logout(mut self) {
        let _ = self.command("LOGOUT");
    }
}
