//! The list of mailboxes to migrate, in the CSV format of Microsoft's own IMAP
//! migration (`EmailAddress,UserName,Password`), so an admin can reuse the file they
//! already prepared for the Exchange admin center.
//!
//! - `EmailAddress`: the Office 365 mailbox (the destination login).
//! - `UserName`: the login on the legacy server.
//! - `Password`: the legacy password; may be empty (or the column absent) when the
//!   source is accessed with an admin / master user.
//!
//! Header names match case-insensitively in any order; other columns are ignored (the
//! Exchange admin center exports some). A UTF-8 BOM, as written by Excel, is accepted.
//!
//! The file is typically hand-edited in a spreadsheet with hundreds of rows, so one bad
//! row must not block the others: [`parse`] returns every good account together with
//! one [`AccountError`] per problem, each naming the physical line of the file.
//!
//! A row holds a password, and a spreadsheet mistake can put it anywhere: a row saved
//! as one quoted cell (`"a@x.com,alice,Pa55"`) lands whole in the EmailAddress column.
//! So an error never quotes a cell that may hold more than a mistyped address (one with
//! a separator, a quote or a space, or in a row whose UserName is empty); it names the
//! line, the column and what is wrong, and the admin looks at the line.
//!
//! `EmailAddress` is also the key of the mailbox in the spool, and Office 365 compares
//! addresses without regard to case, so it is trimmed and lower-cased: the same CSV
//! exported again with `Alice@Contoso.com` must find the mailbox it already migrated,
//! not start copying it again. A spool written before that normalisation may hold a
//! mailbox under another spelling; [`adopt_spool_ids`] keeps using it.

use crate::secret::Secret;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// One mailbox to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Physical line of the row in the CSV (1-based), for messages to the admin.
    pub line: usize,
    /// Destination mailbox address, trimmed and lower-cased (see the module docs); also
    /// the mailbox's id in the spool. [`adopt_spool_ids`] may replace it with the
    /// spelling an older spool already uses for the same address.
    pub email: String,
    /// Source login name, trimmed.
    pub username: String,
    /// Source password, exactly as written (spaces are legal in passwords); `None` when
    /// empty. `Debug` shows `***`.
    pub password: Option<Secret>,
}

/// A problem with one row (or the header) of the CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mailboxes CSV line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for AccountError {}

/// The accounts that parsed, and the problems with the rows that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub accounts: Vec<Account>,
    pub errors: Vec<AccountError>,
}

/// Reads and parses the CSV at `path`. Only I/O failures are errors here; problems
/// with the content are in [`Accounts::errors`].
pub fn load(path: &Path) -> std::io::Result<Accounts> {
    Ok(parse(&std::fs::read(path)?))
}

const EMAIL: &str = "emailaddress";
const USERNAME: &str = "username";
const PASSWORD: &str = "password";

