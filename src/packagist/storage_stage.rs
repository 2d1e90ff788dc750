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
//!
//! Resumable: a cut stream (a lost link, ferry killed) leaves its part. The archive is
//! deterministic (tar with sorted names, [`StoredGzip`](super::storage_stream) framing
//! fixed by the tar bytes alone), so the re-run regenerates it from the old host, checks
//! that its first bytes hash like the kept part (`head -c N part | sha256sum` on this
//! host) and sends only the rest, appended with `tee -a part | sha256sum`: the part is
//! then the kept prefix (checked) plus the sent rest (checked). If the prefix differs
//! (the source changed since), the part is removed and the stream starts over. The old
//! host's side is read whole again: it is the laptop's link to the new host that is
//! spared.
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
use crate::module::direct_route::{
    self, choose, DirectFacts, Route, RouteSetting, TrustRecord, DIRECT_ADDRESS,
};
use crate::module::kube::{k8s_args, K8sArgs};
use crate::module::memo::Memo;
use crate::module::predict::Prediction;
use crate::module::staged::{safe_write_error, StagedPath, StagedStates, NAME_TAKEN_EXIT};
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::packagist::memos::STORAGE;
use crate::packagist::storage_stream::{
    check_source_arg, listing_cmd, parse_listing, pump_tar_as_gzip_after, read_source_tree,
    resolve_source, source_data_dir, source_tar_cmd, tar_stream_error, KeptPrefix, SourceTree,
    TarStreamError, DATA_DIR, GROUPS, HOSTVARS,
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
        /// `auto` (default), `direct` (old host → this host, see `direct_route`) or
        /// `controller` (through the laptop).
        pub route: Option<Template>,
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
    /// Bytes of a part an interrupted stream left (ferry's own), to resume after.
    pub partial: u64,
    pub guard: Option<String>,
    /// The route asked for, what the probe found (only probed when a stream is due),
    /// and what an earlier direct stream left installed (removed first).
    pub direct: DirectFacts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StageChange {
    /// Remove the temporary key (and its files) an earlier direct stream left.
    RemoveTrust(TrustRecord),
    Stream(StreamPlan),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPlan {
    pub source_host: String,
    pub dest: String,
    pub files: u64,
    /// Resume after the first bytes of the archive, kept on this host by a cut stream.
    pub resume_from: u64,
    pub route: Route,
    /// `auto` asked: a direct stream the node refuses before a byte arrives falls back.
    pub may_fall_back: bool,
    pub command: String,
}

impl Change for StageChange {
    fn describe(&self) -> String {
        match self {
            StageChange::RemoveTrust(r) => format!(
                "remove the temporary key {} an earlier direct stream left ({} on this host, \
                 {} on {})",
                r.tag, r.authorized_keys, r.source_dir, r.source_host
            ),
            StageChange::Stream(p) => {
                let resume = if p.resume_from > 0 {
                    format!(", resuming after {} bytes", p.resume_from)
                } else {
                    String::new()
                };
                format!(
                    "stream the storage ({} files) from {} into {} on this host{resume}; {}",
                    p.files,
                    p.source_host,
                    p.dest,
                    p.route.describe(&p.source_host)
                )
            }
        }
    }
    fn commands(&self) -> Vec<String> {
        match self {
            StageChange::RemoveTrust(r) => vec![format!(
                "remove the lines tagged {} from {}; rm -rf {} on {}",
                r.tag, r.authorized_keys, r.source_dir, r.source_host
            )],
            StageChange::Stream(p) => vec![p.command.clone()],
        }
    }
}

#[async_trait]
impl Module for StorageStage {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::artifact_stream::VARS,
        &[&HOSTVARS, &GROUPS, &DATA_DIR, &DIRECT_ADDRESS],
    ];
    type Facts = StorageStageFacts;
    type Change = StageChange;

    fn notes(&self, f: &StorageStageFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        check_source_arg(&self.source, at)?;
        direct_route::check_route_arg(self.route.as_ref(), at)
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
        let tree = read_source_tree(probe, &source_host, &data_dir).await?;
        let states = probe.exec(&staged.state_cmd()).await?;
        let states = StagedStates::parse(&states.stdout_str())?;
        let partial = states.kept_part().unwrap_or(0);
        let taken = states.taken(&staged);
        // The record counts only with its artifact: a journal without it would leave the
        // import nothing to read.
        let recorded = match probe.record(&probe.host, &probe.task) {
            Some(r) if r.artifacts.contains_key(&self.record_as) => probe.own_memo(&STAGED)?,
            _ => None,
        };
        let route = direct_route::route_setting(probe, self.route.as_ref())?;
        let mut f = StorageStageFacts {
            source_host,
            data_dir,
            current: file_stamp(probe, &dest).await?,
            dest,
            tree,
            recorded,
            taken,
            partial,
            guard,
            direct: DirectFacts::new(route),
        };
        let source = probe.peer(&f.source_host).await?;
        f.direct.trust_left = direct_route::trust_left(probe).await?;
        // The probe costs a few commands on both hosts: only when a stream is due.
        if f.guard.is_none() && !staged_already(&f) {
            let unavailable = direct_route::unavailable_for(probe, &staged.work);
            direct_route::look(probe, &f.source_host, &source, unavailable, &mut f.direct).await?;
        }
        Ok(f)
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
        let mut applied = Applied::default();
        for change in changes {
            match change {
                StageChange::RemoveTrust(record) => {
                    direct_route::remove_left(ctx, record, &mut applied).await?;
                }
                StageChange::Stream(plan) => {
                    self.stream(ctx, f, plan, &mut applied).await?;
                    applied.changed = true;
                }
            }
        }
        Ok(applied)
    }
}

impl StorageStage {
    /// One stream by the planned route (a direct one refused before a byte arrived
    /// falls back when `auto` asked), restarted once if the kept prefix differs; then
    /// the checked part becomes `dest` and the artifact is recorded.
    async fn stream(
        &self,
        ctx: &TaskCtx,
        f: &StorageStageFacts,
        plan: &StreamPlan,
        applied: &mut Applied,
    ) -> Result<(), ModuleError> {
        let staged = StagedPath::of(&f.dest)?;
        let mut route = plan.route.clone();
        let mut sent = by_route(ctx, f, &staged, plan.resume_from, &route, applied).await;
        if let Err(Stage::DirectRefused(why)) = &sent {
            if !plan.may_fall_back {
                return Err(ModuleError::Precondition(format!(
                    "route = \"direct\": {why}; nothing was sent (set route = \"auto\" or \
                     \"controller\")"
                )));
            }
            applied.notes.push(format!(
                "the direct stream was refused before a byte arrived ({why}); fell back to \
                 the controller route"
            ));
            route = Route::Controller {
                reason: Some(why.clone()),
            };
            sent = by_route(ctx, f, &staged, plan.resume_from, &route, applied).await;
        }
        if let Err(Stage::PrefixDiffers(why)) = &sent {
            // The source is not what the part was cut from: start over, once.
            tracing::info!(host = %ctx.host, "not resuming the storage stream: {why}");
            remove_part(ctx, &staged).await;
            sent = by_route(ctx, f, &staged, 0, &route, applied).await;
        }
        let sent = match sent {
            Ok(sent) => sent,
            Err(Stage::PrefixDiffers(why)) => {
                return Err(ModuleError::Internal(format!(
                    "a fresh stream had a prefix: {why}"
                )))
            }
            Err(Stage::DirectRefused(why)) => {
                return Err(ModuleError::Precondition(format!(
                    "the direct stream was refused: {why}"
                )))
            }
            Err(Stage::Failed { error, keep_part }) => {
                // What arrived stays for the re-run to resume after, unless it is wrong.
                if !keep_part {
                    remove_part(ctx, &staged).await;
                }
                return Err(error);
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
        Ok(())
    }
}

/// One attempt by `route`, the route noted for the report.
async fn by_route(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
    resume_from: u64,
    route: &Route,
    applied: &mut Applied,
) -> Result<Sent, Stage> {
    match route {
        Route::Direct(target) => {
            direct::stream_direct(ctx, f, staged, resume_from, target, applied).await
        }
        Route::Controller { .. } => {
            applied.notes.push(route.describe(&f.source_host));
            stream_to_host(ctx, f, staged, resume_from).await
        }
    }
}

/// Pure: `dest` is still the archive this task made of the unchanged source.
fn staged_already(f: &StorageStageFacts) -> bool {
    f.recorded
        .as_ref()
        .is_some_and(|r| r.tree_stamp == f.tree.stamp && f.current.as_ref() == Some(&r.stamp))
}

/// Pure: remove what an earlier direct stream left, then stream unless `dest` is still
/// the archive this task made of the unchanged source.
pub fn decide(f: &StorageStageFacts) -> Result<Vec<StageChange>, ModuleError> {
    let mut changes: Vec<StageChange> = f
        .direct
        .trust_left
        .iter()
        .cloned()
        .map(StageChange::RemoveTrust)
        .collect();
    if f.guard.is_some() || staged_already(f) {
        return Ok(changes);
    }
    if !f.taken.is_empty() {
        return Err(ModuleError::Precondition(f.taken.join("; ")));
    }
    let route = choose(f.direct.route, &f.direct.probe)?;
    let part = StagedPath::of(&f.dest)?.part;
    let tee = if f.partial > 0 {
        format!("(skip the first {} bytes) | tee -a {part}", f.partial)
    } else {
        format!("tee {part}")
    };
    let command = match &route {
        Route::Controller { .. } => format!(
            "ssh {} {} | gzip (stored) | {tee} | sha256sum; mv {part} {}",
            f.source_host,
            source_tar_cmd(&f.data_dir).display(),
            f.dest
        ),
        Route::Direct(t) => format!(
            "on {}: {} | gzip (stored) | ssh -i <temporary key> -p {} {}@{} | {tee} | \
             sha256sum; mv {part} {}",
            f.source_host,
            source_tar_cmd(&f.data_dir).display(),
            t.port,
            t.user,
            t.addr,
            f.dest
        ),
    };
    changes.push(StageChange::Stream(StreamPlan {
        source_host: f.source_host.clone(),
        dest: f.dest.clone(),
        files: f.tree.files,
        resume_from: f.partial,
        may_fall_back: f.direct.route == RouteSetting::Auto,
        route,
        command,
    }));
    Ok(changes)
}

/// What was sent and checked at the far end.
struct Sent {
    bytes: u64,
    sha256: String,
    fingerprint: StorageFingerprint,
}

/// Why a stream to the host did not finish.
enum Stage {
    /// The regenerated archive does not start with the kept part (nothing was sent).
    PrefixDiffers(String),
    /// The node refused the old host's direct connection before the receiver ran.
    DirectRefused(String),
    /// Anything else; `keep_part` when what arrived may be resumed after.
    Failed { error: ModuleError, keep_part: bool },
}

impl From<ModuleError> for Stage {
    fn from(error: ModuleError) -> Self {
        Stage::Failed {
            error,
            keep_part: true,
        }
    }
}

impl From<crate::transport::TransportError> for Stage {
    fn from(e: crate::transport::TransportError) -> Self {
        Stage::from(ModuleError::from(e))
    }
}

impl From<crate::module::artifact_stream::LocalCopyError> for Stage {
    fn from(e: crate::module::artifact_stream::LocalCopyError) -> Self {
        Stage::from(ModuleError::from(e))
    }
}

async fn remove_part(ctx: &HostReader, staged: &StagedPath) {
    if let Err(e) = ctx.exec(&staged.remove_part_cmd()).await {
        tracing::warn!(host = %ctx.host, path = %staged.part, "cannot remove: {e}");
    }
}

/// The first `bytes` of the kept part, hashed on this host.
async fn kept_prefix(
    ctx: &HostReader,
    staged: &StagedPath,
    bytes: u64,
) -> Result<KeptPrefix, ModuleError> {
    let n = bytes.to_string();
    let out = ctx
        .exec_ok(
            &Cmd::new("head")
                .arg("-c")
                .arg(n.as_str())
                .arg(staged.part.as_str())
                .pipe(Cmd::new("sha256sum")),
        )
        .await?;
    Ok(KeptPrefix {
        bytes,
        sha256: first_field(&out.stdout_str()),
    })
}

/// This host's side of the stream: a fresh part (created new in ferry's directory) or
/// the kept one appended to; prints the sha256 of what it wrote.
fn receive_cmd(staged: &StagedPath, resume: bool) -> Cmd {
    let prepared = Cmd::new("umask").arg("077");
    let prepared = if resume {
        prepared.and(staged.check_part_cmd())
    } else {
        prepared.and(staged.prepare_cmd())
    };
    prepared.and(
        Cmd::new("tee")
            .arg("-a")
            .arg(staged.part.as_str())
            .pipe(Cmd::new("sha256sum")),
    )
}

/// The stream into `staged.part` on this host (after its first `resume_from` bytes),
/// checked there: the kept prefix hashes as regenerated, the part's size and the
/// sent bytes' sha256 are what was sent, and the source listing is what facts read.
async fn stream_to_host(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
    resume_from: u64,
) -> Result<Sent, Stage> {
    let kept = if resume_from > 0 {
        Some(kept_prefix(ctx, staged, resume_from).await?)
    } else {
        None
    };
    let mut far = ctx
        .transport
        .exec_stream(&receive_cmd(staged, kept.is_some()))
        .await?;
    let source = ctx.peer(&f.source_host).await?;
    let mut stream = source.exec_stream(&source_tar_cmd(&f.data_dir)).await?;
    // tar reads nothing from stdin.
    drop(stream.stdin);
    let mut tee = LocalCopy::open(ctx, "packagist_storage.tar.gz".as_ref()).await?;
    let progress = |n: u64| ctx.progress("packagist_storage", n, Some(f.tree.tar_bytes.max(n)));
    let pumped = pump_tar_as_gzip_after(
        &mut stream.stdout,
        &mut far.stdin,
        tee.as_mut(),
        progress,
        kept.as_ref(),
    )
    .await;
    // EOF to the far end in every case, then its verdict.
    let _ = far.stdin.shutdown().await;
    drop(far.stdin);
    let mut printed = Vec::new();
    let read = far.stdout.read_to_end(&mut printed).await;
    let exit = far.exit.await?;
    let far_err = String::from_utf8_lossy(&exit.stderr).to_string();
    if is_disk_full(&far_err) {
        return Err(disk_full(ctx, f, staged, &far_err).await.into());
    }
    if exit.status == Some(NAME_TAKEN_EXIT) {
        return Err(Stage::Failed {
            error: safe_write_error(
                ctx,
                &format!("write {}", staged.part),
                &crate::transport::ExecOutput {
                    status: exit.status,
                    stdout: printed,
                    stderr: exit.stderr,
                },
            ),
            // Not ours: never touched.
            keep_part: true,
        });
    }
    let pumped = match pumped {
        Err(e @ TarStreamError::PrefixMismatch { .. }) => {
            return Err(Stage::PrefixDiffers(e.to_string()))
        }
        other => other.map_err(|e| tar_stream_error(&f.source_host, &ctx.host, e))?,
    };
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
        }
        .into());
    }
    read.map_err(|source| ModuleError::Io {
        what: format!("reading what host {} wrote", ctx.host),
        source,
    })?;
    let far_sha = first_field(&String::from_utf8_lossy(&printed));
    let size = part_size(ctx, staged).await?;
    if exit.status != Some(0) || far_sha != pumped.sent_sha256 || size != pumped.bytes.to_string() {
        return Err(Stage::Failed {
            error: ModuleError::ProofMismatch {
                what: format!("the archive {} on host {}", staged.part, ctx.host),
                detail: format!(
                    "it has {size} bytes and the {sent} bytes written after byte {resume_from} \
                     hash to {far_sha} (exit {:?}), but {} bytes were made and those sent \
                     hash to {}{}",
                    exit.status,
                    pumped.bytes,
                    pumped.sent_sha256,
                    if far_err.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", ctx.secrets.mask(far_err.trim()))
                    },
                    sent = pumped.bytes.saturating_sub(resume_from),
                ),
            },
            // A wrong part must not be resumed after.
            keep_part: false,
        });
    }
    // The source must not have changed while it was read.
    source_unchanged(&source, f).await?;
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

