//! `preflight`: the migration's go/no-go checks, run before anything changes. It never
//! changes anything: `decide` either fails listing every failed check (each naming the
//! host, what was expected, what was found and what to do) or returns no change.
//!
//! ```toml
//! [[task]]
//! name = "Preflight (old host)"
//! hosts = "old"
//! [task.preflight]
//! role = "old"
//! # min_version = "1.12.10"            # var `packagist_version` overrides the detected one
//! # backup_dir = "{{ backup_dir_old }}" # default: var backup_dir_old
//! # data_dir = "/data/packagist"        # default: var data_dir
//!
//! [[task]]
//! name = "Preflight (new host)"
//! hosts = "new"
//! after = ["Preflight (old host)"]      # reads the old side's figures from the journal
//! [task.preflight]
//! role = "new"
//! # openebs_base = "/var/openebs/local" # default: var openebs_base
//! ```
//!
//! Old host: the app version (≥ `min_version`, from the `packagist-ui` image tag or its
//! `com.packagist.version` label), all six containers, and free disk in the backup
//! directory against the data to back up (storage + database + Redis dump, × 1.1).
//! The measured figures are recorded in the journal for the new side.
//!
//! New host: the kubeconfig is readable and the API answers, the namespace and every
//! workload exist, the `ui` deployment has a container `ui`, and free disk under the
//! OpenEBS base directory (and the staging directory, var `backup_dir_new`) against the
//! old side's data size, when the journal knows it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::Cmd;
use crate::fingerprint::Version;
use crate::k8s::{K8sError, WorkloadKind};
use crate::module::artifact::file_stamp;
use crate::module::docker::{docker_bin, docker_inspect, ContainerState};
use crate::module::kube::K8sTarget;
use crate::module::memo::{Memo, MemoValue};
use crate::module::units::{exact, human};
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::packagist::completed::completed_marker;
use crate::playbook::template::Template;

/// The version the vendor requires before migrating.
pub const MIN_VERSION: &str = "1.12.10";
/// Head room over the measured data sizes.
pub const SAFETY_FACTOR: f64 = 1.1;
/// Journal fingerprint under which the old side's figures are recorded.
pub const OLD_SIZES_KEY: &str = OLD_SIZES.name;
/// The old side's data sizes, as its preflight measured them.
pub const OLD_SIZES: Memo<DataSizes> = Memo::new("old_data_sizes");
const DEFAULT_OPENEBS_BASE: &str = "/var/openebs/local";
const DEFAULT_DATA_DIR: &str = "/data/packagist";
const VERSION_LABEL: &str = "com.packagist.version";

const DEFAULT_CONTAINERS: [&str; 6] = [
    "packagist-ui",
    "packagist-repo",
    "packagist-web",
    "packagist-worker",
    "packagist-postgres",
    "packagist-redis",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Old,
    New,
}

/// `min_version`, checked when the playbook is read.
fn checked_min_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    crate::module::checked(d, |v: &Option<String>| match v {
        Some(v) if Version::parse(v).is_none() => Err(format!(
            "min_version = {v:?} is not a version; write it like \"{MIN_VERSION}\""
        )),
        _ => Ok(()),
    })
}

/// `safety_factor`, checked when the playbook is read: the free space needed is the
/// data size times this, so less than 1 would plan for less than the data.
fn checked_safety_factor<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    crate::module::checked(d, |f: &Option<f64>| {
        match f {
        Some(f) if !(f.is_finite() && *f >= 1.0) => Err(format!(
            "safety_factor = {f}: the free space needed is the data size times this; use 1 or more (default {SAFETY_FACTOR})"
        )),
        _ => Ok(()),
    }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preflight {
    pub role: Role,
    #[serde(default, deserialize_with = "checked_min_version")]
    pub min_version: Option<String>,
    #[serde(default, deserialize_with = "checked_safety_factor")]
    pub safety_factor: Option<f64>,

    // --- old host
    /// All containers that must exist (default: the six `packagist-*`).
    #[serde(default)]
    pub containers: Option<Vec<String>>,
    #[serde(default)]
    pub ui_container: Option<String>,
    #[serde(default)]
    pub postgres_container: Option<String>,
    #[serde(default)]
    pub redis_container: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    /// Where the old Redis leaves its dump, inside its container.
    #[serde(default)]
    pub redis_rdb_path: Option<String>,
    #[serde(default)]
    pub data_dir: Option<Template>,
    #[serde(default)]
    pub backup_dir: Option<Template>,

    // --- new host
    #[serde(default)]
    pub deployments: Option<Vec<String>>,
    #[serde(default)]
    pub statefulsets: Option<Vec<String>>,
    #[serde(default)]
    pub ui_deployment: Option<String>,
    #[serde(default)]
    pub ui_app_container: Option<String>,
    #[serde(default)]
    pub openebs_base: Option<Template>,
    #[serde(default)]
    pub staging_dir: Option<Template>,
    #[serde(default)]
    pub namespace: Option<Template>,
    #[serde(default)]
    pub kubeconfig: Option<Template>,
}

/// Free space of the filesystem holding `path` (or its nearest existing parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFree {
    pub path: String,
    /// The nearest existing directory that `df` looked at.
    pub existing: String,
    pub mount: String,
    pub available: u64,
}

/// The old side's data, as measured by its preflight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSizes {
    /// `du -sb` of the data directory.
    pub storage: u64,
    /// `pg_database_size`.
    pub database: u64,
    /// The Redis dump (or its memory use when there is no dump yet).
    pub redis: u64,
}

