//! What cutover writes into a letter for `{bytes}` and `{skipped}`: for the user, not the
//! admin, so in plain words and in the letter's language. The admin's report keeps the
//! details (folder, UID, the server's words).

use super::Language;

/// Why an item was left behind, as a user would put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    TooLarge,
    TooMany,
    LongLine,
    Refused,
    Failed,
}

fn why(state: &str, reason: &str) -> Why {
    let r = reason.to_ascii_lowercase();
    if state == "failed" {
        Why::Failed
    } else if r.contains("max_message_bytes") || r.contains("toobig") || r.contains("too big") {
        Why::TooLarge
    } else if r.contains("max_items_per_mailbox") {
        Why::TooMany
    } else if r.contains("max_line_length") {
        Why::LongLine
    } else {
        Why::Refused
    }
}

/// `12,3 MB` / `12.3 MB`: a size as a person reads it.
pub fn bytes(n: u64, lang: Language) -> String {
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let s = format!("{v:.1} {}", UNITS[unit]);
    match lang {
        Language::En => s,
        Language::Da => s.replace('.', ","),
    }
}

/// The sentence `{skipped}` stands for: how many items were left behind and why, from the
/// (state, reason) of each item the report lists as skipped or failed. `before`: for the
/// notice, when the move is still to come (and what is known so far is all there is).
pub fn skipped(items: &[(String, String)], lang: Language, before: bool) -> String {
    if items.is_empty() {
        return match (lang, before) {
            (Language::En, false) => "All your items were moved.".into(),
            (Language::Da, false) => "Alle dine elementer blev flyttet.".into(),
            (Language::En, true) => "So far no item has to stay behind.".into(),
            (Language::Da, true) => "Indtil nu skal intet element blive tilbage.".into(),
        };
    }
    let mut by: std::collections::BTreeMap<Why, usize> = std::collections::BTreeMap::new();
    for (state, reason) in items {
        *by.entry(why(state, reason)).or_default() += 1;
    }
    let n = items.len();
    let parts: Vec<String> = by
        .iter()
        .map(|(w, k)| {
            let one = *k == 1;
            match lang {
                Language::En => {
                    let was = if one { "was" } else { "were" };
                    let what = match w {
                        Why::TooLarge => format!("{was} too large for Office 365"),
                        Why::TooMany => format!(
                            "{was} beyond the number of items Office 365 takes in one mailbox (the oldest stay behind)"
                        ),
                        Why::LongLine => format!("{was} written in a way Office 365 does not accept (a line too long)"),
                        Why::Refused => format!("{was} refused by Office 365"),
                        Why::Failed => "could not be copied in time".to_string(),
                    };
                    format!("{k} {what}")
                }
                Language::Da => {
                    let what = match w {
                        Why::TooLarge => "var for store til Office 365",
                        Why::TooMany => {
                            "var flere end Office 365 tager imod i én postkasse (de ældste blev tilbage)"
                        }
                        Why::LongLine => "var skrevet på en måde Office 365 ikke tager imod (en for lang linje)",
                        Why::Refused => "blev afvist af Office 365",
                        Why::Failed => "kunne ikke kopieres i tide",
                    };
                    format!("{k} {what}")
                }
            }
        })
        .collect();
    match lang {
        Language::En => format!(
            "{n} {} {}: {}. Your administrator has the list.",
            if n == 1 { "item" } else { "items" },
            if before {
                "cannot be moved"
            } else {
                "could not be moved"
            },
            join(&parts, "and")
        ),
        Language::Da => format!(
            "{n} {} {}: {}. Din administrator har listen.",
            if n == 1 { "element" } else { "elementer" },
            if before {
                "kan ikke flyttes"
            } else {
                "kunne ikke flyttes"
            },
            join(&parts, "og")
        ),
    }
}

fn join(parts: &[String], and: &str) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {and} {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(state: &str, reason: &str) -> (String, String) {
        (state.into(), reason.into())
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(bytes(512, Language::En), "512 bytes");
        assert_eq!(bytes(1_500_000, Language::En), "1.5 MB");
        assert_eq!(bytes(1_500_000, Language::Da), "1,5 MB");
        assert_eq!(bytes(12_345_678_901, Language::En), "12.3 GB");
    }

    #[test]
    fn skipped_items_are_counted_and_explained_in_plain_words() {
        assert_eq!(
            skipped(&[], Language::En, false),
            "All your items were moved."
        );
        assert_eq!(
            skipped(&[], Language::En, true),
            "So far no item has to stay behind."
        );
        let items = [
            item(
                "skipped",
                "200000000 bytes, over max_message_bytes (157286400); date x",
            ),
            item(
                "skipped",
                "180000000 bytes, over max_message_bytes (157286400); date y",
            ),
            item("skipped", "refused by the destination: [PARSE] bad message"),
        ];
        assert_eq!(
            skipped(&items, Language::En, false),
            "3 items could not be moved: 2 were too large for Office 365 and 1 was refused by \
             Office 365. Your administrator has the list."
        );
        let da = skipped(&items[..1], Language::Da, false);
        assert_eq!(
            da,
            "1 element kunne ikke flyttes: 1 var for store til Office 365. Din administrator har listen."
        );
        // The admin's words (field names, sizes) never reach the user.
        assert!(!skipped(&items, Language::En, true).contains("max_message_bytes"));
        assert!(skipped(&items, Language::En, true).starts_with("3 items cannot be moved: "));
    }
}
