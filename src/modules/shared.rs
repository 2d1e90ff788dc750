//! Helpers shared by the migration's steps (not a step itself): Docker facts, artifacts
//! on disk, the Kubernetes connection and the "migration completed" marker.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::Cmd;
use crate::journal::Artifact;
use crate::k8s::{Cluster, KubeconfigSource};
use crate::modules::{ModuleError, TaskCtx};
use crate::playbook::template::Template;
use crate::transport::{ExecStream, Transport};

/// Name of the ConfigMap that records, on the new cluster itself, that the migration
/// completed (so a re-run from any laptop never overwrites a live system).
pub const MARKER_CONFIGMAP: &str = "ferry-packagist-migration";

/// Default kubeconfig on an embedded-cluster node.
pub const DEFAULT_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";

// ---------------------------------------------------------------------------------------
// Docker

/// The part of `docker inspect` the migration reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub running: bool,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

/// `docker inspect` of `names`; containers that do not exist are absent from the map.
/// Never a TTY; one round trip for all names.
pub async fn docker_inspect(
    ctx: &TaskCtx,
    names: &[String],
) -> Result<BTreeMap<String, ContainerState>, ModuleError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let docker = docker_bin(ctx);
    let cmd = Cmd::new(docker).arg("inspect").args(names.iter().cloned());
    // Exit 1 with "No such object" for missing ones, but the JSON for the others.
    let out = ctx.exec(&cmd).await?;
    let text = out.stdout_str();
    if !out.success() && !out.stderr_str().contains("No such") {
        return Err(ModuleError::CommandFailed {
            cmd: cmd.display(),
            status: format!("{:?}", out.status),
            stderr: out.stderr_str().trim().to_string(),
        });
    }
    parse_docker_inspect(&text)
}

/// Parse `docker inspect` JSON (an array of containers).
pub fn parse_docker_inspect(text: &str) -> Result<BTreeMap<String, ContainerState>, ModuleError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let v: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| ModuleError::Failed(format!("cannot read docker inspect output: {e}")))?;
    let mut map = BTreeMap::new();
    for c in v {
        let name = c["Name"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        let labels = c["Config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        map.insert(
            name.clone(),
            ContainerState {
                name,
                running: c["State"]["Running"].as_bool().unwrap_or(false),
                image: c["Config"]["Image"].as_str().unwrap_or("").to_string(),
                labels,
            },
        );
    }
    Ok(map)
}

/// The docker client to call on the host (var `docker`, default `docker`).
pub fn docker_bin(ctx: &TaskCtx) -> String {
    ctx.var("docker_bin")
        .and_then(Value::as_str)
        .unwrap_or("docker")
        .to_string()
}

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
        _ => Err(ModuleError::Failed(format!(
            "cannot read size and sha256 of {path}: {text:?}"
        ))),
    }
}

/// The newest record of the artifact called `name` (produced by an earlier task).
pub fn find_artifact(ctx: &TaskCtx, name: &str) -> Result<Artifact, ModuleError> {
    ctx.journal.artifacts_named(name).pop().ok_or_else(|| {
        ModuleError::Failed(format!(
            "artifact `{name}` has not been produced yet: the task that makes it \
             (on the old host) must run first"
        ))
    })
}

