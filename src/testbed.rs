//! Real Dovecot servers for the integration tests and the `cutover demo` command.
//!
//! [`Testbed::start`] brings up two private Dovecot instances on 127.0.0.1: a *source*
//! that looks like a legacy Courier/Cyrus box (Maildir++, separator `.`, prefix `INBOX.`)
//! and a *destination* that looks like Exchange Online (separator `/`, no prefix, the
//! Exchange special-use folder names). Each instance has its own config, runtime and
//! mail directories under a temporary directory, listens on ports picked at start, and is
//! stopped by PID (never by name, never the system service).
//!
//! Things that are not obvious about running Dovecot 2.3 like this (see `render_config`):
//! * Login processes (`imap-login`) refuse to run as root, and so do mail processes
//!   ("Mail access not allowed for root"). When we are root the login user is `dovenull`
//!   (or `nobody`) and mail is owned by `nobody`; files we write into a Maildir are
//!   chowned to that user. When we are not root everything runs as the current user.
//! * passwd-file rejects UID 0 in its uid field, so the uid/gid fields are left empty and
//!   `mail_uid`/`mail_gid` are set globally.
//! * Non-root runs need `chroot =` for every service that chroots by default.
//! * Unix socket paths are limited to ~108 bytes, so the directory must be short.
//! * One failed login from 127.0.0.1 makes Dovecot's auth penalty delay every later login
//!   from there by 2-15 s (`login_trusted_networks` does not help in 2.3). The
//!   `anvil-auth-penalty` listener is disabled (`mode = 0`), which turns penalties off.
//! * Maildir: the file's mtime is INTERNALDATE; keyword letters in file names map through
//!   `dovecot-keywords`, which Dovecot re-reads only when its mtime (seconds) changes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

/// Where Debian's dovecot-core installs the master binary.
pub const DOVECOT_BIN: &str = "/usr/sbin/dovecot";
/// Where Debian's dovecot-core installs doveadm.
pub const DOVEADM_BIN: &str = "/usr/bin/doveadm";
/// The master user [`Testbed`] configures on both servers.
pub const MASTER_USER: &str = "master";
/// The master user's password on both servers of a [`Testbed`].
pub const MASTER_PASSWORD: &str = "masterpw";
/// Separator between the user and the master user in a LOGIN user name
/// (`LOGIN "alice*master" masterpw`).
pub const MASTER_SEPARATOR: char = '*';

/// How long [`Dovecot::start`] waits for the ports to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Dovecot::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one doveadm run.
const DOVEADM_TIMEOUT: Duration = Duration::from_secs(60);
/// Set this environment variable to keep the temporary directories (config, logs, mail).
pub const KEEP_ENV: &str = "CUTOVER_TESTBED_KEEP";

/// Which kind of real-world server an instance imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// A legacy server like Courier or Cyrus: Maildir++, separator `.`, prefix `INBOX.`.
    Source,
    /// Exchange Online: separator `/`, no prefix, Exchange folder names.
    Destination,
}

impl Flavor {
    /// Hierarchy separator the server announces.
    pub fn separator(self) -> char {
        match self {
            Flavor::Source => '.',
            Flavor::Destination => '/',
        }
    }

    /// Personal namespace prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Flavor::Source => "INBOX.",
            Flavor::Destination => "",
        }
    }

    /// Special-use folders the server creates for every user: (full server name, attribute).
    pub fn special_folders(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Flavor::Source => &[
                ("INBOX.Drafts", "\\Drafts"),
                ("INBOX.Sent", "\\Sent"),
                ("INBOX.Trash", "\\Trash"),
                ("INBOX.Junk", "\\Junk"),
            ],
            Flavor::Destination => &[
                ("Drafts", "\\Drafts"),
                ("Sent Items", "\\Sent"),
                ("Deleted Items", "\\Trash"),
                ("Junk Email", "\\Junk"),
                ("Archive", "\\Archive"),
            ],
        }
    }

    /// The server name of a folder given as path components, e.g. `["a", "b"]` is
    /// `INBOX.a.b` on the source and `a/b` on the destination.
    pub fn folder_name(self, components: &[&str]) -> String {
        let sep = self.separator().to_string();
        format!("{}{}", self.prefix(), components.join(&sep))
    }

    fn label(self) -> &'static str {
        match self {
            Flavor::Source => "source",
            Flavor::Destination => "destination",
        }
    }
}

