//! What a run tells the operator: the results (a comfy-table per host and a recap, or
//! one JSON document) and the `--events` JSON-lines stream.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use serde::Serialize;
use serde_json::json;

use crate::journal::{now_rfc3339, JournalData};
use crate::secrets::Secrets;

/// `text` safe to print on a terminal: control characters (C0 but `\n`, DEL, C1) and
/// the Unicode bidirectional overrides are shown escaped (`\x1b`, `\r`, `\t`,
/// `\u{202e}`) instead of acting on the terminal. Text from hosts, vars and task names
/// goes through it before it reaches the table or `ferry status`; JSON output needs
/// nothing (serde escapes control characters).
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('\n'),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{80}'..='\u{9f}'
            | '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

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
    /// Why an `ok` task left things alone when that is worth knowing (the migration
    /// completed on the target, so a store is not touched), masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Things the operator must know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostSummary {
    pub ok: u32,
    pub changed: u32,
    pub skipped: u32,
    pub failed: u32,
    pub unreachable: bool,
    /// Why the host was unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable_reason: Option<String>,
}

/// The whole run: exactly the `--format json` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlayReport {
    /// The ferry that wrote it: version and commit ([`crate::VERSION`]).
    pub ferry: String,
    pub playbook: String,
    pub check_mode: bool,
    pub hosts: BTreeMap<String, HostSummary>,
    pub tasks: Vec<TaskResult>,
    /// The journal could not be written at the end of the run (the run then fails: the
    /// next run would not know what this one did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
    /// The run was interrupted (SIGINT/SIGTERM): the report is what ran until then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
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
        !self.interrupted
            && self.journal_error.is_none()
            && self.hosts.values().all(|h| h.failed == 0 && !h.unreachable)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Tables per host, then the recap.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for (host, summary) in &self.hosts {
            out.push_str(&format!("HOST {}\n", visible(host)));
            if let Some(reason) = &summary.unreachable_reason {
                out.push_str(&format!("  UNREACHABLE: {}\n", visible(reason)));
            }
            let tasks: Vec<_> = self.tasks.iter().filter(|t| &t.host == host).collect();
            if tasks.is_empty() {
                out.push('\n');
                continue;
            }
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            // On a terminal the table fits its width, long commands folded (the JSON
            // report has them whole); piped, nothing is folded.
            table.set_content_arrangement(ContentArrangement::Dynamic);
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
                for n in &t.notes {
                    if !what.is_empty() {
                        what.push('\n');
                    }
                    what.push_str(&format!("note: {n}"));
                }
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
                    Cell::new(visible(&t.task)),
                    status,
                    Cell::new(visible(&what)),
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
        let hosts: Vec<(String, &HostSummary)> =
            self.hosts.iter().map(|(h, s)| (visible(h), s)).collect();
        let width = hosts.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
        for (host, s) in hosts {
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
            out.push_str(&format!("JOURNAL NOT WRITTEN: {}\n", visible(e)));
        }
        if self.interrupted {
            out.push_str(
                "INTERRUPTED: the tasks above ran; the others did not start. Run the same \
                 command again to finish.\n",
            );
        }
        out
    }
}

/// `ferry status`: what the journal says, per host and task.
pub fn journal_table(data: &JournalData) -> String {
    let mut out = format!("journal of {}\n", visible(&data.playbook));
    for (host, tasks) in &data.hosts {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_content_arrangement(ContentArrangement::Dynamic);
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
                visible(task),
                serde_json::to_value(&rec.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                visible(rec.finished.as_deref().unwrap_or("-")),
                visible(&artifacts),
                visible(rec.error.as_deref().unwrap_or_default()),
            ]);
        }
        out.push_str(&format!("HOST {}\n{table}\n", visible(host)));
    }
    out
}

/// The `--events` stream: one JSON object per line, flushed as it happens, so a harness
/// can act on "task k started" while ferry runs. Every line is masked.
#[derive(Clone, Default)]
pub struct EventSink {
    file: Option<Arc<Mutex<File>>>,
    secrets: Secrets,
    /// Progress bars on the terminal (stderr), one per host and artifact, and a live
    /// line per running task.
    bars: Option<Arc<ProgressBars>>,
    /// stderr is not a terminal: a plain line per task start and end instead, as
    /// `ansible-playbook`'s `TASK [...]` lines (CI logs, `tee`).
    lines: bool,
}

