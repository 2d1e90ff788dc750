//! Host variables a module reads: each one declared ([`VarDecl`]) beside the code that
//! reads it, listed by [`crate::module::Module::VARS`], checked by the engine's
//! `prepare` on every host that sets it, and read with [`HostReader::var_of`].

use serde_json::Value;

use crate::module::{HostReader, ModuleError};
use crate::playbook::template::Vars;

/// The kind of value a host variable must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarKind {
    Str,
    Object,
    Bool,
    Int,
    /// Any value (the reader converts it).
    Any,
}

impl VarKind {
    /// Whether `value` is of this kind.
    pub fn matches(self, value: &Value) -> bool {
        match self {
            VarKind::Str => value.is_string(),
            VarKind::Object => value.is_object(),
            VarKind::Bool => value.is_boolean(),
            VarKind::Int => value.is_i64() || value.is_u64(),
            VarKind::Any => true,
        }
    }

    /// The kind's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            VarKind::Str => "a string",
            VarKind::Object => "a table",
            VarKind::Bool => "a boolean",
            VarKind::Int => "an integer",
            VarKind::Any => "any value",
        }
    }
}

/// What kind of value `value` is, in messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// A host variable a module reads.
#[derive(Debug, PartialEq, Eq)]
pub struct VarDecl {
    pub name: &'static str,
    pub kind: VarKind,
}

impl VarDecl {
    pub const fn new(name: &'static str, kind: VarKind) -> VarDecl {
        VarDecl { name, kind }
    }

    /// Why `value` is not of the declared kind (`None`: it is).
    pub fn mismatch(&self, value: &Value) -> Option<String> {
        (!self.kind.matches(value)).then(|| {
            format!(
                "host var `{}` must be {}, found {}",
                self.name,
                self.kind.as_str(),
                kind_of(value)
            )
        })
    }

    /// The value of this var in `vars`, if set and of the declared kind.
    pub fn get<'a>(&self, vars: &'a Vars) -> Result<Option<&'a Value>, ModuleError> {
        match vars.get(self.name) {
            None => Ok(None),
            Some(v) => match self.mismatch(v) {
                Some(why) => Err(ModuleError::Precondition(why)),
                None => Ok(Some(v)),
            },
        }
    }

    /// As [`VarDecl::get`], a string (for [`VarKind::Str`] vars).
    pub fn get_str<'a>(&self, vars: &'a Vars) -> Result<Option<&'a str>, ModuleError> {
        Ok(self.get(vars)?.and_then(Value::as_str))
    }
}

/// The variable lists a module reads, e.g. `&[kube::VARS, &[&MY_VAR]]` (see
/// [`crate::module::Module::VARS`]).
pub type VarLists = &'static [&'static [&'static VarDecl]];

/// Several lists of declarations as one.
pub fn all(lists: &[&[&'static VarDecl]]) -> Vec<&'static VarDecl> {
    lists.iter().flat_map(|l| l.iter().copied()).collect()
}

impl HostReader {
    /// Host variable `decl` of this host: `None` when unset; an error when it is not of
    /// the declared kind, or (when the engine runs the module) when the module did not
    /// list it in [`crate::module::Module::VARS`].
    pub fn var_of(&self, decl: &'static VarDecl) -> Result<Option<&Value>, ModuleError> {
        if let Some(declared) = &self.declared {
            if !declared
                .iter()
                .any(|d| std::ptr::eq(*d, decl) || *d == decl)
            {
                return Err(ModuleError::Internal(format!(
                    "task `{}` reads host var `{}`, which its module does not declare (Module::VARS)",
                    self.task, decl.name
                )));
            }
        }
        decl.get(&self.vars)
    }

    /// As [`HostReader::var_of`], a string.
    pub fn var_str_of(&self, decl: &'static VarDecl) -> Result<Option<&str>, ModuleError> {
        Ok(self.var_of(decl)?.and_then(Value::as_str))
    }
}