/// What to configure in a [`Dovecot`] instance.
#[derive(Debug, Clone)]
pub struct DovecotOptions {
    pub flavor: Flavor,
    /// (login, password); plaintext passwords.
    pub users: Vec<(String, String)>,
    pub master_user: String,
    pub master_password: String,
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Whether the Dovecot binaries are installed.
pub fn dovecot_available() -> bool {
    Path::new(&dovecot_bin()).exists() && Path::new(&doveadm_bin()).exists()
}

/// For tests that need Dovecot: true if it is installed. If it is not, panics when
/// `CI=true` (CI must not skip silently) and otherwise prints a loud notice and returns
/// false so the test can return early.
pub fn require_dovecot() -> bool {
    if dovecot_available() {
        return true;
    }
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    if ci {
        panic!(
            "CI=true but Dovecot is not installed ({} / {}): install dovecot-imapd",
            dovecot_bin(),
            doveadm_bin()
        );
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {} not found; install dovecot-imapd to run the Dovecot tests !!!!!!!!\n",
        dovecot_bin()
    );
    false
}

fn dovecot_bin() -> String {
    std::env::var("CUTOVER_DOVECOT").unwrap_or_else(|_| DOVECOT_BIN.to_string())
}

fn doveadm_bin() -> String {
    std::env::var("CUTOVER_DOVEADM").unwrap_or_else(|_| DOVEADM_BIN.to_string())
}

fn keep_dirs() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

fn make_tempdir() -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix("cutover-tb-")
        .tempdir()
        .context("creating a temporary directory")?;
    if keep_dirs() {
        dir.disable_cleanup(true);
        eprintln!("testbed: keeping {}", dir.path().display());
    }
    Ok(dir)
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// A throw-away CA and a server certificate for `127.0.0.1` and `localhost`, as PEM files.
#[derive(Debug)]
pub struct TestCa {
    ca_pem: String,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl TestCa {
    /// Generates the CA and the server certificate and writes `ca.pem`, `server.pem` and
    /// `server.key` into `dir` (which must exist).
    pub fn new(dir: &Path) -> Result<TestCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cutover testbed CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;

        let key = KeyPair::generate().context("generating the server key")?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .context("signing the server certificate")?;

        let ca_pem = ca_cert.pem();
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&ca_path, &ca_pem)
            .with_context(|| format!("writing {}", ca_path.display()))?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        std::fs::write(&key_path, key.serialize_pem())
            .with_context(|| format!("writing {}", key_path.display()))?;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        Ok(TestCa {
            ca_pem,
            ca_path,
            cert_path,
            key_path,
        })
    }

    /// The CA certificate (PEM) clients should trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate (PEM), valid for 127.0.0.1 and localhost.
    pub fn server_cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The server's private key (PEM).
    pub fn server_key_path(&self) -> &Path {
        &self.key_path
    }
}

// ---------------------------------------------------------------------------------------
// Who we run as
// ---------------------------------------------------------------------------------------

/// The accounts Dovecot's processes run as.
#[derive(Debug, Clone)]
struct Identity {
    root: bool,
    internal_user: String,
    internal_group: String,
    login_user: String,
    mail_uid: u32,
    mail_gid: u32,
}

fn passwd_entries() -> Vec<(String, u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .collect()
}

fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(gid)).then(|| f[0].to_string())
    })
}

fn id_output(flag: &str) -> Option<String> {
    let out = Command::new("id").arg(flag).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn current_ids() -> Result<(u32, u32)> {
    if let Ok(m) = std::fs::metadata("/proc/self") {
        return Ok((m.uid(), m.gid()));
    }
    let uid = id_output("-u").and_then(|s| s.parse().ok());
    let gid = id_output("-g").and_then(|s| s.parse().ok());
    match (uid, gid) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => bail!("cannot determine the current uid/gid"),
    }
}

impl Identity {
    fn detect() -> Result<Identity> {
        let (uid, gid) = current_ids()?;
        let users = passwd_entries();
        if uid == 0 {
            // imap-login and imap refuse to run as root: use unprivileged accounts.
            let find = |name: &str| users.iter().find(|(n, _, _)| n == name).cloned();
            let nobody = find("nobody").unwrap_or(("nobody".into(), 65534, 65534));
            let login = find("dovenull").unwrap_or_else(|| nobody.clone());
            Ok(Identity {
                root: true,
                internal_user: "root".into(),
                internal_group: group_name(0).unwrap_or_else(|| "root".into()),
                login_user: login.0,
                mail_uid: nobody.1,
                mail_gid: nobody.2,
            })
        } else {
            let name = users
                .iter()
                .find(|(_, u, _)| *u == uid)
                .map(|(n, _, _)| n.clone())
                .or_else(|| id_output("-un"))
                .ok_or_else(|| anyhow!("uid {uid} has no user name; Dovecot needs one"))?;
            let group = group_name(gid)
                .or_else(|| id_output("-gn"))
                .ok_or_else(|| anyhow!("gid {gid} has no group name; Dovecot needs one"))?;
            Ok(Identity {
                root: false,
                internal_user: name.clone(),
                internal_group: group,
                login_user: name,
                mail_uid: uid,
                mail_gid: gid,
            })
        }
    }

