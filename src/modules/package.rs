//! `package`: system packages installed, removed or at their newest version, through the
//! host's package manager (apt on Debian and Ubuntu; dnf, else yum, on Fedora and RHEL).
//!
//! ```toml
//! [task.package]
//! names = ["nginx", "jq"]
//! state = "present"        # present (default) | absent | latest
//! update_cache = true      # apt: `apt-get update` before installing (default false)
//! ```
//!
//! Facts are one script: which manager the host has, each package's installed version
//! and, for apt, its candidate from the host's package lists (dnf/yum: whether an
//! upgrade is available). The decision installs what is missing, removes what is there
//! (`absent`) or upgrades what has a newer version (`latest`): a re-run changes nothing.
//! apt runs non-interactively, keeps changed config files (`--force-confold`) and waits
//! up to a minute for another apt or dpkg holding the lock. A name apt's lists do not
//! know is refused before anything runs (unless `update_cache` may bring it).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::Diff;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Module, ModuleError, OneCommand, Probe, TaskCtx,
};
use crate::playbook::template::Template;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    #[default]
    Present,
    Absent,
    Latest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub names: Vec<Template>,
    #[serde(default)]
    pub state: PackageState,
    #[serde(default)]
    pub update_cache: bool,
}

/// The host's package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Apt,
    Dnf,
    Yum,
}

impl Manager {
    fn name(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Yum => "yum",
        }
    }
}

/// One package as the host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageInfo {
    pub name: String,
    /// The installed version; `None`: not installed.
    pub installed: Option<String>,
    /// Whether the manager knows the package at all (apt: it has a candidate). dnf/yum:
    /// always true (they say so when installing).
    pub known: bool,
    /// A newer version than the installed one is available.
    pub upgradable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageFacts {
    pub host: String,
    pub manager: Manager,
    pub packages: Vec<PackageInfo>,
    pub update_cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Install,
    Upgrade,
    Remove,
}

/// One run of the package manager over some packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    pub manager: Manager,
    pub action: Action,
    pub names: Vec<String>,
    /// apt: refresh the package lists first.
    pub update_cache: bool,
}

impl OneCommand for PackageChange {
    fn cmd(&self) -> Cmd {
        match self.manager {
            Manager::Apt => {
                let verb = match self.action {
                    Action::Install | Action::Upgrade => "install",
                    Action::Remove => "remove",
                };
                let mut cmd = apt_get().args([verb, "-y", "-q"]);
                if self.action == Action::Install || self.action == Action::Upgrade {
                    cmd = cmd.args(["-o", "Dpkg::Options::=--force-confold"]);
                }
                if self.action == Action::Upgrade {
                    cmd = cmd.arg("--only-upgrade");
                }
                let cmd = cmd.args(self.names.iter().cloned());
                if self.update_cache {
                    apt_get().args(["update", "-q"]).and(cmd)
                } else {
                    cmd
                }
            }
            Manager::Dnf | Manager::Yum => {
                let verb = match self.action {
                    Action::Install => "install",
                    Action::Upgrade => "upgrade",
                    Action::Remove => "remove",
                };
                Cmd::new(self.manager.name())
                    .args([verb, "-y", "-q"])
                    .args(self.names.iter().cloned())
            }
        }
    }
}

/// `apt-get` without questions, waiting up to a minute for a lock another apt holds.
fn apt_get() -> Cmd {
    Cmd::new("env")
        .arg("DEBIAN_FRONTEND=noninteractive")
        .arg("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=60"])
}

impl Change for PackageChange {
    fn describe(&self) -> String {
        let verb = match self.action {
            Action::Install => "install",
            Action::Upgrade => "upgrade",
            Action::Remove => "remove",
        };
        format!("{verb} {} ({})", self.names.join(", "), self.manager.name())
    }
    fn commands(&self) -> Vec<String> {
        vec![self.cmd().display()]
    }
    fn diff(&self) -> Option<Diff> {
        let (before, after) = match self.action {
            Action::Install => ("absent", "present"),
            Action::Upgrade => ("present (older)", "latest"),
            Action::Remove => ("present", "absent"),
        };
        let lines = |state: &str| -> String {
            self.names
                .iter()
                .map(|n| format!("{n}: {state}\n"))
                .collect()
        };
        Some(Diff {
            what: format!("packages ({})", self.manager.name()),
            before: lines(before),
            after: lines(after),
        })
    }
}

/// Whether `name` is a package name (with an optional `:arch`): letters, digits and
/// `+.-_`, starting with a letter or digit. Refusing the rest keeps globs (`dpkg-query`
/// would match them) and options out of the manager's argv.
pub fn valid_name(name: &str) -> bool {
    let (base, arch) = match name.split_once(':') {
        Some((b, a)) => (b, Some(a)),
        None => (name, None),
    };
    let word = |s: &str, extra: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    word(base, "+.-_") && arch.is_none_or(|a| word(a, "-_"))
}

