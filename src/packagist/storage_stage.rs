//! `storage_stage`: the blob storage, old host → laptop → an archive on this task's host
//! (the new node), in one pass, while the new side's databases are still being restored.
//!
//! ```toml
//! [task.storage_stage]
//! source = "packagist_old"          # inventory host or group (exactly one host)
//! data_dir = "/data/packagist"      # on the source; default as for storage_stream
//! dest = "/var/tmp/ferry/packagist_storage.tar.gz"   # on this task's host
//! record_as = "packagist_storage_node"               # the artifact storage_import reads
//! ```
//!
//! Why it exists: the vendor starts the application only once all the data is restored,
//! so the ui pod (where the import runs) is not up while PostgreSQL and Redis are
//! restored. Streaming into the pod (`storage_stream`) would have to wait for them; this
//! stages the archive on the node instead, at the same time as the restores, and
//! `storage_import` then copies it node → pod with the node's kubectl (local speed) and
//! imports it once ui is up. The vendor's manual procedure copies the archive to the new
//! server too.
//!
//! The bytes are read once, as in `storage_stream`: the old host's tar fallback,
//! uncompressed; the laptop hashes every file in it (the source fingerprint, recorded with
//! the artifact for the import's proof), wraps it in gzip stored blocks, keeps a copy in
//! `backup_dir` when set, and sends it to this host, where `tee part | sha256sum` writes
//! it once in ferry's 0700 directory beside `dest`. The part becomes `dest` only when its
//! size and sha256 are what was sent and the source listing did not change meanwhile.
//! Not resumable mid-stream (issue: resumable streams): a cut stream's part is removed
//! and the re-run streams again; the source is never modified.
//!
//! A re-run is a no-op while the source's listing and `dest`'s size and mtime are what
//! this task recorded; after a completed migration (the cluster's marker) it is left
//! alone unless `--overwrite storage`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command::Cmd;
use crate::fingerprint::StorageFingerprint;
use crate::journal::Artifact;
use crate::module::artifact::{disk_free_text, file_stamp, is_disk_full, FileStamp};
use crate::module::artifact_stream::LocalCopy;
use crate::module::kube::{k8s_args, K8sArgs};
use crate::module::memo::Memo;
use crate::module::predict::Prediction;
use crate::module::staged::{parse_path_states, safe_write_error, StagedPath, NAME_TAKEN_EXIT};
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::packagist::memos::STORAGE;
use crate::packagist::storage::pod_upload_cmd;
use crate::packagist::storage_stream::{
    listing_cmd, parse_listing, pump_tar_as_gzip, resolve_source, source_data_dir, source_tar_cmd,
    tar_stream_error, SourceTree, DATA_DIR, GROUPS, HOSTVARS,
};
use crate::playbook::template::Template;

fn default_record_as() -> String {
    "packagist_storage_node".into()
}

k8s_args! {
    pub struct StorageStage {
        /// Inventory host, or a group with exactly one host, holding the storage.
        pub source: Template,
        pub data_dir: Option<Template>,
        /// The archive on this task's host.
        pub dest: Template,
        /// The artifact name the staged archive is recorded under.
        #[serde(default = "default_record_as")]
        pub record_as: String,
    }
}

/// What an earlier run of this task staged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    /// The source tree's listing digest when it was streamed.
    pub tree_stamp: String,
    /// `dest` as it was written.
    pub stamp: FileStamp,
}