/// indicatif bars for long transfers: bytes, rate and ETA per artifact.
#[derive(Default)]
pub struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<(String, String), indicatif::ProgressBar>>,
    /// The running tasks' lines: host, task, time so far.
    tasks: Mutex<std::collections::HashMap<(String, String), indicatif::ProgressBar>>,
}

impl ProgressBars {
    fn task_started(&self, host: &str, task: &str) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        let line = self.multi.add(indicatif::ProgressBar::new_spinner());
        let style =
            indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        line.set_style(style);
        line.set_prefix(visible(&format!("[{host}]")));
        line.set_message(visible(task));
        line.enable_steady_tick(std::time::Duration::from_millis(200));
        tasks.insert((host.to_string(), task.to_string()), line);
    }

    /// The task's line goes; its outcome is printed above the live lines.
    fn task_ended(&self, host: &str, task: &str, outcome: &str) {
        if let Ok(mut tasks) = self.tasks.lock() {
            if let Some(line) = tasks.remove(&(host.to_string(), task.to_string())) {
                line.finish_and_clear();
            }
        }
        let _ = self.multi.println(outcome);
    }

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
                bar.set_prefix(visible(&format!("[{host}] {what}")));
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
        } else {
            self.lines = true;
        }
        self
    }

    /// A sink writing to `path`; see [`create_private`].
    pub fn to_file(path: &Path, secrets: Secrets) -> std::io::Result<Self> {
        Ok(EventSink {
            file: Some(Arc::new(Mutex::new(create_private(path)?))),
            secrets,
            bars: None,
            lines: false,
        })
    }

    /// A sink that writes no file (but may still draw on the terminal), masking with
    /// `secrets`.
    pub fn none_masking(secrets: Secrets) -> Self {
        EventSink {
            secrets,
            ..EventSink::default()
        }
    }

    /// One line: the `data` fields (values from hosts, vars and the playbook) masked
    /// before they are serialized, then ferry's own fields (`event`, `status`, `ts`,
    /// counters), which are never masked: a masked status would tell a short secret.
    fn emit(&self, event: &str, status: &str, data: serde_json::Value, own: serde_json::Value) {
        let Some(file) = &self.file else { return };
        let mut obj = match self.secrets.mask_value(&data) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if let serde_json::Value::Object(own) = own {
            obj.extend(own);
        }
        obj.insert("event".into(), json!(event));
        obj.insert("status".into(), json!(status));
        obj.insert("ts".into(), json!(now_rfc3339()));
        let mut line = serde_json::Value::Object(obj).to_string();
        line.push('\n');
        if let Ok(mut f) = file.lock() {
            // One write per line; events are best-effort and never fail a run.
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!("cannot write event: {e}");
            }
        }
    }

    pub fn task_start(&self, host: &str, task: &str) {
        if let Some(bars) = &self.bars {
            bars.task_started(host, task);
        } else if self.lines {
            eprintln!("TASK [{}] on {}", visible(task), visible(host));
        }
        self.emit(
            "task_start",
            "running",
            json!({"host": host, "task": task}),
            json!({}),
        );
    }

    pub fn task_end(&self, result: &TaskResult) {
        if self.bars.is_some() || self.lines {
            let outcome = self.outcome_line(result);
            match &self.bars {
                Some(bars) => bars.task_ended(&result.host, &result.task, &outcome),
                None => eprintln!("{outcome}"),
            }
        }
        self.emit(
            "task_end",
            result.status.as_str(),
            json!({
                "host": result.host, "task": result.task,
                "changes": result.changes, "error": result.error, "notes": result.notes,
            }),
            json!({"duration_ms": result.duration_ms}),
        );
    }

    /// `changed: [new] Restore PostgreSQL (33.6s)`, with the error of a failed task.
    fn outcome_line(&self, r: &TaskResult) -> String {
        let mut line = format!(
            "{}: [{}] {} ({:.1}s)",
            r.status.as_str(),
            visible(&r.host),
            visible(&r.task),
            r.duration_ms as f64 / 1000.0
        );
        if let Some(e) = &r.error {
            let first = e.lines().next().unwrap_or_default();
            line.push_str(&format!(": {}", visible(&self.secrets.mask(first))));
        }
        line
    }

    /// A transfer progress tick.
    pub fn progress(&self, host: &str, task: &str, what: &str, bytes: u64, total: Option<u64>) {
        if let Some(bars) = &self.bars {
            bars.tick(host, what, bytes, total);
        }
        self.emit(
            "progress",
            "running",
            json!({"host": host, "task": task, "what": what}),
            json!({"bytes": bytes, "total": total}),
        );
    }

    pub fn host_unreachable(&self, host: &str, error: &str) {
        self.emit(
            "host_unreachable",
            "unreachable",
            json!({"host": host, "error": error}),
            json!({}),
        );
    }
}

