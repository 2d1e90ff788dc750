//! `docker_container`: ensure containers are stopped, started, present or absent.
//!
//! ```toml
//! [task.docker_container]
//! names = ["packagist-worker", "packagist-web", "packagist-repo"]
//! state = "stopped"          # or "started", "present", "absent"
//! image = "redis:7"          # "present" (and "started"): what a missing one is made from
//! ```
//!
//! Facts come from one `docker inspect` of all names (never `-t`). Without `image`, a
//! container that does not exist is an error: the old install is not what the playbook
//! expects. With `image`, a missing container is created (`present`: `docker create`;
//! `started`: `docker run -d`), and one that exists from another image is an error
//! naming both (ferry does not replace a container it did not make: remove it with
//! `state = "absent"` first if that is meant). `absent` removes those that exist
//! (`docker rm -f`, running or not).

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
    Present,
    Absent,
}

fn check_args(args: &DockerContainer) -> Result<(), String> {
    match (args.state, &args.image) {
        (DesiredState::Present, None) => {
            Err("`state = \"present\"` needs `image`: what a missing container is made from".into())
        }
        (DesiredState::Stopped | DesiredState::Absent, Some(_)) => Err(
            "`image` is for `present` and `started` (what a missing container is made from)".into(),
        ),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "DockerContainerArgs")]
pub struct DockerContainer {
    pub names: Vec<Template>,
    pub state: DesiredState,
    /// For `present` and `started`: the image a missing container is made from.
    pub image: Option<Template>,
    /// Seconds `docker stop` waits before killing (docker's default is 10).
    pub stop_timeout: Option<u32>,
    /// Shown in the report whenever this task changes something (e.g. "changes made
    /// on the old app from now on will be lost").
    pub warning: Option<Template>,
}

/// [`DockerContainer`] as written, checked into it (so a bad combination is an error at
/// the task when the playbook is read).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerContainerArgs {
    names: Vec<Template>,
    state: DesiredState,
    image: Option<Template>,
    stop_timeout: Option<u32>,
    warning: Option<Template>,
}

