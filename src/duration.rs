//! Durations in the configuration: `interval = 300` or `interval = "5m"`.
//!
//! An admin thinks of the sync interval in minutes and of the cutover grace in hours or
//! days, so both a plain number of seconds and a short human form are accepted: a sequence
//! of `<number><unit>` with units `s`, `m`, `h` and `d` (`"90s"`, `"5m"`, `"1h30m"`,
//! `"72h"`, `"3d"`). A bare number in a string (`"300"`, as an environment variable gives
//! it) is seconds too. Written here rather than taken from a crate because this is all of
//! it, and the error must name the accepted forms.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses `"300"`, `"90s"`, `"5m"`, `"1h30m"`, `"72h"`, `"3d"` (whitespace between parts
/// is allowed). Fractions are not: `"1.5h"` is `"1h30m"`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad(text));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad(text))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let factor = match &rest[..unit_len] {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad(text)),
        };
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(Duration::from_secs(total))
}

fn bad(text: &str) -> String {
    format!(
        "invalid duration {text:?}: use seconds (300) or a number with a unit s, m, h or d \
         (\"90s\", \"5m\", \"1h30m\", \"72h\", \"3d\")"
    )
}

/// Shows a duration the way [`parse`] reads it (`"1h30m"`, `"45s"`).
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

/// serde `deserialize_with` for a [`Duration`] given as seconds or as a string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number of seconds or a duration such as \"5m\", \"72h\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let s = Duration::from_secs;
        assert_eq!(parse("300"), Ok(s(300)));
        assert_eq!(parse("90s"), Ok(s(90)));
        assert_eq!(parse("5m"), Ok(s(300)));
        assert_eq!(parse("1h30m"), Ok(s(5400)));
        assert_eq!(parse("1h 30m"), Ok(s(5400)));
        assert_eq!(parse("72h"), Ok(s(72 * 3600)));
        assert_eq!(parse("3d"), Ok(s(3 * 86_400)));
        assert_eq!(parse(" 2 min "), Ok(s(120)));
        for bad in ["", "5x", "m", "1.5h", "-3", "5m3", "h5"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("99999999999999999999d").is_err());
    }

    #[test]
    fn format_round_trips() {
        for secs in [0u64, 1, 59, 60, 61, 3600, 5400, 259_200, 90_061] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }
}
