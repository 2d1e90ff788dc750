//! `group`: a local group present (with a gid) or absent.
//!
//! ```toml
//! [task.group]
//! name = "deploy"
//! gid = 1600               # optional: set (or changed) when given
//! system = false           # a system group (groupadd -r) when created
//! state = "present"        # present (default) | absent
//! ```
//!
//! Facts are `getent group NAME`; `groupadd`, `groupmod -g` and `groupdel` make the
//! changes. Names are checked as account names ([`valid_account_name`]) before anything
//! runs, so no value reaches those tools as an option.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::Diff;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Module, ModuleError, OneCommand, Probe, TaskCtx,
};
use crate::playbook::template::Template;

/// `present` or `absent`, for `user` and `group`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    #[default]
    Present,
    Absent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: Template,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
    #[serde(default)]
    pub state: Presence,
}

/// A user or group name the shadow tools take: letters, digits, `_`, `.` and `-`, not
/// starting with `-` (an option) or a digit (a number is read as an id), at most 32
/// characters; a trailing `$` (Samba machine accounts) is allowed.
pub fn valid_account_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= 32
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Render `t` for `at` and check it is an account name.
pub fn check_account_name(t: &Template, at: &ArgCheck<'_>) -> Result<String, ArgError> {
    let name = at.render(t)?;
    if !valid_account_name(&name) {
        return Err(ArgError::template(
            t,
            format!(
                "{name:?} is not a user or group name (letters, digits, _ . -, starting with \
                 a letter or _, at most 32 characters)"
            ),
        ));
    }
    Ok(name)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupFacts {
    pub name: String,
    /// The group's gid; `None`: no such group.
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GroupChange {
    Create {
        name: String,
        gid: Option<u32>,
        system: bool,
    },
    SetGid {
        name: String,
        from: u32,
        to: u32,
    },
    Delete {
        name: String,
    },
}

impl OneCommand for GroupChange {
    fn cmd(&self) -> Cmd {
        match self {
            GroupChange::Create { name, gid, system } => {
                let mut cmd = Cmd::new("groupadd");
                if let Some(gid) = gid {
                    cmd = cmd.arg("-g").arg(gid.to_string());
                }
                if *system {
                    cmd = cmd.arg("-r");
                }
                cmd.arg(name)
            }
            GroupChange::SetGid { name, to, .. } => {
                Cmd::new("groupmod").arg("-g").arg(to.to_string()).arg(name)
            }
            GroupChange::Delete { name } => Cmd::new("groupdel").arg(name),
        }
    }
}

impl Change for GroupChange {
    fn describe(&self) -> String {
        match self {
            GroupChange::Create { name, gid, .. } => match gid {
                Some(gid) => format!("create group {name} (gid {gid})"),
                None => format!("create group {name}"),
            },
            GroupChange::SetGid { name, from, to } => {
                format!("change the gid of group {name} from {from} to {to}")
            }
            GroupChange::Delete { name } => format!("delete group {name}"),
        }
    }
    fn commands(&self) -> Vec<String> {
        vec![self.cmd().display()]
    }
    fn diff(&self) -> Option<Diff> {
        let (name, before, after) = match self {
            GroupChange::Create { name, gid, .. } => (
                name,
                "state: absent".to_string(),
                match gid {
                    Some(g) => format!("state: present\ngid: {g}"),
                    None => "state: present".to_string(),
                },
            ),
            GroupChange::SetGid { name, from, to } => {
                (name, format!("gid: {from}"), format!("gid: {to}"))
            }
            GroupChange::Delete { name } => (
                name,
                "state: present".to_string(),
                "state: absent".to_string(),
            ),
        };
        Some(Diff {
            what: format!("group {name}"),
            before,
            after,
        })
    }
}

/// Pure: the facts from `getent group`'s line (empty: no such group).
pub fn parse_group(name: &str, line: &str) -> Result<GroupFacts, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(GroupFacts {
            name: name.to_string(),
            gid: None,
        });
    }
    let fields: Vec<&str> = line.split(':').collect();
    let gid = fields
        .get(2)
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("unexpected group entry: {line}"))?;
    Ok(GroupFacts {
        name: name.to_string(),
        gid: Some(gid),
    })
}

