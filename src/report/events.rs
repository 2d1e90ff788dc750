//! The `--events` stream and the live lines on the terminal while a run goes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{visible, TaskResult};
use crate::journal::now_rfc3339;
use crate::secrets::Secrets;

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
    /// Each running task's last status, so a repeated one is not printed or sent again.
    statuses: Arc<Mutex<HashMap<(String, String), String>>>,
}

/// indicatif bars for long transfers: bytes, rate and ETA per artifact.
#[derive(Default)]
pub struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<(String, String), indicatif::ProgressBar>>,
    /// The running tasks' lines: host, task, time so far.
    tasks: Mutex<HashMap<(String, String), indicatif::ProgressBar>>,
}

/// The live lines of this process, for [`suspend_live`] (one run draws at a time).
static LIVE: Mutex<Option<indicatif::MultiProgress>> = Mutex::new(None);

/// Run `f` (a prompt on the terminal) with the live lines hidden, then draw them again.
pub fn suspend_live<R>(f: impl FnOnce() -> R) -> R {
    let live = LIVE.lock().ok().and_then(|l| l.clone());
    match live {
        Some(multi) => multi.suspend(f),
        None => f(),
    }
}

impl ProgressBars {
    fn new() -> Self {
        let bars = ProgressBars::default();
        if let Ok(mut live) = LIVE.lock() {
            *live = Some(bars.multi.clone());
        }
        bars
    }

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

    fn finish(&self) {
        for map in [&self.tasks, &self.bars] {
            if let Ok(mut lines) = map.lock() {
                for (_, line) in lines.drain() {
                    line.finish_and_clear();
                }
            }
        }
        let _ = self.multi.clear();
    }

    /// The task's line says what it waits for now.
    fn task_status(&self, host: &str, task: &str, status: &str) {
        if let Ok(tasks) = self.tasks.lock() {
            if let Some(line) = tasks.get(&(host.to_string(), task.to_string())) {
                line.set_message(visible(&format!("{task}: {status}")));
            }
        }
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
            self.bars = Some(Arc::new(ProgressBars::new()));
        } else {
            self.lines = true;
        }
        self
    }

    /// The run is over: the live lines and bars leave the terminal (the report follows).
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.finish();
        }
    }

    /// A sink writing to `path`; see [`create_private`].
    pub fn to_file(path: &Path, secrets: Secrets) -> std::io::Result<Self> {
        Ok(EventSink {
            file: Some(Arc::new(Mutex::new(create_private(path)?))),
            secrets,
            ..EventSink::default()
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

    /// What a running task waits for now (see [`super::status`]): its live line on a
    /// terminal, an indented line on a pipe, a `task_status` event; each only when the
    /// status differs from the task's last one.
    pub fn task_status(&self, host: &str, task: &str, status: &str) {
        let key = (host.to_string(), task.to_string());
        if let Ok(mut last) = self.statuses.lock() {
            if last.get(&key).is_some_and(|l| l == status) {
                return;
            }
            last.insert(key, status.to_string());
        }
        let shown = self.secrets.mask(status);
        if let Some(bars) = &self.bars {
            bars.task_status(host, task, &shown);
        } else if self.lines {
            eprintln!(
                "  [{}] {}: {}",
                visible(host),
                visible(task),
                visible(&shown)
            );
        }
        self.emit(
            "task_status",
            "running",
            json!({"host": host, "task": task, "message": status}),
            json!({}),
        );
    }

    pub fn task_end(&self, result: &TaskResult) {
        if let Ok(mut last) = self.statuses.lock() {
            last.remove(&(result.host.clone(), result.task.clone()));
        }
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
                "diffs": result.diffs,
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
    use crate::report::TaskStatus;

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
            ..TaskResult::default()
        });
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["status"], "ok");
        assert_eq!(line["event"], "task_end");
        assert_eq!(line["changes"][0], "said ********");
    }
}