/// The facts script, names as `$@`. Prints `manager M`, then for apt `inst NAME STATUS
/// VERSION` per installed-or-known package (dpkg-query) and `cand NAME VERSION` per
/// package apt's lists know; for dnf/yum `inst NAME installed VERSION` (rpm) and
/// `up NAME` per package with an upgrade.
const FACTS_SH: &str = r#"if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  echo manager apt
  dpkg-query -W -f='inst ${Package} ${db:Status-Status} ${Version}\n' "$@" 2>/dev/null
  apt-cache policy "$@" 2>/dev/null | awk '/^[^ ]/ { n = $0; sub(/:$/, "", n) } /^  Candidate:/ { print "cand", n, $2 }'
  exit 0
fi
for m in dnf yum; do
  if command -v $m >/dev/null 2>&1; then
    echo manager $m
    rpm -q --qf 'inst %{NAME} installed %{VERSION}-%{RELEASE}\n' "$@" 2>/dev/null | grep '^inst '
    $m -q check-update "$@" 2>/dev/null | awk 'NF >= 3 { n = $1; sub(/\.[^.]*$/, "", n); print "up", n }'
    exit 0
  fi
done
echo "no apt-get, dnf or yum on this host" >&2
exit 3"#;

/// Pure: the facts from the script's output, for `names` in their order.
pub fn parse_facts(
    host: &str,
    out: &str,
    names: &[String],
    update_cache: bool,
) -> Result<PackageFacts, String> {
    let mut manager = None;
    let mut installed = std::collections::HashMap::new();
    let mut candidate = std::collections::HashMap::new();
    let mut upgrades = std::collections::HashSet::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["manager", "apt"] => manager = Some(Manager::Apt),
            ["manager", "dnf"] => manager = Some(Manager::Dnf),
            ["manager", "yum"] => manager = Some(Manager::Yum),
            ["inst", name, "installed", version] => {
                installed.insert(name.to_string(), version.to_string());
            }
            // Removed with its config files kept, or never installed: not installed.
            ["inst", ..] => {}
            ["cand", name, version] => {
                if *version != "(none)" {
                    candidate.insert(name.to_string(), version.to_string());
                }
            }
            ["up", name] => {
                upgrades.insert(name.to_string());
            }
            _ => return Err(format!("unexpected line: {line}")),
        }
    }
    let manager = manager.ok_or("no package manager reported")?;
    let packages = names
        .iter()
        .map(|name| {
            // dpkg-query and apt-cache print the name without an `:arch` asked for.
            let bare = name.split(':').next().unwrap_or(name).to_string();
            let inst = installed
                .get(name)
                .or_else(|| installed.get(&bare))
                .cloned();
            let (known, upgradable) = match manager {
                Manager::Apt => {
                    let cand = candidate.get(name).or_else(|| candidate.get(&bare));
                    (
                        cand.is_some() || inst.is_some(),
                        matches!((&inst, cand), (Some(i), Some(c)) if i != c),
                    )
                }
                Manager::Dnf | Manager::Yum => (true, upgrades.contains(&bare)),
            };
            PackageInfo {
                name: name.clone(),
                installed: inst,
                known,
                upgradable,
            }
        })
        .collect();
    Ok(PackageFacts {
        host: host.to_string(),
        manager,
        packages,
        update_cache,
    })
}

/// Pure: what to run for `state`, given the facts.
pub fn decide(
    state: PackageState,
    facts: &PackageFacts,
) -> Result<Vec<PackageChange>, ModuleError> {
    let change = |action, names: Vec<String>| PackageChange {
        manager: facts.manager,
        action,
        names,
        update_cache: facts.update_cache && action != Action::Remove,
    };
    let names = |f: &dyn Fn(&PackageInfo) -> bool| -> Vec<String> {
        facts
            .packages
            .iter()
            .filter(|p| f(p))
            .map(|p| p.name.clone())
            .collect()
    };
    if state == PackageState::Absent {
        let remove = names(&|p| p.installed.is_some());
        return Ok(if remove.is_empty() {
            Vec::new()
        } else {
            vec![change(Action::Remove, remove)]
        });
    }
    let unknown = names(&|p| p.installed.is_none() && !p.known);
    if !unknown.is_empty() && !facts.update_cache {
        return Err(ModuleError::Precondition(format!(
            "{} has no package named {} in its {} package lists (misspelt, or the lists are \
             old: set update_cache = true)",
            facts.host,
            unknown.join(", "),
            facts.manager.name()
        )));
    }
    let mut changes = Vec::new();
    let install = names(&|p| p.installed.is_none());
    if !install.is_empty() {
        changes.push(change(Action::Install, install));
    }
    if state == PackageState::Latest {
        let upgrade = names(&|p| p.installed.is_some() && p.upgradable);
        if !upgrade.is_empty() {
            changes.push(change(Action::Upgrade, upgrade));
        }
    }
    Ok(changes)
}