    /// When root, hand a path we created to the mail user.
    fn give(&self, path: &Path) -> Result<()> {
        if self.root {
            std::os::unix::fs::chown(path, Some(self.mail_uid), Some(self.mail_gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Dovecot
// ---------------------------------------------------------------------------------------

/// A running Dovecot instance with its own config under a directory.
#[derive(Debug)]
pub struct Dovecot {
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    config: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    pid: u32,
    plain_port: u16,
    tls_port: u16,
    flavor: Flavor,
    master_user: String,
    master_password: String,
    ident: Identity,
    /// (user, folder) -> Maildir path
    folders: Mutex<HashMap<(String, String), PathBuf>>,
    /// Serialises updates of dovecot-keywords files.
    keywords_lock: Mutex<()>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Dovecot {
    /// Starts an instance in a new temporary directory (removed on drop). Waits until both
    /// ports answer; on failure the error carries Dovecot's log.
    pub fn start(opts: DovecotOptions, tls: &TestCa) -> Result<Dovecot> {
        let tmp = make_tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut d = Self::start_in(&dir, opts, tls)?;
        d._tmp = Some(tmp);
        Ok(d)
    }

    /// Starts an instance that keeps its files in `dir` (created if needed, not removed).
    pub fn start_in(dir: &Path, opts: DovecotOptions, tls: &TestCa) -> Result<Dovecot> {
        Self::start_in_with(dir, opts, tls, &DovecotExtras::default())
    }

    /// [`Dovecot::start_in`] with optional extras (e.g. XOAUTH2, see [`OAuth2Validation`]).
    pub fn start_in_with(
        dir: &Path,
        opts: DovecotOptions,
        tls: &TestCa,
        extras: &DovecotExtras,
    ) -> Result<Dovecot> {
        let ident = Identity::detect()?;
        let dir = make_dir(dir, &ident)?;
        check_path_fits(&dir)?;
        for (login, password) in opts.users.iter().chain(std::iter::once(&(
            opts.master_user.clone(),
            opts.master_password.clone(),
        ))) {
            check_field("login", login)?;
            check_field("password", password)?;
            if login.contains(MASTER_SEPARATOR) {
                bail!("login {login:?} contains the master separator {MASTER_SEPARATOR}");
            }
        }
        // TLS material is read by the config process; copy it so the instance is
        // self-contained.
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::copy(tls.server_cert_path(), &cert)?;
        std::fs::copy(tls.server_key_path(), &key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;

        // Homes: <dir>/home/<n>-<safe name>, owned by the mail user.
        let home_root = dir.join("home");
        std::fs::create_dir_all(&home_root)?;
        std::fs::set_permissions(&home_root, std::fs::Permissions::from_mode(0o755))?;
        let mut users_file = String::new();
        for (i, (login, password)) in opts.users.iter().enumerate() {
            let home = home_root.join(format!("{i}-{}", safe_name(login)));
            std::fs::create_dir_all(&home)?;
            ident.give(&home)?;
            // user:password:uid:gid:gecos:home:shell:extra. uid/gid stay empty: passwd-file
            // rejects uid 0, and mail_uid/mail_gid apply.
            writeln!(
                users_file,
                "{login}:{{PLAIN}}{password}::::{}::",
                home.display()
            )?;
        }
        write_file(&dir.join("users"), users_file.as_bytes())?;
        write_file(
            &dir.join("masters"),
            format!("{}:{{PLAIN}}{}\n", opts.master_user, opts.master_password).as_bytes(),
        )?;
        std::fs::create_dir_all(dir.join("state"))?;
        if let Some(oauth) = &extras.oauth2 {
            oauth.write_files(&dir, &ident)?;
        }
        // A socket left from an earlier run in the same dir would make auth log errors.
        let _ = std::fs::remove_file(dir.join("run").join("anvil-auth-penalty"));

        let config = dir.join("dovecot.conf");
        let log_path = dir.join("dovecot.log");
        let stderr_path = dir.join("dovecot.stderr");
        let mut last_err = None;
        for _attempt in 0..5 {
            let plain_port = free_port();
            let mut tls_port = free_port();
            while tls_port == plain_port {
                tls_port = free_port();
            }
            let text = render_config(&ConfigParams {
                dir: &dir,
                flavor: opts.flavor,
                ident: &ident,
                plain_port,
                tls_port,
                cert: &cert,
                key: &key,
                oauth2: extras.oauth2.as_ref(),
            });
            write_file(&config, text.as_bytes())?;
            // Fresh logs for each attempt, so failures show only what matters.
            write_file(&log_path, b"")?;
            let stderr = std::fs::File::create(&stderr_path)?;
            let child = Command::new(dovecot_bin())
                .arg("-F")
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(stderr.try_clone()?)
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("spawning {}", dovecot_bin()))?;
            let pid = child.id();
            let mut d = Dovecot {
                _tmp: None,
                dir: dir.clone(),
                config: config.clone(),
                log_path: log_path.clone(),
                stderr_path: stderr_path.clone(),
                child: Some(child),
                pid,
                plain_port,
                tls_port,
                flavor: opts.flavor,
                master_user: opts.master_user.clone(),
                master_password: opts.master_password.clone(),
                ident: ident.clone(),
                folders: Mutex::new(HashMap::new()),
                keywords_lock: Mutex::new(()),
            };
            match d.wait_ready() {
                Ok(()) => {
                    tracing::debug!(
                        flavor = opts.flavor.label(),
                        pid,
                        plain_port,
                        tls_port,
                        dir = %dir.display(),
                        "dovecot started"
                    );
                    return Ok(d);
                }
                Err(e) => {
                    d.stop();
                    let log = d.log();
                    if log.contains("Address already in use") {
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("dovecot did not start")))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut plain_ok = false;
        let mut tls_ok = false;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "dovecot ({}) exited during startup with {status}\n{}",
                        self.flavor.label(),
                        self.failure_context()
                    );
                }
            }
            if !plain_ok {
                match read_greeting(self.plain_port, deadline) {
                    Ok(line) if line.starts_with("* OK") => plain_ok = true,
                    Ok(line) => last = format!("plain port greeted with {line:?}"),
                    Err(e) => last = format!("plain port: {e}"),
                }
            }
            if plain_ok && !tls_ok {
                match TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, self.tls_port)),
                    Duration::from_millis(500),
                ) {
                    Ok(_) => tls_ok = true,
                    Err(e) => last = format!("TLS port: {e}"),
                }
            }
            if plain_ok && tls_ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "dovecot ({}) not ready within {:?} ({last})\n{}",
            self.flavor.label(),
            START_TIMEOUT,
            self.failure_context()
        )
    }

    fn failure_context(&self) -> String {
        format!(
            "config: {}\n--- dovecot log ---\n{}",
            self.config.display(),
            self.log()
        )
    }

    /// Cleartext IMAP port (STARTTLS offered, LOGIN allowed without TLS).
    pub fn plain_port(&self) -> u16 {
        self.plain_port
    }

    /// Implicit-TLS IMAP port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The instance's directory (config, logs, run/, state/, home/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the generated dovecot.conf.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// PID of the Dovecot master process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the master process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn master_user(&self) -> &str {
        &self.master_user
    }

