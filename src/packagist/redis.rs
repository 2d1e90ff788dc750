//! Redis in a pod: `redis-cli` argv and key counts.

use crate::k8s::Cluster;
use crate::module::kube::pod_exec;
use crate::module::units::argv;
use crate::module::ModuleError;

/// `redis-cli -p PORT ARGS...` as argv.
pub fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let mut v = argv(&["redis-cli", "-p"]);
    v.push(port.to_string());
    v.extend(argv(args));
    v
}

/// Keys per database of the Redis in `pod` (`redis-cli INFO keyspace`).
pub async fn pod_redis_key_counts(
    cluster: &Cluster,
    pod: &str,
    container: Option<&str>,
    port: u16,
) -> Result<crate::fingerprint::RedisKeyCounts, ModuleError> {
    let out = pod_exec(
        cluster,
        pod,
        container,
        &redis_cli(port, &["INFO", "keyspace"]),
        None,
    )
    .await?;
    crate::fingerprint::RedisKeyCounts::parse_info_keyspace(&String::from_utf8_lossy(&out))
        .map_err(ModuleError::from)
}
