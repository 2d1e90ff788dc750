//! The journal: what a playbook has done, per host and task, for resuming and for
//! `ferry status`. One JSON file, by default beside the inventory.
//!
//! - Written atomically: temp file in the same directory, fsync, rename, fsync of the
//!   directory. A crash leaves the old or the new journal, never half.
//! - Durable when it matters, in memory until then. What a resume relies on is written
//!   at once: a task about to change something ([`Journal::flush`] before apply, so a
//!   crash mid-change leaves `running`), a `changed` or `failed` result, artifacts and
//!   fingerprints. A task that only looked (`running` while gathering facts, then `ok`
//!   or `skipped`) stays in memory until the next durable write or the end of the run:
//!   if the process dies first, the journal keeps the task's previous record and the
//!   next run checks it again, which is what it would have done anyway. This saves two
//!   fsyncs per no-op task.
//! - Mode 0600.
//! - An exclusive lock on a sibling `.lock` file (`std::fs::File::try_lock`, an OS
//!   advisory lock released when the process dies): a second ferry run on the same
//!   journal refuses to start.
//! - The text fields (`changes`, `error`) are passed through [`Secrets::mask`] before
//!   they are written. Names, statuses, times, paths, digests and fingerprints are not:
//!   they are ferry's own words or identities a resume compares, and masking a short
//!   secret inside them (`ok`, a hex digit of a sha256) would corrupt the journal and
//!   tell the secret.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secrets::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path} is locked by another ferry run; wait for it to finish")]
    Locked { path: PathBuf },
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} is not valid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A file a task produced, as it was when recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    /// Where it is, on `host`.
    pub host: String,
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// State of one task on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Started and not (yet) finished: a crash or kill happened here.
    Running,
    Ok,
    Changed,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub status: RecordStatus,
    pub started: String,
    pub finished: Option<String>,
    #[serde(default)]
    pub changes: Vec<String>,
    #[serde(default)]
    pub artifacts: BTreeMap<String, Artifact>,
    #[serde(default)]
    pub fingerprints: BTreeMap<String, Value>,
    pub error: Option<String>,
}

impl TaskRecord {
    /// Finished without failing.
    pub fn succeeded(&self) -> bool {
        matches!(
            self.status,
            RecordStatus::Ok | RecordStatus::Changed | RecordStatus::Skipped
        )
    }
}

/// The journal's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalData {
    pub version: u32,
    pub playbook: String,
    /// host → task name → record.
    pub hosts: BTreeMap<String, BTreeMap<String, TaskRecord>>,
}

pub const JOURNAL_VERSION: u32 = 1;

/// The in-memory journal and whether it has changes not yet on disk.
#[derive(Debug, Default)]
struct State {
    data: JournalData,
    /// Changed since the last write (see the module docs for what may wait).
    dirty: bool,
}

/// When a change must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Before the call returns.
    Now,
    /// With the next durable write, [`Journal::flush`], or when the journal is dropped.
    Deferred,
}

/// An open, locked journal, written to disk as described in the module docs unless it
/// is read-only (check mode: the journal says what was done, and a check does nothing).
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    secrets: Secrets,
    writable: bool,
    /// Holds the lock for as long as the journal is open.
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", self.path.display())
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lock file beside a journal: `x.journal.json` → `x.journal.lock`.
pub fn lock_path(journal: &Path) -> PathBuf {
    journal.with_extension("lock")
}