    pub fn master_password(&self) -> &str {
        &self.master_password
    }

    /// The LOGIN name that logs in as `user` with the master user's password.
    pub fn master_login(&self, user: &str) -> String {
        format!("{user}{MASTER_SEPARATOR}{}", self.master_user)
    }

    /// Dovecot's log (and anything the master wrote to stderr before logging started).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        if let Ok(e) = std::fs::read_to_string(&self.stderr_path) {
            if !e.trim().is_empty() {
                s.push_str("\n--- stderr ---\n");
                s.push_str(&e);
            }
        }
        s
    }

    /// Runs `doveadm -c <config> ARGS`; returns stdout, or an error with stderr.
    pub fn doveadm(&self, args: &[&str]) -> Result<String> {
        self.doveadm_input(args, None)
    }

    /// Like [`Dovecot::doveadm`] with `input` on stdin (e.g. for `save`).
    pub fn doveadm_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<String> {
        let mut cmd = Command::new(doveadm_bin());
        cmd.arg("-c").arg(&self.config).args(args);
        let out = run_bounded(cmd, input, DOVEADM_TIMEOUT)
            .with_context(|| format!("doveadm {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "doveadm {} failed with {}: {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                match String::from_utf8_lossy(&out.stdout).trim() {
                    "" => String::new(),
                    s => format!(" (stdout: {s})"),
                }
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates (and subscribes) a folder; `folder` is the full server name in UTF-8, e.g.
    /// `INBOX.Projects.2024` on the source or `Projects/2024` on the destination.
    /// Creating an existing folder is not an error.
    pub fn add_folder(&self, user: &str, folder: &str) -> Result<()> {
        match self.doveadm(&["mailbox", "create", "-s", "-u", user, folder]) {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("already exists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts a message into `folder` (created if missing). `flags` are IMAP flags: system
    /// flags (`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`) and keywords
    /// (anything without a backslash). `internal_date` is unix seconds (default: now).
    ///
    /// Writes straight into the Maildir (tmp/ then renamed into cur/, mtime set to the
    /// internal date before the rename) and registers keywords in `dovecot-keywords`;
    /// Dovecot picks the files up at its next sync (SELECT, STATUS, doveadm ...).
    pub fn deliver(
        &self,
        user: &str,
        folder: &str,
        body: &[u8],
        flags: &[&str],
        internal_date: Option<i64>,
    ) -> Result<()> {
        let mut letters = String::new();
        let mut keywords: Vec<&str> = Vec::new();
        for f in flags {
            if let Some(name) = f.strip_prefix('\\') {
                letters.push(match name.to_ascii_lowercase().as_str() {
                    "seen" => 'S',
                    "answered" => 'R',
                    "flagged" => 'F',
                    "deleted" => 'T',
                    "draft" => 'D',
                    "recent" => continue,
                    _ => bail!("unknown system flag {f}"),
                });
            } else {
                // An IMAP atom: no specials, spaces or control characters.
                if f.is_empty()
                    || f.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "(){%*\"\\]".contains(c))
                {
                    bail!("invalid keyword {f:?}");
                }
                if !keywords.contains(f) {
                    keywords.push(f);
                }
            }
        }
        let path = self.folder_path(user, folder)?;
        let mut late_keywords: Vec<&str> = Vec::new();
        if !keywords.is_empty() {
            let (found, overflow) = self.keyword_letters(&path, &keywords)?;
            letters.push_str(&found);
            late_keywords = overflow;
        }

        let md = maildir::Maildir::from(path.clone());
        let mut tmp = md
            .open_file_in_tmp()
            .with_context(|| format!("creating a file in {}/tmp", path.display()))?;
        tmp.write_all(body)?;
        let tmp_path = tmp.path().to_path_buf();
        if let Some(secs) = internal_date {
            let when = if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            };
            std::fs::File::options()
                .write(true)
                .open(&tmp_path)?
                .set_modified(when)
                .context("setting the internal date (mtime)")?;
        }
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(0o600))?;
        self.ident.give(&tmp_path)?;
        let id = md
            .move_tmp_to_cur_with_flags(tmp, &letters)
            .with_context(|| format!("moving the message into {}/cur", path.display()))?;

        // More than 26 keywords in one folder: the filename cannot carry them, let
        // Dovecot store them in its index instead.
        for kw in late_keywords {
            self.doveadm(&[
                "flags", "add", "-u", user, kw, "mailbox", folder, "guid", &id,
            ])?;
        }
        Ok(())
    }

    /// The Maildir directory of `folder`, creating the folder if needed.
    pub fn folder_path(&self, user: &str, folder: &str) -> Result<PathBuf> {
        let key = (user.to_string(), folder.to_string());
        if let Some(p) = self.folders.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        self.add_folder(user, folder)?;
        let out = self.doveadm(&["mailbox", "path", "-u", user, folder])?;
        let path = PathBuf::from(out.trim());
        if path.as_os_str().is_empty() || !path.is_absolute() {
            bail!("doveadm mailbox path for {user} {folder:?} gave {out:?}");
        }
        if !path.join("cur").is_dir() {
            // INBOX is created lazily: let Dovecot open it once.
            let _ = self.doveadm(&["mailbox", "status", "-u", user, "messages", folder]);
        }
        if !path.join("cur").is_dir() {
            bail!(
                "{} has no cur/ after creating {folder:?} for {user}",
                path.display()
            );
        }
        self.folders.lock().unwrap().insert(key, path.clone());
        Ok(path)
    }

    /// Maps keywords to maildir filename letters via the folder's dovecot-keywords file,
    /// adding the missing ones. Returns the letters and the keywords that did not fit.
    fn keyword_letters<'a>(
        &self,
        maildir: &Path,
        keywords: &[&'a str],
    ) -> Result<(String, Vec<&'a str>)> {
        const MAX: usize = 26;
        let _guard = self.keywords_lock.lock().unwrap();
        let file = maildir.join("dovecot-keywords");
        let lock = maildir.join("dovecot-keywords.lock");
        // Take Dovecot's dotlock: create the .lock exclusively, write, rename it over.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lock_file = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&lock)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Instant::now() > deadline {
                        bail!("{} stays locked", file.display());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
            }
        };
        let result = (|| -> Result<(String, Vec<&'a str>, bool)> {
            let (text, old_mtime) = match std::fs::read_to_string(&file) {
                Ok(t) => (t, std::fs::metadata(&file).ok().map(|m| m.mtime())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
                Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
            };
            let mut slots: Vec<Option<String>> = vec![None; MAX];
            for line in text.lines() {
                if let Some((idx, name)) = line.split_once(' ') {
                    if let Ok(i) = idx.parse::<usize>() {
                        if i < MAX && !name.is_empty() {
                            slots[i] = Some(name.to_string());
                        }
                    }
                }
            }
            let mut letters = String::new();
            let mut overflow = Vec::new();
            let mut changed = false;
            for kw in keywords {
                let idx = slots.iter().position(|s| s.as_deref() == Some(*kw));
                let idx = match idx {
                    Some(i) => Some(i),
                    None => match slots.iter().position(|s| s.is_none()) {
                        Some(i) => {
                            slots[i] = Some(kw.to_string());
                            changed = true;
                            Some(i)
                        }
                        None => None,
                    },
                };
                match idx {
                    Some(i) => letters.push((b'a' + i as u8) as char),
                    None => overflow.push(*kw),
                }
            }
            if changed {
                let mut out = String::new();
                for (i, s) in slots.iter().enumerate() {
                    if let Some(name) = s {
                        writeln!(out, "{i} {name}")?;
                    }
                }
                lock_file.write_all(out.as_bytes())?;
                // Dovecot re-reads the file only when its mtime (seconds) changes.
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
                let mtime = match old_mtime {
                    Some(m) if m >= now => m + 1,
                    _ => now,
                };
                lock_file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime as u64))?;
                self.ident.give(&lock)?;
            }
            Ok((letters, overflow, changed))
        })();
        drop(lock_file);
        match result {
            Ok((letters, overflow, changed)) => {
                if changed {
                    std::fs::rename(&lock, &file)
                        .with_context(|| format!("replacing {}", file.display()))?;
                } else {
                    std::fs::remove_file(&lock)?;
                }
                Ok((letters, overflow))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&lock);
                Err(e)
            }
        }
    }

    /// Sends SIGTERM to the master (if it still runs) without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(self.pid, "TERM");
            }
        }
    }

    /// Stops the master by PID: SIGTERM, wait up to 10 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            signal(self.pid, "TERM");
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!(pid = self.pid, "dovecot ignored SIGTERM; killing it");
                        let _ = child.kill();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        let _ = child.wait();
        tracing::debug!(pid = self.pid, "dovecot stopped");
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kill -SIG pid` through the shell's builtin (std has no kill(2) with a signal).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg("kill -s \"$1\" \"$2\" 2>/dev/null")
        .arg("sh")
        .arg(sig)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn read_greeting(port: u16, deadline: Instant) -> Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    s.set_read_timeout(Some(left))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\n") && buf.len() < 4096 {
        if s.read(&mut byte)? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let _ = s.write_all(b"z LOGOUT\r\n");
    Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
}

/// Runs `cmd` with a time limit, feeding `input` and collecting its output.
fn run_bounded(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<std::process::Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take();
    let data = input.map(|b| b.to_vec());
    let writer = std::thread::spawn(move || {
        if let (Some(mut w), Some(d)) = (stdin, data) {
            let _ = w.write_all(&d);
        }
    });
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Creates `dir`, makes it reachable for Dovecot's unprivileged processes and returns its
/// absolute path.
fn make_dir(dir: &Path, ident: &Identity) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if ident.root {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        // Every ancestor must be searchable by the login and mail users.
        for a in dir.ancestors().skip(1) {
            let mode = std::fs::metadata(a)?.permissions().mode();
            if mode & 0o001 == 0 {
                bail!(
                    "{} is not searchable by others (mode {:o}); Dovecot's unprivileged \
                     processes could not reach {}: use a TMPDIR like /tmp",
                    a.display(),
                    mode & 0o7777,
                    dir.display()
                );
            }
        }
    }
    Ok(dir)
}

fn check_path_fits(dir: &Path) -> Result<()> {
    let s = dir.to_string_lossy();
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '#' || c == '$')
    {
        bail!("Dovecot directory {s:?} contains characters the config cannot carry");
    }
    // Unix socket paths are limited to 108 bytes; the longest is run/token-login/<name>.
    if s.len() + "/run/token-login/imap-urlauth".len() >= 100 {
        bail!("Dovecot directory {s:?} is too long for unix sockets; set TMPDIR=/tmp");
    }
    Ok(())
}

fn check_field(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.chars().any(|c| c == ':' || c.is_control()) {
        bail!("{what} {v:?} cannot go into a passwd-file (empty, ':' or control characters)");
    }
    Ok(())
}

fn safe_name(login: &str) -> String {
    login
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct ConfigParams<'a> {
    dir: &'a Path,
    flavor: Flavor,
    ident: &'a Identity,
    plain_port: u16,
    tls_port: u16,
    cert: &'a Path,
    key: &'a Path,
    oauth2: Option<&'a OAuth2Validation>,
}

fn render_config(p: &ConfigParams<'_>) -> String {
    let dir = p.dir.display();
    let id = p.ident;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# Generated by cutover::testbed ({flavor}). Not the system Dovecot.
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = cutover-{flavor}-{pid}-{seq}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
debug_log_path = {dir}/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
shutdown_clients = yes

# Who runs what. imap-login and imap refuse root, so as root they run unprivileged.
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
first_valid_gid = 0
mail_privileged_group =
mail_access_groups =

mail_plugins =
mail_fsync = never
# Keep APPENDed messages as sent (CRLF): with the default (LF on disk) Dovecot drops a
# bare CR at the very end of a message, so it would not serve back what it was given.
mail_save_crlf = yes
maildir_very_dirty_syncs = no
mail_max_userip_connections = 100
# The default 256 MB per process is not enough to index a folder of a million messages
# (the scale benchmark's one-folder run): the imap process was killed on SELECT.
default_vsz_limit = 4G

disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechs}
auth_master_user_separator = *
auth_failure_delay = 0
auth_verbose = yes

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2

{oauth_passdb}passdb {{
  driver = passwd-file
  args = {dir}/masters
  master = yes
  pass = yes
}}
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
}}

service imap-login {{
  chroot =
  service_count = 0
  process_min_avail = 1
  inet_listener imap {{
    address = 127.0.0.1
    port = {plain_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service imap-urlauth-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
service submission-login {{
  chroot =
}}
service anvil {{
  chroot =
  # No auth penalty: otherwise one failed login from 127.0.0.1 delays every following
  # login by 2-15 s. mode = 0 disables the listener; auth then skips penalties.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service ipc {{
  chroot =
}}
service old-stats {{
  chroot =
}}
service aggregator {{
  chroot =
}}
service director {{
  chroot =
}}
"#,
        flavor = p.flavor.label(),
        pid = std::process::id(),
        internal_user = id.internal_user,
        internal_group = id.internal_group,
        login_user = id.login_user,
        uid = id.mail_uid,
        gid = id.mail_gid,
        cert = p.cert.display(),
        key = p.key.display(),
        plain_port = p.plain_port,
        tls_port = p.tls_port,
        oauth_mechs = if p.oauth2.is_some() {
            " xoauth2 oauthbearer"
        } else {
            ""
        },
        oauth_passdb = if p.oauth2.is_some() {
            format!(
                "# XOAUTH2 / OAUTHBEARER: JWTs validated locally (see OAuth2Validation).\n\
                 passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  \
                 args = {dir}/dovecot-oauth2.conf.ext\n}}\n"
            )
        } else {
            String::new()
        },
    );
    if !id.root {
        // Services that would setuid to root.
        for s in ["auth-worker", "config", "log", "dict", "dict-async"] {
            let _ = writeln!(c, "service {s} {{\n  user =\n}}");
        }
    }
    match p.flavor {
        Flavor::Source => {
            c.push_str(
                "\n# Like Courier/Cyrus: Maildir++, '.' separator, everything under INBOX.\n\
                 mail_location = maildir:~/Maildir\n\
                 namespace inbox {\n  type = private\n  inbox = yes\n  separator = .\n  \
                 prefix = INBOX.\n  list = yes\n  subscriptions = yes\n",
            );
        }
        Flavor::Destination => {
            c.push_str(
                "\n# Like Exchange: '/' separator, no prefix, Exchange folder names.\n\
                 mail_location = maildir:~/Maildir:LAYOUT=fs:INBOX=~/Maildir/INBOX:DIRNAME=mAildir\n\
                 namespace inbox {\n  type = private\n  inbox = yes\n  separator = /\n  \
                 prefix =\n  list = yes\n  subscriptions = yes\n",
            );
        }
    }
    let prefix = p.flavor.prefix();
    for (name, attr) in p.flavor.special_folders() {
        let local = name.strip_prefix(prefix).unwrap_or(name);
        let _ = write!(
            c,
            "  mailbox \"{local}\" {{\n    special_use = {attr}\n    auto = subscribe\n  }}\n"
        );
    }
    c.push_str("}\n");
    c
}

// ---------------------------------------------------------------------------------------
// Testbed
// ---------------------------------------------------------------------------------------

/// Extras for [`Dovecot::start_in_with`]; the default is a plain instance.
#[derive(Debug, Clone, Default)]
pub struct DovecotExtras {
    pub oauth2: Option<OAuth2Validation>,
}

/// XOAUTH2 (and OAUTHBEARER) logins with app-only OAuth2 tokens, the way Exchange Online
/// takes them: Dovecot 2.3's `oauth2` passdb with `introspection_mode = local` validates
/// the JWT itself (signature with `key`, HS256, from a `fs:posix` dict; `exp`, `nbf`,
/// `iat`) and requires the claim `scope` to hold [`OAuth2Validation::scope`].
///
/// Like an app-only token for Exchange, one token opens every mailbox of the domain: the
/// token's `email` claim names the application (e.g. `cutover-app@example.test`), and
/// Dovecot compares only its domain with the login's (`username_format = %d`). The
/// mailbox is the one named in the XOAUTH2 `user=` field.
#[derive(Debug, Clone)]
pub struct OAuth2Validation {
    /// The HS256 key (raw bytes) tokens must be signed with.
    pub key: Vec<u8>,
    /// The `scope` claim a token must contain, e.g. `IMAP.AccessAsApp`.
    pub scope: String,
}

impl OAuth2Validation {
    fn write_files(&self, dir: &Path, ident: &Identity) -> Result<()> {
        use base64::Engine as _;
        // Dovecot looks the key up as shared/<azp:default>/<alg>/<kid:default> and expects
        // it base64-encoded.
        let key_dir = dir.join("oauth2-keys").join("default").join("HS256");
        std::fs::create_dir_all(&key_dir)?;
        write_file(
            &key_dir.join("default"),
            base64::engine::general_purpose::STANDARD
                .encode(&self.key)
                .as_bytes(),
        )?;
        if self
            .scope
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            bail!("OAuth2 scope {:?} must be one word", self.scope);
        }
        let conf = format!(
            "introspection_mode = local\n\
             local_validation_key_dict = fs:posix:prefix={}/oauth2-keys/\n\
             username_attribute = email\n\
             username_format = %d\n\
             scope = {}\n",
            dir.display(),
            self.scope
        );
        write_file(&dir.join("dovecot-oauth2.conf.ext"), conf.as_bytes())?;
        let _ = ident;
        Ok(())
    }
}

/// A source and a destination Dovecot sharing one test CA, all under one temp directory
/// (`ca.pem`, `source/`, `dest/`).
#[derive(Debug)]
pub struct Testbed {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub source: Dovecot,
    pub dest: Dovecot,
}

impl Testbed {
    /// Starts both servers. `users` are (source login, password, destination address); each
    /// user has the same password on both sides. Both servers have the master user
    /// [`MASTER_USER`] / [`MASTER_PASSWORD`].
    pub fn start(users: &[(&str, &str, &str)]) -> Result<Testbed> {
        Self::start_with(users, &DovecotExtras::default())
    }

    /// [`Testbed::start`] with a destination that also takes XOAUTH2 logins with tokens
    /// validated as described in [`OAuth2Validation`] (PLAIN with the master user still
    /// works, for the tests' own look at the mailboxes).
    pub fn start_xoauth2(
        users: &[(&str, &str, &str)],
        oauth2: OAuth2Validation,
    ) -> Result<Testbed> {
        Self::start_with(
            users,
            &DovecotExtras {
                oauth2: Some(oauth2),
            },
        )
    }

    fn start_with(users: &[(&str, &str, &str)], dest_extras: &DovecotExtras) -> Result<Testbed> {
        let dir = make_tempdir()?;
        let ident = Identity::detect()?;
        make_dir(dir.path(), &ident)?;
        let ca = TestCa::new(dir.path())?;
        let src_opts = DovecotOptions {
            flavor: Flavor::Source,
            users: users
                .iter()
                .map(|(l, p, _)| (l.to_string(), p.to_string()))
                .collect(),
            master_user: MASTER_USER.into(),
            master_password: MASTER_PASSWORD.into(),
        };
        let dst_opts = DovecotOptions {
            flavor: Flavor::Destination,
            users: users
                .iter()
                .map(|(_, p, a)| (a.to_string(), p.to_string()))
                .collect(),
            master_user: MASTER_USER.into(),
            master_password: MASTER_PASSWORD.into(),
        };
        let (src_dir, dst_dir) = (dir.path().join("source"), dir.path().join("dest"));
        let (source, dest) = std::thread::scope(|s| {
            let a = s.spawn(|| Dovecot::start_in(&src_dir, src_opts, &ca));
            let b = s.spawn(|| Dovecot::start_in_with(&dst_dir, dst_opts, &ca, dest_extras));
            (
                a.join()
                    .unwrap_or_else(|_| Err(anyhow!("source start panicked"))),
                b.join()
                    .unwrap_or_else(|_| Err(anyhow!("destination start panicked"))),
            )
        });
        let source = source.context("starting the source Dovecot")?;
        let dest = dest.context("starting the destination Dovecot")?;
        Ok(Testbed {
            dir,
            ca,
            source,
            dest,
        })
    }

    /// Stops both servers (in parallel).
    pub fn stop(&mut self) {
        self.source.begin_stop();
        self.dest.begin_stop();
        self.source.stop();
        self.dest.stop();
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.stop();
    }
}
