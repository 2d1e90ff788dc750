//! One task on one host: facts → decide → (not in check mode) apply, and the
//! report's text of its error.

use std::sync::Mutex;
use std::time::Instant;

use crate::module::{ModuleError, Predicted, TaskCtx};
use crate::report::{TaskResult, TaskStatus};
use crate::secrets::Secrets;

pub(super) fn result(host: &str, task: &str, status: TaskStatus, started: Instant) -> TaskResult {
    TaskResult {
        host: host.to_string(),
        task: task.to_string(),
        status,
        changes: Vec::new(),
        duration_ms: started.elapsed().as_millis() as u64,
        ..TaskResult::default()
    }
}

/// facts → decide → (not in check mode) apply. The one place check mode is enforced,
/// and the one place that folds what unapplied changes predict for later tasks. The
/// caller has started the task (event, journal): a loop runs this once per item.
pub(super) async fn run_task(
    ctx: &TaskCtx,
    module: &crate::registry::ModuleArgs,
    started: Instant,
    check: bool,
    diff: bool,
    predicted: &Mutex<Predicted>,
) -> TaskResult {
    let mut r = result(&ctx.host, &ctx.task, TaskStatus::Ok, started);
    tracing::info!(
        host = ctx.host,
        task = ctx.task,
        module = module.name(),
        "task start"
    );
    let m = module.module();
    // What earlier tasks of a check run would have changed (a copy: the lock is not
    // held while facts are read).
    let seen = predicted.lock().map(|p| p.clone()).unwrap_or_default();
    let outcome = match m.plan(ctx, &seen).await {
        Err(e) => Err(e),
        Ok(plan) => {
            tracing::debug!(host = ctx.host, task = ctx.task, facts = %ctx.secrets.mask(&plan.facts.to_string()), "facts");
            r.changes = plan.changes.iter().map(|c| c.report_line()).collect();
            r.facts = plan.facts.clone();
            if diff {
                r.diffs = plan.changes.iter().filter_map(|c| c.diff.clone()).collect();
            }
            r.notes = plan.notes.clone();
            for memo in &plan.memos {
                if let Err(e) = ctx.journal.record_fingerprint(
                    &ctx.host,
                    &ctx.task,
                    memo.name,
                    memo.value.clone(),
                ) {
                    r.status = TaskStatus::Failed;
                    r.error = Some(format!("cannot write the journal: {e}"));
                    return r;
                }
            }
            if plan.changes.is_empty() {
                Ok(TaskStatus::Ok)
            } else if check {
                if let Ok(mut p) = predicted.lock() {
                    for prediction in &plan.predictions {
                        p.fold(&ctx.host, prediction);
                    }
                }
                Ok(TaskStatus::WouldChange)
            } else if let Err(e) = ctx.journal.flush() {
                // `running` must be on disk before anything changes: a crash mid-change
                // then shows where it happened.
                r.status = TaskStatus::Failed;
                r.error = Some(format!("cannot write the journal: {e}"));
                return r;
            } else {
                // The live line says what is being done until a wait says more.
                let doing: Vec<&str> = r.changes.iter().filter_map(|c| c.lines().next()).collect();
                crate::report::status::set(&doing.join("; "));
                m.apply_plan(ctx, plan).await.map(|applied| {
                    r.warnings = applied.warnings;
                    r.notes.extend(applied.notes);
                    r.output = applied.output;
                    if applied.changed {
                        TaskStatus::Changed
                    } else {
                        TaskStatus::Ok
                    }
                })
            }
        }
    };
    match outcome {
        Ok(status) => r.status = status,
        Err(e) => {
            r.status = TaskStatus::Failed;
            r.error = Some(masked_error(&e, &ctx.secrets));
        }
    }
    r.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        host = ctx.host,
        task = ctx.task,
        status = r.status.as_str(),
        "task end"
    );
    r
}

/// The report's text of a task error: the values in it (the command, the host's
/// stderr) masked, ferry's own words around them not, so a short secret such as `a`
/// does not turn "failed" into "f********iled" and tell itself. Messages a module
/// composed from values (`Failed`) are masked whole: there the value cannot be told
/// from the words.
pub(super) fn masked_error(e: &ModuleError, secrets: &Secrets) -> String {
    match e {
        ModuleError::CommandFailed {
            cmd,
            status,
            stderr,
        } => ModuleError::CommandFailed {
            cmd: secrets.mask(cmd),
            status: status.clone(),
            stderr: secrets.mask(stderr),
        }
        .to_string(),
        ModuleError::NotConfirmed(question) => {
            ModuleError::NotConfirmed(secrets.mask(question)).to_string()
        }
        other => secrets.mask(&other.to_string()),
    }
}