impl Journal {
    /// Open (or start) the journal at `path` and take its lock.
    pub fn open(
        path: &Path,
        playbook: &str,
        secrets: Secrets,
        writable: bool,
    ) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let lock_file = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(io_err(&lock_file))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_file)(e)),
        }
        let data = match Journal::read(path) {
            Ok(d) => d,
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                JournalData {
                    version: JOURNAL_VERSION,
                    playbook: playbook.to_string(),
                    hosts: BTreeMap::new(),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Journal {
            path: path.to_path_buf(),
            state: Mutex::new(State { data, dirty: false }),
            secrets,
            writable,
            _lock: lock,
        })
    }

    /// Read a journal without locking it (for `ferry status`).
    pub fn read(path: &Path) -> Result<JournalData, JournalError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the current content.
    pub fn snapshot(&self) -> JournalData {
        self.state
            .lock()
            .map(|d| d.data.clone())
            .unwrap_or_default()
    }

    /// The record of `task` on `host`, if any (any host: modules read other hosts' records).
    pub fn record(&self, host: &str, task: &str) -> Option<TaskRecord> {
        self.state
            .lock()
            .ok()
            .and_then(|d| d.data.hosts.get(host).and_then(|t| t.get(task)).cloned())
    }

    /// Every artifact named `name`, on any host, newest task order not implied.
    pub fn artifacts_named(&self, name: &str) -> Vec<Artifact> {
        let Ok(d) = self.state.lock() else {
            return Vec::new();
        };
        d.data
            .hosts
            .values()
            .flat_map(|tasks| tasks.values())
            .filter_map(|r| r.artifacts.get(name).cloned())
            .collect()
    }

    /// Record that `task` started on `host`. Kept in memory only: while the task gathers
    /// facts there is nothing to resume; call [`Journal::flush`] before it changes
    /// anything.
    pub fn task_started(&self, host: &str, task: &str) -> Result<(), JournalError> {
        self.update(Durability::Deferred, |d| {
            let tasks = d.hosts.entry(host.to_string()).or_default();
            let rec = tasks.entry(task.to_string()).or_insert_with(|| TaskRecord {
                status: RecordStatus::Running,
                started: String::new(),
                finished: None,
                changes: Vec::new(),
                artifacts: BTreeMap::new(),
                fingerprints: BTreeMap::new(),
                error: None,
            });
            rec.status = RecordStatus::Running;
            rec.started = now_rfc3339();
            rec.finished = None;
            rec.error = None;
        })
    }

    pub fn task_finished(
        &self,
        host: &str,
        task: &str,
        status: RecordStatus,
        changes: &[String],
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        // A no-op result that is lost is checked again on the next run; a change or a
        // failure must be on disk before anything relies on it.
        let durability = match status {
            RecordStatus::Ok | RecordStatus::Skipped if changes.is_empty() => Durability::Deferred,
            _ => Durability::Now,
        };
        self.update(durability, |d| {
            if let Some(rec) = d.hosts.get_mut(host).and_then(|t| t.get_mut(task)) {
                rec.status = status;
                rec.finished = Some(now_rfc3339());
                rec.changes = changes.to_vec();
                rec.error = error.map(str::to_string);
            }
        })
    }

    pub fn record_artifact(
        &self,
        host: &str,
        task: &str,
        artifact: Artifact,
    ) -> Result<(), JournalError> {
        self.update(Durability::Now, |d| {
            if let Some(rec) = d.hosts.get_mut(host).and_then(|t| t.get_mut(task)) {
                rec.artifacts.insert(artifact.name.clone(), artifact);
            }
        })
    }

    pub fn record_fingerprint(
        &self,
        host: &str,
        task: &str,
        name: &str,
        value: Value,
    ) -> Result<(), JournalError> {
        self.update(Durability::Now, |d| {
            if let Some(rec) = d.hosts.get_mut(host).and_then(|t| t.get_mut(task)) {
                rec.fingerprints.insert(name.to_string(), value);
            }
        })
    }

    /// Write every change made so far to disk (durably), if there is any.
    pub fn flush(&self) -> Result<(), JournalError> {
        if !self.writable {
            return Ok(());
        }
        let mut state = self.lock_state()?;
        self.write_if_dirty(&mut state)
    }

    fn lock_state(&self) -> Result<std::sync::MutexGuard<'_, State>, JournalError> {
        self.state.lock().map_err(|_| JournalError::Corrupt {
            path: self.path.clone(),
            reason: "journal state poisoned by a panic".into(),
        })
    }

    fn update(
        &self,
        durability: Durability,
        change: impl FnOnce(&mut JournalData),
    ) -> Result<(), JournalError> {
        if !self.writable {
            return Ok(());
        }
        let mut state = self.lock_state()?;
        change(&mut state.data);
        state.dirty = true;
        match durability {
            Durability::Now => self.write_if_dirty(&mut state),
            Durability::Deferred => Ok(()),
        }
    }

    fn write_if_dirty(&self, state: &mut State) -> Result<(), JournalError> {
        if !state.dirty {
            return Ok(());
        }
        let masked = mask_text_fields(&state.data, &self.secrets);
        let text = serde_json::to_vec_pretty(&masked).map_err(|e| JournalError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, &text)?;
        state.dirty = false;
        Ok(())
    }
}

