//! Artifacts on a host: finding, opening and checking the files earlier tasks made, producing
//! new ones (staged, checked, never partial), and telling a full disk from other failures.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::Cmd;
use crate::journal::Artifact;
use crate::module::staged::{safe_write_error, StagedPath, NAME_TAKEN_EXIT};
use crate::module::{HostReader, ModuleError, TaskCtx};
use crate::transport::{ExecStream, Transport};

// ---------------------------------------------------------------------------------------
// Files and artifacts

/// Size and SHA-256 of a file on a host, or `None` if it does not exist.
pub async fn remote_file_sha256(
    transport: &dyn Transport,
    path: &str,
) -> Result<Option<(u64, String)>, ModuleError> {
    // One round trip: size, then hash; nothing printed when the file is absent.
    let cmd = Cmd::new("test")
        .arg("-f")
        .arg(path)
        .and(Cmd::new("stat").arg("-c").arg("%s").arg(path))
        .and(Cmd::new("sha256sum").arg(path));
    let out = transport.exec(&cmd, None).await?;
    if !out.success() {
        return Ok(None);
    }
    let text = out.stdout_str();
    let mut lines = text.lines();
    let size = lines.next().and_then(|s| s.trim().parse().ok());
    let sha = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string);
    match (size, sha) {
        (Some(size), Some(sha)) => Ok(Some((size, sha))),
        _ => Err(ModuleError::Remote {
            what: format!("cannot read size and sha256 of {path}"),
            detail: format!("{text:?}"),
        }),
    }
}

/// The newest record of the artifact called `name` (produced by an earlier task).
pub fn find_artifact(ctx: &HostReader, name: &str) -> Result<Artifact, ModuleError> {
    ctx.journal.artifacts_named(name).pop().ok_or_else(|| {
        ModuleError::Precondition(format!(
            "artifact `{name}` has not been produced yet: the task that makes it \
             (on the old host) must run first"
        ))
    })
}

/// Read an artifact from the host that holds it, from byte `offset` on.
pub async fn open_artifact(
    ctx: &HostReader,
    artifact: &Artifact,
    offset: u64,
) -> Result<(Arc<dyn Transport>, ExecStream), ModuleError> {
    let source = ctx.peer(&artifact.host).await?;
    let cmd = if offset == 0 {
        Cmd::new("cat").arg(artifact.path.as_str())
    } else {
        Cmd::new("tail")
            .arg("-c")
            .arg(format!("+{}", offset + 1))
            .arg(artifact.path.as_str())
    };
    let stream = source.exec_stream(&cmd).await?;
    Ok((source, stream))
}

