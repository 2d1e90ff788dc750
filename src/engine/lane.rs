//! One host's part of a run: its lanes (run at the same time, each in playbook order),
//! its `--forks` slot and the stop flag shared by its lanes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::run::{Outcome, Shared};
use super::task::{result, run_task};
use super::{host_vars, keys, Scheduled};
use crate::journal::RecordStatus;
use crate::module::{HostReader, JournalView, TaskCtx};
use crate::playbook::Task;
use crate::report::status::{self, StatusFn};
use crate::report::CommandRecord;
use crate::report::TaskResult;
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
    /// What the host's tasks registered so far (`register`), for later tasks' vars.
    registered: Mutex<serde_json::Map<String, serde_json::Value>>,
    /// Handlers a task that changed on this host notified.
    notified: Mutex<std::collections::BTreeSet<String>>,
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
    let mut handlers: Vec<Scheduled> = Vec::new();
    for scheduled in schedule {
        if pb.tasks[scheduled.task].handler {
            handlers.push(scheduled.clone());
            continue;
        }
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
    // Handlers: once all the host's lanes are done, one after another in the playbook's
    // order, those a change notified (run_lane passes over the others).
    if !handlers.is_empty() {
        run_lane(&shared, &host, &run, &handlers).await;
    }
}

/// How one scheduled task went, for its lane.
enum Step {
    /// Done (ok, changed, skipped, an ignored failure): the lane goes on.
    Done,
    /// Failed: the host stops.
    Failed,
    /// Not started (the host stopped, an interrupt, no connection): it and the rest
    /// of the lane are released as not run.
    NotStarted,
}

/// Run one lane of a host: its tasks in order, one at a time, until the host stops.
async fn run_lane(shared: &Shared, host: &str, run: &HostRun, schedule: &[Scheduled]) {
    let mut position = 0;
    while position < schedule.len() {
        if run.stopped() || shared.env.interrupt.is_cancelled() {
            break;
        }
        match run_scheduled(shared, host, run, &schedule[position]).await {
            Step::Done => position += 1,
            Step::Failed => {
                position += 1;
                break;
            }
            Step::NotStarted => break,
        }
    }
    // Tasks that will not run: release anyone waiting on them.
    for s in &schedule[position..] {
        shared.completion.set(s.task, host, Outcome::NotRun);
    }
}

/// A task that does not run on this host (`when` false): reported and recorded as
/// skipped, and registered as skipped.
fn skipped(shared: &Shared, host: &str, run: &HostRun, scheduled: &Scheduled, started: Instant) {
    let task = &shared.prepared.playbook.tasks[scheduled.task];
    shared.env.events.task_start(host, &task.name);
    let _ = shared.env.journal.task_started(host, &task.name);
    let _ = shared
        .env
        .journal
        .task_finished(host, &task.name, RecordStatus::Skipped, &[], None);
    let r = result(host, &task.name, TaskStatus::Skipped, started);
    register(run, task, &r, Vec::new());
    shared.push(r);
    shared
        .completion
        .set(scheduled.task, host, Outcome::Succeeded);
}

fn register(run: &HostRun, task: &Task, r: &TaskResult, items: Vec<serde_json::Value>) {
    if let Some(name) = &task.register {
        let value = keys::registered(r, items);
        run.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), value);
    }
}

