//! Modules: one file per kind of step, each a typed args struct implementing [`Module`].
//!
//! The contract (the engine enforces it; a module cannot opt out):
//! 1. [`Module::facts`] reads the host's real state (no changes!),
//! 2. [`Module::decide`] — pure — turns facts into a list of changes (empty = ok),
//! 3. [`Module::apply`] makes exactly those changes; the engine never calls it in check
//!    mode, so check mode changes nothing by construction.
//!
//! Modules are registered once, in the [`modules!`] invocation at the bottom of this file.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::command::Cmd;
use crate::journal::{Artifact, Journal, JournalError, TaskRecord};
use crate::playbook::template::{Renderer, ShellTemplate, Template, TemplateError, Vars};
use crate::report::EventSink;
use crate::secrets::Secrets;
use crate::transport::{ExecOutput, Transport, TransportError};

pub mod assert;
pub mod command;
pub mod docker_container;
pub mod k8s_scale;
pub mod migration_marker;
pub mod pg_dump;
pub mod pg_restore_k8s;
pub mod preflight;
pub mod redis_backup;
pub mod redis_flushdb;
pub mod redis_layout;
pub mod redis_restore_openebs;
pub mod shared;
pub mod storage_export;
pub mod storage_import;
pub mod storage_stream;
pub mod transfer;

/// Why a module step failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("command failed ({status}): {cmd}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    CommandFailed {
        /// Masked display of the command.
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("not confirmed: {0}; re-run with --yes to allow it")]
    NotConfirmed(String),
    /// A check or a step that failed for a reason the module explains.
    #[error("{0}")]
    Failed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// One planned change: what it is, for humans, and what an operator would have typed.
pub trait Change: Serialize + Send + Sync + 'static {
    /// One line, e.g. "stop container packagist-ui". Must not contain secrets.
    fn describe(&self) -> String;
    /// The commands (shell or kubectl) this change runs, masked.
    fn commands(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// False when applying turned out to change nothing (reported as ok).
    pub changed: bool,
    /// Things the operator must read (shown in the report).
    pub warnings: Vec<String>,
}

impl Applied {
    pub fn changed() -> Self {
        Applied {
            changed: true,
            warnings: Vec::new(),
        }
    }
}

/// Deserialize a static argument and check it, so a bad value is refused when the
/// playbook is read (exit code 2, at the value's file:line:column), not when the task
/// runs after earlier tasks changed hosts.
pub fn checked<'de, D, T>(
    deserializer: D,
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = T::deserialize(deserializer)?;
    check(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

/// What [`Module::check_args`] may use: one host's vars, no connection.
pub struct ArgCheck<'a> {
    pub host: &'a str,
    pub vars: &'a Vars,
    pub renderer: &'a Renderer,
}

/// An argument found bad before any host was contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The key it is about (located in the task), when not a template's.
    pub field: Option<&'static str>,
    /// The template it is about (located where it is written).
    pub template: Option<Template>,
    pub message: String,
}

impl ArgError {
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        ArgError {
            field: Some(field),
            template: None,
            message: message.into(),
        }
    }
    pub fn template(template: &Template, message: impl Into<String>) -> Self {
        ArgError {
            field: None,
            template: Some(template.clone()),
            message: message.into(),
        }
    }
}

/// The module contract; see the module docs.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    type Facts: Serialize + Send + Sync + 'static;
    type Change: Change;

    /// Plain template fields whose value is text (a message, a condition), not a name
    /// or path a command receives: every other plain template of the module is
    /// rendered for every host before anything is contacted as an operand
    /// ([`Renderer::render_operand`]), the way the module renders it.
    const TEXT_FIELDS: &'static [&'static str] = &[];

    /// Checks of the arguments that need no host: run by the engine for every host of
    /// the task, with its vars, before any host is contacted. Static values are checked
    /// when the playbook is read instead (see [`checked`]); this is for what depends
    /// on vars or on several fields at once.
    fn check_args(&self, _at: &ArgCheck<'_>) -> Result<(), ArgError> {
        Ok(())
    }

    /// Read the current state. Must not change anything.
    async fn facts(&self, ctx: &TaskCtx) -> Result<Self::Facts, ModuleError>;

    /// Pure: the changes needed to reach the desired state; empty means ok. An error here
    /// means a check failed (e.g. a preflight condition) and fails the task.
    fn decide(&self, facts: &Self::Facts, ctx: &TaskCtx) -> Result<Vec<Self::Change>, ModuleError>;

    /// Make exactly `changes` (never called in check mode, never with an empty list).
    async fn apply(
        &self,
        ctx: &TaskCtx,
        facts: &Self::Facts,
        changes: &[Self::Change],
    ) -> Result<Applied, ModuleError>;
}

/// A planned change, type-erased for the engine and the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedChange {
    pub description: String,
    pub commands: Vec<String>,
}