impl TryFrom<DockerContainerArgs> for DockerContainer {
    type Error = String;
    fn try_from(a: DockerContainerArgs) -> Result<Self, String> {
        let args = DockerContainer {
            names: a.names,
            state: a.state,
            image: a.image,
            stop_timeout: a.stop_timeout,
            warning: a.warning,
        };
        check_args(&args)?;
        Ok(args)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerFacts {
    /// In the order given.
    pub names: Vec<String>,
    pub containers: std::collections::BTreeMap<String, ContainerState>,
    /// `image`, rendered.
    pub image: Option<String>,
    #[serde(skip)]
    pub docker: String,
}

/// What a change does to its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Stop,
    Start,
    Create,
    Run,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerChange {
    pub action: Action,
    pub names: Vec<String>,
    pub cmd: Cmd,
}

impl Change for ContainerChange {
    fn describe(&self) -> String {
        let verb = match self.action {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Create => "create",
            Action::Run => "create and start",
            Action::Remove => "remove",
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
        let image = self
            .image
            .as_ref()
            .map(|t| probe.render_operand(t))
            .transpose()?;
        Ok(ContainerFacts {
            names,
            containers,
            image,
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

/// Pure: which containers need what, each verb as one docker command over its
/// containers in the given order (so `stop worker web repo` stops the consumers before
/// what they consume).
pub fn decide(
    args: &DockerContainer,
    facts: &ContainerFacts,
) -> Result<Vec<ContainerChange>, ModuleError> {
    let existing = |n: &&String| facts.containers.contains_key(*n);
    let missing: Vec<String> = facts
        .names
        .iter()
        .filter(|n| !existing(n))
        .cloned()
        .collect();
    let docker = || Cmd::new(facts.docker.clone());
    let change = |action, names: Vec<String>, cmd: Cmd| ContainerChange { action, names, cmd };
    if args.state == DesiredState::Absent {
        let todo: Vec<String> = facts.names.iter().filter(existing).cloned().collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = docker().arg("rm").arg("-f").args(todo.clone());
        return Ok(vec![change(Action::Remove, todo, cmd)]);
    }
    let mut changes = Vec::new();
    match &facts.image {
        None if !missing.is_empty() => {
            return Err(ModuleError::Precondition(format!(
                "no such container: {} (is this the Replicated Native host?)",
                missing.join(", ")
            )))
        }
        None => {}
        Some(image) => {
            let other: Vec<String> = facts
                .names
                .iter()
                .filter_map(|n| facts.containers.get(n))
                .filter(|c| &c.image != image)
                .map(|c| format!("{} (from {})", c.name, c.image))
                .collect();
            if !other.is_empty() {
                return Err(ModuleError::Precondition(format!(
                    "container {} exists from another image than {image}; ferry does not \
                     replace a container: remove it first (state = \"absent\") if that is meant",
                    other.join(", ")
                )));
            }
            let (action, verb) = match args.state {
                DesiredState::Started => (Action::Run, ["run", "-d"].as_slice()),
                _ => (Action::Create, ["create"].as_slice()),
            };
            for name in &missing {
                let cmd = docker()
                    .args(verb.iter().copied())
                    .arg("--name")
                    .arg(name)
                    .arg(image);
                changes.push(change(action, vec![name.clone()], cmd));
            }
        }
    }
    let want_running = match args.state {
        DesiredState::Stopped => false,
        DesiredState::Started => true,
        // Present: there, running or not.
        _ => return Ok(changes),
    };
    let todo: Vec<String> = facts
        .names
        .iter()
        .filter(|n| {
            facts
                .containers
                .get(*n)
                .is_some_and(|c| c.running != want_running)
        })
        .cloned()
        .collect();
    if todo.is_empty() {
        return Ok(changes);
    }
    let cmd = if want_running {
        docker().arg("start")
    } else {
        let mut c = docker().arg("stop");
        if let Some(t) = args.stop_timeout {
            c = c.arg("-t").arg(t.to_string());
        }
        c
    };
    let action = if want_running {
        Action::Start
    } else {
        Action::Stop
    };
    changes.push(change(action, todo.clone(), cmd.args(todo)));
    Ok(changes)
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
            image: None,
            docker: "docker".into(),
        }
    }

    fn args(state: DesiredState) -> DockerContainer {
        DockerContainer {
            names: vec![],
            state,
            image: None,
            stop_timeout: None,
            warning: None,
        }
    }

    #[test]
    fn present_creates_the_missing_from_the_image_and_refuses_another_image() {
        let mut f = facts(&[("a", false)]);
        f.names.push("b".into());
        f.image = Some("x".into());
        let c = decide(&args(DesiredState::Present), &f).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].cmd.to_shell(), "docker create --name b x");
        // Started: the missing one runs, the stopped one starts.
        let c = decide(&args(DesiredState::Started), &f).unwrap();
        let shell: Vec<String> = c.iter().map(|c| c.cmd.to_shell()).collect();
        assert_eq!(shell, ["docker run -d --name b x", "docker start a"]);
        f.image = Some("y".into());
        let e = decide(&args(DesiredState::Present), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a (from x)") && e.contains("than y"), "{e}");
    }

    #[test]
    fn absent_removes_those_that_exist_and_is_ok_when_none_do() {
        let mut f = facts(&[("a", true)]);
        f.names.push("gone".into());
        let c = decide(&args(DesiredState::Absent), &f).unwrap();
        assert_eq!(c[0].cmd.to_shell(), "docker rm -f a");
        let f = facts(&[]);
        assert!(decide(&args(DesiredState::Absent), &f).unwrap().is_empty());
    }

    #[test]
    fn image_goes_with_present_and_started_only() {
        let parse = |t: &str| toml::from_str::<DockerContainer>(t).map_err(|e| e.to_string());
        assert!(parse("names = [\"a\"]\nstate = \"present\"\n")
            .unwrap_err()
            .contains("needs `image`"));
        assert!(parse("names = [\"a\"]\nstate = \"absent\"\nimage = \"x\"\n").is_err());
        assert!(parse("names = [\"a\"]\nstate = \"started\"\nimage = \"x\"\n").is_ok());
        assert!(parse("names = [\"a\"]\nstate = \"stopped\"\nbogus = 1\n").is_err());
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
