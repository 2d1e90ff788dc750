//! The old host's checks of `preflight`: app version, containers, and free disk in the
//! backup directory against the data to back up.

use std::collections::BTreeMap;

use serde::Serialize;

use super::probe::{
    artifacts_under, backup_file_size, disk_free, measure, parse_used_memory, render_or_var,
    var_str, DiskFree, BACKUP_DIR_OLD, DATA_DIR, PACKAGIST_VERSION,
};
use super::{
    needed, DataSizes, Preflight, DEFAULT_CONTAINERS, DEFAULT_DATA_DIR, MIN_VERSION, OLD_SIZES_KEY,
    VERSION_LABEL,
};
use crate::command::Cmd;
use crate::fingerprint::Version;
use crate::module::docker::{docker_bin, docker_inspect, ContainerState};
use crate::module::units::{exact, human};
use crate::module::{HostReader, ModuleError};

/// A measurement: the value, or why it could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Measured {
    Bytes(u64),
    /// Not measurable now; the figure recorded by an earlier run is used.
    Recorded(u64),
    Unknown(String),
}

impl Measured {
    pub(super) fn bytes(&self) -> Option<u64> {
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

impl Preflight {
    pub(super) async fn old_facts(&self, ctx: &HostReader) -> Result<OldFacts, ModuleError> {
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
