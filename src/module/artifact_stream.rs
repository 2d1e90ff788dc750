//! Streaming an artifact from its host somewhere (a peer, a pod), and the laptop's
//! verified copy of it on the way.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::journal::Artifact;
use crate::module::artifact::open_artifact;
use crate::module::{HostReader, ModuleError, TaskCtx, VarDecl, VarKind};

/// Host var: the laptop directory that keeps a verified copy of every artifact streamed
/// (none: no copies).
pub const BACKUP_DIR: VarDecl = VarDecl::new("backup_dir", VarKind::Str);

/// The host vars this file's helpers read, for [`crate::module::Module::vars`].
pub const VARS: &[&VarDecl] = &[&BACKUP_DIR];

// ---------------------------------------------------------------------------------------
// Streaming an artifact somewhere

/// The file name the laptop's copy of `artifact` gets in `backup_dir`: the artifact's
/// own file name.
pub fn laptop_copy_name(artifact: &Artifact) -> std::ffi::OsString {
    std::path::Path::new(&artifact.path)
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| artifact.name.clone().into())
}

/// The journal fingerprint (of the task that made it) recording a verified laptop copy.
fn laptop_copy_key(artifact: &str) -> String {
    format!("laptop_copy_{artifact}")
}

/// The laptop's copy of an artifact (var `backup_dir`) while it is written:
/// `<backup_dir>/<name>.part`, created new (mode 0600), hashed as it is written.
/// [`LocalCopy::commit`] makes it `<backup_dir>/<name>` only once complete: fsync, size
/// and sha256 checked against what the copy must be, rename, fsync of the directory.
/// Dropped before that (the stream failed, ferry was killed), only the `.part` remains:
/// never a partial file under the final name.
pub struct LocalCopy {
    file: tokio::fs::File,
    hasher: sha2::Sha256,
    written: u64,
    part: std::path::PathBuf,
    path: std::path::PathBuf,
}

/// Why the laptop's copy could not be written or did not check out.
#[derive(Debug, thiserror::Error)]
pub enum LocalCopyError {
    /// `backup_dir` is not a string, or not declared by the module.
    #[error("{0}")]
    HostVar(String),
    #[error("local backup copy {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "local backup copy {path}: {got_size} bytes with sha256 {got_sha256} were written, \
         but it must have {size} bytes and sha256 {sha256}; the partial {part} was removed"
    )]
    Mismatch {
        path: String,
        part: String,
        got_size: u64,
        got_sha256: String,
        size: u64,
        sha256: String,
    },
}

impl From<LocalCopyError> for ModuleError {
    fn from(e: LocalCopyError) -> Self {
        match e {
            LocalCopyError::HostVar(why) => ModuleError::Precondition(why),
            LocalCopyError::Io { path, source } => ModuleError::Io {
                what: format!("local backup copy {path}"),
                source,
            },
            LocalCopyError::Mismatch {
                path,
                part,
                got_size,
                got_sha256,
                size,
                sha256,
            } => ModuleError::ProofMismatch {
                what: format!("local backup copy {path}"),
                detail: format!(
                    "{got_size} bytes with sha256 {got_sha256} were written, but it must have \
                     {size} bytes and sha256 {sha256}; the partial {part} was removed"
                ),
            },
        }
    }
}

impl LocalCopy {
    /// Start `<backup_dir>/<file_name>.part`; `None` when the operator did not ask for
    /// copies (no `backup_dir` var). A `.part` left by an interrupted run is replaced.
    pub async fn open(
        ctx: &HostReader,
        file_name: &std::ffi::OsStr,
    ) -> Result<Option<LocalCopy>, LocalCopyError> {
        let dir = ctx
            .var_str_of(&BACKUP_DIR)
            .map_err(|e| LocalCopyError::HostVar(e.to_string()))?;
        let Some(dir) = dir else {
            return Ok(None);
        };
        Self::create(std::path::Path::new(dir), file_name)
            .await
            .map(Some)
    }

