//! The module contract: what every module (general ones in `crate::modules`, the
//! migration's steps in `crate::packagist`) implements, and the support they share.
//!
//! The contract (the engine enforces it; a module cannot opt out):
//! 1. [`Module::facts`] reads the host's real state through a [`Probe`], which cannot
//!    write: it has no journal writes, and its transports refuse writes while facts run
//!    ([`crate::transport::read_only`]);
//! 2. [`Module::decide`] — pure, no context — turns facts into typed changes (empty = ok);
//! 3. [`Module::apply`] makes exactly those changes, as they are (what the report shows
//!    is what runs); the engine never calls it in check mode, so check mode changes
//!    nothing by construction.
//!
//! Each change also says what it leaves behind ([`Change::predicts`]); in check mode the
//! engine folds that into what later tasks' probes see ([`predict`]). The engine is
//! the only place that knows whether this is a check run: no module branches on it.
//!
//! See `docs/modules.md` ("Writing a module") for a walk-through.
//!
//! Modules are registered once, in `crate::registry`.

use std::any::Any;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::journal::JournalError;
use crate::playbook::template::{Renderer, Template, TemplateError, Vars};
use crate::transport::TransportError;

pub mod artifact;
pub mod artifact_stream;
mod ctx;
pub mod direct_route;
pub mod docker;
pub mod kube;
pub mod memo;
pub mod predict;
pub mod staged;
pub mod testing;
pub mod units;
pub mod vars;

pub use ctx::{Confirm, HostCache, HostReader, JournalView, NeverConfirm, Peers, Probe, TaskCtx};
pub use predict::{Predicted, Prediction, Store};
pub use vars::{VarDecl, VarKind, VarLists};

