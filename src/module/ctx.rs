//! What a module may use while it runs one task on one host.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::command::Cmd;
use crate::journal::{Artifact, Journal, TaskRecord};
use crate::module::ModuleError;
use crate::playbook::template::{Renderer, ShellTemplate, Template, Vars};
use crate::report::EventSink;
use crate::secrets::Secrets;
use crate::transport::{ExecOutput, Transport, TransportError};

/// Connections to the other hosts of the inventory (for cross-host transfers).
#[async_trait]
pub trait Peers: Send + Sync {
    /// The (shared, connected-once) transport of inventory host `host`.
    async fn transport(&self, host: &str) -> Result<Arc<dyn Transport>, TransportError>;
}

/// Asks the operator to confirm a destructive step (when `--yes` was not given).
pub trait Confirm: Send + Sync {
    fn confirm(&self, question: &str) -> bool;
}

/// Never confirms: for non-interactive runs and tests.
pub struct NeverConfirm;
impl Confirm for NeverConfirm {
    fn confirm(&self, _: &str) -> bool {
        false
    }
}

/// Everything a module may use while running one task on one host.
pub struct TaskCtx {
    /// Inventory name of this host.
    pub host: String,
    /// Name of the task.
    pub task: String,
    /// `--check`: the engine will not call `apply`.
    pub check: bool,
    /// `--yes`: destructive steps are confirmed in advance.
    pub yes: bool,
    pub transport: Arc<dyn Transport>,
    pub peers: Arc<dyn Peers>,
    pub journal: Arc<Journal>,
    pub secrets: Secrets,
    pub events: EventSink,
    /// This host's variables.
    pub vars: Arc<Vars>,
    pub renderer: Arc<Renderer>,
    pub confirmer: Arc<dyn Confirm>,
    /// Stores named by `--overwrite`: steps that would otherwise refuse to touch a
    /// completed migration's target may overwrite these.
    pub overwrite: Vec<String>,
    /// Things a host's tasks share across the run (e.g. the Kubernetes connection).
    pub cache: Arc<HostCache>,
}

/// Per-host values shared by the tasks of one run, each built once on first use.
#[derive(Default)]
pub struct HostCache {
    cells: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

/// In check mode nothing is applied, so a later task would see the state from before
/// the earlier tasks' changes and could report `ok` where a real run changes something
/// (e.g. scaling `ui` back to 1 after an earlier task scaled it to 0). Modules whose
/// outcome depends on earlier steps record what they *would* have done here, and later
/// tasks overlay it on the facts they read.
#[derive(Default)]
pub struct CheckOverlay {
    /// `kind/name` → replicas an earlier task would have set.
    pub replicas: std::collections::BTreeMap<String, u32>,
    /// Stores an earlier task would have restored (`postgres`, `redis`, `storage`).
    pub restored: std::collections::BTreeSet<String>,
}

impl TaskCtx {
    /// Update the check-mode overlay (no-op outside check mode).
    pub fn overlay_update(&self, f: impl FnOnce(&mut CheckOverlay)) {
        if !self.check {
            return;
        }
        let cell = self
            .cache
            .cell::<std::sync::Mutex<CheckOverlay>>("check-overlay");
        let overlay = cell.get().cloned().unwrap_or_else(|| {
            let fresh = Arc::new(std::sync::Mutex::new(CheckOverlay::default()));
            let _ = cell.set(fresh.clone());
            cell.get().cloned().unwrap_or(fresh)
        });
        let guard = overlay.lock();
        if let Ok(mut o) = guard {
            f(&mut o);
        }
    }

    /// Read the check-mode overlay (`None` outside check mode or when empty).
    pub fn overlay<T>(&self, f: impl FnOnce(&CheckOverlay) -> T) -> Option<T> {
        if !self.check {
            return None;
        }
        let cell = self
            .cache
            .cell::<std::sync::Mutex<CheckOverlay>>("check-overlay");
        let overlay = cell.get()?;
        let o = overlay.lock().ok()?;
        Some(f(&o))
    }
}

impl HostCache {
    /// The cell for `key`; the first caller initialises it (`get_or_try_init`).
    pub fn cell<T: Send + Sync + 'static>(&self, key: &str) -> Arc<tokio::sync::OnceCell<Arc<T>>> {
        let Ok(mut cells) = self.cells.lock() else {
            // A panic while holding the lock: hand out a fresh, unshared cell.
            return Arc::new(tokio::sync::OnceCell::new());
        };
        let entry = cells
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::OnceCell::<Arc<T>>::new()));
        match entry.clone().downcast::<tokio::sync::OnceCell<Arc<T>>>() {
            Ok(cell) => cell,
            Err(_) => Arc::new(tokio::sync::OnceCell::new()),
        }
    }
}

