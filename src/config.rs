//! The daemon's configuration: one TOML file, overridable from the environment.
//!
//! [`Config::load`] reads the file named on the command line and merges environment
//! variables prefixed `CUTOVER_` on top, with `__` separating levels, so
//! `CUTOVER_SOURCE__HOST=imap2.example.org` overrides `host` in `[source]`. The environment
//! layer exists for containers and systemd credentials, where editing the file is
//! awkward; it is meant for scalar keys (tables such as `folder_map` belong in the file).
//!
//! Unknown keys are errors rather than being ignored: a typo such as `tls_verfy = false`
//! would otherwise silently keep the default and the operator would only notice much
//! later. Every error names the key and the file (or environment variable) it came from.
//!
//! Relative paths in the file are resolved against the file's own directory, not the
//! daemon's working directory, so a config directory can be moved or mounted anywhere
//! (systemd starts services in `/`, which would make cwd-relative paths useless).
//!
//! Secrets are held in [`Secret`], so `{:?}` of a [`Config`] never shows a password, and
//! error messages are built so that a rejected password value is never echoed either.

use crate::budget::MAX_BUDGET;
use crate::imap::Credentials;
use crate::mapping::{MappingError, Namespace};
use crate::secret::Secret;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "CUTOVER_";

/// Top-level keys an environment variable may override. Variables such as `CUTOVER_LOG`
/// or `CUTOVER_CONFIG` (used by the command line) share the prefix but are not
/// configuration keys; without this filter `deny_unknown_fields` would reject them.
/// A new section must be added here to be overridable from the environment.
const ENV_SECTIONS: [&str; 8] = [
    "spool", "source", "upstream", "sync", "cutover", "web", "notify", "fleet",
];
const ENV_TOP_KEYS: [&str; 1] = ["mailboxes"];

/// Why the configuration could not be loaded, or credentials could not be built.
///
/// Every variant names the file (or environment variable) and the key concerned, and
/// none of them ever contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file itself is missing or unreadable.
    #[error("cannot read config file {}: {reason}", path.display())]
    Read {
        path: PathBuf,
        // Not a `source`: the message already carries it, and `{:#}` would repeat it.
        reason: std::io::Error,
    },
    /// A file named by a `*_file` key (e.g. `admin_password_file`) could not be used.
    #[error("invalid configuration: {}: {key}: cannot read {}: {message}", config.display(), path.display())]
    File {
        config: PathBuf,
        key: String,
        path: PathBuf,
        message: String,
    },
    /// A letter template of `[notify]` that cannot be used; the message names its line.
    #[error("invalid configuration: {}: {key}: {}: {message}", config.display(), path.display())]
    Template {
        config: PathBuf,
        key: String,
        path: PathBuf,
        message: String,
    },
    /// Syntax error, unknown key, wrong type or missing required key, as reported by
    /// figment; the message names the key and the file or environment variable.
    #[error("invalid configuration: {}", figment_message(.error, .file))]
    Figment {
        file: PathBuf,
        error: Box<figment::Error>,
    },
    /// A value that parses but makes no sense (e.g. `max_connections = 0`).
    #[error("invalid configuration: {origin}: {key}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    /// [`ServerConfig::credentials`] cannot log this user in.
    #[error("cannot build credentials for {user}: {message}")]
    Credentials { user: String, message: String },
}

