//! The task keys around a module that Ansible users write every day: `register`,
//! `loop`, `notify`, `ignore_errors`, `changed_when`/`failed_when`, `timeout`. Parsed
//! here; the engine gives them their meaning (`crate::engine::keys`).

use std::ops::Range;

use serde_json::Value;

use super::template::{Vars, BUILTIN_VARS};

/// `loop`: the items a task runs once for, each as the var `item`.
#[derive(Debug, Clone, PartialEq)]
pub enum Loop {
    /// `loop = ["a", "b"]` (any TOML values).
    Items(Vec<Value>),
    /// `loop = "{{ packages }}"`: a var (a dotted path, `result.stdout_lines`) that
    /// holds a list, per host.
    Var {
        path: Vec<String>,
        span: Range<usize>,
    },
}

impl Loop {
    /// Read `loop`'s value; `Err` says what is wrong with it.
    pub fn parse(value: &toml::Value, span: Range<usize>) -> Result<Loop, String> {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map(Loop::Items),
            toml::Value::String(s) => {
                let inner = s
                    .trim()
                    .strip_prefix("{{")
                    .and_then(|r| r.strip_suffix("}}"))
                    .map(str::trim)
                    .filter(|p| {
                        !p.is_empty()
                            && p.split('.').all(|seg| {
                                !seg.is_empty()
                                    && seg
                                        .bytes()
                                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                            })
                    })
                    .ok_or_else(|| {
                        format!(
                            "`loop` is a list, or one variable holding a list written as \
                             \"{{{{ name }}}}\" (a dotted path is fine: \"{{{{ result.stdout_lines }}}}\"); \
                             found \"{s}\""
                        )
                    })?;
                Ok(Loop::Var {
                    path: inner.split('.').map(str::to_string).collect(),
                    span,
                })
            }
            other => Err(format!(
                "`loop` is a list or \"{{{{ var }}}}\", found a {}",
                other.type_str()
            )),
        }
    }

    /// The variable a `Var` loop starts from (for deciding when it can be resolved).
    pub fn root_var(&self) -> Option<&str> {
        match self {
            Loop::Items(_) => None,
            Loop::Var { path, .. } => path.first().map(String::as_str),
        }
    }

    /// The items for a host; `Err` says why its var gives none.
    pub fn items(&self, vars: &Vars) -> Result<Vec<Value>, String> {
        let (path, _) = match self {
            Loop::Items(items) => return Ok(items.clone()),
            Loop::Var { path, span } => (path, span),
        };
        let shown = path.join(".");
        let mut value = vars
            .get(&path[0])
            .ok_or_else(|| format!("`loop`: undefined variable `{shown}`"))?;
        for seg in &path[1..] {
            value = match value {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }
            .ok_or_else(|| format!("`loop`: undefined variable `{shown}`"))?;
        }
        match value {
            Value::Array(items) => Ok(items.clone()),
            other => Err(format!(
                "`loop`: `{shown}` must be a list, found {}",
                crate::module::vars::kind_of(other)
            )),
        }
    }
}

/// How an item is named in the report: a string as it is, anything else as JSON.
pub fn item_label(item: &Value) -> String {
    match item {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `register`'s name: a variable name that is not one ferry sets.
pub fn check_register_name(name: &str) -> Result<(), String> {
    let ident = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ident {
        return Err(format!(
            "`register = \"{name}\"`: a variable name is lowercase letters, digits and `_`, \
             not starting with a digit"
        ));
    }
    if BUILTIN_VARS.contains(&name) || name == "item" {
        return Err(format!(
            "`register = \"{name}\"`: `{name}` is a variable ferry sets itself; choose another name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secrets;
    use serde_json::json;

    #[test]
    fn a_loop_is_a_list_or_one_var() {
        let items = Loop::parse(&toml::Value::Array(vec!["a".into(), 2.into()]), 0..1).unwrap();
        assert_eq!(items, Loop::Items(vec![json!("a"), json!(2)]));
        let var = Loop::parse(&"{{ r.stdout_lines }}".into(), 3..9).unwrap();
        assert_eq!(var.root_var(), Some("r"));
        for bad in ["{{ a }} {{ b }}", "x", "{{ }}", "{{ a..b }}"] {
            assert!(Loop::parse(&bad.into(), 0..1).is_err(), "{bad}");
        }
        assert!(Loop::parse(&toml::Value::Integer(3), 0..1).is_err());
    }

    #[test]
    fn a_var_loop_takes_its_list_from_the_hosts_vars() {
        let vars = Vars::new(
            json!({"r": {"stdout_lines": ["x", "y"]}, "n": 3})
                .as_object()
                .cloned()
                .unwrap(),
            &Secrets::new(),
        );
        let var = Loop::parse(&"{{ r.stdout_lines }}".into(), 0..1).unwrap();
        assert_eq!(var.items(&vars).unwrap(), vec![json!("x"), json!("y")]);
        let e = Loop::parse(&"{{ n }}".into(), 0..1)
            .unwrap()
            .items(&vars)
            .unwrap_err();
        assert!(e.contains("must be a list"), "{e}");
        let e = Loop::parse(&"{{ nope }}".into(), 0..1)
            .unwrap()
            .items(&vars)
            .unwrap_err();
        assert!(e.contains("undefined variable `nope`"), "{e}");
    }

    #[test]
    fn register_names_are_variable_names_ferry_does_not_set() {
        assert!(check_register_name("result_1").is_ok());
        for bad in ["Result", "1x", "a-b", "", "item", "inventory_hostname"] {
            assert!(check_register_name(bad).is_err(), "{bad}");
        }
    }
}
