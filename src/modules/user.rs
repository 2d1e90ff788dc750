//! `user`: a local account present with the given uid, groups, shell and home, or absent.
//!
//! ```toml
//! [task.user]
//! name = "deploy"
//! uid = 1500               # each field below is set (or changed) only when given
//! group = "deploy"         # primary group (must exist)
//! groups = ["docker"]      # supplementary groups (must exist): exactly these ...
//! append = false           # ... or true: at least these, others kept
//! shell = "/bin/bash"
//! home = "/home/deploy"    # a new home is created (create_home = false: not)
//! comment = "Deploy user"
//! system = false           # a system account (useradd -r) when created
//! state = "present"        # present (default) | absent
//! remove = false           # absent: also remove the home directory and mail spool
//! ```
//!
//! Facts are `getent passwd`, the account's groups (`id -gn`, `id -Gn`) and whether each
//! named group exists; `useradd`, `usermod` and `userdel` make the changes. A group that
//! does not exist is refused before anything runs, naming it (create it with `group`
//! first; in `--check` a group an earlier task would create is not there yet, and is
//! reported the same way). Changing `home` points the account at it; it does not move
//! files.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::Diff;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Module, ModuleError, OneCommand, Probe, TaskCtx,
};
use crate::modules::group::{check_account_name, getent_group, Presence};
use crate::playbook::template::Template;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Template,
    pub uid: Option<u32>,
    pub group: Option<Template>,
    pub groups: Option<Vec<Template>>,
    #[serde(default)]
    pub append: bool,
    pub shell: Option<Template>,
    pub home: Option<Template>,
    #[serde(default = "yes")]
    pub create_home: bool,
    pub comment: Option<Template>,
    #[serde(default)]
    pub system: bool,
    #[serde(default)]
    pub state: Presence,
    #[serde(default)]
    pub remove: bool,
}

/// The account as the host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub uid: u32,
    /// The primary group's name.
    pub group: String,
    /// Supplementary groups.
    pub groups: BTreeSet<String>,
    pub comment: String,
    pub home: String,
    pub shell: String,
}

/// What the user should be (rendered), where given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Wanted {
    pub uid: Option<u32>,
    pub group: Option<String>,
    pub groups: Option<BTreeSet<String>>,
    pub append: bool,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserFacts {
    pub host: String,
    pub name: String,
    pub account: Option<Account>,
    /// Named groups (primary and supplementary) the host does not have.
    pub missing_groups: Vec<String>,
    pub wanted: Wanted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum UserChange {
    Create {
        name: String,
        wanted: Wanted,
        create_home: bool,
        system: bool,
    },
    /// Only the fields that differ are set.
    Modify {
        name: String,
        set: Wanted,
        /// The same fields as they are now, for the report.
        before: Wanted,
    },
    Delete {
        name: String,
        remove: bool,
    },
}

/// The useradd/usermod options for the given fields.
fn field_args(mut cmd: Cmd, w: &Wanted) -> Cmd {
    if let Some(uid) = w.uid {
        cmd = cmd.arg("-u").arg(uid.to_string());
    }
    if let Some(g) = &w.group {
        cmd = cmd.arg("-g").arg(g);
    }
    if let Some(gs) = &w.groups {
        if w.append {
            cmd = cmd.arg("-a");
        }
        cmd = cmd
            .arg("-G")
            .arg(gs.iter().cloned().collect::<Vec<_>>().join(","));
    }
    if let Some(s) = &w.shell {
        cmd = cmd.arg("-s").arg(s);
    }
    if let Some(h) = &w.home {
        cmd = cmd.arg("-d").arg(h);
    }
    if let Some(c) = &w.comment {
        cmd = cmd.arg("-c").arg(c);
    }
    cmd
}

fn describe_fields(w: &Wanted) -> String {
    let mut parts = Vec::new();
    if let Some(uid) = w.uid {
        parts.push(format!("uid {uid}"));
    }
    if let Some(g) = &w.group {
        parts.push(format!("group {g}"));
    }
    if let Some(gs) = &w.groups {
        let list = gs.iter().cloned().collect::<Vec<_>>().join(",");
        parts.push(if w.append {
            format!("also in groups {list}")
        } else {
            format!("groups {}", if list.is_empty() { "(none)" } else { &list })
        });
    }
    if let Some(s) = &w.shell {
        parts.push(format!("shell {s}"));
    }
    if let Some(h) = &w.home {
        parts.push(format!("home {h}"));
    }
    if let Some(c) = &w.comment {
        parts.push(format!("comment {c:?}"));
    }
    parts.join(", ")
}

impl OneCommand for UserChange {
    fn cmd(&self) -> Cmd {
        match self {
            UserChange::Create {
                name,
                wanted,
                create_home,
                system,
            } => {
                // A new account is in no supplementary group anyway: `-G ''` would
                // name a group called "".
                let mut wanted = wanted.clone();
                wanted.groups = wanted.groups.filter(|g| !g.is_empty());
                let mut cmd = field_args(Cmd::new("useradd"), &wanted);
                cmd = cmd.arg(if *create_home { "-m" } else { "-M" });
                if *system {
                    cmd = cmd.arg("-r");
                }
                cmd.arg(name)
            }
            UserChange::Modify { name, set, .. } => field_args(Cmd::new("usermod"), set).arg(name),
            UserChange::Delete { name, remove } => {
                let cmd = Cmd::new("userdel");
                if *remove { cmd.arg("-r") } else { cmd }.arg(name)
            }
        }
    }
}

impl Change for UserChange {
    fn describe(&self) -> String {
        match self {
            UserChange::Create { name, wanted, .. } => {
                let fields = describe_fields(wanted);
                if fields.is_empty() {
                    format!("create user {name}")
                } else {
                    format!("create user {name} ({fields})")
                }
            }
            UserChange::Modify { name, set, before } => {
                format!(
                    "change user {name}: {} (was {})",
                    describe_fields(set),
                    describe_fields(before)
                )
            }
            UserChange::Delete { name, remove } => {
                if *remove {
                    format!("delete user {name} and its home")
                } else {
                    format!("delete user {name}")
                }
            }
        }
    }
    fn commands(&self) -> Vec<String> {
        vec![self.cmd().display()]
    }
    fn diff(&self) -> Option<Diff> {
        let (name, before, after) = match self {
            UserChange::Create { name, wanted, .. } => (
                name,
                "state: absent\n".to_string(),
                format!("state: present\n{}", field_lines(wanted)),
            ),
            UserChange::Modify { name, set, before } => {
                (name, field_lines(before), field_lines(set))
            }
            UserChange::Delete { name, .. } => (
                name,
                "state: present\n".to_string(),
                "state: absent\n".to_string(),
            ),
        };
        Some(Diff {
            what: format!("user {name}"),
            before,
            after,
        })
    }
}

/// The given fields, one `key: value` line each (for `--diff`).
fn field_lines(w: &Wanted) -> String {
    describe_fields(w)
        .split(", ")
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once(' ') {
            Some((k, v)) => format!("{k}: {v}\n"),
            None => format!("{f}\n"),
        })
        .collect()
}

