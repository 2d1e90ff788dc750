//! `redis_flushdb`: empty Redis database 5, the Composer endpoint cache, and nothing else.
//!
//! ```toml
//! [task.redis_flushdb]
//! db = 5               # only 5 is accepted: no other database may ever be flushed
//! statefulset = "redis"
//! port = 9869
//! ```
//!
//! The database is selected by number (`redis-cli -n 5`), and the result is checked:
//! database 5 empty, every other database's key count unchanged.
//!
//! In check mode the Redis restore before this step has not happened: when it is still
//! pending (no backup recorded yet, or the target's key counts differ from the backup's)
//! the flush is predicted from the backup's database 5, not from the target as it is now.

use async_trait::async_trait;
use serde::Serialize;

use crate::fingerprint::RedisKeyCounts;
use crate::k8s::kubectl_exec;
use crate::module::artifact::artifact_fingerprint;
use crate::module::kube::{k8s_args, pod_exec, K8sArgs};
use crate::module::{Applied, Change, Module, ModuleError, Probe, Store, TaskCtx};
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::packagist::redis::{pod_redis_key_counts, redis_cli};
use crate::playbook::template::Template;

/// The Composer endpoint cache: the one database the migration clears.
pub const COMPOSER_CACHE_DB: u32 = 5;

/// `db`, checked when the playbook is read.
fn checked_db<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    crate::module::checked(d, |db: &u32| {
        if *db == COMPOSER_CACHE_DB {
            Ok(())
        } else {
            Err(format!("refusing to flush Redis database {db}: only database {COMPOSER_CACHE_DB} (the Composer cache) may be flushed"))
        }
    })
}

