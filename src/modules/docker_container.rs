//! `docker_container`: ensure containers are stopped or started.
//!
//! ```toml
//! [task.docker_container]
//! names = ["packagist-worker", "packagist-web", "packagist-repo"]
//! state = "stopped"          # or "started"
//! ```
//!
//! Facts come from one `docker inspect` of all names (never `-t`). A container that does
//! not exist is an error: the old install is not what the playbook expects.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::docker::{docker_bin, docker_inspect, ContainerState};
use crate::module::{Applied, Change, Module, ModuleError, Probe, TaskCtx};
use crate::playbook::template::Template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Stopped,
    Started,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerContainer {
    pub names: Vec<Template>,
    pub state: DesiredState,
    /// Seconds `docker stop` waits before killing (docker's default is 10).
    pub stop_timeout: Option<u32>,
    /// Shown in the report whenever this task changes something (e.g. "changes made
    /// on the old app from now on will be lost").
    pub warning: Option<Template>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerFacts {
    /// In the order given.
    pub names: Vec<String>,
    pub containers: std::collections::BTreeMap<String, ContainerState>,
    #[serde(skip)]
    pub docker: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerChange {
    pub state: DesiredState,
    pub names: Vec<String>,
    pub cmd: Cmd,
}

impl Change for ContainerChange {
    fn describe(&self) -> String {
        let verb = match self.state {
            DesiredState::Stopped => "stop",
            DesiredState::Started => "start",
        };
        format!("{verb} {}", self.names.join(", "))
    }
    fn commands(&self) -> Vec<String> {
        vec![self.cmd.display()]
    }
}

#[async_trait]
impl Module for DockerContainer {
    const VARS: crate::module::VarLists = &[crate::module::docker::VARS];
    type Facts = ContainerFacts;
    type Change = ContainerChange;
    const TEXT_FIELDS: &'static [&'static str] = &["warning"];

    async fn facts(&self, probe: &Probe<'_>) -> Result<ContainerFacts, ModuleError> {
        let names = self
            .names
            .iter()
            .map(|t| probe.render_operand(t))
            .collect::<Result<Vec<_>, _>>()?;
        let containers = docker_inspect(probe, &names).await?;
        Ok(ContainerFacts {
            names,
            containers,
            docker: docker_bin(probe),
        })
    }

    fn decide(&self, facts: &ContainerFacts) -> Result<Vec<ContainerChange>, ModuleError> {
        decide(self, facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &ContainerFacts,
        changes: &[ContainerChange],
    ) -> Result<Applied, ModuleError> {
        for c in changes {
            ctx.exec_ok(&c.cmd).await?;
        }
        let mut applied = Applied::changed();
        if let Some(w) = &self.warning {
            applied.warnings.push(ctx.render(w)?);
        }
        Ok(applied)
    }
}

/// Pure: which containers need the verb, as one docker command (in the given order, so
/// `stop worker web repo` stops the consumers before what they consume).
pub fn decide(
    args: &DockerContainer,
    facts: &ContainerFacts,
) -> Result<Vec<ContainerChange>, ModuleError> {
    let missing: Vec<&str> = facts
        .names
        .iter()
        .filter(|n| !facts.containers.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ModuleError::Precondition(format!(
            "no such container: {} (is this the Replicated Native host?)",
            missing.join(", ")
        )));
    }
    let want_running = args.state == DesiredState::Started;
    let todo: Vec<String> = facts
        .names
        .iter()
        .filter(|n| facts.containers[*n].running != want_running)
        .cloned()
        .collect();
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Cmd::new(facts.docker.clone());
    cmd = match args.state {
        DesiredState::Stopped => {
            let mut c = cmd.arg("stop");
            if let Some(t) = args.stop_timeout {
                c = c.arg("-t").arg(t.to_string());
            }
            c
        }
        DesiredState::Started => cmd.arg("start"),
    };
    Ok(vec![ContainerChange {
        state: args.state,
        names: todo.clone(),
        cmd: cmd.args(todo),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn facts(states: &[(&str, bool)]) -> ContainerFacts {
        ContainerFacts {
            names: states.iter().map(|(n, _)| n.to_string()).collect(),
            containers: states
                .iter()
                .map(|(n, r)| {
                    (
                        n.to_string(),
                        ContainerState {
                            name: n.to_string(),
                            running: *r,
                            image: "x".into(),
                            labels: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            docker: "docker".into(),
        }
    }

    fn args(state: DesiredState) -> DockerContainer {
        DockerContainer {
            names: vec![],
            state,
            stop_timeout: None,
            warning: None,
        }
    }

    #[test]
    fn stops_only_running_ones_in_order() {
        let f = facts(&[("worker", true), ("web", false), ("repo", true)]);
        let c = decide(&args(DesiredState::Stopped), &f).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].cmd.to_shell(), "docker stop worker repo");
    }

    #[test]
    fn nothing_to_do_when_all_in_state() {
        let f = facts(&[("worker", false), ("web", false)]);
        assert!(decide(&args(DesiredState::Stopped), &f).unwrap().is_empty());
        let f = facts(&[("worker", true)]);
        assert!(decide(&args(DesiredState::Started), &f).unwrap().is_empty());
    }

    #[test]
    fn missing_container_is_an_error() {
        let mut f = facts(&[("worker", true)]);
        f.names.push("ghost".into());
        let e = decide(&args(DesiredState::Stopped), &f).unwrap_err();
        assert!(e.to_string().contains("ghost"), "{e}");
    }
}
