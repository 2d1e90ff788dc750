//! `storage_import`: stream the storage archive into the app container of the `ui` pod,
//! run the vendor's import there, remove the archive, and prove it: the imported files'
//! hashes equal the ones recorded at export, object by object in the new install's
//! object store (host var `blob_store`), else in `verify_dir` in the pod. Before a byte
//! moves, the staging path must have room for what is still to be sent.
//!
//! ```toml
//! [task.storage_import]
//! artifact = "packagist_storage"
//! deployment = "ui"
//! container = "ui"
//! archive = "/tmp/packagist_storage.tar.gz"   # inside the container
//! verify_dir = "/data/packagist"              # "" when the storage is not a directory there
//! ```
//!
//! When the artifact is on this task's host (the new node: a `transfer` task sent it
//! there, resumably, as `packagist_storage_node`) and the cluster is reached through a
//! kubeconfig on the node, the copy into the pod runs on the node with its kubectl
//! (`kubectl exec -i … < archive`): node to pod at local speed, nothing through the
//! laptop again, and a re-run copies it again in seconds instead of resuming.
//!
//! The upload is staged as `<archive dir>/.ferry/<archive name>.part`, in a directory
//! ferry makes (mode 0700) and creates the part in new (O_EXCL); a name there or at the
//! archive that ferry did not create (a symlink, another user's file) fails the task.
//! The upload resumes: a partial part left by an interrupted run is kept
//! when its bytes equal the artifact's first bytes, and only the rest is sent. That
//! needs `archive` on a volume that outlives the pod (e.g. under the storage dir): the
//! pod's own `/tmp` is gone once a re-run has scaled the deployment down and up again.

use async_trait::async_trait;
use serde::Serialize;

use crate::command::Cmd;
use crate::fingerprint::StorageFingerprint;
use crate::k8s::{kubectl_exec, Cluster};
use crate::module::artifact::{artifact_fingerprint, find_artifact, is_disk_full};
use crate::module::artifact_stream::{copy_to_laptop, laptop_copy, stream_artifact};
use crate::module::kube::{pod_exec, pod_free_text, sh_argv as sh, K8sArgs};
use crate::module::staged::{StagedPath, StagedStates};
use crate::module::{Applied, Change, HostReader, Module, ModuleError, Probe, TaskCtx};
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::packagist::import_target::{ui_import_args, ImportTarget, UiImportArgs};
use crate::packagist::storage::{import_storage_archive, pod_upload_cmd};

fn default_artifact() -> String {
    "packagist_storage".into()
}

