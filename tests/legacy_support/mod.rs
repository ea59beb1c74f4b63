//! A Cyrus or Courier source (cutover::legacy_servers) with a Dovecot destination shaped
//! like Exchange Online, for tests/legacy_sources.rs.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use cutover::imap::client::{Client, Endpoint, Security};
use cutover::imap::Credentials;
use cutover::legacy_servers::{self, Kind, Layout, LegacyServer, ADMIN_PASSWORD, ADMIN_USER};
use cutover::secret::Secret;
use cutover::testbed::{Dovecot, DovecotOptions, Flavor, TestCa, MASTER_PASSWORD, MASTER_USER};

use crate::common::{snapshot_session, Snapshot};

/// How cutover logs in to the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// Each user's own password.
    User,
    /// The admin for every user, the server's way ([`Kind::admin_login`]).
    Admin,
    /// The admin with an authzid (AUTHENTICATE PLAIN), whatever the server supports.
    Authzid,
}

pub struct Bed {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub source: LegacyServer,
    pub dest: Dovecot,
    /// (source login, password, destination address)
    pub users: Vec<(String, String, String)>,
}

impl Bed {
    /// Starts `kind` and a destination Dovecot, or None (after a loud notice) where one of
    /// them cannot run and CI is not set.
    pub fn start(kind: Kind, users: &[(&str, &str, &str)]) -> Option<Bed> {
        Self::start_with(kind, users, Layout::Standard)
    }

    /// [`Bed::start`] with the source's folder naming `layout`.
    pub fn start_with(kind: Kind, users: &[(&str, &str, &str)], layout: Layout) -> Option<Bed> {
        if !cutover::testbed::require_dovecot() || !legacy_servers::require(kind) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("cutover-legacy-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca = TestCa::new(dir.path()).unwrap();
        let pairs: Vec<(&str, &str)> = users.iter().map(|(l, p, _)| (*l, *p)).collect();
        let source = LegacyServer::start_with(kind, &dir.path().join("source"), &pairs, layout)
            .unwrap_or_else(|e| panic!("{} starts: {e:#}", kind.name()));
        let dest = Dovecot::start_in(
            &dir.path().join("dest"),
            DovecotOptions {
                flavor: Flavor::Destination,
                users: users
                    .iter()
                    .map(|(_, p, a)| (a.to_string(), p.to_string()))
                    .collect(),
                master_user: MASTER_USER.into(),
                master_password: MASTER_PASSWORD.into(),
            },
            &ca,
        )
        .expect("destination Dovecot starts");
        Some(Bed {
            dir,
            ca,
            source,
            dest,
            users: users
                .iter()
                .map(|(l, p, a)| (l.to_string(), p.to_string(), a.to_string()))
                .collect(),
        })
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// A `cutover.toml` for all users, logging in to the source as `login`; `extra` is
    /// appended (e.g. a `[sync]` section).
    pub fn config(&self, login: Login, extra: &str) -> PathBuf {
        let dir = self.work_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut csv = String::from("EmailAddress,UserName,Password\n");
        for (l, p, a) in &self.users {
            csv.push_str(&format!("{a},{l},{p}\n"));
        }
        std::fs::write(dir.join("mailboxes.csv"), csv).unwrap();
        let source_auth = match login {
            Login::User => "auth = \"login\"".to_string(),
            Login::Admin => format!(
                "auth = \"{}\"\nadmin_user = \"{ADMIN_USER}\"\nadmin_password = \"{ADMIN_PASSWORD}\"\nadmin_login = \"{}\"",
                if self.source.kind().admin_login() == "authzid" { "plain" } else { "login" },
                self.source.kind().admin_login()
            ),
            Login::Authzid => format!(
                "auth = \"plain\"\nadmin_user = \"{ADMIN_USER}\"\nadmin_password = \"{ADMIN_PASSWORD}\"\nadmin_login = \"authzid\""
            ),
        };
        let toml = format!(
            r#"mailboxes = "mailboxes.csv"

[spool]
path = "spool"

[source]
host = "127.0.0.1"
port = {sport}
tls = "none"
{source_auth}
max_connections = 4

[upstream]
host = "127.0.0.1"
port = {dport}
tls = "implicit"
tls_ca_file = "{ca}"
auth = "plain"
admin_user = "{MASTER_USER}"
admin_password = "{MASTER_PASSWORD}"
admin_login = "authzid"
max_connections = 4

{extra}
"#,
            sport = self.source.port(),
            dport = self.dest.tls_port(),
            ca = self.ca.ca_pem_path().display(),
        );
        let path = dir.join("cutover.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// A session on the source as `user` with the user's password.
    pub async fn source_session(&self, user: &str) -> Client {
        let pw = &self.users.iter().find(|u| u.0 == user).expect("user").1;
        let ep = Endpoint {
            host: "127.0.0.1".into(),
            port: self.source.port(),
            security: Security::None,
            tls: None,
            timeout: Duration::from_secs(30),
            max_response_bytes: 64 << 20,
        };
        let mut c = Client::connect(&ep).await.expect("source connects");
        c.login(&Credentials::Login {
            user: user.to_string(),
            password: Secret::new(pw.as_str()),
        })
        .await
        .expect("source login");
        c
    }

    /// Every message of every folder of `user` at the source, as the destination Dovecot
    /// stores it: Dovecot keeps no NUL byte, it saves 0x80 instead (also when the message
    /// came in a literal8), the byte cutover puts in where it cannot send BINARY.
    pub async fn source_snapshot(&self, user: &str) -> Snapshot {
        let mut c = self.source_session(user).await;
        let snap = snapshot_session(&mut c, Some(0x80)).await;
        c.logout().await;
        snap
    }

    /// Every message of every folder of `address` at the destination.
    pub async fn dest_snapshot(&self, address: &str) -> Snapshot {
        let ep = Endpoint {
            host: "127.0.0.1".into(),
            port: self.dest.tls_port(),
            security: Security::Implicit,
            tls: Some(
                cutover::imap::transport::TlsSettings::new(Some(self.ca.ca_pem_path()))
                    .expect("CA loads"),
            ),
            timeout: Duration::from_secs(30),
            max_response_bytes: 64 << 20,
        };
        let mut c = Client::connect(&ep).await.expect("destination connects");
        c.login(&Credentials::Plain {
            authzid: Some(address.to_string()),
            authcid: MASTER_USER.to_string(),
            password: Secret::new(MASTER_PASSWORD),
        })
        .await
        .expect("destination login");
        let snap = snapshot_session(&mut c, None).await;
        c.logout().await;
        snap
    }
}
