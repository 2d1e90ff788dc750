//! What a module may use while it runs one task on one host.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::command::Cmd;
use crate::journal::{Artifact, Journal, TaskRecord};
use crate::module::memo::Memo;
use crate::module::predict::{Predicted, Store};
use crate::module::ModuleError;
use crate::playbook::template::{Renderer, ShellTemplate, Template, Vars};
use crate::report::EventSink;
use crate::secrets::Secrets;
use crate::transport::read_only::Guarded;
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

/// What every phase of a task may use: this host's identity, vars and connection, and
/// the journal to read. `facts` sees only this (through [`Probe`]); `apply` sees it
/// through [`TaskCtx`], which adds what writes.
pub struct HostReader {
    /// Inventory name of this host.
    pub host: String,
    /// Name of the task.
    pub task: String,
    /// This host's connection; the engine hands out a guarded one (see
    /// [`crate::transport::read_only`]), so writes fail while facts are read.
    pub transport: Arc<dyn Transport>,
    pub peers: Arc<dyn Peers>,
    /// The journal, to read.
    pub journal: JournalView,
    pub secrets: Secrets,
    /// This host's variables.
    pub vars: Arc<Vars>,
    pub renderer: Arc<Renderer>,
    /// Stores named by `--overwrite`: steps that would otherwise refuse to touch a
    /// completed migration's target may overwrite these.
    pub overwrite: Vec<String>,
    /// Things a host's tasks share across the run (e.g. the Kubernetes connection).
    pub cache: Arc<HostCache>,
    /// The directory of the file the task is written in (the playbook or a task file):
    /// where a module's laptop files (`copy`'s `src`, a template) are looked up.
    pub base_dir: std::path::PathBuf,
    /// The host vars the running module declares ([`crate::module::Module::VARS`]);
    /// [`HostReader::var_of`] refuses any other. `None`: not checked (test harnesses).
    pub declared: Option<Vec<&'static crate::module::VarDecl>>,
}

/// The journal, read-only.
#[derive(Clone)]
pub struct JournalView(Arc<Journal>);

impl JournalView {
    pub fn new(journal: Arc<Journal>) -> Self {
        JournalView(journal)
    }
    /// The whole journal as it is now.
    pub fn snapshot(&self) -> crate::journal::JournalData {
        self.0.snapshot()
    }
    /// The record of `task` on `host`.
    pub fn record(&self, host: &str, task: &str) -> Option<TaskRecord> {
        self.0.record(host, task)
    }
    /// Every recorded artifact called `name`, oldest first.
    pub fn artifacts_named(&self, name: &str) -> Vec<Artifact> {
        self.0.artifacts_named(name)
    }
}

/// What `facts` gets: the host to read, and what earlier tasks of a check run would
/// have changed (see [`crate::module::predict`]). It has no way to write: no journal
/// writes, no confirmation, and its transports refuse writes while facts run.
pub struct Probe<'a> {
    reader: &'a HostReader,
    predicted: &'a Predicted,
}

impl<'a> Probe<'a> {
    pub fn new(reader: &'a HostReader, predicted: &'a Predicted) -> Self {
        Probe { reader, predicted }
    }

    /// Replicas an earlier task of this check run would have set on `kind/name`.
    pub fn predicted_replicas(&self, workload: &str) -> Option<u32> {
        self.predicted.replicas(&self.reader.host, workload)
    }

    /// Whether an earlier task of this check run would have restored `store` here.
    pub fn predicted_restored(&self, store: Store) -> bool {
        self.predicted.restored(&self.reader.host, store)
    }

    /// Whether an earlier task of this check run would have made artifact `name`.
    pub fn predicted_artifact(&self, name: &str) -> bool {
        self.predicted.artifact(name)
    }
}

impl std::ops::Deref for Probe<'_> {
    type Target = HostReader;
    fn deref(&self) -> &HostReader {
        self.reader
    }
}

/// What `apply` gets: the host to read and to change, the journal to record in, the
/// operator to ask.
pub struct TaskCtx {
    pub reader: HostReader,
    /// `--yes`: destructive steps are confirmed in advance.
    pub yes: bool,
    pub journal: Arc<Journal>,
    pub events: EventSink,
    pub confirmer: Arc<dyn Confirm>,
}

impl std::ops::Deref for TaskCtx {
    type Target = HostReader;
    fn deref(&self) -> &HostReader {
        &self.reader
    }
}

/// Per-host values shared by the tasks of one run, each built once on first use.
#[derive(Default)]
pub struct HostCache {
    cells: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn Any + Send + Sync>>>,
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

impl std::fmt::Debug for HostReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostReader")
            .field("host", &self.host)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl HostReader {
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

    /// A variable of this host whose name the task's arguments give (a declared one is
    /// read with [`HostReader::var_of`]).
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

    /// The transport of another inventory host (guarded like this host's).
    pub async fn peer(&self, host: &str) -> Result<Arc<dyn Transport>, ModuleError> {
        Ok(Guarded::wrap(self.peers.transport(host).await?))
    }

    /// The journal record of `task` on `host` (any host).
    pub fn record(&self, host: &str, task: &str) -> Option<TaskRecord> {
        self.journal.record(host, task)
    }

    /// Fingerprint `key` of this task on this host, as an earlier run recorded it;
    /// `None` also when what is recorded is not a `T`.
    pub fn own_fingerprint<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.record(&self.host, &self.task)
            .and_then(|r| r.fingerprints.get(key).cloned())
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Memo `key` of this task on this host, as an earlier run recorded it.
    pub fn own_memo<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &Memo<T>,
    ) -> Result<Option<T>, ModuleError> {
        match self.record(&self.host, &self.task) {
            Some(r) => Ok(key.read(&self.host, &self.task, &r)?),
            None => Ok(None),
        }
    }
}

impl TaskCtx {
    /// Allow a destructive step: `--yes`, or the operator says yes to a question naming
    /// what will be destroyed. (Only `apply` can ask, and the engine never applies in
    /// check mode.)
    pub fn confirm_destructive(&self, what: &str) -> Result<(), ModuleError> {
        if self.yes {
            return Ok(());
        }
        let question = format!("[{}] {}: {what}. Proceed?", self.host, self.task);
        if self.confirmer.confirm(&question) {
            Ok(())
        } else {
            Err(ModuleError::NotConfirmed(what.to_string()))
        }
    }

    /// Record an artifact this task produced on this host.
    pub fn record_artifact(&self, artifact: Artifact) -> Result<(), ModuleError> {
        Ok(self
            .journal
            .record_artifact(&self.host, &self.task, artifact)?)
    }

    /// Record memo `key` of this task.
    pub fn record_memo<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &Memo<T>,
        value: &T,
    ) -> Result<(), ModuleError> {
        let memo = key.of(value);
        Ok(self
            .journal
            .record_fingerprint(&self.host, &self.task, memo.name, memo.value)?)
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
