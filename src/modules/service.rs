//! `service`: a systemd unit started, stopped, restarted or reloaded, and enabled at boot
//! or not.
//!
//! ```toml
//! [task.service]
//! name = "nginx"           # a unit; without a suffix systemd reads it as nginx.service
//! state = "started"        # started | stopped | restarted | reloaded
//! enabled = true
//! ```
//!
//! Facts are `systemctl show` of the unit (load, active and unit-file state). `started`
//! and `stopped` change only what differs; `restarted` and `reloaded` always act, as in
//! Ansible (notify them from the tasks that change the unit's files instead of running
//! them on every run). A host where systemd is not running (a container, an init other
//! than systemd: no `/run/systemd/system`) is refused with that reason, before anything
//! runs, as is a unit systemd does not know.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::Diff;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Module, ModuleError, OneCommand, Probe, TaskCtx,
};
use crate::playbook::template::Template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Started,
    Stopped,
    Restarted,
    Reloaded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Template,
    pub state: Option<ServiceState>,
    pub enabled: Option<bool>,
}

/// The unit as systemd reports it, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ServiceFacts {
    /// systemd is not the running init on the host.
    NoSystemd {
        host: String,
    },
    Unit(UnitState),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitState {
    pub host: String,
    pub unit: String,
    /// `loaded`, `not-found`, `masked`, ...
    pub load: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active: String,
    /// `enabled`, `disabled`, `static`, `masked`, ... (empty for transient units).
    pub unit_file: String,
}

