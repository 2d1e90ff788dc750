//! One host's part of a run: its lanes (run at the same time, each in playbook order),
//! its `--forks` slot and the stop flag shared by its lanes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::run::{Outcome, Shared};
use super::task::{result, run_task};
use super::{host_vars, Scheduled};
use crate::journal::RecordStatus;
use crate::module::{HostReader, JournalView, TaskCtx};
use crate::report::status::{self, StatusFn};
use crate::report::CommandRecord;
use crate::report::TaskStatus;
use crate::transport::read_only::Guarded;
use crate::transport::recorded::{CommandLog, Recorded};

/// A host's `--forks` slot: the host holds one permit while at least one of its lanes
/// runs a task, however many lanes do, so `--forks` bounds hosts, not tasks.
#[derive(Default)]
struct HostSlot {
    /// Serialises taking the permit, so two lanes starting at once take one permit.
    acquiring: tokio::sync::Mutex<()>,
    held: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    permit: Option<OwnedSemaphorePermit>,
    /// Tasks of the host running now.
    active: usize,
}

impl HostSlot {
    /// Wait for the host's permit (none if a lane of the host already has it).
    /// `None`: the semaphore was closed.
    async fn enter(&self, forks: &Arc<Semaphore>) -> Option<SlotGuard<'_>> {
        let _acquiring = self.acquiring.lock().await;
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if held.active > 0 {
                held.active += 1;
                return Some(SlotGuard { slot: self });
            }
        }
        let permit = forks.clone().acquire_owned().await.ok()?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.permit = Some(permit);
        held.active += 1;
        Some(SlotGuard { slot: self })
    }
}

/// One running task of a host; the last one to end gives the permit back.
struct SlotGuard<'a> {
    slot: &'a HostSlot,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.slot.held.lock().unwrap_or_else(|e| e.into_inner());
        held.active = held.active.saturating_sub(1);
        if held.active == 0 {
            held.permit = None;
        }
    }
}

/// What the lanes of one host share.
#[derive(Default)]
struct HostRun {
    /// Set by the first failure (or unreachable connection) in any lane: no lane starts
    /// another task.
    stopped: AtomicBool,
    /// The host was reported unreachable (once, whichever lane found out first).
    unreachable_reported: AtomicBool,
    slot: HostSlot,
    /// Shared by this host's tasks (e.g. the Kubernetes API connection).
    cache: Arc<crate::module::HostCache>,
}