    /// Start `<dir>/<file_name>.part` (see [`LocalCopy::open`]).
    pub async fn create(
        dir: &std::path::Path,
        file_name: &std::ffi::OsStr,
    ) -> Result<LocalCopy, LocalCopyError> {
        let path = dir.join(file_name);
        let mut part_name = file_name.to_os_string();
        part_name.push(".part");
        let part = dir.join(part_name);
        let io = |e: std::io::Error| LocalCopyError::Io {
            path: path.display().to_string(),
            source: e,
        };
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        // Removing first (a symlink is removed, not followed) and then creating new
        // (O_EXCL) means the part is always a fresh file of ours.
        match tokio::fs::remove_file(&part).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let file = opts.open(&part).await.map_err(io)?;
        Ok(LocalCopy {
            file,
            hasher: sha2::Sha256::default(),
            written: 0,
            part,
            path,
        })
    }

    /// The final name.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Finish the copy: flushed and fsynced, checked to hold exactly `size` bytes with
    /// `sha256` (what was written, hashed on the way, and its length on disk), renamed
    /// over the final name, the directory fsynced. A copy that does not check out is
    /// removed and the final name is left as it was.
    pub async fn commit(mut self, size: u64, sha256: &str) -> Result<LocalStamp, LocalCopyError> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let path = self.path.display().to_string();
        let io = |e: std::io::Error| LocalCopyError::Io {
            path: path.clone(),
            source: e,
        };
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        let on_disk = self.file.metadata().await.map_err(io)?.len();
        let got_sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if self.written != size || on_disk != size || got_sha256 != sha256 {
            let _ = tokio::fs::remove_file(&self.part).await;
            return Err(LocalCopyError::Mismatch {
                path: path.clone(),
                part: self.part.display().to_string(),
                got_size: self.written.min(on_disk),
                got_sha256,
                size,
                sha256: sha256.to_string(),
            });
        }
        drop(self.file);
        tokio::fs::rename(&self.part, &self.path)
            .await
            .map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            tokio::fs::File::open(dir)
                .await
                .map_err(io)?
                .sync_all()
                .await
                .map_err(io)?;
        }
        let meta = tokio::fs::metadata(&self.path).await.map_err(io)?;
        Ok(LocalStamp::of(&self.path, &meta, sha256))
    }
}

impl tokio::io::AsyncWrite for LocalCopy {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use sha2::Digest;
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.file).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            // Exactly the bytes the file took.
            this.hasher.update(&buf[..*n]);
            this.written += *n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

/// A verified laptop copy as the journal records it: a re-run that finds the file with
/// the same path, size and modification time trusts its recorded sha256 instead of
/// reading it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStamp {
    pub path: String,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: String,
    pub sha256: String,
}

