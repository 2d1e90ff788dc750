//! `command`: run a shell command.
//!
//! ```toml
//! [task.command]
//! cmd = "test -d {{ data_dir }}"   # run by sh -c; template values are quoted
//! changed = false                  # a read-only check: see below
//! creates = "/path"                # skip when this path exists
//! removes = "/path"                # run only when this path exists
//! unless = "grep -q x /etc/y"      # skip when this command succeeds
//! timeout = "2h"                   # per command run; default 1h
//! ```
//!
//! `changed = false` declares the command read-only: it is run while gathering facts
//! (so also in check mode), and the task is ok when it exits 0 and failed otherwise.
//!
//! Every run of `cmd` (and of `unless`) must end within `timeout`, else the task fails
//! naming the timeout and ferry closes the command's session. Of each output stream
//! only the first and last 64 KiB are kept (see [`OutputLimit::REPORT`]), with a note
//! of how many bytes were left out: a command that prints gigabytes costs no memory.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::units::Seconds;
use crate::module::{Applied, Change, HostReader, Module, ModuleError, Probe, TaskCtx};
use crate::playbook::template::{ShellTemplate, Template};
use crate::transport::{ExecOutput, OutputLimit};

fn default_changed() -> bool {
    true
}

/// How long one run of a command may take when the task gives no `timeout`: generous,
/// because a command task may well be a long migration step, but finite, so that a
/// command that never ends (a daemon holding its output open) cannot stall the run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub cmd: ShellTemplate,
    #[serde(default = "default_changed")]
    pub changed: bool,
    pub creates: Option<Template>,
    pub removes: Option<Template>,
    pub unless: Option<ShellTemplate>,
    /// Longest a run of `cmd` or `unless` may take: seconds or `"30s"`, `"5m"`, `"1h"`.
    pub timeout: Option<Seconds>,
}

