//! The set of secret values known to a run, and how ferry hides them.
//!
//! Masking applies to *values* — text that came from the host or from vars: command
//! lines, stdout/stderr, rendered fields, log lines — never to ferry's own fixed words
//! (statuses, event names, JSON keys, table headers). So every writer masks its data
//! fields before it composes or serializes them (the events, the journal, the report),
//! instead of masking the finished text: a short secret such as `ok` is then masked
//! where a host printed it, and the status column still says `ok` (a masked status
//! would give the secret away).
//!
//! A secret is also searched for in the forms it takes once escaped: JSON-escaped (a
//! host's `docker inspect`, ferry's own JSON), Go's HTML-safe JSON, Rust debug quoting
//! (logs) and POSIX shell quoting (a command line), so a secret with `"`, `\` or `'`
//! cannot slip past the mask in its quoted form.
//!
//! Very short secrets are still masked in remote data (every occurrence, also inside
//! longer words of a host's output): hiding the secret matters more than the output's
//! readability. `docs/inventory.md` says so.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::command::{quote, quote_strict, MASK};

/// Secret strings of this run. Cheap to clone; shared by every part of the run.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Every registered value and its escaped forms, longest first.
    values: Arc<RwLock<Vec<String>>>,
}

/// The forms `value` takes in ferry's and the hosts' output: itself and its escapes.
fn escaped_forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_string()];
    let json = serde_json::to_string(value).unwrap_or_default();
    let json_inner = json
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    // Go's encoding/json (docker, kubectl) also escapes <, > and & by default.
    let go_json = json_inner
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let debug = format!("{value:?}");
    let debug_inner = debug
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    forms.extend([
        json_inner,
        go_json,
        debug_inner,
        quote(value),
        quote_strict(value),
    ]);
    forms.retain(|f| !f.is_empty());
    forms
}

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a secret (and its escaped forms). Empty strings are ignored (masking
    /// them would mangle text).
    pub fn add(&self, value: impl Into<String>) {
        let value = value.into();
        if value.is_empty() {
            return;
        }
        if let Ok(mut v) = self.values.write() {
            for form in escaped_forms(&value) {
                if !v.contains(&form) {
                    v.push(form);
                }
            }
            // Longest first, so a secret that contains another is masked whole, and an
            // escaped form before the bare value it contains.
            v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Register every value reachable in `value` (a var named in `secret_vars`): strings
    /// and numbers as they render. Booleans and null are not searched for in output (a
    /// mask on every `true` would say nothing and hide everything); they are masked
    /// where ferry displays the var (see [`Secrets::mask_all`]).
    pub fn add_value(&self, value: &Value) {
        match value {
            Value::String(s) => self.add(s.clone()),
            Value::Number(n) => self.add(n.to_string()),
            Value::Array(a) => a.iter().for_each(|x| self.add_value(x)),
            Value::Object(m) => m.values().for_each(|x| self.add_value(x)),
            Value::Bool(_) | Value::Null => {}
        }
    }

    /// Whether `text` is exactly a registered secret (or one of its escaped forms).
    pub fn is_secret(&self, text: &str) -> bool {
        self.values
            .read()
            .map(|v| v.iter().any(|s| s == text))
            .unwrap_or(false)
    }

    /// `text` (a value: remote output, a command line, a rendered field) with every
    /// known secret replaced by the mask. Not for ferry's own words; see the module docs.
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

    /// `value` with every string masked and every number that is a secret replaced by
    /// the mask. Object keys are names, not values: they stay.
    pub fn mask_value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.mask(s)),
            Value::Number(n) if self.is_secret(&n.to_string()) => Value::String(MASK.into()),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.mask_value(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.mask_value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// `value` (a secret var) with every leaf, of any type, replaced by the mask; the
    /// shape stays, so `{{ db.password }}` still renders (masked) in a display.
    pub fn mask_all(value: &Value) -> Value {
        match value {
            Value::Array(a) => Value::Array(a.iter().map(Secrets::mask_all).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), Secrets::mask_all(x)))
                    .collect(),
            ),
            _ => Value::String(MASK.into()),
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.values.read().map(|v| v.len()).unwrap_or(0);
        write!(f, "Secrets({n} forms)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_longest_first() {
        let s = Secrets::new();
        s.add("abc");
        s.add("abcdef");
        assert_eq!(s.mask("x abcdef y abc"), "x ******** y ********");
    }

    /// A secret with `"`, `\` or `'` is masked in its JSON-escaped, debug-quoted and
    /// shell-quoted forms too.
    #[test]
    fn escaped_forms_are_masked() {
        let secret = "p\"a\\s's<&>";
        let s = Secrets::new();
        s.add(secret);
        // Masked, and no piece of the secret left around the mask.
        let hidden = |text: &str| {
            let masked = s.mask(text);
            assert!(masked.contains(MASK), "{masked}");
            for piece in ["p\\\"a", "a\\", "s's", "\\u003c", "<&>"] {
                assert!(!masked.contains(piece), "`{piece}` left in {masked}");
            }
        };
        let json = serde_json::to_string(&json!({ "stderr": secret })).unwrap();
        assert!(!json.contains(secret), "the test needs an escaped form");
        hidden(&json);
        hidden(r#"{"Env":["PW=p\"a\\s's\u003c\u0026\u003e"]}"#);
        hidden(&format!("cmd={secret:?}"));
        hidden(&format!("echo {}", quote(secret)));
        hidden(&format!("echo {}", quote_strict(secret)));
    }

    #[test]
    fn every_value_under_a_secret_var_is_registered() {
        let s = Secrets::new();
        s.add_value(&json!({"user": "dbadmin", "port": 15432, "keys": ["k-one", 2.5], "on": true}));
        assert_eq!(
            s.mask("dbadmin k-one 15432 2.5 true"),
            "******** ******** ******** ******** true"
        );
        assert_eq!(
            s.mask_value(&json!({"p": 15432, "q": 7, "dbadmin": "dbadmin"})),
            json!({"p": MASK, "q": 7, "dbadmin": MASK})
        );
        assert_eq!(
            Secrets::mask_all(&json!({"a": [1, true, null], "b": "x"})),
            json!({"a": [MASK, MASK, MASK], "b": MASK})
        );
    }
}
