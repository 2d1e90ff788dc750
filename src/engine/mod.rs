//! The engine: the only place that decides. For every host (in parallel, bounded by
//! `--forks`) and every task (in order within its lane; a host's lanes run at the same
//! time): facts → decision → apply, where apply is never called in check mode. Cross-host dependencies (`after`), `--limit/--tags/--skip-tags/
//! --start-at`, the journal, events and the report are handled here.
//!
//! Two steps, so nothing is contacted before all input is known to be good:
//! [`prepare`] (pure: selects hosts and tasks, renders every template for every host)
//! and [`run`] (connects once per host, runs).

pub mod connect;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Notify, OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::command::Cmd;
use crate::inventory::{Inventory, UnknownTarget};
use crate::journal::{Journal, JournalData, JournalOwner, RecordStatus, TaskDefinition};
use crate::module::{
    ArgCheck, ArgError, Confirm, HostReader, JournalView, ModuleError, Peers, Predicted, TaskCtx,
};
use crate::playbook::source::InputError;
use crate::playbook::template::{
    collect_templates, without_template_spans, AnyTemplate, Renderer, TemplateError, Vars,
};
use crate::playbook::{Playbook, UnknownTask};
use crate::report::{EventSink, HostSummary, PlayReport, TaskResult, TaskStatus};
use crate::secrets::Secrets;
use crate::transport::read_only::Guarded;
use crate::transport::{Connector, Transport, TransportError};

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
}

/// Bad input found before anything was contacted (exit code 2).
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
}

/// What a task does, as the journal identifies it: its module and a digest of the
/// module, its arguments (not where they are written), `hosts` and `when`. Name, tags,
/// `after` and `lane` are left out: they do not change what the task does on a host.
pub fn task_definition(task: &crate::playbook::Task) -> TaskDefinition {
    use sha2::Digest;
    let args = without_template_spans(&serde_json::to_value(&task.module).unwrap_or(Value::Null));
    let what = serde_json::json!({
        "module": task.module.name(),
        "args": args,
        "hosts": task.hosts.get_ref(),
        "when": task.when.as_ref().map(|w| w.source().to_string()),
    });
    TaskDefinition {
        module: task.module.name().to_string(),
        digest: hex::encode(sha2::Sha256::digest(what.to_string().as_bytes())),
    }
}

/// The journal identity of a run: the playbook and inventory (canonical paths) and the
/// definition of every task.
pub fn journal_owner(playbook: &Playbook, inventory: &Inventory) -> JournalOwner {
    use sha2::Digest;
    let tasks: BTreeMap<String, TaskDefinition> = playbook
        .tasks
        .iter()
        .map(|t| (t.name.clone(), task_definition(t)))
        .collect();
    let mut all = sha2::Sha256::new();
    for t in &playbook.tasks {
        if let Some(d) = tasks.get(&t.name) {
            all.update(t.name.as_bytes());
            all.update([0]);
            all.update(d.digest.as_bytes());
            all.update([0]);
        }
    }
    JournalOwner {
        playbook_name: playbook.name.clone(),
        paths: Some((
            crate::inventory::canonical_path(&playbook.path),
            crate::inventory::canonical_path(&inventory.path),
        )),
        tasks_digest: hex::encode(all.finalize()),
        tasks,
    }
}