impl LocalStamp {
    fn of(path: &std::path::Path, meta: &std::fs::Metadata, sha256: &str) -> LocalStamp {
        LocalStamp {
            path: path.display().to_string(),
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
            sha256: sha256.to_string(),
        }
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> String {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_default()
}

/// The laptop's copy of an artifact as a re-run finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LaptopCopyState {
    /// The artifact's size and sha256.
    Complete,
    Missing,
    /// Shorter or longer than the artifact (an interrupted or older copy).
    WrongSize(u64),
    /// The artifact's size, other bytes.
    WrongContent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaptopCopy {
    pub path: String,
    pub state: LaptopCopyState,
}

impl LaptopCopy {
    /// Why it must be made (again), for the plan; `None` when it is complete.
    pub fn why(&self) -> Option<String> {
        Some(match &self.state {
            LaptopCopyState::Complete => return None,
            LaptopCopyState::Missing => "missing".to_string(),
            LaptopCopyState::WrongSize(n) => format!("{n} bytes, a partial or other copy"),
            LaptopCopyState::WrongContent => "other bytes than the artifact".to_string(),
        })
    }
}

/// The laptop's copy of `artifact`, checked against the journal's size and sha256 (and
/// the stamp recorded when this task last verified it, so an intact copy is not read
/// again); `None` when the operator did not ask for copies.
pub async fn laptop_copy(
    ctx: &HostReader,
    artifact: &Artifact,
) -> Result<Option<LaptopCopy>, ModuleError> {
    let Some(dir) = ctx.var_str_of(&BACKUP_DIR)? else {
        return Ok(None);
    };
    let path = std::path::Path::new(dir).join(laptop_copy_name(artifact));
    let shown = path.display().to_string();
    let recorded: Option<LocalStamp> = ctx
        .record(&ctx.host, &ctx.task)
        .and_then(|r| {
            r.fingerprints
                .get(&laptop_copy_key(&artifact.name))
                .cloned()
        })
        .and_then(|v| serde_json::from_value(v).ok());
    let meta = match tokio::fs::symlink_metadata(&path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some(LaptopCopy {
                path: shown,
                state: LaptopCopyState::Missing,
            }))
        }
        Err(e) => {
            return Err(ModuleError::Io {
                what: format!("local backup copy {shown}"),
                source: e,
            })
        }
    };
    let state = if !meta.is_file() || meta.len() != artifact.size {
        LaptopCopyState::WrongSize(meta.len())
    } else if recorded == Some(LocalStamp::of(&path, &meta, &artifact.sha256)) {
        LaptopCopyState::Complete
    } else {
        let sha = local_sha256(&path)
            .await
            .map_err(|source| ModuleError::Io {
                what: format!("local backup copy {shown}"),
                source,
            })?;
        if sha == artifact.sha256 {
            LaptopCopyState::Complete
        } else {
            LaptopCopyState::WrongContent
        }
    };
    Ok(Some(LaptopCopy { path: shown, state }))
}

