//! `wait_for`: wait until a TCP port answers (or stops answering), a path exists (or is
//! gone), or a command exits 0, as seen from the host. Changes nothing.
//!
//! ```toml
//! [task.wait_for]
//! port = 5432              # or path = "/run/app.sock", or command = "pg_isready -q"
//! host = "127.0.0.1"       # for port: the address, from the target host (default)
//! state = "present"        # "absent": the port closed / the path gone
//! timeout = "5m"           # default 300 s
//! delay = "2s"             # before the first check (default 0)
//! interval = "5s"          # the longest pause between checks (default 2 s)
//! ```
//!
//! It waits in `facts` (read-only checks, in `--check` too) and fails with a timeout
//! naming what did not happen. Checks are paced by backon's exponential backoff
//! (200 ms doubling to `interval`, jittered). A `command` must only read: it runs while
//! facts are read, in check mode too.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::units::Seconds;
use crate::module::{Applied, ArgCheck, ArgError, Module, ModuleError, Probe, TaskCtx};
use crate::modules::assert::NoChange;
use crate::playbook::template::{ShellTemplate, Template};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitState {
    #[default]
    Present,
    Absent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    pub port: Option<u16>,
    pub host: Option<Template>,
    pub path: Option<Template>,
    pub command: Option<ShellTemplate>,
    #[serde(default)]
    pub state: WaitState,
    pub timeout: Option<Seconds>,
    pub delay: Option<Seconds>,
    pub interval: Option<Seconds>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// What was waited for, once it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitFacts {
    pub what: String,
    pub checks: u32,
    pub waited_ms: u64,
}

/// `$1` host, `$2` port: exit 0 when a TCP connection is accepted, 1 when not, 3 when
/// the host has no tool to try (nc, bash's /dev/tcp).
const PORT_SCRIPT: &str = r#"if command -v nc >/dev/null 2>&1; then nc -z -w 3 "$1" "$2" </dev/null >/dev/null 2>&1
elif command -v bash >/dev/null 2>&1; then timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
else echo "neither nc nor bash on this host to try a TCP connection" >&2; exit 3; fi
"#;

impl WaitFor {
    /// The check to repeat, what it waits for and what did not happen, in words.
    fn check(&self, probe: &Probe<'_>) -> Result<(Cmd, String, String), ModuleError> {
        let present = self.state == WaitState::Present;
        if let Some(port) = self.port {
            let host = probe.render_or(&self.host, "127.0.0.1")?;
            let cmd = Cmd::new("sh")
                .arg("-c")
                .arg(PORT_SCRIPT)
                .arg("ferry-wait-port")
                .args([host.clone(), port.to_string()]);
            let (what, not) = if present {
                ("accepts connections", "did not accept connections")
            } else {
                (
                    "stops accepting connections",
                    "did not stop accepting connections",
                )
            };
            let on = format!("{host}:{port}");
            let from = &probe.host;
            return Ok((
                cmd,
                format!("{on} {what} (from {from})"),
                format!("{on} {not} (from {from})"),
            ));
        }
        if let Some(path) = &self.path {
            let path = probe.render_operand(path)?;
            let cmd = Cmd::new("test").arg("-e").arg(path.as_str());
            let (what, not) = if present {
                ("exists", "did not appear")
            } else {
                ("is gone", "was not removed")
            };
            let on = &probe.host;
            return Ok((
                cmd,
                format!("{path} {what} on {on}"),
                format!("{path} {not} on {on}"),
            ));
        }
        if let Some(command) = &self.command {
            let cmd = probe.render_shell(command)?;
            let shown = probe.secrets.mask(&cmd.display());
            let on = &probe.host;
            return Ok((
                cmd,
                format!("`{shown}` exits 0 on {on}"),
                format!("`{shown}` did not exit 0 on {on}"),
            ));
        }
        Err(ModuleError::Internal(
            "wait_for without port, path or command".into(),
        ))
    }
}

/// Pure: whether one check's exit status means the wait is over.
pub fn done(state: WaitState, command: bool, status: Option<u32>) -> bool {
    if command {
        return status == Some(0);
    }
    (status == Some(0)) == (state == WaitState::Present)
}

#[async_trait]
impl Module for WaitFor {
    type Facts = WaitFacts;
    type Change = NoChange;

    fn check_args(&self, _: &ArgCheck<'_>) -> Result<(), ArgError> {
        let given = [
            self.port.is_some(),
            self.path.is_some(),
            self.command.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ArgError::field(
                "port",
                "give exactly one of port, path or command",
            ));
        }
        if self.host.is_some() && self.port.is_none() {
            return Err(ArgError::field("host", "host is the address of port"));
        }
        if self.command.is_some() && self.state == WaitState::Absent {
            return Err(ArgError::field(
                "state",
                "a command is waited for until it exits 0: no state",
            ));
        }
        if self.timeout == Some(Seconds(0)) || self.interval == Some(Seconds(0)) {
            return Err(ArgError::field(
                "timeout",
                "timeout and interval need at least 1 second",
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<WaitFacts, ModuleError> {
        let (cmd, what, not) = self.check(probe)?;
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, Seconds::duration);
        let interval = self.interval.map_or(DEFAULT_INTERVAL, Seconds::duration);
        let start = Instant::now();
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay.duration()).await;
        }
        let mut pauses = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200).min(interval))
            .with_max_delay(interval)
            .with_jitter()
            .without_max_times()
            .build();
        let mut checks = 0;
        loop {
            checks += 1;
            let left = timeout.saturating_sub(start.elapsed());
            // A check that hangs (a firewall dropping packets) counts against the timeout.
            let status = match tokio::time::timeout(
                left.max(Duration::from_secs(1)),
                probe.exec(&cmd),
            )
            .await
            {
                Ok(out) => {
                    let out = out?;
                    if out.status == Some(3) && self.port.is_some() {
                        return Err(ModuleError::Precondition(format!(
                            "wait_for on {}: {}",
                            probe.host,
                            out.stderr_str().trim()
                        )));
                    }
                    out.status
                }
                Err(_) => None,
            };
            if done(self.state, self.command.is_some(), status) {
                return Ok(WaitFacts {
                    what,
                    checks,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            let pause = pauses.next().unwrap_or(interval);
            if start.elapsed() + pause >= timeout {
                return Err(ModuleError::Timeout {
                    what: format!("{not} (checked {checks} times)"),
                    secs: timeout.as_secs(),
                });
            }
            crate::report::status::set(&format!(
                "waiting until {what} ({}s so far)",
                start.elapsed().as_secs()
            ));
            tokio::time::sleep(pause).await;
        }
    }

    fn decide(&self, _: &WaitFacts) -> Result<Vec<NoChange>, ModuleError> {
        Ok(Vec::new())
    }

    async fn apply(
        &self,
        _: &TaskCtx,
        _: &WaitFacts,
        _: &[NoChange],
    ) -> Result<Applied, ModuleError> {
        Ok(Applied::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_done_when_its_status_says_so() {
        assert!(done(WaitState::Present, false, Some(0)));
        assert!(!done(WaitState::Present, false, Some(1)));
        assert!(!done(WaitState::Present, false, None));
        assert!(done(WaitState::Absent, false, Some(1)));
        assert!(done(WaitState::Absent, false, None));
        assert!(!done(WaitState::Absent, false, Some(0)));
        assert!(done(WaitState::Present, true, Some(0)));
        assert!(!done(WaitState::Present, true, Some(2)));
    }
}
