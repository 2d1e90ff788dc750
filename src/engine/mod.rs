//! The engine: the only place that decides. For every host (in parallel, bounded by
//! `--forks`) and every task (in order within its lane; a host's lanes run at the same
//! time): facts → decision → apply, where apply is never called in check mode. Cross-host dependencies (`after`), `--limit/--tags/--skip-tags/
//! --start-at`, the journal, events and the report are handled here.
//!
//! Two steps, so nothing is contacted before all input is known to be good:
//! [`prepare`] (pure: selects hosts and tasks, renders every template for every host)
//! and [`run`] (connects once per host, runs).
//!
//! Files: `prepare.rs` (the plan), `run.rs` (a run's shared state), `lane.rs` (one
//! host's lanes), `task.rs` (one task), `identity.rs` (journal identity), `ping.rs`,
//! `connect.rs` (SSH connector). This file: options, errors, re-exports.

pub mod connect;
mod identity;
mod keys;
mod lane;
mod ping;
mod prepare;
mod run;
mod task;

pub use identity::{journal_owner, task_definition};
pub use ping::ping;
pub use prepare::{check_start_at, host_vars, prepare, task_host_vars, Prepared, Scheduled};
pub use run::run;

use std::sync::Arc;

use crate::inventory::UnknownTarget;
use crate::journal::Journal;
use crate::module::Confirm;
use crate::playbook::source::InputError;
use crate::playbook::template::TemplateError;
use crate::playbook::UnknownTask;
use crate::report::EventSink;
use crate::secrets::Secrets;
use crate::transport::Connector;

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub check: bool,
    pub yes: bool,
    /// Hosts at a time; `None`: all.
    pub forks: Option<usize>,
    pub limit: Option<String>,
    pub tags: Vec<String>,
    pub skip_tags: Vec<String>,
    pub start_at: Option<String>,
    /// Stores a completed migration's target may be overwritten in (`--overwrite`).
    pub overwrite: Vec<String>,
    /// `--diff`: the report shows what each change does to the state it changes, where
    /// its module can say.
    pub diff: bool,
}

/// Bad input found before anything was contacted (exit code 4 for files, 5 for options).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("--limit: {0}")]
    Limit(UnknownTarget),
    #[error("--start-at: {0}")]
    StartAt(#[from] UnknownTask),
    #[error("{} template error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Templates(Vec<TemplateError>),
    #[error("{} argument error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Args(Vec<InputError>),
    #[error("--start-at: {}", .0.join("\n  "))]
    StartAtEdited(Vec<String>),
    /// `--tags`/`--skip-tags` name a tag no task has (a typo would run everything or
    /// nothing without a word).
    #[error("{0}")]
    Tags(String),
    /// The limit leaves no host that any selected task runs on.
    #[error("{0}")]
    NoHosts(String),
}

/// What a run needs besides the plan.
#[derive(Clone)]
pub struct RunEnv {
    pub connector: Arc<dyn Connector>,
    pub journal: Arc<Journal>,
    pub events: EventSink,
    pub secrets: Secrets,
    pub confirmer: Arc<dyn Confirm>,
    /// Cancelled on SIGINT/SIGTERM: no task starts after it, running ones are stopped
    /// (their remote commands signalled and closed) and recorded as interrupted.
    pub interrupt: tokio_util::sync::CancellationToken,
}
