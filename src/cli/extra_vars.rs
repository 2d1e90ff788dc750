//! `-e/--extra-vars`: variables over every other (inventory and playbook), as
//! `ansible-playbook -e`. Each value is `key=value` (the value a string, as Ansible takes
//! it), `@file.toml` (the file's top-level table), or an inline TOML table
//! (`{ retries = 3, hosts = ["a"] }`). Later values win.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use serde_spanned::Spanned;

use crate::playbook::source::{InputError, SourceFile};
use crate::playbook::user_vars;

#[derive(Debug, thiserror::Error)]
pub enum ExtraVarsError {
    /// Not one of the three forms: bad options (exit 5).
    #[error("-e {given}: {why}")]
    Malformed { given: String, why: String },
    /// A file or table that does not parse, located: a parse error (exit 4).
    #[error(transparent)]
    Input(#[from] InputError),
}

pub fn parse(values: &[String]) -> Result<Map<String, Value>, ExtraVarsError> {
    let mut out = Map::new();
    for given in values {
        let source = if let Some(path) = given.strip_prefix('@') {
            SourceFile::read(Path::new(path))?
        } else if given.trim_start().starts_with('{') {
            let source = SourceFile::new("--extra-vars", format!("extra_vars = {given}\n"));
            let doc: BTreeMap<String, Spanned<toml::Value>> =
                toml::from_str(&source.text).map_err(|e| source.toml_error(&e))?;
            let Some(whole) = doc.get("extra_vars") else {
                continue;
            };
            let toml::Value::Table(table) = whole.get_ref() else {
                return Err(ExtraVarsError::Malformed {
                    given: given.clone(),
                    why: "expected an inline table { key = value, ... }".into(),
                });
            };
            // Errors point at the whole table: its keys carry no spans of their own.
            let table: BTreeMap<String, Spanned<toml::Value>> = table
                .iter()
                .map(|(k, v)| (k.clone(), Spanned::new(whole.span(), v.clone())))
                .collect();
            out.extend(user_vars(&source, &table)?);
            continue;
        } else {
            let (key, value) = given
                .split_once('=')
                .ok_or_else(|| ExtraVarsError::Malformed {
                    given: given.clone(),
                    why: "expected key=value, @file.toml or { key = value, ... }".into(),
                })?;
            if !is_name(key) {
                return Err(ExtraVarsError::Malformed {
                    given: given.clone(),
                    why: format!(
                        "`{key}` is not a variable name (letters, digits and `_`, not \
                         starting with a digit)"
                    ),
                });
            }
            // The value is a string, whatever it looks like (as Ansible's key=value).
            let quoted = toml::Value::String(value.to_string()).to_string();
            SourceFile::new("--extra-vars", format!("{key} = {quoted}\n"))
        };
        let table: BTreeMap<String, Spanned<toml::Value>> =
            toml::from_str(&source.text).map_err(|e| source.toml_error(&e))?;
        out.extend(user_vars(&source, &table)?);
    }
    Ok(out)
}

fn is_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