/// `--start-at` skips the tasks before it, trusting the journal that they are done. It
/// refuses to skip a task whose record on a host of this run was made by another
/// definition of the task (the playbook was edited since): that record says nothing
/// about what the task does now. Tasks never recorded are skipped as asked.
pub fn check_start_at(prepared: &Prepared, journal: &Journal) -> Result<(), PrepareError> {
    let Some(start) = prepared.options.start_at.as_deref() else {
        return Ok(());
    };
    let pb = &prepared.playbook;
    let Some(start_index) = pb.tasks.iter().position(|t| t.name == start) else {
        return Ok(());
    };
    let data: JournalData = journal.snapshot();
    // The hosts of the run as `--limit` chose them (prepare() checked the pattern).
    let limit = prepared
        .options
        .limit
        .as_deref()
        .map(|l| prepared.inventory.select(l).unwrap_or_default());
    let mut edited = Vec::new();
    for task in &pb.tasks[..start_index] {
        let targets = prepared
            .inventory
            .select(task.hosts.get_ref())
            .unwrap_or_default();
        for host in targets {
            if limit.as_ref().is_some_and(|l| !l.contains(&host)) {
                continue;
            }
            let Some(record) = data.hosts.get(&host).and_then(|t| t.get(&task.name)) else {
                continue;
            };
            if !journal.is_current(&task.name, record) {
                edited.push(format!(
                    "task `{}` is skipped but has been edited since its journal record on `{host}` was made ({}); its record no longer says the task is done: run from `{}` or earlier",
                    task.name,
                    pb.source.locate(task.span.start),
                    task.name
                ));
            }
        }
    }
    if edited.is_empty() {
        Ok(())
    } else {
        Err(PrepareError::StartAtEdited(edited))
    }
}

/// One task scheduled on one host.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// Index into `Playbook::tasks`.
    pub task: usize,
    /// Its `when` was false for this host.
    pub skip: bool,
}

/// The validated plan of a run: which tasks run where, with every template rendered
/// once for every host it targets.
#[derive(Debug)]
pub struct Prepared {
    pub playbook: Arc<Playbook>,
    pub inventory: Arc<Inventory>,
    pub options: RunOptions,
    /// Hosts of the run, each with its scheduled tasks in order.
    pub hosts: BTreeMap<String, Vec<Scheduled>>,
    pub vars: BTreeMap<String, Arc<Vars>>,
    pub renderer: Arc<Renderer>,
}

/// The template variables of `host`: playbook vars < inventory vars, plus
/// `inventory_hostname`, `group_names` and `hostvars`.
pub fn host_vars(
    playbook: &Playbook,
    inventory: &Inventory,
    host: &str,
    secrets: &Secrets,
) -> Vars {
    let mut vars = playbook.vars.clone();
    let mut secret_vars = std::collections::BTreeSet::new();
    if let Some(h) = inventory.hosts.get(host) {
        vars.extend(h.vars.clone());
        // A secret var may take its value from the playbook's `[vars]`: register it.
        for name in &h.secret_vars {
            if let Some(value) = vars.get(name) {
                secrets.add_value(value);
            }
        }
        secret_vars.clone_from(&h.secret_vars);
        vars.insert(
            "group_names".into(),
            Value::Array(h.groups.iter().cloned().map(Value::String).collect()),
        );
    }
    // `hostvars` and `groups` are shared by every host, not copied into each.
    Vars::with_shared(vars, &secret_vars, secrets, inventory.shared_vars(secrets))
}

