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
//! - Owned: the journal records the playbook and inventory it belongs to (canonical
//!   paths, [`JournalOwner`]) and [`Journal::open_for`] refuses one that belongs to
//!   another. Each task record says which definition of the task (module and a digest
//!   of its arguments) made it, so an edited task is told from an unchanged one.
//! - Temporary files of the atomic write are named after the journal
//!   (`.NAME.XXXXXX.tmp`); one left behind by a killed run is removed by the next run
//!   once it holds the lock (never any other file).
//! - The journal path must be a regular file or not exist yet: a symlink is refused
//!   (writing would replace the link, or write through it somewhere unexpected), and
//!   so is a name ending in `.lock` (it would be its own lock file).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secrets::Secrets;

mod file;
mod owner;

pub use file::write_atomic;
use file::{check_journal_path, remove_stale_temp_files};
pub use owner::{check_owner, JournalOwner, OwnerRecord, TaskDefinition};

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
    #[error(
        "journal {path} belongs to {theirs}, not to {ours}; use the journal of this \
         playbook and inventory (leave out --journal for the default one), or delete {path} \
         to start this playbook's record over"
    )]
    OtherOwner {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("journal {path} was written by a newer ferry (journal version {version}, this ferry reads up to {JOURNAL_VERSION}); use that ferry")]
    TooNew { path: PathBuf, version: u32 },
    #[error("journal {path}: {reason}")]
    BadPath { path: PathBuf, reason: String },
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
    /// Stopped by SIGINT/SIGTERM while it ran: its remote commands were told to stop.
    /// Like `Failed`, it runs again next time.
    Interrupted,
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
    /// The module of the task definition that made this record (absent in journals of
    /// older ferry versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Digest of the task definition that made this record ([`TaskDefinition::digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
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
    /// Whose journal this is (absent in version 1, and in journals opened by name only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRecord>,
    /// host → task name → record.
    pub hosts: BTreeMap<String, BTreeMap<String, TaskRecord>>,
}

