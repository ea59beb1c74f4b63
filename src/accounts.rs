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

use crate::secret::Secret;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// One mailbox to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Physical line of the row in the CSV (1-based), for messages to the admin.
    pub line: usize,
    /// Destination mailbox address, trimmed.
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
/// - `EmailAddress`: required, exactly one `@` with something on both sides, no spaces.
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
    // Folded address -> line of the row that has it.
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
            (Ok(e), Ok(u), Ok(p)) => (e.trim().to_string(), u.trim().to_string(), p),
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
            error(format!("EmailAddress {email:?} {why}"));
            ok = false;
        }
        if username.is_empty() {
            error(format!(
                "UserName is empty{}",
                if email.is_empty() {
                    String::new()
                } else {
                    format!(" for {email}")
                }
            ));
            ok = false;
        }
        if !ok {
            continue;
        }
        let key = email.to_lowercase();
        if let Some(first) = seen.get(&key) {
            error(format!(
                "EmailAddress {email} is already on line {first}; each mailbox must appear once"
            ));
            continue;
        }
        seen.insert(key, line);
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

/// A plausibility check, not RFC 5322: catches the spreadsheet mistakes (a name in the
/// address column, two addresses in one cell, a missing domain) before they become
/// confusing login failures.
fn check_email(email: &str) -> Result<(), &'static str> {
    if email.matches('@').count() != 1 {
        return Err("must contain exactly one '@'");
    }
    let (local, domain) = email.split_once('@').unwrap_or_default();
    if local.is_empty() || domain.is_empty() {
        return Err("needs a name before and a domain after the '@'");
    }
    if email.chars().any(char::is_whitespace) {
        return Err("contains a space");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(&p, "EmailAddress,UserName\na@b.c,a\n").unwrap();
        assert_eq!(load(&p).unwrap().accounts.len(), 1);
        assert!(load(&dir.path().join("missing.csv")).is_err());
    }
}