/// Memo of this task, read by itself on a re-run.
pub const STAGED: Memo<StagedRecord> = Memo::new("staged_storage");

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageStageFacts {
    pub source_host: String,
    pub data_dir: String,
    pub dest: String,
    pub tree: SourceTree,
    /// This task's record, when its artifact is still in the journal.
    pub recorded: Option<StagedRecord>,
    /// `dest` now (a regular file; `None` when absent or not one).
    pub current: Option<FileStamp>,
    /// Names the stage would write that ferry did not create: the message for each.
    pub taken: Vec<String>,
    pub guard: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageChange {
    pub source_host: String,
    pub dest: String,
    pub files: u64,
    pub command: String,
}

impl Change for StageChange {
    fn describe(&self) -> String {
        format!(
            "stream the storage ({} files) from {} into {} on this host",
            self.files, self.source_host, self.dest
        )
    }
    fn commands(&self) -> Vec<String> {
        vec![self.command.clone()]
    }
}

#[async_trait]
impl Module for StorageStage {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::artifact_stream::VARS,
        &[&HOSTVARS, &GROUPS, &DATA_DIR],
    ];
    type Facts = StorageStageFacts;
    type Change = StageChange;

    fn notes(&self, f: &StorageStageFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        let Ok(source) = at.renderer.render_operand(&self.source, at.vars) else {
            return Ok(());
        };
        resolve_source(at.vars, &source)
            .map(drop)
            .map_err(|e| ArgError::template(&self.source, e.to_string()))
    }

    /// The staged archive, for a check run's later tasks (the import).
    fn predicts(&self, changes: &[StageChange]) -> Vec<Prediction> {
        Prediction::artifact_if_changed(changes, &self.record_as)
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<StorageStageFacts, ModuleError> {
        let source_host = resolve_source(&probe.vars, &probe.render_operand(&self.source)?)?;
        let data_dir = source_data_dir(probe, &self.data_dir, &source_host)?;
        let dest = probe.render_operand(&self.dest)?;
        let staged = StagedPath::of(&dest)?;
        let cluster = self.k8s().cluster(probe).await?;
        let guard = completed_guard(probe, &completed_marker(&cluster).await?, "storage");
        let source = probe.peer(&source_host).await?;
        let listing = source.exec(&listing_cmd(&data_dir), None).await?;
        if !listing.success() {
            return Err(ModuleError::Remote {
                what: format!("cannot list the storage in {data_dir} on {source_host}"),
                detail: probe.secrets.mask(listing.stderr_str().trim()),
            });
        }
        let states = probe.exec(&staged.state_cmd()).await?;
        let [work, part, archive] = parse_path_states(&states.stdout_str())?;
        let taken = [
            (&work, &staged.work),
            (&part, &staged.part),
            (&archive, &staged.dest),
        ]
        .iter()
        .filter_map(|(state, path)| state.taken_message(path))
        .collect();
        // The record counts only with its artifact: a journal without it would leave the
        // import nothing to read.
        let recorded = match probe.record(&probe.host, &probe.task) {
            Some(r) if r.artifacts.contains_key(&self.record_as) => probe.own_memo(&STAGED)?,
            _ => None,
        };
        Ok(StorageStageFacts {
            source_host,
            data_dir,
            current: file_stamp(probe, &dest).await?,
            dest,
            tree: parse_listing(&listing.stdout_str()),
            recorded,
            taken,
            guard,
        })
    }

    fn decide(&self, f: &StorageStageFacts) -> Result<Vec<StageChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &StorageStageFacts,
        changes: &[StageChange],
    ) -> Result<Applied, ModuleError> {
        if changes.is_empty() {
            return Ok(Applied::default());
        }
        let staged = StagedPath::of(&f.dest)?;
        let sent = match stream_to_host(ctx, f, &staged).await {
            Ok(sent) => sent,
            Err(e) => {
                // Not resumable (yet): leave no gigabytes behind on the node.
                let _ = ctx.exec(&staged.remove_part_cmd()).await;
                return Err(e);
            }
        };
        let stamp = commit(ctx, &staged).await?;
        ctx.record_artifact(Artifact {
            name: self.record_as.clone(),
            host: ctx.host.clone(),
            path: f.dest.clone(),
            sha256: sent.sha256,
            size: sent.bytes,
        })?;
        ctx.record_memo(&STORAGE, &sent.fingerprint)?;
        ctx.record_memo(
            &STAGED,
            &StagedRecord {
                tree_stamp: f.tree.stamp.clone(),
                stamp,
            },
        )?;
        Ok(Applied::changed())
    }
}

/// Pure: stream unless `dest` is still the archive this task made of the unchanged
/// source.
pub fn decide(f: &StorageStageFacts) -> Result<Vec<StageChange>, ModuleError> {
    if f.guard.is_some() {
        return Ok(Vec::new());
    }
    if !f.taken.is_empty() {
        return Err(ModuleError::Precondition(f.taken.join("; ")));
    }
    let done = f
        .recorded
        .as_ref()
        .is_some_and(|r| r.tree_stamp == f.tree.stamp && f.current.as_ref() == Some(&r.stamp));
    if done {
        return Ok(Vec::new());
    }
    let part = StagedPath::of(&f.dest)?.part;
    Ok(vec![StageChange {
        source_host: f.source_host.clone(),
        dest: f.dest.clone(),
        files: f.tree.files,
        command: format!(
            "ssh {} {} | gzip (stored) | tee {part} | sha256sum; mv {part} {}",
            f.source_host,
            source_tar_cmd(&f.data_dir).display(),
            f.dest
        ),
    }])
}

/// What was sent and checked at the far end.
struct Sent {
    bytes: u64,
    sha256: String,
    fingerprint: StorageFingerprint,
}

