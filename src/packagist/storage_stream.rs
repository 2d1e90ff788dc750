//! `storage_stream`: the blob storage, old host → laptop → the `ui` pod, in one pass.
//!
//! ```toml
//! [task.storage_stream]
//! source = "packagist_old"          # inventory host or group (exactly one host)
//! data_dir = "/data/packagist"      # on the source; default: the source host's
//!                                   # `data_dir` var, else this play's, else this
//! deployment = "ui"
//! container = "ui"
//! archive = "/tmp/packagist_storage.tar.gz"   # in the container, removed after import
//! verify_dir = "/data/packagist"              # "" when the storage is not a directory there
//! timeout = 3600                              # seconds (or "1h") for the vendor's import
//! ```
//!
//! What `storage_export` + `storage_import` do in three passes over the bytes (archive
//! written on the old host, read again to send it, then imported), this does in one:
//!
//! - the old host runs the vendor's tar fallback (`tar -c` of `composer` and `artifacts`
//!   renamed `dist` and `artifact`), uncompressed, to stdout;
//! - the laptop reads that stream once and, at the same time, (a) hashes every file in it
//!   (the source fingerprint, no second read on the old host), (b) wraps it in gzip
//!   *stored* blocks (the vendor's import wants a `.tar.gz`; dist files are zips, so
//!   deflating them again would only burn CPU on the critical path), (c) sends that to
//!   the pod, where `tee part | sha256sum` writes it once and hashes it (the part is
//!   created new in ferry's 0700 directory beside the archive, `<dir>/.ferry`; a name
//!   there that ferry did not create fails the task), and (d) copies
//!   it to `backup_dir` on the laptop when that var is set;
//! - the pod's hash and size must equal what was sent; then the vendor's import runs on
//!   the archive (the one file the procedure needs, written once, at the far end), the
//!   archive is removed, and the imported files' hashes must equal the streamed ones.
//!
//! The source tree's listing (paths, sizes, times) is taken before and after the stream:
//! if anything changed while streaming, the task fails instead of importing a mix.
//! Not resumable mid-stream: an interrupted upload is removed and the re-run streams
//! again from the start (the source is the old host's live storage dir, which ferry
//! never modifies, so nothing is lost).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::command::Cmd;
use crate::fingerprint::StorageFingerprint;
use crate::k8s::{kubectl, Cluster};
use crate::module::artifact::is_disk_full;
use crate::module::artifact_stream::LocalCopy;
use crate::module::kube::{pod_exec, pod_free_text, sh_argv as sh, K8sArgs};
use crate::module::staged::StagedPath;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::packagist::blob_store::BLOB_STORE;
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::packagist::import_target::{ui_import_args, ImportTarget, UiImportArgs};
use crate::packagist::storage::{import_storage_archive, pod_upload_cmd};
use crate::playbook::template::{Template, Vars};
use crate::stream::PumpError;

/// The name progress events and the laptop's copy use.
const ARTIFACT: &str = "packagist_storage";
/// The journal fingerprint this task records once the import is proven.
const RECORD_KEY: &str = "streamed_storage";

ui_import_args! {
    pub struct StorageStream {
        /// Inventory host, or a group with exactly one host, holding the storage.
        pub source: Template,
        pub data_dir: Option<Template>,
    }
}

/// What an earlier run of this task streamed and proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamedRecord {
    /// The source tree's listing digest when it was streamed.
    pub tree_stamp: String,
    /// The streamed files' fingerprint digest (= the imported files').
    pub digest: String,
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageStreamFacts {
    pub source_host: String,
    pub data_dir: String,
    /// The ui pod, the staging path and where the import is proven.
    pub target: ImportTarget,
    /// The source tree now: listing digest and the expected tar size (for progress).
    pub tree: SourceTree,
    pub recorded: Option<StreamedRecord>,
    /// The pod's files now; only read when the record says this was done before.
    pub current: Option<StorageFingerprint>,
    pub guard: Option<String>,
}

/// The source tree, from one `find` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceTree {
    /// sha256 of the sorted listing (type, size, mtime, path per entry).
    pub stamp: String,
    pub files: u64,
    /// What `tar -c` will produce, roughly (headers and block padding included).
    pub tar_bytes: u64,
}

