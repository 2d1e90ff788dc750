//! `redis_restore_openebs`: put the Redis backup onto the new Redis's OpenEBS LocalPV
//! hostpath volume so that Redis really loads it, and prove it by key counts.
//!
//! ```toml
//! [task.redis_restore_openebs]
//! artifact = "packagist_redis"
//! statefulset = "redis"
//! pvc = "redis-data-redis-0"
//! port = 9869
//! ```
//!
//! The volume's directory comes from the cluster, not from a hard-coded path: the PVC's
//! `spec.volumeName`, then that PV's `spec.local.path` (or `hostPath.path`). The live
//! persistence settings are read before Redis is stopped, and the file layout follows
//! them ([`redis_layout`](crate::packagist::redis_layout)): with `appendonly yes` the RDB
//! becomes the AOF's base, so Redis does not start empty and overwrite the backup.
//! The RDB is streamed to the node and checked (sha256) before Redis is stopped, so the
//! downtime is only the file moves and the restart.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::command::Cmd;
use crate::fingerprint::RedisKeyCounts;
use crate::k8s::{kubectl, kubectl_exec, pod_ready, Cluster, PodSet, PodsWanted, WorkloadKind};
use crate::module::artifact::{artifact_fingerprint, find_artifact};
use crate::module::artifact_stream::stream_artifact;
use crate::module::kube::{k8s_args, pod_exec, K8sArgs};
use crate::module::staged::StagedPath;
use crate::module::units::Seconds;
use crate::module::{Applied, Change, Module, ModuleError, Prediction, Probe, Store, TaskCtx};
use crate::packagist::attempt::{attempt_proven, attempt_started, interrupted_attempt};
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::packagist::redis::{pod_redis_key_counts, redis_cli};
use crate::packagist::redis_layout::{
    parse_process_id, restore_plan, ConfigParseError, FileOp, FileOwner, RedisPersistence,
    CONFIG_GET_ARGS,
};
use crate::playbook::template::Template;
use crate::redis_keys::unix_now;

fn default_artifact() -> String {
    "packagist_redis".into()
}