k8s_args! {
    pub struct RedisFlushdb {
        #[serde(deserialize_with = "checked_db")]
        pub db: u32,
        /// The Redis backup artifact whose restore precedes this step (for check mode).
        pub artifact: Option<String>,
        pub statefulset: Option<Template>,
        pub container: Option<Template>,
        pub port: Option<u16>,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlushFacts {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub port: u16,
    pub counts: RedisKeyCounts,
    pub guard: Option<String>,
    /// An earlier task of this check run would restore Redis, so `db` will hold what the
    /// backup holds (`Some(None)`: no backup recorded yet, count unknown).
    pub pending_restore: Option<Option<u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flush {
    pub db: u32,
    /// `None`: the restore still to come brings an unknown number (check mode).
    pub keys: Option<u64>,
    pub kubectl: String,
}

impl Change for Flush {
    fn describe(&self) -> String {
        match self.keys {
            Some(keys) => format!("flush Redis database {} ({keys} keys)", self.db),
            None => format!(
                "flush Redis database {} (the keys the pending restore brings)",
                self.db
            ),
        }
    }
    fn commands(&self) -> Vec<String> {
        vec![self.kubectl.clone()]
    }
}

async fn counts(
    cluster: &crate::k8s::Cluster,
    f: &FlushFacts,
) -> Result<RedisKeyCounts, ModuleError> {
    pod_redis_key_counts(cluster, &f.pod, f.container.as_deref(), f.port).await
}

#[async_trait]
impl Module for RedisFlushdb {
    const VARS: crate::module::VarLists = &[crate::module::kube::VARS];
    type Facts = FlushFacts;
    type Change = Flush;

    /// The completed-migration guard's reason, when it leaves the store alone.
    fn notes(&self, f: &FlushFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<FlushFacts, ModuleError> {
        if self.db != COMPOSER_CACHE_DB {
            return Err(ModuleError::Precondition(format!(
                "refusing to flush Redis database {}: only database {COMPOSER_CACHE_DB} (the Composer cache) may be flushed",
                self.db
            )));
        }
        let cluster = self.k8s().cluster(probe).await?;
        let marker = completed_marker(&cluster).await?;
        let sts = probe.render_or(&self.statefulset, "redis")?;
        let mut f = FlushFacts {
            namespace: cluster.namespace().to_string(),
            pod: format!("{sts}-0"),
            // Named on every exec: the API server refuses an exec without one into a pod
            // with several containers (a sidecar).
            container: Some(probe.render_or(&self.container, "redis")?),
            port: self.port.unwrap_or(9869),
            counts: RedisKeyCounts::default(),
            guard: completed_guard(probe, &marker, "redis"),
            pending_restore: None,
        };
        if f.guard.is_none() {
            f.counts = counts(&cluster, &f).await?;
            // An earlier task of this check run would restore Redis: database 5 would
            // then hold the backup's cache keys (how many, the journal may not know yet).
            if probe.predicted_restored(Store::Redis) {
                let artifact = self.artifact.as_deref().unwrap_or("packagist_redis");
                let source: Option<RedisKeyCounts> =
                    artifact_fingerprint(probe, artifact, "redis_keys");
                f.pending_restore = Some(pending_restore(self.db, source.as_ref()));
            }
        }
        Ok(f)
    }

    fn decide(&self, f: &FlushFacts) -> Result<Vec<Flush>, ModuleError> {
        Ok(decide(self.db, f))
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &FlushFacts,
        changes: &[Flush],
    ) -> Result<Applied, ModuleError> {
        let cluster = self.k8s().cluster(ctx).await?;
        for c in changes {
            let db = c.db.to_string();
            // FLUSHDB and DBSIZE in one transaction: the proof that the database was
            // emptied cannot race an app that fills its cache again right after (the
            // vendor starts the app before this step).
            let out = pod_exec(
                &cluster,
                &f.pod,
                f.container.as_deref(),
                &redis_cli(f.port, &["-n", &db]),
                Some(FLUSH_TRANSACTION.as_bytes()),
            )
            .await?;
            let out = String::from_utf8_lossy(&out);
            if let Err(what) = flushed_in_transaction(&out) {
                return Err(ModuleError::Failed(format!(
                    "database {} was not emptied by FLUSHDB: {what}",
                    c.db
                )));
            }
            let after = counts(&cluster, f).await?;
            // Other databases may only have gained keys from a running app, never lost
            // them; keys with a TTL may have expired meanwhile, so only the others count.
            let before = f.counts.without_db(c.db);
            for &db in before.dbs.keys() {
                let (n, now) = (before.persistent(db), after.persistent(db));
                if now < n {
                    return Err(ModuleError::Failed(format!(
                        "database {db} lost keys without a TTL while flushing database {}: \
                         {n} before, {now} after",
                        c.db
                    )));
                }
            }
        }
        Ok(Applied::changed())
    }
}

/// What redis-cli is fed: FLUSHDB and DBSIZE in one MULTI/EXEC.
const FLUSH_TRANSACTION: &str = "MULTI\nFLUSHDB\nDBSIZE\nEXEC\n";

/// Pure: the output of [`FLUSH_TRANSACTION`] (redis-cli, not a TTY: one reply per line,
/// EXEC's replies last) says the database held 0 keys right after the flush.
pub fn flushed_in_transaction(out: &str) -> Result<(), String> {
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        ["OK", "QUEUED", "QUEUED", "OK", "0"] => Ok(()),
        ["OK", "QUEUED", "QUEUED", "OK", n] => Err(format!("{n} keys right after it")),
        _ => Err(format!("unexpected reply {:?}", lines.join(" | "))),
    }
}

/// What a restore predicted by an earlier task puts into `db`: the backup's count, or
/// `None` when the backup is not recorded yet.
pub fn pending_restore(db: u32, source: Option<&RedisKeyCounts>) -> Option<u64> {
    source.map(|s| s.dbs.get(&db).copied().unwrap_or(0))
}

/// Pure: flush only when the database holds keys (or will, after a pending restore).
pub fn decide(db: u32, f: &FlushFacts) -> Vec<Flush> {
    if f.guard.is_some() {
        return Vec::new();
    }
    let keys = match f.pending_restore {
        Some(predicted) => predicted,
        None => f.counts.dbs.get(&db).copied(),
    };
    match keys {
        Some(0) => Vec::new(),
        None if f.pending_restore.is_none() => Vec::new(),
        keys => vec![Flush {
            db,
            keys,
            // What ferry runs: redis-cli fed the transaction on stdin.
            kubectl: format!(
                "printf '{}' | {}",
                FLUSH_TRANSACTION.replace('\n', "\\n"),
                kubectl_exec(
                    &f.namespace,
                    &f.pod,
                    f.container.as_deref(),
                    true,
                    &[
                        "redis-cli",
                        "-p",
                        &f.port.to_string(),
                        "-n",
                        &db.to_string()
                    ],
                )
            ),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(info: &str) -> FlushFacts {
        FlushFacts {
            namespace: "default".into(),
            pod: "redis-0".into(),
            container: None,
            port: 9869,
            counts: RedisKeyCounts::parse_info_keyspace(info).unwrap(),
            guard: None,
            pending_restore: None,
        }
    }

    #[test]
    fn flushes_db5_by_number() {
        let c = decide(5, &facts("db0:keys=3\ndb5:keys=7"));
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].commands(),
            vec!["printf 'MULTI\\nFLUSHDB\\nDBSIZE\\nEXEC\\n' | kubectl -n default exec -i redis-0 -- redis-cli -p 9869 -n 5"]
        );
    }

    #[test]
    fn empty_db5_is_ok() {
        assert!(decide(5, &facts("db0:keys=3")).is_empty());
    }

    #[test]
    fn a_predicted_restore_predicts_the_flush() {
        // Fresh target, no backup yet: the restore brings an unknown db 5.
        let mut f = facts("");
        f.pending_restore = Some(pending_restore(5, None));
        let c = decide(5, &f);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].describe().contains("pending restore"),
            "{}",
            c[0].describe()
        );
        // Backup recorded, target not restored yet: the backup's db 5 count.
        let backup = RedisKeyCounts::parse_info_keyspace("db0:keys=3\ndb5:keys=60").unwrap();
        f.pending_restore = Some(pending_restore(5, Some(&backup)));
        assert_eq!(decide(5, &f)[0].keys, Some(60));
        // Backup without db 5: nothing to flush after the restore either.
        let no_cache = RedisKeyCounts::parse_info_keyspace("db0:keys=3").unwrap();
        f.pending_restore = Some(pending_restore(5, Some(&no_cache)));
        assert!(decide(5, &f).is_empty());
        // No restore predicted and db 5 empty: ok.
        f.pending_restore = None;
        assert!(decide(5, &f).is_empty());
    }

    #[test]
    fn the_flush_is_proven_inside_its_transaction() {
        assert_eq!(
            flushed_in_transaction("OK\nQUEUED\nQUEUED\nOK\n0\n"),
            Ok(())
        );
        assert_eq!(
            flushed_in_transaction("OK\nQUEUED\nQUEUED\nOK\n3\n"),
            Err("3 keys right after it".into())
        );
        assert!(flushed_in_transaction("(error) NOAUTH Authentication required.\n").is_err());
        assert!(flushed_in_transaction("").is_err());
    }
}
