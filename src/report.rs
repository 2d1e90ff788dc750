//! What a run tells the operator: the results (a comfy-table per host and a recap, or
//! one JSON document) and the `--events` JSON-lines stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, Table};
use serde::Serialize;
use serde_json::json;

use crate::journal::{now_rfc3339, JournalData};
use crate::secrets::Secrets;

/// The outcome of one task on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Ok,
    Changed,
    WouldChange,
    Skipped,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Changed => "changed",
            TaskStatus::WouldChange => "would_change",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    pub host: String,
    pub task: String,
    pub status: TaskStatus,
    /// What changed (or would), one line each, with the commands an operator would type.
    pub changes: Vec<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Things the operator must know (not part of the JSON document).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostSummary {
    pub ok: u32,
    pub changed: u32,
    pub skipped: u32,
    pub failed: u32,
    pub unreachable: bool,
    /// Why the host was unreachable (not part of the JSON document).
    #[serde(skip)]
    pub unreachable_reason: Option<String>,
}

/// The whole run: exactly the `--format json` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlayReport {
    pub playbook: String,
    pub check_mode: bool,
    pub hosts: BTreeMap<String, HostSummary>,
    pub tasks: Vec<TaskResult>,
    /// The journal could not be written at the end of the run (the run then fails: the
    /// next run would not know what this one did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
}

impl PlayReport {
    /// Count a task into its host's summary (would_change counts as changed).
    pub fn add(&mut self, result: TaskResult) {
        let s = self.hosts.entry(result.host.clone()).or_default();
        match result.status {
            TaskStatus::Ok => s.ok += 1,
            TaskStatus::Changed | TaskStatus::WouldChange => s.changed += 1,
            TaskStatus::Skipped => s.skipped += 1,
            TaskStatus::Failed => s.failed += 1,
        }
        self.tasks.push(result);
    }

    /// True when nothing failed and every host was reached.
    pub fn success(&self) -> bool {
        self.journal_error.is_none() && self.hosts.values().all(|h| h.failed == 0 && !h.unreachable)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Tables per host, then the recap.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for (host, summary) in &self.hosts {
            out.push_str(&format!("HOST {host}\n"));
            if let Some(reason) = &summary.unreachable_reason {
                out.push_str(&format!("  UNREACHABLE: {reason}\n"));
            }
            let tasks: Vec<_> = self.tasks.iter().filter(|t| &t.host == host).collect();
            if tasks.is_empty() {
                out.push('\n');
                continue;
            }
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            table.set_header(vec!["task", "status", "what changed", "duration"]);
            for t in tasks {
                let status = match t.status {
                    TaskStatus::Ok => Cell::new("ok").fg(Color::Green),
                    TaskStatus::Changed => Cell::new("changed").fg(Color::Yellow),
                    TaskStatus::WouldChange => Cell::new("would change").fg(Color::Yellow),
                    TaskStatus::Skipped => Cell::new("skipped").fg(Color::Cyan),
                    TaskStatus::Failed => Cell::new("failed").fg(Color::Red),
                };
                let mut what = t.changes.join("\n");
                for w in &t.warnings {
                    what.push_str(&format!("\nWARNING: {w}"));
                }
                if let Some(e) = &t.error {
                    if !what.is_empty() {
                        what.push('\n');
                    }
                    what.push_str(&format!("error: {e}"));
                }
                table.add_row(vec![
                    Cell::new(&t.task),
                    status,
                    Cell::new(what),
                    Cell::new(format!("{:.1}s", t.duration_ms as f64 / 1000.0)),
                ]);
            }
            out.push_str(&table.to_string());
            out.push_str("\n\n");
        }
        out.push_str(&self.recap());
        out
    }

    /// Ansible-style `PLAY RECAP`, one line per host.
    pub fn recap(&self) -> String {
        let title = if self.check_mode {
            "PLAY RECAP (check mode: nothing was changed)"
        } else {
            "PLAY RECAP"
        };
        let mut out = format!("{title}\n");
        let width = self.hosts.keys().map(String::len).max().unwrap_or(0);
        for (host, s) in &self.hosts {
            out.push_str(&format!(
                "{host:<width$} : ok={:<4} changed={:<4} unreachable={:<2} failed={:<4} skipped={}\n",
                s.ok,
                s.changed,
                u8::from(s.unreachable),
                s.failed,
                s.skipped
            ));
        }
        if let Some(e) = &self.journal_error {
            out.push_str(&format!("JOURNAL NOT WRITTEN: {e}\n"));
        }
        out
    }
}