/// Parses the CSV content. Never fails as a whole; see [`Accounts`].
///
/// - Header (first non-blank record) must have `EmailAddress` and `UserName`, else a
///   single error for its line and no accounts: without them no row can be understood.
/// - Blank rows (no fields, or all fields empty) are skipped.
/// - `EmailAddress`: required, exactly one `@` with something on both sides, no spaces,
///   commas, semicolons or quotes; trimmed and lower-cased.
/// - `UserName`: required.
/// - `Password`: empty means `None`; never trimmed.
/// - A second row for the same `EmailAddress` (compared case-insensitively, as Office
///   365 does) is an error: migrating one mailbox twice in parallel would duplicate mail.
pub fn parse(text: &[u8]) -> Accounts {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let mut out = Accounts::default();
    let mut columns: Option<Columns> = None;
    // Normalised address -> line of the row that has it.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let line_before = reader.position().line() as usize;
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(line_before, |p| p.line() as usize);
                out.errors.push(AccountError {
                    line,
                    message: format!("cannot parse: {e}"),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        let line = record
            .position()
            .map_or(line_before, |p| physical_line(text, p));
        if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        let Some(cols) = &columns else {
            match Columns::from_header(&record) {
                Ok(c) => columns = Some(c),
                Err(message) => {
                    out.errors.push(AccountError { line, message });
                    return out;
                }
            }
            continue;
        };
        let mut error = |message: String| out.errors.push(AccountError { line, message });
        let field = |i: Option<usize>| -> Result<String, String> {
            match i.and_then(|i| record.get(i)) {
                None => Ok(String::new()),
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map_err(|_| "is not valid UTF-8 (save the file as UTF-8)".to_string()),
            }
        };
        let (email, username, password) = match (
            field(Some(cols.email)),
            field(Some(cols.username)),
            field(cols.password),
        ) {
            (Ok(e), Ok(u), Ok(p)) => (e.trim().to_lowercase(), u.trim().to_string(), p),
            (e, u, p) => {
                for (name, r) in [("EmailAddress", e), ("UserName", u), ("Password", p)] {
                    if let Err(m) = r {
                        error(format!("{name} {m}"));
                    }
                }
                continue;
            }
        };
        let mut ok = true;
        if email.is_empty() {
            error("EmailAddress is empty".into());
            ok = false;
        } else if let Err(why) = check_email(&email) {
            if may_hold_a_password(&email, &username) {
                error(format!("EmailAddress {why}"));
            } else {
                error(format!("EmailAddress {email:?} {why}"));
            }
            ok = false;
        }
        if username.is_empty() {
            error(format!(
                "UserName is empty{}",
                if ok {
                    format!(" for {email}")
                } else {
                    String::new()
                }
            ));
            ok = false;
        }
        if !ok {
            continue;
        }
        if let Some(first) = seen.get(&email) {
            error(format!(
                "EmailAddress {email} is also on line {first} (addresses are compared without \
                 regard to case); each mailbox must appear once, so line {line} is ignored"
            ));
            continue;
        }
        seen.insert(email.clone(), line);
        out.accounts.push(Account {
            line,
            email,
            username,
            password: (!password.is_empty()).then(|| Secret::new(password)),
        });
    }
    if columns.is_none() && out.errors.is_empty() {
        out.errors.push(AccountError {
            line: 1,
            message: "the file is empty; expected a header EmailAddress,UserName,Password".into(),
        });
    }
    out
}

/// The optional `DisplayName` column, by address (lower-cased like [`Account::email`]):
/// what the letters of `[notify]` call the user. Rows without one, and a CSV without the
/// column, give nothing; the rows themselves are checked by [`parse`].
pub fn display_names(text: &[u8]) -> HashMap<String, String> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let mut out = HashMap::new();
    let mut cols: Option<(usize, usize)> = None;
    for record in reader.records().flatten() {
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let Some((email, name)) = cols else {
            let find = |want: &str| {
                record
                    .iter()
                    .position(|h| h.trim().eq_ignore_ascii_case(want))
            };
            match (find(EMAIL), find("displayname")) {
                (Some(e), Some(n)) => cols = Some((e, n)),
                _ => return out,
            }
            continue;
        };
        if let (Some(e), Some(n)) = (record.get(email), record.get(name)) {
            let n = n.trim();
            if !n.is_empty() {
                out.insert(e.trim().to_lowercase(), n.to_string());
            }
        }
    }
    out
}

/// Makes each account use the id an existing spool already has for its mailbox, and
/// returns one line per account changed, for the log.
///
/// Versions before the normalisation of [`parse`] kept the address as written, so a
/// spool may hold the records of `Alice@Contoso.com` under that spelling. Switching to
/// `alice@contoso.com` would start an empty namespace and copy the whole mailbox a
/// second time, so the old spelling is kept (Office 365 does not mind the case of the
/// login). An exact match wins; among several other spellings (an older version that
/// already copied twice), the one with the most messages synced.
pub fn adopt_spool_ids(
    accounts: &mut [Account],
    known: &[crate::spool::MailboxState],
) -> Vec<String> {
    let mut by_address: HashMap<String, Vec<&crate::spool::MailboxState>> = HashMap::new();
    for st in known {
        by_address
            .entry(st.id.trim().to_lowercase())
            .or_default()
            .push(st);
    }
    let mut notes = Vec::new();
    for a in accounts {
        let Some(candidates) = by_address.get(&a.email.to_lowercase()) else {
            continue;
        };
        if candidates.iter().any(|st| st.id == a.email) {
            continue;
        }
        let Some(best) = candidates.iter().max_by(|x, y| {
            (x.items_synced, x.last_sync_unix, std::cmp::Reverse(&x.id)).cmp(&(
                y.items_synced,
                y.last_sync_unix,
                std::cmp::Reverse(&y.id),
            ))
        }) else {
            continue;
        };
        notes.push(format!(
            "mailboxes CSV line {}: {} is in the spool as {}; that id is kept, so nothing is \
             copied again",
            a.line, a.email, best.id
        ));
        a.email = best.id.clone();
    }
    notes
}