/// Check that the artifact on its host is still the one the journal recorded.
pub async fn verify_artifact(ctx: &HostReader, artifact: &Artifact) -> Result<(), ModuleError> {
    let source = ctx.peer(&artifact.host).await?;
    match remote_file_sha256(&*source, &artifact.path).await? {
        Some((size, sha)) if size == artifact.size && sha == artifact.sha256 => Ok(()),
        Some((size, sha)) => Err(ModuleError::Precondition(format!(
            "artifact {} on {} changed since it was made (size {size}, sha256 {sha}; \
             recorded {} and {}); re-run the backup tasks",
            artifact.path, artifact.host, artifact.size, artifact.sha256
        ))),
        None => Err(ModuleError::Precondition(format!(
            "artifact {} is missing on {}; re-run the backup tasks",
            artifact.path, artifact.host
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Producing artifacts on a host

/// A file's size and modification time, the cheap "is it still the same file" check a
/// re-run uses instead of hashing gigabytes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    /// Modification time as `stat -c %Y.%y`-independent nanoseconds text (`%.Y` is not
    /// portable): seconds since the epoch with fraction, as `stat -c %.9Y` prints it.
    pub mtime: String,
}

/// The stamp of `path` on this task's host, or `None` if it is not a regular file (a
/// symlink is not: it is never taken for the file ferry wrote).
pub async fn file_stamp(ctx: &HostReader, path: &str) -> Result<Option<FileStamp>, ModuleError> {
    let cmd = Cmd::new("test")
        .arg("!")
        .arg("-L")
        .arg(path)
        .and(Cmd::new("test").arg("-f").arg(path))
        .and(Cmd::new("stat").arg("-c").arg("%s %.9Y").arg(path));
    let out = ctx.exec(&cmd).await?;
    if !out.success() {
        return Ok(None);
    }
    let text = out.stdout_str();
    let mut parts = text.split_whitespace();
    match (parts.next().and_then(|s| s.parse().ok()), parts.next()) {
        (Some(size), Some(mtime)) => Ok(Some(FileStamp {
            size,
            mtime: mtime.to_string(),
        })),
        _ => Err(ModuleError::Remote {
            what: format!("cannot read size and time of {path}"),
            detail: format!("{text:?}"),
        }),
    }
}

/// Run `producer` on this task's host and write its stdout to `path` in one pass:
/// through a part file created new in ferry's private directory beside `path` (see
/// [`StagedPath`]; mode 0600), hashing on the way, renamed over `path` only when the
/// producer succeeded. A name there that ferry did not create fails the task before
/// the producer runs. Returns the artifact (recorded in the journal under `name`) and
/// its stamp.
pub async fn write_artifact(
    ctx: &TaskCtx,
    name: &str,
    producer: Cmd,
    path: &str,
) -> Result<(Artifact, FileStamp), ModuleError> {
    let staged = StagedPath::of(path)?;
    let shown = producer.display();
    let part = staged.part.clone();
    let dir = staged.dir.clone();
    // bash for pipefail: a producer that fails half-way must not leave an artifact.
    let script = Cmd::new("umask")
        .arg("077")
        .and(staged.prepare_cmd())
        .and(
            producer
                .pipe(Cmd::new("tee").arg("-a").arg(part.as_str()))
                .pipe(Cmd::new("sha256sum")),
        )
        .and(staged.commit_cmd())
        .and(Cmd::new("stat").arg("-c").arg("%s %.9Y").arg(path));
    let script = Cmd::new("set").arg("-o").arg("pipefail").then(script);
    let cmd = Cmd::new("bash").arg("-c").arg_cmd(&script);
    let out = ctx.exec(&cmd).await?;
    if !out.success() {
        if out.status == Some(NAME_TAKEN_EXIT) {
            // Nothing of ours to clean up: the name belongs to someone else.
            return Err(safe_write_error(ctx, &shown, &out));
        }
        let stderr = ctx.secrets.mask(out.stderr_str().trim());
        // How far it got, before the partial file goes (for the disk-full message).
        let written = if is_disk_full(&stderr) {
            ctx.exec(&Cmd::new("stat").arg("-c").arg("%s").arg(part.as_str()))
                .await
                .ok()
                .and_then(|o| o.stdout_str().trim().parse::<u64>().ok())
        } else {
            None
        };
        // Leave nothing half-written behind under the final name (it never was), and
        // remove the partial file so a re-run starts clean.
        let _ = ctx.exec(&staged.remove_part_cmd()).await;
        if is_disk_full(&stderr) {
            let free = disk_free_text(ctx, &dir).await;
            return Err(ModuleError::DiskFull(disk_full_message(
                &ctx.host, path, &part, written, &free, &stderr,
            )));
        }
        // The producer as the operator would have typed it, not the staging script.
        return Err(ModuleError::CommandFailed {
            cmd: ctx.secrets.mask(&format!("{shown} > {path}")),
            status: format!("{:?}", out.status),
            stderr,
        });
    }
    let text = out.stdout_str();
    let mut lines = text.lines();
    let sha = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    let mut stamp = lines.next().unwrap_or("").split_whitespace();
    let (Some(size), Some(mtime)) = (stamp.next().and_then(|s| s.parse().ok()), stamp.next())
    else {
        return Err(ModuleError::Remote {
            what: format!("unexpected output writing {path}"),
            detail: format!("{text:?}"),
        });
    };
    if sha.len() != 64 {
        return Err(ModuleError::Remote {
            what: format!("bad sha256 for {path}"),
            detail: format!("{sha:?}"),
        });
    }
    let artifact = Artifact {
        name: name.to_string(),
        host: ctx.host.clone(),
        path: path.to_string(),
        sha256: sha,
        size,
    };
    let stamp = FileStamp {
        size,
        mtime: mtime.to_string(),
    };
    ctx.record_artifact(artifact.clone())?;
    ctx.record_fingerprint(
        &format!("{name}_stamp"),
        serde_json::to_value(&stamp).unwrap_or(Value::Null),
    )?;
    Ok((artifact, stamp))
}

/// A command's stderr says the filesystem is full.
pub fn is_disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("ENOSPC")
}

/// "N bytes free of M in DIR" from `df -PB1` on the host, or why not.
pub async fn disk_free_text(ctx: &HostReader, dir: &str) -> String {
    match ctx
        .exec(&Cmd::new("df").arg("-PB1").arg("--").arg(dir))
        .await
    {
        Ok(out) if out.success() => df_text(dir, &out.stdout_str()),
        Ok(out) => format!("df {dir} failed: {}", out.stderr_str().trim()),
        Err(e) => format!("df {dir} failed: {e}"),
    }
}

/// Pure: `df -PB1` output as "N bytes free of M on MOUNT".
pub fn df_text(dir: &str, out: &str) -> String {
    let fields: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    match fields.as_slice() {
        [_, size, _, avail, _, mount, ..] => {
            format!("{avail} bytes free of {size} on the filesystem mounted at {mount}")
        }
        _ => format!("free space of {dir} unknown (df said {:?})", out.trim()),
    }
}

/// Pure: the operator's message for an artifact that did not fit.
pub fn disk_full_message(
    host: &str,
    path: &str,
    part: &str,
    written: Option<u64>,
    free: &str,
    stderr: &str,
) -> String {
    let written = match written {
        Some(n) => format!("{n} bytes were written before the disk filled"),
        None => "the disk filled while writing".to_string(),
    };
    format!(
        "No space left on device on host {host} writing {path}: {written}. The partial \
         file {part} was removed, after which {free}; nothing else was deleted (earlier \
         backups, the containers and their data are as they were). Free space there (or \
         point the backup directory at a larger disk) and re-run. ({stderr})"
    )
}

/// The artifact `name` this task recorded earlier, if the file on the host still has
/// the recorded stamp (same size and modification time): then its recorded sha256 holds.
pub fn recorded_artifact(
    ctx: &HostReader,
    name: &str,
    current: &Option<FileStamp>,
) -> Option<Artifact> {
    let rec = ctx.record(&ctx.host, &ctx.task)?;
    let artifact = rec.artifacts.get(name)?.clone();
    let stamp: FileStamp =
        serde_json::from_value(rec.fingerprints.get(&format!("{name}_stamp"))?.clone()).ok()?;
    (current.as_ref() == Some(&stamp)).then_some(artifact)
}

/// The memo `key` recorded by a task that produced artifact `name` (the first in the
/// journal's order, as [`artifact_fingerprint`]): `None` when no task recorded it, an error when what is recorded is not a `T`.
pub fn artifact_memo<T: serde::Serialize + serde::de::DeserializeOwned>(
    ctx: &HostReader,
    artifact: &str,
    key: &crate::module::memo::Memo<T>,
) -> Result<Option<T>, ModuleError> {
    let data = ctx.journal.snapshot();
    for (host, tasks) in &data.hosts {
        for (task, record) in tasks {
            if record.artifacts.contains_key(artifact) {
                if let Some(v) = key.read(host, task, record)? {
                    return Ok(Some(v));
                }
            }
        }
    }
    Ok(None)
}

/// A fingerprint recorded (under `key`) by the task that produced artifact `name`.
pub fn artifact_fingerprint<T: serde::de::DeserializeOwned>(
    ctx: &HostReader,
    artifact: &str,
    key: &str,
) -> Option<T> {
    // A copy (`transfer`'s `record_as`) has the bytes of its original, so the original's
    // fingerprint describes it too: records are matched by name, then by content.
    let sha256 = ctx
        .journal
        .artifacts_named(artifact)
        .pop()
        .map(|a| a.sha256);
    let data = ctx.journal.snapshot();
    let records = || data.hosts.values().flat_map(|tasks| tasks.values());
    let by_name = records()
        .filter(|r| r.artifacts.contains_key(artifact))
        .find_map(|r| r.fingerprints.get(key).cloned());
    by_name
        .or_else(|| {
            let sha256 = sha256.as_deref()?;
            records()
                .filter(|r| r.artifacts.values().any(|a| a.sha256 == sha256))
                .find_map(|r| r.fingerprints.get(key).cloned())
        })
        .and_then(|v| serde_json::from_value(v).ok())
}

#[cfg(test)]
mod disk_full_tests {
    use super::*;

    #[test]
    fn disk_full_message_names_host_path_and_space() {
        let df = "Filesystem 1-blocks Used Available Capacity Mounted on\n\
                  tmpfs 4194304 4190208 4096 100% /root/packagist-migration\n";
        let free = df_text("/root/packagist-migration", df);
        assert_eq!(
            free,
            "4096 bytes free of 4194304 on the filesystem mounted at /root/packagist-migration"
        );
        let m = disk_full_message(
            "old",
            "/b/db.sql",
            "/b/db.sql.part",
            Some(1000),
            &free,
            "tee: /b/db.sql.part: No space left on device",
        );
        for want in [
            "No space left on device on host old writing /b/db.sql",
            "1000 bytes were written",
            "4096 bytes free",
            "nothing else was deleted",
        ] {
            assert!(m.contains(want), "{want:?} not in {m}");
        }
        assert!(is_disk_full("tee: x: No space left on device"));
        assert!(!is_disk_full("permission denied"));
    }
}