/// The source's listing is still what facts read: the storage did not change while it
/// was streamed (either route).
async fn source_unchanged(
    source: &std::sync::Arc<dyn crate::transport::Transport>,
    f: &StorageStageFacts,
) -> Result<(), Stage> {
    let after = source.exec(&listing_cmd(&f.data_dir), None).await?;
    if parse_listing(&after.stdout_str()).stamp != f.tree.stamp {
        return Err(Stage::Failed {
            error: ModuleError::Precondition(format!(
                "the storage in {} on {} changed while it was streamed (is the old app \
                 stopped?); nothing was staged, re-run once it is quiet",
                f.data_dir, f.source_host
            )),
            keep_part: false,
        });
    }
    Ok(())
}

/// The first word of a command's output (`sha256sum`'s hash), or "".
fn first_field(text: &str) -> String {
    text.split_whitespace().next().unwrap_or("").to_string()
}

/// The part's size on this host as `stat` prints it ("" when there is none).
async fn part_size(ctx: &HostReader, staged: &StagedPath) -> Result<String, ModuleError> {
    let out = ctx
        .exec(
            &Cmd::new("stat")
                .arg("-c")
                .arg("%s")
                .arg(staged.part.as_str()),
        )
        .await?;
    Ok(out.stdout_str().trim().to_string())
}

/// The error of a stream that filled this host's disk (either route): what is needed,
/// what is free, and that the part is kept for the re-run.
async fn disk_full(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
    far_err: &str,
) -> ModuleError {
    let free = disk_free_text(ctx, &staged.dir).await;
    ModuleError::DiskFull(format!(
        "No space left on device on host {host} writing {part}: the archive needs about \
         {need} bytes; now {free}. What arrived is kept and nothing else was deleted \
         (the old host's storage and what is already restored stay); free space there, \
         or set `node_staging_dir` to a larger disk, and re-run: the stream resumes \
         after the kept part. ({e})",
        host = ctx.host,
        part = staged.part,
        need = f.tree.tar_bytes,
        e = far_err.trim(),
    ))
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

mod direct;

#[cfg(test)]
#[path = "storage_stage_tests.rs"]
mod tests;