impl PlannedChange {
    /// The report line: the description, then the commands.
    pub fn report_line(&self) -> String {
        let mut line = self.description.clone();
        for c in &self.commands {
            line.push_str("\n  $ ");
            line.push_str(c);
        }
        line
    }
}

/// Facts and decision of one module on one host, ready to be applied.
pub struct Plan {
    /// The facts, as JSON (for `-vv` and tests).
    pub facts: Value,
    pub changes: Vec<PlannedChange>,
    typed: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("facts", &self.facts)
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

/// The object-safe face of every [`Module`]; the engine only sees this.
#[async_trait]
pub trait DynModule: Send + Sync {
    /// [`Module::check_args`].
    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError>;
    /// facts → decide.
    async fn plan(&self, ctx: &TaskCtx) -> Result<Plan, ModuleError>;
    /// apply the plan's changes.
    async fn apply_plan(&self, ctx: &TaskCtx, plan: Plan) -> Result<Applied, ModuleError>;
}

struct TypedPlan<M: Module> {
    facts: M::Facts,
    changes: Vec<M::Change>,
}

#[async_trait]
impl<M: Module> DynModule for M {
    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        Module::check_args(self, at)
    }

    async fn plan(&self, ctx: &TaskCtx) -> Result<Plan, ModuleError> {
        let facts = self.facts(ctx).await?;
        let changes = self.decide(&facts, ctx)?;
        let planned = changes
            .iter()
            .map(|c| PlannedChange {
                description: ctx.secrets.mask(&c.describe()),
                commands: c.commands().iter().map(|s| ctx.secrets.mask(s)).collect(),
            })
            .collect();
        Ok(Plan {
            facts: serde_json::to_value(&facts).unwrap_or(Value::Null),
            changes: planned,
            typed: Box::new(TypedPlan::<M> { facts, changes }),
        })
    }

    async fn apply_plan(&self, ctx: &TaskCtx, plan: Plan) -> Result<Applied, ModuleError> {
        let typed = plan
            .typed
            .downcast::<TypedPlan<M>>()
            .map_err(|_| ModuleError::Internal("plan of another module".into()))?;
        self.apply(ctx, &typed.facts, &typed.changes).await
    }
}

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

/// Registers modules: `name => Type`. Generates [`ModuleArgs`] (one variant per module,
/// serialized as `{name: args}`), [`MODULE_NAMES`], and the dispatch by name used by the
/// playbook parser. Adding a module is one line here plus its file.
macro_rules! modules {
    ($($name:ident => $ty:ty),* $(,)?) => {
        /// The module table of a task: which module, with its typed args.
        // One value per task, parsed once: boxing the larger args would buy nothing.
        #[allow(non_camel_case_types, clippy::large_enum_variant)]
        #[derive(Debug, Clone, Serialize)]
        pub enum ModuleArgs {
            $($name($ty)),*
        }

        /// Names of all modules, as written in playbooks (`[task.<name>]`).
        pub const MODULE_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl ModuleArgs {
            pub fn name(&self) -> &'static str {
                match self {
                    $(ModuleArgs::$name(_) => stringify!($name)),*
                }
            }

            /// [`Module::TEXT_FIELDS`] of this module.
            pub fn text_fields(&self) -> &'static [&'static str] {
                match self {
                    $(ModuleArgs::$name(_) => <$ty as Module>::TEXT_FIELDS),*
                }
            }

            /// The module behind the object-safe contract.
            pub fn module(&self) -> &dyn DynModule {
                match self {
                    $(ModuleArgs::$name(m) => m),*
                }
            }

            /// Deserialize the args of the module called `name`.
            pub fn deserialize_named<'de, D: Deserializer<'de>>(
                name: &str,
                deserializer: D,
            ) -> Result<Self, D::Error> {
                match name {
                    $(stringify!($name) => <$ty>::deserialize(deserializer).map(ModuleArgs::$name),)*
                    other => Err(serde::de::Error::unknown_variant(other, MODULE_NAMES)),
                }
            }
        }
    };
}

modules! {
    assert => assert::Assert,
    command => command::Command,
    docker_container => docker_container::DockerContainer,
    pg_dump => pg_dump::PgDump,
    pg_restore_k8s => pg_restore_k8s::PgRestoreK8s,
    redis_restore_openebs => redis_restore_openebs::RedisRestoreOpenebs,
    k8s_scale => k8s_scale::K8sScale,
    redis_backup => redis_backup::RedisBackup,
    storage_export => storage_export::StorageExport,
    storage_import => storage_import::StorageImport,
    storage_stream => storage_stream::StorageStream,
    redis_flushdb => redis_flushdb::RedisFlushdb,
    migration_marker => migration_marker::MigrationMarker,
    preflight => preflight::Preflight,
    transfer => transfer::Transfer,
}