/// Renders every error figment collected, one per line, as
/// `<origin>: <key>: <problem>`, e.g.
/// ``TOML file /etc/cutover/cutover.toml: source.tls_verfy: unknown key `tls_verfy` ...``.
///
/// figment's own `Display` is close but prefixes keys with the profile (`default.`),
/// nests backquotes in "unknown field" messages and keeps the source excerpt the TOML
/// parser adds to syntax errors. That excerpt is the offending line of the file, which
/// may well be `admin_password = "...`, and errors end up in logs, so it is dropped.
fn figment_message(e: &figment::Error, file: &Path) -> String {
    use figment::error::Kind;
    e.clone()
        .into_iter()
        .map(|e| {
            let problem = match &e.kind {
                Kind::UnknownField(found, expected) => format!(
                    "unknown key `{found}` (expected one of: {})",
                    expected.join(", ")
                ),
                Kind::Message(m) => m
                    .lines()
                    .filter(|l| !is_excerpt_line(l))
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(": "),
                Kind::MissingField(field) => format!("missing required key `{field}`"),
                kind => kind.to_string(),
            };
            let origin = match &e.metadata {
                Some(md) => match &md.source {
                    Some(source) => format!("{} {}", md.name, source),
                    None => md.name.to_string(),
                },
                None => file.display().to_string(),
            };
            let key = match (&e.metadata, &e.profile) {
                _ if e.path.is_empty() => None,
                // For the environment this names the variable (without its prefix).
                (Some(md), Some(profile)) if md.name.contains("environment") => {
                    Some(md.interpolate(profile, &e.path))
                }
                _ => Some(e.path.join(".")),
            };
            match key {
                Some(key) => format!("{origin}: {key}: {problem}"),
                None => format!("{origin}: {problem}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `  |`, `3 | text`, `  |     ^`: the gutter lines of a TOML parse error excerpt.
fn is_excerpt_line(line: &str) -> bool {
    let t = line.trim_start();
    let t = t.trim_start_matches(|c: char| c.is_ascii_digit());
    t.trim_start().starts_with('|')
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Microsoft's IMAP-migration CSV (`EmailAddress,UserName,Password`): the accounts
    /// to migrate. Required. See [`crate::accounts`].
    pub mailboxes: PathBuf,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// The legacy server mail is read from.
    pub source: ServerConfig,
    /// The destination (Office 365) mail is written to.
    pub upstream: ServerConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    /// `[cutover]`: the MX watch that ends the migration (see [`crate::cutover`]).
    #[serde(default)]
    pub cutover: crate::cutover::CutoverConfig,
    /// `[web]`: the status page of `cutover run` (see [`crate::web`]).
    #[serde(default)]
    pub web: crate::web::WebConfig,
    /// `[notify]`: the letters to the users (see [`crate::notify`]).
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
    /// `[fleet]`: this appliance's shard of a migration spread over several (see
    /// [`crate::fleet`]).
    #[serde(default)]
    pub fleet: crate::fleet::FleetConfig,
    /// The file this was loaded from (absolute if it was given as such); not a key.
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[spool]`: where fetched mail and sync state are kept between the two sides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Default `/var/lib/cutover/spool`, the systemd `StateDirectory`.
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// When bodies are compressed: `background` (default) or `inline`.
    #[serde(default)]
    pub compress: Compress,
    /// Bytes of message bodies held in memory at once, over every connection (see
    /// `budget.rs`): what bounds the daemon's memory beyond its base. A message larger
    /// than this still goes, alone.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Bytes of sled's page cache for the message records and the body index: part of
    /// the daemon's base memory. Smaller costs reads (mostly from the kernel's page
    /// cache) when a folder's records are walked.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: default_spool_path(),
            compress: Compress::default(),
            max_inflight_bytes: default_max_inflight_bytes(),
            cache_bytes: default_cache_bytes(),
        }
    }
}

/// When the spool compresses message bodies (see `spool/compact.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Compress {
    /// Spooled as fetched, compressed by a background thread when the CPU is idle: the
    /// copy gets the CPU while it runs. The default.
    #[default]
    #[serde(rename = "background")]
    Background,
    /// Compressed as they are spooled: a smaller spool at once, for a slower copy.
    #[serde(rename = "inline")]
    Inline,
}

/// 64 MiB: with the base (20-60 MiB, more with a large spool: about 150 MiB with a
/// million message records, see README) within an appliance's `MemoryMax=256M`, and room
/// for one message at Exchange Online's limit (35 MB) next to smaller ones.
fn default_cache_bytes() -> u64 {
    crate::spool::DEFAULT_CACHE_BYTES
}

fn default_max_inflight_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("/var/lib/cutover/spool")
}

/// How the TCP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum TlsMode {
    /// TLS from the first byte (port 993). The default: nothing is ever sent in clear.
    #[default]
    #[serde(rename = "implicit")]
    Implicit,
    /// Plain connection upgraded with STARTTLS (port 143); refused if the server does
    /// not offer it, so a stripped capability cannot downgrade us to cleartext.
    #[serde(rename = "starttls")]
    Starttls,
    /// No TLS at all: passwords, tokens and every message cross the network in clear.
    /// Accepted for a loopback address (127.0.0.0/8, `::1`, `localhost`); for any other
    /// host only with `allow_plaintext = true` on that side, so that a copied test
    /// config cannot quietly send a whole organisation's mail over the LAN in clear.
    #[serde(rename = "none")]
    None,
}

/// How to authenticate to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AuthMech {
    /// The IMAP `LOGIN` command; understood by every server.
    #[default]
    #[serde(rename = "login")]
    Login,
    /// `AUTHENTICATE PLAIN` (RFC 4616); needed for master-user logins with an authzid.
    #[serde(rename = "plain")]
    Plain,
    /// `AUTHENTICATE XOAUTH2` with an OAuth bearer token: Office 365 after Microsoft
    /// disabled basic auth. Only valid for `[upstream]`.
    #[serde(rename = "xoauth2")]
    XOAuth2,
}

/// Where `[source]` reads mail from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SourceKind {
    /// An IMAP server (`host`, `port`, logins). The default.
    #[default]
    #[serde(rename = "imap")]
    Imap,
    /// Maildir trees on a local (or mounted) disk, one per mailbox at `path`: for a
    /// legacy server whose IMAP daemon is gone, slow or limited, or a backup of its disk.
    /// No passwords are needed. See [`crate::source::maildir`].
    #[serde(rename = "maildir")]
    Maildir,
}

/// How the folders of a Maildir source are laid out below its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MaildirLayout {
    /// Maildir++ (Courier, Dovecot's default, qmail/vpopmail): INBOX is the root, the
    /// other folders are `.Name` directories beside `cur/`, hierarchy with `.`
    /// (`.Work.Projects`), names in modified UTF-7.
    #[default]
    #[serde(rename = "maildir++")]
    MaildirPlusPlus,
    /// Dovecot's `LAYOUT=fs`: folders are subdirectories (`Work/Projects`), each a
    /// Maildir of its own; INBOX is the root (or `INBOX/` where it exists).
    #[serde(rename = "fs")]
    Fs,
    /// Only the folders of `folders` (name -> directory relative to the root).
    #[serde(rename = "list")]
    List,
}

/// `[source]` and `[upstream]`: one IMAP server (or, `[source]` only, Maildir trees).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `[source]` only: `"imap"` (the default) or `"maildir"`.
    #[serde(default)]
    pub kind: SourceKind,
    /// `kind = "maildir"`: the Maildir root of each mailbox, a template with `{user}`
    /// (the CSV's UserName), `{localpart}` and `{domain}` (of UserName when it holds an
    /// `@`, else of EmailAddress), e.g. `/srv/vmail/{domain}/{localpart}/Maildir`.
    #[serde(default)]
    pub path: Option<String>,
    /// `kind = "maildir"`: the folder layout below the root.
    #[serde(default)]
    pub layout: MaildirLayout,
    /// `kind = "maildir"`, `layout = "list"`: folder name -> directory (relative to the
    /// root, `"."` for the root itself). Names use `folder_delimiter`.
    #[serde(default)]
    pub folders: std::collections::BTreeMap<String, String>,
    /// `kind = "maildir"`: the folder names given to the spool are those an IMAP server
    /// on the same files would list, so that a later switch to reading over IMAP
    /// continues where the Maildir read stopped. Default `"INBOX."` for Maildir++
    /// (Courier's namespace; Dovecot's with `prefix = INBOX.`), `""` otherwise.
    #[serde(default)]
    pub folder_prefix: Option<String>,
    /// Required for `kind = "imap"`.
    #[serde(default)]
    pub host: String,
    /// Unset means the standard port for [`ServerConfig::tls`]; use [`ServerConfig::port`].
    #[serde(default, rename = "port")]
    pub port_override: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    /// An extra CA certificate (PEM) to trust besides the system roots, for a legacy
    /// server with a private CA. Resolved relative to the config file.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// `false` accepts any certificate: anyone on the path can then read the passwords.
    /// Exists only for one-off tests against a server with a broken certificate; prefer
    /// `tls_ca_file`.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// `tls = "none"` to a host that is not a loopback address is refused unless this is
    /// `true`: the operator says that the link is private and trusted.
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default)]
    pub auth: AuthMech,
    /// Log in as this administrator / master user instead of with each user's password.
    #[serde(default)]
    pub admin_user: Option<String>,
    /// The admin's password. After [`Config::load`] this also holds the content of
    /// `admin_password_file` if that was used instead.
    #[serde(default, deserialize_with = "opt_secret")]
    pub admin_password: Option<Secret>,
    /// A file holding the admin's password (e.g. a systemd credential), so it need not
    /// sit in the config file. Read once at load; a trailing newline is dropped.
    #[serde(default)]
    pub admin_password_file: Option<PathBuf>,
    /// How the admin acts as a user: `"authzid"` (AUTHENTICATE PLAIN with the user as
    /// authorisation identity, RFC 4616), or a template for the LOGIN name with
    /// `{user}`, `{admin}`, `{localpart}` and `{domain}`, e.g. Dovecot's master-user
    /// syntax `"{user}*{admin}"`.
    #[serde(default = "default_admin_login")]
    pub admin_login: String,
    /// Simultaneous connections to this server, over all mailboxes. At least 1.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Simultaneous connections per login user (legacy servers limit connections per
    /// user and IP, e.g. Dovecot's `mail_max_userip_connections`). Unset: only
    /// `max_connections` applies. Enforced by the daemon (`cutover run`).
    #[serde(default)]
    pub max_connections_per_user: Option<usize>,
    /// Give up on a command (or connection attempt) after this many seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Send each batch of APPENDs as one MULTIAPPEND command (RFC 3502) where the
    /// server offers it with LITERAL+ (Dovecot, Cyrus; Exchange Online does not): the
    /// server saves the batch in one transaction, several times cheaper than one APPEND
    /// per message. A batch the server refuses as a whole is sent again one APPEND per
    /// message. `false` always sends one APPEND per message. `[upstream]` only.
    #[serde(default = "yes")]
    pub multiappend: bool,
    // --- Office 365 ([upstream] only; see `crate::oauth` and `crate::throttle`) ---
    /// Entra ID tenant (ID or domain) for the default token endpoint.
    #[serde(default)]
    pub oauth_tenant: Option<String>,
    /// Application (client) ID of the app registration.
    #[serde(default)]
    pub oauth_client_id: Option<String>,
    /// The app's client secret. After [`Config::load`] this also holds the content of
    /// `oauth_client_secret_file` if that was used instead.
    #[serde(default, deserialize_with = "opt_secret")]
    pub oauth_client_secret: Option<Secret>,
    /// A file holding the client secret; read once at load, trailing newline dropped.
    #[serde(default)]
    pub oauth_client_secret_file: Option<PathBuf>,
    /// Default `https://outlook.office365.com/.default`.
    #[serde(default)]
    pub oauth_scope: Option<String>,
    /// Default `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`.
    #[serde(default)]
    pub oauth_token_url: Option<String>,
    /// APPENDs per second per mailbox; 0 = no fixed limit (AIMD after a throttle).
    #[serde(default)]
    pub messages_per_second: f64,
    /// Bytes per second per mailbox; 0 = unlimited.
    #[serde(default)]
    pub bytes_per_second: u64,
    /// APPENDs per second over all mailboxes; 0 = unlimited.
    #[serde(default)]
    pub global_messages_per_second: f64,
    /// Bytes per second over all mailboxes; 0 = unlimited.
    #[serde(default)]
    pub global_bytes_per_second: u64,
    /// Seconds of the configured rates an idle bucket may save up and spend at once.
    #[serde(default = "default_burst")]
    pub burst: f64,
    /// The most sessions one mailbox may use at once (at least 1). cutover pushes a
    /// mailbox over one session, so any value holds; a tenant that must stay lower than
    /// Exchange's own per-mailbox limit can say so here.
    #[serde(default = "default_max_connections_per_mailbox")]
    pub max_connections_per_mailbox: usize,
}

impl fmt::Debug for ServerConfig {
    // Hand-written only to keep the field order readable; secrets are `Secret` anyway.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("folders", &self.folders)
            .field("folder_prefix", &self.folder_prefix)
            .field("host", &self.host)
            .field("port", &self.port())
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_verify", &self.tls_verify)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("auth", &self.auth)
            .field("admin_user", &self.admin_user)
            .field("admin_password", &self.admin_password)
            .field("admin_password_file", &self.admin_password_file)
            .field("admin_login", &self.admin_login)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("timeout_secs", &self.timeout_secs)
            .field("multiappend", &self.multiappend)
            .field("oauth_tenant", &self.oauth_tenant)
            .field("oauth_client_id", &self.oauth_client_id)
            .field("oauth_client_secret", &self.oauth_client_secret)
            .field("oauth_client_secret_file", &self.oauth_client_secret_file)
            .field("oauth_scope", &self.oauth_scope)
            .field("oauth_token_url", &self.oauth_token_url)
            .field("messages_per_second", &self.messages_per_second)
            .field("bytes_per_second", &self.bytes_per_second)
            .field(
                "global_messages_per_second",
                &self.global_messages_per_second,
            )
            .field("global_bytes_per_second", &self.global_bytes_per_second)
            .field("burst", &self.burst)
            .field(
                "max_connections_per_mailbox",
                &self.max_connections_per_mailbox,
            )
            .finish()
    }
}

fn yes() -> bool {
    true
}
fn default_admin_login() -> String {
    "authzid".to_string()
}
fn default_max_connections() -> usize {
    8
}
fn default_burst() -> f64 {
    1.0
}
fn default_max_connections_per_mailbox() -> usize {
    1
}
fn default_timeout_secs() -> u64 {
    120
}