impl std::fmt::Debug for TaskCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCtx")
            .field("host", &self.host)
            .field("task", &self.task)
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl TaskCtx {
    /// Render a plain template with this host's vars.
    pub fn render(&self, t: &Template) -> Result<String, ModuleError> {
        Ok(self.renderer.render(t, &self.vars)?)
    }

    /// Render a template whose value a command receives as a name or path operand;
    /// a value starting with `-` is refused (it would be read as an option).
    pub fn render_operand(&self, t: &Template) -> Result<String, ModuleError> {
        Ok(self.renderer.render_operand(t, &self.vars)?)
    }

    /// Render an optional operand template (see [`TaskCtx::render_operand`]), or use
    /// `default` when the playbook left it out.
    pub fn render_or(&self, t: &Option<Template>, default: &str) -> Result<String, ModuleError> {
        match t {
            Some(t) => self.render_operand(t),
            None => Ok(default.to_string()),
        }
    }

    /// Render a shell template to a command whose values are quoted.
    pub fn render_shell(&self, t: &ShellTemplate) -> Result<Cmd, ModuleError> {
        Ok(self.renderer.render_shell(t, &self.vars)?)
    }

    /// A variable of this host.
    pub fn var(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// Run a command on this host; a non-zero exit is not an error here.
    pub async fn exec(&self, cmd: &Cmd) -> Result<ExecOutput, ModuleError> {
        exec_on(&*self.transport, cmd, None, &self.secrets).await
    }

    /// Run a command on this host; a non-zero exit is [`ModuleError::CommandFailed`].
    pub async fn exec_ok(&self, cmd: &Cmd) -> Result<ExecOutput, ModuleError> {
        let out = self.exec(cmd).await?;
        check_status(cmd, out, &self.secrets)
    }

    /// Run a command with `stdin` on this host; non-zero exit is an error.
    pub async fn exec_ok_with_input(
        &self,
        cmd: &Cmd,
        stdin: &[u8],
    ) -> Result<ExecOutput, ModuleError> {
        let out = exec_on(&*self.transport, cmd, Some(stdin), &self.secrets).await?;
        check_status(cmd, out, &self.secrets)
    }

    /// The transport of another inventory host.
    pub async fn peer(&self, host: &str) -> Result<Arc<dyn Transport>, ModuleError> {
        Ok(self.peers.transport(host).await?)
    }

    /// Allow a destructive step: `--yes`, or the operator says yes to a question naming
    /// what will be destroyed. Never asks in check mode (nothing is destroyed there).
    pub fn confirm_destructive(&self, what: &str) -> Result<(), ModuleError> {
        if self.yes || self.check {
            return Ok(());
        }
        let question = format!("[{}] {}: {what}. Proceed?", self.host, self.task);
        if self.confirmer.confirm(&question) {
            Ok(())
        } else {
            Err(ModuleError::NotConfirmed(what.to_string()))
        }
    }

    /// The journal record of `task` on `host` (any host).
    pub fn record(&self, host: &str, task: &str) -> Option<TaskRecord> {
        self.journal.record(host, task)
    }

    /// Record an artifact this task produced on this host.
    pub fn record_artifact(&self, artifact: Artifact) -> Result<(), ModuleError> {
        Ok(self
            .journal
            .record_artifact(&self.host, &self.task, artifact)?)
    }

    /// Record a fingerprint (row counts, key counts, file hashes...) of this task.
    pub fn record_fingerprint(&self, name: &str, value: Value) -> Result<(), ModuleError> {
        Ok(self
            .journal
            .record_fingerprint(&self.host, &self.task, name, value)?)
    }

    /// A transfer progress tick for `--events`.
    pub fn progress(&self, what: &str, bytes: u64, total: Option<u64>) {
        self.events
            .progress(&self.host, &self.task, what, bytes, total);
    }
}

async fn exec_on(
    transport: &dyn Transport,
    cmd: &Cmd,
    stdin: Option<&[u8]>,
    secrets: &Secrets,
) -> Result<ExecOutput, ModuleError> {
    tracing::debug!(host = transport.host(), cmd = %secrets.mask(&cmd.display()), "exec");
    let out = transport.exec(cmd, stdin).await?;
    tracing::trace!(
        host = transport.host(),
        status = ?out.status,
        stdout = %secrets.mask(&out.stdout_str()),
        stderr = %secrets.mask(&out.stderr_str()),
        "exec done"
    );
    Ok(out)
}

fn check_status(cmd: &Cmd, out: ExecOutput, secrets: &Secrets) -> Result<ExecOutput, ModuleError> {
    if out.success() {
        return Ok(out);
    }
    Err(ModuleError::CommandFailed {
        cmd: secrets.mask(&cmd.display()),
        status: match out.status {
            Some(code) => format!("exit {code}"),
            None => "killed by a signal".into(),
        },
        stderr: secrets.mask(out.stderr_str().trim()),
    })
}