#[async_trait]
impl Module for Package {
    type Facts = PackageFacts;
    type Change = PackageChange;

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        if self.names.is_empty() {
            return Err(ArgError::field("names", "give at least one package name"));
        }
        if self.update_cache && self.state == PackageState::Absent {
            return Err(ArgError::field(
                "update_cache",
                "update_cache is for installing (state present or latest)",
            ));
        }
        for t in &self.names {
            let name = at.render(t)?;
            if !valid_name(&name) {
                return Err(ArgError::template(
                    t,
                    format!(
                        "{name:?} is not a package name (letters, digits and +.-_, optionally \
                         :arch; no globs or options)"
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<PackageFacts, ModuleError> {
        let names = self
            .names
            .iter()
            .map(|t| probe.render_operand(t))
            .collect::<Result<Vec<_>, _>>()?;
        let cmd = Cmd::new("sh")
            .arg("-c")
            .arg(FACTS_SH)
            .arg("ferry-package")
            .args(names.iter().cloned());
        let out = probe.exec(&cmd).await?;
        if out.status == Some(3) {
            return Err(ModuleError::Precondition(format!(
                "package on {}: {}",
                probe.host,
                out.stderr_str().trim()
            )));
        }
        parse_facts(&probe.host, &out.stdout_str(), &names, self.update_cache).map_err(|detail| {
            ModuleError::Remote {
                what: format!("reading the packages of {}", probe.host),
                detail,
            }
        })
    }

    fn decide(&self, facts: &PackageFacts) -> Result<Vec<PackageChange>, ModuleError> {
        decide(self.state, facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &PackageFacts,
        changes: &[PackageChange],
    ) -> Result<Applied, ModuleError> {
        crate::module::apply_commands(ctx, changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    const APT: &str = "manager apt\n\
        inst jq installed 1.6-2.1\n\
        inst tree config-files 2.1.0-1\n\
        cand jq 1.6-2.1\n\
        cand tree 2.1.0-1\n\
        cand curl 7.88.1-10\n\
        inst curl installed 7.88.1-9\n";

    #[test]
    fn apt_facts_read_installed_and_candidate_versions() {
        let f = parse_facts("h", APT, &names(&["jq", "tree", "curl", "nosuch"]), false).unwrap();
        assert_eq!(f.manager, Manager::Apt);
        let p = &f.packages;
        assert_eq!(p[0].installed.as_deref(), Some("1.6-2.1"));
        assert!(!p[0].upgradable);
        assert_eq!(p[1].installed, None, "config-files only is not installed");
        assert!(p[1].known);
        assert!(p[2].upgradable);
        assert!(!p[3].known);
    }

    #[test]
    fn present_installs_only_what_is_missing_and_refuses_unknown_names() {
        let f = parse_facts("h", APT, &names(&["jq", "tree"]), false).unwrap();
        let c = decide(PackageState::Present, &f).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].action, Action::Install);
        assert_eq!(c[0].names, names(&["tree"]));
        let f = parse_facts("h", APT, &names(&["jq"]), false).unwrap();
        assert!(decide(PackageState::Present, &f).unwrap().is_empty());
        let f = parse_facts("h", APT, &names(&["jq", "nosuch"]), false).unwrap();
        let e = decide(PackageState::Present, &f).unwrap_err().to_string();
        assert!(e.contains("no package named nosuch"), "{e}");
        // With update_cache the refreshed lists may know it: apt-get decides.
        let f = parse_facts("h", APT, &names(&["nosuch"]), true).unwrap();
        let c = decide(PackageState::Present, &f).unwrap();
        assert!(c[0].update_cache);
        assert!(c[0]
            .cmd()
            .display()
            .contains("apt-get -o DPkg::Lock::Timeout=60 update"));
    }

    #[test]
    fn latest_upgrades_and_absent_removes() {
        let f = parse_facts("h", APT, &names(&["jq", "curl", "tree"]), false).unwrap();
        let c = decide(PackageState::Latest, &f).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].action, c[0].names.clone()),
            (Action::Install, names(&["tree"]))
        );
        assert_eq!(
            (c[1].action, c[1].names.clone()),
            (Action::Upgrade, names(&["curl"]))
        );
        assert!(c[1].cmd().display().contains("--only-upgrade curl"));
        let c = decide(PackageState::Absent, &f).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].names, names(&["jq", "curl"]));
        assert!(c[0]
            .cmd()
            .display()
            .contains("apt-get -o DPkg::Lock::Timeout=60 remove -y -q jq curl"));
        let f = parse_facts("h", APT, &names(&["tree"]), false).unwrap();
        assert!(decide(PackageState::Absent, &f).unwrap().is_empty());
    }

    #[test]
    fn dnf_facts_and_changes() {
        let out = "manager dnf\ninst git installed 2.43.0-1.fc39\nup git\n";
        let f = parse_facts("h", out, &names(&["git", "vim-enhanced"]), false).unwrap();
        assert_eq!(f.manager, Manager::Dnf);
        let c = decide(PackageState::Latest, &f).unwrap();
        assert_eq!(c[0].cmd().display(), "dnf install -y -q vim-enhanced");
        assert_eq!(c[1].cmd().display(), "dnf upgrade -y -q git");
    }

    #[test]
    fn names_are_package_names_not_globs_or_options() {
        for ok in ["jq", "libc6:amd64", "g++", "python3.11", "lib_x-1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-y", "j*", "a b", "x;rm", "a:", ":amd64", "n?"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