/// `[sync]`: what is copied and in what portions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Source folders not to copy: names or globs (`*`, `?`, `[..]`, `{a,b}`, matched
    /// case-insensitively), tested against the source folder's full name with the
    /// source's own delimiter (`INBOX.Junk`) and against its path below the personal
    /// namespace joined with `/` (`Junk`, `Public/Old`). `*` also matches `/`, so
    /// `Public/*` excludes everything below `Public` (but not `Public` itself).
    #[serde(default)]
    pub exclude_folders: Vec<String>,
    /// Source folder name (full name or `/`-joined path) -> destination folder, with `/`
    /// separating levels in the destination name. Keys match case-insensitively; a
    /// folder's subfolders follow it. Overrides every automatic rule.
    #[serde(default)]
    pub folder_map: BTreeMap<String, String>,
    /// Larger messages are skipped and reported: Exchange Online refuses messages over
    /// 35 MiB by default (its maximum is 150 MiB if the tenant raised it).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// At most this many messages per mailbox, as Microsoft's own IMAP migration does
    /// (0: no limit): when the source holds more, the newest by INTERNALDATE across all
    /// folders are copied and the rest are skipped and reported.
    #[serde(default = "default_max_items_per_mailbox")]
    pub max_items_per_mailbox: u64,
    /// Skip (and report) messages with a line longer than this many bytes, instead of
    /// letting Exchange Online refuse them (`BAD Command Argument Error`). 0: no check
    /// here; a refusal by the destination is then recognised and reported the same way.
    #[serde(default)]
    pub max_line_length: usize,
    /// Fetch messages from the source in batches of about this many bytes.
    #[serde(default = "default_fetch_batch_bytes")]
    pub fetch_batch_bytes: u64,
    /// Messages appended upstream per batch (MULTIAPPEND when available).
    #[serde(default = "default_append_batch")]
    pub append_batch: usize,
    /// Time between two delta passes of a mailbox in `cutover run`: seconds or a
    /// duration string (`"5m"`, see [`crate::duration`]). Default 5 minutes.
    #[serde(
        default = "default_interval",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub interval: Duration,
    /// Carry source expunges over to the destination. Off by default: a migration
    /// must never lose mail because the legacy side was cleaned up. On: a message the
    /// source expunged is deleted at the destination, exactly that message (UID EXPUNGE;
    /// a destination without UIDPLUS gets an error and no deletion).
    #[serde(default)]
    pub propagate_deletes: bool,
    /// With `propagate_deletes`, refuse to delete more than this percentage of a
    /// folder's messages in one pass (a safety net against a source that lists an empty
    /// folder by mistake): the whole folder is left alone and the refusal reported. 0 to
    /// 100; 0 refuses every deletion.
    #[serde(default = "default_max_delete_percent")]
    pub max_delete_percent: u8,
    /// Messages flagged `\Deleted` at the source but not expunged: `"copy"` (default)
    /// copies them with the flag, as they are: not deleted yet, and the user may still
    /// take them back, so skipping them would lose them for good once the legacy server is
    /// gone. `"skip"` leaves them at the source while they are flagged (reported in each
    /// pass; one undeleted before the final pass is copied then).
    #[serde(default)]
    pub deleted_messages: crate::source::DeletedMessages,
    /// Also copy the folders of the source's other namespaces (NAMESPACE: other users'
    /// and shared folders), which the user can see but does not own. Off by default:
    /// they belong to other mailboxes (or to everyone), and would be copied into every
    /// mailbox that can see them. On, they keep their full source name at the top of the
    /// destination (`user/bob/Team`, `Shared Folders/Announcements`); `exclude_folders`
    /// and `folder_map` apply to them as to any folder.
    #[serde(default)]
    pub other_namespaces: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            exclude_folders: Vec::new(),
            folder_map: BTreeMap::new(),
            max_message_bytes: default_max_message_bytes(),
            max_items_per_mailbox: default_max_items_per_mailbox(),
            max_line_length: 0,
            fetch_batch_bytes: default_fetch_batch_bytes(),
            append_batch: default_append_batch(),
            interval: default_interval(),
            propagate_deletes: false,
            max_delete_percent: default_max_delete_percent(),
            deleted_messages: Default::default(),
            other_namespaces: false,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_max_delete_percent() -> u8 {
    10
}

fn default_max_message_bytes() -> u64 {
    35 * 1024 * 1024
}
fn default_max_items_per_mailbox() -> u64 {
    500_000
}
fn default_fetch_batch_bytes() -> u64 {
    8 * 1024 * 1024
}
fn default_append_batch() -> usize {
    64
}

/// Deserializes an optional [`Secret`] without ever echoing the value in an error.
///
/// The derived path would report e.g. `invalid type: found unsigned int 12345` for a
/// numeric password given in an environment variable (figment parses `12345` as a
/// number), putting the password into the log.
fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    struct V;
    const MSG: &str = "must be a string (in an environment variable, a value that looks \
                       like a number, boolean or list must be quoted: '\"...\"')";
    impl<'de> Visitor<'de> for V {
        type Value = Option<Secret>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Secret::new(v)))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Secret::new(v)))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom(MSG))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom(MSG))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom(MSG))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(MSG))
        }
        fn visit_char<E: de::Error>(self, _: char) -> Result<Self::Value, E> {
            Err(E::custom(MSG))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(MSG))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(MSG))
        }
    }
    d.deserialize_any(V)
}

