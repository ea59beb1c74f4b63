//! Keywords of a Maildir folder: Dovecot's `dovecot-keywords` (the letters `a`-`z` of
//! the info suffix) and Courier's `courierimapkeywords/` (keywords by base name).

use std::collections::HashMap;
use std::path::Path;

/// The keywords of one folder.
#[derive(Debug, Clone, Default)]
pub struct Keywords {
    /// `dovecot-keywords`: letter index (0 = `a`) -> keyword.
    dovecot: [Option<String>; 26],
    /// Courier: base name -> keywords.
    courier: HashMap<String, Vec<String>>,
}

impl Keywords {
    /// Reads the folder's keyword files; a missing one is no keyword, a file that cannot
    /// be read is a problem for the admin (its messages would lose their keywords).
    pub fn load(dir: &Path, problems: &mut Vec<String>) -> Keywords {
        let mut k = Keywords::default();
        let file = dir.join("dovecot-keywords");
        match std::fs::read(&file) {
            Ok(bytes) => {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    if let Some((i, name)) = line.split_once(' ') {
                        if let Ok(i) = i.trim().parse::<usize>() {
                            k.set_dovecot(i, name.trim());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
        k.load_courier(&dir.join("courierimapkeywords"), problems);
        k
    }

    /// Courier's `courierimapkeywords/:list` (keywords, an empty line, then `base:0 2`
    /// lines of indexes into them) and its pending updates, `.N.base` files that each
    /// hold the keywords of one message, one a line (the highest N is the latest).
    fn load_courier(&mut self, dir: &Path, problems: &mut Vec<String>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                return;
            }
        };
        match std::fs::read(dir.join(":list")) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let mut lines = text.lines();
                let names: Vec<&str> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
                for line in lines {
                    let Some((base, idx)) = line.rsplit_once(':') else {
                        continue;
                    };
                    let kws: Vec<String> = idx
                        .split_whitespace()
                        .filter_map(|i| i.parse::<usize>().ok())
                        .filter_map(|i| names.get(i).map(|s| s.to_string()))
                        .collect();
                    if !kws.is_empty() {
                        self.courier.insert(base.to_string(), kws);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("{}/:list: {e}", dir.display())),
        }
        let mut updates: HashMap<String, (u64, std::path::PathBuf)> = HashMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix('.') else {
                continue;
            };
            let Some((n, base)) = rest.split_once('.') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            if updates.get(base).is_none_or(|(m, _)| *m < n) {
                updates.insert(base.to_string(), (n, entry.path()));
            }
        }
        for (base, (_, path)) in updates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let kws: Vec<String> = String::from_utf8_lossy(&bytes)
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect();
                    self.courier.insert(base, kws);
                }
                // Courier folds an update into :list and removes it; that is no problem.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
    }

    pub fn set_dovecot(&mut self, index: usize, name: &str) {
        if index < 26 && !name.is_empty() {
            self.dovecot[index] = Some(name.to_string());
        }
    }

    /// The keyword of a letter `a`-`z`.
    pub fn letter(&self, c: char) -> Option<&str> {
        let i = (c as usize).checked_sub('a' as usize)?;
        self.dovecot.get(i)?.as_deref()
    }

    /// The keywords Courier keeps for a base name.
    pub fn courier(&self, base: &str) -> impl Iterator<Item = &str> {
        self.courier
            .get(base)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The letter of `keyword` for an exported file, given a free one if it has none;
    /// `None` when all 26 are taken (the keyword is then not exported).
    pub fn assign(&mut self, keyword: &str) -> Option<char> {
        let i = match self
            .dovecot
            .iter()
            .position(|k| k.as_deref() == Some(keyword))
        {
            Some(i) => i,
            None => {
                let i = self.dovecot.iter().position(Option::is_none)?;
                self.dovecot[i] = Some(keyword.to_string());
                i
            }
        };
        Some((b'a' + i as u8) as char)
    }

    /// The `dovecot-keywords` file of these keywords (`index name` lines).
    pub fn dovecot_file(&self) -> String {
        let mut out = String::new();
        for (i, k) in self.dovecot.iter().enumerate() {
            if let Some(k) = k {
                out.push_str(&format!("{i} {k}\n"));
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.dovecot.iter().all(Option::is_none) && self.courier.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_and_courier_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dovecot-keywords"),
            "0 Work\n3 $Junk\nbad\n",
        )
        .unwrap();
        let c = dir.path().join("courierimapkeywords");
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join(":list"), "Alpha\nBeta\n\nm1:0 1\nm2:1\n").unwrap();
        std::fs::write(c.join(".3.m2"), "Gamma\n").unwrap();
        std::fs::write(c.join(".1.m2"), "Old\n").unwrap();
        let mut problems = Vec::new();
        let k = Keywords::load(dir.path(), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(k.letter('a'), Some("Work"));
        assert_eq!(k.letter('d'), Some("$Junk"));
        assert_eq!(k.letter('b'), None);
        assert_eq!(k.courier("m1").collect::<Vec<_>>(), ["Alpha", "Beta"]);
        assert_eq!(k.courier("m2").collect::<Vec<_>>(), ["Gamma"]);
        assert_eq!(k.courier("m3").count(), 0);
    }
}
