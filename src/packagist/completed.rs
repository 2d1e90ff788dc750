//! The completed-migration marker: a ConfigMap on the new cluster, written by the last
//! step, that keeps every step (and `k8s_scale` with `guard`) from overwriting a system
//! that may be live. The guard itself is general: [`crate::module::kube::marker_guard`].

use std::collections::BTreeMap;

use crate::k8s::Cluster;
use crate::module::kube::marker_guard;
use crate::module::{HostReader, ModuleError};

/// Name of the ConfigMap that records, on the new cluster itself, that the migration
/// completed (so a re-run from any laptop never overwrites a live system).
pub const MARKER_CONFIGMAP: &str = "ferry-packagist-migration";

/// The "migration completed" marker, if the cluster has one.
pub async fn completed_marker(
    cluster: &Cluster,
) -> Result<Option<BTreeMap<String, String>>, ModuleError> {
    Ok(cluster.configmap(MARKER_CONFIGMAP).await?)
}

/// Refuse to touch the new side once the migration completed there, unless the
/// operator named this store in `--overwrite`. Returns `Some(reason)` when the step must
/// leave the target alone.
pub fn completed_guard(
    ctx: &HostReader,
    marker: &Option<BTreeMap<String, String>>,
    store: &str,
) -> Option<String> {
    marker_guard(&ctx.overwrite, MARKER_CONFIGMAP, marker, store)
}
