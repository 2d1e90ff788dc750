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

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::fingerprint::Version;
use crate::module::kube::k8s_args;
use crate::module::memo::{Memo, MemoValue};
use crate::module::{Applied, ArgCheck, ArgError, Change, Module, ModuleError, Probe, TaskCtx};
use crate::playbook::template::Template;

mod new;
mod old;
mod probe;
#[cfg(test)]
mod tests;

pub use new::{new_failures, NewFacts, WorkloadCheck};
pub use old::{detected_version, old_failures, Measured, OldFacts};
pub use probe::{parse_df, DiskFree};

/// The version the vendor requires before migrating.
pub const MIN_VERSION: &str = "1.12.10";
/// Head room over the measured data sizes.
pub const SAFETY_FACTOR: f64 = 1.1;
/// Journal fingerprint under which the old side's figures are recorded.
pub const OLD_SIZES_KEY: &str = OLD_SIZES.name;
/// The old side's data sizes, as its preflight measured them.
pub const OLD_SIZES: Memo<DataSizes> = Memo::new("old_data_sizes");
/// The new side's cluster says the migration completed (read by the old side's backups).
pub const NEW_SIDE_COMPLETED: Memo<crate::packagist::completed::CompletedOn> =
    Memo::new("new_side_completed");
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

k8s_args! {
pub struct Preflight {
    pub role: Role,
    #[serde(default, deserialize_with = "checked_min_version")]
    pub min_version: Option<String>,
    #[serde(default, deserialize_with = "checked_safety_factor")]
    pub safety_factor: Option<f64>,

    // --- old host
    /// All containers that must exist (default: the six `packagist-*`).
    pub containers: Option<Vec<String>>,
    pub ui_container: Option<String>,
    pub postgres_container: Option<String>,
    pub redis_container: Option<String>,
    pub database: Option<String>,
    /// Where the old Redis leaves its dump, inside its container.
    pub redis_rdb_path: Option<String>,
    pub data_dir: Option<Template>,
    pub backup_dir: Option<Template>,

    // --- new host
    pub deployments: Option<Vec<String>>,
    pub statefulsets: Option<Vec<String>>,
    pub ui_deployment: Option<String>,
    pub ui_app_container: Option<String>,
    pub openebs_base: Option<Template>,
    pub staging_dir: Option<Template>,
    /// The route the streams from `route_from` (the old host, or its one-host group)
    /// are asked to take: with "direct", the old host must reach this host's sshd now,
    /// before anything is stopped (the streams' own probe would see it only later).
    pub route: Option<Template>,
    pub route_from: Option<Template>,
}
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
            ("route", self.route.is_some()),
            ("route_from", self.route_from.is_some()),
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
}

#[async_trait]
impl Module for Preflight {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::docker::VARS,
        probe::VARS,
        &[
            &crate::packagist::blob_store::BLOB_STORE,
            &crate::module::direct_route::DIRECT_ADDRESS,
            &crate::packagist::storage_stream::HOSTVARS,
            &crate::packagist::storage_stream::GROUPS,
        ],
    ];
    fn memos(&self, facts: &PreflightFacts) -> Vec<MemoValue> {
        let f = match facts {
            PreflightFacts::Old(f) => f,
            PreflightFacts::New(n) => {
                return n
                    .completed_marker
                    .iter()
                    .map(|marker| {
                        NEW_SIDE_COMPLETED.of(&crate::packagist::completed::CompletedOn {
                            host: n.host.clone(),
                            marker: marker.clone(),
                        })
                    })
                    .collect()
            }
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

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        if let Some(first) = self.misplaced_args().first() {
            return Err(ArgError::field(first, self.misplaced_message()));
        }
        crate::module::direct_route::check_route_arg(self.route.as_ref(), at)?;
        match (&self.route, &self.route_from) {
            (Some(_), None) => Err(ArgError::field(
                "route",
                "route needs route_from: the host (or one-host group) the streams come from",
            )),
            (_, Some(from)) => crate::packagist::storage_stream::check_source_arg(from, at),
            _ => Ok(()),
        }
    }

    /// The new side's API server version, shown whatever the outcome.
    fn notes(&self, f: &PreflightFacts) -> Vec<String> {
        match f {
            PreflightFacts::New(NewFacts {
                server_version: Some((_, _, git)),
                ..
            }) => vec![format!("Kubernetes API server {git}")],
            _ => Vec::new(),
        }
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<PreflightFacts, ModuleError> {
        if !self.misplaced_args().is_empty() {
            return Err(ModuleError::Precondition(self.misplaced_message()));
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
    Err(ModuleError::Precondition(msg))
}

fn needed(total: u64, factor: f64) -> u64 {
    (total as f64 * factor).ceil() as u64
}
