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

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::fingerprint::RedisKeyCounts;
use crate::k8s::kubectl;
use crate::modules::shared::{argv, completed_guard, completed_marker, pod_exec, K8sTarget};
use crate::modules::{Applied, Change, Module, ModuleError, TaskCtx};
use crate::playbook::template::Template;

/// The Composer endpoint cache: the one database the migration clears.
pub const COMPOSER_CACHE_DB: u32 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFlushdb {
    pub db: u32,
    #[serde(default)]
    pub statefulset: Option<Template>,
    #[serde(default)]
    pub container: Option<Template>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub namespace: Option<Template>,
    #[serde(default)]
    pub kubeconfig: Option<Template>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlushFacts {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub port: u16,
    pub counts: RedisKeyCounts,
    pub guard: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flush {
    pub db: u32,
    pub keys: u64,
    pub kubectl: String,
}

impl Change for Flush {
    fn describe(&self) -> String {
        format!("flush Redis database {} ({} keys)", self.db, self.keys)
    }
    fn commands(&self) -> Vec<String> {
        vec![self.kubectl.clone()]
    }
}

impl RedisFlushdb {
    fn k8s(&self) -> K8sTarget {
        K8sTarget {
            namespace: self.namespace.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

fn cli(port: u16, args: &[&str]) -> Vec<String> {
    let mut v = argv(&["redis-cli", "-p"]);
    v.push(port.to_string());
    v.extend(argv(args));
    v
}

async fn counts(
    cluster: &crate::k8s::Cluster,
    f: &FlushFacts,
) -> Result<RedisKeyCounts, ModuleError> {
    let out = pod_exec(
        cluster,
        &f.pod,
        f.container.as_deref(),
        &cli(f.port, &["INFO", "keyspace"]),
        None,
    )
    .await?;
    RedisKeyCounts::parse_info_keyspace(&String::from_utf8_lossy(&out))
        .map_err(|e| ModuleError::Failed(e.to_string()))
}

#[async_trait]
impl Module for RedisFlushdb {
    type Facts = FlushFacts;
    type Change = Flush;

    async fn facts(&self, ctx: &TaskCtx) -> Result<FlushFacts, ModuleError> {
        if self.db != COMPOSER_CACHE_DB {
            return Err(ModuleError::Failed(format!(
                "refusing to flush Redis database {}: only database {COMPOSER_CACHE_DB} (the Composer cache) may be flushed",
                self.db
            )));
        }
        let cluster = self.k8s().cluster(ctx).await?;
        let marker = completed_marker(&cluster).await?;
        let sts = match &self.statefulset {
            Some(t) => ctx.render(t)?,
            None => "redis".into(),
        };
        let mut f = FlushFacts {
            namespace: cluster.namespace().to_string(),
            pod: format!("{sts}-0"),
            container: match &self.container {
                Some(t) => Some(ctx.render(t)?),
                None => None,
            },
            port: self.port.unwrap_or(9869),
            counts: RedisKeyCounts::default(),
            guard: completed_guard(ctx, &marker, "redis"),
        };
        if f.guard.is_none() {
            f.counts = counts(&cluster, &f).await?;
        }
        // Check mode after a restore that would happen: database 5 would hold the
        // backup's cache keys (how many, the journal may not know yet).
        if ctx.overlay(|o| o.restored.contains("redis")) == Some(true) {
            let keys: u64 = crate::modules::shared::artifact_fingerprint::<RedisKeyCounts>(
                ctx,
                "packagist_redis",
                "redis_keys",
            )
            .and_then(|c| c.dbs.get(&self.db).copied())
            .unwrap_or(1);
            f.counts.dbs.insert(self.db, keys.max(1));
        }
        Ok(f)
    }

    fn decide(&self, f: &FlushFacts, _: &TaskCtx) -> Result<Vec<Flush>, ModuleError> {
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
            pod_exec(
                &cluster,
                &f.pod,
                f.container.as_deref(),
                &cli(f.port, &["-n", &db, "FLUSHDB"]),
                None,
            )
            .await?;
            let after = counts(&cluster, f).await?;
            if after.dbs.get(&c.db).copied().unwrap_or(0) != 0 {
                return Err(ModuleError::Failed(format!(
                    "database {} still has keys after FLUSHDB",
                    c.db
                )));
            }
            // Other databases may only have gained keys from a running app, never lost them.
            for (db, n) in f.counts.without_db(c.db).dbs {
                if after.dbs.get(&db).copied().unwrap_or(0) < n {
                    return Err(ModuleError::Failed(format!(
                        "database {db} lost keys while flushing database {}: {} before, {} after",
                        c.db,
                        n,
                        after.dbs.get(&db).copied().unwrap_or(0)
                    )));
                }
            }
        }
        Ok(Applied::changed())
    }
}

/// Pure: flush only when the database holds keys.
pub fn decide(db: u32, f: &FlushFacts) -> Vec<Flush> {
    if f.guard.is_some() {
        return Vec::new();
    }
    match f.counts.dbs.get(&db) {
        Some(&keys) if keys > 0 => vec![Flush {
            db,
            keys,
            kubectl: kubectl(
                &f.namespace,
                &[
                    "exec",
                    &f.pod,
                    "--",
                    "redis-cli",
                    "-p",
                    &f.port.to_string(),
                    "-n",
                    &db.to_string(),
                    "FLUSHDB",
                ],
            ),
        }],
        _ => Vec::new(),
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
        }
    }

    #[test]
    fn flushes_db5_by_number() {
        let c = decide(5, &facts("db0:keys=3\ndb5:keys=7"));
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].commands(),
            vec!["kubectl -n default exec redis-0 -- redis-cli -p 9869 -n 5 FLUSHDB"]
        );
    }

    #[test]
    fn empty_db5_is_ok() {
        assert!(decide(5, &facts("db0:keys=3")).is_empty());
    }
}