/// Why a module step failed, by family: what went wrong decides what the operator does
/// next (reconnect, free space, investigate a mismatch, fix a precondition).
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The connection to the host.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The Kubernetes API (the cluster, its tunnel, a pod exec).
    #[error(transparent)]
    Kube(#[from] crate::k8s::K8sError),
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
    /// A journal memo that is not what its key says.
    #[error(transparent)]
    Memo(#[from] memo::MemoMismatch),
    #[error("not confirmed: {0}; re-run with --yes to allow it")]
    NotConfirmed(String),
    /// No room for what a step writes (the message names host, path and free space).
    #[error("{0}")]
    DiskFull(String),
    /// A copy, dump or restore is not what its source is: nothing is trusted until it is
    /// made again. `what` names the copy; `detail` says how it differs (the text is the
    /// one `docs/troubleshooting.md` lists, e.g. "restored database differs from the
    /// source: …").
    #[error("{what} differs from the source: {detail}")]
    ProofMismatch { what: String, detail: String },
    /// Something the step needs is not there or not so (a task that must run first,
    /// a pod that must be ready, an argument the host's state rules out).
    #[error("{0}")]
    Precondition(String),
    /// A wait or a remote step that did not finish in its time. `what` says what did
    /// not happen, e.g. "Redis in packagist-redis did not answer PING".
    #[error("{what} within {secs}s")]
    Timeout { what: String, secs: u64 },
    /// A local file or stream (the laptop's copy, a key file, a pipe to a remote
    /// program's stdin).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote program (df, tar, psql, a pod's shell, a helper script) that reported its
    /// own failure, or printed what ferry cannot read. `what` names the program, the
    /// host or pod and the step; `detail` is its (masked) report or its output.
    #[error("{what}: {detail}")]
    Remote { what: String, detail: String },
    /// A fingerprint (database, Redis keys, storage hashes) whose output cannot be read.
    #[error(transparent)]
    Fingerprint(#[from] crate::fingerprint::FingerprintParseError),
    /// A check or a step that failed for a reason the module explains (only where no
    /// family above fits: an `assert`, a command's own timeout, a flush that did not
    /// flush). `tests/static_checks.rs` counts these: add a family instead of a use.
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
    /// What this change leaves behind for later tasks (replicas, a restored store, an
    /// artifact); the engine folds it into check mode's [`Predicted`].
    fn predicts(&self) -> Vec<Prediction> {
        Vec::new()
    }
    /// The state it changes, before and after, for `--diff` (modules that can say).
    fn diff(&self) -> Option<Diff> {
        None
    }
}

/// A change's before and after as text, shown by `--diff` as a unified diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// What is changed ("deployment/ui", "ConfigMap ferry-packagist-migration").
    pub what: String,
    pub before: String,
    pub after: String,
}

impl Diff {
    /// The unified diff, headed `--- WHAT (before)` / `+++ WHAT (after)`.
    pub fn unified(&self) -> String {
        let mut before = self.before.clone();
        let mut after = self.after.clone();
        for text in [&mut before, &mut after] {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
        }
        similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .header(
                &format!("{} (before)", self.what),
                &format!("{} (after)", self.what),
            )
            .to_string()
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// False when applying turned out to change nothing (reported as ok).
    pub changed: bool,
    /// Things the operator must read (shown in the report).
    pub warnings: Vec<String>,
    /// How it was done, for the report (e.g. the route a stream took).
    pub notes: Vec<String>,
    /// What the task's own command printed (`command`): for `register`, `ferry run`'s
    /// per-host output and the JSON report. Modules that say nothing here are
    /// represented by the last command they ran.
    pub output: Option<crate::report::CommandOutput>,
}

impl Applied {
    pub fn changed() -> Self {
        Applied {
            changed: true,
            ..Default::default()
        }
    }
}

/// Deserialize a static argument and check it, so a bad value is refused when the
/// playbook is read (exit code 4, at the value's file:line:column), not when the task
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
    /// The directory of the file the task is written in (see [`HostReader::base_dir`]).
    pub base_dir: &'a std::path::Path,
    pub vars: &'a Vars,
    pub renderer: &'a Renderer,
}

impl ArgCheck<'_> {
    /// Render a plain template of the task for this host; an error is located at it.
    pub fn render(&self, t: &Template) -> Result<String, ArgError> {
        self.renderer
            .render(t, self.vars)
            .map_err(|e| ArgError::template(t, e.message))
    }
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

    /// The host variables the module reads (see [`vars`]): `prepare` checks their kind
    /// on every host that sets them, and [`HostReader::var_of`] refuses the others.
    const VARS: VarLists = &[];

    /// Checks of the arguments that need no host: run by the engine for every host of
    /// the task, with its vars, before any host is contacted. Static values are checked
    /// when the playbook is read instead (see [`checked`]); this is for what depends
    /// on vars or on several fields at once.
    fn check_args(&self, _at: &ArgCheck<'_>) -> Result<(), ArgError> {
        Ok(())
    }

    /// Read the current state (writes are refused).
    async fn facts(&self, probe: &Probe<'_>) -> Result<Self::Facts, ModuleError>;

    /// Pure: the changes needed to reach the desired state; empty means ok. An error here
    /// means a check failed (e.g. a preflight condition) and fails the task.
    fn decide(&self, facts: &Self::Facts) -> Result<Vec<Self::Change>, ModuleError>;

    /// What `changes`, once applied, leave behind for later tasks (check mode folds it
    /// in; see [`predict`]): by default what each change says it predicts; a module whose
    /// changes together make an artifact says so here.
    fn predicts(&self, changes: &[Self::Change]) -> Vec<Prediction> {
        changes.iter().flat_map(Change::predicts).collect()
    }

    /// Pure: why the facts call for no change when the operator should hear it (a guard
    /// that leaves a store alone), shown with the task's `ok` in the report.
    fn notes(&self, _facts: &Self::Facts) -> Vec<String> {
        Vec::new()
    }

    /// Pure: what the facts tell later tasks, recorded in the journal by the engine
    /// right after the facts were read, in check mode too (the journal is not a host);
    /// e.g. the old side's data sizes, which the new side's preflight checks its disk
    /// against.
    fn memos(&self, _facts: &Self::Facts) -> Vec<memo::MemoValue> {
        Vec::new()
    }

    /// Make exactly `changes` (never called in check mode, never with an empty list).
    async fn apply(
        &self,
        ctx: &TaskCtx,
        facts: &Self::Facts,
        changes: &[Self::Change],
    ) -> Result<Applied, ModuleError>;
}

/// A change that is exactly one command on the host (a package manager's, systemctl,
/// useradd...): [`apply_commands`] runs them in order.
pub trait OneCommand {
    fn cmd(&self) -> crate::command::Cmd;
}

/// Run each change's command in order; the first that fails fails the task.
pub async fn apply_commands<C: OneCommand + Change>(
    ctx: &TaskCtx,
    changes: &[C],
) -> Result<Applied, ModuleError> {
    for change in changes {
        crate::report::status::set(&change.describe());
        ctx.exec_ok(&change.cmd()).await?;
    }
    Ok(Applied::changed())
}

/// A planned change, type-erased for the engine and the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedChange {
    pub description: String,
    pub commands: Vec<String>,
    /// The unified diff of what it changes (see [`Change::diff`]), masked.
    pub diff: Option<String>,
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
    /// What the changes leave behind (see [`Change::predicts`]).
    pub predictions: Vec<Prediction>,
    /// What the facts tell later tasks (see [`Module::memos`]).
    pub memos: Vec<memo::MemoValue>,
    /// Why nothing changes, when worth saying (see [`Module::notes`]), masked.
    pub notes: Vec<String>,
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
    /// [`Module::VARS`], flattened.
    fn vars(&self) -> Vec<&'static VarDecl>;
    /// facts (writes refused) → decide.
    async fn plan(&self, reader: &HostReader, predicted: &Predicted) -> Result<Plan, ModuleError>;
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

    fn vars(&self) -> Vec<&'static VarDecl> {
        vars::all(M::VARS)
    }

    async fn plan(&self, reader: &HostReader, predicted: &Predicted) -> Result<Plan, ModuleError> {
        let probe = Probe::new(reader, predicted);
        let facts = crate::transport::read_only::scope(self.facts(&probe)).await?;
        let changes = self.decide(&facts)?;
        let planned = changes
            .iter()
            .map(|c| PlannedChange {
                description: reader.secrets.mask(&c.describe()),
                commands: c
                    .commands()
                    .iter()
                    .map(|s| reader.secrets.mask(s))
                    .collect(),
                diff: c.diff().map(|d| reader.secrets.mask(&d.unified())),
            })
            .collect();
        Ok(Plan {
            facts: serde_json::to_value(&facts).unwrap_or(Value::Null),
            changes: planned,
            predictions: self.predicts(&changes),
            memos: self.memos(&facts),
            notes: self
                .notes(&facts)
                .iter()
                .map(|n| reader.secrets.mask(n))
                .collect(),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Uses of the catch-all `Failed` left in `src/` (an `assert`, a command's own
    /// timeout, a scale wait's report, a flush that did not flush, ...). A ratchet: an
    /// operator acts on an error's family (reconnect, free space, investigate a
    /// mismatch, run the missing task), so a new failure belongs in the family that
    /// fits (or a new, documented one), not in `Failed`. Lower this when you remove one;
    /// never raise it.
    const MAX_FAILED_USES: usize = 8;

    fn count(dir: &Path, needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, line) in text.lines().enumerate() {
                    if line.contains(needle) {
                        found.push(format!("{}:{}", p.display(), i + 1));
                    }
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn failed_is_only_used_where_no_family_fits() {
        // Split so that this file's own source does not count.
        let needle = concat!("ModuleError::", "Failed(");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let uses = count(&src, needle);
        assert!(
            uses.len() <= MAX_FAILED_USES,
            "{} uses of {needle} in src/ (at most {MAX_FAILED_USES}): use a family of \
             ModuleError that fits (Precondition, Timeout, ProofMismatch, DiskFull, Io, \
             Remote, Kube, ...) instead:\n{}",
            uses.len(),
            uses.join("\n")
        );
    }
}