/// Select hosts and tasks and render every template for every targeted host.
pub fn prepare(
    playbook: Arc<Playbook>,
    inventory: Arc<Inventory>,
    options: RunOptions,
    secrets: &Secrets,
) -> Result<Prepared, PrepareError> {
    playbook.validate(&inventory)?;
    let limit = match &options.limit {
        Some(pattern) => Some(inventory.select(pattern).map_err(PrepareError::Limit)?),
        None => None,
    };
    let tasks = playbook.select_tasks(
        &options.tags,
        &options.skip_tags,
        options.start_at.as_deref(),
    )?;
    let renderer = Arc::new(Renderer::new(Some(playbook.source.clone())));
    let mut hosts: BTreeMap<String, Vec<Scheduled>> = BTreeMap::new();
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    let mut arg_errors: Vec<InputError> = Vec::new();
    for task in tasks {
        let index = playbook
            .tasks
            .iter()
            .position(|t| std::ptr::eq(t, task))
            .unwrap_or_default();
        // validate() made sure every pattern resolves.
        let targets = inventory.select(task.hosts.get_ref()).unwrap_or_default();
        let templates =
            collect_templates(&serde_json::to_value(&task.module).unwrap_or(Value::Null));
        for host in targets {
            if limit.as_ref().is_some_and(|l| !l.contains(&host)) {
                continue;
            }
            let host_vars = vars
                .entry(host.clone())
                .or_insert_with(|| Arc::new(host_vars(&playbook, &inventory, &host, secrets)))
                .clone();
            let skip = match &task.when {
                Some(when) => match renderer.truthy(when, &host_vars) {
                    Ok(holds) => !holds,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
                None => false,
            };
            if !skip {
                let mut rendered = true;
                for t in &templates {
                    if let Err(e) = check_template(&playbook, task, &renderer, t, &host_vars) {
                        rendered = false;
                        errors.push(TemplateError {
                            message: format!("{} (host `{host}`)", e.message),
                            ..e
                        });
                    }
                }
                // The module's own checks, on templates known to render.
                let at = ArgCheck {
                    host: &host,
                    vars: &host_vars,
                    renderer: &renderer,
                };
                let checked = if rendered {
                    task.module.module().check_args(&at)
                } else {
                    Ok(())
                };
                if let Err(e) = checked {
                    let e = locate_arg_error(&playbook, task, e);
                    if !arg_errors.iter().any(|o| o.to_string() == e.to_string()) {
                        arg_errors.push(e);
                    }
                }
            }
            hosts
                .entry(host)
                .or_default()
                .push(Scheduled { task: index, skip });
        }
    }
    if !errors.is_empty() {
        return Err(PrepareError::Templates(errors));
    }
    if !arg_errors.is_empty() {
        return Err(PrepareError::Args(arg_errors));
    }
    Ok(Prepared {
        playbook,
        inventory,
        options,
        hosts,
        vars,
        renderer,
    })
}

/// Render one template of `task` for one host the way the module will: plain templates
/// are names or paths a command receives (operands: a leading `-` is refused) unless
/// the module lists their field as text.
fn check_template(
    playbook: &Playbook,
    task: &crate::playbook::Task,
    renderer: &Renderer,
    template: &AnyTemplate,
    vars: &Vars,
) -> Result<(), TemplateError> {
    match template {
        AnyTemplate::Plain(t) => {
            let field = t.span().and_then(|span| playbook.source.key_near(span));
            let text = field
                .as_deref()
                .is_some_and(|f| task.module.text_fields().contains(&f));
            if text {
                renderer.render(t, vars).map(drop)
            } else {
                renderer.render_operand(t, vars).map(drop)
            }
        }
        shell => renderer.check(shell, vars),
    }
}

/// Where in the playbook an argument error is: at its template, at its key in the
/// task, or at the task.
fn locate_arg_error(playbook: &Playbook, task: &crate::playbook::Task, e: ArgError) -> InputError {
    let source = &playbook.source;
    if let Some(span) = e.template.as_ref().and_then(|t| t.span()) {
        return source.error_at(
            Some(span),
            None,
            format!("task `{}`: {}", task.name, e.message),
        );
    }
    let key_at = e.field.and_then(|key| {
        // The task's span ends with its own keys; its module table follows, up to the
        // next task.
        let text = source.text.get(task.span.start..)?;
        let mut offset = 0;
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if n > 0 && trimmed.starts_with("[[") {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(task.span.start + offset + (line.len() - trimmed.len()));
                }
            }
            offset += line.len();
        }
        None
    });
    let at = key_at.unwrap_or(task.span.start);
    source.error_at(
        Some(at..at),
        e.field.map(str::to_string),
        format!("task `{}`: {}", task.name, e.message),
    )
}

/// What a run needs besides the plan.
#[derive(Clone)]
pub struct RunEnv {
    pub connector: Arc<dyn Connector>,
    pub journal: Arc<Journal>,
    pub events: EventSink,
    pub secrets: Secrets,
    pub confirmer: Arc<dyn Confirm>,
}

/// A host's connection, or why it could not be made; filled once.
type ConnectionCell = Arc<OnceCell<Result<Arc<dyn Transport>, String>>>;

/// Connections, made once per host and shared by its tasks and by other hosts' tasks.
struct Connections {
    inventory: Arc<Inventory>,
    connector: Arc<dyn Connector>,
    secrets: Secrets,
    cells: Mutex<HashMap<String, ConnectionCell>>,
}