/// Read an artifact from the host that holds it, from byte `offset` on.
pub async fn open_artifact(
    ctx: &TaskCtx,
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
pub async fn verify_artifact(ctx: &TaskCtx, artifact: &Artifact) -> Result<(), ModuleError> {
    let source = ctx.peer(&artifact.host).await?;
    match remote_file_sha256(&*source, &artifact.path).await? {
        Some((size, sha)) if size == artifact.size && sha == artifact.sha256 => Ok(()),
        Some((size, sha)) => Err(ModuleError::Failed(format!(
            "artifact {} on {} changed since it was made (size {size}, sha256 {sha}; \
             recorded {} and {}); re-run the backup tasks",
            artifact.path, artifact.host, artifact.size, artifact.sha256
        ))),
        None => Err(ModuleError::Failed(format!(
            "artifact {} is missing on {}; re-run the backup tasks",
            artifact.path, artifact.host
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Kubernetes

/// Where a Kubernetes step finds its cluster; every field falls back to a host var
/// (`namespace`, `kubeconfig`, `kubeconfig_local`, `kube_context`), then to the
/// embedded-cluster defaults (`default`, `/etc/kubernetes/admin.conf`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sTarget {
    pub namespace: Option<Template>,
    /// kubeconfig on the node, read over SSH.
    pub kubeconfig: Option<Template>,
}

fn var_str(ctx: &TaskCtx, name: &str) -> Option<String> {
    ctx.var(name).and_then(Value::as_str).map(str::to_string)
}

impl K8sTarget {
    pub fn namespace(&self, ctx: &TaskCtx) -> Result<String, ModuleError> {
        Ok(match &self.namespace {
            Some(t) => ctx.render_operand(t)?,
            None => var_str(ctx, "namespace").unwrap_or_else(|| "default".into()),
        })
    }

    fn source(&self, ctx: &TaskCtx) -> Result<KubeconfigSource, ModuleError> {
        if let Some(t) = &self.kubeconfig {
            return Ok(KubeconfigSource::RemoteFile(ctx.render_operand(t)?));
        }
        if let Some(local) = var_str(ctx, "kubeconfig_local") {
            return Ok(KubeconfigSource::Local {
                path: local.into(),
                context: var_str(ctx, "kube_context"),
            });
        }
        Ok(KubeconfigSource::RemoteFile(
            var_str(ctx, "kubeconfig").unwrap_or_else(|| DEFAULT_KUBECONFIG.into()),
        ))
    }

    /// The cluster, connected once per host and namespace and shared by later tasks.
    pub async fn cluster(&self, ctx: &TaskCtx) -> Result<Arc<Cluster>, ModuleError> {
        let namespace = self.namespace(ctx)?;
        let source = self.source(ctx)?;
        let key = format!("k8s:{namespace}:{source:?}");
        let transport = ctx.transport.clone();
        let cell = ctx.cache.cell::<Cluster>(&key);
        let cluster = cell
            .get_or_try_init(|| async move {
                Cluster::connect(transport, &source, Some(&namespace))
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e| ModuleError::Failed(e.to_string()))?;
        Ok(cluster.clone())
    }
}

impl From<crate::k8s::K8sError> for ModuleError {
    fn from(e: crate::k8s::K8sError) -> Self {
        ModuleError::Failed(e.to_string())
    }
}

/// The "migration completed" marker, if the cluster has one.
pub async fn completed_marker(
    cluster: &Cluster,
) -> Result<Option<BTreeMap<String, String>>, ModuleError> {
    Ok(cluster.configmap(MARKER_CONFIGMAP).await?)
}

/// Refuse to touch the new side once the migration completed there, unless the
/// operator named this store in `--overwrite`. Returns `Some(reason)` when the step must
/// leave the target alone.
pub fn completed_guard(
    ctx: &TaskCtx,
    marker: &Option<BTreeMap<String, String>>,
    store: &str,
) -> Option<String> {
    let m = marker.as_ref()?;
    if ctx.overwrite.iter().any(|o| o == store || o == "all") {
        return None;
    }
    Some(format!(
        "the migration already completed on this cluster at {} (ConfigMap {MARKER_CONFIGMAP}); \
         the new system may be live, so {store} is left alone. To overwrite it anyway, \
         pass --overwrite {store}",
        m.get("completed_at")
            .map(String::as_str)
            .unwrap_or("an unknown time")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_inspect_parses_running_image_and_labels() {
        let json = r#"[{"Name":"/packagist-ui","State":{"Running":true},
            "Config":{"Image":"packagist/ui:1.12.10","Labels":{"com.packagist.version":"1.12.10"}}},
            {"Name":"/packagist-web","State":{"Running":false},"Config":{"Image":"busybox","Labels":null}}]"#;
        let m = parse_docker_inspect(json).unwrap();
        assert!(m["packagist-ui"].running);
        assert_eq!(m["packagist-ui"].image, "packagist/ui:1.12.10");
        assert_eq!(m["packagist-ui"].labels["com.packagist.version"], "1.12.10");
        assert!(!m["packagist-web"].running);
        assert!(parse_docker_inspect("").unwrap().is_empty());
        assert!(parse_docker_inspect("not json").is_err());
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
pub async fn file_stamp(ctx: &TaskCtx, path: &str) -> Result<Option<FileStamp>, ModuleError> {
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
        _ => Err(ModuleError::Failed(format!(
            "cannot read size and time of {path}: {text:?}"
        ))),
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
            return Err(ModuleError::Failed(disk_full_message(
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
        return Err(ModuleError::Failed(format!(
            "unexpected output writing {path}: {text:?}"
        )));
    };
    if sha.len() != 64 {
        return Err(ModuleError::Failed(format!(
            "bad sha256 for {path}: {sha:?}"
        )));
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
async fn disk_free_text(ctx: &TaskCtx, dir: &str) -> String {
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
    ctx: &TaskCtx,
    name: &str,
    current: &Option<FileStamp>,
) -> Option<Artifact> {
    let rec = ctx.record(&ctx.host, &ctx.task)?;
    let artifact = rec.artifacts.get(name)?.clone();
    let stamp: FileStamp =
        serde_json::from_value(rec.fingerprints.get(&format!("{name}_stamp"))?.clone()).ok()?;
    (current.as_ref() == Some(&stamp)).then_some(artifact)
}

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
        ModuleError::Failed(e.to_string())
    }
}

impl LocalCopy {
    /// Start `<backup_dir>/<file_name>.part`; `None` when the operator did not ask for
    /// copies (no `backup_dir` var). A `.part` left by an interrupted run is replaced.
    pub async fn open(
        ctx: &TaskCtx,
        file_name: &std::ffi::OsStr,
    ) -> Result<Option<LocalCopy>, LocalCopyError> {
        let Some(dir) = ctx.var("backup_dir").and_then(Value::as_str) else {
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
    ctx: &TaskCtx,
    artifact: &Artifact,
) -> Result<Option<LaptopCopy>, ModuleError> {
    let Some(dir) = ctx.var("backup_dir").and_then(Value::as_str) else {
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
            return Err(ModuleError::Failed(format!(
                "local backup copy {shown}: {e}"
            )))
        }
    };
    let state = if !meta.is_file() || meta.len() != artifact.size {
        LaptopCopyState::WrongSize(meta.len())
    } else if recorded == Some(LocalStamp::of(&path, &meta, &artifact.sha256)) {
        LaptopCopyState::Complete
    } else {
        let sha = local_sha256(&path)
            .await
            .map_err(|e| ModuleError::Failed(format!("local backup copy {shown}: {e}")))?;
        if sha == artifact.sha256 {
            LaptopCopyState::Complete
        } else {
            LaptopCopyState::WrongContent
        }
    };
    Ok(Some(LaptopCopy { path: shown, state }))
}

/// sha256 of a local file, read on a blocking thread.
async fn local_sha256(path: &std::path::Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::default();
        std::io::copy(&mut file, &mut hasher)?;
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
    let result = stream_artifact_inner(ctx, artifact, offset, hasher, sink).await;
    if result.is_err() {
        // Close the far end's stdin whatever went wrong: a consumer waiting for more
        // (`cat >> part` in a pod) would otherwise wait forever, and with it a caller
        // draining that consumer's output. What arrived stays (a resumable prefix).
        use tokio::io::AsyncWriteExt;
        let _ = sink.shutdown().await;
    }
    result
}

async fn stream_artifact_inner<W>(
    ctx: &TaskCtx,
    artifact: &Artifact,
    offset: u64,
    hasher: sha2::Sha256,
    sink: &mut W,
) -> Result<crate::stream::Pumped, ModuleError>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
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
        ModuleError::Failed(format!(
            "streaming {} ({}) {side} failed: {e}",
            artifact.name, artifact.path
        ))
    })?;
    let exit = stream.exit.await.map_err(|e| {
        ModuleError::Failed(format!(
            "reading {} on host {} stopped after {} of {} bytes: {e}",
            artifact.path,
            artifact.host,
            offset + pumped.bytes,
            artifact.size
        ))
    })?;
    if exit.status != Some(0) {
        return Err(ModuleError::Failed(format!(
            "reading {} on {} failed: {}",
            artifact.path,
            artifact.host,
            ctx.secrets
                .mask(String::from_utf8_lossy(&exit.stderr).trim())
        )));
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

/// A fingerprint recorded (under `key`) by the task that produced artifact `name`.
pub fn artifact_fingerprint<T: serde::de::DeserializeOwned>(
    ctx: &TaskCtx,
    artifact: &str,
    key: &str,
) -> Option<T> {
    let data = ctx.journal.snapshot();
    data.hosts
        .values()
        .flat_map(|tasks| tasks.values())
        .filter(|r| r.artifacts.contains_key(artifact))
        .find_map(|r| r.fingerprints.get(key).cloned())
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Run `argv` in a pod with `input` on stdin; stdout on success, an error naming the
/// pod and stderr otherwise. Feeds and drains at the same time (either alone can stall).
pub async fn pod_exec(
    cluster: &Cluster,
    pod: &str,
    container: Option<&str>,
    argv: &[String],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, ModuleError> {
    let mut proc = cluster.exec(pod, container, argv, input.is_some()).await?;
    let stdin = proc.stdin();
    let feed = async move {
        if let (Some(mut w), Some(bytes)) = (stdin, input) {
            use tokio::io::AsyncWriteExt;
            w.write_all(bytes).await?;
            w.shutdown().await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let (fed, (out, err)) = tokio::join!(feed, crate::k8s::drain(&mut proc));
    crate::k8s::finish(pod, proc, &err).await?;
    fed.map_err(|e| ModuleError::Failed(format!("writing to {pod}: {e}")))?;
    Ok(out)
}

/// `sh -c SCRIPT` as argv, for a pod exec.
pub fn sh_argv(script: &Cmd) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.to_shell()]
}

/// The name of a ready pod of `deployment`, if any.
pub async fn ready_deployment_pod(
    cluster: &Cluster,
    deployment: &str,
) -> Result<Option<String>, ModuleError> {
    let (_, selector) = cluster
        .workload(crate::k8s::WorkloadKind::Deployment, deployment)
        .await?;
    Ok(cluster
        .pods(&selector)
        .await?
        .into_iter()
        .find(crate::k8s::pod_ready)
        .and_then(|p| p.metadata.name))
}

/// The `verify_dir` arg of the storage modules: default `/data/packagist`, `""` for none.
pub fn storage_verify_dir(
    ctx: &TaskCtx,
    verify_dir: &Option<Template>,
) -> Result<Option<String>, ModuleError> {
    Ok(match verify_dir {
        Some(t) => Some(ctx.render_operand(t)?).filter(|d| !d.is_empty()),
        None => Some("/data/packagist".into()),
    })
}

/// sha256 of every storage file under `dir` in a pod, or `None` if it cannot be read.
pub async fn pod_storage_fingerprint(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    dir: &str,
) -> Result<Option<crate::fingerprint::StorageFingerprint>, ModuleError> {
    let hash = crate::modules::storage_export::content_hash_cmd(dir);
    match pod_exec(cluster, pod, Some(container), &sh_argv(&hash), None).await {
        Ok(out) => Ok(crate::fingerprint::StorageFingerprint::parse_sha256sum(
            &String::from_utf8_lossy(&out),
        )
        .ok()),
        Err(_) => Ok(None),
    }
}

/// The vendor's console in the ui pod.
pub const CONSOLE: &str = "/srv/manager/bin/console";

/// The pod side of the archive's upload into `staged.part`: a fresh upload creates the
/// part new in ferry's 0700 directory and prints the sha256 of what it wrote; a resumed
/// one appends after the kept prefix once it is checked to be ferry's. A name there
/// that ferry did not create stops it (exit [`NAME_TAKEN_EXIT`]) before a byte is
/// written.
pub fn pod_upload_cmd(staged: &StagedPath, resume: bool) -> Cmd {
    let prepared = Cmd::new("umask").arg("077");
    if resume {
        prepared
            .and(staged.check_part_cmd())
            .and(Cmd::new("cat").op(">>").arg(staged.part.as_str()))
    } else {
        prepared.and(staged.prepare_cmd()).and(
            Cmd::new("tee")
                .arg("-a")
                .arg(staged.part.as_str())
                .pipe(Cmd::new("sha256sum")),
        )
    }
}

/// Move the uploaded part into place as the archive (`staged.dest`, a name nobody else
/// may hold) and run the vendor's storage import on it in `pod`, within `timeout`. The
/// archive is left for the caller to remove.
pub async fn import_storage_archive(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    staged: &StagedPath,
    timeout: std::time::Duration,
) -> Result<(), ModuleError> {
    let import = staged.commit_cmd().and(
        Cmd::new(CONSOLE)
            .args(["packagist:self-hosted:migrate-storage", "import"])
            .arg(staged.dest.as_str()),
    );
    tokio::time::timeout(
        timeout,
        pod_exec(cluster, pod, Some(container), &sh_argv(&import), None),
    )
    .await
    .map_err(|_| {
        ModuleError::Failed(format!(
            "the storage import did not finish within {}s",
            timeout.as_secs()
        ))
    })??;
    Ok(())
}

/// The import's proof: the files under `dir` in the pod must be exactly `expected`.
pub async fn prove_imported_storage(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    dir: &str,
    expected: &crate::fingerprint::StorageFingerprint,
) -> Result<(), ModuleError> {
    let now = pod_storage_fingerprint(cluster, pod, container, dir)
        .await?
        .ok_or_else(|| ModuleError::Failed(format!("cannot list the imported files in {dir}")))?;
    let diff = now.diff(expected, 10);
    if !diff.is_empty() {
        return Err(ModuleError::Failed(format!(
            "imported storage differs from the source: {}",
            diff.join("; ")
        )));
    }
    Ok(())
}

/// "N bytes free of M …" for the directory holding `path` in a pod, or why not.
pub async fn pod_free_text(cluster: &Cluster, pod: &str, container: &str, path: &str) -> String {
    let dir = std::path::Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let df = Cmd::new("df").arg("-PB1").arg("--").arg(dir.as_str());
    match pod_exec(cluster, pod, Some(container), &sh_argv(&df), None).await {
        Ok(out) => df_text(&dir, &String::from_utf8_lossy(&out)),
        Err(e) => format!("free space unknown ({e})"),
    }
}

/// `redis-cli -p PORT ARGS...` as argv.
pub fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let mut v = argv(&["redis-cli", "-p"]);
    v.push(port.to_string());
    v.extend(argv(args));
    v
}

/// Keys per database of the Redis in `pod` (`redis-cli INFO keyspace`).
pub async fn pod_redis_key_counts(
    cluster: &Cluster,
    pod: &str,
    container: Option<&str>,
    port: u16,
) -> Result<crate::fingerprint::RedisKeyCounts, ModuleError> {
    let out = pod_exec(
        cluster,
        pod,
        container,
        &redis_cli(port, &["INFO", "keyspace"]),
        None,
    )
    .await?;
    crate::fingerprint::RedisKeyCounts::parse_info_keyspace(&String::from_utf8_lossy(&out))
        .map_err(|e| ModuleError::Failed(e.to_string()))
}

/// argv as owned strings.
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Durations in playbooks

/// A duration a playbook gives either as whole seconds (`timeout = 300`) or as text with a
/// unit (`timeout = "30s"`, `"5m"`, `"1h"`, `"1m30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct Seconds(pub u64);

impl From<Seconds> for u64 {
    fn from(s: Seconds) -> u64 {
        s.0
    }
}

impl Seconds {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    /// Parse `30s`, `5m`, `1h`, `1m30s` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Seconds, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty duration".into());
        }
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Seconds(n));
        }
        let mut total = 0u64;
        let mut digits = String::new();
        for ch in text.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let unit = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return Err(format!("{text:?}: unknown unit {ch:?} (use s, m or h)")),
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("{text:?}: a number must come before {ch:?}"))?;
            total = total.saturating_add(n.saturating_mul(unit));
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(format!("{text:?}: the last number has no unit (s, m or h)"));
        }
        Ok(Seconds(total))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Seconds(n)),
            Raw::Text(t) => Seconds::parse(&t).map_err(serde::de::Error::custom),
        }
    }
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

#[cfg(test)]
mod seconds_tests {
    use super::Seconds;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(Seconds::parse("30s"), Ok(Seconds(30)));
        assert_eq!(Seconds::parse("5m"), Ok(Seconds(300)));
        assert_eq!(Seconds::parse("1m30s"), Ok(Seconds(90)));
        assert_eq!(Seconds::parse("2h"), Ok(Seconds(7200)));
        assert_eq!(Seconds::parse("45"), Ok(Seconds(45)));
        assert!(Seconds::parse("30x").is_err());
        assert!(Seconds::parse("1m30").is_err());
        assert!(Seconds::parse("").is_err());
    }

    #[test]
    fn toml_takes_a_number_or_text() {
        #[derive(serde::Deserialize)]
        struct T {
            timeout: Seconds,
        }
        let a: T = toml::from_str("timeout = 12").unwrap();
        let b: T = toml::from_str("timeout = \"2m\"").unwrap();
        assert_eq!((a.timeout, b.timeout), (Seconds(12), Seconds(120)));
        assert!(toml::from_str::<T>("timeout = \"soon\"").is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Interrupted restores

/// Journal fingerprint (of the restoring task itself) holding the state of its last
/// destructive attempt: [`ATTEMPT_STARTED`] from just before it touched the target until
/// its result was proven, then [`ATTEMPT_PROVEN`].
pub const ATTEMPT: &str = "attempt";
pub const ATTEMPT_STARTED: &str = "started";
pub const ATTEMPT_PROVEN: &str = "proven";

/// Whether this task's last restore started and never proved its result: ferry was
/// killed or failed in the middle of it. The target may then hold a half-applied
/// restore that still looks like the source (a dump cut after its COPYs has every row
/// but no keys or indexes, and a psql left behind in the pod may still be writing), so
/// it must be restored again whatever its fingerprint says.
pub fn interrupted_attempt(ctx: &TaskCtx) -> bool {
    ctx.record(&ctx.host, &ctx.task)
        .and_then(|r| r.fingerprints.get(ATTEMPT).cloned())
        .is_some_and(|v| v == ATTEMPT_STARTED)
}

/// Record, on disk before the target is touched, that a restore attempt begins.
pub fn attempt_started(ctx: &TaskCtx) -> Result<(), ModuleError> {
    ctx.record_fingerprint(ATTEMPT, Value::from(ATTEMPT_STARTED))
}

/// Record that the attempt's result was proven equal to the source.
pub fn attempt_proven(ctx: &TaskCtx) -> Result<(), ModuleError> {
    ctx.record_fingerprint(ATTEMPT, Value::from(ATTEMPT_PROVEN))
}

// ---------------------------------------------------------------------------------------
// Files ferry creates on a host or in a pod
//
// ferry runs as root: a name another user could have prepared (a `.part` in `/tmp`, a
// symlink at the destination pointing at `/etc/shadow`) must never be written through.
// Every file ferry writes is first created, new (O_EXCL: `set -C`), as
// `<dir of the destination>/.ferry/<name>.part`, in a directory ferry made itself (mode
// 0700, owned by the login/become user, not a symlink: nobody else can put anything
// there), then renamed over the destination (a rename replaces a symlink, never follows
// it). Any name that is taken by something ferry did not create (a symlink, a non-regular
// file, a file of another user, a file with other hard links, a work directory of
// another user or open to others) fails the task with a message saying so; ferry never
// removes or reuses it.

/// The directory, next to a destination, where ferry stages files.
pub const WORK_DIR: &str = ".ferry";

/// Exit status of the safe-write scripts when a name is taken (the message is on stderr).
pub const NAME_TAKEN_EXIT: u32 = 5;

/// POSIX sh functions (busybox sh too) that the safe-write scripts start with.
/// - `ferry_workdir DIR`: DIR is (made, if absent) a real directory of this user with mode
///   0700, or the script exits [`NAME_TAKEN_EXIT`];
/// - `ferry_ours FILE`: 0 if FILE is a regular file of this user with one link, 1 if
///   nothing has that name; exits [`NAME_TAKEN_EXIT`] for anything else;
/// - `ferry_create FILE`: creates FILE empty with O_EXCL, or exits.
pub const SAFE_WRITE_FUNCS: &str = r#"ferry_uid=$(id -u) || exit 1
ferry_taken() { printf '%s exists and was not created by ferry (%s); remove it or choose another path\n' "$1" "$2" >&2; exit 5; }
ferry_workdir() {
  mkdir -m 0700 -- "$1" 2>/dev/null
  if [ -L "$1" ]; then ferry_taken "$1" "a symlink"; fi
  [ -d "$1" ] || ferry_taken "$1" "not a directory"
  ferry_st=$(stat -c '%u %a' -- "$1") || exit 1
  [ "${ferry_st% *}" = "$ferry_uid" ] || ferry_taken "$1" "owned by uid ${ferry_st% *}, not $ferry_uid"
  [ "${ferry_st#* }" = 700 ] || ferry_taken "$1" "mode ${ferry_st#* }, not 0700: other users may have put files there"
}
ferry_ours() {
  if [ -L "$1" ]; then ferry_taken "$1" "a symlink"; fi
  [ -e "$1" ] || return 1
  [ -f "$1" ] || ferry_taken "$1" "not a regular file"
  ferry_st=$(stat -c '%u %h' -- "$1") || exit 1
  [ "${ferry_st% *}" = "$ferry_uid" ] || ferry_taken "$1" "owned by uid ${ferry_st% *}, not $ferry_uid"
  [ "${ferry_st#* }" = 1 ] || ferry_taken "$1" "it has ${ferry_st#* } hard links"
}
ferry_create() { ( set -C; : > "$1" ) 2>/dev/null || ferry_taken "$1" "it appeared while ferry created it"; }
"#;

/// Where ferry stages `path` on a host or in a pod: its work directory
/// `<dir>/.ferry` and the part file `<dir>/.ferry/<name>.part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StagedPath {
    /// The directory holding the destination.
    pub dir: String,
    /// `<dir>/.ferry`.
    pub work: String,
    /// `<dir>/.ferry/<name>.part`.
    pub part: String,
    /// The destination itself.
    pub dest: String,
}

impl StagedPath {
    pub fn of(dest: &str) -> Result<StagedPath, ModuleError> {
        let p = std::path::Path::new(dest);
        let name = p
            .file_name()
            .filter(|_| !dest.ends_with('/'))
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ModuleError::Failed(format!("{dest:?} does not name a file to write"))
            })?;
        let dir = p
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| ".".into());
        let join = |a: &str, b: &str| {
            if a.ends_with('/') {
                format!("{a}{b}")
            } else {
                format!("{a}/{b}")
            }
        };
        let work = join(&dir, WORK_DIR);
        let part = join(&work, &format!("{name}.part"));
        Ok(StagedPath {
            dir,
            work,
            part,
            dest: dest.to_string(),
        })
    }

    /// Make the directories and create the part new and empty; a part left by an
    /// earlier run of ferry (in ferry's own directory, so ferry's) is replaced. Fails
    /// before anything is written if the destination's name is taken.
    pub fn prepare_cmd(&self) -> Cmd {
        self.prepare_checking(self.dest.as_str())
    }

    /// [`StagedPath::prepare_cmd`] for a scratch file that is never renamed over its
    /// destination (whose name is then not checked).
    pub fn prepare_scratch_cmd(&self) -> Cmd {
        self.prepare_checking("")
    }

    /// PREPARE_SCRIPT, checking that `dest` (unless empty) is not taken by someone else.
    fn prepare_checking(&self, dest: &str) -> Cmd {
        positional_script(
            concat_funcs(PREPARE_SCRIPT),
            "ferry-prepare",
            &[
                self.dir.as_str(),
                self.work.as_str(),
                self.part.as_str(),
                dest,
            ],
        )
    }

    /// The kept part is ferry's (to append to it).
    pub fn check_part_cmd(&self) -> Cmd {
        positional_script(
            concat_funcs(CHECK_PART_SCRIPT),
            "ferry-check-part",
            &[self.work.as_str(), self.part.as_str()],
        )
    }

    /// Rename the finished part over the destination (after checking the destination's
    /// name is not taken by someone else).
    pub fn commit_cmd(&self) -> Cmd {
        positional_script(
            concat_funcs(COMMIT_SCRIPT),
            "ferry-commit",
            &[self.part.as_str(), self.dest.as_str()],
        )
    }

    /// Remove the part, only if it is ferry's (in ferry's own directory).
    pub fn remove_part_cmd(&self) -> Cmd {
        positional_script(
            concat_funcs(REMOVE_PART_SCRIPT),
            "ferry-remove-part",
            &[self.work.as_str(), self.part.as_str()],
        )
    }

    /// One line per path (work dir, part, destination) describing what has that name,
    /// without following symlinks; see [`parse_path_states`].
    pub fn state_cmd(&self) -> Cmd {
        positional_script(
            STATE_SCRIPT,
            "ferry-state",
            &[self.work.as_str(), self.part.as_str(), self.dest.as_str()],
        )
    }
}

/// `sh -c SCRIPT NAME ARGS…`: a fixed script that takes every value as a positional
/// argument, so no value is ever part of the script's text.
fn positional_script(script: impl Into<String>, name: &str, args: &[&str]) -> Cmd {
    Cmd::new("sh")
        .arg("-c")
        .arg(script.into())
        .arg(name)
        .args(args.iter().copied())
}

fn concat_funcs(script: &str) -> String {
    let mut s = String::with_capacity(SAFE_WRITE_FUNCS.len() + script.len());
    s.push_str(SAFE_WRITE_FUNCS);
    s.push_str(script);
    s
}

/// `$1` dir, `$2` work dir, `$3` part, `$4` destination.
const PREPARE_SCRIPT: &str = r#"mkdir -p -- "$1" || exit 1
ferry_workdir "$2"
ferry_ours "$4" || :
if ferry_ours "$3"; then rm -f -- "$3" || exit 1; fi
ferry_create "$3"
"#;

/// `$1` work dir, `$2` part.
const CHECK_PART_SCRIPT: &str = r#"ferry_workdir "$1"
ferry_ours "$2" || { echo "$2 is gone: nothing to resume from" >&2; exit 1; }
"#;

/// `$1` part, `$2` destination.
const COMMIT_SCRIPT: &str = r#"ferry_ours "$1" || { echo "$1 is gone" >&2; exit 1; }
ferry_ours "$2" || :
mv -f -T -- "$1" "$2"
"#;

/// `$1` work dir, `$2` part.
const REMOVE_PART_SCRIPT: &str = r#"[ -d "$1" ] && [ ! -L "$1" ] || exit 0
ferry_workdir "$1"
if ferry_ours "$2"; then rm -f -- "$2"; fi
"#;

/// For each argument: `absent`, `symlink`, or `UID LINKS SIZE MODE TYPE` (the
/// login/become user's uid first, on a line of its own).
const STATE_SCRIPT: &str = r#"id -u || exit 1
for p in "$@"; do
  if [ -L "$p" ]; then echo symlink
  elif [ ! -e "$p" ]; then echo absent
  else stat -c '%u %h %s %a %F' -- "$p" || echo unreadable
  fi
done
"#;

/// What has a name ferry wants to write, as [`StagedPath::state_cmd`] saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathState {
    Absent,
    /// A regular file (or, for the work dir, a directory with mode 0700) of this user
    /// with one link: ferry's own.
    Ours {
        size: u64,
        mode: u32,
    },
    /// Something ferry did not create: why.
    Taken(String),
}

impl PathState {
    /// The operator's message for a taken `path`.
    pub fn taken_message(&self, path: &str) -> Option<String> {
        match self {
            PathState::Taken(why) => Some(format!(
                "{path} exists and was not created by ferry ({why}); ferry does not write \
                 through or reuse it: remove it or choose another path"
            )),
            _ => None,
        }
    }
}

/// Pure: the states of the work dir, the part and the destination from
/// [`StagedPath::state_cmd`]'s output.
pub fn parse_path_states(text: &str) -> Result<[PathState; 3], ModuleError> {
    let mut lines = text.lines();
    let uid = lines
        .next()
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ModuleError::Failed(format!("cannot read file states: {text:?}")))?
        .to_string();
    let mut one = |want_dir: bool| -> Result<PathState, ModuleError> {
        let line = lines
            .next()
            .ok_or_else(|| ModuleError::Failed(format!("cannot read file states: {text:?}")))?;
        Ok(match line.trim() {
            "absent" => PathState::Absent,
            "symlink" => PathState::Taken("a symlink".into()),
            "unreadable" => PathState::Taken("its owner cannot be read".into()),
            other => {
                let mut f = other.splitn(5, ' ');
                let (owner, links, size, mode, kind) = (
                    f.next(),
                    f.next(),
                    f.next(),
                    f.next(),
                    f.next().unwrap_or(""),
                );
                let size = size.and_then(|s| s.parse().ok()).unwrap_or(0);
                let mode = mode
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .unwrap_or(0);
                if owner != Some(uid.as_str()) {
                    PathState::Taken(format!("owned by uid {}, not {uid}", owner.unwrap_or("?")))
                } else if want_dir {
                    if kind != "directory" {
                        PathState::Taken("not a directory".into())
                    } else if mode != 0o700 {
                        PathState::Taken(format!(
                            "mode {mode:04o}, not 0700: other users may have put files there"
                        ))
                    } else {
                        PathState::Ours { size, mode }
                    }
                } else if !kind.starts_with("regular") {
                    PathState::Taken(format!("not a regular file but a {kind}"))
                } else if links != Some("1") {
                    PathState::Taken(format!("it has {} hard links", links.unwrap_or("?")))
                } else {
                    PathState::Ours { size, mode }
                }
            }
        })
    };
    Ok([one(true)?, one(false)?, one(false)?])
}