impl UnitState {
    fn running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "activating" | "reloading")
    }
    /// Enabled at boot, or nothing to enable (static, indirect, generated units).
    fn enabled(&self) -> bool {
        matches!(
            self.unit_file.as_str(),
            "enabled" | "enabled-runtime" | "static" | "indirect" | "generated" | "alias"
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Reload,
    Enable,
    Disable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceChange {
    pub verb: Verb,
    pub unit: String,
}

impl OneCommand for ServiceChange {
    fn cmd(&self) -> Cmd {
        let verb = match self.verb {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
            Verb::Enable => "enable",
            Verb::Disable => "disable",
        };
        Cmd::new("systemctl").arg(verb).arg("--").arg(&self.unit)
    }
}

impl Change for ServiceChange {
    fn describe(&self) -> String {
        let verb = match self.verb {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
            Verb::Enable => "enable at boot",
            Verb::Disable => "disable at boot",
        };
        format!("{verb} {}", self.unit)
    }
    fn commands(&self) -> Vec<String> {
        vec![self.cmd().display()]
    }
    fn diff(&self) -> Option<Diff> {
        let (before, after) = match self.verb {
            Verb::Start => ("state: stopped", "state: started"),
            Verb::Stop => ("state: started", "state: stopped"),
            Verb::Enable => ("enabled: false", "enabled: true"),
            Verb::Disable => ("enabled: true", "enabled: false"),
            // The state is the same before and after: nothing to show.
            Verb::Restart | Verb::Reload => return None,
        };
        Some(Diff {
            what: format!("unit {}", self.unit),
            before: before.into(),
            after: after.into(),
        })
    }
}

/// Whether `name` is a unit name systemd accepts (letters, digits, `:_.@-` and `\`
/// escapes), not starting with `-`.
pub fn valid_unit(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
}

/// `$1` is the unit. `nosystemd` when systemd is not running (sd_booted's test), else
/// `systemctl show`'s `KEY=VALUE` lines.
const FACTS_SH: &str = r#"[ -d /run/systemd/system ] || { echo nosystemd; exit 0; }
exec systemctl show --property=LoadState,ActiveState,UnitFileState -- "$1""#;

/// Pure: the facts from the script's output.
pub fn parse_facts(host: &str, unit: &str, out: &str) -> Result<ServiceFacts, String> {
    if out.trim() == "nosystemd" {
        return Ok(ServiceFacts::NoSystemd {
            host: host.to_string(),
        });
    }
    let mut state = UnitState {
        host: host.to_string(),
        unit: unit.to_string(),
        load: String::new(),
        active: String::new(),
        unit_file: String::new(),
    };
    for line in out.lines() {
        match line.split_once('=') {
            Some(("LoadState", v)) => state.load = v.to_string(),
            Some(("ActiveState", v)) => state.active = v.to_string(),
            Some(("UnitFileState", v)) => state.unit_file = v.to_string(),
            Some(_) => {}
            None if line.is_empty() => {}
            None => return Err(format!("unexpected line: {line}")),
        }
    }
    if state.load.is_empty() || state.active.is_empty() {
        return Err(format!("no LoadState or ActiveState in: {}", out.trim()));
    }
    Ok(ServiceFacts::Unit(state))
}

/// Pure: what to run for the wanted state and boot setting.
pub fn decide(
    state: Option<ServiceState>,
    enabled: Option<bool>,
    facts: &ServiceFacts,
) -> Result<Vec<ServiceChange>, ModuleError> {
    let unit = match facts {
        ServiceFacts::NoSystemd { host } => {
            return Err(ModuleError::Precondition(format!(
                "no systemd on this host ({host}: /run/systemd/system is missing, so systemd \
                 is not its running init, as in most containers); the service module manages \
                 systemd units: use a command task for another init"
            )))
        }
        ServiceFacts::Unit(u) => u,
    };
    if unit.load == "not-found" {
        return Err(ModuleError::Precondition(format!(
            "{} has no unit {} (systemctl list-unit-files shows the units it has)",
            unit.host, unit.unit
        )));
    }
    if unit.load == "masked"
        && matches!(
            state,
            Some(ServiceState::Started | ServiceState::Restarted | ServiceState::Reloaded)
        )
    {
        return Err(ModuleError::Precondition(format!(
            "{} on {} is masked: it cannot be started (systemctl unmask it first)",
            unit.unit, unit.host
        )));
    }
    let mut changes = Vec::new();
    let verb = match state {
        Some(ServiceState::Started) if !unit.running() => Some(Verb::Start),
        Some(ServiceState::Stopped) if unit.running() => Some(Verb::Stop),
        Some(ServiceState::Restarted) => Some(Verb::Restart),
        // Reloading a stopped unit fails in systemd; start it instead, as Ansible does.
        Some(ServiceState::Reloaded) if !unit.running() => Some(Verb::Start),
        Some(ServiceState::Reloaded) => Some(Verb::Reload),
        _ => None,
    };
    changes.extend(verb.map(|verb| ServiceChange {
        verb,
        unit: unit.unit.clone(),
    }));
    match enabled {
        Some(true) if !unit.enabled() => changes.push(ServiceChange {
            verb: Verb::Enable,
            unit: unit.unit.clone(),
        }),
        Some(false) if matches!(unit.unit_file.as_str(), "enabled" | "enabled-runtime") => changes
            .push(ServiceChange {
                verb: Verb::Disable,
                unit: unit.unit.clone(),
            }),
        _ => {}
    }
    Ok(changes)
}

#[async_trait]
impl Module for Service {
    type Facts = ServiceFacts;
    type Change = ServiceChange;

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        if self.state.is_none() && self.enabled.is_none() {
            return Err(ArgError::field("state", "give state, enabled or both"));
        }
        let name = at.render(&self.name)?;
        if !valid_unit(&name) {
            return Err(ArgError::template(
                &self.name,
                format!("{name:?} is not a systemd unit name"),
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<ServiceFacts, ModuleError> {
        let unit = probe.render_operand(&self.name)?;
        let cmd = Cmd::new("sh")
            .arg("-c")
            .arg(FACTS_SH)
            .arg("ferry-service")
            .arg(&unit);
        let out = probe.exec_ok(&cmd).await?;
        parse_facts(&probe.host, &unit, &out.stdout_str()).map_err(|detail| ModuleError::Remote {
            what: format!("reading unit {unit} on {}", probe.host),
            detail,
        })
    }

    fn decide(&self, facts: &ServiceFacts) -> Result<Vec<ServiceChange>, ModuleError> {
        decide(self.state, self.enabled, facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &ServiceFacts,
        changes: &[ServiceChange],
    ) -> Result<Applied, ModuleError> {
        crate::module::apply_commands(ctx, changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: &str, unit_file: &str) -> ServiceFacts {
        parse_facts(
            "h",
            "nginx",
            &format!("LoadState=loaded\nActiveState={active}\nUnitFileState={unit_file}\n"),
        )
        .unwrap()
    }

    fn verbs(c: &[ServiceChange]) -> Vec<Verb> {
        c.iter().map(|c| c.verb).collect()
    }

    #[test]
    fn started_and_stopped_change_only_what_differs() {
        let on = unit("active", "enabled");
        let off = unit("inactive", "disabled");
        let start = Some(ServiceState::Started);
        let stop = Some(ServiceState::Stopped);
        assert!(decide(start, Some(true), &on).unwrap().is_empty());
        assert_eq!(
            verbs(&decide(start, Some(true), &off).unwrap()),
            [Verb::Start, Verb::Enable]
        );
        assert_eq!(
            verbs(&decide(stop, Some(false), &on).unwrap()),
            [Verb::Stop, Verb::Disable]
        );
        assert!(decide(stop, None, &off).unwrap().is_empty());
        assert_eq!(
            verbs(&decide(start, None, &unit("failed", "enabled")).unwrap()),
            [Verb::Start]
        );
        // A static unit has nothing to enable.
        assert!(decide(None, Some(true), &unit("active", "static"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn restarted_always_acts_and_reloaded_starts_a_stopped_unit() {
        let on = unit("active", "enabled");
        let off = unit("inactive", "enabled");
        assert_eq!(
            verbs(&decide(Some(ServiceState::Restarted), None, &on).unwrap()),
            [Verb::Restart]
        );
        assert_eq!(
            verbs(&decide(Some(ServiceState::Reloaded), None, &on).unwrap()),
            [Verb::Reload]
        );
        assert_eq!(
            verbs(&decide(Some(ServiceState::Reloaded), None, &off).unwrap()),
            [Verb::Start]
        );
        let c = decide(Some(ServiceState::Restarted), None, &on).unwrap();
        assert_eq!(c[0].cmd().display(), "systemctl restart -- nginx");
        assert!(c[0].diff().is_none(), "a restart changes no state to show");
        let c = decide(Some(ServiceState::Started), None, &off).unwrap();
        let d = c[0].diff().unwrap();
        assert_eq!(
            (d.before.as_str(), d.after.as_str()),
            ("state: stopped", "state: started")
        );
    }

    #[test]
    fn no_systemd_unknown_and_masked_units_are_refused() {
        let f = parse_facts("web1", "nginx", "nosystemd\n").unwrap();
        let e = decide(Some(ServiceState::Started), None, &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no systemd on this host (web1"), "{e}");
        let f = parse_facts(
            "h",
            "nginx",
            "LoadState=not-found\nActiveState=inactive\nUnitFileState=\n",
        )
        .unwrap();
        let e = decide(Some(ServiceState::Stopped), None, &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no unit nginx"), "{e}");
        let f = parse_facts(
            "h",
            "nginx",
            "LoadState=masked\nActiveState=inactive\nUnitFileState=masked\n",
        )
        .unwrap();
        assert!(decide(Some(ServiceState::Started), None, &f).is_err());
        assert!(decide(Some(ServiceState::Stopped), None, &f)
            .unwrap()
            .is_empty());
        assert!(parse_facts("h", "x", "garbage").is_err());
    }

    #[test]
    fn unit_names_are_checked() {
        for ok in [
            "nginx",
            "getty@tty1.service",
            "dev-disk-by\\x2duuid.swap",
            "a:b",
        ] {
            assert!(valid_unit(ok), "{ok}");
        }
        for bad in ["", "-x", "a b", "a;b", "$(x)"] {
            assert!(!valid_unit(bad), "{bad}");
        }
    }
}