/// One scheduled task on the host: wait for what it depends on and for a `--forks`
/// slot, then run it (once, or once per `loop` item), judge it (`failed_when`,
/// `changed_when`, `ignore_errors`), record it, register it and notify its handlers.
async fn run_scheduled(shared: &Shared, host: &str, run: &HostRun, scheduled: &Scheduled) -> Step {
    let pb = &shared.prepared.playbook;
    let secrets = &shared.env.secrets;
    let interrupt = &shared.env.interrupt;
    let task = &pb.tasks[scheduled.task];
    let started = Instant::now();
    if task.handler {
        let notified = run.notified.lock().unwrap_or_else(|e| e.into_inner());
        if !notified.contains(&task.name) {
            // Not notified on this host: nothing to say about it.
            shared.completion.set(scheduled.task, host, Outcome::NotRun);
            return Step::Done;
        }
    }
    if scheduled.skip {
        skipped(shared, host, run, scheduled, started);
        return Step::Done;
    }
    let waited = tokio::select! {
        w = shared.wait_for_dependencies(scheduled.task, host) => w,
        () = interrupt.cancelled() => return Step::NotStarted,
    };
    if run.stopped() {
        // Another lane failed while this one waited: the task does not start.
        return Step::NotStarted;
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
            return Step::Failed;
        }
    };
    let entered = tokio::select! {
        e = run.slot.enter(&shared.forks) => e,
        () = interrupt.cancelled() => None,
    };
    let Some(_slot) = entered else {
        return Step::NotStarted;
    };
    if run.stopped() {
        // Stopped while this lane waited for `--forks`.
        return Step::NotStarted;
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
            return Step::NotStarted;
        }
    };
    // The host's vars, with what its earlier tasks registered.
    let base = scheduled
        .vars
        .clone()
        .or_else(|| shared.prepared.vars.get(host).cloned())
        .unwrap_or_else(|| Arc::new(host_vars(pb, &shared.prepared.inventory, host, secrets)));
    let registered = run
        .registered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let vars = Arc::new(base.overlay(&registered, secrets));
    let renderer = &shared.prepared.renderer_for(task);
    let mut early_error = None;
    if let (true, Some(when)) = (scheduled.when_at_run, &task.when) {
        match renderer.truthy(when, &vars) {
            Ok(true) => {}
            Ok(false) => {
                skipped(shared, host, run, scheduled, started);
                return Step::Done;
            }
            Err(e) => early_error = Some(format!("when: {e}")),
        }
    }
    let items = match (&task.loop_, &scheduled.items) {
        (None, _) => None,
        (Some(_), Some(items)) => Some(items.clone()),
        (Some(l), None) => match l.items(&vars) {
            Ok(items) => Some(items),
            Err(e) => {
                early_error.get_or_insert(e);
                None
            }
        },
    };
    shared.env.events.task_start(host, &task.name);
    if let Err(e) = shared.env.journal.task_started(host, &task.name) {
        early_error.get_or_insert(format!("cannot write the journal: {e}"));
    }
    let commands = Arc::new(CommandLog::default());
    let ctx_with = |vars: Arc<crate::playbook::template::Vars>| TaskCtx {
        reader: HostReader {
            host: host.to_string(),
            task: task.name.clone(),
            transport: Guarded::wrap(Recorded::wrap(transport.clone(), commands.clone())),
            peers: shared.connections.clone(),
            journal: JournalView::new(shared.env.journal.clone()),
            secrets: secrets.clone(),
            vars,
            renderer: renderer.clone(),
            overwrite: shared.prepared.options.overwrite.clone(),
            cache: run.cache.clone(),
            declared: Some(task.module.module().vars()),
            base_dir: task
                .source
                .path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
        },
        yes: shared.prepared.options.yes,
        journal: shared.env.journal.clone(),
        events: shared.env.events.clone(),
        confirmer: shared.env.confirmer.clone(),
    };
    let check = shared.prepared.options.check;
    let judge = |mut r: TaskResult, vars: &crate::playbook::template::Vars| {
        keys::judge(task, &mut r, vars, renderer, secrets, check);
        r
    };
    let once = |vars: Arc<crate::playbook::template::Vars>| {
        let ctx = ctx_with(vars);
        let before = commands.len();
        let commands = commands.clone();
        async move {
            let mut r = run_task(
                &ctx,
                &task.module,
                Instant::now(),
                check,
                shared.prepared.options.diff,
                &shared.predicted,
            )
            .await;
            if r.output.is_none() {
                // A module that does not say what its command printed: its last command
                // of this item (what `register` and the conditions see).
                r.output = commands.last_after(before).map(|c| c.output(secrets));
            }
            (r, ctx)
        }
    };
    // The task's work: once, or once per item with the item as `item`; `None`: the
    // task's own `timeout` ran out first.
    let work = async {
        let mut item_values = Vec::new();
        let r = match items {
            None => {
                let (r, ctx) = once(vars.clone()).await;
                judge(r, &ctx.vars)
            }
            Some(items) => {
                let mut each = Vec::new();
                for item in items {
                    let mut extra = serde_json::Map::new();
                    extra.insert("item".into(), item.clone());
                    let (r, ctx) = once(Arc::new(vars.overlay(&extra, secrets))).await;
                    let r = judge(r, &ctx.vars);
                    let mut value = keys::registered(&r, Vec::new());
                    value["item"] = item.clone();
                    item_values.push(value);
                    each.push((crate::playbook::task_keys::item_label(&item), r));
                }
                keys::merge_items(result(host, &task.name, TaskStatus::Ok, started), each)
            }
        };
        (r, item_values)
    };
    let timed = async {
        match task.timeout {
            Some(limit) => tokio::time::timeout(limit.duration(), work).await.ok(),
            None => Some(work.await),
        }
    };
    // The task's `become`, for every command it starts (facts and apply alike).
    let timed = crate::transport::become_task::scope(task.become_, timed);
    let status_to: StatusFn = {
        let (events, host, name) = (
            shared.env.events.clone(),
            host.to_string(),
            task.name.clone(),
        );
        Arc::new(move |s: &str| events.task_status(&host, &name, s))
    };
    let ran = match early_error {
        Some(e) => {
            let mut r = result(host, &task.name, TaskStatus::Failed, started);
            r.error = Some(e);
            Some(Some((r, Vec::new())))
        }
        None => tokio::select! {
            r = status::scope(status_to, timed) => Some(r),
            // Dropping the task's future drops its remote commands: each is sent
            // SIGTERM (sshd signals the command's process group) and its channel closed.
            () = interrupt.cancelled() => None,
        },
    };
    let interrupted = ran.is_none();
    let (mut r, item_values) = match ran {
        Some(Some(done)) => done,
        Some(None) => {
            let mut r = result(host, &task.name, TaskStatus::Failed, started);
            r.error = Some(format!(
                "the task did not finish within its timeout of {}s (`timeout`) and was \
                 stopped: its remote commands were told to stop",
                task.timeout
                    .map(|t| t.duration().as_secs())
                    .unwrap_or_default()
            ));
            (r, Vec::new())
        }
        None => {
            let mut r = result(host, &task.name, TaskStatus::Failed, started);
            r.error = Some(
                "interrupted (SIGINT/SIGTERM): its remote commands were told to stop; a \
                 re-run runs the task again"
                    .into(),
            );
            (r, Vec::new())
        }
    };
    r.duration_ms = started.elapsed().as_millis() as u64;
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
        // A task its timeout or an interrupt ended (no item's result): its last command.
        r.output = r.commands.last().map(|c| c.output(secrets));
    }
    let record = match r.status {
        _ if interrupted => RecordStatus::Interrupted,
        TaskStatus::Ok => RecordStatus::Ok,
        TaskStatus::Changed => RecordStatus::Changed,
        TaskStatus::WouldChange => RecordStatus::Running,
        TaskStatus::Skipped => RecordStatus::Skipped,
        TaskStatus::Failed => RecordStatus::Failed,
    };
    if let Err(e) =
        shared
            .env
            .journal
            .task_finished(host, &task.name, record, &r.changes, r.error.as_deref())
    {
        r.status = TaskStatus::Failed;
        r.error = Some(format!("cannot write the journal: {e}"));
    }
    let failed = r.status == TaskStatus::Failed;
    if failed {
        // Before anyone hears of the failure, so no lane starts a task after it.
        run.stop();
    }
    register(run, task, &r, item_values);
    if matches!(r.status, TaskStatus::Changed | TaskStatus::WouldChange) {
        run.notified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(task.notify.iter().map(|n| n.get_ref().clone()));
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
        Step::Failed
    } else {
        Step::Done
    }
}