impl Drop for Journal {
    /// Last chance for deferred records (the engine flushes at the end of a run and
    /// reports a failure; here a failure can only be logged).
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("{e}");
        }
    }
}

/// `data` with its free-text fields masked (see the module docs for why only those).
fn mask_text_fields(data: &JournalData, secrets: &Secrets) -> JournalData {
    let mut masked = data.clone();
    for record in masked
        .hosts
        .values_mut()
        .flat_map(|tasks| tasks.values_mut())
    {
        for change in &mut record.changes {
            *change = secrets.mask(change);
        }
        if let Some(error) = &mut record.error {
            *error = secrets.mask(error);
        }
    }
    masked
}

/// Replace `path` with `bytes` atomically, mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".journal-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.journal.json");
        let first = Journal::open(&path, "pb", Secrets::new(), true).unwrap();
        let second = Journal::open(&path, "pb", Secrets::new(), true);
        assert!(
            matches!(second, Err(JournalError::Locked { .. })),
            "{second:?}"
        );
        drop(first);
        Journal::open(&path, "pb", Secrets::new(), true).unwrap();
    }

    #[test]
    fn records_survive_reopen_are_0600_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.journal.json");
        let secrets = Secrets::new();
        secrets.add("hunter2");
        let j = Journal::open(&path, "pb", secrets.clone(), true).unwrap();
        j.task_started("old", "Dump").unwrap();
        j.record_artifact(
            "old",
            "Dump",
            Artifact {
                name: "db".into(),
                host: "old".into(),
                path: "/tmp/db.sql".into(),
                sha256: "ab".into(),
                size: 3,
            },
        )
        .unwrap();
        j.task_finished(
            "old",
            "Dump",
            RecordStatus::Changed,
            &["dumped with hunter2".into()],
            None,
        )
        .unwrap();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"));
        let data = Journal::read(&path).unwrap();
        let rec = &data.hosts["old"]["Dump"];
        assert_eq!(rec.status, RecordStatus::Changed);
        assert_eq!(rec.artifacts["db"].size, 3);
        assert_eq!(rec.changes, vec!["dumped with ********"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp files left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".journal-")),
            "{names:?}"
        );
    }

    /// A short secret is masked in the text fields only: ferry's statuses, the keys,
    /// names and digests stay as they are, so the journal still reads and resumes.
    #[test]
    fn short_secret_masks_text_not_the_journal_structure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.journal.json");
        let secrets = Secrets::new();
        for short in ["ok", "a", "hosts", "2"] {
            secrets.add(short);
        }
        let j = Journal::open(&path, "pb", secrets.clone(), true).unwrap();
        j.task_started("old", "Dump").unwrap();
        j.record_artifact(
            "old",
            "Dump",
            Artifact {
                name: "db".into(),
                host: "old".into(),
                path: "/tmp/db.sql".into(),
                sha256: "a2b4".into(),
                size: 3,
            },
        )
        .unwrap();
        j.task_finished(
            "old",
            "Dump",
            RecordStatus::Ok,
            &["it's ok".into()],
            Some("a"),
        )
        .unwrap();
        drop(j);
        let data = Journal::read(&path).unwrap();
        let rec = &data.hosts["old"]["Dump"];
        assert_eq!(rec.status, RecordStatus::Ok);
        assert_eq!(rec.artifacts["db"].sha256, "a2b4");
        assert_eq!(rec.changes, vec!["it's ********"]);
        assert_eq!(rec.error.as_deref(), Some("********"));
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"{\"a\": 1}").unwrap();
        write_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn read_only_journal_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.journal.json");
        let j = Journal::open(&path, "pb", Secrets::new(), false).unwrap();
        j.task_started("h", "t").unwrap();
        assert!(!path.exists());
    }
}
