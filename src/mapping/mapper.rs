//! Which destination folder each source folder goes to.
//!
//! The rules, first match wins (see [`FolderMapper::map`]):
//!
//! 1. `exclude_folders` globs: not copied at all.
//! 2. `folder_map`: the operator's explicit choice beats every guess. Subfolders of a
//!    mapped folder follow it.
//! 3. `INBOX` is `INBOX`.
//! 4. The source folder's special-use attribute (RFC 6154: `\Sent`, `\Trash`, `\Junk`,
//!    `\Drafts`, `\Archive`): the destination folder with the same attribute, or
//!    Exchange's default name for it. Mail then lands where Outlook shows sent items,
//!    not in a second "Sent" folder beside "Sent Items".
//! 5. Well-known names of top-level folders (Sent, Gesendet, Corbeille, Spam...), for
//!    servers without special-use: same destination as 4. Their subfolders follow.
//! 6. Otherwise the same path, re-joined with the destination's namespace.
//!
//! Then, for Exchange: a top-level name Exchange reserves for non-mail items (Calendar,
//! Contacts...) gets " (imported)" appended, and a name that exists on the destination
//! in another case is spelled as the destination spells it (Exchange compares folder
//! names case-insensitively, so `work` *is* `Work` there). [`FolderMapper::map_all`]
//! finally makes sure two source folders that differ only in case (`Work`, `work`, legal
//! on a Unix server) do not silently merge: the later one gets " (2)".

use super::{components, join, sanitize_component, MappingError, Namespace};
use crate::imap::ListedFolder;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::{BTreeMap, HashMap};

/// Why a folder goes where it goes; reported to the admin with the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapRule {
    /// `folder_map` in the configuration (for the folder itself or an ancestor).
    FolderMap,
    /// The folder is INBOX.
    Inbox,
    /// The source folder's special-use attribute, e.g. `\sent` (lowercase, as in
    /// [`ListedFolder::attributes`]).
    SpecialUse(String),
    /// A well-known name such as "Sent" or "Papierkorb" (or a folder below one).
    WellKnownName,
    /// Same path on the destination (possibly spelled in the destination's case).
    SamePath,
    /// The same path could not be used as is; the note says why and how it was changed.
    Renamed(String),
}

/// The outcome of mapping one source folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Not copied: matched this `exclude_folders` pattern.
    Excluded { pattern: String },
    /// Copied into the destination folder `dest` (full destination name, prefix
    /// included, destination delimiter).
    To { dest: String, rule: MapRule },
}

impl Mapped {
    /// The destination folder, unless excluded.
    pub fn dest(&self) -> Option<&str> {
        match self {
            Mapped::To { dest, .. } => Some(dest),
            Mapped::Excluded { .. } => None,
        }
    }
}

/// Special-use attributes that designate a mail folder Exchange also has, with the name
/// Exchange gives that folder (used when the destination LIST does not show the
/// attribute). `\All` and `\Flagged` are deliberately absent: they are virtual views on
/// Gmail-like servers and are copied (or better, excluded) like ordinary folders.
const EXCHANGE_DEFAULTS: [(&str, &str); 5] = [
    ("\\sent", "Sent Items"),
    ("\\trash", "Deleted Items"),
    ("\\junk", "Junk Email"),
    ("\\drafts", "Drafts"),
    ("\\archive", "Archive"),
];

/// Names clients and servers have used for the special folders, in several languages,
/// compared case-insensitively against top-level source folders.
const WELL_KNOWN: [(&str, &[&str]); 5] = [
    (
        "\\sent",
        &[
            "Sent",
            "Sent Messages",
            "Sent Mail",
            "Sent Items",
            "Gesendet",
            "Gesendete Objekte",
            "Envoyés",
            "Éléments envoyés",
            "Enviados",
            "Inviata",
            "Posta inviata",
            "Verzonden",
        ],
    ),
    (
        "\\trash",
        &[
            "Trash",
            "Deleted",
            "Deleted Messages",
            "Deleted Items",
            "Papierkorb",
            "Gelöschte Objekte",
            "Corbeille",
            "Papelera",
            "Cestino",
            "Prullenbak",
        ],
    ),
    (
        "\\junk",
        &[
            "Junk",
            "Spam",
            "Junk E-mail",
            "Junk Email",
            "Bulk Mail",
            "Spamverdacht",
            "Indésirables",
        ],
    ),
    (
        "\\drafts",
        &[
            "Drafts",
            "Entwürfe",
            "Brouillons",
            "Borradores",
            "Bozze",
            "Concepten",
        ],
    ),
    ("\\archive", &["Archive", "Archives", "Archiv"]),
];