impl Group {
    /// Pure: the change that makes the group what is wanted.
    pub fn changes(&self, facts: &GroupFacts) -> Vec<GroupChange> {
        let name = facts.name.clone();
        match (self.state, facts.gid) {
            (Presence::Absent, Some(_)) => vec![GroupChange::Delete { name }],
            (Presence::Absent, None) => Vec::new(),
            (Presence::Present, None) => vec![GroupChange::Create {
                name,
                gid: self.gid,
                system: self.system,
            }],
            (Presence::Present, Some(have)) => match self.gid {
                Some(want) if want != have => vec![GroupChange::SetGid {
                    name,
                    from: have,
                    to: want,
                }],
                _ => Vec::new(),
            },
        }
    }
}

/// `getent group NAME`'s line, empty when there is none (exit 2).
pub async fn getent_group(probe: &Probe<'_>, name: &str) -> Result<String, ModuleError> {
    let out = probe
        .exec(&Cmd::new("getent").arg("group").arg(name))
        .await?;
    match out.status {
        Some(0) => Ok(out.stdout_str()),
        Some(2) => Ok(String::new()),
        _ => Err(ModuleError::Remote {
            what: format!("getent group {name} on {}", probe.host),
            detail: out.stderr_str().trim().to_string(),
        }),
    }
}

#[async_trait]
impl Module for Group {
    type Facts = GroupFacts;
    type Change = GroupChange;

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        check_account_name(&self.name, at)?;
        if self.state == Presence::Absent && (self.gid.is_some() || self.system) {
            return Err(ArgError::field(
                "gid",
                "gid and system are for state = \"present\"",
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<GroupFacts, ModuleError> {
        let name = probe.render_operand(&self.name)?;
        let line = getent_group(probe, &name).await?;
        parse_group(&name, &line).map_err(|detail| ModuleError::Remote {
            what: format!("reading group {name} on {}", probe.host),
            detail,
        })
    }

    fn decide(&self, facts: &GroupFacts) -> Result<Vec<GroupChange>, ModuleError> {
        Ok(self.changes(facts))
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &GroupFacts,
        changes: &[GroupChange],
    ) -> Result<Applied, ModuleError> {
        crate::module::apply_commands(ctx, changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(gid: Option<u32>, state: Presence) -> Group {
        Group {
            name: Template::new("deploy"),
            gid,
            system: false,
            state,
        }
    }

    #[test]
    fn a_group_is_created_changed_or_deleted_only_when_it_differs() {
        let missing = parse_group("deploy", "").unwrap();
        let there = parse_group("deploy", "deploy:x:1600:alice,bob\n").unwrap();
        assert_eq!(there.gid, Some(1600));
        let c = group(Some(1600), Presence::Present).changes(&missing);
        assert_eq!(c[0].cmd().display(), "groupadd -g 1600 deploy");
        assert!(group(Some(1600), Presence::Present)
            .changes(&there)
            .is_empty());
        assert!(group(None, Presence::Present).changes(&there).is_empty());
        let c = group(Some(1700), Presence::Present).changes(&there);
        assert_eq!(
            c[0].describe(),
            "change the gid of group deploy from 1600 to 1700"
        );
        assert_eq!(c[0].cmd().display(), "groupmod -g 1700 deploy");
        let c = group(None, Presence::Absent).changes(&there);
        assert_eq!(c[0].cmd().display(), "groupdel deploy");
        assert!(group(None, Presence::Absent).changes(&missing).is_empty());
        assert!(parse_group("deploy", "deploy:x").is_err());
    }

    #[test]
    fn account_names_are_checked() {
        for ok in ["deploy", "_apt", "www-data", "a.b", "host$"] {
            assert!(valid_account_name(ok), "{ok}");
        }
        for bad in ["", "-r", "1000", "a b", "a,b", "a:b", "$", &"x".repeat(33)] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }
}
