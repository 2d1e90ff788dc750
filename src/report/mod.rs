//! What a run tells the operator: the results (a comfy-table per host and a recap, or
//! one JSON document) and the `--events` JSON-lines stream.

use std::collections::BTreeMap;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use serde::Serialize;

use crate::journal::JournalData;

mod downtime;
mod events;
pub mod status;

pub use downtime::{human_ms, Downtime, DowntimeSummary, StageSpan};
pub use events::{create_private, suspend_live, EventSink, ProgressBars};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    #[default]
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

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskResult {
    pub host: String,
    pub task: String,
    pub status: TaskStatus,
    /// What changed (or would), one line each, with the commands an operator would type.
    pub changes: Vec<String>,
    /// From the moment the task's lane reached it to its end, waits included.
    pub duration_ms: u64,
    /// When the lane reached the task, in ms since the run started.
    pub start_ms: u64,
    /// Of `duration_ms`, the time spent waiting for other tasks (`after`, on any host)
    /// and for a `--forks` slot before the task itself began.
    pub waited_ms: u64,
    pub error: Option<String>,
    /// Why an `ok` task left things alone when that is worth knowing (the migration
    /// completed on the target, so a store is not touched), masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Things the operator must know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `--diff`: unified diffs of what the changes do, where the module can say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<String>,
    /// The commands the task ran on its host, in order, with exit status and bounded
    /// output (masked): the JSON report's record of what happened.
    pub commands: Vec<CommandRecord>,
    /// What the task's command printed (see [`crate::module::Applied::output`]), masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CommandOutput>,
    /// The module's facts (not masked, not in the report): for `register`.
    #[serde(skip)]
    pub facts: serde_json::Value,
}

/// A command's exit status and (bounded, masked) output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandOutput {
    /// `None`: ended by a signal.
    pub rc: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

impl TaskResult {
    /// When the task's own work began (its waits over), in ms since the run started.
    pub fn work_start_ms(&self) -> u64 {
        self.start_ms + self.waited_ms.min(self.duration_ms)
    }
    /// When the task ended, in ms since the run started.
    pub fn end_ms(&self) -> u64 {
        self.start_ms + self.duration_ms
    }
    /// The task's own time, waits excluded.
    pub fn work_ms(&self) -> u64 {
        self.duration_ms.saturating_sub(self.waited_ms)
    }
}

/// One command a task ran (see [`crate::transport::recorded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandRecord {
    /// The command line as the host's shell got it (masked).
    pub cmd: String,
    /// Exit status; `None` when it ended by a signal, or never ended (the connection
    /// was lost, or it was interrupted).
    pub exit_status: Option<u32>,
    /// The first and last 2 KiB of each stream, with a note of what was left out; a
    /// streamed command's stdout is data, not text, and is not kept.
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
}

impl CommandRecord {
    /// What the command printed, as a task's output (`register`, `ferry run`, JSON) for
    /// modules that do not say (see [`crate::module::Applied::output`]); masked.
    pub fn output(&self, secrets: &crate::secrets::Secrets) -> CommandOutput {
        CommandOutput {
            rc: self.exit_status,
            stdout: secrets.mask(&self.stdout),
            stderr: secrets.mask(&self.stderr),
        }
    }
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
    /// When the run started (RFC 3339, UTC) and how long it took.
    pub started_at: String,
    pub duration_ms: u64,
    /// The playbook's `[downtime]`, measured on this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<DowntimeSummary>,
    /// The playbook's `next_steps`, when this run finished everything (not in check
    /// mode): what is left to the operator.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub next_steps: Vec<String>,
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

    /// Tables per host, then the recap; long cells folded to the terminal's width.
    pub fn to_table(&self) -> String {
        self.table(true)
    }

    /// Tables per host, then the recap; `fold`: long cells folded to the terminal's width
    /// (on a terminal; piped, nothing is folded), else whole.
    pub fn table(&self, fold: bool) -> String {
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
            table.set_content_arrangement(if fold {
                ContentArrangement::Dynamic
            } else {
                ContentArrangement::Disabled
            });
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
                for d in &t.diffs {
                    what.push('\n');
                    what.push_str(d.trim_end());
                }
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
                    Cell::new(task_time(t)),
                ]);
            }
            out.push_str(&table.to_string());
            out.push_str("\n\n");
        }
        out.push_str(&self.recap());
        out
    }

    /// Ansible-style `PLAY RECAP`, one line per host, the run's time, and the downtime.
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
        out.push_str(&format!("ran {}\n", downtime::human_ms(self.duration_ms)));
        if let Some(d) = &self.downtime {
            out.push_str(&d.to_text());
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
        if !self.next_steps.is_empty() {
            out.push_str("\nLeft to you:\n");
            for (i, step) in self.next_steps.iter().enumerate() {
                out.push_str(&format!("  {}. {}\n", i + 1, visible(step)));
            }
        }
        out
    }
}

/// A task's time in the table: its own work, then what it waited for other tasks.
fn task_time(t: &TaskResult) -> String {
    if t.waited_ms >= 100 {
        format!(
            "{}\n(waited {})",
            downtime::human_ms(t.work_ms()),
            downtime::human_ms(t.waited_ms)
        )
    } else {
        downtime::human_ms(t.duration_ms)
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
                        "{} {} ({}, sha256 {})",
                        a.name,
                        a.path,
                        indicatif::HumanBytes(a.size),
                        a.sha256
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
            ..PlayReport::default()
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
            ..TaskResult::default()
        });
        let table = report.to_table();
        assert!(!table.contains(['\x1b', '\r', '\x07']), "{table:?}");
        assert!(table.contains("evil\\x1b]0;x\\x07"), "{table}");
        assert!(table.contains("stderr: \\x1b[2J"), "{table}");
    }
}