/// Top-level folders Exchange keeps for calendar, contacts and other non-mail items; mail
/// appended there is refused or becomes invisible, so a source folder of that name is
/// imported as "<name> (imported)".
const EXCHANGE_RESERVED: [&str; 9] = [
    "Calendar",
    "Contacts",
    "Tasks",
    "Notes",
    "Journal",
    "Files",
    "Conversation History",
    "Sync Issues",
    "Outbox",
];

/// Case folding for comparing folder names the way Exchange does (Unicode-aware, so
/// `ENTWÜRFE` matches `Entwürfe`).
fn fold(s: &str) -> String {
    s.to_lowercase()
}

fn well_known(name: &str) -> Option<&'static str> {
    let name = fold(name.trim());
    WELL_KNOWN
        .iter()
        .find(|(_, names)| names.iter().any(|n| fold(n) == name))
        .map(|(attr, _)| *attr)
}

fn reserved(name: &str) -> Option<&'static str> {
    EXCHANGE_RESERVED
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name.trim()))
        .copied()
}

fn is_inbox(s: &str) -> bool {
    s.eq_ignore_ascii_case("INBOX")
}

/// Maps source folder names to destination folder names for one mailbox.
///
/// Built once per mailbox from both servers' namespaces, the destination's LIST and the
/// `[sync]` configuration; [`FolderMapper::map`] and [`FolderMapper::map_all`] are then
/// pure. The result depends on the destination LIST (existing spellings, special-use
/// folders) and, for `map_all`, on the whole source list; callers that must keep a
/// folder's destination stable across runs should record the mapping when they first
/// use it rather than recompute it.
#[derive(Debug, Clone)]
pub struct FolderMapper {
    source_ns: Namespace,
    dest_ns: Namespace,
    /// Folded destination name -> the destination's spelling.
    dest_names: HashMap<String, String>,
    /// Special-use attribute -> first destination folder carrying it.
    dest_special: HashMap<String, String>,
    /// Folded `folder_map` key -> destination path components.
    folder_map: HashMap<String, Vec<String>>,
    exclude_patterns: Vec<String>,
    excludes: GlobSet,
}