/// `ferry status`: what the journal says, per host and task.
pub fn journal_table(data: &JournalData) -> String {
    let mut out = format!("journal of {}\n", data.playbook);
    for (host, tasks) in &data.hosts {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec!["task", "status", "finished", "artifacts", "error"]);
        for (task, rec) in tasks {
            let artifacts = rec
                .artifacts
                .values()
                .map(|a| {
                    format!(
                        "{} {} ({} bytes, sha256 {})",
                        a.name, a.path, a.size, a.sha256
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            table.add_row(vec![
                task.clone(),
                serde_json::to_value(&rec.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                rec.finished.clone().unwrap_or_else(|| "-".into()),
                artifacts,
                rec.error.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&format!("HOST {host}\n{table}\n"));
    }
    out
}

/// The `--events` stream: one JSON object per line, flushed as it happens, so a harness
/// can act on "task k started" while ferry runs. Every line is masked.
#[derive(Clone, Default)]
pub struct EventSink {
    file: Option<Arc<Mutex<File>>>,
    secrets: Secrets,
    /// Progress bars on the terminal (stderr), one per host and artifact.
    bars: Option<Arc<ProgressBars>>,
}

/// indicatif bars for long transfers: bytes, rate and ETA per artifact.
#[derive(Default)]
pub struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<(String, String), indicatif::ProgressBar>>,
}

impl ProgressBars {
    fn tick(&self, host: &str, what: &str, bytes: u64, total: Option<u64>) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let bar = bars
            .entry((host.to_string(), what.to_string()))
            .or_insert_with(|| {
                let bar = self
                    .multi
                    .add(indicatif::ProgressBar::new(total.unwrap_or(0)));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:.bold} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_prefix(format!("[{host}] {what}"));
                bar
            });
        bar.set_position(bytes);
        if total.is_some_and(|t| bytes >= t) {
            bar.finish_and_clear();
        }
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventSink({})", self.file.is_some())
    }
}

impl EventSink {
    /// A sink that drops everything.
    pub fn none() -> Self {
        EventSink::default()
    }

    /// Also draw progress bars on stderr, when it is a terminal (never in pipes, CI
    /// logs, or with `--format json`: the caller decides).
    pub fn with_progress_bars(mut self) -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            self.bars = Some(Arc::new(ProgressBars::default()));
        }
        self
    }

    /// A sink appending to `path` (created or truncated).
    pub fn to_file(path: &Path, secrets: Secrets) -> std::io::Result<Self> {
        Ok(EventSink {
            file: Some(Arc::new(Mutex::new(File::create(path)?))),
            secrets,
            bars: None,
        })
    }

    fn emit(&self, mut value: serde_json::Value) {
        let Some(file) = &self.file else { return };
        if let Some(obj) = value.as_object_mut() {
            obj.insert("ts".into(), json!(now_rfc3339()));
        }
        let mut line = self.secrets.mask(&value.to_string());
        line.push('\n');
        if let Ok(mut f) = file.lock() {
            // One write per line; events are best-effort and never fail a run.
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!("cannot write event: {e}");
            }
        }
    }

    pub fn task_start(&self, host: &str, task: &str) {
        self.emit(json!({"event": "task_start", "host": host, "task": task, "status": "running"}));
    }

    pub fn task_end(&self, result: &TaskResult) {
        self.emit(json!({
            "event": "task_end", "host": result.host, "task": result.task,
            "status": result.status.as_str(), "changes": result.changes,
            "duration_ms": result.duration_ms, "error": result.error,
        }));
    }

    /// A transfer progress tick.
    pub fn progress(&self, host: &str, task: &str, what: &str, bytes: u64, total: Option<u64>) {
        if let Some(bars) = &self.bars {
            bars.tick(host, what, bytes, total);
        }
        self.emit(json!({
            "event": "progress", "host": host, "task": task, "status": "running",
            "what": what, "bytes": bytes, "total": total,
        }));
    }

    pub fn host_unreachable(&self, host: &str, error: &str) {
        self.emit(json!({"event": "host_unreachable", "host": host, "status": "unreachable", "error": error}));
    }
}