/// Version 2: the owner and each record's task definition are recorded. Version 1
/// journals (no owner) are adopted by the playbook that opens them; see
/// [`Journal::open_for`].
pub const JOURNAL_VERSION: u32 = 2;

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
    /// Task name → the definition that now makes its records.
    tasks: BTreeMap<String, TaskDefinition>,
    state: Mutex<State>,
    secrets: Secrets,
    writable: bool,
    /// Holds the lock for as long as the journal is open (`None`: [`Journal::unsaved`]).
    _lock: Option<File>,
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
    /// Open (or start) the journal at `path` for the playbook called `playbook`,
    /// identified by name only (see [`Journal::open_for`]).
    pub fn open(
        path: &Path,
        playbook: &str,
        secrets: Secrets,
        writable: bool,
    ) -> Result<Journal, JournalError> {
        Journal::open_for(path, &JournalOwner::named(playbook), secrets, writable)
    }

    /// Open (or start) the journal at `path` for `owner` and take its lock.
    ///
    /// - A journal that belongs to another playbook or inventory is refused
    ///   ([`JournalError::OtherOwner`]); one without a recorded owner (written by an
    ///   older ferry) is adopted: it is recorded as `owner`'s from now on.
    /// - Records made by a task of the same name but another module are dropped: they
    ///   are about something else. Records made by an edited definition of the same
    ///   module are kept (the module checks the real state anyway); [`Journal::is_current`]
    ///   tells them apart.
    /// - Temporary files a killed run left beside the journal are removed.
    pub fn open_for(
        path: &Path,
        owner: &JournalOwner,
        secrets: Secrets,
        writable: bool,
    ) -> Result<Journal, JournalError> {
        check_journal_path(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let lock_file = lock_path(path);
        if std::fs::symlink_metadata(&lock_file).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(JournalError::BadPath {
                path: path.to_path_buf(),
                reason: format!(
                    "its lock file {} is a symlink; remove it (ferry creates the lock file itself)",
                    lock_file.display()
                ),
            });
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(io_err(&lock_file))?;
        // A lock that is let go within a second (a run that is just ending, or a copy of
        // the descriptor a process forked elsewhere holds until it execs) is waited
        // for; a run that goes on is reported.
        let mut attempts = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(JournalError::Locked {
                        path: path.to_path_buf(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_file)(e)),
            }
        }
        // Holding the lock, no other ferry writes this journal: its temp files are
        // leftovers of a killed run.
        if writable {
            remove_stale_temp_files(path);
        }
        let (mut data, fresh) = match Journal::read(path) {
            Ok(d) => (d, false),
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                (JournalData::default(), true)
            }
            Err(e) => return Err(e),
        };
        // A fresh journal is written with its first record, not before.
        let mut dirty = false;
        if !fresh {
            owner.check(path, &data)?;
        }
        if data.owner.is_none() && owner.paths.is_some() && !data.hosts.is_empty() {
            tracing::warn!(
                journal = %path.display(),
                "the journal records no owner (written by an older ferry); it is adopted as the journal of {}",
                owner.describe()
            );
        }
        let recorded_owner = owner.paths.as_ref().map(|(pb, inv)| OwnerRecord {
            playbook: pb.clone(),
            inventory: inv.clone(),
            tasks_digest: owner.tasks_digest.clone(),
        });
        if data.owner != recorded_owner && recorded_owner.is_some() {
            data.owner = recorded_owner;
            dirty = !fresh;
        }
        if data.version != JOURNAL_VERSION || data.playbook != owner.playbook_name {
            data.version = JOURNAL_VERSION;
            data.playbook = owner.playbook_name.clone();
            dirty = !fresh;
        }
        for (host, tasks) in data.hosts.iter_mut() {
            tasks.retain(|task, record| {
                let other_module = match (&record.module, owner.tasks.get(task)) {
                    (Some(recorded), Some(now)) => recorded != &now.module,
                    _ => false,
                };
                if other_module {
                    tracing::warn!(
                        host,
                        task,
                        "the journal's record was made by module {} and the task is now another module: the record is dropped",
                        record.module.as_deref().unwrap_or_default()
                    );
                    dirty = true;
                }
                !other_module
            });
        }
        Ok(Journal {
            path: path.to_path_buf(),
            tasks: owner.tasks.clone(),
            state: Mutex::new(State { data, dirty }),
            secrets,
            writable,
            _lock: Some(lock),
        })
    }

    /// A journal that lives only in memory and is never written: for ad-hoc commands
    /// (`ferry run`), which, like `ansible -a`, keep no record between runs.
    pub fn unsaved(owner: &JournalOwner, secrets: Secrets) -> Journal {
        Journal {
            path: PathBuf::from("(not saved)"),
            tasks: owner.tasks.clone(),
            state: Mutex::new(State {
                data: JournalData::default(),
                dirty: false,
            }),
            secrets,
            writable: false,
            _lock: None,
        }
    }

    /// Whether `record` of `task` was made by the task's current definition. A record
    /// that does not say (older ferry) or a task the journal was not told about counts
    /// as current.
    pub fn is_current(&self, task: &str, record: &TaskRecord) -> bool {
        match (&record.definition, self.tasks.get(task)) {
            (Some(made_by), Some(now)) => made_by == &now.digest,
            _ => true,
        }
    }

    /// Read a journal without locking it (for `ferry status`).
    pub fn read(path: &Path) -> Result<JournalData, JournalError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let data: JournalData = serde_json::from_str(&text).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if data.version > JOURNAL_VERSION {
            return Err(JournalError::TooNew {
                path: path.to_path_buf(),
                version: data.version,
            });
        }
        Ok(data)
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
        let definition = self.tasks.get(task).cloned();
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
                module: None,
                definition: None,
            });
            if let Some(def) = definition {
                rec.module = Some(def.module);
                rec.definition = Some(def.digest);
            }
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

#[cfg(test)]
mod tests;
