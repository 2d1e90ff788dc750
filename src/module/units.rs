//! Small argument types shared by modules: durations, argv.

use serde::{Deserialize, Serialize};

/// argv as owned strings.
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Durations in playbooks

/// A duration a playbook gives either as whole seconds (`timeout = 300`) or as text with a
/// unit (`timeout = "30s"`, `"5m"`, `"1h"`, `"1m30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct Seconds(pub u64);

impl From<Seconds> for u64 {
    fn from(s: Seconds) -> u64 {
        s.0
    }
}

impl Seconds {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    /// Parse `30s`, `5m`, `1h`, `1m30s` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Seconds, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty duration".into());
        }
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Seconds(n));
        }
        let mut total = 0u64;
        let mut digits = String::new();
        for ch in text.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let unit = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return Err(format!("{text:?}: unknown unit {ch:?} (use s, m or h)")),
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("{text:?}: a number must come before {ch:?}"))?;
            total = total.saturating_add(n.saturating_mul(unit));
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(format!("{text:?}: the last number has no unit (s, m or h)"));
        }
        Ok(Seconds(total))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration: whole seconds (300) or text with a unit (\"5m\")")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Seconds, E> {
                Ok(Seconds(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Seconds, E> {
                u64::try_from(n)
                    .map(Seconds)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Seconds, E> {
                Seconds::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}
/// Human-readable byte count.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A byte count for a comparison the operator must be able to check: human-readable,
/// plus the exact figure when rounding could hide the difference.
pub fn exact(bytes: u64) -> String {
    if bytes < 1024 {
        human(bytes)
    } else {
        format!("{} ({bytes} bytes)", human(bytes))
    }
}

#[cfg(test)]
mod seconds_tests {
    use super::Seconds;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(Seconds::parse("30s"), Ok(Seconds(30)));
        assert_eq!(Seconds::parse("5m"), Ok(Seconds(300)));
        assert_eq!(Seconds::parse("1m30s"), Ok(Seconds(90)));
        assert_eq!(Seconds::parse("2h"), Ok(Seconds(7200)));
        assert_eq!(Seconds::parse("45"), Ok(Seconds(45)));
        assert!(Seconds::parse("30x").is_err());
        assert!(Seconds::parse("1m30").is_err());
        assert!(Seconds::parse("").is_err());
    }

    #[test]
    fn toml_takes_a_number_or_text() {
        #[derive(serde::Deserialize)]
        struct T {
            timeout: Seconds,
        }
        let a: T = toml::from_str("timeout = 12").unwrap();
        let b: T = toml::from_str("timeout = \"2m\"").unwrap();
        assert_eq!((a.timeout, b.timeout), (Seconds(12), Seconds(120)));
        assert!(toml::from_str::<T>("timeout = \"soon\"").is_err());
        let e = |text: &str| toml::from_str::<T>(text).err().map(|e| e.to_string());
        let negative = e("timeout = -5").unwrap_or_default();
        assert!(
            negative.contains("invalid value: integer `-5`"),
            "{negative}"
        );
        let float = e("timeout = 1.5").unwrap_or_default();
        assert!(float.contains("invalid type"), "{float}");
    }
}