impl DataSizes {
    pub fn total(&self) -> u64 {
        self.storage + self.database + self.redis
    }
}

/// A measurement: the value, or why it could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Measured {
    Bytes(u64),
    /// Not measurable now; the figure recorded by an earlier run is used.
    Recorded(u64),
    Unknown(String),
}

impl Measured {
    fn bytes(&self) -> Option<u64> {
        match self {
            Measured::Bytes(b) | Measured::Recorded(b) => Some(*b),
            Measured::Unknown(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OldFacts {
    pub host: String,
    pub min_version: String,
    pub ui_container: String,
    /// `docker inspect` of every required container that exists.
    pub containers: BTreeMap<String, ContainerState>,
    pub required: Vec<String>,
    /// Var `packagist_version`, if set.
    pub version_override: Option<String>,
    pub postgres_container: String,
    pub redis_container: String,
    pub data_dir: String,
    pub backup_dir: Option<String>,
    pub storage: Measured,
    pub database: Measured,
    pub redis: Measured,
    pub disk: Result<DiskFree, String>,
    /// Bytes of this host's artifacts already in the backup directory (a re-run needs
    /// that much less).
    pub already_backed_up: u64,
    pub safety_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadCheck {
    pub kind: WorkloadKind,
    pub name: String,
    /// `None`: present; `Some(why)`: missing or unreadable.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewFacts {
    pub host: String,
    pub namespace: String,
    /// The kubeconfig could not be read or the API did not answer.
    pub cluster_error: Option<String>,
    /// The namespace is missing (or could not be read).
    pub namespace_error: Option<String>,
    pub workloads: Vec<WorkloadCheck>,
    pub ui_deployment: String,
    pub ui_app_container: String,
    /// Containers of the ui deployment's pod template, when it could be read.
    pub ui_containers: Option<Vec<String>>,
    /// The migration already completed on this cluster (the disk check is moot then).
    pub completed: bool,
    pub openebs: Result<DiskFree, String>,
    pub staging: Option<Result<DiskFree, String>>,
    /// Bytes of artifacts already staged on this host.
    pub already_staged: u64,
    /// The old side's figures from the journal, with the host they were measured on.
    pub old_sizes: Option<(String, DataSizes)>,
    pub safety_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PreflightFacts {
    Old(OldFacts),
    New(NewFacts),
}

/// Preflight never changes anything; this type has no values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NoChange {}

impl Change for NoChange {
    fn describe(&self) -> String {
        match *self {}
    }
}

const fn str_var(name: &'static str, doc: &'static str) -> crate::module::VarDecl {
    crate::module::VarDecl {
        name,
        kind: crate::module::VarKind::Str,
        doc,
    }
}
/// Host vars preflight reads when its own argument is not given.
pub const DATA_DIR: crate::module::VarDecl = str_var("data_dir", "old side: Packagist data");
pub const BACKUP_DIR_OLD: crate::module::VarDecl =
    str_var("backup_dir_old", "old side: where backups are written");
pub const OPENEBS_BASE: crate::module::VarDecl =
    str_var("openebs_base", "new side: OpenEBS volumes' base directory");
pub const BACKUP_DIR_NEW: crate::module::VarDecl =
    str_var("backup_dir_new", "new side: where artifacts are staged");
/// A string or a number (`2.5`).
pub const PACKAGIST_VERSION: crate::module::VarDecl = crate::module::VarDecl {
    name: "packagist_version",
    kind: crate::module::VarKind::Any,
    doc: "old side: the Packagist version, when the container does not say (string or number)",
};
const VARS: &[&crate::module::VarDecl] = &[
    &DATA_DIR,
    &BACKUP_DIR_OLD,
    &OPENEBS_BASE,
    &BACKUP_DIR_NEW,
    &PACKAGIST_VERSION,
];

fn var_str(
    ctx: &HostReader,
    decl: &'static crate::module::VarDecl,
) -> Result<Option<String>, ModuleError> {
    Ok(ctx.var_of(decl)?.and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }))
}

fn render_or_var(
    ctx: &HostReader,
    t: &Option<Template>,
    var: &'static crate::module::VarDecl,
) -> Result<Option<String>, ModuleError> {
    Ok(match t {
        Some(t) => Some(ctx.render_operand(t)?),
        None => var_str(ctx, var)?,
    })
}

/// Prints the nearest existing parent of `$1`, then `df -PB1` of it. A fixed script:
/// the path is a positional argument, never spliced into the text.
const DF_SCRIPT: &str = r#"p=$1
while [ ! -e "$p" ]; do
  case "$p" in */*) p=${p%/*}; [ -n "$p" ] || p=/ ;; *) p=. ;; esac
done
printf '%s\n' "$p"
df -PB1 -- "$p""#;

/// Parse the output of [`DF_SCRIPT`].
pub fn parse_df(path: &str, out: &str) -> Result<DiskFree, String> {
    let mut lines = out.lines();
    let existing = lines.next().unwrap_or("").to_string();
    // Skip the header; the data line is `fs blocks used available capacity mount...`.
    let data = lines
        .find(|l| !l.starts_with("Filesystem"))
        .ok_or_else(|| format!("unexpected df output: {out:?}"))?;
    let fields: Vec<&str> = data.split_whitespace().collect();
    if fields.len() < 6 {
        return Err(format!("unexpected df output: {out:?}"));
    }
    let available = fields[3]
        .parse()
        .map_err(|_| format!("unexpected df output: {out:?}"))?;
    Ok(DiskFree {
        path: path.to_string(),
        existing,
        mount: fields[5..].join(" "),
        available,
    })
}

async fn disk_free(ctx: &HostReader, path: &str) -> Result<DiskFree, ModuleError> {
    let cmd = Cmd::new("sh")
        .arg("-c")
        .arg(DF_SCRIPT)
        .arg("ferry-df")
        .arg(path);
    let out = ctx.exec(&cmd).await?;
    if !out.success() {
        return Err(ModuleError::Failed(format!(
            "df of {path} failed: {}",
            out.stderr_str().trim()
        )));
    }
    parse_df(path, &out.stdout_str()).map_err(ModuleError::Failed)
}

/// A number printed first on the command's output (`du -sb`, `stat -c %s`, psql -At).
async fn measure(ctx: &HostReader, cmd: &Cmd) -> Result<u64, String> {
    let out = ctx.exec(cmd).await.map_err(|e| e.to_string())?;
    let text = out.stdout_str();
    if !out.success() {
        return Err(format!(
            "`{}` failed: {}",
            cmd.display(),
            out.stderr_str().trim()
        ));
    }
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("`{}` printed {text:?}, not a size", cmd.display()))
}

/// `used_memory:N` from `INFO memory`.
fn parse_used_memory(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Sum of the sizes of the journal's artifacts on this host under `dir` that are still
/// there with their recorded size.
async fn artifacts_under(ctx: &HostReader, dir: &str) -> Result<u64, ModuleError> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let data = ctx.journal.snapshot();
    let mut paths = BTreeMap::new();
    if let Some(tasks) = data.hosts.get(&ctx.host) {
        for a in tasks.values().flat_map(|r| r.artifacts.values()) {
            if a.path.starts_with(&prefix) {
                paths.insert(a.path.clone(), a.size);
            }
        }
    }
    let mut total = 0;
    for (path, size) in paths {
        if file_stamp(ctx, &path)
            .await?
            .is_some_and(|s| s.size == size)
        {
            total += size;
        }
    }
    Ok(total)
}

impl Preflight {
    fn safety_factor(&self) -> f64 {
        self.safety_factor.unwrap_or(SAFETY_FACTOR)
    }

    fn min_version(&self) -> String {
        self.min_version
            .clone()
            .unwrap_or_else(|| MIN_VERSION.into())
    }

    /// Args of the other role are mistakes worth stopping for (a typo'd role would
    /// silently skip every check the operator configured).
    fn misplaced_args(&self) -> Vec<&'static str> {
        let old = [
            ("containers", self.containers.is_some()),
            ("ui_container", self.ui_container.is_some()),
            ("postgres_container", self.postgres_container.is_some()),
            ("redis_container", self.redis_container.is_some()),
            ("database", self.database.is_some()),
            ("redis_rdb_path", self.redis_rdb_path.is_some()),
            ("data_dir", self.data_dir.is_some()),
            ("backup_dir", self.backup_dir.is_some()),
            ("min_version", self.min_version.is_some()),
        ];
        let new = [
            ("deployments", self.deployments.is_some()),
            ("statefulsets", self.statefulsets.is_some()),
            ("ui_deployment", self.ui_deployment.is_some()),
            ("ui_app_container", self.ui_app_container.is_some()),
            ("openebs_base", self.openebs_base.is_some()),
            ("staging_dir", self.staging_dir.is_some()),
            ("namespace", self.namespace.is_some()),
            ("kubeconfig", self.kubeconfig.is_some()),
        ];
        let other = match self.role {
            Role::Old => &new[..],
            Role::New => &old[..],
        };
        other
            .iter()
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect()
    }

    fn misplaced_message(&self) -> String {
        format!(
            "preflight with role = \"{}\" does not take {}: they belong to the other role",
            match self.role {
                Role::Old => "old",
                Role::New => "new",
            },
            self.misplaced_args().join(", ")
        )
    }

    async fn old_facts(&self, ctx: &HostReader) -> Result<OldFacts, ModuleError> {
        let required: Vec<String> = match &self.containers {
            Some(c) => c.clone(),
            None => DEFAULT_CONTAINERS.iter().map(|s| s.to_string()).collect(),
        };
        let ui_container = self
            .ui_container
            .clone()
            .unwrap_or_else(|| "packagist-ui".into());
        let postgres_container = self
            .postgres_container
            .clone()
            .unwrap_or_else(|| "packagist-postgres".into());
        let redis_container = self
            .redis_container
            .clone()
            .unwrap_or_else(|| "packagist-redis".into());
        let mut names = required.clone();
        for c in [&ui_container, &postgres_container, &redis_container] {
            if !names.contains(c) {
                names.push(c.clone());
            }
        }
        let containers = docker_inspect(ctx, &names).await?;
        let running = |name: &str| containers.get(name).is_some_and(|c| c.running);
        let docker = docker_bin(ctx);
        let data_dir = render_or_var(ctx, &self.data_dir, &DATA_DIR)?
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let backup_dir = render_or_var(ctx, &self.backup_dir, &BACKUP_DIR_OLD)?;

        // What an earlier run of this task measured: the fallback when a store cannot be
        // measured now (e.g. its container was stopped by the backup since).
        let recorded: Option<DataSizes> = ctx
            .record(&ctx.host, &ctx.task)
            .and_then(|r| r.fingerprints.get(OLD_SIZES_KEY).cloned())
            .and_then(|v| serde_json::from_value(v).ok());
        let fallback = |now: Result<u64, String>, old: Option<u64>| match (now, old) {
            (Ok(b), _) => Measured::Bytes(b),
            (Err(_), Some(b)) => Measured::Recorded(b),
            (Err(e), None) => Measured::Unknown(e),
        };

        let storage = measure(ctx, &Cmd::new("du").arg("-sb").arg(data_dir.as_str())).await;
        let storage = fallback(storage, recorded.as_ref().map(|r| r.storage));

        let database = if running(&postgres_container) {
            let database = self
                .database
                .clone()
                .unwrap_or_else(|| "packagist_db".into());
            let cmd = Cmd::new(docker.as_str())
                .arg("exec")
                .arg(postgres_container.as_str())
                .args(["psql", "-X", "-At", "-U", "postgres", "-d"])
                .arg(database)
                .arg("-c")
                .arg("select pg_database_size(current_database())");
            measure(ctx, &cmd).await
        } else {
            // Stopped, typically by an earlier backup: its dump is the best estimate.
            backup_file_size(ctx, backup_dir.as_deref(), "packagist_db.sql")
                .await
                .ok_or_else(|| {
                    format!(
                        "{postgres_container} is not running, so the database size cannot be read"
                    )
                })
        };
        let database = fallback(database, recorded.as_ref().map(|r| r.database));

        let redis = if running(&redis_container) {
            let rdb = self
                .redis_rdb_path
                .clone()
                .unwrap_or_else(|| "/data/dump.rdb".into());
            let exec = Cmd::new(docker.as_str())
                .arg("exec")
                .arg(redis_container.as_str());
            match measure(ctx, &exec.clone().args(["stat", "-c", "%s"]).arg(rdb)).await {
                Ok(b) => Ok(b),
                // No dump yet: what Redis holds in memory is a fair upper bound.
                Err(_) => {
                    let out = ctx
                        .exec(&exec.args(["redis-cli", "INFO", "memory"]))
                        .await?;
                    parse_used_memory(&out.stdout_str()).ok_or_else(|| {
                        format!(
                            "neither the Redis dump nor `INFO memory` of {redis_container} \
                             could be read"
                        )
                    })
                }
            }
        } else {
            backup_file_size(ctx, backup_dir.as_deref(), "packagist_redis.rdb")
                .await
                .ok_or_else(|| {
                    format!(
                        "{redis_container} is not running, so the Redis data size cannot be read"
                    )
                })
        };
        let redis = fallback(redis, recorded.as_ref().map(|r| r.redis));

        if let (Some(s), Some(d), Some(r)) = (storage.bytes(), database.bytes(), redis.bytes()) {
            // Recorded by the engine (`memos`): the new side's preflight needs these
            // figures (and a re-run, once the stores are stopped).
            let sizes = DataSizes {
                storage: s,
                database: d,
                redis: r,
            };
            tracing::info!(
                host = %ctx.host,
                "old side data: storage {}, database {}, redis {} (total {})",
                human(s),
                human(d),
                human(r),
                human(sizes.total())
            );
        }

        let (disk, already_backed_up) = match &backup_dir {
            Some(dir) => (
                disk_free(ctx, dir).await.map_err(|e| e.to_string()),
                artifacts_under(ctx, dir).await?,
            ),
            None => (Err("no backup directory given".into()), 0),
        };

        Ok(OldFacts {
            host: ctx.host.clone(),
            min_version: self.min_version(),
            ui_container,
            containers,
            required,
            version_override: var_str(ctx, &PACKAGIST_VERSION)?,
            postgres_container,
            redis_container,
            data_dir,
            backup_dir,
            storage,
            database,
            redis,
            disk,
            already_backed_up,
            safety_factor: self.safety_factor(),
        })
    }

    async fn new_facts(&self, ctx: &HostReader) -> Result<NewFacts, ModuleError> {
        let target = K8sTarget {
            namespace: self.namespace.clone(),
            kubeconfig: self.kubeconfig.clone(),
        };
        let namespace = target.namespace(ctx)?;
        let ui_deployment = self.ui_deployment.clone().unwrap_or_else(|| "ui".into());
        let mut f = NewFacts {
            host: ctx.host.clone(),
            namespace: namespace.clone(),
            cluster_error: None,
            namespace_error: None,
            workloads: Vec::new(),
            ui_deployment: ui_deployment.clone(),
            ui_app_container: self.ui_app_container.clone().unwrap_or_else(|| "ui".into()),
            ui_containers: None,
            completed: false,
            openebs: Err("not checked".into()),
            staging: None,
            already_staged: 0,
            old_sizes: old_sizes_from_journal(ctx),
            safety_factor: self.safety_factor(),
        };

        match target.cluster(ctx).await {
            Err(e) => f.cluster_error = Some(e.to_string()),
            Ok(cluster) => match cluster.ping().await {
                Err(K8sError::NotFound { .. }) => f.namespace_error = Some("not found".into()),
                Err(e) => f.cluster_error = Some(e.to_string()),
                Ok(()) => {
                    let names = |v: &Option<Vec<String>>, d: &[&str]| -> Vec<String> {
                        v.clone()
                            .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
                    };
                    let wanted = names(&self.deployments, &["ui", "repo", "worker"])
                        .into_iter()
                        .map(|n| (WorkloadKind::Deployment, n))
                        .chain(
                            names(&self.statefulsets, &["postgres", "redis"])
                                .into_iter()
                                .map(|n| (WorkloadKind::StatefulSet, n)),
                        );
                    for (kind, name) in wanted {
                        let problem = match cluster.workload(kind, &name).await {
                            Ok(_) => None,
                            Err(K8sError::NotFound { .. }) => Some("not found".to_string()),
                            Err(e) => Some(e.to_string()),
                        };
                        f.workloads.push(WorkloadCheck {
                            kind,
                            name,
                            problem,
                        });
                    }
                    let api: kube::Api<Deployment> =
                        kube::Api::namespaced(cluster.client().clone(), cluster.namespace());
                    if let Ok(Some(d)) = api.get_opt(&ui_deployment).await {
                        f.ui_containers = Some(
                            d.spec
                                .and_then(|s| s.template.spec)
                                .map(|s| s.containers.into_iter().map(|c| c.name).collect())
                                .unwrap_or_default(),
                        );
                    }
                    f.completed = completed_marker(&cluster).await?.is_some();
                }
            },
        }

        let openebs = render_or_var(ctx, &self.openebs_base, &OPENEBS_BASE)?
            .unwrap_or_else(|| DEFAULT_OPENEBS_BASE.into());
        f.openebs = disk_free(ctx, &openebs).await.map_err(|e| e.to_string());
        if let Some(dir) = render_or_var(ctx, &self.staging_dir, &BACKUP_DIR_NEW)? {
            f.staging = Some(disk_free(ctx, &dir).await.map_err(|e| e.to_string()));
            f.already_staged = artifacts_under(ctx, &dir).await?;
        }
        Ok(f)
    }
}

/// The newest figures recorded by an old-role preflight, on any host.
fn old_sizes_from_journal(ctx: &HostReader) -> Option<(String, DataSizes)> {
    let data = ctx.journal.snapshot();
    data.hosts
        .iter()
        .flat_map(|(host, tasks)| tasks.values().map(move |r| (host, r)))
        .filter_map(|(host, r)| {
            let sizes = serde_json::from_value(r.fingerprints.get(OLD_SIZES_KEY)?.clone()).ok()?;
            Some((r.started.clone(), host.clone(), sizes))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, host, sizes)| (host, sizes))
}

#[async_trait]
impl Module for Preflight {
    fn vars(&self) -> Vec<&'static crate::module::VarDecl> {
        crate::module::vars::all(&[crate::module::kube::VARS, crate::module::docker::VARS, VARS])
    }
    fn memos(&self, facts: &PreflightFacts) -> Vec<MemoValue> {
        let PreflightFacts::Old(f) = facts else {
            return Vec::new();
        };
        match (f.storage.bytes(), f.database.bytes(), f.redis.bytes()) {
            (Some(storage), Some(database), Some(redis)) => vec![OLD_SIZES.of(&DataSizes {
                storage,
                database,
                redis,
            })],
            _ => Vec::new(),
        }
    }

    type Facts = PreflightFacts;
    type Change = NoChange;

    fn check_args(&self, _: &ArgCheck<'_>) -> Result<(), ArgError> {
        match self.misplaced_args().first() {
            Some(first) => Err(ArgError::field(first, self.misplaced_message())),
            None => Ok(()),
        }
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<PreflightFacts, ModuleError> {
        if !self.misplaced_args().is_empty() {
            return Err(ModuleError::Failed(self.misplaced_message()));
        }
        Ok(match self.role {
            Role::Old => PreflightFacts::Old(self.old_facts(probe).await?),
            Role::New => PreflightFacts::New(self.new_facts(probe).await?),
        })
    }

    fn decide(&self, f: &PreflightFacts) -> Result<Vec<NoChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        _: &TaskCtx,
        _: &PreflightFacts,
        changes: &[NoChange],
    ) -> Result<Applied, ModuleError> {
        // Unreachable: decide never plans a change (NoChange has no values).
        match changes.first() {
            Some(c) => match *c {},
            None => Ok(Applied::default()),
        }
    }
}

/// Size of a backup file an earlier run left in `dir` on this host, if any.
async fn backup_file_size(ctx: &HostReader, dir: Option<&str>, name: &str) -> Option<u64> {
    let path = format!("{}/{name}", dir?);
    let out = ctx
        .exec(&Cmd::new("stat").arg("-c").arg("%s").arg(path))
        .await
        .ok()?;
    out.success()
        .then(|| out.stdout_str().trim().parse().ok())
        .flatten()
}

/// Pure: Ok(no change) when every check passes, else one error listing every failure.
pub fn decide(f: &PreflightFacts) -> Result<Vec<NoChange>, ModuleError> {
    let (host, failures) = match f {
        PreflightFacts::Old(f) => (&f.host, old_failures(f)),
        PreflightFacts::New(f) => (&f.host, new_failures(f)),
    };
    if failures.is_empty() {
        return Ok(Vec::new());
    }
    let mut msg = format!(
        "preflight failed on {host}: {} check(s) failed; nothing was changed",
        failures.len()
    );
    for (i, fail) in failures.iter().enumerate() {
        msg.push_str(&format!("\n  {}. {fail}", i + 1));
    }
    Err(ModuleError::Failed(msg))
}

/// The app version and where it was read from.
pub fn detected_version(f: &OldFacts) -> Result<(Version, String), String> {
    if let Some(v) = &f.version_override {
        return Version::parse(v)
            .map(|v| (v, "var packagist_version".to_string()))
            .ok_or_else(|| format!("var packagist_version = {v:?} is not a version"));
    }
    let Some(ui) = f.containers.get(&f.ui_container) else {
        return Err(format!("container {} not found", f.ui_container));
    };
    if let Some(v) = Version::parse(&ui.image) {
        return Ok((v, format!("image {}", ui.image)));
    }
    if let Some(v) = ui.labels.get(VERSION_LABEL).and_then(|l| Version::parse(l)) {
        return Ok((v, format!("label {VERSION_LABEL} of {}", f.ui_container)));
    }
    Err(format!(
        "neither the image tag of {} ({}) nor its label {VERSION_LABEL} holds a version",
        f.ui_container, ui.image
    ))
}

fn needed(total: u64, factor: f64) -> u64 {
    (total as f64 * factor).ceil() as u64
}

/// Every failed check on the old host.
pub fn old_failures(f: &OldFacts) -> Vec<String> {
    let mut out = Vec::new();
    let host = &f.host;

    // Version.
    match Version::parse(&f.min_version) {
        None => out.push(format!(
            "min_version = {:?} is not a version; write it like \"{MIN_VERSION}\"",
            f.min_version
        )),
        Some(min) => match detected_version(f) {
            Ok((v, _)) if v >= min => {}
            Ok((v, source)) => out.push(format!(
                "{host}: Private Packagist must be version {min} or newer before migrating; \
                 found {v} (from {source}). Update the old instance first, then re-run"
            )),
            Err(why) if f.containers.contains_key(&f.ui_container) => out.push(format!(
                "{host}: cannot tell the app version (expected ≥ {min}): {why}. \
                 Set var packagist_version to the version the admin panel shows"
            )),
            // A missing ui container is reported below with the others.
            Err(_) => {}
        },
    }

    // Containers.
    let missing: Vec<&str> = f
        .required
        .iter()
        .chain(std::iter::once(&f.ui_container))
        .filter(|c| !f.containers.contains_key(*c))
        .map(String::as_str)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "{host}: expected the Docker containers of the old install; not found: {}. \
             Check that this is the old host, or name the containers (args containers, \
             ui_container)",
            missing.join(", ")
        ));
    }

    // Sizes.
    for (what, m, hint) in [
        (
            "storage",
            &f.storage,
            format!("check data_dir (now {})", f.data_dir),
        ),
        (
            "database",
            &f.database,
            format!("start {} and re-run", f.postgres_container),
        ),
        (
            "Redis data",
            &f.redis,
            format!("start {} and re-run", f.redis_container),
        ),
    ] {
        if let Measured::Unknown(why) = m {
            out.push(format!(
                "{host}: cannot measure the {what} size to check the free disk space: \
                 {why}; {hint}"
            ));
        }
    }

    // Disk.
    match (&f.backup_dir, &f.disk) {
        (None, _) => out.push(format!(
            "{host}: no backup directory: set var backup_dir_old (or arg backup_dir) to a \
             directory with room for the backup"
        )),
        (Some(dir), Err(why)) => out.push(format!(
            "{host}: cannot read the free space for the backup directory {dir}: {why}"
        )),
        (Some(dir), Ok(disk)) => {
            if let (Some(s), Some(d), Some(r)) =
                (f.storage.bytes(), f.database.bytes(), f.redis.bytes())
            {
                let total = s + d + r;
                let need = needed(total, f.safety_factor).saturating_sub(f.already_backed_up);
                if disk.available < need {
                    out.push(format!(
                        "{host}: not enough free disk for the backup in {dir} (filesystem {}): \
                         need {} = (storage {} + database {} + Redis {}) × {}{}, \
                         found {} available. Free space there or set backup_dir_old to a \
                         larger filesystem",
                        disk.mount,
                        exact(need),
                        human(s),
                        human(d),
                        human(r),
                        f.safety_factor,
                        if f.already_backed_up > 0 {
                            format!(" − {} already backed up", human(f.already_backed_up))
                        } else {
                            String::new()
                        },
                        exact(disk.available)
                    ));
                }
            }
        }
    }
    out
}

/// Every failed check on the new host.
pub fn new_failures(f: &NewFacts) -> Vec<String> {
    let mut out = Vec::new();
    let host = &f.host;
    if let Some(e) = &f.cluster_error {
        out.push(format!(
            "{host}: the Kubernetes API is not usable: {e}. Check var kubeconfig (a readable \
             kubeconfig on the node, become may be needed) or kubeconfig_local/kube_context"
        ));
    } else if let Some(e) = &f.namespace_error {
        out.push(format!(
            "{host}: expected namespace {} to exist: {e}. Set var namespace to the namespace \
             Private Packagist is installed in",
            f.namespace
        ));
    } else {
        let missing: Vec<String> = f
            .workloads
            .iter()
            .filter_map(|w| {
                w.problem
                    .as_ref()
                    .map(|p| format!("{}/{} ({p})", w.kind.kubectl_name(), w.name))
            })
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "{host}: expected every Private Packagist workload in namespace {}; missing: \
                 {}. Install Private Packagist on the cluster first (or name the workloads: \
                 args deployments, statefulsets)",
                f.namespace,
                missing.join(", ")
            ));
        }
        match &f.ui_containers {
            Some(c) if c.contains(&f.ui_app_container) => {}
            Some(c) => out.push(format!(
                "{host}: expected a container named {} in deployment/{}; found: {}. \
                 Set arg ui_app_container to the app container's name",
                f.ui_app_container,
                f.ui_deployment,
                if c.is_empty() {
                    "none".to_string()
                } else {
                    c.join(", ")
                }
            )),
            // The missing deployment is already listed above.
            None => {}
        }
    }

    if f.completed {
        // The data is on the cluster already: the space it takes is not needed again.
        return out;
    }
    let need = f
        .old_sizes
        .as_ref()
        .map(|(_, s)| needed(s.total(), f.safety_factor));
    let mut per_fs: BTreeMap<String, (u64, u64, Vec<String>)> = BTreeMap::new();
    match &f.openebs {
        Err(e) => out.push(format!(
            "{host}: cannot read the free space under the OpenEBS base directory: {e}"
        )),
        Ok(d) => {
            if let Some(need) = need {
                let e = per_fs
                    .entry(d.mount.clone())
                    .or_insert((d.available, 0, Vec::new()));
                e.1 += need;
                e.2.push(format!("volumes under {}", d.path));
            }
        }
    }
    match &f.staging {
        None => {}
        Some(Err(e)) => out.push(format!(
            "{host}: cannot read the free space of the staging directory: {e}"
        )),
        Some(Ok(d)) => {
            if let Some(need) = need {
                let e = per_fs
                    .entry(d.mount.clone())
                    .or_insert((d.available, 0, Vec::new()));
                e.1 += need.saturating_sub(f.already_staged);
                e.2.push(format!("staged backup in {}", d.path));
            }
        }
    }
    if let Some((old_host, sizes)) = &f.old_sizes {
        for (mount, (available, need, uses)) in per_fs {
            if available < need {
                out.push(format!(
                    "{host}: not enough free disk on filesystem {mount} for {}: need {} \
                     (the old side's data on {old_host}: storage {} + database {} + Redis {}, \
                     × {} per use), found {} available. Free space on the node or grow the disk",
                    uses.join(" and "),
                    exact(need),
                    human(sizes.storage),
                    human(sizes.database),
                    human(sizes.redis),
                    f.safety_factor,
                    exact(available)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_parses_with_nearest_parent() {
        let out = "/var\nFilesystem     1-blocks      Used Available Capacity Mounted on\n\
                   /dev/sda1 100000 40000 60000 40% /var lib\n";
        let d = parse_df("/var/openebs/local", out).unwrap();
        assert_eq!(d.existing, "/var");
        assert_eq!(d.available, 60000);
        assert_eq!(d.mount, "/var lib");
        assert!(parse_df("/x", "/x\n").is_err());
    }

    #[test]
    fn df_script_finds_the_nearest_existing_parent_with_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not yet/created dir/x");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(DF_SCRIPT)
            .arg("ferry-df")
            .arg(&missing)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let d = parse_df("p", &String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(d.existing, dir.path().to_string_lossy());
        assert!(d.available > 0);
    }

    #[test]
    fn used_memory_and_human_sizes() {
        assert_eq!(
            parse_used_memory("# Memory\r\nused_memory:1234\r\nused_memory_human:1K\r\n"),
            Some(1234)
        );
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
