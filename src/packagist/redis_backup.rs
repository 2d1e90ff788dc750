//! `redis_backup`: have Redis in a container save its dataset, stream `dump.rdb` out to
//! a file on the host (the artifact), and record the per-database key counts that the
//! restore must reproduce.
//!
//! ```toml
//! [task.redis_backup]
//! container = "packagist-redis"
//! backup_script = "/usr/local/bin/redis-backup.sh"   # as the vendor documents
//! rdb_path = "/data/dump.rdb"                        # where the script leaves it
//! dest = "{{ backup_dir_old }}/packagist_redis.rdb"
//! artifact = "packagist_redis"
//! ```

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::fingerprint::RedisKeyCounts;
use crate::module::artifact::write_artifact;
use crate::module::docker::ContainerBackup;
use crate::module::{Applied, Change, HostReader, Module, ModuleError, Prediction, Probe, TaskCtx};
use crate::packagist::completed::old_side_policy;
use crate::playbook::template::Template;
use crate::redis_keys::{unix_now, TTL_CENSUS_LUA};

fn default_artifact() -> String {
    "packagist_redis".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisBackup {
    pub container: Template,
    pub backup_script: Option<Template>,
    pub rdb_path: Option<Template>,
    /// Port of Redis inside the container (for `redis-cli`); default 6379.
    pub port: Option<u16>,
    pub dest: Template,
    #[serde(default = "default_artifact")]
    pub artifact: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisBackupFacts {
    #[serde(flatten)]
    pub backup: ContainerBackup,
    pub script: String,
    pub rdb_path: String,
    pub port: u16,
    pub recorded_counts: Option<RedisKeyCounts>,
    pub current_counts: Option<RedisKeyCounts>,
    /// The laptop's clock (unix seconds): keys with a TTL may have expired since the
    /// recorded count, which does not make the backup stale.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RedisBackupChange {
    StartContainer(Cmd),
    Save(Cmd),
    CopyOut(Cmd),
}

impl Change for RedisBackupChange {
    fn describe(&self) -> String {
        match self {
            RedisBackupChange::StartContainer(_) => "start the Redis container to back it up",
            RedisBackupChange::Save(_) => "save the dataset (redis-backup.sh)",
            RedisBackupChange::CopyOut(_) => "copy dump.rdb out of the container",
        }
        .into()
    }
    fn commands(&self) -> Vec<String> {
        match self {
            RedisBackupChange::StartContainer(c)
            | RedisBackupChange::Save(c)
            | RedisBackupChange::CopyOut(c) => vec![c.display()],
        }
    }
}

impl RedisBackupFacts {
    fn exec(&self) -> Cmd {
        self.backup.exec()
    }

    fn keyspace_cmd(&self) -> Cmd {
        self.exec()
            .args(["redis-cli", "-p"])
            .arg(self.port.to_string())
            .args(["INFO", "keyspace"])
    }
}

async fn key_counts(ctx: &HostReader, f: &RedisBackupFacts) -> Result<RedisKeyCounts, ModuleError> {
    let out = ctx.exec_ok(&f.keyspace_cmd()).await?;
    RedisKeyCounts::parse_info_keyspace(&out.stdout_str()).map_err(ModuleError::from)
}

/// The key counts the backup is proven against, with the census of the TTLs of its
/// volatile keys (one read-only scan per database that has any), so that keys that
/// expire before the restore are told apart from keys lost.
async fn key_counts_with_census(
    ctx: &HostReader,
    f: &RedisBackupFacts,
) -> Result<RedisKeyCounts, ModuleError> {
    let mut counts = key_counts(ctx, f).await?;
    let counted_at = unix_now();
    let dbs: Vec<u32> = counts.volatile.keys().copied().collect();
    for db in dbs {
        let census = f
            .exec()
            .args(["redis-cli", "-p"])
            .arg(f.port.to_string())
            .arg("-n")
            .arg(db.to_string())
            .args(["EVAL", TTL_CENSUS_LUA, "0"]);
        let out = ctx.exec_ok(&census).await?;
        counts
            .add_census(db, counted_at, &out.stdout_str())
            .map_err(ModuleError::from)?;
    }
    Ok(counts)
}

#[async_trait]
impl Module for RedisBackup {
    const VARS: crate::module::VarLists = &[crate::module::docker::VARS];
    type Facts = RedisBackupFacts;
    type Change = RedisBackupChange;

    async fn facts(&self, probe: &Probe<'_>) -> Result<RedisBackupFacts, ModuleError> {
        let mut backup =
            ContainerBackup::read(probe, &self.container, &self.dest, &self.artifact).await?;
        old_side_policy(probe, "redis", &mut backup);
        let mut f = RedisBackupFacts {
            backup,
            script: probe.render_or(&self.backup_script, "/usr/local/bin/redis-backup.sh")?,
            rdb_path: probe.render_or(&self.rdb_path, "/data/dump.rdb")?,
            port: self.port.unwrap_or(6379),
            recorded_counts: probe.own_fingerprint("redis_keys"),
            current_counts: None,
            now: unix_now(),
        };
        if f.backup.worth_comparing() {
            f.current_counts = Some(key_counts(probe, &f).await?);
        }
        Ok(f)
    }

    /// The changes, applied, make the artifact (a check run's later tasks count on it).
    fn predicts(&self, changes: &[RedisBackupChange]) -> Vec<Prediction> {
        Prediction::artifact_if_changed(changes, &self.artifact)
    }

    /// Why the old Redis is left alone (the migration completed), when it is.
    fn notes(&self, f: &RedisBackupFacts) -> Vec<String> {
        f.backup.leave_alone.iter().cloned().collect()
    }

    fn decide(&self, f: &RedisBackupFacts) -> Result<Vec<RedisBackupChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &RedisBackupFacts,
        changes: &[RedisBackupChange],
    ) -> Result<Applied, ModuleError> {
        let mut counts = None;
        for c in changes {
            match c {
                RedisBackupChange::StartContainer(cmd) => {
                    ctx.exec_ok(cmd).await?;
                    wait_ready(ctx, f).await?;
                }
                RedisBackupChange::Save(cmd) => {
                    // Counted right before the save: with the app stopped, the saved
                    // dataset holds exactly these keys.
                    counts = Some(key_counts_with_census(ctx, f).await?);
                    ctx.exec_ok(cmd).await?;
                }
                RedisBackupChange::CopyOut(cmd) => {
                    let (artifact, _) =
                        write_artifact(ctx, &self.artifact, cmd.clone(), &f.backup.dest).await?;
                    if artifact.size == 0 {
                        return Err(ModuleError::Precondition(format!(
                            "{} in {} is empty: refusing to keep an empty Redis backup",
                            f.rdb_path, f.backup.container
                        )));
                    }
                    let counts = match counts.take() {
                        Some(c) => c,
                        None => key_counts_with_census(ctx, f).await?,
                    };
                    ctx.record_fingerprint(
                        "redis_keys",
                        serde_json::to_value(&counts).unwrap_or_default(),
                    )?;
                }
            }
        }
        Ok(Applied::changed())
    }
}

async fn wait_ready(ctx: &HostReader, f: &RedisBackupFacts) -> Result<(), ModuleError> {
    let ping = f
        .exec()
        .args(["redis-cli", "-p"])
        .arg(f.port.to_string())
        .arg("PING");
    for _ in 0..120 {
        let out = ctx.exec(&ping).await?;
        // While loading a large dataset Redis answers LOADING, not PONG.
        if out.success() && out.stdout_str().trim() == "PONG" {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(ModuleError::Timeout {
        what: format!("Redis in {} did not answer PING", f.backup.container),
        secs: 60,
    })
}

/// Pure: back up unless the recorded backup is still current.
pub fn decide(f: &RedisBackupFacts) -> Result<Vec<RedisBackupChange>, ModuleError> {
    if f.backup.leave_alone.is_some() {
        return Ok(Vec::new());
    }
    f.backup.require_container()?;
    let unchanged = match (&f.current_counts, &f.recorded_counts) {
        (Some(now), Some(recorded)) => now.diff_at(recorded, f.now).is_empty(),
        _ => false,
    };
    let current = !f.backup.redo
        && f.backup.recorded_sha256.is_some()
        && f.recorded_counts.is_some()
        && (!f.backup.running || unchanged);
    if current {
        return Ok(Vec::new());
    }
    let mut changes: Vec<_> = f
        .backup
        .start_if_stopped()
        .map(RedisBackupChange::StartContainer)
        .into_iter()
        .collect();
    changes.push(RedisBackupChange::Save(f.exec().arg(f.script.as_str())));
    // `docker exec cat` streams the file as-is (`docker cp` would wrap it in a tar).
    changes.push(RedisBackupChange::CopyOut(
        f.exec().arg("cat").arg(f.rdb_path.as_str()),
    ));
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RedisBackupFacts {
        RedisBackupFacts {
            backup: ContainerBackup::running("packagist-redis", "/b/packagist_redis.rdb"),
            script: "/usr/local/bin/redis-backup.sh".into(),
            rdb_path: "/data/dump.rdb".into(),
            port: 6379,
            recorded_counts: None,
            current_counts: None,
            now: 0,
        }
    }

    #[test]
    fn backs_up_with_the_vendor_script_then_streams_the_rdb() {
        let c = decide(&facts()).unwrap();
        let cmds: Vec<String> = c.iter().flat_map(|c| c.commands()).collect();
        assert_eq!(
            cmds,
            vec![
                "docker exec packagist-redis /usr/local/bin/redis-backup.sh",
                "docker exec packagist-redis cat /data/dump.rdb"
            ]
        );
    }

    #[test]
    fn current_backup_is_ok_changed_keys_back_up_again() {
        let counts = RedisKeyCounts::parse_info_keyspace("db0:keys=3,expires=0").unwrap();
        let mut f = facts();
        f.backup.recorded_sha256 = Some("x".into());
        f.recorded_counts = Some(counts.clone());
        f.current_counts = Some(counts);
        assert!(decide(&f).unwrap().is_empty());
        f.current_counts = Some(RedisKeyCounts::parse_info_keyspace("db0:keys=4").unwrap());
        assert_eq!(decide(&f).unwrap().len(), 2);
    }
}