/// sha256 of a local file, read on a blocking thread (also `fetch`'s).
pub async fn local_sha256(path: &std::path::Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::default();
        crate::stream::hash_reader(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Make the laptop's copy of `artifact` again, from its host (the far end is not
/// touched): a re-run's repair of a partial or mismatching copy.
pub async fn copy_to_laptop(ctx: &TaskCtx, artifact: &Artifact) -> Result<(), ModuleError> {
    let mut nowhere = tokio::io::sink();
    stream_artifact(ctx, artifact, 0, sha2::Sha256::default(), &mut nowhere).await?;
    Ok(())
}

/// Stream `artifact` (from byte `offset`) from the host holding it into `sink`, hashing
/// on the way; the laptop keeps a copy when `backup_dir` is set and the stream starts at
/// 0. `hasher` carries the hash of the bytes before `offset` (resume). Progress ticks go
/// to `--events`. Fails if the source command fails.
pub async fn stream_artifact<W>(
    ctx: &TaskCtx,
    artifact: &Artifact,
    offset: u64,
    hasher: sha2::Sha256,
    sink: &mut W,
) -> Result<crate::stream::Pumped, ModuleError>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let result = async {
        let (_source, mut stream) = open_artifact(ctx, artifact, offset).await?;
        let mut tee = if offset == 0 {
            LocalCopy::open(ctx, &laptop_copy_name(artifact)).await?
        } else {
            None
        };
        // Close our end of the source's stdin: `cat` reads nothing from it.
        drop(stream.stdin);
        let what = artifact.name.clone();
        let total = artifact.size;
        let mut last_tick = 0u64;
        let pumped = crate::stream::pump(&mut stream.stdout, sink, tee.as_mut(), hasher, |n| {
            // About one event per 8 MiB keeps --events useful and small.
            if n - last_tick >= 8 << 20 || offset + n == total {
                last_tick = n;
                ctx.progress(&what, offset + n, Some(total));
            }
        })
        .await
        .map_err(|e| {
            let side = match e {
                crate::stream::PumpError::Read(_) => format!("from host {}", artifact.host),
                crate::stream::PumpError::Write(_) => format!("to host {}", ctx.host),
                crate::stream::PumpError::Tee(_) => "to the local backup copy".to_string(),
            };
            ModuleError::Remote {
                what: format!(
                    "streaming {} ({}) {side} failed",
                    artifact.name, artifact.path
                ),
                detail: e.to_string(),
            }
        })?;
        let exit = stream.exit.await.map_err(|e| ModuleError::Remote {
            what: format!(
                "reading {} on host {} stopped after {} of {} bytes",
                artifact.path,
                artifact.host,
                offset + pumped.bytes,
                artifact.size
            ),
            detail: e.to_string(),
        })?;
        if exit.status != Some(0) {
            return Err(ModuleError::Remote {
                what: format!("reading {} on {} failed", artifact.path, artifact.host),
                detail: ctx
                    .secrets
                    .mask(String::from_utf8_lossy(&exit.stderr).trim()),
            });
        }
        // The whole artifact went through: the laptop's copy is checked against the
        // journal's record of it and only then takes its final name.
        if let Some(copy) = tee {
            let stamp = copy.commit(artifact.size, &artifact.sha256).await?;
            tracing::info!(path = %stamp.path, "laptop copy of {} written and checked", artifact.name);
            ctx.record_fingerprint(
                &laptop_copy_key(&artifact.name),
                serde_json::to_value(&stamp).unwrap_or(Value::Null),
            )?;
        }
        Ok(pumped)
    }
    .await;
    if result.is_err() {
        // Close the far end's stdin whatever went wrong: a consumer waiting for more
        // (`cat >> part` in a pod) would otherwise wait forever, and with it a caller
        // draining that consumer's output. What arrived stays (a resumable prefix).
        use tokio::io::AsyncWriteExt;
        let _ = sink.shutdown().await;
    }
    result
}

#[cfg(test)]
mod laptop_copy_tests {
    use super::*;
    use sha2::Digest;

    /// Yields `good` bytes, then fails (the connection to the source dropped).
    struct BreaksOff {
        good: Vec<u8>,
    }

    impl tokio::io::AsyncRead for BreaksOff {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.good.is_empty() {
                return std::task::Poll::Ready(Err(std::io::Error::other("connection lost")));
            }
            let n = self.good.len().min(buf.remaining()).min(4096);
            buf.put_slice(&self.good[..n]);
            self.good.drain(..n);
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_copy_cut_off_mid_stream_leaves_only_its_part() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = LocalCopy::create(dir.path(), "db.sql".as_ref())
            .await
            .unwrap();
        let mut reader = BreaksOff {
            good: vec![7u8; 100_000],
        };
        let mut far = Vec::new();
        let err = crate::stream::pump(
            &mut reader,
            &mut far,
            Some(&mut copy),
            sha2::Sha256::default(),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("connection lost"), "{err}");
        drop(copy);
        assert!(!dir.path().join("db.sql").exists(), "partial final file");
        // (What reached it: tokio may still be finishing the last write.)
        assert!(dir.path().join("db.sql.part").exists());
    }

    #[tokio::test]
    async fn a_copy_takes_its_name_only_when_it_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"the whole artifact".to_vec();
        let sha = hex::encode(sha2::Sha256::digest(&data));
        // An older copy under the final name stays until the new one checks out.
        std::fs::write(dir.path().join("a"), b"older").unwrap();
        let mut copy = LocalCopy::create(dir.path(), "a".as_ref()).await.unwrap();
        use tokio::io::AsyncWriteExt;
        copy.write_all(&data[..5]).await.unwrap();
        let err = copy
            .commit(data.len() as u64, &sha)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 bytes with sha256"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"older");
        assert!(!dir.path().join("a.part").exists());
        // A planted symlink at the part's name is replaced, not followed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("a.part")).unwrap();
        let mut copy = LocalCopy::create(dir.path(), "a".as_ref()).await.unwrap();
        copy.write_all(&data).await.unwrap();
        let stamp = copy.commit(data.len() as u64, &sha).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(stamp.size, data.len() as u64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