/// An error from a safe-write script: the name-taken message as it is, anything else as
/// the failed command.
pub fn safe_write_error(
    ctx: &TaskCtx,
    shown: &str,
    out: &crate::transport::ExecOutput,
) -> ModuleError {
    let stderr = ctx.secrets.mask(out.stderr_str().trim());
    if out.status == Some(NAME_TAKEN_EXIT) && stderr.contains("not created by ferry") {
        return ModuleError::Failed(format!("on host {}: {stderr}", ctx.host));
    }
    ModuleError::CommandFailed {
        cmd: ctx.secrets.mask(shown),
        status: format!("{:?}", out.status),
        stderr,
    }
}

#[cfg(test)]
mod safe_write_tests {
    use super::*;

    fn run(cmd: &Cmd) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.to_shell())
            .output()
            .unwrap()
    }

    #[test]
    fn staged_paths_live_in_a_work_dir_beside_the_destination() {
        let s = StagedPath::of("/b/packagist_db.sql").unwrap();
        assert_eq!(s.work, "/b/.ferry");
        assert_eq!(s.part, "/b/.ferry/packagist_db.sql.part");
        assert_eq!(StagedPath::of("x").unwrap().part, "./.ferry/x.part");
        assert_eq!(StagedPath::of("/x").unwrap().part, "/.ferry/x.part");
        assert!(StagedPath::of("/b/").is_err());
    }

    #[test]
    fn prepare_creates_a_private_work_dir_and_an_empty_part() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/a.sql");
        let s = StagedPath::of(&dest.to_string_lossy()).unwrap();
        let out = run(&s.prepare_cmd());
        assert!(out.status.success(), "{out:?}");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&s.work).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read(&s.part).unwrap(), b"");
        // A part ferry left there earlier is replaced.
        std::fs::write(&s.part, b"old").unwrap();
        assert!(run(&s.prepare_cmd()).status.success());
        assert_eq!(std::fs::read(&s.part).unwrap(), b"");
        // The commit renames it over the destination.
        std::fs::write(&s.part, b"new").unwrap();
        assert!(run(&s.commit_cmd()).status.success());
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!std::path::Path::new(&s.part).exists());
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dest = dir.path().join("a.sql");
        let s = StagedPath::of(&dest.to_string_lossy()).unwrap();
        // A symlink as the work dir.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &s.work).unwrap();
        let out = run(&s.prepare_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exists and was not created by ferry (a symlink)"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        std::fs::remove_file(&s.work).unwrap();
        // A symlink as the part (only root could plant it in ferry's 0700 dir).
        std::fs::create_dir(&s.work).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, &s.part).unwrap();
        let out = run(&s.prepare_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        assert!(run(&s.check_part_cmd()).status.code() == Some(NAME_TAKEN_EXIT as i32));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(&s.part).unwrap();
        // A symlink as the destination: the prepare refuses before anything is written.
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        let out = run(&s.prepare_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A work dir open to others.
        std::fs::remove_file(&dest).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = run(&s.prepare_cmd());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("mode 777, not 0700"), "{err}");
    }

    use std::os::unix::fs::PermissionsExt;

    /// Run `cmd` with `stdin` as a pod's `sh -c` would.
    fn run_with_input(cmd: &Cmd, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.to_shell())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let bytes = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// The pod side of the storage upload (storage_import, storage_stream), run by sh
    /// here: with links planted at both names a part could have (beside the archive,
    /// as before, and in a `.ferry` of someone else's), no byte reaches the victim; in a
    /// clean directory the upload lands in ferry's 0700 directory and is committed.
    #[test]
    fn pod_upload_never_writes_through_a_planted_part() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let archive = dir.path().join("packagist_storage.tar.gz");
        let s = StagedPath::of(&archive.to_string_lossy()).unwrap();
        std::os::unix::fs::symlink(&victim, format!("{}.part", s.dest)).unwrap();
        std::fs::create_dir(&s.work).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&victim, &s.part).unwrap();
        for resume in [false, true] {
            let out = run_with_input(&pod_upload_cmd(&s, resume), b"archive bytes");
            assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        }
        // ferry's own directory, but a link at the archive's name: the commit refuses.
        std::fs::remove_file(&s.part).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = run_with_input(&pod_upload_cmd(&s, false), b"archive bytes");
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&hex::encode(
                <sha2::Sha256 as sha2::Digest>::digest(b"archive bytes")
            ))
        );
        std::os::unix::fs::symlink(&victim, &s.dest).unwrap();
        let out = run(&s.commit_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(&s.dest).unwrap();
        // A resumed upload appends to ferry's kept part; then it takes the archive's name.
        let out = run_with_input(&pod_upload_cmd(&s, true), b" and more");
        assert!(out.status.success(), "{out:?}");
        assert!(run(&s.commit_cmd()).status.success());
        assert_eq!(std::fs::read(&s.dest).unwrap(), b"archive bytes and more");
    }

    #[test]
    fn states_are_read_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        let s = StagedPath::of(&dest.to_string_lossy()).unwrap();
        let states = |s: &StagedPath| {
            let out = run(&s.state_cmd());
            parse_path_states(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        assert_eq!(
            states(&s),
            [PathState::Absent, PathState::Absent, PathState::Absent]
        );
        assert!(run(&s.prepare_cmd()).status.success());
        std::fs::write(&s.part, b"abc").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &dest).unwrap();
        let [work, part, d] = states(&s);
        assert!(
            matches!(work, PathState::Ours { mode: 0o700, .. }),
            "{work:?}"
        );
        assert!(matches!(part, PathState::Ours { size: 3, .. }), "{part:?}");
        assert_eq!(d, PathState::Taken("a symlink".into()));
        let parsed = parse_path_states(
            "0\n0 2 4096 755 directory\n1000 1 3 600 regular file\n0 2 3 600 regular file\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            [
                PathState::Taken(
                    "mode 0755, not 0700: other users may have put files there".into()
                ),
                PathState::Taken("owned by uid 1000, not 0".into()),
                PathState::Taken("it has 2 hard links".into()),
            ]
        );
    }
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