impl SourceTree {
    /// The facts of a step the completed-migration guard leaves alone: the tree was not
    /// listed (its stamp matches no record).
    pub fn not_read() -> SourceTree {
        SourceTree {
            stamp: "not read: the migration completed".into(),
            files: 0,
            tar_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamChange {
    pub source_host: String,
    pub pod: String,
    pub files: u64,
    pub commands: Vec<String>,
}

impl Change for StreamChange {
    fn describe(&self) -> String {
        format!(
            "stream the storage ({} files) from {} into {} and import it",
            self.files, self.source_host, self.pod
        )
    }
    fn commands(&self) -> Vec<String> {
        self.commands.clone()
    }
}

/// Host var (set by ferry): every host's vars, by host.
pub const HOSTVARS: crate::module::VarDecl =
    crate::module::VarDecl::new("hostvars", crate::module::VarKind::Object);
/// Host var (set by ferry): the hosts of every group.
pub const GROUPS: crate::module::VarDecl =
    crate::module::VarDecl::new("groups", crate::module::VarKind::Object);
/// Host var: where the old host keeps the Packagist data (default /data/packagist; also
/// read from the source's vars).
pub const DATA_DIR: crate::module::VarDecl =
    crate::module::VarDecl::new("data_dir", crate::module::VarKind::Str);

/// `source` as one inventory host: a host name, or a group with exactly one member.
/// Needs only the vars (`hostvars`, `groups`): checked before any host is contacted.
pub(crate) fn resolve_source(vars: &Vars, source: &str) -> Result<String, ModuleError> {
    let is_host = HOSTVARS
        .get(vars)?
        .and_then(Value::as_object)
        .is_some_and(|h| h.contains_key(source));
    if is_host {
        return Ok(source.to_string());
    }
    let members: Vec<String> = GROUPS
        .get(vars)?
        .and_then(|g| g.get(source))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    match members.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ModuleError::Precondition(format!(
            "source `{source}` is neither a host nor a group of the inventory"
        ))),
        many => Err(ModuleError::Precondition(format!(
            "source `{source}` names {} hosts ({}); the storage must come from exactly one",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// The source's storage dir: `data_dir` if given, else the source host's `data_dir`
/// var, else this host's, else the vendor's `/data/packagist`.
pub(crate) fn source_data_dir(
    probe: &Probe<'_>,
    data_dir: &Option<Template>,
    source_host: &str,
) -> Result<String, ModuleError> {
    Ok(match data_dir {
        Some(t) => probe.render_operand(t)?,
        None => probe
            .var_of(&HOSTVARS)?
            .and_then(|h| h.get(source_host))
            .and_then(|v| v.get("data_dir"))
            .or(probe.var_of(&DATA_DIR)?)
            .and_then(Value::as_str)
            .unwrap_or("/data/packagist")
            .to_string(),
    })
}

/// `source` names one inventory host (checked before any host is contacted).
pub(crate) fn check_source_arg(source: &Template, at: &ArgCheck<'_>) -> Result<(), ArgError> {
    // Rendering errors are the template pass's to report.
    let Ok(name) = at.renderer.render_operand(source, at.vars) else {
        return Ok(());
    };
    resolve_source(at.vars, &name)
        .map(drop)
        .map_err(|e| ArgError::template(source, e.to_string()))
}

/// The source tree as it is now on `source_host`, from one listing.
pub(crate) async fn read_source_tree(
    probe: &HostReader,
    source_host: &str,
    data_dir: &str,
) -> Result<SourceTree, ModuleError> {
    let source = probe.peer(source_host).await?;
    let listing = source.exec(&listing_cmd(data_dir), None).await?;
    if !listing.success() {
        return Err(ModuleError::Remote {
            what: format!("cannot list the storage in {data_dir} on {source_host}"),
            detail: probe.secrets.mask(listing.stderr_str().trim()),
        });
    }
    Ok(parse_listing(&listing.stdout_str()))
}

/// A failed tar pump as the operator's error: which end failed (`source_host` read,
/// `dest_host` written, the laptop's copy) or that the stream was no tar.
pub(crate) fn tar_stream_error(source_host: &str, dest: &str, e: TarStreamError) -> ModuleError {
    match e {
        TarStreamError::Pump(PumpError::Read(source)) => ModuleError::Io {
            what: format!("streaming the storage from host {source_host} failed"),
            source,
        },
        TarStreamError::Pump(PumpError::Write(source)) => ModuleError::Io {
            what: format!("streaming the storage into {dest} failed"),
            source,
        },
        TarStreamError::Pump(PumpError::Tee(source)) => ModuleError::Io {
            what: "writing the laptop's copy failed".into(),
            source,
        },
        TarStreamError::Archive(detail) => ModuleError::Remote {
            what: format!("the tar stream from host {source_host} is not a valid archive"),
            detail,
        },
        e @ TarStreamError::PrefixMismatch { .. } => ModuleError::Precondition(format!(
            "cannot resume the storage stream into {dest}: {e}; the part is removed and \
             the next run streams from the start"
        )),
    }
}

#[async_trait]
impl Module for StorageStream {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::artifact_stream::VARS,
        &[&HOSTVARS, &GROUPS, &DATA_DIR, &BLOB_STORE],
    ];
    type Facts = StorageStreamFacts;
    type Change = StreamChange;

    /// The completed-migration guard's reason, when it leaves the store alone.
    fn notes(&self, f: &StorageStreamFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        check_source_arg(&self.source, at)
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<StorageStreamFacts, ModuleError> {
        let source_host = resolve_source(&probe.vars, &probe.render_operand(&self.source)?)?;
        let data_dir = source_data_dir(probe, &self.data_dir, &source_host)?;
        let cluster = self.k8s().cluster(probe).await?;
        let marker = completed_marker(&cluster).await?;
        let (target, blob_store) = ImportTarget::read(probe, &cluster, &self.ui_import()).await?;
        let guard = completed_guard(probe, &marker, "storage");
        // Left alone after a completed migration: nothing is decided from the source
        // tree, and listing a large storage over a slow link takes seconds.
        let tree = match guard {
            Some(_) => SourceTree::not_read(),
            None => read_source_tree(probe, &source_host, &data_dir).await?,
        };
        let recorded: Option<StreamedRecord> = probe
            .record(&probe.host, &probe.task)
            .and_then(|r| r.fingerprints.get(RECORD_KEY).cloned())
            .and_then(|v| serde_json::from_value(v).ok());
        let mut f = StorageStreamFacts {
            source_host,
            data_dir,
            target,
            tree,
            recorded,
            current: None,
            guard,
        };
        // Hashing the pod's files is only worth it when they may already be the source's.
        let maybe_done = f
            .recorded
            .as_ref()
            .is_some_and(|r| r.tree_stamp == f.tree.stamp);
        if maybe_done && f.guard.is_none() {
            f.current = f
                .target
                .current(probe, &cluster, blob_store.as_ref())
                .await?;
        }
        Ok(f)
    }

    fn decide(&self, f: &StorageStreamFacts) -> Result<Vec<StreamChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &StorageStreamFacts,
        changes: &[StreamChange],
    ) -> Result<Applied, ModuleError> {
        let Some(change) = changes.first() else {
            return Ok(Applied::default());
        };
        let cluster = self.k8s().cluster(ctx).await?;
        let pod = change.pod.as_str();
        let staged = StagedPath::of(&f.target.archive)?;
        let streamed = match stream_into_pod(ctx, &cluster, f, pod, &staged).await {
            Ok(s) => s,
            Err(e) => {
                // Not resumable: do not leave gigabytes behind in the pod.
                remove_part_in_pod(&cluster, pod, &f.target.container, &staged).await;
                return Err(e);
            }
        };
        // The source must not have changed while it was read.
        let source = ctx.peer(&f.source_host).await?;
        let after = source.exec(&listing_cmd(&f.data_dir), None).await?;
        if parse_listing(&after.stdout_str()).stamp != f.tree.stamp {
            remove_part_in_pod(&cluster, pod, &f.target.container, &staged).await;
            return Err(ModuleError::Precondition(format!(
                "the storage in {} on {} changed while it was streamed (is the old app \
                 stopped?); nothing was imported, re-run once it is quiet",
                f.data_dir, f.source_host
            )));
        }
        let timeout = self.ui_import().import_timeout();
        let imported =
            import_storage_archive(&cluster, pod, &f.target.container, &staged, timeout).await;
        remove_in_pod(&cluster, pod, &f.target.container, &f.target.archive).await;
        imported?;
        // Prove it: the imported files are the streamed ones, in the bucket or the dir.
        f.target.prove(ctx, &cluster, pod, &streamed).await?;
        let record = StreamedRecord {
            tree_stamp: f.tree.stamp.clone(),
            digest: streamed.digest.clone(),
            files: streamed.files,
        };
        ctx.record_fingerprint(
            RECORD_KEY,
            serde_json::to_value(&record).unwrap_or(Value::Null),
        )?;
        Ok(f.target.applied())
    }
}

/// Pure: stream and import unless the pod already holds exactly what the unchanged
/// source held when this task last streamed it.
pub fn decide(f: &StorageStreamFacts) -> Result<Vec<StreamChange>, ModuleError> {
    if f.guard.is_some() {
        return Ok(Vec::new());
    }
    let done = match &f.recorded {
        Some(r) if r.tree_stamp == f.tree.stamp => match (f.target.is_proven(), &f.current) {
            (true, Some(current)) => current.digest == r.digest,
            (true, None) => false,
            (false, _) => true,
        },
        _ => false,
    };
    if done {
        return Ok(Vec::new());
    }
    let Some(pod) = &f.target.pod else {
        return Err(ModuleError::Precondition(
            "the ui deployment has no ready pod to import into: scale it to 1 first".into(),
        ));
    };
    // Before a byte moves: the staging path must hold the archive.
    f.target.check_room(pod, f.tree.tar_bytes)?;
    let exec = |args: &[&str]| {
        let mut argv = vec!["exec"];
        argv.extend_from_slice(args);
        kubectl(&f.target.namespace, &argv)
    };
    let [import, cleanup] = f.target.import_commands(pod);
    Ok(vec![StreamChange {
        source_host: f.source_host.clone(),
        pod: pod.clone(),
        files: f.tree.files,
        commands: vec![
            format!(
                "ssh {} {} | gzip (stored) | {}",
                f.source_host,
                source_tar_cmd(&f.data_dir).display(),
                exec(&[
                    "-i",
                    pod,
                    "-c",
                    &f.target.container,
                    "--",
                    "sh",
                    "-c",
                    &format!("tee {} | sha256sum", part_path(&f.target.archive)),
                ])
            ),
            import,
            cleanup,
        ],
    }])
}

/// Where the archive is staged in the pod (see [`StagedPath`]).
fn part_path(archive: &str) -> String {
    StagedPath::of(archive)
        .map(|s| s.part)
        .unwrap_or_else(|_| format!("{archive}.part"))
}

/// Remove the staged part, only if it is ferry's (never another user's file).
async fn remove_part_in_pod(cluster: &Cluster, pod: &str, container: &str, staged: &StagedPath) {
    let rm = staged.remove_part_cmd();
    if let Err(e) = pod_exec(cluster, pod, Some(container), &sh(&rm), None).await {
        tracing::warn!(pod, path = %staged.part, "cannot remove: {e}");
    }
}

async fn remove_in_pod(cluster: &Cluster, pod: &str, container: &str, path: &str) {
    let rm = Cmd::new("rm").arg("-f").arg(path);
    if let Err(e) = pod_exec(cluster, pod, Some(container), &sh(&rm), None).await {
        tracing::warn!(pod, path, "cannot remove: {e}");
    }
}

/// Steps 1–3: the stream itself, and the check that the pod holds what was sent.
/// Returns the fingerprint of the files in the stream.
async fn stream_into_pod(
    ctx: &TaskCtx,
    cluster: &Cluster,
    f: &StorageStreamFacts,
    pod: &str,
    staged: &StagedPath,
) -> Result<StorageFingerprint, ModuleError> {
    let part = staged.part.as_str();
    let container = Some(f.target.container.as_str());
    let upload = pod_upload_cmd(staged, false);
    let mut proc = cluster.exec(pod, container, &sh(&upload), true).await?;
    let mut sink = proc
        .stdin()
        .ok_or_else(|| ModuleError::Internal("exec without stdin".into()))?;
    let source = ctx.peer(&f.source_host).await?;
    let mut stream = source.exec_stream(&source_tar_cmd(&f.data_dir)).await?;
    // tar reads nothing from stdin.
    drop(stream.stdin);
    let mut tee = LocalCopy::open(ctx, format!("{ARTIFACT}.tar.gz").as_ref()).await?;
    let progress = |n: u64| ctx.progress(ARTIFACT, n, Some(f.tree.tar_bytes.max(n)));
    let (pumped, (out, err)) = tokio::join!(
        async {
            let r = pump_tar_as_gzip(&mut stream.stdout, &mut sink, tee.as_mut(), progress).await;
            // Whatever happened, the pod's `tee` must see EOF (or it waits forever).
            let _ = sink.shutdown().await;
            r
        },
        crate::k8s::drain(&mut proc)
    );
    let finished = crate::k8s::finish(pod, proc, &err).await;
    let err_text = String::from_utf8_lossy(&err).to_string();
    if is_disk_full(&err_text) {
        return Err(ModuleError::DiskFull(
            disk_full(ctx, cluster, f, pod, part, &err_text).await,
        ));
    }
    let pumped = pumped
        .map_err(|e| tar_stream_error(&f.source_host, &format!("{pod} on host {}", ctx.host), e))?;
    let exit = stream.exit.await.map_err(|e| ModuleError::Remote {
        what: format!(
            "tar on host {} stopped after {} bytes",
            f.source_host, pumped.tar_bytes
        ),
        detail: e.to_string(),
    })?;
    if exit.status != Some(0) {
        return Err(ModuleError::Remote {
            what: format!("tar of {} on host {} failed", f.data_dir, f.source_host),
            detail: ctx
                .secrets
                .mask(String::from_utf8_lossy(&exit.stderr).trim()),
        });
    }
    finished?;
    let far = String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let size = pod_exec(
        cluster,
        pod,
        container,
        &sh(&Cmd::new("stat").arg("-c").arg("%s").arg(part)),
        None,
    )
    .await?;
    let size = String::from_utf8_lossy(&size).trim().to_string();
    if far != pumped.sha256 || size != pumped.bytes.to_string() {
        return Err(ModuleError::ProofMismatch {
            what: format!("the archive in {pod}"),
            detail: format!(
                "it has {size} bytes and sha256 {far}, but {} bytes with \
             sha256 {} were sent{}",
                pumped.bytes,
                pumped.sha256,
                if err_text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", err_text.trim())
                }
            ),
        });
    }
    // What the pod holds checked out: the laptop's copy must be those same bytes before
    // it takes its final name (until then it is only `.part`).
    if let Some(copy) = tee {
        let stamp = copy.commit(pumped.bytes, &pumped.sha256).await?;
        tracing::info!(path = %stamp.path, "laptop copy of the storage archive written and checked");
    }
    Ok(pumped.fingerprint)
}

async fn disk_full(
    ctx: &HostReader,
    cluster: &Cluster,
    f: &StorageStreamFacts,
    pod: &str,
    part: &str,
    error: &str,
) -> String {
    let free = pod_free_text(cluster, pod, &f.target.container, part).await;
    format!(
        "No space left on device on host {host}, namespace {ns}, pod {pod} (container {c}) \
         writing {part}: the archive needs about {need} bytes (and about as much again to \
         unpack it); now {free}. The partial archive is removed and nothing else was \
         deleted (the old host's storage and what is already restored stay); free space \
         there, or set `archive` to a larger volume, and re-run. ({error})",
        host = ctx.host,
        ns = f.target.namespace,
        c = f.target.container,
        need = f.tree.tar_bytes,
    )
}

mod source_tar;
pub(crate) mod stored_gzip;
pub(crate) use source_tar::listing_cmd;
pub use source_tar::{
    parse_listing, pump_tar_as_gzip, pump_tar_as_gzip_after, source_path, source_tar_cmd,
    KeptPrefix, TarPumped, TarStreamError, VENDOR_TRANSFORM,
};

#[cfg(test)]
#[path = "storage_stream_tests.rs"]
mod tests;