impl Config {
    /// Loads `path` (TOML) with `CUTOVER_*` environment overrides, reads the password
    /// files, resolves relative paths against the file's directory and validates.
    ///
    /// A missing file is an error: running on built-in defaults against the wrong
    /// servers would be far worse than refusing to start.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX))
    }

    /// [`Config::load`] with another environment provider (tests use their own prefix so
    /// that parallel tests and the developer's shell cannot interfere).
    fn load_with_env(path: &Path, env: Env) -> Result<Config, ConfigError> {
        // figment's `Toml::file` treats a missing file as empty, and `file_exact` reports
        // a bare I/O error without the path, so check readability ourselves first.
        std::fs::read(path).map_err(|reason| ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let env = env.split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            match key.split_once('.') {
                Some((section, _)) => ENV_SECTIONS.contains(&section),
                None => ENV_TOP_KEYS.contains(&key.as_str()),
            }
        });
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(env);
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Figment {
            file: path.to_path_buf(),
            error: Box::new(e),
        })?;
        config.file = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve_paths(base);
        config.finish_server("source", &figment, false)?;
        config.finish_server("upstream", &figment, true)?;
        config.validate_sync(&figment)?;
        config.check_notify()?;
        if let Err(message) = config.fleet.shard() {
            return Err(ConfigError::Invalid {
                origin: origin(&figment, "fleet.shard", &config.file),
                key: "fleet.shard".into(),
                message,
            });
        }
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.mailboxes);
        resolve(&mut self.spool.path);
        for p in [
            &mut self.web.password_file,
            &mut self.web.tls_cert,
            &mut self.web.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        self.notify.resolve_paths(base);
        for p in [
            &mut self.fleet.peer_password_file,
            &mut self.fleet.peer_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        if let Some(t) = &mut self.source.path {
            if Path::new(t.as_str()).is_relative() && !base.as_os_str().is_empty() {
                *t = base.join(t.as_str()).to_string_lossy().into_owned();
            }
        }
        for server in [&mut self.source, &mut self.upstream] {
            for p in [
                &mut server.tls_ca_file,
                &mut server.admin_password_file,
                &mut server.oauth_client_secret_file,
            ]
            .into_iter()
            .flatten()
            {
                resolve(p);
            }
        }
    }

    /// Reads the password file and checks the keys of one server section.
    fn finish_server(
        &mut self,
        section: &str,
        figment: &Figment,
        is_upstream: bool,
    ) -> Result<(), ConfigError> {
        let file = self.file.clone();
        let server = if is_upstream {
            &mut self.upstream
        } else {
            &mut self.source
        };
        let invalid = |key: &str, message: String| {
            let key = format!("{section}.{key}");
            ConfigError::Invalid {
                origin: origin(figment, &key, &file),
                key,
                message,
            }
        };
        if server.kind == SourceKind::Maildir {
            if is_upstream {
                return Err(invalid(
                    "kind",
                    "\"maildir\" is only supported for [source]; the destination is IMAP".into(),
                ));
            }
            let Some(path) = &server.path else {
                return Err(invalid(
                    "path",
                    "is required with kind = \"maildir\": the Maildir root of each mailbox, \
                     e.g. \"/srv/vmail/{domain}/{localpart}/Maildir\""
                        .into(),
                ));
            };
            check_path_template(path).map_err(|m| invalid("path", m))?;
            if server.layout == MaildirLayout::List && server.folders.is_empty() {
                return Err(invalid(
                    "folders",
                    "layout = \"list\" needs at least one folder (name = \"directory\")".into(),
                ));
            }
            if server.max_connections == 0 {
                return Err(invalid(
                    "max_connections",
                    "must be at least 1 (mailboxes read at once from the disk)".into(),
                ));
            }
            return Ok(());
        }
        if server.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty".into()));
        }
        check_host(&server.host).map_err(|m| invalid("host", m))?;
        if server.tls == TlsMode::None && !is_loopback(&server.host) {
            if !server.allow_plaintext {
                return Err(invalid(
                    "tls",
                    format!(
                        "\"none\" to {}, which is not a loopback address, would send the \
                         passwords and every message in clear over the network; use \
                         \"implicit\" or \"starttls\", or set allow_plaintext = true in \
                         [{section}] if the link is private and trusted",
                        server.host.trim()
                    ),
                ));
            }
            tracing::warn!(
                host = %server.host.trim(),
                "[{section}] tls = \"none\" with allow_plaintext = true: passwords and mail \
                 cross the network in clear"
            );
        }
        if server.max_connections_per_user == Some(0) {
            return Err(invalid(
                "max_connections_per_user",
                "must be at least 1 (0 would never connect)".into(),
            ));
        }
        if server.max_connections == 0 {
            return Err(invalid(
                "max_connections",
                "must be at least 1 (0 would never connect)".into(),
            ));
        }
        if server.timeout_secs == 0 {
            return Err(invalid("timeout_secs", "must be at least 1".into()));
        }
        if server.auth == AuthMech::XOAuth2 && !is_upstream {
            return Err(invalid(
                "auth",
                "\"xoauth2\" is only supported for [upstream] (Office 365); \
                 use \"login\" or \"plain\" for the source server"
                    .into(),
            ));
        }
        check_office365_keys(server, is_upstream, &invalid, &file, section)?;
        if let Some(pw_file) = &server.admin_password_file {
            if server.admin_password.is_some() {
                return Err(invalid(
                    "admin_password_file",
                    "set together with admin_password; use only one".into(),
                ));
            }
            let key = format!("{section}.admin_password_file");
            let file_err = |message: String| ConfigError::File {
                config: file.clone(),
                key: key.clone(),
                path: pw_file.clone(),
                message,
            };
            let text = std::fs::read_to_string(pw_file).map_err(|e| file_err(e.to_string()))?;
            // Editors and `echo` add a final newline; it is never part of the password.
            let pw = text.strip_suffix('\n').unwrap_or(&text);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            if pw.is_empty() {
                return Err(file_err("file is empty".into()));
            }
            server.admin_password = Some(Secret::new(pw));
        }
        if server.admin_password.as_ref().is_some_and(Secret::is_empty) {
            server.admin_password = None;
        }
        if let Some(admin) = &server.admin_user {
            if admin.trim().is_empty() {
                return Err(invalid("admin_user", "must not be empty".into()));
            }
            if server.admin_password.is_none() && server.auth != AuthMech::XOAuth2 {
                return Err(invalid(
                    "admin_user",
                    "is set but neither admin_password nor admin_password_file is".into(),
                ));
            }
        }
        if server.admin_login != "authzid" {
            check_template(&server.admin_login).map_err(|m| invalid("admin_login", m))?;
        }
        Ok(())
    }

    /// Loads the letter templates: one that would fail at sending fails here, at start.
    fn check_notify(&self) -> Result<(), ConfigError> {
        use crate::notify::Kind;
        for kind in [Kind::Before, Kind::After] {
            if let (Err(e), Some(path)) = (self.notify.template(kind), self.notify.path(kind)) {
                return Err(ConfigError::Template {
                    config: self.file.clone(),
                    key: format!("notify.{}", kind.as_str()),
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }

    fn validate_sync(&self, figment: &Figment) -> Result<(), ConfigError> {
        // A key in any section, named in full.
        let invalid_key = |key: String, message: String| ConfigError::Invalid {
            origin: origin(figment, &key, &self.file),
            key,
            message,
        };
        let invalid = |key: &str, message: String| invalid_key(format!("sync.{key}"), message);
        // The mapper checks the globs and folder_map targets; building one here makes a
        // bad entry stop the daemon at start-up rather than fail every mailbox later.
        let check = crate::mapping::FolderMapper::new(
            Namespace::default(),
            Namespace::exchange(),
            &[],
            &self.sync.folder_map,
            &self.sync.exclude_folders,
        );
        match check {
            Ok(_) => {}
            Err(MappingError::BadGlob { pattern, message }) => {
                return Err(invalid(
                    "exclude_folders",
                    format!("bad pattern {pattern:?}: {message}"),
                ))
            }
            Err(MappingError::BadFolderMap { key, message }) => {
                return Err(invalid("folder_map", format!("{key:?}: {message}")))
            }
            Err(other) => return Err(invalid("folder_map", other.to_string())),
        }
        if self.sync.append_batch == 0 {
            return Err(invalid("append_batch", "must be at least 1".into()));
        }
        if self.sync.fetch_batch_bytes == 0 {
            return Err(invalid("fetch_batch_bytes", "must be at least 1".into()));
        }
        if self.sync.max_message_bytes == 0 {
            return Err(invalid("max_message_bytes", "must be at least 1".into()));
        }
        if self.sync.interval.is_zero() {
            return Err(invalid("interval", "must be at least 1 second".into()));
        }
        if self.spool.max_inflight_bytes == 0 || self.spool.max_inflight_bytes > MAX_BUDGET {
            return Err(invalid_key(
                "spool.max_inflight_bytes".into(),
                format!("must be 1 to {MAX_BUDGET}"),
            ));
        }
        if self.spool.cache_bytes < crate::spool::MIN_CACHE_BYTES {
            return Err(invalid_key(
                "spool.cache_bytes".into(),
                format!("must be at least {}", crate::spool::MIN_CACHE_BYTES),
            ));
        }
        if self.sync.max_delete_percent > 100 {
            return Err(invalid("max_delete_percent", "must be 0 to 100".into()));
        }
        self.cutover
            .validate()
            .map_err(|(key, message)| invalid_key(format!("cutover.{key}"), message))?;
        self.web
            .validate()
            .map_err(|(key, message)| invalid_key(format!("web.{key}"), message))?;
        Ok(())
    }
}

/// Checks the Office 365 keys of a server section (OAuth and rate limits) and reads
/// `oauth_client_secret_file`. They exist only for `[upstream]`.
fn check_office365_keys(
    server: &mut ServerConfig,
    is_upstream: bool,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    file: &Path,
    section: &str,
) -> Result<(), ConfigError> {
    if !is_upstream {
        let set: [(&str, bool); 12] = [
            ("oauth_tenant", server.oauth_tenant.is_some()),
            ("oauth_client_id", server.oauth_client_id.is_some()),
            ("oauth_client_secret", server.oauth_client_secret.is_some()),
            (
                "oauth_client_secret_file",
                server.oauth_client_secret_file.is_some(),
            ),
            ("oauth_scope", server.oauth_scope.is_some()),
            ("oauth_token_url", server.oauth_token_url.is_some()),
            ("messages_per_second", server.messages_per_second != 0.0),
            ("bytes_per_second", server.bytes_per_second != 0),
            (
                "global_messages_per_second",
                server.global_messages_per_second != 0.0,
            ),
            (
                "global_bytes_per_second",
                server.global_bytes_per_second != 0,
            ),
            ("burst", server.burst != default_burst()),
            (
                "max_connections_per_mailbox",
                server.max_connections_per_mailbox != default_max_connections_per_mailbox(),
            ),
        ];
        if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
            return Err(invalid(key, "is only supported in [upstream]".into()));
        }
        return Ok(());
    }
    for (key, v) in [
        ("messages_per_second", server.messages_per_second),
        (
            "global_messages_per_second",
            server.global_messages_per_second,
        ),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(invalid(
                key,
                "must be 0 (unlimited) or a positive number".into(),
            ));
        }
    }
    if !server.burst.is_finite() || server.burst <= 0.0 {
        return Err(invalid(
            "burst",
            "must be a positive number of seconds".into(),
        ));
    }
    if server.max_connections_per_mailbox == 0 {
        return Err(invalid(
            "max_connections_per_mailbox",
            "must be at least 1 (0 would never connect)".into(),
        ));
    }
    if let Some(secret_file) = &server.oauth_client_secret_file {
        if server.oauth_client_secret.is_some() {
            return Err(invalid(
                "oauth_client_secret_file",
                "set together with oauth_client_secret; use only one".into(),
            ));
        }
        let text = std::fs::read_to_string(secret_file).map_err(|e| ConfigError::File {
            config: file.to_path_buf(),
            key: format!("{section}.oauth_client_secret_file"),
            path: secret_file.clone(),
            message: e.to_string(),
        })?;
        let s = text.trim_end_matches(['\n', '\r']);
        if s.is_empty() {
            return Err(ConfigError::File {
                config: file.to_path_buf(),
                key: format!("{section}.oauth_client_secret_file"),
                path: secret_file.clone(),
                message: "file is empty".into(),
            });
        }
        server.oauth_client_secret = Some(Secret::new(s));
    }
    if server.auth == AuthMech::XOAuth2 {
        if server
            .oauth_client_id
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(invalid(
                "oauth_client_id",
                "auth = \"xoauth2\" needs the application (client) ID of the app registration"
                    .into(),
            ));
        }
        if server
            .oauth_client_secret
            .as_ref()
            .is_none_or(Secret::is_empty)
        {
            return Err(invalid(
                "oauth_client_secret",
                "auth = \"xoauth2\" needs oauth_client_secret or oauth_client_secret_file".into(),
            ));
        }
        if let Err(e) = crate::oauth::token_url(server) {
            let key = if server.oauth_token_url.is_some() {
                "oauth_token_url"
            } else {
                "oauth_tenant"
            };
            return Err(invalid(key, e.to_string()));
        }
    }
    Ok(())
}

