//! The completed-migration marker: a ConfigMap on the new cluster, written by the last
//! step, that keeps every step (and `k8s_scale` with `guard`) from overwriting a system
//! that may be live. The guard itself is general: [`crate::module::kube::marker_guard`].

use std::collections::BTreeMap;

use crate::k8s::Cluster;
use crate::module::docker::ContainerBackup;
use crate::module::kube::{marker_guard, overwrites};
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

/// What the new host's preflight read from its cluster's marker, for the old side's
/// steps (memo [`crate::packagist::preflight::NEW_SIDE_COMPLETED`]); the module kit's
/// type, so general modules can honour it too.
pub use crate::module::kube::HandedOverMarker as CompletedOn;

/// Set `backup`'s policy for the old host's `store` after a completed migration, as the
/// new side's preflight of this run handed the cluster's marker over: leave the old host
/// alone (a re-run from a laptop without the journal would otherwise start the stopped
/// old containers to back them up again), or, when `--overwrite` names the store, back
/// it up again even if the last backup still matches (the old system may have run
/// since). Nothing changes before the migration completed.
pub fn old_side_policy(ctx: &HostReader, store: &str, backup: &mut ContainerBackup) {
    let Some(done) = completed_on_new_side(ctx) else {
        return;
    };
    if overwrites(&ctx.overwrite, store) {
        backup.redo = true;
        return;
    }
    backup.leave_alone = Some(format!(
        "the migration already completed on host {} at {} (ConfigMap {MARKER_CONFIGMAP}): \
         the old host's {store} is not backed up again (its container is not started for \
         it). To back it up anyway, pass --overwrite {store}",
        done.host,
        done.marker
            .get("completed_at")
            .map(String::as_str)
            .unwrap_or("an unknown time")
    ));
}

/// The new side's completion, as its preflight of this run recorded it.
fn completed_on_new_side(ctx: &HostReader) -> Option<CompletedOn> {
    let data = ctx.journal.snapshot();
    data.hosts
        .iter()
        .flat_map(|(host, tasks)| tasks.iter().map(move |(task, r)| (host, task, r)))
        .find_map(|(host, task, r)| {
            crate::packagist::preflight::NEW_SIDE_COMPLETED
                .read(host, task, r)
                .ok()
                .flatten()
        })
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