impl Connections {
    async fn get(&self, host: &str) -> Result<Arc<dyn Transport>, String> {
        let cell = match self.cells.lock() {
            Ok(mut cells) => cells.entry(host.to_string()).or_default().clone(),
            Err(_) => return Err("connection table poisoned".into()),
        };
        cell.get_or_init(|| async {
            let Some(h) = self.inventory.hosts.get(host) else {
                return Err(format!("no host `{host}` in the inventory"));
            };
            tracing::info!(host, address = %h.connect.address, "connecting");
            self.connector
                .connect(&h.connect, &self.secrets)
                .await
                .map_err(|e| self.secrets.mask(&e.to_string()))
        })
        .await
        .clone()
    }
}

#[async_trait]
impl Peers for Connections {
    async fn transport(&self, host: &str) -> Result<Arc<dyn Transport>, TransportError> {
        self.get(host)
            .await
            .map_err(|reason| TransportError::Unreachable {
                addr: host.to_string(),
                reason,
            })
    }
}

/// How a scheduled task ended, for dependants waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    /// Never ran: its host failed earlier or was unreachable.
    NotRun,
}

#[derive(Default)]
struct Completion {
    done: Mutex<HashMap<(usize, String), Outcome>>,
    changed: Notify,
}

impl Completion {
    fn set(&self, task: usize, host: &str, outcome: Outcome) {
        if let Ok(mut d) = self.done.lock() {
            d.insert((task, host.to_string()), outcome);
        }
        self.changed.notify_waiters();
    }
    fn get(&self, task: usize, host: &str) -> Option<Outcome> {
        self.done
            .lock()
            .ok()
            .and_then(|d| d.get(&(task, host.to_string())).copied())
    }
}

struct Shared {
    prepared: Prepared,
    env: RunEnv,
    connections: Arc<Connections>,
    completion: Completion,
    /// One permit per host that is running a task (in any number of its lanes).
    forks: Arc<Semaphore>,
    report: Mutex<PlayReport>,
    /// Check mode: what the changes planned so far would have left behind (see
    /// `crate::module::predict`). Stays empty in a real run.
    predicted: Mutex<Predicted>,
}

