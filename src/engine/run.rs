//! [`run`]: a prepared play, every host in parallel. The state a run shares
//! (connections made once per host, task completion for `after`, the report) and the
//! wait for cross-host dependencies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{Notify, OnceCell, Semaphore};

use super::lane::run_host;
use super::{Prepared, RunEnv};
use crate::inventory::Inventory;
use crate::module::{Peers, Predicted};
use crate::report::{HostSummary, PlayReport, TaskResult};
use crate::secrets::Secrets;
use crate::transport::{Connector, Transport, TransportError};

/// A host's connection, or why it could not be made; filled once.
pub(super) type ConnectionCell = Arc<OnceCell<Result<Arc<dyn Transport>, String>>>;

/// Connections, made once per host and shared by its tasks and by other hosts' tasks.
pub(super) struct Connections {
    pub(super) inventory: Arc<Inventory>,
    pub(super) connector: Arc<dyn Connector>,
    pub(super) secrets: Secrets,
    pub(super) cells: Mutex<HashMap<String, ConnectionCell>>,
}

impl Connections {
    pub(super) async fn get(&self, host: &str) -> Result<Arc<dyn Transport>, String> {
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
pub(super) enum Outcome {
    Succeeded,
    Failed,
    /// Never ran: its host failed earlier or was unreachable.
    NotRun,
}

#[derive(Default)]
pub(super) struct Completion {
    pub(super) done: Mutex<HashMap<(usize, String), Outcome>>,
    pub(super) changed: Notify,
}

impl Completion {
    pub(super) fn set(&self, task: usize, host: &str, outcome: Outcome) {
        if let Ok(mut d) = self.done.lock() {
            d.insert((task, host.to_string()), outcome);
        }
        self.changed.notify_waiters();
    }
    pub(super) fn get(&self, task: usize, host: &str) -> Option<Outcome> {
        self.done
            .lock()
            .ok()
            .and_then(|d| d.get(&(task, host.to_string())).copied())
    }
}

pub(super) struct Shared {
    pub(super) prepared: Prepared,
    pub(super) env: RunEnv,
    pub(super) connections: Arc<Connections>,
    pub(super) completion: Completion,
    /// One permit per host that is running a task (in any number of its lanes).
    pub(super) forks: Arc<Semaphore>,
    pub(super) report: Mutex<PlayReport>,
    /// Check mode: what the changes planned so far would have left behind (see
    /// `crate::module::predict`). Stays empty in a real run.
    pub(super) predicted: Mutex<Predicted>,
    /// When the run started: task times in the report are offsets from it.
    pub(super) started: Instant,
}

/// Run a prepared play. Never fails as a whole: failures are in the report.
pub async fn run(prepared: Prepared, env: RunEnv) -> PlayReport {
    let forks = prepared
        .options
        .forks
        .unwrap_or(prepared.hosts.len())
        .max(1);
    let report = PlayReport {
        ferry: crate::VERSION.to_string(),
        playbook: prepared.playbook.name.clone(),
        check_mode: prepared.options.check,
        hosts: prepared
            .hosts
            .keys()
            .map(|h| (h.clone(), HostSummary::default()))
            .collect(),
        tasks: Vec::new(),
        started_at: crate::journal::now_rfc3339(),
        ..PlayReport::default()
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
        started: Instant::now(),
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
    if shared.env.interrupt.is_cancelled() {
        if let Ok(mut r) = shared.report.lock() {
            r.interrupted = true;
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
    report.duration_ms = shared.started.elapsed().as_millis() as u64;
    if let Some(downtime) = &shared.prepared.playbook.downtime {
        report.downtime = downtime.summarize(&report.tasks, report.duration_ms);
    }
    if !report.check_mode && report.success() {
        report.next_steps = shared.prepared.playbook.next_steps.clone();
    }
    report
}

impl Shared {
    pub(super) fn push(&self, mut result: TaskResult) {
        // The task ends now: it began `duration_ms` ago.
        let now = self.started.elapsed().as_millis() as u64;
        result.start_ms = now.saturating_sub(result.duration_ms);
        self.env.events.task_end(&result);
        if let Ok(mut r) = self.report.lock() {
            r.add(result);
        }
    }

    pub(super) fn mark_unreachable(&self, host: &str, reason: &str) {
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
    pub(super) async fn wait_for_dependencies(
        &self,
        index: usize,
        host: &str,
    ) -> Result<Vec<String>, String> {
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