impl FolderMapper {
    /// `dest_list` is the destination's LIST (names decoded), `folder_map` and `exclude`
    /// are `[sync] folder_map` and `exclude_folders`.
    ///
    /// Errors on a pattern that is not a valid glob, on two `folder_map` keys that differ
    /// only in case (which one would win is not obvious), and on a `folder_map` target
    /// that is empty or inside a folder Exchange reserves for non-mail items.
    pub fn new(
        source_ns: Namespace,
        dest_ns: Namespace,
        dest_list: &[ListedFolder],
        folder_map: &BTreeMap<String, String>,
        exclude: &[String],
    ) -> Result<Self, MappingError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in exclude {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|e| MappingError::BadGlob {
                    pattern: pattern.clone(),
                    message: e.kind().to_string(),
                })?;
            builder.add(glob);
        }
        let excludes = builder.build().map_err(|e| MappingError::BadGlob {
            pattern: exclude.join(", "),
            message: e.to_string(),
        })?;

        let mut map = HashMap::new();
        for (key, target) in folder_map {
            let bad = |message: String| MappingError::BadFolderMap {
                key: key.clone(),
                message,
            };
            let comps: Vec<String> = target
                .trim_matches('/')
                .split('/')
                .map(|c| c.trim().to_string())
                .collect();
            if comps.iter().all(String::is_empty) {
                return Err(bad("empty destination folder".into()));
            }
            if let Some(r) = reserved(&comps[0]) {
                return Err(bad(format!(
                    "destination {target:?} is inside {r:?}, which Exchange reserves for \
                     non-mail items"
                )));
            }
            if map.insert(fold(key), comps).is_some() {
                return Err(bad(
                    "another key differs only in case; keys match case-insensitively".into(),
                ));
            }
        }

        let mut dest_names = HashMap::new();
        let mut dest_special = HashMap::new();
        for f in dest_list {
            dest_names
                .entry(fold(&f.name))
                .or_insert_with(|| f.name.clone());
            if let Some(attr) = f.special_use() {
                dest_special
                    .entry(attr.to_string())
                    .or_insert_with(|| f.name.clone());
            }
        }

        Ok(FolderMapper {
            source_ns,
            dest_ns,
            dest_names,
            dest_special,
            folder_map: map,
            exclude_patterns: exclude.to_vec(),
            excludes,
        })
    }

    /// Maps one folder on its own. Identical to its entry in [`FolderMapper::map_all`]
    /// except that case clashes with other folders are not resolved and subfolders of
    /// a special-use folder do not follow it (both need the whole list).
    pub fn map(&self, source: &ListedFolder) -> Mapped {
        self.map_inner(source, &HashMap::new(), true)
    }

    /// Maps a mailbox's whole folder list, in order of source name (so parents come
    /// before their children and the outcome does not depend on LIST order).
    ///
    /// In addition to [`FolderMapper::map`]:
    /// - subfolders follow their parent wherever it went (`Sent/2019` below a `\Sent`
    ///   folder goes to `Sent Items/2019`);
    /// - when two different source folders would get the same destination by keeping
    ///   their path (same name up to case, or made equal by delimiter substitution), the
    ///   later one gets " (2)" (" (3)"...) appended, with [`MapRule::Renamed`], and its
    ///   subfolders move with it. Folders that deliberately share a destination
    ///   (`folder_map`, special-use, well-known names, INBOX) are merged, not renamed.
    pub fn map_all(&self, folders: &[ListedFolder]) -> Vec<(ListedFolder, Mapped)> {
        let mut sorted: Vec<&ListedFolder> = folders.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        // Source components of a folder that did not keep its path -> its destination.
        let mut moved: HashMap<Vec<String>, String> = HashMap::new();
        // Folded destination of a path-derived mapping -> the source folder that has it.
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut out = Vec::with_capacity(sorted.len());
        // A source that marks its special folders (RFC 6154) has said which they are: a
        // folder that only looks like one by name (`Entwürfe` beside a `\Drafts` folder)
        // is then a folder of its own. Names are the guess for servers without them.
        let by_name = !sorted.iter().any(|f| f.special_use().is_some());
        for folder in sorted {
            let comps = components(&folder.name, &self.source_ns_for(folder));
            let mut mapped = self.map_inner(folder, &moved, by_name);
            if let Mapped::To { dest, rule } = &mut mapped {
                if matches!(rule, MapRule::SamePath | MapRule::Renamed(_)) {
                    if let Some(owner) = owners.get(&fold(dest)).filter(|o| **o != folder.name) {
                        let mut n = 2;
                        let renamed = loop {
                            let candidate = format!("{dest} ({n})");
                            if !owners.contains_key(&fold(&candidate)) {
                                break self.spell(candidate);
                            }
                            n += 1;
                        };
                        let note = format!(
                            "{dest:?} is already the destination of {owner:?} (Exchange \
                             folder names ignore case); renamed {renamed:?}"
                        );
                        *rule = MapRule::Renamed(match rule {
                            MapRule::Renamed(earlier) => format!("{earlier}; {note}"),
                            _ => note,
                        });
                        *dest = renamed;
                    }
                    owners.insert(fold(dest), folder.name.clone());
                }
                if *rule != MapRule::SamePath {
                    moved.insert(comps, dest.clone());
                }
            }
            out.push((folder.clone(), mapped));
        }
        out
    }

    /// The source namespace with the delimiter LIST gave for this folder, which is
    /// authoritative (the namespace's may be missing).
    fn source_ns_for(&self, folder: &ListedFolder) -> Namespace {
        Namespace {
            prefix: self.source_ns.prefix.clone(),
            delimiter: folder.delimiter.or(self.source_ns.delimiter),
        }
    }

    fn map_inner(
        &self,
        folder: &ListedFolder,
        moved: &HashMap<Vec<String>, String>,
        by_name: bool,
    ) -> Mapped {
        let ns = self.source_ns_for(folder);
        let comps = components(&folder.name, &ns);
        let path = comps.join("/");

        if let Some(pattern) = self.excluded(&folder.name, &path) {
            return Mapped::Excluded { pattern };
        }
        if let Some(dest) = self.folder_map_dest(&folder.name, &comps, &ns) {
            return Mapped::To {
                dest,
                rule: MapRule::FolderMap,
            };
        }
        if is_inbox(&folder.name) {
            return Mapped::To {
                dest: "INBOX".to_string(),
                rule: MapRule::Inbox,
            };
        }
        if comps.len() == 1 && is_inbox(&comps[0]) {
            // `INBOX.Inbox` under an `INBOX.` prefix is a folder of its own; at the top
            // of the destination it would fall on INBOX (Exchange ignores case).
            let mut notes = vec![format!(
                "{:?} is not INBOX itself; kept as a folder inside INBOX",
                folder.name
            )];
            let dest = self.extend("INBOX".to_string(), &comps, &mut notes);
            return Mapped::To {
                dest,
                rule: MapRule::Renamed(notes.join("; ")),
            };
        }
        if let Some(attr) = folder
            .special_use()
            .filter(|a| EXCHANGE_DEFAULTS.iter().any(|(d, _)| d == a))
        {
            return Mapped::To {
                dest: self.special_dest(attr),
                rule: MapRule::SpecialUse(attr.to_string()),
            };
        }
        if comps.len() == 1 && by_name {
            if let Some(attr) = well_known(&comps[0]) {
                return Mapped::To {
                    dest: self.special_dest(attr),
                    rule: MapRule::WellKnownName,
                };
            }
        }
        // Below a folder that went elsewhere (known only to map_all): follow it.
        for i in (1..comps.len()).rev() {
            if let Some(parent_dest) = moved.get(&comps[..i]) {
                let mut notes = Vec::new();
                let dest = self.extend(parent_dest.clone(), &comps[i..], &mut notes);
                let plain = join(&comps, &self.dest_ns).0;
                if fold(&dest) == fold(&plain) {
                    return Mapped::To {
                        dest,
                        rule: MapRule::SamePath,
                    };
                }
                notes.insert(
                    0,
                    format!(
                        "inside {:?}, which goes to {parent_dest:?}",
                        comps[..i].join("/")
                    ),
                );
                return Mapped::To {
                    dest,
                    rule: MapRule::Renamed(notes.join("; ")),
                };
            }
        }
        if comps.len() > 1 && by_name {
            if let Some(attr) = well_known(&comps[0]) {
                let mut notes = Vec::new();
                let dest = self.extend(self.special_dest(attr), &comps[1..], &mut notes);
                return Mapped::To {
                    dest,
                    rule: MapRule::WellKnownName,
                };
            }
        }

        let mut comps = comps;
        let mut notes = Vec::new();
        if let Some(r) = reserved(&comps[0]) {
            let renamed = format!("{} (imported)", comps[0]);
            notes.push(format!(
                "Exchange reserves {r:?} for non-mail items; renamed {renamed:?}"
            ));
            comps[0] = renamed;
        }
        let dest = self.build(&comps, &mut notes);
        let rule = if notes.is_empty() {
            MapRule::SamePath
        } else {
            MapRule::Renamed(notes.join("; "))
        };
        Mapped::To { dest, rule }
    }

    /// The first exclude pattern (in configuration order) matching the source's full
    /// name or its `/`-joined path.
    fn excluded(&self, name: &str, path: &str) -> Option<String> {
        let mut hits = self.excludes.matches(name);
        hits.extend(self.excludes.matches(path));
        hits.into_iter()
            .min()
            .map(|i| self.exclude_patterns[i].clone())
    }

    /// `folder_map` for the folder itself, else for its nearest ancestor with the rest
    /// of the path appended. Keys are the source's full name or the `/`-joined path.
    fn folder_map_dest(&self, name: &str, comps: &[String], ns: &Namespace) -> Option<String> {
        let mut notes = Vec::new();
        if let Some(target) = self.folder_map.get(&fold(name)) {
            return Some(self.build(target, &mut notes));
        }
        let delimiter = ns.delimiter.map(String::from).unwrap_or_default();
        for i in (1..=comps.len()).rev() {
            let as_path = comps[..i].join("/");
            let as_name = format!("{}{}", ns.prefix, comps[..i].join(&delimiter));
            let target = self
                .folder_map
                .get(&fold(&as_path))
                .or_else(|| self.folder_map.get(&fold(&as_name)));
            if let Some(target) = target {
                let base = self.build(target, &mut notes);
                return Some(self.extend(base, &comps[i..], &mut notes));
            }
        }
        None
    }

    /// Destination for a special-use attribute: the destination folder that carries it,
    /// else Exchange's default name.
    fn special_dest(&self, attr: &str) -> String {
        if let Some(name) = self.dest_special.get(attr) {
            return name.clone();
        }
        let default = EXCHANGE_DEFAULTS
            .iter()
            .find(|(a, _)| *a == attr)
            .map_or("Archive", |(_, n)| *n);
        self.build(&[default.to_string()], &mut Vec::new())
    }

    /// The destination's spelling of `name` if it has the folder in another case.
    fn spell(&self, name: String) -> String {
        self.dest_names.get(&fold(&name)).cloned().unwrap_or(name)
    }

    /// [`join`] with the destination namespace, each level spelled as the destination
    /// already spells it (so `work/new` goes to `Work/new` if `Work` exists).
    fn build(&self, comps: &[String], notes: &mut Vec<String>) -> String {
        if comps.len() == 1 && is_inbox(&comps[0]) {
            return "INBOX".to_string();
        }
        let (first, n) = join(&comps[..1], &self.dest_ns);
        notes.extend(n);
        self.extend(self.spell(first), &comps[1..], notes)
    }

    /// Appends path components below the destination folder `base`.
    fn extend(&self, base: String, rest: &[String], notes: &mut Vec<String>) -> String {
        let mut cur = base;
        if rest.is_empty() {
            return cur;
        }
        let sep = match self.dest_ns.delimiter {
            Some(d) => d,
            None => {
                notes.push(format!(
                    "the destination has no folder hierarchy; levels joined with '{}'",
                    super::DELIMITER_SUBSTITUTE
                ));
                super::DELIMITER_SUBSTITUTE
            }
        };
        for c in rest {
            cur.push(sep);
            cur.push_str(&sanitize_component(c, self.dest_ns.delimiter, notes));
            cur = self.spell(cur);
        }
        cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lf(name: &str, delimiter: char, attrs: &[&str]) -> ListedFolder {
        ListedFolder {
            name: name.to_string(),
            delimiter: Some(delimiter),
            attributes: attrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn courier() -> Namespace {
        Namespace::new("INBOX.", Some('.'))
    }

    /// An Exchange Online LIST, as it typically looks for a fresh mailbox.
    fn exchange_list() -> Vec<ListedFolder> {
        vec![
            lf("INBOX", '/', &["\\haschildren"]),
            lf("Archive", '/', &["\\archive"]),
            lf("Calendar", '/', &["\\haschildren"]),
            lf("Contacts", '/', &[]),
            lf("Deleted Items", '/', &["\\trash"]),
            lf("Drafts", '/', &["\\drafts"]),
            lf("Junk Email", '/', &["\\junk"]),
            lf("Outbox", '/', &[]),
            lf("Sent Items", '/', &["\\sent"]),
            lf("Work", '/', &[]),
        ]
    }

    fn mapper_with(
        dest: &[ListedFolder],
        folder_map: &[(&str, &str)],
        exclude: &[&str],
    ) -> FolderMapper {
        let fm = folder_map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ex: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        FolderMapper::new(courier(), Namespace::exchange(), dest, &fm, &ex).unwrap()
    }

    fn mapper() -> FolderMapper {
        mapper_with(&exchange_list(), &[], &[])
    }

    fn to(dest: &str, rule: MapRule) -> Mapped {
        Mapped::To {
            dest: dest.to_string(),
            rule,
        }
    }

    fn map(m: &FolderMapper, name: &str, attrs: &[&str]) -> Mapped {
        m.map(&lf(name, '.', attrs))
    }

    #[test]
    fn inbox() {
        let m = mapper();
        assert_eq!(map(&m, "INBOX", &[]), to("INBOX", MapRule::Inbox));
        assert_eq!(map(&m, "inbox", &[]), to("INBOX", MapRule::Inbox));
    }

    #[test]
    fn inbox_dot_inbox_is_a_folder_of_its_own() {
        let m = mapper();
        let src = [
            lf("INBOX", '.', &[]),
            lf("INBOX.Inbox", '.', &[]),
            lf("INBOX.Inbox.Old", '.', &[]),
        ];
        let out = m.map_all(&src);
        let dest: Vec<(&str, String)> = out
            .iter()
            .map(|(f, m)| match m {
                Mapped::To { dest, .. } => (f.name.as_str(), dest.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            dest,
            [
                ("INBOX", "INBOX".to_string()),
                ("INBOX.Inbox", "INBOX/Inbox".to_string()),
                ("INBOX.Inbox.Old", "INBOX/Inbox/Old".to_string()),
            ]
        );
    }

    #[test]
    fn special_use_attributes_trusted_alone_when_present() {
        let m = mapper();
        let with = [
            lf("INBOX.Drafts", '.', &["\\drafts"]),
            lf("INBOX.Entwürfe", '.', &[]),
        ];
        let out = m.map_all(&with);
        assert_eq!(out[1].1, to("Entwürfe", MapRule::SamePath), "{out:?}");
        assert_eq!(
            out[0].1,
            to("Drafts", MapRule::SpecialUse("\\drafts".into())),
            "{out:?}"
        );
        // Without any special-use attribute, names are the guess.
        let without = [lf("INBOX.Entwürfe", '.', &[])];
        assert_eq!(
            m.map_all(&without)[0].1,
            to("Drafts", MapRule::WellKnownName)
        );
    }

    #[test]
    fn same_path_courier_to_exchange() {
        let m = mapper();
        assert_eq!(
            map(&m, "INBOX.Projects", &[]),
            to("Projects", MapRule::SamePath)
        );
        assert_eq!(
            map(&m, "INBOX.Projects.2024.Q1", &[]),
            to("Projects/2024/Q1", MapRule::SamePath)
        );
    }

    #[test]
    fn existing_spelling_wins() {
        let m = mapper();
        // Exchange has "Work": "work" is the same folder there.
        assert_eq!(map(&m, "INBOX.work", &[]), to("Work", MapRule::SamePath));
        assert_eq!(
            map(&m, "INBOX.WORK.new", &[]),
            to("Work/new", MapRule::SamePath)
        );
        // Unicode case folding.
        let dest = vec![lf("Ärger", '/', &[])];
        let m = mapper_with(&dest, &[], &[]);
        assert_eq!(map(&m, "INBOX.äRGER", &[]), to("Ärger", MapRule::SamePath));
    }

    #[test]
    fn non_ascii_names() {
        let m = mapper();
        assert_eq!(
            map(&m, "INBOX.Кунды.日本語", &[]),
            to("Кунды/日本語", MapRule::SamePath)
        );
        // German well-known names, any case.
        assert_eq!(
            map(&m, "INBOX.ENTWÜRFE", &[]),
            to("Drafts", MapRule::WellKnownName)
        );
        assert_eq!(
            map(&m, "INBOX.Gelöschte Objekte", &[]),
            to("Deleted Items", MapRule::WellKnownName)
        );
        assert_eq!(
            map(&m, "INBOX.Éléments envoyés", &[]),
            to("Sent Items", MapRule::WellKnownName)
        );
    }

    #[test]
    fn slash_inside_component_on_dot_server() {
        let m = mapper();
        match map(&m, "INBOX.Reports.Q1/Q2", &[]) {
            Mapped::To {
                dest,
                rule: MapRule::Renamed(note),
            } => {
                assert_eq!(dest, "Reports/Q1_Q2");
                assert!(note.contains("Q1/Q2"), "{note}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn special_use_prefers_destination_attribute() {
        // A German Exchange mailbox: the \Sent folder is "Gesendete Elemente".
        let dest = vec![
            lf("INBOX", '/', &[]),
            lf("Gesendete Elemente", '/', &["\\sent"]),
        ];
        let m = mapper_with(&dest, &[], &[]);
        assert_eq!(
            map(&m, "INBOX.Sent Mail", &["\\sent"]),
            to("Gesendete Elemente", MapRule::SpecialUse("\\sent".into()))
        );
        // No \Trash on the destination: Exchange's default name.
        assert_eq!(
            map(&m, "INBOX.Bin", &["\\trash"]),
            to("Deleted Items", MapRule::SpecialUse("\\trash".into()))
        );
        // Well-known names use the destination's attribute too.
        assert_eq!(
            map(&m, "INBOX.Gesendet", &[]),
            to("Gesendete Elemente", MapRule::WellKnownName)
        );
        // Special-use works at any depth.
        let m = mapper();
        assert_eq!(
            map(&m, "INBOX.[Mail].Müll", &["\\junk"]),
            to("Junk Email", MapRule::SpecialUse("\\junk".into()))
        );
        // \All is not a mail folder Exchange has: same path.
        assert_eq!(
            map(&m, "INBOX.All Mail", &["\\all"]),
            to("All Mail", MapRule::SamePath)
        );
    }

    #[test]
    fn well_known_names() {
        let m = mapper();
        let cases = [
            ("Sent", "Sent Items"),
            ("Sent Messages", "Sent Items"),
            ("sent mail", "Sent Items"),
            ("Envoyés", "Sent Items"),
            ("Posta inviata", "Sent Items"),
            ("Verzonden", "Sent Items"),
            ("Trash", "Deleted Items"),
            ("Deleted Messages", "Deleted Items"),
            ("Papierkorb", "Deleted Items"),
            ("Prullenbak", "Deleted Items"),
            ("Spam", "Junk Email"),
            ("Junk E-mail", "Junk Email"),
            ("Indésirables", "Junk Email"),
            ("Brouillons", "Drafts"),
            ("Concepten", "Drafts"),
            ("Archiv", "Archive"),
            ("Archives", "Archive"),
        ];
        for (src, dest) in cases {
            assert_eq!(
                map(&m, &format!("INBOX.{src}"), &[]),
                to(dest, MapRule::WellKnownName),
                "{src}"
            );
        }
        // Only top-level folders are guessed from their name...
        assert_eq!(
            map(&m, "INBOX.Projects.Sent", &[]),
            to("Projects/Sent", MapRule::SamePath)
        );
        // ...but subfolders of a well-known folder follow it.
        assert_eq!(
            map(&m, "INBOX.Sent.2019", &[]),
            to("Sent Items/2019", MapRule::WellKnownName)
        );
    }

    #[test]
    fn reserved_exchange_names() {
        let m = mapper();
        for name in [
            "Calendar",
            "contacts",
            "Tasks",
            "Notes",
            "Outbox",
            "Sync Issues",
        ] {
            match map(&m, &format!("INBOX.{name}"), &[]) {
                Mapped::To {
                    dest,
                    rule: MapRule::Renamed(note),
                } => {
                    assert_eq!(dest, format!("{name} (imported)"));
                    assert!(note.contains("reserves"), "{note}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        match map(&m, "INBOX.Notes.Old", &[]) {
            Mapped::To { dest, .. } => assert_eq!(dest, "Notes (imported)/Old"),
            other => panic!("{other:?}"),
        }
        // Not top-level: fine.
        assert_eq!(
            map(&m, "INBOX.Work.Calendar", &[]),
            to("Work/Calendar", MapRule::SamePath)
        );
    }

    #[test]
    fn folder_map_overrides() {
        let m = mapper_with(
            &exchange_list(),
            &[
                ("INBOX.Old", "Archive/Old mail"),
                ("sent", "Sent Items/Legacy"),
                ("Projects/Done", "Work/Done"),
            ],
            &[],
        );
        assert_eq!(
            map(&m, "INBOX.Old", &[]),
            to("Archive/Old mail", MapRule::FolderMap)
        );
        // Case-insensitive key, by path; beats special-use and well-known.
        assert_eq!(
            map(&m, "INBOX.Sent", &["\\sent"]),
            to("Sent Items/Legacy", MapRule::FolderMap)
        );
        // Subfolders follow.
        assert_eq!(
            map(&m, "INBOX.old.2019", &[]),
            to("Archive/Old mail/2019", MapRule::FolderMap)
        );
        assert_eq!(
            map(&m, "INBOX.Projects.Done.X", &[]),
            to("Work/Done/X", MapRule::FolderMap)
        );
        assert_eq!(
            map(&m, "INBOX.Projects", &[]),
            to("Projects", MapRule::SamePath)
        );
    }

    #[test]
    fn folder_map_errors() {
        let bad = |pairs: &[(&str, &str)]| {
            let fm = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            FolderMapper::new(courier(), Namespace::exchange(), &[], &fm, &[]).unwrap_err()
        };
        assert!(matches!(
            bad(&[("a", "//")]),
            MappingError::BadFolderMap { .. }
        ));
        assert!(matches!(
            bad(&[("a", "Calendar/x")]),
            MappingError::BadFolderMap { .. }
        ));
        assert!(matches!(
            bad(&[("Work", "x"), ("work", "y")]),
            MappingError::BadFolderMap { .. }
        ));
    }

    #[test]
    fn exclusion_by_glob() {
        let m = mapper_with(&exchange_list(), &[], &["Trash*", "INBOX.Junk", "Public/*"]);
        let excluded = |name: &str| match map(&m, name, &[]) {
            Mapped::Excluded { pattern } => Some(pattern),
            Mapped::To { .. } => None,
        };
        assert_eq!(excluded("INBOX.Trash").as_deref(), Some("Trash*"));
        assert_eq!(excluded("INBOX.trash-old").as_deref(), Some("Trash*"));
        assert_eq!(excluded("INBOX.Junk").as_deref(), Some("INBOX.Junk"));
        assert_eq!(excluded("INBOX.Public.Team").as_deref(), Some("Public/*"));
        assert_eq!(
            excluded("INBOX.Public.Team.Deep").as_deref(),
            Some("Public/*")
        );
        assert_eq!(excluded("INBOX.Public"), None);
        assert_eq!(excluded("INBOX.Work"), None);
        assert_eq!(excluded("INBOX.Junk.Sub"), None);
        assert_eq!(excluded("INBOX"), None);
        // Exclusion beats folder_map.
        let m = mapper_with(&exchange_list(), &[("Trash", "Kept")], &["Trash"]);
        assert!(matches!(
            map(&m, "INBOX.Trash", &[]),
            Mapped::Excluded { .. }
        ));

        let err = FolderMapper::new(
            courier(),
            Namespace::exchange(),
            &[],
            &BTreeMap::new(),
            &["a[".to_string()],
        )
        .unwrap_err();
        assert!(matches!(err, MappingError::BadGlob { .. }));
    }

    #[test]
    fn exchange_to_courier() {
        let fm = BTreeMap::from([("Old".to_string(), "Archive/Old".to_string())]);
        let m = FolderMapper::new(Namespace::exchange(), courier(), &[], &fm, &[]).unwrap();
        let f = |n: &str| lf(n, '/', &[]);
        assert_eq!(m.map(&f("INBOX")), to("INBOX", MapRule::Inbox));
        assert_eq!(
            m.map(&f("Work/Projects")),
            to("INBOX.Work.Projects", MapRule::SamePath)
        );
        assert_eq!(
            m.map(&f("Old/x")),
            to("INBOX.Archive.Old.x", MapRule::FolderMap)
        );
        match m.map(&f("v1.2")) {
            Mapped::To {
                dest,
                rule: MapRule::Renamed(_),
            } => assert_eq!(dest, "INBOX.v1_2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.map(&f("Sent")),
            to("INBOX.Sent Items", MapRule::WellKnownName)
        );
    }

    #[test]
    fn map_all_case_clash() {
        let m = mapper_with(&[lf("INBOX", '/', &[])], &[], &[]);
        let src = vec![
            lf("INBOX.work.Sub", '.', &[]),
            lf("INBOX.work", '.', &[]),
            lf("INBOX.Work", '.', &[]),
            lf("INBOX", '.', &[]),
        ];
        let out = m.map_all(&src);
        let names: Vec<(&str, Option<&str>)> = out
            .iter()
            .map(|(f, m)| (f.name.as_str(), m.dest()))
            .collect();
        assert_eq!(
            names,
            [
                ("INBOX", Some("INBOX")),
                ("INBOX.Work", Some("Work")),
                ("INBOX.work", Some("work (2)")),
                ("INBOX.work.Sub", Some("work (2)/Sub")),
            ]
        );
        assert_eq!(out[1].1, to("Work", MapRule::SamePath));
        assert!(
            matches!(&out[2].1, Mapped::To { rule: MapRule::Renamed(n), .. } if n.contains("INBOX.Work"))
        );
        assert!(matches!(
            &out[3].1,
            Mapped::To {
                rule: MapRule::Renamed(_),
                ..
            }
        ));
        // Deterministic whatever the LIST order.
        let mut rev = src.clone();
        rev.reverse();
        assert_eq!(m.map_all(&rev), out);
    }

    #[test]
    fn map_all_substitution_clash_and_merges() {
        let m = mapper();
        let src = vec![
            lf("INBOX.a/b", '.', &[]),
            lf("INBOX.a_b", '.', &[]),
            lf("INBOX.Sent", '.', &[]),
            lf("INBOX.Sent Messages", '.', &["\\sent"]),
            lf("INBOX.Sent Messages.2019", '.', &[]),
            lf("INBOX.Outgoing", '.', &["\\sent"]),
            lf("INBOX.Outgoing.Old", '.', &[]),
        ];
        let out = m.map_all(&src);
        let dest = |name: &str| {
            out.iter()
                .find(|(f, _)| f.name == name)
                .and_then(|(_, m)| m.dest())
                .unwrap()
                .to_string()
        };
        // "a/b" sorts first and becomes "a_b"; the real "a_b" must not merge into it.
        assert_eq!(dest("INBOX.a/b"), "a_b");
        assert_eq!(dest("INBOX.a_b"), "a_b (2)");
        // Intentional merges stay merged; a name alone beside special-use folders is
        // a folder of its own.
        assert_eq!(dest("INBOX.Sent"), "Sent");
        assert_eq!(dest("INBOX.Sent Messages"), "Sent Items");
        assert_eq!(dest("INBOX.Outgoing"), "Sent Items");
        // Children of a special-use folder follow it.
        assert_eq!(dest("INBOX.Sent Messages.2019"), "Sent Items/2019");
        assert_eq!(dest("INBOX.Outgoing.Old"), "Sent Items/Old");
    }
}