/// True if `host` names this machine: `localhost`, an address in 127.0.0.0/8 or `::1`
/// (also written `[::1]`, or as an IPv4-mapped IPv6 address). Only these may be reached
/// in clear without `allow_plaintext`: the traffic never leaves the machine.
fn is_loopback(host: &str) -> bool {
    let h = host.trim();
    let h = h.strip_suffix('.').unwrap_or(h);
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Catches the usual ways a server address is written wrong (a URL, a port appended,
/// a space), which would otherwise surface as a puzzling DNS failure per mailbox. The
/// value is not repeated: a URL can carry a user and password (`imaps://u:p@host`).
fn check_host(host: &str) -> Result<(), String> {
    let h = host.trim();
    if h.contains("://") {
        return Err(
            "is a URL; give the host name alone (e.g. \"imap.example.org\") and \
                    the port in `port`"
                .into(),
        );
    }
    if h.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '@')
    {
        return Err("is not a host name or address (it contains a space, '/' or '@')".into());
    }
    if let Some((name, port)) = h.rsplit_once(':') {
        // One colon: `name:port`. Several: an IPv6 address, which is fine as it is.
        if !name.contains(':') && !name.is_empty() {
            return Err(format!(
                "includes a port; give the host alone and set `port = {port}`"
            ));
        }
    }
    Ok(())
}

/// "TOML file /etc/cutover/cutover.toml" or "`CUTOVER_` environment variable(s)":
/// where the value of `key` came from, so the operator knows what to edit.
fn origin(figment: &Figment, key: &str, file: &Path) -> String {
    match figment.find_metadata(key) {
        Some(md) => match &md.source {
            Some(source) => format!("{} {}", md.name, source),
            None => md.name.to_string(),
        },
        None => file.display().to_string(),
    }
}

/// Checks an `admin_login` template: only known placeholders, and at least one that
/// varies per user, since otherwise every mailbox would be opened as the same account.
fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut per_user = false;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed '{{' in {template:?}"));
        };
        match &after[..end] {
            "user" | "localpart" => per_user = true,
            "admin" | "domain" => {}
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} in {template:?} \
                     (known: {{user}}, {{admin}}, {{localpart}}, {{domain}}; \
                     or \"authzid\" for AUTHENTICATE PLAIN with an authorisation identity)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    if !per_user {
        return Err(format!(
            "{template:?} contains neither {{user}} nor {{localpart}}, so every mailbox \
             would log in as the same identity"
        ));
    }
    Ok(())
}

/// Checks a Maildir `path` template: known placeholders, and one per mailbox (a fixed
/// path would read the same Maildir into every mailbox).
fn check_path_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut per_user = false;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed '{{' in {template:?}"));
        };
        match &after[..end] {
            "user" | "localpart" => per_user = true,
            "domain" => {}
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} in {template:?} \
                     (known: {{user}}, {{localpart}}, {{domain}})"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    if !per_user {
        return Err(format!(
            "{template:?} contains neither {{user}} nor {{localpart}}, so every mailbox \
             would be read from the same Maildir"
        ));
    }
    Ok(())
}

impl ServerConfig {
    /// `kind = "maildir"`: the Maildir root of one mailbox (`user` is the CSV's UserName,
    /// `email` its EmailAddress). A value that would leave the directory the template
    /// names (`/`, `..`, NUL) is refused: the CSV must not be able to point the source
    /// at another user's mail or anywhere else on the disk.
    pub fn maildir_root(&self, user: &str, email: &str) -> Result<PathBuf, ConfigError> {
        let fail = |message: String| ConfigError::Credentials {
            user: user.to_string(),
            message,
        };
        let Some(template) = &self.path else {
            return Err(fail("[source] path is not set".into()));
        };
        let (localpart, domain) = match user.rsplit_once('@') {
            Some(parts) => parts,
            None => email.rsplit_once('@').unwrap_or((user, "")),
        };
        for (what, v) in [("user", user), ("localpart", localpart), ("domain", domain)] {
            if v.contains('/') || v.contains('\0') || v == "." || v == ".." {
                return Err(fail(format!(
                    "{{{what}}} would be {v:?}, which cannot name one directory of the Maildir path"
                )));
            }
        }
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').unwrap_or(after.len());
            out.push_str(match &after[..end] {
                "user" => user,
                "localpart" => localpart,
                "domain" => domain,
                _ => "",
            });
            rest = after.get(end + 1..).unwrap_or("");
        }
        out.push_str(rest);
        Ok(PathBuf::from(out))
    }

    /// The port to connect to: `port` if set, else 993 for implicit TLS and 143 otherwise.
    pub fn port(&self) -> u16 {
        self.port_override.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        })
    }

    /// `timeout_secs` as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// How to log in to `user`'s mailbox on this server.
    ///
    /// `user` is the login name of the mailbox (the CSV's UserName for the source, the
    /// e-mail address for Office 365); `user_password` is that user's own password from
    /// the CSV, if any.
    ///
    /// - With `admin_user`, the admin's password is always used and the user's ignored:
    ///   - `admin_login = "authzid"`: `AUTHENTICATE PLAIN` with authzid = `user`,
    ///     authcid = admin (whatever `auth` says, since only SASL can carry an authzid);
    ///   - otherwise `admin_login` is a template for the login name (`{user}`,
    ///     `{admin}`, `{localpart}`, `{domain}`; `domain` and `localpart` split `user`
    ///     at its last `@`; `domain` is empty without one), sent with `LOGIN` or, with
    ///     `auth = "plain"`, `AUTHENTICATE PLAIN` without authzid.
    /// - Without `admin_user`, the user's own password is required.
    /// - `auth = "xoauth2"` is an error here: its token comes from the OAuth flow, not
    ///   from this configuration.
    pub fn credentials(
        &self,
        user: &str,
        user_password: Option<&Secret>,
    ) -> Result<Credentials, ConfigError> {
        let fail = |message: String| ConfigError::Credentials {
            user: user.to_string(),
            message,
        };
        if self.auth == AuthMech::XOAuth2 {
            return Err(fail(
                "auth = \"xoauth2\": the OAuth token is supplied by the token provider, \
                 not by the configuration"
                    .into(),
            ));
        }
        if let Some(admin) = &self.admin_user {
            let Some(password) = self.admin_password.clone() else {
                return Err(fail(format!(
                    "admin_user {admin} is set but there is no admin_password"
                )));
            };
            if self.admin_login == "authzid" {
                return Ok(Credentials::Plain {
                    authzid: Some(user.to_string()),
                    authcid: admin.clone(),
                    password,
                });
            }
            check_template(&self.admin_login).map_err(&fail)?;
            let login = expand_template(&self.admin_login, user, admin);
            return Ok(match self.auth {
                AuthMech::Plain => Credentials::Plain {
                    authzid: None,
                    authcid: login,
                    password,
                },
                _ => Credentials::Login {
                    user: login,
                    password,
                },
            });
        }
        let Some(password) = user_password.filter(|p| !p.is_empty()).cloned() else {
            return Err(fail(format!(
                "no password for {user} in the CSV and no admin_user"
            )));
        };
        Ok(match self.auth {
            AuthMech::Plain => Credentials::Plain {
                authzid: None,
                authcid: user.to_string(),
                password,
            },
            _ => Credentials::Login {
                user: user.to_string(),
                password,
            },
        })
    }
}