k8s_args! {
    pub struct RedisRestoreOpenebs {
        #[serde(default = "default_artifact")]
        pub artifact: String,
        /// The artifact a `transfer` task made of the RDB on this host: copied from
        /// there on the node when it holds the RDB's bytes (else streamed from the old
        /// host through the laptop).
        pub node_copy: Option<String>,
        pub statefulset: Option<Template>,
        pub pvc: Option<Template>,
        pub container: Option<Template>,
        /// Redis's port in the pod (Private Packagist uses 9869).
        pub port: Option<u16>,
        pub timeout: Option<Seconds>,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisRestoreFacts {
    pub namespace: String,
    pub statefulset: String,
    pub pod: String,
    pub container: Option<String>,
    pub port: u16,
    pub pvc: String,
    pub pv: Option<String>,
    /// The PV's directory on the node.
    pub pv_path: Option<String>,
    pub pod_ready: bool,
    pub persistence: Option<RedisPersistence>,
    pub source: Option<RedisKeyCounts>,
    pub current: Option<RedisKeyCounts>,
    pub guard: Option<String>,
    /// Check mode before the backup ran: the source will exist in a real run.
    pub source_pending: bool,
    /// The journal says the last restore started and was never proven (see
    /// [`interrupted_attempt`]): restore again even if the key counts match.
    pub interrupted: bool,
    /// The laptop's clock (unix seconds), against the backup's TTL census.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisRestoreChange {
    pub pv_path: String,
    /// The file layout, when the settings are known now (else read before stopping).
    pub layout: Option<Vec<FileOp>>,
    pub kubectl: Vec<String>,
    /// The last restore was interrupted before it was proven.
    pub retry: bool,
}

impl Change for RedisRestoreChange {
    fn predicts(&self) -> Vec<Prediction> {
        vec![Prediction::Restored(Store::Redis)]
    }

    fn describe(&self) -> String {
        let target = match &self.layout {
            Some(ops) => ops
                .iter()
                .filter_map(|o| match o {
                    FileOp::WriteRdb { path } => Some(path.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(" and "),
            None => "the layout its live settings ask for".into(),
        };
        format!(
            "replace the Redis data in {} with the backup (as {target}), removing any AOF{}",
            self.pv_path,
            if self.retry {
                "; again: the last restore was interrupted before it was proven"
            } else {
                ""
            }
        )
    }
    fn commands(&self) -> Vec<String> {
        self.kubectl.clone()
    }
}

impl RedisRestoreOpenebs {
    fn timeout(&self) -> Duration {
        self.timeout
            .map_or(Duration::from_secs(300), Seconds::duration)
    }

    /// Scale the StatefulSet (its `pods`) to 1 and wait until its pod is ready and Redis
    /// answers PING.
    async fn start_redis(
        &self,
        cluster: &Cluster,
        f: &RedisRestoreFacts,
        pods: &PodSet,
    ) -> Result<(), ModuleError> {
        cluster
            .scale(WorkloadKind::StatefulSet, &f.statefulset, 1)
            .await?;
        cluster
            .wait_pods(pods, PodsWanted::Ready(1), self.timeout())
            .await?;
        wait_pong(cluster, f, self.timeout()).await
    }
}

async fn read_counts(
    cluster: &Cluster,
    f: &RedisRestoreFacts,
) -> Result<RedisKeyCounts, ModuleError> {
    pod_redis_key_counts(cluster, &f.pod, f.container.as_deref(), f.port).await
}

fn redis_remote(f: &RedisRestoreFacts) -> impl Fn(ConfigParseError) -> ModuleError + '_ {
    move |e| ModuleError::Remote {
        what: format!("redis in {}", f.pod),
        detail: e.to_string(),
    }
}

/// The live persistence settings (`CONFIG GET`), without the owner: facts need only
/// these, and a no-op re-run must not pay for more.
async fn read_persistence(
    cluster: &Cluster,
    f: &RedisRestoreFacts,
) -> Result<RedisPersistence, ModuleError> {
    let out = pod_exec(
        cluster,
        &f.pod,
        f.container.as_deref(),
        &redis_cli(f.port, &CONFIG_GET_ARGS),
        None,
    )
    .await?;
    RedisPersistence::parse_config_get(&String::from_utf8_lossy(&out)).map_err(redis_remote(f))
}

/// Who redis-server runs as, read off its process while it runs: the restored files
/// must be its own, and an exec's own user may differ (images that drop from root).
async fn read_owner(cluster: &Cluster, f: &RedisRestoreFacts) -> Result<FileOwner, ModuleError> {
    let remote = redis_remote(f);
    let info = pod_exec(
        cluster,
        &f.pod,
        f.container.as_deref(),
        &redis_cli(f.port, &["INFO", "server"]),
        None,
    )
    .await?;
    let pid = parse_process_id(&String::from_utf8_lossy(&info)).map_err(&remote)?;
    let stat: Vec<String> = vec![
        "stat".into(),
        "-c".into(),
        "%u:%g".into(),
        format!("/proc/{pid}"),
    ];
    let owner = pod_exec(cluster, &f.pod, f.container.as_deref(), &stat, None).await?;
    FileOwner::parse_stat(&String::from_utf8_lossy(&owner)).map_err(remote)
}

/// Wait until Redis answers PONG (while loading a large dataset it answers LOADING).
async fn wait_pong(
    cluster: &Cluster,
    f: &RedisRestoreFacts,
    timeout: Duration,
) -> Result<(), ModuleError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ok = pod_exec(
            cluster,
            &f.pod,
            f.container.as_deref(),
            &redis_cli(f.port, &["PING"]),
            None,
        )
        .await
        .map(|o| String::from_utf8_lossy(&o).trim() == "PONG")
        .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ModuleError::Timeout {
                what: format!("Redis in {} did not answer PING", f.pod),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A PV directory we are willing to write into.
fn checked_pv_path(path: &str) -> Result<&str, ModuleError> {
    let p = std::path::Path::new(path);
    let ok = p.is_absolute()
        && p.components().count() >= 3
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if ok {
        Ok(path)
    } else {
        Err(ModuleError::Precondition(format!(
            "refusing to write Redis data into {path:?}: not a plausible volume directory"
        )))
    }
}

/// Where the RDB is staged on the node: in ferry's own directory in the volume
/// (`<dir>/.ferry`, mode 0700). The volume directory belongs to Redis's user, who could
/// have put a symlink at any name there; nothing is written through one: every file is
/// made in ferry's directory and renamed into place (a rename replaces a symlink).
pub fn staged_rdb(dir: &str) -> Result<StagedPath, ModuleError> {
    StagedPath::of(&format!("{dir}/.ferry-restore.rdb"))
}

/// The node-side script that applies `ops` in `dir` from the staged RDB `staged`. Runs
/// with Redis stopped. Files are written in ferry's work directory and renamed over
/// their names in `dir`; the work directory is removed before the volume is given back
/// to Redis's user.
pub fn node_script(
    dir: &str,
    staged: &StagedPath,
    ops: &[FileOp],
    owner: Option<FileOwner>,
) -> Cmd {
    let at = |rel: &str| format!("{dir}/{rel}");
    // One temporary per file, in ferry's directory (same filesystem: the rename is atomic).
    let tmp = |rel: &str| format!("{}/{}.ferry-tmp", staged.work, rel.replace('/', "_"));
    let mut script = Cmd::new("set").arg("-e");
    for op in ops {
        let step = match op {
            FileOp::Remove { path } => Cmd::new("rm").arg("-rf").arg("--").arg(at(path)),
            FileOp::MakeDir { path } => Cmd::new("mkdir").arg("-p").arg(at(path)),
            FileOp::WriteRdb { path } => {
                Cmd::new("cp").arg(staged.part.as_str()).arg(tmp(path)).and(
                    Cmd::new("mv")
                        .arg("-f")
                        .arg("-T")
                        .arg(tmp(path))
                        .arg(at(path)),
                )
            }
            FileOp::WriteText { path, content } => Cmd::new("printf")
                .arg("%s")
                .arg(content.as_str())
                .op(">")
                .arg(tmp(path))
                .and(
                    Cmd::new("mv")
                        .arg("-f")
                        .arg("-T")
                        .arg(tmp(path))
                        .arg(at(path)),
                ),
        };
        script = script.then(step);
    }
    // Redis in the pod must own what it loads and the AOF directory it appends to: the
    // owner redis-server runs as (uid 999 in the official image, on a root-owned 0777
    // OpenEBS directory), else the volume directory's. `chown -R` does not follow
    // symlinks. ferry's directory goes first, with the staged RDB in it.
    let owner = match owner {
        Some(o) => o.to_string(),
        None => format!("--reference={dir}"),
    };
    script = script
        .then(
            Cmd::new("rm")
                .arg("-rf")
                .arg("--")
                .arg(staged.work.as_str()),
        )
        .then(Cmd::new("chown").arg("-R").arg(owner).arg(dir))
        .then(Cmd::new("sync"));
    // The work directory is checked to be ferry's before anything is written.
    Cmd::new("sh")
        .arg("-c")
        .arg_cmd(&staged.check_part_cmd().and(script_in_subshell(script)))
}

/// `( script )`-like grouping for `set -e` scripts: run them in their own `sh -c`.
fn script_in_subshell(script: Cmd) -> Cmd {
    Cmd::new("sh").arg("-c").arg_cmd(&script)
}

#[async_trait]
impl Module for RedisRestoreOpenebs {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::artifact_stream::VARS,
    ];
    type Facts = RedisRestoreFacts;
    type Change = RedisRestoreChange;

    /// The completed-migration guard's reason, when it leaves the store alone.
    fn notes(&self, f: &RedisRestoreFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<RedisRestoreFacts, ModuleError> {
        let cluster = self.k8s().cluster(probe).await?;
        let marker = completed_marker(&cluster).await?;
        let statefulset = probe.render_or(&self.statefulset, "redis")?;
        let pvc = match &self.pvc {
            Some(t) => probe.render_operand(t)?,
            None => format!("redis-data-{statefulset}-0"),
        };
        let pv = cluster
            .pvc(&pvc)
            .await?
            .and_then(|p| p.spec.and_then(|s| s.volume_name));
        let pv_path = match &pv {
            Some(name) => cluster.pv(name).await?.and_then(|pv| {
                let spec = pv.spec?;
                spec.local
                    .map(|l| l.path)
                    .or_else(|| spec.host_path.map(|h| h.path))
            }),
            None => None,
        };
        let pod = format!("{statefulset}-0");
        let ready = cluster
            .pods(
                &cluster
                    .workload(WorkloadKind::StatefulSet, &statefulset)
                    .await?
                    .1,
            )
            .await?
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(pod.as_str()) && pod_ready(p));
        let mut f = RedisRestoreFacts {
            namespace: cluster.namespace().to_string(),
            statefulset,
            pod,
            // Named on every exec: the API server refuses an exec without one into a pod
            // with several containers (a sidecar).
            container: Some(probe.render_or(&self.container, "redis")?),
            port: self.port.unwrap_or(9869),
            pvc,
            pv,
            pv_path,
            pod_ready: ready,
            persistence: probe.own_fingerprint("persistence"),
            source: artifact_fingerprint(probe, &self.artifact, "redis_keys"),
            current: None,
            guard: completed_guard(probe, &marker, "redis"),
            source_pending: false,
            interrupted: interrupted_attempt(probe),
            now: unix_now(),
        };
        f.source_pending = f.source.is_none() && probe.predicted_artifact(&self.artifact);
        if ready && f.guard.is_none() {
            f.current = read_counts(&cluster, &f).await.ok();
            if let Ok(p) = read_persistence(&cluster, &f).await {
                f.persistence = Some(p);
            }
        }
        Ok(f)
    }

    fn decide(&self, f: &RedisRestoreFacts) -> Result<Vec<RedisRestoreChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &RedisRestoreFacts,
        changes: &[RedisRestoreChange],
    ) -> Result<Applied, ModuleError> {
        let Some(change) = changes.first() else {
            return Ok(Applied::default());
        };
        let dir = checked_pv_path(&change.pv_path)?.to_string();
        ctx.confirm_destructive(&format!(
            "replace the new Redis's data in {dir} (PVC {}) with the backup",
            f.pvc
        ))?;
        let cluster = self.k8s().cluster(ctx).await?;
        let (_, pods) = cluster
            .workload(WorkloadKind::StatefulSet, &f.statefulset)
            .await?;
        // 1. The live settings decide the layout: read them while Redis runs.
        let mut persistence = match &f.persistence {
            Some(p) => p.clone(),
            None => {
                self.start_redis(&cluster, f, &pods).await?;
                read_persistence(&cluster, f).await?
            }
        };
        // The owner too, while Redis still runs (it runs when the facts read the
        // settings, or was just started); a journal's settings already carry it, and
        // one of an older ferry without it keeps the volume directory's owner.
        if persistence.owner.is_none() && (f.pod_ready || f.persistence.is_none()) {
            persistence.owner = Some(read_owner(&cluster, f).await?);
        }
        ctx.record_fingerprint(
            "persistence",
            serde_json::to_value(&persistence).unwrap_or_default(),
        )?;
        // 2. Stage the RDB on the node, checked, while Redis still runs.
        let artifact = find_artifact(ctx, &self.artifact)?;
        let staged = staged_rdb(&dir)?;
        // Created new in ferry's 0700 directory: a link Redis's user put in the volume
        // is never written through.
        let stage = Cmd::new("set")
            .arg("-o")
            .arg("pipefail")
            .then(Cmd::new("umask").arg("077"))
            .then(
                staged.prepare_scratch_cmd().and(
                    Cmd::new("tee")
                        .arg("-a")
                        .arg(staged.part.as_str())
                        .pipe(Cmd::new("sha256sum")),
                ),
            );
        let node_copy = self
            .node_copy
            .as_deref()
            .and_then(|name| find_artifact(ctx, name).ok())
            .filter(|c| {
                c.host == ctx.host && c.sha256 == artifact.sha256 && c.size == artifact.size
            });
        let (sent_sha, far, exit) = match node_copy {
            // On the node: a local copy, nothing through the laptop.
            Some(copy) => {
                let out = ctx
                    .exec(
                        &Cmd::new("bash")
                            .arg("-c")
                            .arg_cmd(&stage)
                            .op("<")
                            .arg(copy.path.as_str()),
                    )
                    .await?;
                (
                    artifact.sha256.clone(),
                    out.stdout_str().to_string(),
                    (out.status, out.stderr),
                )
            }
            None => {
                let mut stream = ctx
                    .transport
                    .exec_stream(&Cmd::new("bash").arg("-c").arg_cmd(&stage))
                    .await?;
                let mut stdout = stream.stdout;
                let read_hash = async move {
                    let mut s = String::new();
                    stdout.read_to_string(&mut s).await.map(|_| s)
                };
                let (pumped, far) = tokio::join!(
                    stream_artifact(
                        ctx,
                        &artifact,
                        0,
                        sha2::Sha256::default(),
                        &mut stream.stdin
                    ),
                    read_hash
                );
                let pumped = pumped?;
                let exit = stream.exit.await?;
                let far = far.map_err(|source| ModuleError::Io {
                    what: "reading the node's checksum".into(),
                    source,
                })?;
                (pumped.sha256, far, (exit.status, exit.stderr))
            }
        };
        let far_sha = far.split_whitespace().next().unwrap_or("");
        if exit.0 != Some(0) || far_sha != artifact.sha256 || sent_sha != artifact.sha256 {
            let _ = ctx.exec(&staged.remove_part_cmd()).await;
            return Err(ModuleError::Remote {
                what: format!(
                    "staging the RDB on the node failed or was corrupted (sent {sent_sha}, node has {far_sha:?}, recorded {})",
                    artifact.sha256,
                ),
                detail: String::from_utf8_lossy(&exit.1).trim().to_string(),
            });
        }
        // 3. Stop Redis, lay the files out, start it.
        attempt_started(ctx)?;
        cluster
            .scale(WorkloadKind::StatefulSet, &f.statefulset, 0)
            .await?;
        cluster
            .wait_pods(&pods, PodsWanted::Gone, self.timeout())
            .await?;
        ctx.exec_ok(&node_script(
            &dir,
            &staged,
            &restore_plan(&persistence),
            persistence.owner,
        ))
        .await?;
        self.start_redis(&cluster, f, &pods).await?;
        // 4. Prove it.
        let after = read_counts(&cluster, f).await?;
        if let Some(source) = &f.source {
            let diff = after.diff_at(source, unix_now());
            if !diff.is_empty() {
                return Err(ModuleError::ProofMismatch {
                    what: "the restored Redis".into(),
                    detail: format!(
                        "Redis did not load the backup (appendonly {}): {}",
                        if persistence.appendonly { "yes" } else { "no" },
                        diff.join("; ")
                    ),
                });
            }
        }
        ctx.record_fingerprint(
            "redis_keys",
            serde_json::to_value(&after).unwrap_or_default(),
        )?;
        attempt_proven(ctx)?;
        Ok(Applied::changed())
    }
}

/// Pure: restore unless the target's key counts already equal the backup's (database 5,
/// the Composer cache, is not compared: it is flushed after the restore).
pub fn decide(f: &RedisRestoreFacts) -> Result<Vec<RedisRestoreChange>, ModuleError> {
    if f.guard.is_some() {
        return Ok(Vec::new());
    }
    match (&f.source, &f.current) {
        (Some(source), Some(current))
            if current
                .without_db(5)
                .diff_at(&source.without_db(5), f.now)
                .is_empty()
                && !f.interrupted =>
        {
            return Ok(Vec::new())
        }
        (Some(_), _) => {}
        (None, _) if f.source_pending => {}
        (None, _) => {
            return Err(ModuleError::Precondition(
                "no source key counts: the redis_backup task on the old host has not run".into(),
            ))
        }
    }
    let Some(pv_path) = &f.pv_path else {
        return Err(ModuleError::Precondition(format!(
            "PVC {} has no bound local/hostPath volume: cannot find Redis's data directory",
            f.pvc
        )));
    };
    let sts = format!("statefulset/{}", f.statefulset);
    Ok(vec![RedisRestoreChange {
        retry: f.interrupted,
        pv_path: pv_path.clone(),
        layout: f.persistence.as_ref().map(restore_plan),
        kubectl: vec![
            kubectl(
                &f.namespace,
                &["get", "pvc", &f.pvc, "-o", "jsonpath={.spec.volumeName}"],
            ),
            kubectl_exec(
                &f.namespace,
                &f.pod,
                f.container.as_deref(),
                false,
                &[
                    "redis-cli",
                    "-p",
                    &f.port.to_string(),
                    "CONFIG",
                    "GET",
                    "appendonly",
                ],
            ),
            kubectl(&f.namespace, &["scale", &sts, "--replicas=0"]),
            kubectl(&f.namespace, &["scale", &sts, "--replicas=1"]),
        ],
    }])
}

#[cfg(test)]
#[path = "redis_restore_openebs_tests.rs"]
mod tests;
