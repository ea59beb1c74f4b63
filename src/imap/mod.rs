//! The IMAP client, built on imap-codec over tokio (+ tokio-rustls).
//!
//! - [`transport`]: TCP, implicit TLS and STARTTLS; the only place that touches sockets.
//! - [`client`]: tagged commands, untagged data and literals, capability-driven behaviour.

use crate::secret::Secret;

/// How to log in.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `LOGIN user password`.
    Login { user: String, password: Secret },
    /// `AUTHENTICATE PLAIN`, with an authorisation identity when an admin logs in as a user.
    Plain {
        authzid: Option<String>,
        authcid: String,
        password: Secret,
    },
    /// `AUTHENTICATE XOAUTH2` with a bearer token.
    XOAuth2 { user: String, token: Secret },
}

impl Credentials {
    /// The identity the session acts as, for messages to the admin.
    pub fn identity(&self) -> &str {
        match self {
            Credentials::Login { user, .. } => user,
            Credentials::Plain {
                authzid: Some(z), ..
            } => z,
            Credentials::Plain { authcid, .. } => authcid,
            Credentials::XOAuth2 { user, .. } => user,
        }
    }
}

/// A folder as LIST reports it, name already decoded from modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFolder {
    pub name: String,
    pub delimiter: Option<char>,
    /// Attributes, lowercased, with their backslash: `\noselect`, `\sent`, `\haschildren`...
    pub attributes: Vec<String>,
}

impl ListedFolder {
    pub fn selectable(&self) -> bool {
        !self
            .attributes
            .iter()
            .any(|a| a == "\\noselect" || a == "\\nonexistent")
    }

    /// The RFC 6154 special-use attribute, if any (`\sent`, `\trash`, `\junk`, `\drafts`,
    /// `\archive`, `\all`, `\flagged`).
    pub fn special_use(&self) -> Option<&str> {
        const USES: [&str; 7] = [
            "\\sent",
            "\\trash",
            "\\junk",
            "\\drafts",
            "\\archive",
            "\\all",
            "\\flagged",
        ];
        self.attributes
            .iter()
            .map(String::as_str)
            .find(|a| USES.contains(a))
    }
}

pub mod client;
pub mod framer;
pub mod response;
pub mod transport;

pub use client::{Capabilities, Client, ImapError, SelectInfo};