/// Open `path` for a private report file (`--events`): created mode 0600; never through
/// a symbolic link (the final component is not followed: an error); an existing
/// regular file must be this user's own and not hard-linked elsewhere, and is then
/// truncated and set to 0600. A FIFO or device (`/dev/null`) is written as it is.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                std::io::Error::other(
                    "it is a symbolic link, and ferry does not follow one here \
                     (name the link's target instead)",
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if meta.file_type().is_file() {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the file exists and belongs to another user (uid {}); remove it or \
                     choose another path",
                    meta.uid()
                ),
            ));
        }
        if meta.nlink() > 1 {
            return Err(std::io::Error::other(
                "the file has other hard links; remove it or choose another path",
            ));
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(
            visible("a\x1b[2J\rb\tc\x07\x7f\u{9b}\u{202e}d\ne"),
            "a\\x1b[2J\\rb\\tc\\x07\\x7f\\u{9b}\\u{202e}d\ne"
        );
        assert_eq!(visible("plain text, ünïcode"), "plain text, ünïcode");
    }

    #[test]
    fn the_table_escapes_task_names_and_errors() {
        let mut report = PlayReport {
            ferry: crate::VERSION.into(),
            playbook: "pb".into(),
            check_mode: false,
            hosts: BTreeMap::new(),
            tasks: Vec::new(),
            journal_error: None,
            interrupted: false,
        };
        report.add(TaskResult {
            host: "h\x1b".into(),
            task: "evil\x1b]0;x\x07".into(),
            status: TaskStatus::Failed,
            changes: vec!["c\r".into()],
            duration_ms: 1,
            error: Some("stderr: \x1b[2J".into()),
            notes: vec!["n\x1b".into()],
            warnings: vec!["w\x1b".into()],
        });
        let table = report.to_table();
        assert!(!table.contains(['\x1b', '\r', '\x07']), "{table:?}");
        assert!(table.contains("evil\\x1b]0;x\\x07"), "{table}");
        assert!(table.contains("stderr: \\x1b[2J"), "{table}");
    }

    #[test]
    fn events_file_is_private_and_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new.jsonl");
        drop(create_private(&fresh).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        // An existing file of ours: truncated and made private.
        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, "previous run").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&old).unwrap());
        assert_eq!(std::fs::read(&old).unwrap(), b"");
        let mode = std::fs::metadata(&old).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        // A symlink planted at the name: refused, its target untouched.
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = create_private(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        // A hard link to another file: refused.
        let hard = dir.path().join("hard.jsonl");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(create_private(&hard).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        // Events of a short secret: data masked, ferry's status words not.
        let secrets = Secrets::new();
        secrets.add("ok");
        let path = dir.path().join("events.jsonl");
        let sink = EventSink::to_file(&path, secrets).unwrap();
        sink.task_end(&TaskResult {
            host: "h".into(),
            task: "t".into(),
            status: TaskStatus::Ok,
            changes: vec!["said ok".into()],
            duration_ms: 1,
            error: None,
            notes: Vec::new(),
            warnings: Vec::new(),
        });
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["status"], "ok");
        assert_eq!(line["event"], "task_end");
        assert_eq!(line["changes"][0], "said ********");
    }
}