/// Pure: the account from `getent passwd`'s line and `id -gn`/`id -Gn`'s.
pub fn parse_account(passwd: &str, group: &str, all_groups: &str) -> Result<Account, String> {
    let line = passwd.trim();
    let f: Vec<&str> = line.split(':').collect();
    let [_, _, uid, _, comment, home, shell] = f.as_slice() else {
        return Err(format!("unexpected passwd entry: {line}"));
    };
    let group = group.trim().to_string();
    Ok(Account {
        uid: uid
            .parse()
            .map_err(|_| format!("bad uid in passwd entry: {line}"))?,
        groups: all_groups
            .split_whitespace()
            .filter(|g| *g != group)
            .map(str::to_string)
            .collect(),
        group,
        comment: comment.to_string(),
        home: home.to_string(),
        shell: shell.to_string(),
    })
}

impl User {
    /// Pure: what makes the account what is wanted.
    pub fn changes(&self, facts: &UserFacts) -> Result<Vec<UserChange>, ModuleError> {
        let name = facts.name.clone();
        if self.state == Presence::Absent {
            return Ok(match facts.account {
                Some(_) => vec![UserChange::Delete {
                    name,
                    remove: self.remove,
                }],
                None => Vec::new(),
            });
        }
        if !facts.missing_groups.is_empty() {
            return Err(ModuleError::Precondition(format!(
                "user {name} on {}: no group {} on the host (create it first, e.g. with the \
                 group module)",
                facts.host,
                facts.missing_groups.join(", ")
            )));
        }
        let w = &facts.wanted;
        let Some(have) = &facts.account else {
            return Ok(vec![UserChange::Create {
                name,
                wanted: w.clone(),
                create_home: self.create_home,
                system: self.system,
            }]);
        };
        let mut set = Wanted {
            append: w.append,
            ..Default::default()
        };
        let mut before = Wanted {
            append: false,
            ..Default::default()
        };
        if let Some(uid) = w.uid.filter(|u| *u != have.uid) {
            set.uid = Some(uid);
            before.uid = Some(have.uid);
        }
        if let Some(g) = w.group.clone().filter(|g| *g != have.group) {
            set.group = Some(g);
            before.group = Some(have.group.clone());
        }
        if let Some(gs) = &w.groups {
            let differs = if w.append {
                !gs.is_subset(&have.groups)
            } else {
                *gs != have.groups
            };
            if differs {
                set.groups = Some(if w.append {
                    gs.difference(&have.groups).cloned().collect()
                } else {
                    gs.clone()
                });
                before.groups = Some(have.groups.clone());
            }
        }
        if let Some(s) = w.shell.clone().filter(|s| *s != have.shell) {
            set.shell = Some(s);
            before.shell = Some(have.shell.clone());
        }
        if let Some(h) = w.home.clone().filter(|h| *h != have.home) {
            set.home = Some(h);
            before.home = Some(have.home.clone());
        }
        if let Some(c) = w.comment.clone().filter(|c| *c != have.comment) {
            set.comment = Some(c);
            before.comment = Some(have.comment.clone());
        }
        if set
            == (Wanted {
                append: w.append,
                ..Default::default()
            })
        {
            return Ok(Vec::new());
        }
        Ok(vec![UserChange::Modify { name, set, before }])
    }
}