/// The outcome of a read-only command run as a fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadOutcome {
    pub status: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandFacts {
    /// The command as displayed (masked).
    pub display: String,
    pub creates_exists: Option<bool>,
    pub removes_exists: Option<bool>,
    pub unless_succeeded: Option<bool>,
    /// Set when `changed = false`: the command already ran.
    pub probe: Option<ReadOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunCommand {
    pub display: String,
}

impl Change for RunCommand {
    fn describe(&self) -> String {
        "run command".into()
    }
    fn commands(&self) -> Vec<String> {
        vec![self.display.clone()]
    }
}

impl Command {
    fn timeout(&self) -> Result<Duration, ModuleError> {
        match self.timeout {
            None => Ok(DEFAULT_TIMEOUT),
            Some(Seconds(0)) => Err(ModuleError::Precondition(
                "timeout = 0: a command needs at least 1 second".into(),
            )),
            Some(t) => Ok(t.duration()),
        }
    }

    /// Run `cmd` with this task's timeout, keeping a bounded head and tail of its output.
    async fn run(&self, ctx: &HostReader, cmd: &Cmd) -> Result<ExecOutput, ModuleError> {
        let timeout = self.timeout()?;
        let shown = ctx.secrets.mask(&cmd.display());
        tracing::debug!(host = %ctx.host, cmd = %shown, "exec");
        let run = ctx.transport.exec_bounded(cmd, None, OutputLimit::REPORT);
        match tokio::time::timeout(timeout, run).await {
            Ok(out) => Ok(out?),
            Err(_) => Err(ModuleError::Failed(format!(
                "task `{}` on {}: the command did not finish within its timeout of {}s and \
                 was abandoned (its session closed): {display}. Raise the task's `timeout` \
                 (e.g. timeout = \"2h\") if it is only slow; a process it starts in the \
                 background must not keep its output open (redirect it: `>/dev/null 2>&1 &`)",
                ctx.task,
                ctx.host,
                timeout.as_secs(),
                display = shown,
            ))),
        }
    }

    async fn path_exists(ctx: &HostReader, path: &Template) -> Result<bool, ModuleError> {
        let path = ctx.render_operand(path)?;
        let out = ctx.exec(&Cmd::new("test").arg("-e").arg(path)).await?;
        Ok(out.success())
    }
}

#[async_trait]
impl Module for Command {
    type Facts = CommandFacts;
    type Change = RunCommand;

    async fn facts(&self, probe: &Probe<'_>) -> Result<CommandFacts, ModuleError> {
        let cmd = probe.render_shell(&self.cmd)?;
        let mut facts = CommandFacts {
            display: probe.secrets.mask(&cmd.display()),
            creates_exists: None,
            removes_exists: None,
            unless_succeeded: None,
            probe: None,
        };
        if !self.changed {
            let out = self.run(probe, &cmd).await?;
            facts.probe = Some(ReadOutcome {
                status: out.status,
                stdout: probe.secrets.mask(&out.stdout_str()),
                stderr: probe.secrets.mask(&out.stderr_str()),
            });
            return Ok(facts);
        }
        if let Some(p) = &self.creates {
            facts.creates_exists = Some(Self::path_exists(probe, p).await?);
        }
        if let Some(p) = &self.removes {
            facts.removes_exists = Some(Self::path_exists(probe, p).await?);
        }
        if let Some(u) = &self.unless {
            let out = self.run(probe, &probe.render_shell(u)?).await?;
            facts.unless_succeeded = Some(out.success());
        }
        Ok(facts)
    }

    fn decide(&self, facts: &CommandFacts) -> Result<Vec<RunCommand>, ModuleError> {
        if let Some(probe) = &facts.probe {
            return match probe.status {
                Some(0) => Ok(Vec::new()),
                status => Err(ModuleError::CommandFailed {
                    cmd: facts.display.clone(),
                    status: status
                        .map(|c| format!("exit {c}"))
                        .unwrap_or_else(|| "killed by a signal".into()),
                    stderr: probe.stderr.trim().to_string(),
                }),
            };
        }
        let satisfied = facts.creates_exists == Some(true)
            || facts.removes_exists == Some(false)
            || facts.unless_succeeded == Some(true);
        Ok(if satisfied {
            Vec::new()
        } else {
            vec![RunCommand {
                display: facts.display.clone(),
            }]
        })
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &CommandFacts,
        _: &[RunCommand],
    ) -> Result<Applied, ModuleError> {
        let cmd = ctx.render_shell(&self.cmd)?;
        let out = self.run(ctx, &cmd).await?;
        if !out.success() {
            return Err(ModuleError::CommandFailed {
                cmd: ctx.secrets.mask(&cmd.display()),
                status: match out.status {
                    Some(code) => format!("exit {code}"),
                    None => "killed by a signal".into(),
                },
                stderr: ctx.secrets.mask(out.stderr_str().trim()),
            });
        }
        Ok(Applied {
            output: Some(crate::report::CommandOutput {
                rc: out.status,
                stdout: ctx.secrets.mask(&out.stdout_str()),
                stderr: ctx.secrets.mask(&out.stderr_str()),
            }),
            ..Applied::changed()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> CommandFacts {
        CommandFacts {
            display: "touch /x".into(),
            creates_exists: None,
            removes_exists: None,
            unless_succeeded: None,
            probe: None,
        }
    }

    fn module(changed: bool) -> Command {
        Command {
            cmd: ShellTemplate::new("touch /x"),
            changed,
            creates: None,
            removes: None,
            unless: None,
            timeout: None,
        }
    }

    fn decide(m: &Command, f: &CommandFacts) -> Result<Vec<RunCommand>, ModuleError> {
        m.decide(f)
    }

    #[test]
    fn guards_decide_whether_to_run() {
        let m = module(true);
        assert_eq!(decide(&m, &facts()).unwrap().len(), 1);
        for f in [
            CommandFacts {
                creates_exists: Some(true),
                ..facts()
            },
            CommandFacts {
                removes_exists: Some(false),
                ..facts()
            },
            CommandFacts {
                unless_succeeded: Some(true),
                ..facts()
            },
        ] {
            assert!(decide(&m, &f).unwrap().is_empty(), "{f:?}");
        }
        let planned = decide(
            &m,
            &CommandFacts {
                creates_exists: Some(false),
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(planned[0].commands(), vec!["touch /x"]);
    }

    #[test]
    fn read_only_commands_are_checks() {
        let m = module(false);
        let ok = CommandFacts {
            probe: Some(ReadOutcome {
                status: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            }),
            ..facts()
        };
        assert!(decide(&m, &ok).unwrap().is_empty());
        let bad = CommandFacts {
            probe: Some(ReadOutcome {
                status: Some(1),
                stdout: String::new(),
                stderr: "nope".into(),
            }),
            ..facts()
        };
        let e = decide(&m, &bad).unwrap_err().to_string();
        assert!(e.contains("exit 1") && e.contains("nope"), "{e}");
    }
}
