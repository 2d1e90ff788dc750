//! The journal's file: written atomically (temp file, fsync, rename, fsync of the
//! directory), stale temp files of killed runs removed, the path checked.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{io_err, lock_path, JournalError};

/// Replace `path` with `bytes` atomically, mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TEMP_SUFFIX)
        .rand_bytes(TEMP_RAND_LEN)
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

const TEMP_SUFFIX: &str = ".tmp";
const TEMP_RAND_LEN: usize = 6;

/// The start of the temporary files' names of the journal at `path`: `.NAME.`.
pub(super) fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Whether `name` is one of ferry's temporary files for the journal whose prefix is
/// `prefix`: exactly `PREFIX` + the random part + `.tmp`.
pub(super) fn is_temp_file_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|random| {
            random.len() == TEMP_RAND_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Remove the temporary files a killed run of this journal left behind (the caller
/// holds the journal's lock). Failures are logged: they cost disk space, not safety.
pub(super) fn remove_stale_temp_files(path: &Path) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_temp_file_of(name, &prefix) {
            let stale = entry.path();
            match std::fs::remove_file(&stale) {
                Ok(()) => {
                    tracing::info!(file = %stale.display(), "removed a temporary journal file left by an interrupted run")
                }
                Err(e) => {
                    tracing::warn!(file = %stale.display(), "cannot remove a stale temporary journal file: {e}")
                }
            }
        }
    }
}

/// A journal path must be (or become) a regular file that is not its own lock file.
pub(super) fn check_journal_path(path: &Path) -> Result<(), JournalError> {
    let bad = |reason: String| JournalError::BadPath {
        path: path.to_path_buf(),
        reason,
    };
    if lock_path(path) == path {
        return Err(bad(format!(
            "a journal cannot be named `*.lock`: its lock file is its name with the extension `.lock`, so it would be its own lock; use e.g. {}",
            path.with_extension("journal.json").display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            Err(bad(format!(
                "is a symlink (to {target}); ferry does not write a journal through a symlink: pass the real file with --journal"
            )))
        }
        Ok(m) if !m.is_file() => Err(bad("is not a regular file".into())),
        _ => Ok(()),
    }
}
