//! Letters to the users (`[notify]`): a notice in the old INBOX before the migration, and
//! a welcome in the Office 365 INBOX when it is over.
//!
//! Microsoft's IMAP migration guide leaves both to the admin (tell the users what will
//! happen; send them a welcome letter). cutover already holds a session to both
//! mailboxes of every user, so it delivers them by IMAP APPEND, with no SMTP server, to
//! where each user looks at that moment.
//!
//! - [`template`]: the message templates, checked at start, filled per mailbox;
//! - [`words`]: what the numbers say, in the letter's language;
//! - [`command`]: `cutover notify before|after`;
//! - [`send`]: the deliveries, recorded in the spool (`spool/notified.rs`) so each
//!   happens once.
//!
//! The notice is the only write cutover ever makes to the source, so it is sent by an
//! explicit command (`cutover notify before`) and never by itself; the message it
//! appends is recorded in the spool as skipped, so the migration leaves it behind.

pub mod command;
pub mod send;
pub mod template;
pub mod words;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use template::{Template, TemplateError, Values};

/// `[notify]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The notice APPENDed to the source INBOX by `cutover notify before`.
    #[serde(default)]
    pub before: Option<PathBuf>,
    /// The welcome APPENDed to the Office 365 INBOX when a mailbox is Completed. Unset: no
    /// welcome.
    #[serde(default)]
    pub after: Option<PathBuf>,
    /// What `{cutover_date}` says, as the letter should print it ("Friday 12 December").
    #[serde(default)]
    pub cutover_date: Option<String>,
    /// The language of the words cutover writes into the letters ({skipped}, {bytes}):
    /// "en" (default) or "da".
    #[serde(default)]
    pub language: Language,
}

/// The language of the words cutover fills in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Da,
}

/// Which letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The notice at the source, before the migration.
    Before,
    /// The welcome at the destination, after it.
    After,
}

impl Kind {
    /// Its name in the spool and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Before => "before",
            Kind::After => "after",
        }
    }
}

impl NotifyConfig {
    /// The template of `kind`, if one is configured.
    pub fn path(&self, kind: Kind) -> Option<&Path> {
        match kind {
            Kind::Before => self.before.as_deref(),
            Kind::After => self.after.as_deref(),
        }
    }

    /// Loads and checks the template of `kind` (None when not configured): a template
    /// that uses `{cutover_date}` needs `cutover_date`.
    pub fn template(&self, kind: Kind) -> Result<Option<Template>, TemplateError> {
        let Some(path) = self.path(kind) else {
            return Ok(None);
        };
        let t = Template::load(path)?;
        if let Some((_, line)) = t.uses().iter().find(|(n, _)| n == "cutover_date") {
            if self
                .cutover_date
                .as_deref()
                .is_none_or(|d| d.trim().is_empty())
            {
                return Err(TemplateError {
                    line: *line,
                    message: "uses {cutover_date}, but [notify] cutover_date is not set".into(),
                });
            }
        }
        Ok(Some(t))
    }

    /// Makes relative template paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.before, &mut self.after].into_iter().flatten() {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_letters_are_good_templates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("letters");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let t = Template::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let values = Values {
                email: "a@example.com".into(),
                display_name: "Ærø, Jørgen".into(),
                ..Default::default()
            };
            let msg = t.fill(&values, "x@example.com", "Thu, 03 Dec 2026 12:00:00 +0000");
            let head = msg.split(|b| *b == b'\n').take_while(|l| *l != b"\r");
            assert!(head.flatten().all(u8::is_ascii), "{}", path.display());
            n += 1;
        }
        assert_eq!(n, 4, "English and Danish, notice and welcome");
        // The notices need cutover_date, the config says so at start.
        let cfg = NotifyConfig {
            before: Some(dir.join("notice.da.eml")),
            ..Default::default()
        };
        assert!(cfg
            .template(Kind::Before)
            .unwrap_err()
            .message
            .contains("cutover_date"));
    }
}