impl HostRun {
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// Run a host's schedule: one lane per distinct `lane`, each in playbook order, the
/// lanes at the same time. Each lane is its own tokio task, so a lane busy on the CPU
/// (hashing a stream) does not hold up the others.
pub(super) async fn run_host(shared: Arc<Shared>, host: String) {
    let Some(schedule) = shared.prepared.hosts.get(&host) else {
        return;
    };
    let pb = &shared.prepared.playbook;
    let mut lanes: Vec<(&str, Vec<Scheduled>)> = Vec::new();
    for scheduled in schedule {
        let lane = pb.tasks[scheduled.task].lane.as_str();
        match lanes.iter_mut().find(|(name, _)| *name == lane) {
            Some((_, tasks)) => tasks.push(scheduled.clone()),
            None => lanes.push((lane, vec![scheduled.clone()])),
        }
    }
    let run = Arc::new(HostRun::default());
    let mut workers = Vec::new();
    for (lane, tasks) in lanes {
        let tasks = Arc::new(tasks);
        let worker = {
            let (shared, host, run, tasks) =
                (shared.clone(), host.clone(), run.clone(), tasks.clone());
            tokio::spawn(async move { run_lane(&shared, &host, &run, &tasks).await })
        };
        workers.push((lane.to_string(), tasks, worker));
    }
    for (lane, tasks, worker) in workers {
        if let Err(e) = worker.await {
            tracing::error!(host, lane, "lane worker panicked: {e}");
            // Stop the host and release anyone waiting on the tasks the lane left.
            run.stop();
            for s in tasks.iter() {
                if shared.completion.get(s.task, &host).is_none() {
                    shared.completion.set(s.task, &host, Outcome::NotRun);
                }
            }
        }
    }
}

/// Run one lane of a host: its tasks in order, one at a time, until the host stops.
async fn run_lane(shared: &Shared, host: &str, run: &HostRun, schedule: &[Scheduled]) {
    let pb = &shared.prepared.playbook;
    let secrets = &shared.env.secrets;
    let interrupt = &shared.env.interrupt;
    let mut position = 0;
    while position < schedule.len() {
        if run.stopped() || interrupt.is_cancelled() {
            break;
        }
        let scheduled = &schedule[position];
        position += 1;
        let task = &pb.tasks[scheduled.task];
        let started = Instant::now();
        if scheduled.skip {
            shared.env.events.task_start(host, &task.name);
            let _ = shared.env.journal.task_started(host, &task.name);
            let _ = shared.env.journal.task_finished(
                host,
                &task.name,
                RecordStatus::Skipped,
                &[],
                None,
            );
            shared.push(result(host, &task.name, TaskStatus::Skipped, started));
            shared
                .completion
                .set(scheduled.task, host, Outcome::Succeeded);
            continue;
        }
        let waited = tokio::select! {
            w = shared.wait_for_dependencies(scheduled.task, host) => w,
            () = interrupt.cancelled() => {
                position -= 1;
                break;
            }
        };
        if run.stopped() {
            // Another lane failed while this one waited: the task does not start.
            position -= 1;
            break;
        }
        let warnings = match waited {
            Ok(w) => w,
            Err(reason) => {
                run.stop();
                shared.env.events.task_start(host, &task.name);
                let mut r = result(host, &task.name, TaskStatus::Failed, started);
                r.error = Some(reason);
                shared.push(r);
                shared.completion.set(scheduled.task, host, Outcome::Failed);
                break;
            }
        };
        let entered = tokio::select! {
            e = run.slot.enter(&shared.forks) => e,
            () = interrupt.cancelled() => None,
        };
        let Some(_slot) = entered else {
            position -= 1;
            break;
        };
        if run.stopped() {
            // Stopped while this lane waited for `--forks`.
            position -= 1;
            break;
        }
        // What comes next (connecting, the task itself) is the task's own time.
        let waited_ms = started.elapsed().as_millis() as u64;
        let transport = match shared.connections.get(host).await {
            Ok(t) => t,
            Err(reason) => {
                run.stop();
                if !run.unreachable_reported.swap(true, Ordering::SeqCst) {
                    shared.mark_unreachable(host, &reason);
                }
                position -= 1;
                break;
            }
        };
        let commands = Arc::new(CommandLog::default());
        let ctx = TaskCtx {
            reader: HostReader {
                host: host.to_string(),
                task: task.name.clone(),
                transport: Guarded::wrap(Recorded::wrap(transport, commands.clone())),
                peers: shared.connections.clone(),
                journal: JournalView::new(shared.env.journal.clone()),
                secrets: secrets.clone(),
                vars: shared.prepared.vars.get(host).cloned().unwrap_or_else(|| {
                    Arc::new(host_vars(pb, &shared.prepared.inventory, host, secrets))
                }),
                renderer: shared.prepared.renderer.clone(),
                overwrite: shared.prepared.options.overwrite.clone(),
                cache: run.cache.clone(),
                declared: Some(task.module.module().vars()),
            },
            yes: shared.prepared.options.yes,
            journal: shared.env.journal.clone(),
            events: shared.env.events.clone(),
            confirmer: shared.env.confirmer.clone(),
        };
        let status_to: StatusFn = {
            let (events, host, name) = (
                shared.env.events.clone(),
                host.to_string(),
                task.name.clone(),
            );
            Arc::new(move |s: &str| events.task_status(&host, &name, s))
        };
        let ran = tokio::select! {
            r = status::scope(status_to, run_task(
                &ctx,
                &task.module,
                started,
                shared.prepared.options.check,
                shared.prepared.options.diff,
                &shared.predicted,
            )) => Some(r),
            // Dropping the task's future drops its remote commands: each is sent
            // SIGTERM (sshd signals the command's process group) and its channel closed.
            () = interrupt.cancelled() => None,
        };
        let interrupted = ran.is_none();
        let mut r = ran.unwrap_or_else(|| {
            let mut r = result(host, &task.name, TaskStatus::Failed, started);
            r.error = Some(
                "interrupted (SIGINT/SIGTERM): its remote commands were told to stop; a \
                 re-run runs the task again"
                    .into(),
            );
            r
        });
        r.warnings.extend(warnings);
        r.waited_ms = waited_ms;
        r.commands = commands
            .take()
            .into_iter()
            .map(|c| CommandRecord {
                cmd: secrets.mask(&c.cmd),
                stdout: secrets.mask(&c.stdout),
                stderr: secrets.mask(&c.stderr),
                ..c
            })
            .collect();
        if r.output.is_none() {
            // A module that does not say what its command printed: its last command.
            r.output = r.commands.last().map(|c| crate::report::CommandOutput {
                rc: c.exit_status,
                stdout: c.stdout.clone(),
                stderr: c.stderr.clone(),
            });
        }
        let record = match r.status {
            _ if interrupted => RecordStatus::Interrupted,
            TaskStatus::Ok => RecordStatus::Ok,
            TaskStatus::Changed => RecordStatus::Changed,
            TaskStatus::WouldChange => RecordStatus::Running,
            TaskStatus::Skipped => RecordStatus::Skipped,
            TaskStatus::Failed => RecordStatus::Failed,
        };
        if let Err(e) = shared.env.journal.task_finished(
            host,
            &task.name,
            record,
            &r.changes,
            r.error.as_deref(),
        ) {
            r.status = TaskStatus::Failed;
            r.error = Some(format!("cannot write the journal: {e}"));
        }
        let failed = r.status == TaskStatus::Failed;
        if failed {
            // Before anyone hears of the failure, so no lane starts a task after it.
            run.stop();
        }
        shared.completion.set(
            scheduled.task,
            host,
            if failed {
                Outcome::Failed
            } else {
                Outcome::Succeeded
            },
        );
        shared.push(r);
        if failed {
            break;
        }
    }
    // Tasks that will not run: release anyone waiting on them.
    for s in &schedule[position..] {
        shared.completion.set(s.task, host, Outcome::NotRun);
    }
}