/// Run a prepared play. Never fails as a whole: failures are in the report.
pub async fn run(prepared: Prepared, env: RunEnv) -> PlayReport {
    let forks = prepared
        .options
        .forks
        .unwrap_or(prepared.hosts.len())
        .max(1);
    let report = PlayReport {
        playbook: prepared.playbook.name.clone(),
        check_mode: prepared.options.check,
        hosts: prepared
            .hosts
            .keys()
            .map(|h| (h.clone(), HostSummary::default()))
            .collect(),
        tasks: Vec::new(),
        journal_error: None,
    };
    let shared = Arc::new(Shared {
        connections: Arc::new(Connections {
            inventory: prepared.inventory.clone(),
            connector: env.connector.clone(),
            secrets: env.secrets.clone(),
            cells: Mutex::new(HashMap::new()),
        }),
        prepared,
        env,
        completion: Completion::default(),
        forks: Arc::new(Semaphore::new(forks)),
        report: Mutex::new(report),
        predicted: Mutex::new(Predicted::default()),
    });
    let mut handles = Vec::new();
    for host in shared.prepared.hosts.keys() {
        let (shared, host) = (shared.clone(), host.clone());
        handles.push(tokio::spawn(async move { run_host(shared, host).await }));
    }
    for h in handles {
        if let Err(e) = h.await {
            tracing::error!("host worker panicked: {e}");
        }
    }
    // No-op results are kept in memory until here (see `journal`).
    if let Err(e) = shared.env.journal.flush() {
        tracing::error!("cannot write the journal: {e}");
        if let Ok(mut r) = shared.report.lock() {
            r.journal_error = Some(e.to_string());
        }
    }
    let mut report = shared
        .report
        .lock()
        .map(|r| r.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let order: HashMap<&str, usize> = shared
        .prepared
        .playbook
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    report
        .tasks
        .sort_by_key(|t| (t.host.clone(), order.get(t.task.as_str()).copied()));
    report
}

impl Shared {
    fn push(&self, result: TaskResult) {
        self.env.events.task_end(&result);
        if let Ok(mut r) = self.report.lock() {
            r.add(result);
        }
    }

    fn mark_unreachable(&self, host: &str, reason: &str) {
        // Always on stderr too: with `--format json` the JSON document has no room for
        // the reason, and the operator must see it.
        tracing::error!(host, "unreachable: {reason}");
        self.env.events.host_unreachable(host, reason);
        if let Ok(mut r) = self.report.lock() {
            let s = r.hosts.entry(host.to_string()).or_default();
            s.unreachable = true;
            s.unreachable_reason = Some(reason.to_string());
        }
    }

    /// Wait until every dependency of task `index` is done; `Err` names the one that is not.
    async fn wait_for_dependencies(&self, index: usize, host: &str) -> Result<Vec<String>, String> {
        let pb = &self.prepared.playbook;
        let mut warnings = Vec::new();
        for dep in &pb.tasks[index].after {
            let Some(dep_index) = pb.tasks.iter().position(|t| &t.name == dep.get_ref()) else {
                return Err(format!("unknown dependency `{}`", dep.get_ref()));
            };
            let dep_hosts = self
                .prepared
                .inventory
                .select(pb.tasks[dep_index].hosts.get_ref())
                .unwrap_or_default();
            for dep_host in dep_hosts {
                let scheduled = self
                    .prepared
                    .hosts
                    .get(&dep_host)
                    .is_some_and(|s| s.iter().any(|s| s.task == dep_index));
                if !scheduled {
                    // Not part of this run: the journal must say it was done.
                    // Not done as far as the task now goes if an earlier definition
                    // of it made the record.
                    let record = self.env.journal.record(&dep_host, dep.get_ref());
                    let done = record.as_ref().is_some_and(|r| r.succeeded());
                    let current = record
                        .as_ref()
                        .is_none_or(|r| self.env.journal.is_current(dep.get_ref(), r));
                    if !done || !current {
                        let msg = if done {
                            format!(
                                "dependency `{}` has completed on `{dep_host}` only as it was before the playbook was edited (not in this run); run it again",
                                dep.get_ref()
                            )
                        } else {
                            format!(
                                "dependency `{}` has not completed on `{dep_host}` (not in this run, not in the journal)",
                                dep.get_ref()
                            )
                        };
                        if self.prepared.options.check {
                            warnings.push(msg);
                            continue;
                        }
                        return Err(msg);
                    }
                    continue;
                }
                loop {
                    let notified = self.completion.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    match self.completion.get(dep_index, &dep_host) {
                        Some(Outcome::Succeeded) => break,
                        Some(_) => {
                            return Err(format!(
                                "dependency `{}` failed on `{dep_host}`",
                                dep.get_ref()
                            ))
                        }
                        None => {
                            tracing::debug!(host, dep = dep.get_ref(), on = dep_host, "waiting");
                            notified.await;
                        }
                    }
                }
            }
        }
        let _ = host;
        Ok(warnings)
    }
}

fn result(host: &str, task: &str, status: TaskStatus, started: Instant) -> TaskResult {
    TaskResult {
        host: host.to_string(),
        task: task.to_string(),
        status,
        changes: Vec::new(),
        duration_ms: started.elapsed().as_millis() as u64,
        error: None,
        notes: Vec::new(),
        warnings: Vec::new(),
    }
}

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
async fn run_host(shared: Arc<Shared>, host: String) {
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
    let mut position = 0;
    while position < schedule.len() {
        if run.stopped() {
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
        let waited = shared.wait_for_dependencies(scheduled.task, host).await;
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
        let Some(_slot) = run.slot.enter(&shared.forks).await else {
            position -= 1;
            break;
        };
        if run.stopped() {
            // Stopped while this lane waited for `--forks`.
            position -= 1;
            break;
        }
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
        let ctx = TaskCtx {
            reader: HostReader {
                host: host.to_string(),
                task: task.name.clone(),
                transport: Guarded::wrap(transport),
                peers: shared.connections.clone(),
                journal: JournalView::new(shared.env.journal.clone()),
                secrets: secrets.clone(),
                vars: shared.prepared.vars.get(host).cloned().unwrap_or_else(|| {
                    Arc::new(host_vars(pb, &shared.prepared.inventory, host, secrets))
                }),
                renderer: shared.prepared.renderer.clone(),
                overwrite: shared.prepared.options.overwrite.clone(),
                cache: run.cache.clone(),
            },
            yes: shared.prepared.options.yes,
            journal: shared.env.journal.clone(),
            events: shared.env.events.clone(),
            confirmer: shared.env.confirmer.clone(),
        };
        let mut r = run_task(
            &ctx,
            &task.module,
            started,
            shared.prepared.options.check,
            &shared.predicted,
        )
        .await;
        r.warnings.extend(warnings);
        let record = match r.status {
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

/// facts → decide → (not in check mode) apply. The one place check mode is enforced,
/// and the one place that folds what unapplied changes predict for later tasks.
async fn run_task(
    ctx: &TaskCtx,
    module: &crate::registry::ModuleArgs,
    started: Instant,
    check: bool,
    predicted: &Mutex<Predicted>,
) -> TaskResult {
    let mut r = result(&ctx.host, &ctx.task, TaskStatus::Ok, started);
    ctx.events.task_start(&ctx.host, &ctx.task);
    if let Err(e) = ctx.journal.task_started(&ctx.host, &ctx.task) {
        r.status = TaskStatus::Failed;
        r.error = Some(format!("cannot write the journal: {e}"));
        return r;
    }
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
                m.apply_plan(ctx, plan).await.map(|applied| {
                    r.warnings = applied.warnings;
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
fn masked_error(e: &ModuleError, secrets: &Secrets) -> String {
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

/// `ferry ping`: connect to each host and run `true`.
pub async fn ping(
    inventory: Arc<Inventory>,
    hosts: Vec<String>,
    connector: Arc<dyn Connector>,
    secrets: Secrets,
    events: EventSink,
) -> PlayReport {
    let mut report = PlayReport {
        playbook: "ping".into(),
        check_mode: false,
        hosts: BTreeMap::new(),
        tasks: Vec::new(),
        journal_error: None,
    };
    let mut handles = Vec::new();
    for host in hosts {
        let (inventory, connector, secrets) =
            (inventory.clone(), connector.clone(), secrets.clone());
        handles.push(tokio::spawn(async move {
            let started = Instant::now();
            let Some(h) = inventory.hosts.get(&host) else {
                return (host, Err("not in the inventory".to_string()), started);
            };
            let outcome = match connector.connect(&h.connect, &secrets).await {
                Err(e) => Err(secrets.mask(&e.to_string())),
                Ok(t) => Ok(t.exec(&Cmd::new("true"), None).await),
            };
            match outcome {
                Err(e) => (host, Err(e), started),
                Ok(exec) => (
                    host,
                    Ok(exec.map_err(|e| secrets.mask(&e.to_string()))),
                    started,
                ),
            }
        }));
    }
    for handle in handles {
        let Ok((host, outcome, started)) = handle.await else {
            continue;
        };
        report.hosts.entry(host.clone()).or_default();
        match outcome {
            Err(reason) => {
                events.host_unreachable(&host, &reason);
                let s = report.hosts.entry(host.clone()).or_default();
                s.unreachable = true;
                s.unreachable_reason = Some(reason);
            }
            Ok(exec) => {
                let mut r = result(&host, "ping", TaskStatus::Ok, started);
                match exec {
                    Ok(out) if out.success() => {}
                    Ok(out) => {
                        r.status = TaskStatus::Failed;
                        r.error = Some(format!(
                            "`true` exited {:?}: {}",
                            out.status,
                            secrets.mask(out.stderr_str().trim())
                        ));
                    }
                    Err(e) => {
                        r.status = TaskStatus::Failed;
                        r.error = Some(e);
                    }
                }
                events.task_end(&r);
                report.add(r);
            }
        }
    }
    report
}
