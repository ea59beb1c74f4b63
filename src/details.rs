//! Lines about single messages (skipped, failed, sent again, why) kept in a pass's
//! summary, within a bound.
//!
//! A mailbox can have thousands of skipped or failed messages, and a pass over thousands
//! of mailboxes keeps every mailbox's summary until the end: one line per message would
//! make memory follow the size of the migration. The spool holds each message's record
//! with its state and reason for good (`cutover report` lists them all), so a summary
//! keeps only the first [`MAX_DETAILS`] lines and counts the others.

/// Lines kept per mailbox and pass.
pub const MAX_DETAILS: usize = 100;

/// The first [`MAX_DETAILS`] lines, and how many more there were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    lines: Vec<String>,
    omitted: u64,
}

impl Details {
    pub fn push(&mut self, line: String) {
        if self.lines.len() < MAX_DETAILS {
            self.lines.push(line);
        } else {
            self.omitted += 1;
        }
    }

    /// Adds `other`'s lines after these (its omitted ones are counted).
    pub fn extend(&mut self, other: Details) {
        for line in other.lines {
            self.push(line);
        }
        self.omitted += other.omitted;
    }

    /// Counts `n` more lines that are not kept.
    pub fn add_omitted(&mut self, n: u64) {
        self.omitted += n;
    }

    /// The first line, if any was pushed.
    pub fn first(&self) -> Option<&String> {
        self.lines.first()
    }

    /// The lines kept.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Lines not kept.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    /// Every line pushed, kept or not.
    pub fn total(&self) -> u64 {
        self.lines.len() as u64 + self.omitted
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

impl<'a> IntoIterator for &'a Details {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    /// The lines kept (see [`Details::omitted`] for the others).
    fn into_iter(self) -> Self::IntoIter {
        self.lines.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_lines_and_counts_all() {
        let mut a = Details::default();
        for i in 0..MAX_DETAILS + 5 {
            a.push(format!("line {i}"));
        }
        let mut b = Details::default();
        b.push("other".into());
        b.extend(a);
        assert_eq!(b.lines().len(), MAX_DETAILS);
        assert_eq!(b.lines()[0], "other");
        assert_eq!(b.omitted(), 6);
        assert_eq!(b.total(), MAX_DETAILS as u64 + 6);
    }
}
