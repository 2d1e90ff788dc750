//! Whose journal it is: the playbook and inventory it belongs to, and each task's
//! definition, so a record made by another playbook or an edited task is told apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{JournalData, JournalError};

/// The playbook and inventory a journal belongs to, as recorded in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRecord {
    /// Canonical path of the playbook file.
    pub playbook: PathBuf,
    /// Canonical path of the inventory file.
    pub inventory: PathBuf,
    /// Digest of all task definitions when the journal was last opened (informational:
    /// records are matched per task, see [`TaskRecord::definition`]).
    pub tasks_digest: String,
}

/// One task of the playbook, as far as the journal cares: its module and a digest of
/// what it does (module, arguments, hosts, `when`), so a record made by an edited task
/// can be told from one made by the task as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinition {
    pub module: String,
    pub digest: String,
}

/// Who opens a journal: the playbook (by name, and by canonical paths of the playbook
/// and inventory when run from files) and its task definitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalOwner {
    pub playbook_name: String,
    /// `(playbook, inventory)`, canonical; `None`: identified by name only (tests, tools).
    pub paths: Option<(PathBuf, PathBuf)>,
    pub tasks_digest: String,
    /// Task name → definition.
    pub tasks: BTreeMap<String, TaskDefinition>,
}

impl JournalOwner {
    /// Identified by the playbook's name only, with no task definitions.
    pub fn named(playbook: &str) -> JournalOwner {
        JournalOwner {
            playbook_name: playbook.to_string(),
            ..JournalOwner::default()
        }
    }

    pub(super) fn describe(&self) -> String {
        match &self.paths {
            Some((pb, inv)) => {
                format!("playbook {} with inventory {}", pb.display(), inv.display())
            }
            None => format!("playbook `{}`", self.playbook_name),
        }
    }

    /// Whether `data` (read from a journal) is this owner's. A journal with no recorded
    /// owner (version 1, or opened by name) is anybody's: it is adopted.
    pub(super) fn check(&self, path: &Path, data: &JournalData) -> Result<(), JournalError> {
        let theirs = match (&data.owner, &self.paths) {
            (Some(o), Some((pb, inv))) if &o.playbook == pb && &o.inventory == inv => return Ok(()),
            (Some(o), _) => format!(
                "playbook {} with inventory {}",
                o.playbook.display(),
                o.inventory.display()
            ),
            (None, Some(_)) => return Ok(()),
            (None, None) if data.playbook == self.playbook_name => return Ok(()),
            (None, None) => format!("playbook `{}`", data.playbook),
        };
        Err(JournalError::OtherOwner {
            path: path.to_path_buf(),
            theirs,
            ours: self.describe(),
        })
    }
}

/// Check that `data`, read from `path`, belongs to `owner` (for readers such as
/// `ferry status`; [`Journal::open_for`] does this itself).
pub fn check_owner(
    path: &Path,
    data: &JournalData,
    owner: &JournalOwner,
) -> Result<(), JournalError> {
    owner.check(path, data)
}
