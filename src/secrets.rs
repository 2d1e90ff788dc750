//! The set of secret values known to a run. Everything that leaves ferry as text
//! (logs, events, journal, report, error messages) passes through [`Secrets::mask`],
//! so a secret that slipped into a command's stderr is still never printed.

use std::sync::{Arc, RwLock};

use crate::command::MASK;

/// Secret strings of this run. Cheap to clone; shared by every part of the run.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<RwLock<Vec<String>>>,
}

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a secret. Empty strings are ignored (masking them would mangle text).
    pub fn add(&self, value: impl Into<String>) {
        let value = value.into();
        if value.is_empty() {
            return;
        }
        if let Ok(mut v) = self.values.write() {
            if !v.contains(&value) {
                v.push(value);
                // Longest first, so a secret that contains another is masked whole.
                v.sort_by_key(|s| std::cmp::Reverse(s.len()));
            }
        }
    }

    /// `text` with every known secret replaced by the mask.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        if let Ok(v) = self.values.read() {
            for s in v.iter() {
                if out.contains(s.as_str()) {
                    out = out.replace(s.as_str(), MASK);
                }
            }
        }
        out
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.values.read().map(|v| v.len()).unwrap_or(0);
        write!(f, "Secrets({n} values)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_first() {
        let s = Secrets::new();
        s.add("abc");
        s.add("abcdef");
        assert_eq!(s.mask("x abcdef y abc"), "x ******** y ********");
    }
}