/// A field that becomes one argument of useradd/usermod (and a line of /etc/passwd):
/// no `:` or line breaks; shell and home absolute.
fn check_field(
    t: &Option<Template>,
    field: &'static str,
    absolute: bool,
    at: &ArgCheck<'_>,
) -> Result<(), ArgError> {
    let Some(t) = t else { return Ok(()) };
    let value = at.render(t)?;
    if value.contains([':', '\n', '\r']) {
        return Err(ArgError::template(
            t,
            format!("{field} {value:?}: no ':' or line breaks (it is a field of /etc/passwd)"),
        ));
    }
    if absolute && !value.starts_with('/') {
        return Err(ArgError::template(
            t,
            format!("{field} {value:?}: an absolute path"),
        ));
    }
    Ok(())
}

#[async_trait]
impl Module for User {
    type Facts = UserFacts;
    type Change = UserChange;

    const TEXT_FIELDS: &'static [&'static str] = &["comment"];

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        check_account_name(&self.name, at)?;
        if let Some(g) = &self.group {
            check_account_name(g, at)?;
        }
        for g in self.groups.iter().flatten() {
            check_account_name(g, at)?;
        }
        check_field(&self.shell, "shell", true, at)?;
        check_field(&self.home, "home", true, at)?;
        check_field(&self.comment, "comment", false, at)?;
        if self.state == Presence::Absent {
            let given = self.uid.is_some()
                || self.group.is_some()
                || self.groups.is_some()
                || self.shell.is_some()
                || self.home.is_some()
                || self.comment.is_some();
            if given {
                return Err(ArgError::field(
                    "state",
                    "state = \"absent\" takes only name and remove",
                ));
            }
        } else if self.remove {
            return Err(ArgError::field(
                "remove",
                "remove is for state = \"absent\"",
            ));
        }
        if self.append && self.groups.is_none() {
            return Err(ArgError::field(
                "append",
                "append is about groups: give groups",
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<UserFacts, ModuleError> {
        let name = probe.render_operand(&self.name)?;
        let render = |t: &Option<Template>| t.as_ref().map(|t| probe.render_operand(t)).transpose();
        let wanted = Wanted {
            uid: self.uid,
            group: render(&self.group)?,
            groups: self
                .groups
                .as_ref()
                .map(|gs| gs.iter().map(|g| probe.render_operand(g)).collect())
                .transpose()?,
            append: self.append,
            shell: render(&self.shell)?,
            home: render(&self.home)?,
            comment: self.comment.as_ref().map(|c| probe.render(c)).transpose()?,
        };
        let remote = |what: String| {
            let host = probe.host.clone();
            move |detail: String| ModuleError::Remote {
                what: format!("{what} on {host}"),
                detail,
            }
        };
        let passwd = probe
            .exec(&Cmd::new("getent").arg("passwd").arg(&name))
            .await?;
        let account = match passwd.status {
            Some(0) => {
                let group = probe.exec_ok(&Cmd::new("id").arg("-gn").arg(&name)).await?;
                let all = probe.exec_ok(&Cmd::new("id").arg("-Gn").arg(&name)).await?;
                Some(
                    parse_account(&passwd.stdout_str(), &group.stdout_str(), &all.stdout_str())
                        .map_err(remote(format!("reading user {name}")))?,
                )
            }
            Some(2) => None,
            _ => {
                return Err(remote(format!("getent passwd {name}"))(
                    passwd.stderr_str().trim().to_string(),
                ))
            }
        };
        let mut missing_groups = Vec::new();
        if self.state == Presence::Present {
            let named = wanted.group.iter().chain(wanted.groups.iter().flatten());
            for g in named.collect::<BTreeSet<_>>() {
                if getent_group(probe, g).await?.is_empty() {
                    missing_groups.push(g.clone());
                }
            }
        }
        Ok(UserFacts {
            host: probe.host.clone(),
            name,
            account,
            missing_groups,
            wanted,
        })
    }

    fn decide(&self, facts: &UserFacts) -> Result<Vec<UserChange>, ModuleError> {
        self.changes(facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &UserFacts,
        changes: &[UserChange],
    ) -> Result<Applied, ModuleError> {
        crate::module::apply_commands(ctx, changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(toml_body: &str) -> User {
        toml::from_str(&format!("name = \"deploy\"\n{toml_body}")).unwrap()
    }

    fn facts(account: Option<Account>, wanted: Wanted) -> UserFacts {
        UserFacts {
            host: "h".into(),
            name: "deploy".into(),
            account,
            missing_groups: Vec::new(),
            wanted,
        }
    }

    fn account() -> Account {
        parse_account(
            "deploy:x:1500:1500:Deploy:/home/deploy:/bin/sh\n",
            "deploy\n",
            "deploy adm docker\n",
        )
        .unwrap()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_account_is_read_from_getent_and_id() {
        let a = account();
        assert_eq!(a.uid, 1500);
        assert_eq!(a.group, "deploy");
        assert_eq!(a.groups, set(&["adm", "docker"]));
        assert_eq!(
            (a.home.as_str(), a.shell.as_str()),
            ("/home/deploy", "/bin/sh")
        );
        assert!(parse_account("deploy:x:1500", "", "").is_err());
    }

    #[test]
    fn a_missing_user_is_created_with_what_is_given() {
        let u = user("uid = 1500\nshell = \"/bin/bash\"\ngroups = [\"docker\"]\n");
        let w = Wanted {
            uid: Some(1500),
            groups: Some(set(&["docker"])),
            shell: Some("/bin/bash".into()),
            ..Default::default()
        };
        let c = u.changes(&facts(None, w)).unwrap();
        assert_eq!(
            c[0].cmd().display(),
            "useradd -u 1500 -G docker -s /bin/bash -m deploy"
        );
        let none = Wanted {
            groups: Some(BTreeSet::new()),
            ..Default::default()
        };
        let c = user("groups = []").changes(&facts(None, none)).unwrap();
        assert_eq!(c[0].cmd().display(), "useradd -m deploy");
    }

    #[test]
    fn an_existing_user_changes_only_the_fields_that_differ() {
        let u = user("");
        let same = Wanted {
            uid: Some(1500),
            shell: Some("/bin/sh".into()),
            groups: Some(set(&["adm", "docker"])),
            ..Default::default()
        };
        assert!(u.changes(&facts(Some(account()), same)).unwrap().is_empty());
        let other = Wanted {
            uid: Some(1500),
            shell: Some("/bin/bash".into()),
            groups: Some(set(&["docker"])),
            ..Default::default()
        };
        let c = u.changes(&facts(Some(account()), other)).unwrap();
        assert_eq!(
            c[0].cmd().display(),
            "usermod -G docker -s /bin/bash deploy"
        );
        let d = c[0].diff().unwrap();
        assert_eq!(d.before, "groups: adm,docker\nshell: /bin/sh\n");
        assert_eq!(d.after, "groups: docker\nshell: /bin/bash\n");
        assert_eq!(
            c[0].describe(),
            "change user deploy: groups docker, shell /bin/bash (was groups adm,docker, shell /bin/sh)"
        );
        // append: at least these groups.
        let append = Wanted {
            groups: Some(set(&["docker"])),
            append: true,
            ..Default::default()
        };
        assert!(u
            .changes(&facts(Some(account()), append))
            .unwrap()
            .is_empty());
        let append = Wanted {
            groups: Some(set(&["docker", "sudo"])),
            append: true,
            ..Default::default()
        };
        let c = u.changes(&facts(Some(account()), append)).unwrap();
        assert_eq!(c[0].cmd().display(), "usermod -a -G sudo deploy");
    }

    #[test]
    fn absent_deletes_and_missing_groups_are_named() {
        let u = user("state = \"absent\"\nremove = true\n");
        let c = u
            .changes(&facts(Some(account()), Wanted::default()))
            .unwrap();
        assert_eq!(c[0].cmd().display(), "userdel -r deploy");
        assert!(u
            .changes(&facts(None, Wanted::default()))
            .unwrap()
            .is_empty());
        let mut f = facts(None, Wanted::default());
        f.missing_groups = vec!["docker".into()];
        let e = user("").changes(&f).unwrap_err().to_string();
        assert!(e.contains("no group docker on the host"), "{e}");
    }
}