/// The line a record's first field is on. csv's position is where the reader started
/// looking for the record, i.e. before the blank lines it skipped on the way.
fn physical_line(text: &[u8], pos: &csv::Position) -> usize {
    let start = (pos.byte() as usize).min(text.len());
    let skipped = text[start..]
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .filter(|b| **b == b'\n')
        .count();
    pos.line() as usize + skipped
}

/// Column indexes found in the header.
struct Columns {
    email: usize,
    username: usize,
    password: Option<usize>,
}

impl Columns {
    fn from_header(record: &csv::ByteRecord) -> Result<Columns, String> {
        let mut found: [Option<usize>; 3] = [None; 3];
        for (i, name) in record.iter().enumerate() {
            let name = String::from_utf8_lossy(name).trim().to_lowercase();
            let Some(slot) = [EMAIL, USERNAME, PASSWORD].iter().position(|n| *n == name) else {
                continue;
            };
            if found[slot].is_some() {
                return Err(format!("header has the column {name:?} twice"));
            }
            found[slot] = Some(i);
        }
        match found {
            [Some(email), Some(username), password] => Ok(Columns {
                email,
                username,
                password,
            }),
            _ => {
                let missing: Vec<&str> = [("EmailAddress", found[0]), ("UserName", found[1])]
                    .iter()
                    .filter(|(_, f)| f.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                Err(format!(
                    "header lacks {}; expected EmailAddress,UserName,Password (any order)",
                    missing.join(" and ")
                ))
            }
        }
    }
}

/// True if a cell that failed the address check may hold more than a mistyped address,
/// and so must not be quoted: it holds a separator, a quote or a space (a row saved as
/// one cell, `"a@x.com,alice,Pa55"`, or `a@x.com alice Pa55`), or the row's UserName
/// is empty (its cells ran together). A cell without any of that, in a row whose other
/// columns are there, is the address typed wrong (`bob.example.com`), and quoting it is
/// what lets the admin find it.
fn may_hold_a_password(cell: &str, username: &str) -> bool {
    username.is_empty()
        || cell
            .chars()
            .any(|c| matches!(c, ',' | ';' | '"' | '\'') || c.is_whitespace() || c.is_control())
}

/// A plausibility check, not RFC 5322: catches the spreadsheet mistakes (a name in the
/// address column, two addresses in one cell, a missing domain) before they become
/// confusing login failures.
fn check_email(email: &str) -> Result<(), &'static str> {
    // First: this is what a row saved as one quoted cell looks like.
    if email.contains([',', ';', '"', '\t']) {
        return Err(
            "is not an address: it contains a comma, semicolon, quote or tab, as when \
                    a whole row was saved as one quoted cell; EmailAddress, UserName and \
                    Password must each be a cell of their own",
        );
    }
    if email.matches('@').count() != 1 {
        return Err("is not an address: it must contain exactly one '@'");
    }
    let (local, domain) = email.split_once('@').unwrap_or_default();
    if local.is_empty() || domain.is_empty() {
        return Err("is not an address: it needs a name before and a domain after the '@'");
    }
    if email.chars().any(char::is_whitespace) {
        return Err("is not an address: it contains a space");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_come_from_their_optional_column() {
        let csv = "EmailAddress,UserName,Password,DisplayName\n\
                   Alice@X.test,alice,pw,\"Hansen, Alice\"\n\
                   bob@x.test,bob,pw,\n";
        let names = display_names(csv.as_bytes());
        assert_eq!(
            names.get("alice@x.test").map(String::as_str),
            Some("Hansen, Alice")
        );
        assert!(!names.contains_key("bob@x.test"));
        // The column is optional, and the accounts parse as before with it.
        assert!(display_names(b"EmailAddress,UserName\na@x.test,a\n").is_empty());
        assert_eq!(parse(csv.as_bytes()).accounts.len(), 2);
    }

    fn lines(errors: &[AccountError]) -> Vec<usize> {
        errors.iter().map(|e| e.line).collect()
    }

    #[test]
    fn basic() {
        let a = parse(
            b"EmailAddress,UserName,Password\n\
              alice@example.com,alice,pw1\n\
              bob@example.com,bob,\n",
        );
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        assert_eq!(
            a.accounts,
            [
                Account {
                    line: 2,
                    email: "alice@example.com".into(),
                    username: "alice".into(),
                    password: Some(Secret::new("pw1")),
                },
                Account {
                    line: 3,
                    email: "bob@example.com".into(),
                    username: "bob".into(),
                    password: None,
                },
            ]
        );
    }

    #[test]
    fn header_any_case_any_order_extra_columns_bom() {
        let a = parse(
            "\u{feff}Password, USERNAME ,Department,emailaddress\r\n\
             s3cret,alice,Sales,alice@example.com\r\n"
                .as_bytes(),
        );
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        assert_eq!(a.accounts.len(), 1);
        let acc = &a.accounts[0];
        assert_eq!(acc.email, "alice@example.com");
        assert_eq!(acc.username, "alice");
        assert_eq!(acc.password.as_ref().unwrap().expose(), "s3cret");
    }

    #[test]
    fn password_column_optional() {
        let a = parse(b"EmailAddress,UserName\nalice@example.com,alice\n");
        assert!(a.errors.is_empty());
        assert_eq!(a.accounts[0].password, None);
    }

    #[test]
    fn missing_header_column() {
        let a = parse(b"Email,UserName,Password\nalice@example.com,alice,pw\n");
        assert!(a.accounts.is_empty());
        assert_eq!(lines(&a.errors), [1]);
        assert!(a.errors[0].message.contains("EmailAddress"));
        assert_eq!(
            a.errors[0].to_string(),
            format!("mailboxes CSV line 1: {}", a.errors[0].message)
        );

        let a = parse(b"EmailAddress,Login\nalice@example.com,alice\n");
        assert!(a.accounts.is_empty());
        assert_eq!(lines(&a.errors), [1]);
        assert!(a.errors[0].message.contains("UserName"));

        let a = parse(b"");
        assert!(a.accounts.is_empty());
        assert_eq!(lines(&a.errors), [1]);
    }

    #[test]
    fn quoted_fields_and_whitespace() {
        let a = parse(
            b"EmailAddress,UserName,Password\n\
              \"  alice@example.com \",\" alice\",\" pass, with \"\"quotes\"\" \"\n",
        );
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        let acc = &a.accounts[0];
        assert_eq!(acc.email, "alice@example.com");
        assert_eq!(acc.username, "alice");
        assert_eq!(
            acc.password.as_ref().unwrap().expose(),
            " pass, with \"quotes\" "
        );
    }

    #[test]
    fn bad_rows_do_not_stop_others() {
        let a = parse(
            b"EmailAddress,UserName,Password\n\
              alice@example.com,alice,pw\n\
              ,nobody,pw\n\
              carol.example.com,carol,pw\n\
              dave@x@example.com,dave,pw\n\
              erin@example.com,,pw\n\
              \n\
              ALICE@Example.com,alice2,pw\n\
              frank@example.com,frank\n\
              ,,\n\
              @example.com,g,pw\n\
              grace@example.com,grace,pw\n",
        );
        let emails: Vec<&str> = a.accounts.iter().map(|a| a.email.as_str()).collect();
        assert_eq!(
            emails,
            [
                "alice@example.com",
                "frank@example.com",
                "grace@example.com"
            ]
        );
        assert_eq!(lines(&a.errors), [3, 4, 5, 6, 8, 11]);
        assert!(a.errors[0].message.contains("EmailAddress is empty"));
        assert!(a.errors[1].message.contains("exactly one '@'"));
        assert!(a.errors[2].message.contains("exactly one '@'"));
        assert!(a.errors[3].message.contains("UserName is empty"));
        assert!(a.errors[4].message.contains("line 2"), "{}", a.errors[4]);
        assert_eq!(a.accounts[1].line, 9);
        assert_eq!(a.accounts[2].line, 12);
    }

    #[test]
    fn row_with_two_problems_reports_both() {
        let a = parse(b"EmailAddress,UserName\nnot-an-address,\n");
        assert!(a.accounts.is_empty());
        assert_eq!(lines(&a.errors), [2, 2]);
    }

    #[test]
    fn line_numbers_are_physical() {
        // Leading blank lines, a quoted field spanning lines.
        let a = parse(
            b"\n\nEmailAddress,UserName,Password\n\
              alice@example.com,alice,\"multi\nline\"\n\
              bad,bob,pw\n",
        );
        assert_eq!(a.accounts[0].line, 4);
        assert_eq!(
            a.accounts[0].password.as_ref().unwrap().expose(),
            "multi\nline"
        );
        assert_eq!(lines(&a.errors), [6]);

        let a = parse(b"\n\nEmailAddress\nx@y.z\n");
        assert_eq!(lines(&a.errors), [3]);
    }

    #[test]
    fn invalid_utf8_row() {
        let a =
            parse(b"EmailAddress,UserName,Password\nal\xffce@example.com,a,pw\nb@example.com,b,\n");
        assert_eq!(a.accounts.len(), 1);
        assert_eq!(lines(&a.errors), [2]);
        assert!(a.errors[0].message.contains("UTF-8"));
    }

    #[test]
    fn debug_hides_password() {
        let a = parse(b"EmailAddress,UserName,Password\na@b.c,a,hunter2\n");
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn row_in_one_quoted_cell_is_named_not_printed() {
        let a = parse(
            b"EmailAddress,UserName,Password\n\
              \"a@x.com,alice,Pa55w0rd\"\n\
              \"b@x.com,bob,Hunter 2\"\n\
              \"c@x.com;carol;S3cr3t\"\n\
              \"d@x.com\tdave\tT4bbed\"\n\
              \"Pa@@word\",erin,pw\n\
              \"sp ace@x.com\",frank,pw\n\
              ok@x.com,ok,pw\n",
        );
        assert_eq!(a.accounts.len(), 1);
        assert_eq!(lines(&a.errors), [2, 2, 3, 3, 4, 4, 5, 5, 6, 7]);
        for e in &a.errors {
            let shown = e.to_string();
            for secret in ["Pa55w0rd", "Hunter", "S3cr3t", "T4bbed", "sp ace"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.starts_with(&format!("mailboxes CSV line {}: ", e.line)));
        }
        assert!(
            a.errors[0].message.contains("one quoted cell"),
            "{}",
            a.errors[0]
        );
        assert!(
            a.errors[1].message.contains("UserName is empty"),
            "{}",
            a.errors[1]
        );
        assert!(
            a.errors[8].message.contains("exactly one '@'")
                && a.errors[8].message.contains("\"pa@@word\""),
            "{}",
            a.errors[8]
        );
        assert!(a.errors[9].message.contains("space"), "{}", a.errors[9]);
    }

    #[test]
    fn a_mistyped_address_in_a_complete_row_is_quoted() {
        let a = parse(b"EmailAddress,UserName,Password\nbob.example.com,bob,pw\nx@y@z,,pw\n");
        assert!(
            a.errors[0].message.contains("\"bob.example.com\""),
            "{}",
            a.errors[0]
        );
        // Without its UserName the row may have run together: not quoted.
        assert!(!a.errors[1].message.contains("x@y@z"), "{}", a.errors[1]);
    }

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        let a = parse(
            b"EmailAddress,UserName,Password\n \
              Alice@Contoso.COM ,alice,pw\n\
              bob@contoso.com,bob,pw\n\
              \n\
              BOB@Contoso.com\t,bob2,pw\n",
        );
        let emails: Vec<&str> = a.accounts.iter().map(|a| a.email.as_str()).collect();
        assert_eq!(emails, ["alice@contoso.com", "bob@contoso.com"]);
        // The user name is the source's login: left as written.
        assert_eq!(a.accounts[0].username, "alice");
        assert_eq!(lines(&a.errors), [5]);
        let shown = a.errors[0].to_string();
        assert!(
            shown.contains("line 3") && shown.contains("line 5"),
            "{shown}"
        );
    }

    fn known(id: &str, items: u64) -> crate::spool::MailboxState {
        crate::spool::MailboxState {
            id: id.into(),
            items_synced: items,
            ..Default::default()
        }
    }

    #[test]
    fn an_older_spools_spelling_is_kept() {
        let mut a = parse(
            b"EmailAddress,UserName\n\
              Alice@Contoso.com,alice\n\
              bob@contoso.com,bob\n\
              carol@contoso.com,carol\n\
              dave@contoso.com,dave\n",
        )
        .accounts;
        let spool = [
            known("Alice@Contoso.com", 10),
            known("bob@contoso.com", 3),
            known("BOB@contoso.com", 9),
            known("Carol@contoso.com", 1),
            known("CAROL@contoso.com", 7),
            known("other@contoso.com", 1),
        ];
        let notes = adopt_spool_ids(&mut a, &spool);
        let emails: Vec<&str> = a.iter().map(|a| a.email.as_str()).collect();
        assert_eq!(
            emails,
            [
                "Alice@Contoso.com",
                "bob@contoso.com",
                "CAROL@contoso.com",
                "dave@contoso.com"
            ]
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("line 2") && notes[0].contains("Alice@Contoso.com"));
    }

    #[test]
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(&p, "EmailAddress,UserName\na@b.c,a\n").unwrap();
        assert_eq!(load(&p).unwrap().accounts.len(), 1);
        assert!(load(&dir.path().join("missing.csv")).is_err());
    }
}