/// The stream into `staged.part` on this host, checked there: the part's size and
/// sha256 are what was sent, and the source listing is what the facts read.
async fn stream_to_host(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
) -> Result<Sent, ModuleError> {
    let mut far = ctx
        .transport
        .exec_stream(&pod_upload_cmd(staged, false))
        .await?;
    let source = ctx.peer(&f.source_host).await?;
    let mut stream = source.exec_stream(&source_tar_cmd(&f.data_dir)).await?;
    // tar reads nothing from stdin.
    drop(stream.stdin);
    let mut tee = LocalCopy::open(ctx, "packagist_storage.tar.gz".as_ref()).await?;
    let progress = |n: u64| ctx.progress("packagist_storage", n, Some(f.tree.tar_bytes.max(n)));
    let pumped = pump_tar_as_gzip(&mut stream.stdout, &mut far.stdin, tee.as_mut(), progress).await;
    // EOF to the far end in every case, then its verdict.
    let _ = far.stdin.shutdown().await;
    drop(far.stdin);
    let mut printed = Vec::new();
    let read = far.stdout.read_to_end(&mut printed).await;
    let exit = far.exit.await?;
    let far_err = String::from_utf8_lossy(&exit.stderr).to_string();
    if is_disk_full(&far_err) {
        let free = disk_free_text(ctx, &staged.dir).await;
        return Err(ModuleError::DiskFull(format!(
            "No space left on device on host {host} writing {part}: the archive needs about \
             {need} bytes; now {free}. The partial archive is removed and nothing else was \
             deleted (the old host's storage and what is already restored stay); free \
             space there, or set `node_staging_dir` to a larger disk, and re-run. ({e})",
            host = ctx.host,
            part = staged.part,
            need = f.tree.tar_bytes,
            e = far_err.trim(),
        )));
    }
    if exit.status == Some(NAME_TAKEN_EXIT) {
        return Err(safe_write_error(
            ctx,
            &format!("write {}", staged.part),
            &crate::transport::ExecOutput {
                status: exit.status,
                stdout: printed,
                stderr: exit.stderr,
            },
        ));
    }
    let pumped = pumped.map_err(|e| tar_stream_error(&f.source_host, &ctx.host, e))?;
    let tar = stream.exit.await.map_err(|e| ModuleError::Remote {
        what: format!(
            "tar on host {} stopped after {} bytes",
            f.source_host, pumped.tar_bytes
        ),
        detail: e.to_string(),
    })?;
    if tar.status != Some(0) {
        return Err(ModuleError::Remote {
            what: format!("tar of {} on host {} failed", f.data_dir, f.source_host),
            detail: ctx
                .secrets
                .mask(String::from_utf8_lossy(&tar.stderr).trim()),
        });
    }
    read.map_err(|source| ModuleError::Io {
        what: format!("reading what host {} wrote", ctx.host),
        source,
    })?;
    let far_sha = String::from_utf8_lossy(&printed)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let size = ctx
        .exec(
            &Cmd::new("stat")
                .arg("-c")
                .arg("%s")
                .arg(staged.part.as_str()),
        )
        .await?;
    let size = size.stdout_str().trim().to_string();
    if exit.status != Some(0) || far_sha != pumped.sha256 || size != pumped.bytes.to_string() {
        return Err(ModuleError::ProofMismatch {
            what: format!("the archive {} on host {}", staged.part, ctx.host),
            detail: format!(
                "it has {size} bytes and sha256 {far_sha} (exit {:?}), but {} bytes with \
                 sha256 {} were sent{}",
                exit.status,
                pumped.bytes,
                pumped.sha256,
                if far_err.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", ctx.secrets.mask(far_err.trim()))
                }
            ),
        });
    }
    // The source must not have changed while it was read.
    let after = source.exec(&listing_cmd(&f.data_dir), None).await?;
    if parse_listing(&after.stdout_str()).stamp != f.tree.stamp {
        return Err(ModuleError::Precondition(format!(
            "the storage in {} on {} changed while it was streamed (is the old app \
             stopped?); nothing was staged, re-run once it is quiet",
            f.data_dir, f.source_host
        )));
    }
    // The laptop's copy takes its final name only as those same bytes.
    if let Some(copy) = tee {
        let stamp = copy.commit(pumped.bytes, &pumped.sha256).await?;
        tracing::info!(path = %stamp.path, "laptop copy of the storage archive written and checked");
    }
    Ok(Sent {
        bytes: pumped.bytes,
        sha256: pumped.sha256,
        fingerprint: pumped.fingerprint,
    })
}

/// The checked part takes `dest`'s name; returns `dest`'s stamp.
async fn commit(ctx: &HostReader, staged: &StagedPath) -> Result<FileStamp, ModuleError> {
    let out = ctx.exec(&staged.commit_cmd()).await?;
    if !out.success() {
        return Err(safe_write_error(
            ctx,
            &format!("mv {} {}", staged.part, staged.dest),
            &out,
        ));
    }
    file_stamp(ctx, &staged.dest)
        .await?
        .ok_or_else(|| ModuleError::Remote {
            what: format!(
                "{} on host {} is not a file after the rename",
                staged.dest, ctx.host
            ),
            detail: String::new(),
        })
}

#[cfg(test)]
#[path = "storage_stage_tests.rs"]
mod tests;