ui_import_args! {
    pub struct StorageImport {
        #[serde(default = "default_artifact")]
        pub artifact: String,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageImportFacts {
    /// The ui pod, the staging path and where the import is proven.
    pub target: ImportTarget,
    /// Bytes of the exported archive (from the journal), for the staging room check.
    pub archive_size: Option<u64>,
    pub source: Option<StorageFingerprint>,
    pub current: Option<StorageFingerprint>,
    /// Digest recorded by an earlier successful import (used without `verify_dir`).
    pub recorded_digest: Option<String>,
    /// Bytes of the staged part (`<dir>/.ferry/<name>.part`) already in the container.
    pub partial: u64,
    /// Names the upload would write (work dir, part, archive) held by something ferry
    /// did not create: the operator's message for each.
    pub taken: Vec<String>,
    pub guard: Option<String>,
    /// Check mode before the export ran: the source will exist in a real run.
    pub source_pending: bool,
    /// The archive is a file on this node, copied into the pod by the node's kubectl.
    pub node_source: Option<NodeSource>,
}

/// An archive on the node that runs the cluster, and the node's kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSource {
    pub path: String,
    pub kubeconfig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportChange {
    pub pod: String,
    pub resume_from: u64,
    /// Copy from this file on the node (with the node's kubectl) instead of streaming.
    pub from_node: Option<NodeSource>,
    pub kubectl: Vec<String>,
}

impl Change for ImportChange {
    fn describe(&self) -> String {
        if let Some(node) = &self.from_node {
            format!(
                "copy the storage archive {} from the node into {} and import it",
                node.path, self.pod
            )
        } else if self.resume_from > 0 {
            format!(
                "upload the storage archive into {} (resuming after {} bytes) and import it",
                self.pod, self.resume_from
            )
        } else {
            format!("upload the storage archive into {} and import it", self.pod)
        }
    }
    fn commands(&self) -> Vec<String> {
        self.kubectl.clone()
    }
}

#[async_trait]
impl Module for StorageImport {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::artifact_stream::VARS,
        &[&crate::packagist::blob_store::BLOB_STORE],
    ];
    type Facts = StorageImportFacts;
    type Change = ImportChange;

    /// The completed-migration guard's reason, when it leaves the store alone.
    fn notes(&self, f: &StorageImportFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<StorageImportFacts, ModuleError> {
        let cluster = self.k8s().cluster(probe).await?;
        let marker = completed_marker(&cluster).await?;
        let (target, store) = ImportTarget::read(probe, &cluster, &self.ui_import()).await?;
        let guard = completed_guard(probe, &marker, "storage");
        let artifact = find_artifact(probe, &self.artifact).ok();
        let mut f = StorageImportFacts {
            target,
            archive_size: artifact.as_ref().map(|a| a.size),
            source: artifact_fingerprint(probe, &self.artifact, "storage"),
            current: None,
            recorded_digest: probe
                .record(&probe.host, &probe.task)
                .and_then(|r| r.fingerprints.get("imported_digest").cloned())
                .and_then(|v| v.as_str().map(str::to_string)),
            partial: 0,
            taken: Vec::new(),
            guard,
            source_pending: false,
            node_source: None,
        };
        if let (Some(a), Some(kubeconfig)) = (artifact, self.k8s().node_kubeconfig(probe)?) {
            if a.host == probe.host {
                f.node_source = Some(NodeSource {
                    path: a.path,
                    kubeconfig,
                });
            }
        }
        f.source_pending = f.source.is_none() && probe.predicted_artifact(&self.artifact);
        if f.guard.is_none() {
            f.current = f.target.current(probe, &cluster, store.as_ref()).await?;
        }
        if let (Some(pod), None) = (&f.target.pod, &f.guard) {
            // What holds the names the upload writes, read without following links:
            // only a part of ferry's is resumed.
            let staged = StagedPath::of(&f.target.archive)?;
            let states = pod_exec(
                &cluster,
                pod,
                Some(&f.target.container),
                &sh(&staged.state_cmd()),
                None,
            )
            .await?;
            let states = StagedStates::parse(&String::from_utf8_lossy(&states))?;
            f.taken = states.taken(&staged);
            f.partial = states.kept_part().unwrap_or(0);
        }
        Ok(f)
    }

    fn decide(&self, f: &StorageImportFacts) -> Result<Vec<ImportChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &StorageImportFacts,
        changes: &[ImportChange],
    ) -> Result<Applied, ModuleError> {
        let Some(change) = changes.first() else {
            return Ok(Applied::default());
        };
        let cluster = self.k8s().cluster(ctx).await?;
        let artifact = find_artifact(ctx, &self.artifact)?;
        let pod = change.pod.as_str();
        let container = Some(f.target.container.as_str());
        let staged = StagedPath::of(&f.target.archive)?;
        let part = staged.part.clone();
        // 1. Keep a partial upload only if its bytes are the artifact's first bytes.
        let mut offset = 0;
        if change.resume_from > 0 && change.resume_from < artifact.size {
            let n = change.resume_from.to_string();
            let pod_prefix = pod_exec(
                &cluster,
                pod,
                container,
                &sh(&Cmd::new("head")
                    .arg("-c")
                    .arg(n.as_str())
                    .arg(part.as_str())
                    .pipe(Cmd::new("sha256sum"))),
                None,
            )
            .await?;
            let source = ctx.peer(&artifact.host).await?;
            let src_prefix = source
                .exec(
                    &Cmd::new("head")
                        .arg("-c")
                        .arg(n.as_str())
                        .arg(artifact.path.as_str())
                        .pipe(Cmd::new("sha256sum")),
                    None,
                )
                .await?;
            let word = |b: &[u8]| {
                String::from_utf8_lossy(b)
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            if src_prefix.success() && word(&pod_prefix) == word(&src_prefix.stdout) {
                offset = change.resume_from;
                tracing::info!(host = %ctx.host, "resuming the storage upload after {offset} bytes");
            }
        }
        // 2. Upload (appending after the kept prefix). A fresh upload is hashed in the
        //    pod as it is written (`tee part | sha256sum`), so the archive is read once;
        //    a resumed one is hashed whole afterwards, since its prefix came earlier.
        let upload = pod_upload_cmd(&staged, offset > 0);
        let (sent, out, err_text, finished) = match &change.from_node {
            Some(node) => {
                // Node to pod with the node's kubectl: nothing passes the laptop.
                let copied = ctx
                    .exec(&node_copy_cmd(node, &f.target, pod, &upload))
                    .await?;
                let finished = if copied.success() {
                    Ok(())
                } else {
                    Err(ModuleError::Remote {
                        what: format!(
                            "copying {} on host {} into {pod} with the node's kubectl failed",
                            node.path, ctx.host
                        ),
                        detail: ctx.secrets.mask(copied.stderr_str().trim()),
                    })
                };
                let err_text = copied.stderr_str();
                (artifact.size, copied.stdout, err_text, finished)
            }
            None => {
                let mut proc = cluster.exec(pod, container, &sh(&upload), true).await?;
                let mut stdin = proc
                    .stdin()
                    .ok_or_else(|| ModuleError::Internal("exec without stdin".into()))?;
                let (pumped, (out, err)) = tokio::join!(
                    stream_artifact(ctx, &artifact, offset, sha2::Sha256::default(), &mut stdin),
                    crate::k8s::drain(&mut proc)
                );
                let finished = crate::k8s::finish(pod, proc, &err).await;
                let err_text = String::from_utf8_lossy(&err).to_string();
                // A full disk is reported below, before the pump's own error.
                match (finished, pumped) {
                    (Ok(()), Ok(p)) => (p.bytes, out, err_text, Ok(())),
                    (Err(e), _) => (0, out, err_text, Err(e.into())),
                    (Ok(()), Err(e)) => (0, out, err_text, Err(e)),
                }
            }
        };
        // A full disk shows on stderr (`tee` or `cat`), whatever the exit status: a
        // pipe's status is its last command's (sha256sum).
        if is_disk_full(&err_text) {
            return Err(ModuleError::DiskFull(
                upload_disk_full(ctx, &cluster, pod, f, &part, artifact.size, &err_text).await,
            ));
        }
        finished?;
        // A resumed upload sent only the rest, so the laptop's copy (var `backup_dir`)
        // was not made on the way: make it whole now if it is not.
        if offset > 0 {
            if let Some(copy) = laptop_copy(ctx, &artifact).await? {
                if let Some(why) = copy.why() {
                    tracing::info!(path = %copy.path, "making the laptop copy again (it is {why})");
                    copy_to_laptop(ctx, &artifact).await?;
                }
            }
        }
        // 3. The far end's file must be the artifact, byte for byte: its size (a write
        //    that failed half-way leaves it short) and its sha256.
        let check = if offset == 0 {
            Cmd::new("stat").arg("-c").arg("%s").arg(part.as_str())
        } else {
            Cmd::new("stat")
                .arg("-c")
                .arg("%s")
                .arg(part.as_str())
                .and(Cmd::new("sha256sum").arg(part.as_str()))
        };
        let checked = pod_exec(&cluster, pod, container, &sh(&check), None).await?;
        let checked = String::from_utf8_lossy(&checked).to_string();
        let mut words = checked.split_whitespace();
        let far_size = words.next().unwrap_or("").to_string();
        let far = if offset == 0 {
            String::from_utf8_lossy(&out)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        } else {
            words.next().unwrap_or("").to_string()
        };
        if far != artifact.sha256 || far_size != artifact.size.to_string() {
            // A wrong prefix must not be resumed from next time.
            let _ = pod_exec(
                &cluster,
                pod,
                container,
                &sh(&staged.remove_part_cmd()),
                None,
            )
            .await;
            return Err(ModuleError::ProofMismatch {
                what: format!("the archive in {pod}"),
                detail: format!(
                "it has {far_size} bytes and sha256 {far}, expected {} bytes and {} ({} bytes sent from offset {offset}){}",
                artifact.size,
                artifact.sha256,
                sent,
                if err_text.trim().is_empty() { String::new() } else { format!(": {}", err_text.trim()) }
            ),
            });
        }
        let timeout = self.ui_import().import_timeout();
        import_storage_archive(&cluster, pod, &f.target.container, &staged, timeout).await?;
        // 4. The archive is not needed in the pod any more.
        pod_exec(
            &cluster,
            pod,
            container,
            &sh(&Cmd::new("rm").arg("-f").arg(f.target.archive.as_str())),
            None,
        )
        .await?;
        // 5. Prove it, in the bucket or the dir.
        if let Some(source) = &f.source {
            f.target.prove(ctx, &cluster, pod, source).await?;
            ctx.record_fingerprint(
                "imported_digest",
                serde_json::Value::String(source.digest.clone()),
            )?;
        }
        Ok(f.target.applied())
    }
}

/// Pure: import unless the target already holds exactly the exported files.
pub fn decide(f: &StorageImportFacts) -> Result<Vec<ImportChange>, ModuleError> {
    if f.guard.is_some() {
        return Ok(Vec::new());
    }
    if !f.taken.is_empty() {
        return Err(ModuleError::Precondition(format!(
            "in pod {}: {}",
            f.target.pod.as_deref().unwrap_or("?"),
            f.taken.join("; ")
        )));
    }
    let done = match (&f.source, f.target.is_proven(), &f.current) {
        (Some(source), true, Some(current)) => current.digest == source.digest,
        (Some(_), true, None) => false,
        (Some(source), false, _) => f.recorded_digest.as_deref() == Some(source.digest.as_str()),
        (None, _, _) if f.source_pending => false,
        (None, _, _) => {
            return Err(ModuleError::Precondition(
                "no source file list: the storage_export task on the old host has not run".into(),
            ))
        }
    };
    if done {
        return Ok(Vec::new());
    }
    let Some(pod) = &f.target.pod else {
        return Err(ModuleError::Precondition(
            "the ui deployment has no ready pod to import into: scale it to 1 first".into(),
        ));
    };
    // A copy from the node starts over (it is local and fast); a stream resumes after
    // the part already in the pod.
    let resume_from = if f.node_source.is_some() {
        0
    } else {
        f.partial
    };
    // Before a byte moves: the staging path must hold what is still to be sent.
    if let Some(size) = f.archive_size {
        f.target.check_room(pod, size.saturating_sub(resume_from))?;
    }
    let [import, cleanup] = f.target.import_commands(pod);
    let upload = match &f.node_source {
        Some(node) => format!(
            "{} (on the node)",
            node_copy_cmd(
                node,
                &f.target,
                pod,
                &Cmd::new("cat").op(">").arg(f.target.archive.as_str())
            )
            .display()
        ),
        None => format!(
            "{} < packagist_storage.tar.gz",
            kubectl_exec(
                &f.target.namespace,
                pod,
                Some(&f.target.container),
                true,
                &["sh", "-c", &format!("cat > {}", f.target.archive)]
            )
        ),
    };
    Ok(vec![ImportChange {
        pod: pod.clone(),
        resume_from,
        from_node: f.node_source.clone(),
        kubectl: vec![upload, import, cleanup],
    }])
}

/// On the node: feed the archive `node.path` to `script` in the ui container, with the
/// node's kubectl and kubeconfig.
fn node_copy_cmd(node: &NodeSource, target: &ImportTarget, pod: &str, script: &Cmd) -> Cmd {
    Cmd::new("kubectl")
        .arg("--kubeconfig")
        .arg(node.kubeconfig.as_str())
        .arg("-n")
        .arg(target.namespace.as_str())
        .args([
            "exec",
            "-i",
            pod,
            "-c",
            target.container.as_str(),
            "--",
            "sh",
            "-c",
        ])
        .arg(script.to_shell())
        .op("<")
        .arg(node.path.as_str())
}

/// The message for an upload that filled the pod's filesystem: where (host, namespace,
/// pod, container, path), how much arrived and how much is still needed, the free space
/// now, and that the partial upload is kept for the re-run to resume after.
async fn upload_disk_full(
    ctx: &HostReader,
    cluster: &Cluster,
    pod: &str,
    f: &StorageImportFacts,
    part: &str,
    total: u64,
    error: &str,
) -> String {
    let container = Some(f.target.container.as_str());
    let kept = pod_exec(
        cluster,
        pod,
        container,
        &sh(&Cmd::new("stat").arg("-c").arg("%s").arg(part)),
        None,
    )
    .await
    .ok()
    .and_then(|o| String::from_utf8_lossy(&o).trim().parse::<u64>().ok());
    let free = pod_free_text(cluster, pod, &f.target.container, part).await;
    let arrived = match kept {
        Some(n) => format!(
            "{n} of {total} bytes arrived, {} more needed (and about as much again to \
             unpack it)",
            total.saturating_sub(n)
        ),
        None => format!("the archive is {total} bytes (and about as much again to unpack it)"),
    };
    format!(
        "No space left on device on host {host}, namespace {ns}, pod {pod} (container {c}) \
         writing {part}: {arrived}; now {free}. The partial upload is kept and nothing else \
         was deleted (the old host's backups and what is already restored stay); free space \
         there and re-run: the upload resumes after the kept part. ({error})",
        host = ctx.host,
        ns = cluster.namespace(),
        c = f.target.container,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(hash: char) -> StorageFingerprint {
        StorageFingerprint::parse_sha256sum(&format!(
            "{}  composer/a.zip\n",
            hash.to_string().repeat(64)
        ))
        .unwrap()
    }

    fn facts() -> StorageImportFacts {
        StorageImportFacts {
            target: ImportTarget {
                namespace: "default".into(),
                pod: Some("ui-abc".into()),
                container: "ui".into(),
                archive: "/tmp/packagist_storage.tar.gz".into(),
                verify_dir: Some("/data/packagist".into()),
                bucket: None,
                staging_free: None,
            },
            archive_size: Some(100),
            source: Some(fp('a')),
            current: Some(StorageFingerprint::default()),
            recorded_digest: None,
            partial: 0,
            taken: Vec::new(),
            guard: None,
            source_pending: false,
            node_source: None,
        }
    }

    #[test]
    fn an_archive_on_the_node_is_copied_by_the_node_kubectl_from_the_start() {
        let mut f = facts();
        f.partial = 60;
        f.node_source = Some(NodeSource {
            path: "/var/tmp/ferry/packagist_storage.tar.gz".into(),
            kubeconfig: "/etc/kubernetes/admin.conf".into(),
        });
        let c = decide(&f).unwrap();
        // Local and fast: no resume after the pod's part, and the room check counts all.
        assert_eq!(c[0].resume_from, 0);
        assert_eq!(c[0].from_node, f.node_source);
        assert!(
            c[0].describe().contains("from the node"),
            "{}",
            c[0].describe()
        );
        let upload = &c[0].commands()[0];
        assert!(
            upload.starts_with("kubectl --kubeconfig /etc/kubernetes/admin.conf -n default exec -i ui-abc -c ui -- sh -c")
                && upload.ends_with("< /var/tmp/ferry/packagist_storage.tar.gz (on the node)"),
            "{upload}"
        );
        f.target.staging_free = Some(99);
        let e = decide(&f).unwrap_err().to_string();
        assert!(e.contains("100"), "{e}");
    }

    #[test]
    fn empty_target_gets_upload_import_and_cleanup() {
        let c = decide(&facts()).unwrap();
        assert_eq!(c.len(), 1);
        let cmds = c[0].commands();
        assert!(
            cmds[1].contains("migrate-storage import /tmp/packagist_storage.tar.gz"),
            "{cmds:?}"
        );
        assert!(
            cmds[2].ends_with("rm /tmp/packagist_storage.tar.gz"),
            "{cmds:?}"
        );
    }

    #[test]
    fn partial_upload_resumes() {
        let mut f = facts();
        f.partial = 1234;
        let c = decide(&f).unwrap();
        assert_eq!(c[0].resume_from, 1234);
        assert!(c[0].describe().contains("resuming after 1234 bytes"));
    }

    #[test]
    fn identical_files_are_ok() {
        let mut f = facts();
        f.current = Some(fp('a'));
        assert!(decide(&f).unwrap().is_empty());
        f.current = Some(fp('b'));
        assert_eq!(decide(&f).unwrap().len(), 1);
        // Without a directory to check, the journal decides.
        let mut f = facts();
        f.target.verify_dir = None;
        f.recorded_digest = Some(fp('a').digest);
        assert!(decide(&f).unwrap().is_empty());
    }

    #[test]
    fn a_staging_path_without_room_fails_before_anything_is_sent() {
        let mut f = facts();
        f.target.staging_free = Some(99);
        let e = decide(&f).unwrap_err();
        assert!(matches!(e, ModuleError::DiskFull(_)), "{e}");
        assert!(e.to_string().contains("/tmp has 99 bytes free"), "{e}");
        // A kept part counts: only the rest must fit.
        f.partial = 1;
        assert_eq!(decide(&f).unwrap().len(), 1);
    }

    #[test]
    fn with_an_object_store_the_bucket_decides() {
        let mut f = facts();
        f.target.verify_dir = None;
        f.target.bucket = Some(crate::packagist::blob_store::testbed_target());
        // The journal's record alone does not make it done: the bucket is read.
        f.recorded_digest = Some(fp('a').digest);
        f.current = Some(fp('b'));
        assert_eq!(decide(&f).unwrap().len(), 1);
        f.current = Some(fp('a'));
        assert!(decide(&f).unwrap().is_empty());
    }

    #[test]
    fn no_ready_pod_is_a_clear_error() {
        let mut f = facts();
        f.target.pod = None;
        assert!(decide(&f)
            .unwrap_err()
            .to_string()
            .contains("scale it to 1"));
    }
}