/// Fills `{user}`, `{admin}`, `{localpart}` and `{domain}` in a checked template.
/// Replacement is done in one pass so a `{` inside a user name is never re-expanded.
fn expand_template(template: &str, user: &str, admin: &str) -> String {
    let (localpart, domain) = user.rsplit_once('@').unwrap_or((user, ""));
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('}').unwrap_or(after.len());
        out.push_str(match &after[..end] {
            "user" => user,
            "admin" => admin,
            "localpart" => localpart,
            "domain" => domain,
            _ => "",
        });
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MINIMAL: &str = r#"
mailboxes = "mailboxes.csv"

[source]
host = "imap.legacy.example"

[upstream]
host = "outlook.office365.com"
"#;

    /// An environment provider nobody else sets, so tests neither see the developer's
    /// `CUTOVER_*` variables nor each other's.
    fn no_env() -> Env {
        Env::prefixed("CUTOVER_TEST_UNSET_PREFIX_")
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn load_str(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "cutover.toml", text);
        let r = Config::load_with_env(&p, no_env());
        (dir, r)
    }

    const XOAUTH2: &str = "auth = \"xoauth2\"\noauth_tenant = \"contoso.example\"\n\
                           oauth_client_id = \"cid\"\noauth_client_secret = \"csecret\"\n";

    fn server(extra: &str) -> ServerConfig {
        let text = format!("{MINIMAL}{extra}");
        let (_dir, r) = load_str(&text);
        r.unwrap().upstream
    }

    #[test]
    fn defaults() {
        let (dir, r) = load_str(MINIMAL);
        let c = r.unwrap();
        assert_eq!(c.mailboxes, dir.path().join("mailboxes.csv"));
        assert_eq!(c.spool.path, PathBuf::from("/var/lib/cutover/spool"));
        assert_eq!(c.spool.compress, Compress::Background);
        let s = &c.source;
        assert_eq!(s.host, "imap.legacy.example");
        assert_eq!(s.port(), 993);
        assert_eq!(s.tls, TlsMode::Implicit);
        assert!(s.tls_verify);
        assert_eq!(s.tls_ca_file, None);
        assert_eq!(s.auth, AuthMech::Login);
        assert_eq!(s.admin_user, None);
        assert!(s.admin_password.is_none());
        assert_eq!(s.admin_login, "authzid");
        assert_eq!(s.max_connections, 8);
        assert_eq!(s.timeout(), Duration::from_secs(120));
        assert!(c.sync.exclude_folders.is_empty());
        assert!(c.sync.folder_map.is_empty());
        assert_eq!(c.sync.max_message_bytes, 35 * 1024 * 1024);
        assert_eq!(c.sync.max_items_per_mailbox, 500_000);
        assert_eq!(c.sync.fetch_batch_bytes, 8 * 1024 * 1024);
        assert_eq!(c.sync.append_batch, 64);
        assert_eq!(c.sync.interval, Duration::from_secs(300));
        assert!(!c.sync.propagate_deletes);
        assert_eq!(c.sync.max_delete_percent, 10);
        assert_eq!(s.max_connections_per_user, None);
        assert!(c.cutover.domains.is_empty());
        assert_eq!(c.cutover.mx_suffix, ".mail.protection.outlook.com");
        assert_eq!(c.cutover.grace, Duration::from_secs(72 * 3600));
        assert_eq!(c.cutover.check_interval, Duration::from_secs(300));
        assert_eq!(c.file, dir.path().join("cutover.toml"));
    }

    #[test]
    fn spool_cache_bytes() {
        let (_d, r) = load_str(MINIMAL);
        assert_eq!(
            r.unwrap().spool.cache_bytes,
            crate::spool::DEFAULT_CACHE_BYTES
        );
        let (_d, r) = load_str(&format!("{MINIMAL}\n[spool]\ncache_bytes = 8388608\n"));
        assert_eq!(r.unwrap().spool.cache_bytes, 8 * 1024 * 1024);
        let (_d, r) = load_str(&format!("{MINIMAL}\n[spool]\ncache_bytes = 4096\n"));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("spool.cache_bytes") && e.contains("at least 1048576"),
            "{e}"
        );
    }

    /// config.example.toml must stay loadable and document every key.
    #[test]
    fn example_file() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::load_with_env(&p, no_env()).unwrap();
        assert_eq!(c.upstream.host, "outlook.office365.com");
        assert!(c.web.enabled);
        assert_eq!(c.web.listen, "127.0.0.1:8080");
        let text = fs::read_to_string(&p).unwrap();
        for key in [
            "mailboxes",
            "path",
            "compress",
            "host",
            "port",
            "tls",
            "tls_ca_file",
            "tls_verify",
            "allow_plaintext",
            "auth",
            "admin_user",
            "admin_password",
            "admin_password_file",
            "admin_login",
            "max_connections",
            "timeout_secs",
            "exclude_folders",
            "folder_map",
            "max_message_bytes",
            "max_items_per_mailbox",
            "max_line_length",
            "fetch_batch_bytes",
            "append_batch",
            "interval",
            "propagate_deletes",
            "max_delete_percent",
            "max_connections_per_user",
            "domains",
            "listen",
            "enabled",
            "password_file",
            "tls_cert",
            "tls_key",
            "mx_suffix",
            "resolver",
            "check_interval",
            "grace",
            "oauth_tenant",
            "oauth_client_id",
            "oauth_client_secret",
            "oauth_client_secret_file",
            "oauth_scope",
            "oauth_token_url",
            "messages_per_second",
            "bytes_per_second",
            "global_messages_per_second",
            "global_bytes_per_second",
            "burst",
            "max_connections_per_mailbox",
        ] {
            assert!(text.contains(&format!("{key} = ")), "{key} undocumented");
        }
    }

    #[test]
    fn durations_and_cutover_section() {
        let text = format!(
            "{MINIMAL}[sync]\ninterval = \"1h30m\"\n[cutover]\ndomains = [\"example.com\"]\n\
             resolver = \"127.0.0.1:5353\"\ncheck_interval = 30\ngrace = \"2d\"\n"
        );
        let (_d, r) = load_str(&text);
        let c = r.unwrap();
        assert_eq!(c.sync.interval, Duration::from_secs(5400));
        assert_eq!(c.cutover.domains, ["example.com"]);
        assert_eq!(
            c.cutover.resolver_addr(),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(c.cutover.check_interval, Duration::from_secs(30));
        assert_eq!(c.cutover.grace, Duration::from_secs(2 * 86_400));

        // Both forms from the environment too; [cutover] is an overridable section.
        let prefix = "CUTOVER_TEST_ENV_DURATIONS_";
        std::env::set_var(format!("{prefix}SYNC__INTERVAL"), "90");
        std::env::set_var(format!("{prefix}CUTOVER__GRACE"), "1h");
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.toml", MINIMAL);
        let c = Config::load_with_env(&p, Env::prefixed(prefix)).unwrap();
        assert_eq!(c.sync.interval, Duration::from_secs(90));
        assert_eq!(c.cutover.grace, Duration::from_secs(3600));
    }

    #[test]
    fn port_follows_tls() {
        let (_d, r) = load_str(&format!("{MINIMAL}tls = \"starttls\"\n[sync]\n"));
        let c = r.unwrap();
        assert_eq!(c.upstream.tls, TlsMode::Starttls);
        assert_eq!(c.upstream.port(), 143);
        let plain = "tls = \"none\"\nallow_plaintext = true\n";
        assert_eq!(server(plain).port(), 143);
        assert_eq!(server(&format!("{plain}port = 1143\n")).port(), 1143);
        assert_eq!(server("port = 10993\n").port(), 10993);
    }

    /// With the section's `host` replaced by `host` and `extra` appended to [upstream].
    fn load_upstream(host: &str, extra: &str) -> Result<Config, ConfigError> {
        let text = MINIMAL.replace(
            "host = \"outlook.office365.com\"",
            &format!("host = \"{host}\"\n{extra}"),
        );
        load_str(&text).1
    }

    #[test]
    fn plaintext_only_to_loopback_unless_allowed() {
        for host in [
            "imap.example.org",
            "192.168.1.10",
            "10.0.0.1",
            "::2",
            "localhost.example",
        ] {
            let err = load_upstream(host, "tls = \"none\"")
                .unwrap_err()
                .to_string();
            assert!(err.contains("upstream.tls"), "{host}: {err}");
            assert!(
                err.contains("in clear") && err.contains("allow_plaintext"),
                "{host}: {err}"
            );
            assert!(err.contains("cutover.toml"), "{host}: {err}");
            // The operator may say the link is trusted.
            let c = load_upstream(host, "tls = \"none\"\nallow_plaintext = true").unwrap();
            assert!(c.upstream.allow_plaintext);
        }
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LocalHost.",
        ] {
            let c = load_upstream(host, "tls = \"none\"").unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(c.upstream.tls, TlsMode::None);
        }
        // The source side is checked the same way.
        let text = MINIMAL.replace(
            "host = \"imap.legacy.example\"",
            "host = \"imap.legacy.example\"\ntls = \"none\"",
        );
        let err = load_str(&text).1.unwrap_err().to_string();
        assert!(
            err.contains("source.tls") && err.contains("[source]"),
            "{err}"
        );
        // TLS needs no permission anywhere.
        load_upstream("imap.example.org", "tls = \"starttls\"").unwrap();
    }

    #[test]
    fn host_written_as_url_or_with_port_is_named() {
        for (host, hint) in [
            ("imaps://imap.example.org", "URL"),
            ("imap.example.org:993", "port = 993"),
            ("imap example.org", "not a host"),
            ("imaps://migrator:hunter2@imap.example.org", "URL"),
            ("migrator:hunter2@imap.example.org", "not a host"),
        ] {
            let err = load_upstream(host, "").unwrap_err().to_string();
            assert!(
                err.contains("upstream.host") && err.contains(hint),
                "{host}: {err}"
            );
            assert!(!err.contains("hunter2"), "{host}: {err}");
        }
        load_upstream("2001:db8::1", "").unwrap();
    }

    #[test]
    fn full_file() {
        let text = r#"
mailboxes = "/etc/cutover/mailboxes.csv"
[spool]
path = "/srv/spool"
compress = "inline"
[source]
host = "mail.example.org"
port = 1993
tls_ca_file = "/etc/ssl/legacy-ca.pem"
tls_verify = false
auth = "plain"
admin_user = "migrator"
admin_password = "s3cret"
admin_login = "{user}*{admin}"
max_connections = 4
timeout_secs = 30
[upstream]
host = "outlook.office365.com"
auth = "xoauth2"
oauth_tenant = "contoso.onmicrosoft.com"
oauth_client_id = "00000000-1111-2222-3333-444444444444"
oauth_client_secret = "app-secret"
messages_per_second = 2.5
bytes_per_second = 1000000
burst = 4
max_connections_per_mailbox = 1
[sync]
exclude_folders = ["Trash*", "INBOX.Junk"]
folder_map = { "INBOX.Old" = "Archive/Old" }
max_message_bytes = 1000
max_items_per_mailbox = 10
fetch_batch_bytes = 100
append_batch = 2
"#;
        let (_d, r) = load_str(text);
        let c = r.unwrap();
        assert_eq!(c.mailboxes, PathBuf::from("/etc/cutover/mailboxes.csv"));
        assert_eq!(c.spool.path, PathBuf::from("/srv/spool"));
        assert_eq!(c.spool.compress, Compress::Inline);
        assert_eq!(c.source.port(), 1993);
        assert!(!c.source.tls_verify);
        assert_eq!(c.source.auth, AuthMech::Plain);
        assert_eq!(c.source.admin_password.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(c.source.max_connections, 4);
        assert_eq!(c.upstream.auth, AuthMech::XOAuth2);
        assert_eq!(
            c.upstream.oauth_client_id.as_deref(),
            Some("00000000-1111-2222-3333-444444444444")
        );
        assert_eq!(
            c.upstream.oauth_client_secret.as_ref().unwrap().expose(),
            "app-secret"
        );
        assert_eq!(c.upstream.messages_per_second, 2.5);
        assert_eq!(c.upstream.bytes_per_second, 1_000_000);
        assert_eq!(c.upstream.burst, 4.0);
        assert_eq!(c.upstream.max_connections_per_mailbox, 1);
        assert_eq!(c.sync.exclude_folders, ["Trash*", "INBOX.Junk"]);
        assert_eq!(c.sync.folder_map["INBOX.Old"], "Archive/Old");
        assert_eq!(c.sync.append_batch, 2);
    }

    #[test]
    fn debug_hides_passwords() {
        let (_d, r) = load_str(&format!(
            "{MINIMAL}admin_user = \"admin\"\nadmin_password = \"hunter2\"\n"
        ));
        let dbg = format!("{:?}", r.unwrap());
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[test]
    fn env_overrides_file() {
        // A prefix of our own: the process environment is shared by parallel tests.
        let prefix = "CUTOVER_TEST_ENV_OVERRIDE_";
        std::env::set_var(format!("{prefix}SOURCE__HOST"), "imap2.example.org");
        std::env::set_var(format!("{prefix}UPSTREAM__MAX_CONNECTIONS"), "3");
        std::env::set_var(format!("{prefix}SYNC__APPEND_BATCH"), "5");
        // Not a configuration key: must be ignored, not rejected as unknown.
        std::env::set_var(format!("{prefix}LOG"), "debug");
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.toml", MINIMAL);
        let c = Config::load_with_env(&p, Env::prefixed(prefix)).unwrap();
        assert_eq!(c.source.host, "imap2.example.org");
        assert_eq!(c.upstream.max_connections, 3);
        assert_eq!(c.sync.append_batch, 5);
        assert_eq!(c.upstream.host, "outlook.office365.com");
    }

    #[test]
    fn env_secret_does_not_leak() {
        let prefix = "CUTOVER_TEST_ENV_SECRET_";
        std::env::set_var(format!("{prefix}SOURCE__ADMIN_PASSWORD"), "918273645");
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.toml", MINIMAL);
        let err = Config::load_with_env(&p, Env::prefixed(prefix))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("918273645"), "{err}");
        assert!(
            err.to_lowercase().contains("source.admin_password"),
            "{err}"
        );

        let prefix = "CUTOVER_TEST_ENV_SECRET_QUOTED_";
        std::env::set_var(format!("{prefix}SOURCE__ADMIN_PASSWORD"), "\"918273645\"");
        std::env::set_var(format!("{prefix}SOURCE__ADMIN_USER"), "admin");
        let c = Config::load_with_env(&p, Env::prefixed(prefix)).unwrap();
        assert_eq!(c.source.admin_password.unwrap().expose(), "918273645");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let (_d, r) = load_str(&format!("{MINIMAL}tls_verfy = false\n"));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("tls_verfy"), "{err}");
        assert!(err.contains("upstream"), "{err}");
        assert!(err.contains("cutover.toml"), "{err}");

        let (_d, r) = load_str(&format!("colour = 1\n{MINIMAL}"));
        let err = r.unwrap_err().to_string();
        assert!(
            err.contains("colour") && err.contains("cutover.toml"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_names_key_and_file() {
        let (_d, r) = load_str(&format!("{MINIMAL}tls = \"ssl\"\n"));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("upstream.tls"), "{err}");
        assert!(err.contains("ssl") && err.contains("cutover.toml"), "{err}");
    }

    #[test]
    fn missing_required_key() {
        let (_d, r) = load_str("[source]\nhost = \"a\"\n[upstream]\nhost = \"b\"\n");
        let err = r.unwrap_err().to_string();
        assert!(err.contains("mailboxes"), "{err}");
    }

    #[test]
    fn syntax_error_does_not_echo_the_line() {
        let (_d, r) = load_str(&format!("{MINIMAL}admin_password = \"hunter2\n"));
        let err = r.unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line"), "{err}");
        assert!(err.contains("cutover.toml"), "{err}");
    }

    #[test]
    fn missing_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.toml");
        let err = Config::load(&p).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc");
        fs::create_dir(&sub).unwrap();
        write(&sub, "pw", "pw\n");
        let text = r#"
mailboxes = "lists/mailboxes.csv"
[spool]
path = "spool"
[source]
host = "a"
tls_ca_file = "ca.pem"
admin_user = "admin"
admin_password_file = "pw"
[upstream]
host = "b"
tls_ca_file = "/abs/ca.pem"
"#;
        let p = write(&sub, "cutover.toml", text);
        let c = Config::load_with_env(&p, no_env()).unwrap();
        assert_eq!(c.mailboxes, sub.join("lists/mailboxes.csv"));
        assert_eq!(c.spool.path, sub.join("spool"));
        assert_eq!(c.source.tls_ca_file, Some(sub.join("ca.pem")));
        assert_eq!(c.source.admin_password_file, Some(sub.join("pw")));
        assert_eq!(c.upstream.tls_ca_file, Some(PathBuf::from("/abs/ca.pem")));
    }

    #[test]
    fn password_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "pw", "  secret with spaces \r\n");
        let text = format!("{MINIMAL}admin_user = \"admin\"\nadmin_password_file = \"pw\"\n");
        let p = write(dir.path(), "c.toml", &text);
        let c = Config::load_with_env(&p, no_env()).unwrap();
        assert_eq!(
            c.upstream.admin_password.as_ref().unwrap().expose(),
            "  secret with spaces "
        );

        // Missing password file: the error names it.
        let text = format!("{MINIMAL}admin_user = \"admin\"\nadmin_password_file = \"gone\"\n");
        let p = write(dir.path(), "c.toml", &text);
        let err = Config::load_with_env(&p, no_env()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::File { .. }));
        assert!(
            msg.contains("gone") && msg.contains("admin_password_file"),
            "{msg}"
        );

        // Both a password and a file: ambiguous.
        let text = format!(
            "{MINIMAL}admin_user = \"a\"\nadmin_password = \"x\"\nadmin_password_file = \"pw\"\n"
        );
        let p = write(dir.path(), "c.toml", &text);
        let msg = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
        assert!(msg.contains("upstream.admin_password_file"), "{msg}");
    }

    #[test]
    fn propagate_deletes_and_its_limit() {
        for (extra, percent) in [
            ("[sync]\npropagate_deletes = true\n", 10),
            (
                "[sync]\npropagate_deletes = true\nmax_delete_percent = 0\n",
                0,
            ),
            (
                "[sync]\npropagate_deletes = true\nmax_delete_percent = 100\n",
                100,
            ),
        ] {
            let (_d, r) = load_str(&format!("{MINIMAL}{extra}"));
            let c = r.unwrap_or_else(|e| panic!("{extra}: {e}"));
            assert!(c.sync.propagate_deletes, "{extra}");
            assert_eq!(c.sync.max_delete_percent, percent, "{extra}");
        }
        for extra in [
            "[sync]\npropagate_deletes = true\nmax_delete_percent = 101\n",
            "[sync]\npropagate_deletes = true\nmax_delete_percent = 300\n",
            "[sync]\npropagate_deletes = true\nmax_delete_percent = -1\n",
        ] {
            let (_d, r) = load_str(&format!("{MINIMAL}{extra}"));
            let err = r.unwrap_err().to_string();
            assert!(err.contains("max_delete_percent"), "{extra}: {err}");
        }
    }

    #[test]
    fn maildir_source() {
        let upstream = "[upstream]\nhost = \"outlook.office365.com\"\n";
        let text = format!(
            "mailboxes = \"m.csv\"\n[source]\nkind = \"maildir\"\n\
             path = \"/srv/vmail/{{domain}}/{{localpart}}/Maildir\"\n{upstream}"
        );
        let (_dir, r) = load_str(&text);
        let c = r.unwrap();
        assert_eq!(c.source.kind, SourceKind::Maildir);
        assert_eq!(c.source.layout, MaildirLayout::MaildirPlusPlus);
        assert_eq!(
            c.source.maildir_root("alice", "alice@example.com").unwrap(),
            PathBuf::from("/srv/vmail/example.com/alice/Maildir")
        );
        assert_eq!(
            c.source
                .maildir_root("bob@other.example", "b@example.com")
                .unwrap(),
            PathBuf::from("/srv/vmail/other.example/bob/Maildir")
        );
        // A CSV value must not lead out of the directory the template names.
        for user in ["../root", "a/b", ".."] {
            let e = c.source.maildir_root(user, "x@example.com").unwrap_err();
            assert!(e.to_string().contains("cannot name one directory"), "{e}");
        }
        for (source, key) in [
            ("kind = \"maildir\"\n", "source.path"),
            (
                "kind = \"maildir\"\npath = \"/srv/{domain}\"\n",
                "source.path",
            ),
            ("kind = \"maildir\"\npath = \"/srv/{usr}\"\n", "source.path"),
            (
                "kind = \"maildir\"\npath = \"/srv/{user}\"\nlayout = \"list\"\n",
                "source.folders",
            ),
        ] {
            let text = format!("mailboxes = \"m.csv\"\n[source]\n{source}{upstream}");
            let (_dir, r) = load_str(&text);
            match r {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{source}"),
                other => panic!("{source}: {other:?}"),
            }
        }
        let text = "mailboxes = \"m.csv\"\n[source]\nhost = \"imap.example\"\n\
             [upstream]\nkind = \"maildir\"\npath = \"/x/{user}\"\nhost = \"h.example\"\n";
        let (_dir, r) = load_str(text);
        assert!(
            matches!(r, Err(ConfigError::Invalid { ref key, .. }) if key == "upstream.kind"),
            "{r:?}"
        );
    }

    #[test]
    fn validation_errors() {
        let cases = [
            ("max_connections = 0\n", "upstream.max_connections"),
            ("timeout_secs = 0\n", "upstream.timeout_secs"),
            ("admin_user = \"admin\"\n", "upstream.admin_user"),
            (
                "admin_user = \"a\"\nadmin_password = \"p\"\nadmin_login = \"{usr}\"\n",
                "upstream.admin_login",
            ),
            (
                "admin_user = \"a\"\nadmin_password = \"p\"\nadmin_login = \"{admin}\"\n",
                "upstream.admin_login",
            ),
            (
                "[sync]\nexclude_folders = [\"a[\"]\n",
                "sync.exclude_folders",
            ),
            ("[sync]\nappend_batch = 0\n", "sync.append_batch"),
            (
                "max_connections_per_user = 0\n",
                "upstream.max_connections_per_user",
            ),
            ("[sync]\ninterval = \"5x\"\n", "sync.interval"),
            ("[sync]\ninterval = 0\n", "sync.interval"),
            (
                "[sync]\nmax_delete_percent = 101\n",
                "sync.max_delete_percent",
            ),
            (
                "[cutover]\nresolver = \"dns.example\"\n",
                "cutover.resolver",
            ),
            ("[cutover]\ndomains = [\"a b\"]\n", "cutover.domains"),
            ("[cutover]\ngrace = \"3 weeks\"\n", "cutover.grace"),
            ("[sync]\nfolder_map = { a = \"/\" }\n", "sync.folder_map"),
            (
                "[sync]\nfolder_map = { a = \"Contacts/x\" }\n",
                "sync.folder_map",
            ),
        ];
        for (extra, key) in cases {
            let (_d, r) = load_str(&format!("{MINIMAL}{extra}"));
            let err = r.unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
            assert!(err.contains("cutover.toml"), "{extra}: {err}");
        }
    }

    #[test]
    fn xoauth2_only_upstream() {
        let text = MINIMAL.replace(
            "host = \"imap.legacy.example\"",
            "host = \"imap.legacy.example\"\nauth = \"xoauth2\"",
        );
        let (_d, r) = load_str(&text);
        let err = r.unwrap_err().to_string();
        assert!(
            err.contains("source.auth") && err.contains("upstream"),
            "{err}"
        );
        let s = server(XOAUTH2);
        let err = s.credentials("a@b.c", None).unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
    }

    #[test]
    fn office365_keys() {
        // Defaults: no fixed rate, one session per mailbox, a one-second burst.
        let s = server("");
        assert_eq!(s.messages_per_second, 0.0);
        assert_eq!(s.bytes_per_second, 0);
        assert_eq!(s.burst, 1.0);
        assert_eq!(s.max_connections_per_mailbox, 1);
        assert!(s.oauth_tenant.is_none());

        // The secret from a file; the tenant goes into Microsoft's URL.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "secret", "from-file\n");
        let text = format!(
            "{MINIMAL}auth = \"xoauth2\"\noauth_tenant = \"contoso.example\"\n\
             oauth_client_id = \"cid\"\noauth_client_secret_file = \"secret\"\n"
        );
        let p = write(dir.path(), "c.toml", &text);
        let c = Config::load_with_env(&p, no_env()).unwrap();
        assert_eq!(
            c.upstream.oauth_client_secret.as_ref().unwrap().expose(),
            "from-file"
        );
        assert_eq!(
            crate::oauth::token_url(&c.upstream).unwrap(),
            "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
        );
        assert!(!format!("{c:?}").contains("from-file"));

        let cases = [
            ("auth = \"xoauth2\"\n", "upstream.oauth_client_id"),
            (
                "auth = \"xoauth2\"\noauth_client_id = \"c\"\noauth_tenant = \"t\"\n",
                "upstream.oauth_client_secret",
            ),
            (
                "auth = \"xoauth2\"\noauth_client_id = \"c\"\noauth_client_secret = \"s\"\n",
                "upstream.oauth_tenant",
            ),
            (
                "auth = \"xoauth2\"\noauth_client_id = \"c\"\noauth_client_secret = \"s\"\n\
                 oauth_token_url = \"http://login.example.com/token\"\n",
                "upstream.oauth_token_url",
            ),
            (
                "oauth_client_secret = \"s\"\noauth_client_secret_file = \"f\"\n",
                "upstream.oauth_client_secret_file",
            ),
            ("messages_per_second = -1\n", "upstream.messages_per_second"),
            ("burst = 0\n", "upstream.burst"),
            (
                "max_connections_per_mailbox = 0\n",
                "upstream.max_connections_per_mailbox",
            ),
        ];
        for (extra, key) in cases {
            let (_d, r) = load_str(&format!("{MINIMAL}{extra}"));
            let err = r.unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
            assert!(!err.contains("\"s\""), "{extra}: {err}");
        }
        // Upstream-only keys are refused for the source.
        let text = MINIMAL.replace(
            "host = \"imap.legacy.example\"",
            "host = \"imap.legacy.example\"\nmessages_per_second = 3",
        );
        let (_d, r) = load_str(&text);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("source.messages_per_second"), "{err}");
        // Plain http is fine for a loopback token endpoint (tests).
        let (_d, r) = load_str(&format!(
            "{MINIMAL}auth = \"xoauth2\"\noauth_client_id = \"c\"\noauth_client_secret = \"s\"\n\
             oauth_token_url = \"http://127.0.0.1:8080/token\"\n"
        ));
        r.unwrap();
    }

    #[test]
    fn credentials_user_password() {
        let pw = Secret::new("userpw");
        match server("").credentials("alice", Some(&pw)).unwrap() {
            Credentials::Login { user, password } => {
                assert_eq!(user, "alice");
                assert_eq!(password.expose(), "userpw");
            }
            other => panic!("{other:?}"),
        }
        match server("auth = \"plain\"\n")
            .credentials("alice", Some(&pw))
            .unwrap()
        {
            Credentials::Plain {
                authzid,
                authcid,
                password,
            } => {
                assert_eq!(authzid, None);
                assert_eq!(authcid, "alice");
                assert_eq!(password.expose(), "userpw");
            }
            other => panic!("{other:?}"),
        }
        let err = server("")
            .credentials("alice", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no password for alice in the CSV and no admin_user"),
            "{err}"
        );
        let empty = Secret::new("");
        assert!(server("").credentials("alice", Some(&empty)).is_err());
    }

    #[test]
    fn credentials_admin_authzid() {
        let s = server("admin_user = \"admin\"\nadmin_password = \"adminpw\"\n");
        let user_pw = Secret::new("ignored");
        match s.credentials("alice@example.com", Some(&user_pw)).unwrap() {
            Credentials::Plain {
                authzid,
                authcid,
                password,
            } => {
                assert_eq!(authzid.as_deref(), Some("alice@example.com"));
                assert_eq!(authcid, "admin");
                assert_eq!(password.expose(), "adminpw");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_admin_template() {
        let s = server(
            "admin_user = \"master\"\nadmin_password = \"mpw\"\nadmin_login = \"{user}*{admin}\"\n",
        );
        match s.credentials("alice@example.com", None).unwrap() {
            Credentials::Login { user, password } => {
                assert_eq!(user, "alice@example.com*master");
                assert_eq!(password.expose(), "mpw");
            }
            other => panic!("{other:?}"),
        }
        let s = server(
            "auth = \"plain\"\nadmin_user = \"svc\"\nadmin_password = \"mpw\"\n\
             admin_login = \"{domain}/{admin}/{localpart}\"\n",
        );
        match s.credentials("bob@example.org", None).unwrap() {
            Credentials::Plain {
                authzid,
                authcid,
                password,
            } => {
                assert_eq!(authzid, None);
                assert_eq!(authcid, "example.org/svc/bob");
                assert_eq!(password.expose(), "mpw");
            }
            other => panic!("{other:?}"),
        }
        // No domain: {domain} is empty, {localpart} the whole name.
        let s = server(
            "admin_user = \"svc\"\nadmin_password = \"mpw\"\nadmin_login = \"{localpart}@{domain}\"\n",
        );
        assert_eq!(s.credentials("carol", None).unwrap().identity(), "carol@");
        // Braces inside the user name are not expanded again.
        assert_eq!(
            expand_template("{user}*{admin}", "{admin}", "root"),
            "{admin}*root"
        );
    }
}
